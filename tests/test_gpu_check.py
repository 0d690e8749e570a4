"""The GPU command (experiments.gpu_check): its CPU dry run end to end, as on a bare GPU image,
and how it judges the targets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import gpu_check

ROOT = Path(__file__).resolve().parent.parent
#: Installed here, absent from the GPU image: the dry run must not need them.
NOT_ON_THE_IMAGE = ("hydra", "omegaconf", "wandb", "gguf")


def _row(kind, batch, shape, speedup, impl="pallas"):
  return {"shape": shape, "batch": str(batch), "kind": kind, "impl": impl,
          "seconds": "1e-5", "bandwidth_fraction": str(0.5 * speedup),
          "peak_fraction": str(0.4 * speedup), "speedup_vs_dense": str(speedup)}


def test_each_target_is_judged_at_its_worst_shape():
  rows = [_row("24", 1, "4096x4096", 1.7), _row("24", 16, "4096x14336", 1.62),
          _row("24", 8, "14336x4096", 1.55), _row("24", 128, "4096x4096", 0.2),  # not a target
          _row("24", 2048, "4096x4096", 0.95), _row("24", 2048, "4096x14336", 0.93),
          _row("armor_fused_b", 1, "4096x4096", 1.5), _row("armor", 1, "4096x4096", 0.1),
          _row("24", 1, "4096x4096", 0.01, impl="reference")]                  # other impl
  t = gpu_check.judge(rows, "pallas")
  assert t["decode_24"]["speedup"] == pytest.approx(1.55) and not t["decode_24"]["met"]
  assert t["decode_24"]["worst_case"] == "b8_14336x4096" and t["decode_24"]["cases"] == 3
  assert t["decode_24"]["peak_fraction"] == pytest.approx(0.4 * 1.55)
  assert t["prefill_24"]["met"] and t["prefill_24"]["speedup"] == pytest.approx(0.93)
  assert t["decode_armor_fused_b"]["met"] and t["decode_armor_fused_b"]["cases"] == 1
  assert gpu_check.judge([], "pallas")["decode_24"]["met"] is None


def test_the_mosaic_armor_is_judged_on_its_own_kind():
  """Mosaic GPU's ARMOR (B as its own kernel) has no fused-B rows: its decode goal reads kind
  ``armor``, and the Triton rows never count for it."""
  rows = [_row("armor", 1, "4096x4096", 1.3, impl="mosaic"),
          _row("armor", 16, "4096x14336", 1.5, impl="mosaic"),
          _row("armor_fused_b", 1, "4096x4096", 2.0),
          _row("24", 1, "4096x4096", 1.9, impl="mosaic")]
  t = gpu_check.judge(rows, "mosaic")
  assert "decode_armor_fused_b" not in t
  assert t["decode_armor"]["speedup"] == pytest.approx(1.3) and not t["decode_armor"]["met"]
  assert t["decode_armor"]["shapes"] == 2
  assert t["decode_24"]["met"] and t["prefill_24"]["met"] is None


@pytest.mark.slow
def test_the_dry_run_writes_one_flat_folder_without_the_packages_a_gpu_image_lacks(tmp_path):
  hide = tmp_path / "hide"
  for name in NOT_ON_THE_IMAGE:
    (hide / name).mkdir(parents=True)
    (hide / name / "__init__.py").write_text('raise ImportError("not on the GPU image")\n')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), str(ROOT)]))
  out = tmp_path / "out"
  p = subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--out", str(out),
                      "--work", str(tmp_path / "work"), "--dry-run"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900, check=False)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  files = sorted(f.name for f in out.iterdir())
  assert files == ["kernels.csv", "log.txt", "prune_results.json", "summary.json", "summary.md",
                   "tiles.csv"]
  assert all(f.is_file() for f in out.iterdir())           # flat: what the device tool returns
  s = json.loads((out / "summary.json").read_text())
  assert s["dry_run"] and s["env"]["backend"] == "cpu"
  assert {k: v["status"] for k, v in s["steps"].items()} == {
      "tests_mosaic": "ok", "tests_triton": "ok", "tune": "ok", "bench 64x128 interpret": "ok",
      "prune": "ok"}
  assert all("passed" in s["steps"][k]["tail"][0] for k in ("tests_mosaic", "tests_triton"))
  # decode targets measured (prefill is not at the dry run's batches), on the kernels' rows
  t = s["targets"]["interpret"]
  assert t["decode_24"]["speedup"] > 0 and t["decode_armor_fused_b"]["speedup"] > 0
  assert t["prefill_24"]["met"] is None
  assert s["tune"]["best"] == {"b1_64x512": s["tune"]["best"]["b1_64x512"]}
  assert s["tune"]["headline"]["max_rel_error"] < 1e-2
  kinds = {(r["kind"], r["impl"]) for r in gpu_check.csv.DictReader(
      (out / "kernels.csv").open())}
  assert {("24", "interpret"), ("armor", "interpret"), ("armor_fused_b", "interpret"),
          ("dense", "xla")} <= kinds
  bench = s["bench"]["64x128 interpret"]
  assert bench["max_rel_error_24"] < 1e-5 and bench["max_rel_error_armor"] < 2e-2
  prune = s["prune"]
  assert prune["checkpoint_over_armor_ppl"] == pytest.approx(1.0, abs=0.02)
  assert prune["ppl_armor"] < 1.2 * prune["ppl_dense"]


@pytest.mark.parametrize("experiment", ["bench_kernels", "bench_mgpu_tiles"])
def test_benchmarks_refuse_weights_shared_within_a_timed_call(precheck_cli, experiment):
  """XLA's GPU dot merger reads a weight once for every dot that shares it: a timed call whose
  products share weights would time the dense baseline on fewer bytes than it moves."""
  code, err = precheck_cli([f"experiment={experiment}", "calls=8", "weight_sets=4"])
  assert code == 2 and len(err) == 1
  assert "weight_sets" in err[0] and "at least calls (8)" in err[0]
