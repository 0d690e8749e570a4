"""Sweeps and ARMOR block ranges through Hydra's submitit launchers on a real one-node SLURM
cluster (tests/slurm_cluster.py, the ``slurm`` fixture) and on submitit's local executor.

Each sweep is checked against the same points run locally: the same headline numbers, bit for
bit; a point that fails at run time fails alone and is named in one line while the others
finish; re-launching skips the finished points; config errors stop every point before a job is
sent. Jobs ask for one CPU and 2 GB, so two run at once on a 2-core node.
"""

import json
import os
from pathlib import Path

import pytest

import hf_fixtures as hf
import test_entrypoint as entrypoint
from test_entrypoint import TINY

JOBS = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]
# impl=pallas passes every config check and fails when the run starts (no GPU here)
FAILING = ["experiment=bench_kernels", "shapes=[16x16]", "batches=[1]", "copy_mb=1", "repeats=1",
           "calls=1", "weight_sets=1", "block_size=16", "progress=false", "impl=reference,pallas"]


def cli(args, cwd, env=None, timeout=900):
  return entrypoint.cli(args, cwd, env, timeout)


def _launch(launcher, request):
  """(launcher arguments, environment) for a sweep on ``launcher``."""
  if launcher == "slurm":
    return ["launcher=slurm", *JOBS], request.getfixturevalue("slurm").env()
  return ["launcher=submitit_local", *JOBS], dict(os.environ)


def _headlines(sweep_dir: Path) -> dict:
  return {p.parent.name: json.loads(p.read_text())["headline"]
          for p in sorted(sweep_dir.glob("*/results.json"))}


LAUNCHERS = [pytest.param("slurm", marks=pytest.mark.needs_slurm), "submitit_local"]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
  """The headlines of the tiny sweep run here, one point after the other (Hydra's basic
  launcher): what every launcher must reproduce."""
  d = tmp_path_factory.mktemp("local_sweep")
  r = cli(["-m", *TINY, "seed=0,1"], d)
  assert r.returncode == 0, r.stderr[-3000:]
  return _headlines(d / "multirun" / "erasure_bandit")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_sweep_gives_the_local_numbers_bit_for_bit_and_resumes(launcher, request, tmp_path,
                                                                  local_sweep):
  args, env = _launch(launcher, request)
  (tmp_path / "jobs").mkdir()
  r = cli(["-m", *args, *TINY, "seed=0,1"], tmp_path / "jobs", env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Bypassing sacct" not in r.stdout + r.stderr
  got = _headlines(tmp_path / "jobs" / "multirun" / "erasure_bandit")
  assert len(got) == 2 and got == local_sweep
  stamps = {p: p.stat().st_mtime_ns
            for p in (tmp_path / "jobs" / "multirun").rglob("results.json")}
  again = cli(["-m", *args, *TINY, "seed=0,1"], tmp_path / "jobs", env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "sweep: 2 runs: 0 ran, 0 failed, 2 skipped" in again.stderr
  assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS + ["local"])
def test_a_point_that_fails_at_run_time_fails_alone(launcher, request, tmp_path):
  args, env = _launch(launcher, request) if launcher != "local" else ([], dict(os.environ))
  r = cli(["-m", *args, *FAILING], tmp_path, env)
  failed = [line for line in r.stderr.splitlines() if line.startswith("run failed:")]
  assert r.returncode == 1, r.stderr[-3000:]
  assert len(failed) == 1 and "impl=pallas" in failed[0] and "impl=reference" not in failed[0]
  assert "sweep: 2 runs: 1 ran, 1 failed, 0 skipped" in r.stderr
  runs = tmp_path / "multirun" / "bench_kernels"
  done = [p.parent.name for p in runs.glob("*/results.json")]
  assert len(done) == 1 and "impl=reference" in done[0]
  assert json.loads((runs / done[0] / "results.json").read_text())["complete"] is True
  if launcher != "slurm":
    return            # resuming is the launcher's business only through the files it reads
  # re-launched: the finished point is skipped, the failed one redone (and failing again)
  again = cli(["-m", *args, *FAILING], tmp_path, env)
  assert again.returncode == 1 and "sweep: 2 runs: 0 ran, 1 failed, 1 skipped" in again.stderr
  assert sum(line.startswith("run failed:") for line in again.stderr.splitlines()) == 1


@pytest.mark.parametrize("launcher", ["slurm", "submitit_local"])
def test_config_errors_stop_every_point_before_a_job_is_sent(launcher, tmp_path):
  r = cli(["-m", f"launcher={launcher}", *JOBS, *TINY, "eps=0.5,1.5"], tmp_path, timeout=300)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "config error: key 'eps': must be a number in [0, 1); got 1.5"], r.stderr
  assert list(tmp_path.iterdir()) == []


def test_without_accounting_job_states_come_from_squeue(monkeypatch):
  """The watcher reads squeue once sacct says accounting is disabled: a registered job (or
  array task) that squeue no longer lists has ended; one it lists keeps its state."""
  pytest.importorskip("submitit")
  from experiments import cluster
  monkeypatch.setattr(cluster, "_installed", False)
  monkeypatch.setattr(cluster, "_accounting_disabled", lambda: True)
  from submitit.slurm import slurm
  monkeypatch.setattr(slurm.SlurmJob, "watcher", slurm.SlurmJob.watcher)
  assert cluster.watch_without_accounting()
  w = slurm.SlurmJob.watcher
  for jid in ("12_0", "12_1", "13"):
    w.register_job(jid)
  command = w._make_command()  # pylint: disable=protected-access
  assert command[0] == "squeue" and "-r" in command
  info = w.read_info("12_1|RUNNING|vm\n99|RUNNING|vm\n")
  assert info["12_1"]["State"] == "RUNNING"
  assert info["12_0"]["State"] == "COMPLETED" and info["13"]["State"] == "COMPLETED"


@pytest.mark.slow
@pytest.mark.needs_slurm
def test_armor_block_ranges_as_slurm_jobs_assemble_to_the_one_process_bits(slurm, tmp_path):
  common, env = hf.armor_prune_workspace(tmp_path)
  args = common + ["experiment=armor_prune", "methods=[armor]", "mode=dense", "armor.iters=2",
                   "gen_tokens=2"]
  env = dict(env, SLURM_CONF=slurm.env()["SLURM_CONF"])
  shared = tmp_path / "shared"
  jobs = cli(["-m", "launcher=slurm", *JOBS, *args, f"prune_dir={shared}",
              "block_range=[0,2],[2,3]"], tmp_path, env)
  assert jobs.returncode == 0, jobs.stderr[-3000:]
  whole = cli([*args, f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path, env)
  assert whole.returncode == 0, whole.stderr[-3000:]
  assembled = cli(["experiment=armor_assemble", *common, "methods=[armor]", "mode=dense",
                   "armor.iters=2", "gen_tokens=2", f"prune_dir={shared}",
                   f"hydra.run.dir={tmp_path / 'assembled'}"], tmp_path, env)
  assert assembled.returncode == 0, assembled.stderr[-3000:]
  got = json.loads((tmp_path / "assembled" / "results.json").read_text())["headline"]
  want = json.loads((tmp_path / "whole" / "results.json").read_text())["headline"]
  assert {k: v for k, v in got.items() if not k.startswith("seconds_") and k != "peak_rss_gb"} \
      == {k: v for k, v in want.items() if not k.startswith("seconds_") and k != "peak_rss_gb"}
  for i in range(3):
    assert (shared / f"block_{i}.safetensors").read_bytes() == (
        tmp_path / "whole" / "prune_armor" / f"block_{i}.safetensors").read_bytes()
  (shared / "block_2.json").unlink()        # a range that did not finish: named by assemble
  missing = cli(["experiment=armor_assemble", *common, "methods=[armor]", "mode=dense",
                 "armor.iters=2", "gen_tokens=2", f"prune_dir={shared}",
                 f"hydra.run.dir={tmp_path / 'again'}"], tmp_path, env)
  assert missing.returncode == 2 and "block 2 is missing" in missing.stderr, missing.stderr[-2000:]
