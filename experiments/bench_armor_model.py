"""ARMOR's price: the pruning pipeline's wall time by phase, per method, next to the quality it buys.

Each method runs in a fresh Python process (so its peak resident memory is its own):
load the model (default SmolLM2-135M), tokenize the texts, then
:func:`armor_jax.model.pipeline.prune` over every block at the settings of
``armor_prune`` (calibration statistics block by block, the solver, propagation
through the pruned block), timed by phase (:class:`armor_jax.model.pipeline.Phases`),
then the pruned model's perplexity on ``armor_prune``'s evaluation windows (default 40
of 512 tokens; ``evaluate=false`` skips it). The dense model's perplexity is one more
process. For ARMOR the iterations' time is split into their parts (the A and B solves,
the values' conjugate gradients, the group replacements, the loss) by timing each part
alone on a layer of every linear shape of the model (:func:`armor_jax.solver.armor.step_seconds`).

Headline: ``seconds_<method>`` (the pipeline's wall time, model loading and evaluation
excluded), ``process_seconds_<method>``, ``peak_rss_gb_<method>``, ``ppl_<method>``,
``ppl_dense``, ``armor_over_sparsegpt`` (ARMOR's pipeline time over SparseGPT's, the
same run), ``gap_closed_armor`` ((best baseline - ARMOR) / (best baseline - dense), as
``armor_prune``), ``armor_within_30min``, and by phase ``<method>_seconds_<phase>``
(read, statistics, transfer, solve or start / iterations / finish, report, propagate,
store, compile: compile time is inside the others), for ARMOR
``armor_seconds_<phase>`` and ``armor_seconds_iter_<part>`` (a, b, cg, core, loss), ``armor_iterations`` (run, all layers), ``output_error_mean_<method>``
(the layers' relative output error on the calibration inputs, averaged); ``armor_output``
(ARMOR with the full X^T X) gets the same keys under its name. Files: ``methods.csv``,
``phases.csv``, ``layers.csv`` (per layer: proxy loss, output error, seconds),
``<armor method>_parts.csv`` (per linear shape: layers, ms per iteration by part),
``methods.png``. A finished method is not redone when the run resumes.

    python -m experiments.main experiment=bench_armor_model methods=[sparsegpt,armor]  # ~20 min, 2 CPU cores
    python -m experiments.main experiment=bench_armor_model methods=[sparsegpt,armor] blocks=4 evaluate=false
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

from armor_jax.solver.armor import ArmorConfig
from experiments import armor_prune, io
from experiments.harness import in_child
from experiments.schema import as_container, field_of, gt, param, validate

_A = {f.name for f in dataclasses.fields(armor_prune.Config)}
_same = functools.partial(field_of, armor_prune.Config)   # armor_prune's key: doc, check, default

PARTS = ("a", "b", "cg", "core", "loss")


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = _same("model")
  calib_text: str = _same("calib_text")
  eval_text: str = _same("eval_text")
  n_calib: int = _same("n_calib")
  calib_len: int = _same("calib_len")
  eval_len: int = _same("eval_len")
  eval_windows: int = _same("eval_windows")
  methods: tuple[str, ...] = _same("methods", ("sparsegpt", "armor"))
  mode: str = _same("mode")
  blocks: int = _same("blocks")
  armor: ArmorConfig = _same("armor")
  sparsegpt_damp: float = _same("sparsegpt_damp")
  batch: int = _same("batch")
  evaluate: bool = param(True, "measure each pruned model's perplexity (and the dense one's)")
  timeout_min: float = param(60.0, "give up on a method after this many minutes", check=gt(0))

  def prune_config(self) -> armor_prune.Config:
    keep = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in _A}
    return armor_prune.Config(**keep, gen_tokens=0)


def preflight(cfg: Config) -> None:
  """armor_prune's checks of the model and texts, before any child process starts."""
  armor_prune.preflight(cfg.prune_config())


def _part_seconds(acfg: ArmorConfig, shapes) -> dict:
  """Per linear shape, :func:`armor_jax.solver.armor.step_seconds` on a random layer of
  that shape two iterations from its start (the parts' costs depend on shapes, not values)."""
  import jax  # pylint: disable=import-outside-toplevel
  from armor_jax.solver import armor, calibration  # pylint: disable=import-outside-toplevel
  out = {}
  for d_out, d_in in shapes:
    kw, kx = jax.random.split(jax.random.PRNGKey(d_out * 7919 + d_in))
    w = jax.random.normal(kw, (d_out, d_in))
    x = jax.random.normal(kx, (2 * d_in, d_in)) * jax.numpy.linspace(0.2, 2.0, d_in)
    stats = calibration.from_activations(x, full=acfg.objective == "output")
    if acfg.objective == "output":
      prob, state = armor._start_output(w, stats, acfg, jax.random.PRNGKey(0))
    else:
      prob, state = armor._start(w, stats.h, acfg, jax.random.PRNGKey(0))
    state, _ = armor.run_iterations(prob, acfg, state, 2)
    out[f"{d_out}x{d_in}"] = armor.step_seconds(prob, acfg, state)
  return out


def measure(method: str, config: dict, seed: int, evaluate: bool) -> dict:
  """One method's pipeline on armor_prune's ``config``, timed by phase, then (``evaluate``)
  its perplexity; ``dense`` only evaluates. Meant for a fresh process
  (:func:`experiments.harness.in_child`), whose peak resident memory is the method's own."""
  from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  cfg = validate(armor_prune.Config, config)
  say = lambda m: print(m, file=sys.stderr, flush=True)
  work = armor_prune.Workload(cfg, seed, say=say)
  res: dict = {}
  with tempfile.TemporaryDirectory() as tmp:
    if method == "dense":
      block = work.source.block
    else:
      phases = pipeline.Phases()
      with phases.active():
        store, records, seconds = armor_prune.prune_method(cfg, method, work, seed, Path(tmp),
                                                           progress=False, say=say,
                                                           phases=phases)
      res.update(seconds=seconds, phases=phases.seconds, counts=phases.counts,
                 layers=[{k: r[k] for k in ("block", "linear", "proxy_loss", "output_error",
                                            "seconds")} for r in records])
      if method in armor_prune.ARMORS:
        per_shape: dict[str, int] = {}
        for r in records:
          per_shape[f"{r['d_out']}x{r['d_in']}"] = per_shape.get(f"{r['d_out']}x{r['d_in']}",
                                                                 0) + 1
        res["layers_by_shape"] = per_shape
        res["parts"] = _part_seconds(pipeline.armor_settings(
            armor_prune.prune_config(cfg, method)), {(r["d_out"], r["d_in"]) for r in records})
      block = lambda i: pipeline.pruned_block(store, work.source, i)
    if evaluate:
      t_eval = time.perf_counter()
      res["ppl"] = work.perplexity(block, f"{method}: ppl", progress=False)
      res["eval_seconds"] = time.perf_counter() - t_eval
  res.update(peak_rss_gb=armor_prune.peak_rss_gb(), process_seconds=time.perf_counter() - t0)
  return res


def _iteration_split(res: dict) -> tuple[dict, list[dict]]:
  """ARMOR's iterations' seconds split by part in proportion to each shape's timed parts
  times the layers of that shape (every layer runs the same iterations unless it stopped
  early: the split is then approximate)."""
  rows, weight = [], {p: 0.0 for p in PARTS}
  for shape, parts in sorted(res["parts"].items()):
    n = res["layers_by_shape"][shape]
    rows.append({"shape": shape, "layers": n,
                 **{f"ms_{p}": 1e3 * parts[p] for p in PARTS},
                 "ms_iteration": 1e3 * sum(parts.values())})
    for p in PARTS:
      weight[p] += n * parts[p]
  total = sum(weight.values()) or 1.0
  it = res["phases"].get("armor_iterations", 0.0)
  return {f"armor_seconds_iter_{p}": it * weight[p] / total for p in PARTS}, rows


_ARMOR_NAMES = {"armor_start": "start", "armor_iterations": "iterations",
                "armor_finish": "finish"}


def run(cfg: Config, ctx) -> dict:
  config = as_container(cfg.prune_config())
  headline: dict[str, float] = {}
  rows = {k: [] for k in ("method", "seconds", "process_seconds", "peak_rss_gb", "ppl")}
  phase_rows = {"method": [], "phase": [], "seconds": []}
  layer_rows = {k: [] for k in ("method", "block", "linear", "proxy_loss", "output_error",
                                "seconds")}
  names = (["dense"] if cfg.evaluate else []) + list(cfg.methods)
  for method in names:
    out = ctx.out_dir / f"bench_{method}.json"
    if not out.exists():
      ctx.say(f"[bench_armor_model] {method}: running in a fresh process")
      io.write_json(out, in_child(measure, dict(method=method, config=config, seed=ctx.seed,
                                                evaluate=cfg.evaluate),
                                  timeout_s=cfg.timeout_min * 60))
    res = json.loads(out.read_text())
    if cfg.evaluate:
      headline[f"ppl_{method}"] = float(res["ppl"])
    if method == "dense":
      ctx.say(f"[bench_armor_model] dense: perplexity {res['ppl']:.3f}")
      continue
    ctx.say(f"[bench_armor_model] {method}: pipeline {res['seconds']:.1f} s, process "
            f"{res['process_seconds']:.1f} s, peak RSS {res['peak_rss_gb']:.2f} GB"
            + (f", perplexity {res['ppl']:.3f}" if cfg.evaluate else ""))
    for k in ("seconds", "process_seconds", "peak_rss_gb"):
      headline[f"{k}_{method}"] = float(res[k])
      rows[k].append(float(res[k]))
    rows["ppl"].append(float(res["ppl"]) if cfg.evaluate else float("nan"))
    rows["method"].append(method)
    errors = [r["output_error"] for r in res["layers"]]
    headline[f"output_error_mean_{method}"] = float(sum(errors) / len(errors))
    for r in res["layers"]:
      layer_rows["method"].append(method)
      for k, v in r.items():
        layer_rows[k].append(v)
    for phase, secs in sorted(res["phases"].items()):
      phase = _ARMOR_NAMES.get(phase, phase)
      headline[f"{method}_seconds_{phase}"] = float(secs)
      phase_rows["method"].append(method), phase_rows["phase"].append(phase)
      phase_rows["seconds"].append(float(secs))
    if method in armor_prune.ARMORS:
      split, part_rows = _iteration_split(res)
      headline.update({k.replace("armor_", f"{method}_", 1): v for k, v in split.items()})
      headline[f"{method}_iterations"] = float(res["counts"].get("iterations", 0))
      ctx.write_csv(f"{method}_parts.csv", {k: [r[k] for r in part_rows] for k in part_rows[0]})
  for m in armor_prune.ARMORS:
    if m in cfg.methods and "sparsegpt" in cfg.methods:
      headline[f"{m}_over_sparsegpt"] = headline[f"seconds_{m}"] / headline["seconds_sparsegpt"]
  if "armor" in cfg.methods:
    headline["armor_within_30min"] = float(headline["seconds_armor"] <= 1800)
  if cfg.evaluate:
    headline.update(armor_prune.gaps_closed(headline, [
        headline[f"ppl_{m}"] for m in cfg.methods
        if m not in armor_prune.ARMORS + ("magnitude",)]))
  ctx.write_csv("methods.csv", rows)
  ctx.write_csv("phases.csv", phase_rows)
  ctx.write_csv("layers.csv", layer_rows)
  plt = io.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  phases = sorted(set(phase_rows["phase"]) - {"compile"})
  bottom = [0.0] * len(rows["method"])
  for ph in phases:
    vals = [next((s for m2, p2, s in zip(*phase_rows.values()) if m2 == m and p2 == ph), 0.0)
            for m in rows["method"]]
    axes[0].bar(rows["method"], vals, bottom=bottom, label=ph)
    bottom = [b + v for b, v in zip(bottom, vals)]
  axes[0].set_ylabel("pipeline wall time (s)")
  axes[0].legend(fontsize=7)
  axes[1].bar(rows["method"], rows["peak_rss_gb"])
  axes[1].set_ylabel("peak resident memory (GB)")
  ctx.save_figure(fig, "methods.png")
  import jax  # pylint: disable=import-outside-toplevel
  ctx.info["devices"] = [str(d) for d in jax.devices()]
  ctx.info["blocks"] = cfg.blocks or "all"
  return headline
