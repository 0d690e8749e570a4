"""Where the pipeline's time goes (pipeline.Phases), the stop rule, and ARMOR with the full
input covariance as a pipeline method: phases change no bit, account for the wall time
without overlap, and count what ran."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import hf_fixtures as hf
from armor_jax.model import loaders, pipeline, synthetic
from armor_jax.model.llama import LlamaConfig
from armor_jax.solver import armor, calibration
from armor_jax.solver import synthetic as layers
from experiments import bench_armor_model

TINY = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, max_position=64)
SOLVER = {"armor": ("armor_start", "armor_iterations", "armor_finish"),
          "armor_output": ("armor_start", "armor_iterations", "armor_finish"),
          "sparsegpt": ("solve",)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  d = synthetic.write_llama(tmp_path_factory.mktemp("m") / "m", TINY, seed=5, dtype="float32")
  calib = np.random.default_rng(0).integers(0, TINY.vocab_size, (4, 32)).astype(np.int32)
  return loaders.open_model(str(d)), calib


def _strip(records):
  return [{k: v for k, v in r.items() if k not in ("seconds", "block_seconds")} for r in records]


@pytest.mark.parametrize("method", [pytest.param("armor", marks=pytest.mark.slow),
                                    pytest.param("armor_output", marks=pytest.mark.slow),
                                    "sparsegpt"])
@pytest.mark.slow
def test_phases_account_for_the_run_and_change_no_bit(model, method):
  src, calib = model
  pcfg = pipeline.PruneConfig(method=method, armor=armor.ArmorConfig(block_size=16, iters=3))
  key = jax.random.PRNGKey(0)
  plain = pipeline.prune(src, calib, pcfg, key, pipeline.Store())
  phases = pipeline.Phases()
  t0 = time.perf_counter()
  with phases.active():
    timed = pipeline.prune(src, calib, pcfg, key, pipeline.Store(), phases=phases)
  wall = time.perf_counter() - t0
  assert _strip(timed) == _strip(plain)
  want = {"read", "statistics", "transfer", "report", "propagate", "store", *SOLVER[method]}
  assert want <= set(phases.seconds), set(phases.seconds)
  assert not set(phases.seconds) - want - {"compile"}
  # disjoint phases inside one call: their sum cannot exceed its wall time
  assert sum(v for k, v in phases.seconds.items() if k != "compile") <= wall
  assert all(v >= 0 for v in phases.seconds.values())
  assert phases.counts["layers"] == 7 * TINY.num_layers
  if method != "sparsegpt":
    assert phases.counts["iterations"] == 3 * 7 * TINY.num_layers
  assert np.all(np.isfinite([r["output_error"] for r in timed]))


def test_compile_time_is_counted_only_while_active():
  phases = pipeline.Phases()
  f = jax.jit(lambda x: x * 3.0 + 1.0)
  with phases.active():
    jax.block_until_ready(f(np.ones(17, np.float32)))
  first = phases.seconds.get("compile", 0.0)
  assert first > 0
  jax.block_until_ready(jax.jit(lambda x: x - 2.0)(np.ones(19, np.float32)))   # not active
  assert phases.seconds["compile"] == first


@pytest.mark.slow
def test_the_stop_rule_ends_a_flat_run_and_keeps_the_best():
  w, x = layers.layer_and_inputs(jax.random.PRNGKey(2), 32, 64, 512)
  stats = calibration.from_activations(x)
  full, curve_full = armor.armor(w, stats, armor.ArmorConfig(block_size=16, iters=10))
  # every iteration falls short of a 90% relative decrease: stop after `patience` of them
  cfg = armor.ArmorConfig(block_size=16, iters=10, patience=3, rtol=0.9)
  out, curve = armor.armor(w, stats, cfg)
  assert len(curve) == 4
  np.testing.assert_array_equal(curve, curve_full[:4])
  np.testing.assert_array_equal(np.asarray(out.mask()), np.asarray(
      armor.armor(w, stats, armor.ArmorConfig(block_size=16, iters=3))[0].mask()))
  # in chunks: the same stop
  _, chunked = armor.armor(w, stats, cfg, chunk=2)
  np.testing.assert_array_equal(chunked, curve)
  # the official scheme's early stop is the same rule
  off = armor.ArmorConfig(block_size=16, scheme="official", iters=30, patience=2, rtol=0.5)
  _, curve_off = armor.armor(w, stats, off)
  assert len(curve_off) == 3


@pytest.mark.slow
def test_bench_armor_model_reports_the_price_by_phase(tmp_path):
  args, env = hf.armor_prune_workspace(tmp_path)
  keys = {f.name for f in dataclasses.fields(bench_armor_model.Config)} | {"armor.block_size"}
  args = [a for a in args if a.split("=")[0] in keys]
  run = tmp_path / "run"
  r = subprocess.run([sys.executable, "-m", "experiments.main", "experiment=bench_armor_model",
                      *args, "methods=[sparsegpt,armor,armor_output]", "armor.iters=2",
                      f"hydra.run.dir={run}"], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  h = json.loads((run / "results.json").read_text())["headline"]
  phases = ("read", "statistics", "transfer", "start", "iterations", "finish", "report",
            "propagate", "store", "compile")
  for m in ("armor", "armor_output"):
    assert all(f"{m}_seconds_{p}" in h for p in phases), sorted(h)
    split = sum(h[f"{m}_seconds_iter_{p}"] for p in bench_armor_model.PARTS)
    assert split == pytest.approx(h[f"{m}_seconds_iterations"], rel=1e-9)
    assert h[f"{m}_iterations"] == 2 * 7 * 3
    own = sum(h[f"{m}_seconds_{p}"] for p in phases if p != "compile")
    assert own <= h[f"process_seconds_{m}"]
    assert h[f"{m}_over_sparsegpt"] == pytest.approx(h[f"seconds_{m}"] / h["seconds_sparsegpt"])
  assert "sparsegpt_seconds_solve" in h
  gap = h["ppl_sparsegpt"] - h["ppl_dense"]
  assert h["gap_closed_armor"] == pytest.approx((h["ppl_sparsegpt"] - h["ppl_armor"]) / gap)
  assert h["gap_closed_armor_output"] == pytest.approx(
      (h["ppl_sparsegpt"] - h["ppl_armor_output"]) / gap)
  for name in ("methods.csv", "phases.csv", "layers.csv", "armor_parts.csv",
               "armor_output_parts.csv", "methods.png"):
    assert (run / name).exists(), name
  # resumed: nothing is redone, the same headline
  again = subprocess.run([sys.executable, "-m", "experiments.main",
                          "experiment=bench_armor_model", *args,
                          "methods=[sparsegpt,armor,armor_output]", "armor.iters=2",
                          f"hydra.run.dir={run}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
  assert again.returncode == 0 and "fresh process" not in again.stderr
  assert json.loads((run / "results.json").read_text())["headline"] == h
