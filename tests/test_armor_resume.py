"""``armor_prune`` killed (SIGKILL) and restarted in its run directory ends with exactly the bits
of an uninterrupted run.

Each chain kills a real process at one point after another (tests/kill_at.py): inside a block,
between blocks, during an evaluation, while a block file, the compressed checkpoint or a method's
result is half written; then runs to the end. The final headline (timings aside), per-layer
records, greedy continuations and compressed checkpoint bytes must equal those of an
uninterrupted run, for the whole model and for ``blocks=N``. A persistent compilation cache
shared by the processes keeps each run near 10 s.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hf_fixtures as hf

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  d = tmp_path_factory.mktemp("resume")
  common, env = hf.armor_prune_workspace(d)
  args = ["experiment=armor_prune"] + common + ["methods=[wanda,armor]", "armor.iters=3",
                                                "gen_tokens=3"]
  return d, env, args


def _run(setup, run_dir: str, extra=(), kill=None) -> subprocess.CompletedProcess:
  d, env, args = setup
  cmd = [sys.executable, "-m", "experiments.main"]
  if kill is not None:
    cmd = [sys.executable, str(ROOT / "tests" / "kill_at.py"), *map(str, kill), "--"]
  return subprocess.run(cmd + args + list(extra) + [f"hydra.run.dir={d / run_dir}"], cwd=d,
                        env=env, capture_output=True, text=True, timeout=900)


def _outcome(run: Path) -> dict:
  res = json.loads((run / "results.json").read_text())
  head = {k: v for k, v in res["headline"].items()
          if not k.startswith("seconds_") and k != "peak_rss_gb"}
  with open(run / "layers.csv") as f:
    rows = [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(f)]
  return {"headline": head, "layers": rows, "continuations": res["info"]["continuations"],
          "checkpoint": [p.read_bytes() for p in sorted((run / "armor_checkpoint").iterdir())]}


@pytest.fixture(scope="module")
def reference(setup):
  out = {}
  for name, extra in (("whole", ()), ("blocks2", ("blocks=2",))):
    r = _run(setup, f"ref_{name}", extra)
    assert r.returncode == 0, r.stderr[-3000:]
    out[name] = _outcome(setup[0] / f"ref_{name}")
  return out


CHAINS = {
    # inside armor's block 1 (wanda prunes 21 linears first); then during armor's evaluation
    "layer_then_eval": ((), [("layer", 33), ("eval", 1)]),
    # after armor's block 0 is saved; mid-write of its block_2.safetensors, of a shard of the
    # compressed checkpoint, of method_armor.json
    "block_then_writes": ((), [("block", 4), ("write", 1, "prune_armor/block_2.safetensors"),
                               ("write", 1, "armor_checkpoint/model-block-00001"),
                               ("write", 1, "method_armor.json")]),
    # blocks=2: inside armor's block 0 (wanda prunes 14 first); after its block 0 is saved
    "blocks2": (("blocks=2",), [("layer", 20), ("block", 1)]),
}


@pytest.mark.parametrize("chain", CHAINS)
def test_killed_and_resumed_run_is_bit_identical(setup, reference, chain):
  extra, kills = CHAINS[chain]
  run = setup[0] / f"chain_{chain}"
  for kill in kills:
    r = _run(setup, run.name, extra, kill)
    assert r.returncode == -9, (kill, r.returncode, r.stderr[-3000:])
    assert not (run / "results.json").exists()
  r = _run(setup, run.name, extra)
  assert r.returncode == 0, r.stderr[-3000:]
  got, want = _outcome(run), reference["blocks2" if extra else "whole"]
  for k in want:
    assert got[k] == want[k], k
  n_blocks = 2 if extra else 3
  for method in ("wanda", "armor"):
    done = sorted((run / f"prune_{method}").glob("block_*.json"))
    assert len(done) == n_blocks
    assert all(len(json.loads(p.read_text())["records"]) == 7 for p in done)
  assert not list(run.rglob(".*.tmp"))          # torn temporaries were cleared on resume
