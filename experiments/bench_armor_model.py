"""Wall time and peak memory of the whole pruning pipeline, per method, on a real model.

Each method runs in a fresh Python process (so its peak resident memory is
its own): load the model (default SmolLM2-135M), tokenize the texts, then
:func:`armor_jax.model.pipeline.prune_model` over every block at the settings of
``armor_prune`` (calibration statistics block by block, the solver,
propagation through the pruned block). Perplexity is not measured here
(``armor_prune`` does).

Headline: ``seconds_<method>`` (the pipeline's wall time, model loading
excluded), ``process_seconds_<method>`` (the whole child process),
``peak_rss_gb_<method>``, ``armor_over_sparsegpt`` (ARMOR's pipeline time over
SparseGPT's) and ``armor_within_30min`` (1 if ARMOR's pipeline took at most
30 minutes). A finished method is not redone when the run resumes.

    python -m experiments.main experiment=bench_armor_model              # ~35 min on 2 CPU cores
    python -m experiments.main experiment=bench_armor_model methods=[sparsegpt,armor] blocks=4
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


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = _same("model")
  calib_text: str = _same("calib_text")
  n_calib: int = _same("n_calib")
  calib_len: int = _same("calib_len")
  methods: tuple[str, ...] = _same("methods")
  mode: str = _same("mode")
  blocks: int = _same("blocks")
  armor: ArmorConfig = _same("armor")
  sparsegpt_damp: float = _same("sparsegpt_damp")
  batch: int = _same("batch")
  timeout_min: float = param(60.0, "give up on a method after this many minutes", check=gt(0))

  def prune_config(self) -> armor_prune.Config:
    keep = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in _A}
    return armor_prune.Config(**keep, eval_windows=1, gen_tokens=0)


def preflight(cfg: Config) -> None:
  """armor_prune's checks of the model and texts, before any child process starts."""
  armor_prune.preflight(cfg.prune_config())


def measure(method: str, config: dict, seed: int) -> dict:
  """One method's pipeline on armor_prune's ``config``, timed; meant for a fresh process
  (:func:`experiments.harness.in_child`), whose peak resident memory is the method's own."""
  t0 = time.perf_counter()
  cfg = validate(armor_prune.Config, config)
  say = lambda m: print(m, file=sys.stderr, flush=True)
  work = armor_prune.Workload(cfg, seed, say=say)
  with tempfile.TemporaryDirectory() as tmp:
    *_, seconds = armor_prune.prune_method(cfg, method, work, seed, Path(tmp), progress=False,
                                           say=say)
  return {"seconds": seconds, "peak_rss_gb": armor_prune.peak_rss_gb(),
          "process_seconds": time.perf_counter() - t0}


def run(cfg: Config, ctx) -> dict:
  config = as_container(cfg.prune_config())
  headline: dict[str, float] = {}
  rows = {k: [] for k in ("method", "seconds", "process_seconds", "peak_rss_gb")}
  for method in cfg.methods:
    out = ctx.out_dir / f"bench_{method}.json"
    if not out.exists():
      ctx.say(f"[bench_armor_model] {method}: running in a fresh process")
      io.write_json(out, in_child(measure, dict(method=method, config=config, seed=ctx.seed),
                                  timeout_s=cfg.timeout_min * 60))
    res = json.loads(out.read_text())
    ctx.say(f"[bench_armor_model] {method}: pipeline {res['seconds']:.1f} s, process "
            f"{res['process_seconds']:.1f} s, peak RSS {res['peak_rss_gb']:.2f} GB")
    for k in ("seconds", "process_seconds", "peak_rss_gb"):
      headline[f"{k}_{method}"] = float(res[k])
      rows[k].append(float(res[k]))
    rows["method"].append(method)
  if "armor" in cfg.methods and "sparsegpt" in cfg.methods:
    headline["armor_over_sparsegpt"] = headline["seconds_armor"] / headline["seconds_sparsegpt"]
  if "armor" in cfg.methods:
    headline["armor_within_30min"] = float(headline["seconds_armor"] <= 1800)
  ctx.write_csv("methods.csv", rows)
  plt = io.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  axes[0].bar(rows["method"], rows["seconds"])
  axes[0].set_ylabel("pipeline wall time (s)")
  axes[1].bar(rows["method"], rows["peak_rss_gb"])
  axes[1].set_ylabel("peak resident memory (GB)")
  ctx.save_figure(fig, "methods.png")
  import jax  # pylint: disable=import-outside-toplevel
  ctx.info["devices"] = [str(d) for d in jax.devices()]
  ctx.info["blocks"] = cfg.blocks or "all"
  return headline
