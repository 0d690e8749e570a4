"""Peak memory and time of the streamed pruning pipeline on a 1B-parameter Llama.

Writes a synthetic Llama (default: about 1.1B parameters, TinyLlama's shape:
22 blocks, hidden 2048, intermediate 5632, 32 heads, 4 kv heads, vocabulary
32000, untied head; :func:`armor_jax.model.synthetic.write_llama`) as sharded
bfloat16 safetensors into a temporary directory, then, each method in a fresh
process (its peak resident memory is its own), runs what ``armor_prune``
runs for one method: prune (Wanda: every block; ARMOR: the first
``blocks`` blocks, ``armor.iters`` iterations) and evaluate the pruned
model's perplexity, streamed block by block. The byte-level tokenizer of the
synthetic model reads the Shakespeare text; its random weights make the
perplexities meaningless, the memory and the time are what is measured.

Peak memory is ``ru_maxrss`` of the child process (resident pages, file
pages mapped into it included; the pipeline reads tensors with positioned
reads, not maps). The plan (:func:`armor_jax.model.pipeline.plan`) is
printed before any work, plus the resident size measured before any weight
is read (the process's libraries).

Headline: ``model_gb`` (the model's bfloat16 bytes on disk, GiB),
``peak_rss_gb_<method>``, ``peak_over_model_<method>``,
``seconds_per_block_<method>`` (pipeline seconds over blocks pruned),
``plan_gb_<method>`` (libraries + plan), ``plan_error_<method>``
(measured peak / plan - 1), ``ppl_<method>``.

    python -m experiments.main experiment=bench_armor_scale                  # ~1 h on 2 CPU cores
    python -m experiments.main experiment=bench_armor_scale layers=4 hidden=512 intermediate=1408
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from armor_jax.solver.armor import ArmorConfig
from experiments import armor_prune, io
from experiments.harness import in_child
from experiments.schema import as_container, each, ge, gt, one_of, param, validate


@dataclasses.dataclass(frozen=True)
class Config:
  layers: int = param(22, "decoder blocks of the synthetic model", check=ge(1))
  hidden: int = param(2048, "hidden size", check=ge(64))
  intermediate: int = param(5632, "MLP width", check=ge(64))
  heads: int = param(32, "attention heads", check=ge(1))
  kv_heads: int = param(4, "key/value heads", check=ge(1))
  vocab: int = param(32000, "vocabulary (>= 256, the byte tokenizer's)", check=ge(256))
  methods: tuple[str, ...] = param(("wanda", "armor"), "methods, each in a fresh process",
                                   check=each(one_of(*armor_prune.METHODS)))
  blocks: int = param(2, "blocks ARMOR prunes (the rest stay dense; Wanda prunes all)",
                      check=ge(1))
  armor: ArmorConfig = param(ArmorConfig(iters=3), "ARMOR's settings")
  n_calib: int = param(32, "calibration sequences", check=ge(1))
  calib_len: int = param(512, "tokens per calibration sequence", check=ge(8))
  eval_windows: int = param(8, "evaluation windows", check=ge(1))
  eval_len: int = param(512, "tokens per evaluation window", check=ge(8))
  batch: int = param(8, "sequences per forward call", check=ge(1))
  timeout_min: float = param(120.0, "give up on a method after this many minutes", check=gt(0))

  def llama(self):
    from armor_jax.model.llama import LlamaConfig  # pylint: disable=import-outside-toplevel
    return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden,
                       intermediate_size=self.intermediate, num_layers=self.layers,
                       num_heads=self.heads, num_kv_heads=self.kv_heads,
                       head_dim=self.hidden // self.heads, tie_embeddings=False,
                       max_position=max(self.calib_len, self.eval_len), name="synthetic")

  def check(self):
    if self.hidden % self.heads or self.heads % self.kv_heads:
      from experiments.schema import ConfigError  # pylint: disable=import-outside-toplevel
      raise ConfigError("heads", "must divide hidden, and kv_heads must divide heads")


def measure(config: dict, seed: int) -> dict:
  """One method's prune-and-evaluate run on armor_prune's ``config`` (a fresh process)."""
  say = lambda m: print(m, file=sys.stderr, flush=True)
  cfg = validate(armor_prune.Config, config)
  work = armor_prune.Workload(cfg, seed, say=say)
  method = cfg.methods[0]
  plan_gb, parts = armor_prune.say_plan(cfg, work, method, say)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    store, records, seconds = armor_prune.prune_method(cfg, method, work, seed, Path(tmp),
                                                       progress=False, say=say)
    t1 = time.perf_counter()
    from armor_jax.model import pipeline as pl  # pylint: disable=import-outside-toplevel
    ppl = work.perplexity(lambda i: pl.pruned_block(store, work.source, i), f"{method}: ppl",
                          progress=False)
    t2 = time.perf_counter()
  blocks = len({r["block"] for r in records})
  return {"peak_rss_gb": armor_prune.peak_rss_gb(),
          "plan_gb": plan_gb, "plan_parts": parts, "seconds": seconds, "blocks": blocks,
          "seconds_per_block": seconds / blocks, "prune_wall_s": t1 - t0, "eval_s": t2 - t1,
          "ppl": ppl}


def run(cfg: Config, ctx) -> dict:
  from armor_jax.model import synthetic  # pylint: disable=import-outside-toplevel
  headline: dict[str, float] = {}
  rows = {k: [] for k in ("method", "peak_rss_gb", "plan_gb", "seconds_per_block")}
  with tempfile.TemporaryDirectory(prefix="bench_armor_scale_") as tmp:
    model = Path(tmp) / "model"
    t0 = time.perf_counter()
    synthetic.write_llama(model, cfg.llama(), seed=ctx.seed)
    model_bytes = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    headline["model_gb"] = model_bytes / 2**30
    ctx.say(f"[bench_armor_scale] wrote {model_bytes / 2**30:.2f} GiB in "
            f"{time.perf_counter() - t0:.0f} s")
    for method in cfg.methods:
      out = ctx.out_dir / f"bench_{method}.json"
      if not out.exists():
        config = as_container(armor_prune.Config(
            model=str(model), methods=(method,), n_calib=cfg.n_calib, calib_len=cfg.calib_len,
            eval_len=cfg.eval_len, eval_windows=cfg.eval_windows, batch=cfg.batch,
            armor=cfg.armor, blocks=cfg.blocks if method == "armor" else 0,
            gen_tokens=0))
        ctx.say(f"[bench_armor_scale] {method}: running in a fresh process")
        io.write_json(out, in_child(measure, dict(config=config, seed=ctx.seed),
                                    timeout_s=cfg.timeout_min * 60))
      res = json.loads(out.read_text())
      ctx.say(f"[bench_armor_scale] {method}: peak {res['peak_rss_gb']:.2f} GiB (plan "
              f"{res['plan_gb']:.2f}), {res['seconds_per_block']:.1f} s per block")
      headline[f"peak_rss_gb_{method}"] = res["peak_rss_gb"]
      headline[f"peak_over_model_{method}"] = res["peak_rss_gb"] / headline["model_gb"]
      headline[f"seconds_per_block_{method}"] = res["seconds_per_block"]
      headline[f"plan_gb_{method}"] = res["plan_gb"]
      headline[f"plan_error_{method}"] = res["peak_rss_gb"] / res["plan_gb"] - 1
      headline[f"ppl_{method}"] = res["ppl"]
      for k in rows:
        rows[k].append(method if k == "method" else res[k])
  ctx.write_csv("methods.csv", rows)
  plt = io.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  x = range(len(rows["method"]))
  ax.bar([i - 0.2 for i in x], rows["peak_rss_gb"], 0.4, label="measured peak")
  ax.bar([i + 0.2 for i in x], rows["plan_gb"], 0.4, label="plan")
  ax.axhline(headline["model_gb"], color="k", ls="--", lw=1, label="model (bf16)")
  ax.axhline(0.75 * headline["model_gb"], color="r", ls=":", lw=1, label="0.75 x model")
  ax.set_xticks(list(x), rows["method"])
  ax.set_ylabel("GiB")
  ax.legend(fontsize=8)
  ctx.save_figure(fig, "memory.png")
  ctx.info["model"] = {"layers": cfg.layers, "hidden": cfg.hidden, "params":
                       cfg.llama().block_params() * cfg.layers + 2 * cfg.vocab * cfg.hidden}
  return headline
