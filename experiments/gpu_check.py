"""One command for a GPU machine: the kernel tests compiled, the kernel benchmark, a short pruning
run through the kernels, and one results folder with the targets judged.

    python3 -m experiments.gpu_check --out DIR               # on the GPU machine, repo root
    python -m experiments.gpu_check --out DIR --dry-run      # anywhere: interpret mode, tiny

Made for a bare GPU image with JAX's CUDA build, flax, optax, numpy, scipy, pytest, hypothesis,
chex, pyyaml, matplotlib, tqdm, safetensors, tokenizers and ml_dtypes installed, and nothing
fetchable: it runs from the repository root without installing it, needs none of hydra-core,
omegaconf, wandb or gguf (the entry point runs single runs without Hydra) and reads no model or
text from outside the repository. Each step is a subprocess with its own time limit, all within
``--budget-s`` (a step that would start with too little time left is skipped and reported):

1. ``tests_mosaic``: the fast tier of ``tests/test_kernels_mgpu.py`` with the Mosaic GPU kernels
   compiled (``impl="mosaic"``, on a Hopper) against the references; the interpret-mode cases
   are left to the CPU. ``tests_triton``: ``pytest tests/test_kernels.py`` (on a GPU every case
   also runs the compiled Triton kernels, ``impl="pallas"``) and the fast tier of
   ``tests/test_kernel_ir.py`` (lowering and the pinned IR).
2. ``tune``: ``experiment=bench_mgpu_tiles``, the Mosaic GPU kernel's tile variants
   (:data:`TUNE_TILES`) at every shape, batches 1 and 2048.
3. ``bench``: ``experiment=bench_kernels`` once per layer shape (4096x4096, 4096x14336,
   14336x4096) and kernel family (``impl=mosaic`` with the plain-XLA path timed beside it,
   then ``impl=pallas``), batches 1, 16 and 2048. The first shape runs before step 4, the
   other two after it.
4. ``prune``: a random Llama written on the spot (:func:`armor_jax.model.synthetic.write_llama`,
   2 blocks of width 1024) pruned by ``experiment=armor_prune`` with ARMOR on text from the
   repository's own docs: the streamed pipeline on the accelerator, its compressed checkpoint
   saved, read back bit for bit and evaluated (``ppl_armor_checkpoint`` against ``ppl_armor``:
   1 up to bf16 rounding). The perplexity runs densified blocks; the kernels inside a model
   are the ``tests_mosaic`` case ``test_compressed_llama_runs_through_the_mosaic_kernels``.
   On an H200 this step is bound by XLA's compile time (about 10-26 s per solver program and
   layer shape).

``--steps`` runs a part (``tests``, ``tests_mosaic``, ``tests_triton``, ``tune``, ``bench``,
``prune``), ``--shapes`` and ``--impls`` narrow the benchmark: a lease too short for all of
it takes it in parts.

Files in ``--out`` (at most 8, flat, as the device tool returns them): ``summary.json`` (device,
versions, each step's status and seconds, the targets, every benchmark number),
``summary.md`` (the same as tables), ``kernels.csv`` (the benchmark's rows, all shapes),
``tiles.csv`` (the tile sweep's rows), ``prune_results.json`` and ``log.txt`` (every step's
output). Targets (docs/kernels.md), judged for each kernel family: 2:4 decode (batch 1 to 16)
>= 1.6x dense, ARMOR at decode >= 1.45x (B fused into the sparse kernel for Triton; B as its
own kernel for Mosaic GPU), 2:4 prefill (batch 2048) >= 0.9x dense, each the worst case over
the shapes, with its fraction of the measured copy bandwidth and of the device's nominal peak.

``--dry-run`` runs the same steps with the kernels in Pallas's interpreter at tiny shapes (a
CPU check of this script; its times mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("4096x4096", "4096x14336", "14336x4096")
#: The kernel families timed: Mosaic GPU (the Hopper path) and Triton (the Ampere path).
IMPLS = ("mosaic", "pallas")
#: (name, benchmark kind, batches, minimum speedup over dense); judged at the worst shape.
#: ARMOR's decode goal is for B fused into the sparse kernel, a Triton tiling; the Mosaic GPU
#: ARMOR (B as its own kernel, A fused) is judged on the same goal as kind ``armor``.
TARGETS = (("decode_24", "24", (1, 8, 16), 1.6),
           ("decode_armor_fused_b", "armor_fused_b", (1, 8, 16), 1.45),
           ("prefill_24", "24", (2048,), 0.9))
_MOSAIC_KIND = {"armor_fused_b": ("decode_armor", "armor")}
#: The Mosaic GPU tile variants the tune step times (experiment bench_mgpu_tiles).
TUNE_TILES = ("default,16x64x2x1,16x64x2x8,16x128x2x4,16x64x3x4o,16x64x4x8o,"
              "64x64x1x1,128x64x1x1,64x128x1x1,32x64x3x1o")


def _plan(dry_run: bool, shapes: tuple[str, ...] = SHAPES, impls: tuple[str, ...] = IMPLS,
          tiles: str = TUNE_TILES, tune_shapes: tuple[str, ...] | None = None) -> dict:
  """Each step's arguments and time limit (seconds), in the order they run."""
  if dry_run:
    small = ["shapes=[64x128]", "batches=[1]", "copy_mb=1", "repeats=1", "calls=1",
             "weight_sets=1", "block_size=16"]
    return {
        "tests_mosaic": (["tests/test_kernels_mgpu.py", "-m", "not slow", "-k",
                          "words_layout or block_diagonal_kernel_lowers"], 300),
        "tests_triton": (["tests/test_kernels.py", "tests/test_kernel_ir.py", "-m", "not slow",
                          "-k", "expand_tile"], 300),
        "tune": (["impl=mosaic_interpret", "shapes=[64x512]", "batches=[1]",
                  "tiles=[default,16x64x1x2]", "copy_mb=1", "repeats=1", "calls=1",
                  "weight_sets=1"], 300),
        "bench": ({("64x128", "interpret"): ["impl=interpret"] + small}, 300),
        "prune": (dict(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=1,
                       keys=["n_calib=2", "calib_len=32", "eval_len=32", "eval_windows=2",
                             "armor.block_size=16", "armor.iters=1"]), 300)}
  bench = ["batches=[1,16,2048]", "repeats=10"]
  # the compiled Mosaic GPU cases only: the interpret-mode ones are the CPU's job
  return {
      "tests_mosaic": (["tests/test_kernels_mgpu.py", "-m", "not slow", "-k",
                        "not mosaic_interpret"], 120),
      "tests_triton": (["tests/test_kernels.py", "tests/test_kernel_ir.py", "-m", "not slow"],
                       120),
      "tune": ([f"shapes=[{','.join(tune_shapes or shapes)}]", "batches=[1,2048]",
                f"tiles=[{tiles}]"],
               240),
      # the Mosaic run also times the plain-XLA path (unpack + dot), the bar at prefill
      "bench": ({(s, impl): bench + [f"impl={impl}", f"shapes=[{s}]",
                                     f"compare_reference={str(impl == 'mosaic').lower()}"]
                 for s in shapes for impl in impls}, 90),
      "prune": (dict(hidden=1024, intermediate=2816, heads=16, kv_heads=4, layers=2,
                     keys=["n_calib=16", "calib_len=256", "eval_len=256", "eval_windows=8"]),
                180)}


class Steps:
  """Runs subprocesses within a total budget, logging everything to one file."""

  def __init__(self, out: Path, budget_s: float):
    self.out, self.deadline = out, time.monotonic() + budget_s
    self.log = (out / "log.txt").open("w", encoding="utf-8")
    self.status: dict[str, dict] = {}
    # the children's environment, taken before this process pins itself to the CPU
    self.env = dict(os.environ, PYTHONUNBUFFERED="1")

  def say(self, msg: str) -> None:
    print(msg, flush=True)
    self.log.write(msg + "\n")
    self.log.flush()

  def skip(self, name: str) -> None:
    self.say(f"== {name}: skipped, {self.deadline - time.monotonic():.0f} s left of the budget")
    self.status[name] = {"status": "skipped", "seconds": 0.0}

  def run(self, name: str, argv: list[str], limit_s: float, min_s: float = 20.0) -> int | None:
    """Runs ``argv`` from the repository root; None if skipped for lack of time."""
    left = self.deadline - time.monotonic()
    if left < min_s:
      self.skip(name)
      return None
    limit = min(limit_s, left)
    self.say(f"== {name} (limit {limit:.0f} s): {' '.join(argv)}")
    t0 = time.monotonic()
    try:
      p = subprocess.run(argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=limit, check=False)
      rc, text = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
      rc = 124
      text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (
          e.stdout or "")
    seconds = time.monotonic() - t0
    self.log.write(text)
    self.say(f"== {name}: exit {rc} after {seconds:.0f} s")
    self.status[name] = {"status": "ok" if rc == 0 else ("timeout" if rc == 124 else "failed"),
                         "exit": rc, "seconds": seconds, "tail": text.strip().splitlines()[-1:]}
    return rc


_ENV = """import json, sys, jax
dev = jax.devices()[0]
print(json.dumps({"jax": jax.__version__, "backend": jax.default_backend(),
                  "device": getattr(dev, "device_kind", str(dev)),
                  "devices": jax.device_count(), "python": sys.version.split()[0]}))"""


def _env(env: dict) -> dict:
  """The JAX version and device, read in a child (this process never claims the GPU)."""
  p = subprocess.run([sys.executable, "-c", _ENV], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120, check=False)
  if p.returncode:
    return {"jax": "?", "backend": "?", "device": "?", "error": p.stderr.strip()[-500:]}
  return json.loads(p.stdout.strip().splitlines()[-1])


def _texts(work: Path) -> tuple[Path, Path]:
  """Calibration and evaluation text from the repository's own prose (README and docs)."""
  parts = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
  text = "\n\n".join(p.read_text(encoding="utf-8") for p in parts if p.is_file())
  half = len(text) // 2
  calib, evalt = work / "calib.txt", work / "eval.txt"
  calib.write_text(text[:half], encoding="utf-8")
  evalt.write_text(text[half:], encoding="utf-8")
  return calib, evalt


def _bench_rows(run_dirs: dict[str, Path]) -> tuple[list[dict], dict]:
  """Every run's CSV rows together, and each run's headline under its name (the runs of
  the kernel families share key names)."""
  rows, headline = [], {}
  for name, d in run_dirs.items():
    if (d / "kernels.csv").is_file():
      with (d / "kernels.csv").open(encoding="utf-8") as f:
        rows.extend(csv.DictReader(f))
    if (d / "results.json").is_file():
      headline[name] = json.loads((d / "results.json").read_text())["headline"]
  return rows, headline


def judge(rows: list[dict], impl: str) -> dict:
  """Each target at its worst shape: speedup, bandwidth fractions, and whether it is met."""
  out = {}
  for name, kind, batches, goal in TARGETS:
    if impl == "mosaic" and kind in _MOSAIC_KIND:
      name, kind = _MOSAIC_KIND[kind]
    cases = [r for r in rows if r["kind"] == kind and r["impl"] == impl
             and int(r["batch"]) in batches]
    if not cases:
      out[name] = {"goal": goal, "met": None, "note": "not measured"}
      continue
    worst = min(cases, key=lambda r: float(r["speedup_vs_dense"]))
    peak = worst.get("peak_fraction") or "nan"
    out[name] = {"goal": goal, "speedup": float(worst["speedup_vs_dense"]),
                 "met": float(worst["speedup_vs_dense"]) >= goal,
                 "worst_case": f"b{worst['batch']}_{worst['shape']}",
                 "bandwidth_fraction": float(worst["bandwidth_fraction"]),
                 "peak_fraction": float(peak), "cases": len(cases),
                 "shapes": len({r["shape"] for r in cases})}
  return out


def _markdown(summary: dict, rows: list[dict]) -> str:
  env = summary["env"]
  lines = [f"# GPU check: {env['device']} (JAX {env['jax']}, backend {env['backend']})", "",
           "| step | status | seconds |", "| --- | --- | --- |"]
  lines += [f"| {k} | {v['status']} | {v['seconds']:.0f} |" for k, v in summary["steps"].items()]
  lines += ["", "| impl | target | goal | speedup (worst) | where | shapes | of copy bw | "
            "of peak bw | met |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for impl, targets in summary["targets"].items():
    for k, t in targets.items():
      if t.get("speedup") is None:
        lines.append(f"| {impl} | {k} | {t['goal']} | - | - | - | - | - | not measured |")
        continue
      lines.append(f"| {impl} | {k} | >= {t['goal']}x | {t['speedup']:.2f}x | "
                   f"{t['worst_case']} | {t['shapes']} | {t['bandwidth_fraction']:.0%} | "
                   f"{t['peak_fraction']:.0%} | {'yes' if t['met'] else 'NO'} |")
  if rows:
    lines += ["", "| shape | batch | kind | impl | us | speedup | of copy bw | of peak bw |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
      peak = float(r.get("peak_fraction") or "nan")
      lines.append(f"| {r['shape']} | {r['batch']} | {r['kind']} | {r['impl']} | "
                   f"{float(r['seconds']) * 1e6:.1f} | {float(r['speedup_vs_dense']):.2f} | "
                   f"{float(r['bandwidth_fraction']):.0%} | {peak:.0%} |")
  tune = summary.get("tune") or {}
  if tune:
    h = tune["headline"]
    lines += ["", "| Mosaic GPU tiles: case | fastest tiles | its speedup | default's | "
              "default, regrouped per call |", "| --- | --- | --- | --- | --- |"]
    for case, best in tune["best"].items():
      cells = [h.get(f"speedup_{w}_{case}", float("nan")) for w in ("best", "default",
                                                                     "per_call")]
      lines.append(f"| {case} | {best} | " + " | ".join(f"{v:.2f}x" for v in cells) + " |")
  prune = summary.get("prune") or {}
  if prune:
    lines += ["", "| pruning (synthetic Llama) | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" for k, v in prune.items()]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, help="results folder (created; files are replaced)")
  ap.add_argument("--dry-run", action="store_true",
                  help="kernels in Pallas's interpreter at tiny shapes (a CPU check)")
  ap.add_argument("--budget-s", type=float, default=1500.0,
                  help="total seconds for all steps (default 1500; all of them should take 15 "
                  "to 20 minutes on an H200)")
  ap.add_argument("--work", default="", help="scratch folder for the runs (default: a temp dir)")
  ap.add_argument("--steps", default="tests,tune,bench,prune",
                  help="the steps to run, comma-separated, from tests (or one of tests_mosaic, "
                  "tests_triton), tune, bench, prune (default: all)")
  ap.add_argument("--impls", default=",".join(IMPLS),
                  help="the kernel families the bench step times (default: mosaic,pallas)")
  ap.add_argument("--shapes", default=",".join(SHAPES),
                  help="the benchmark's layer shapes, comma-separated (default: all three)")
  ap.add_argument("--tiles", default=TUNE_TILES,
                  help="the tune step's tile variants, BMxBNxSTAGESxSPLIT[o] or default, "
                  "comma-separated (default: a sweep of 10)")
  ap.add_argument("--tune-shapes", default="",
                  help="the tune step's layer shapes (default: those of --shapes)")
  args = ap.parse_args(argv)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
  work.mkdir(parents=True, exist_ok=True)
  steps = Steps(out, args.budget_s)
  # this process only writes files: keep its JAX (imported with the model code) off the GPU,
  # whose memory a JAX process claims when it first touches it
  os.environ["JAX_PLATFORMS"] = "cpu"
  todo = set(args.steps.split(","))
  if not todo <= {"tests", "tests_mosaic", "tests_triton", "tune", "bench", "prune"}:
    ap.error(f"--steps: each of tests, tests_mosaic, tests_triton, tune, bench, prune; got "
             f"{args.steps}")
  impls = tuple(args.impls.split(","))
  if not set(impls) <= set(IMPLS):
    ap.error(f"--impls: each of {', '.join(IMPLS)}; got {args.impls}")
  tune_shapes = tuple(args.tune_shapes.split(",")) if args.tune_shapes else None
  plan = {k: v for k, v in _plan(args.dry_run, tuple(args.shapes.split(",")), impls,
                                 args.tiles, tune_shapes).items()
          if k in todo or k.split("_")[0] in todo}
  env = _env(steps.env)
  steps.say(f"== env: {json.dumps(env)}")
  py = sys.executable

  # hydra-core's pytest plugin is not needed (and absent from a GPU image)
  pytest = [py, "-m", "pytest", "-v", "-rfE", "--tb=short", "-p", "no:cacheprovider",
            "-p", "no:hydra_pytest"]
  for name in ("tests_mosaic", "tests_triton"):
    if name in plan:
      test_args, limit = plan[name]
      steps.run(name, pytest + test_args, limit)

  tune_dir = work / "tune"
  if "tune" in plan:
    keys, limit = plan["tune"]
    steps.run("tune", [py, "-m", "experiments.main", "experiment=bench_mgpu_tiles",
                       f"hydra.run.dir={tune_dir}", "progress=false", *keys], limit)

  runs, limit = plan.get("bench", ({}, 0))
  bench_dirs = {}

  def bench(shape: str, impl: str) -> None:
    d = bench_dirs[f"{shape} {impl}"] = work / f"bench_{shape}_{impl}"
    steps.run(f"bench {shape} {impl}", [py, "-m", "experiments.main", "experiment=bench_kernels",
                                        f"hydra.run.dir={d}", "progress=false",
                                        *runs[shape, impl]], limit)

  # the first shape with every kernel family, then a model through the kernels, then the rest
  first = next(iter(runs), ("",))[0]
  for shape, impl in runs:
    if shape == first:
      bench(shape, impl)

  prune_dir = work / "prune"
  if "prune" in plan and steps.deadline - time.monotonic() > 20:
    spec, limit = plan["prune"]
    from armor_jax.model import synthetic  # pylint: disable=import-outside-toplevel
    from armor_jax.model.llama import LlamaConfig  # pylint: disable=import-outside-toplevel
    model = work / "model"
    synthetic.write_llama(model, LlamaConfig(
        vocab_size=256, hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
        num_layers=spec["layers"], num_heads=spec["heads"], num_kv_heads=spec["kv_heads"],
        head_dim=spec["hidden"] // spec["heads"], max_position=1024, name="synthetic"))
    calib, evalt = _texts(work)
    steps.run("prune", [py, "-m", "experiments.main", "experiment=armor_prune",
                        f"hydra.run.dir={prune_dir}", "progress=false", f"model={model}",
                        f"calib_text={calib}", f"eval_text={evalt}", "methods=[armor]",
                        "gen_tokens=0", *spec["keys"]], limit)
  elif "prune" in plan:
    steps.skip("prune")
  for shape, impl in runs:
    if shape != first:
      bench(shape, impl)

  rows, bench_headline = _bench_rows(bench_dirs)
  prune = {}
  if (prune_dir / "results.json").is_file():
    res = json.loads((prune_dir / "results.json").read_text())
    (out / "prune_results.json").write_text(json.dumps(res, indent=1))
    h = res["headline"]
    prune = {k: h[k] for k in ("ppl_dense", "ppl_armor", "ppl_armor_checkpoint",
                               "seconds_armor") if k in h}
    if "ppl_armor" in h and "ppl_armor_checkpoint" in h:
      prune["checkpoint_over_armor_ppl"] = h["ppl_armor_checkpoint"] / h["ppl_armor"]
  if rows:
    with (out / "kernels.csv").open("w", newline="", encoding="utf-8") as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
  tune = {}
  if (tune_dir / "results.json").is_file():
    res = json.loads((tune_dir / "results.json").read_text())
    tune = {"headline": res["headline"], "best": res.get("info", {}).get("best", {})}
    if (tune_dir / "tiles.csv").is_file():
      (out / "tiles.csv").write_bytes((tune_dir / "tiles.csv").read_bytes())
  targets = {impl: judge(rows, impl) for impl in (("interpret",) if args.dry_run else IMPLS)}
  summary = {"env": env, "dry_run": args.dry_run, "steps": steps.status, "targets": targets,
             "bench": bench_headline, "tune": tune, "prune": prune}
  (out / "summary.json").write_text(json.dumps(summary, indent=1))
  (out / "summary.md").write_text(_markdown(summary, rows))
  steps.say((out / "summary.md").read_text())
  ok = all(s["status"] == "ok" for s in steps.status.values())
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
