"""The Hydra entry point, run as a user would: config errors, outputs, resume, sweeps."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["experiment=erasure_bandit", "algorithms=[ucb,lsae,fb_sae]", "horizon=400",
        "n_arms=3", "eps_grid=[0.0,0.9]", "n_arms_grid=[2,3]", "horizon_grid=[200,400]",
        "n_seeds=2", "n_points=20", "progress=false"]


def cli(args, cwd, env=None, timeout=300):
  """The entry point in a fresh process from ``cwd`` (``env``: the environment to start from)."""
  env = dict(env or os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="0")
  return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, key", [
    (["experiment=erasure_bandit", "foo=1"], "foo"),
    (["experiment=erasure_bandit", "horizon=-5"], "horizon"),
    (["experiment=erasure_bandit", "eps=1.0"], "eps"),
    (["experiment=erasure_bandit", "eps_grid=[0.5,1.2]"], "eps_grid"),
    (["experiment=erasure_bandit", "n_arms=1"], "n_arms"),
    (["experiment=erasure_bandit", "n_seeds=0"], "n_seeds"),
    (["experiment=erasure_bandit", "horizon=abc"], "horizon"),
    (["experiment=linear_cmdp_hypercube", "d_grid=[5,15]"], "d_grid"),
    (["experiment=linear_cmdp_hypercube", "zeta_grid=[0.5,9.0]"], "zeta_grid"),
    (["experiment=linear_cmdp_hypercube", "gap=40"], "gap"),
    (["experiment=nope"], "experiment"),
    (["logger=nope"], "logger"),
    (["-m", "experiment=erasure_bandit", "eps=0.5,1.5"], "eps"),
])
def test_config_errors_exit_2_with_one_line_and_no_output(precheck_cli, tmp_path, args, key):
  code, lines = precheck_cli(args)
  assert code == 2 and len(lines) == 1 and f"key '{key}'" in lines[0], lines
  assert list(tmp_path.iterdir()) == []  # no run directory, no partial output


def test_help_lists_every_key_with_the_value_this_command_line_gives(tmp_path, monkeypatch,
                                                                    capsys):
  import experiments.main
  from experiments import armor_prune
  from experiments.schema import describe
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as e:
    experiments.main.main(["experiment=armor_prune", "armor.iters=3", "blocks=2", "--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0 and out.startswith("experiment=armor_prune: 2:4 pruning")
  table = out.split("Keys of armor_prune")[1]
  keys = [line.split("=")[0].strip() for line in table.splitlines() if line.startswith("  ")
          and "=" in line.split()[0]]
  assert keys[:len(describe(armor_prune.Config))] == [k for k, *_ in describe(armor_prune.Config)]
  assert {"seed", "resume", "logger.mode"} <= set(keys)
  for line in ("  armor.iters=3 ", "  blocks=2 ", "  armor.block_size=128 ", "  seed=0 ",
               "  methods=[magnitude,wanda,sparsegpt,nowag_p,armor]"):
    assert line in out, line
  assert list(tmp_path.iterdir()) == []


def test_help_with_a_bad_key_is_a_config_error(precheck_cli):
  code, lines = precheck_cli(["experiment=erasure_bandit", "eps=2", "--help"])
  assert code == 2 and len(lines) == 1 and "key 'eps'" in lines[0], lines


def test_a_config_error_in_a_real_process(tmp_path):
  r = cli(["experiment=erasure_bandit", "eps=1.2"], tmp_path)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "config error: key 'eps': must be a number in [0, 1); got 1.2"], r.stderr
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_run_writes_results_and_resume_skips(tmp_path):
  r = cli(TINY, tmp_path)
  assert r.returncode == 0, r.stderr
  (run_dir,) = (tmp_path / "outputs" / "erasure_bandit").iterdir()
  res = json.loads((run_dir / "results.json").read_text())
  assert res["complete"] is True and res["seed"] == 0
  for alg in ("ucb", "lsae", "fb_sae"):
    assert res["headline"][f"regret_{alg}"] > 0
  assert res["info"]["instance"]["K"] == 3 and res["config"]["horizon"] == 400
  assert {"jax", "numpy", "hydra-core"} <= set(res["versions"])
  for f in ("metrics.csv", "curves.csv", "regret_vs_t.png", "regret_vs_eps.png",
            "regret_vs_K.png", "regret_vs_T.png"):
    assert (run_dir / f).stat().st_size > 0, f
  mtime = (run_dir / "results.json").stat().st_mtime_ns
  again = cli(TINY, tmp_path)
  assert again.returncode == 0 and "skipped" in again.stderr
  assert (run_dir / "results.json").stat().st_mtime_ns == mtime
  redo = cli(TINY + ["resume=false"], tmp_path)
  assert redo.returncode == 0 and "skipped" not in redo.stderr
  assert json.loads((run_dir / "results.json").read_text())["headline"] == res["headline"]


@pytest.mark.slow
def test_joblib_sweep_runs_each_point_once(tmp_path):
  args = ["-m", "launcher=joblib", *TINY, "eps=0.5,0.9"]
  r = cli(args, tmp_path)
  assert r.returncode == 0, r.stderr
  runs = sorted(p.name for p in (tmp_path / "multirun" / "erasure_bandit").iterdir())
  assert len(runs) == 2 and all("eps=" in name for name in runs)
  eps = sorted(json.loads((tmp_path / "multirun" / "erasure_bandit" / n / "results.json")
                          .read_text())["headline"]["eps"] for n in runs)
  assert eps == [0.5, 0.9]
  again = cli(args, tmp_path)  # re-launching the sweep skips both finished runs
  assert again.returncode == 0 and again.stderr.count("; skipped (resume=false") == 2
  assert "sweep: 2 runs: 0 ran, 0 failed, 2 skipped" in again.stderr


def test_slurm_launcher_composes():
  from hydra import compose, initialize_config_dir
  with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
    cfg = compose(config_name="config", overrides=["launcher=slurm", "experiment=erasure_bandit",
                                                   "hydra.launcher.partition=gpu"],
                  return_hydra_config=True)
  assert "SlurmLauncher" in cfg.hydra.launcher._target_
  assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.timeout_min > 0


@pytest.mark.parametrize("args, key", [
    (["experiment=erasure_bandit", "means=given", "given_means=[0.1,0.2]"], "given_means"),
    (["experiment=erasure_bandit", "initial_arm=4", "n_arms_grid=[2,5]"], "initial_arm"),
    (["erasure_bandit.initial_arm=9"], "erasure_bandit.initial_arm"),
    (["experiment=bench_armor_layer", "official.scheme=exact"], "official.scheme"),
    (["experiment=bench_armor_layer", "exact.iters=0"], "exact.iters"),
    (["armor_prune.armor.cg_steps=-1"], "armor_prune.armor.cg_steps"),
])
def test_cross_key_errors_are_caught_before_any_output(precheck_cli, tmp_path, args, key):
  code, lines = precheck_cli(args)
  assert code == 2 and len(lines) == 1 and f"key '{key}'" in lines[0], lines
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sweep", [  # the armor sweep's preflight tokenizes the default texts
    pytest.param(p.stem, marks=pytest.mark.slow) if p.stem.startswith("armor") else p.stem
    for p in sorted((ROOT / "conf" / "sweep").glob("*.yaml"))])
def test_sweep_configs_validate_every_run(sweep):
  from experiments.main import precheck
  n_runs, sweep_dir = precheck(["-m", f"+sweep={sweep}"])
  # a sweep file with sweeper params is a multirun; one without is a ready-made single config
  multirun = "sweeper:" in (ROOT / "conf" / "sweep" / f"{sweep}.yaml").read_text()
  assert (n_runs >= 4 if multirun else n_runs == 1) and sweep_dir is not None


@pytest.mark.slow
def test_sweep_values_are_checked_and_command_line_wins():
  from experiments.main import precheck
  from experiments.schema import ConfigError
  assert precheck(["-m", "+sweep=erasure_eps"]) == (16, Path("multirun"))  # 4 eps x 4 seeds
  assert precheck(["-m", "+sweep=erasure_eps", "eps=0.3", "hydra.sweep.dir=elsewhere"]) == (
      4, Path("elsewhere"))
  with pytest.raises(ConfigError, match="key 'eps'"):
    precheck(["-m", "+sweep=erasure_eps", "eps=0.5,1.0"])


TINY_WANDB = ["experiment=erasure_bandit", "algorithms=[ucb]", "horizon=300", "n_arms=3",
              "eps_grid=[0.5]", "n_arms_grid=[3]", "horizon_grid=[300]", "n_seeds=2",
              "progress=false"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["offline", "online"])
def test_wandb_never_waits_on_a_network(tmp_path, monkeypatch, mode):
  """offline writes a local run; online against an unreachable server (a closed loopback
  port) gives up after init_timeout_s and logs offline. Either way the run completes."""
  monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
  monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
  r = cli(TINY_WANDB + [f"logger={mode}", "logger.init_timeout_s=5"], tmp_path)
  assert r.returncode == 0, r.stderr
  (run_dir,) = (tmp_path / "outputs" / "erasure_bandit").iterdir()
  assert json.loads((run_dir / "results.json").read_text())["complete"] is True
  assert list((run_dir / "wandb").glob("offline-run-*"))


def test_without_hydra_one_run_composes_as_hydra_does_and_uses_the_same_harness(
    tmp_path, monkeypatch, capsys):
  """A machine without Hydra (a bare GPU image) runs one run with the same command: the
  config it composes is the one Hydra composes, and the harness writes the same results."""
  import experiments.main as m
  from hydra import compose, initialize_config_dir
  from omegaconf import OmegaConf, open_dict
  args = TINY + ["eps=0.5", "logger=offline", "seed=3"]
  with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
    cfg = compose(config_name="config", overrides=args)
  with open_dict(cfg):
    cfg.pop("hydra", None)
  name, values, out = m.plain_compose(args)
  assert name == "erasure_bandit" and values == OmegaConf.to_container(cfg, resolve=True)
  assert out == Path("outputs/erasure_bandit") / m._run_name(",".join(sorted(
      a for a in args if not a.startswith(("experiment=", "progress=", "logger=")))))
  assert m.plain_compose(["experiment=tour", "armor_prune.armor.iters=3"])[1][
      "armor_prune"]["armor"]["iters"] == 3
  monkeypatch.setattr(m, "hydra", None)
  monkeypatch.chdir(tmp_path)
  for bad, key in ((["experiment=erasure_bandit", "foo=1"], "foo"),
                   (["-m", "experiment=erasure_bandit"], "command line"),
                   (["experiment=erasure_bandit", "eps=1.5"], "eps")):
    with pytest.raises(SystemExit) as e:
      m.main(bad)
    assert e.value.code == 2 and f"key '{key}'" in capsys.readouterr().err
  assert list(tmp_path.iterdir()) == []
  m.main(TINY + ["algorithms=[lsae]", "n_points=5", "agent_eps=[]", "hydra.run.dir=plain"])
  res = json.loads((tmp_path / "plain" / "results.json").read_text())
  assert res["complete"] and res["config"]["horizon"] == 400 and len(res["config_hash"]) == 16
  assert res["headline"]["regret_lsae"] > 0


def child_probe(x: int) -> dict:
  """Run by the next test in a child process."""
  return {"pid": os.getpid(), "twice": 2 * x}


def test_in_child_runs_a_piece_of_an_experiment_in_a_fresh_process(monkeypatch):
  from experiments.harness import RunError, in_child
  monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'tests'}{os.pathsep}{ROOT}")
  res = in_child(child_probe, {"x": 21})
  assert res["twice"] == 42 and res["pid"] != os.getpid()
  with pytest.raises(RunError, match="test_entrypoint:child_probe in a child process exited"):
    in_child(child_probe, {"y": 1})           # a TypeError in the child


def test_a_launcher_without_its_plugin_is_named_with_the_extra_to_install(tmp_path, monkeypatch):
  """A launcher config whose Hydra plugin is missing (here: a plugin that does not exist) is a
  config error on `launcher`, naming what to install, not on another key."""
  import shutil
  import experiments.main as m
  from experiments.schema import ConfigError
  conf = tmp_path / "conf"
  shutil.copytree(ROOT / "conf", conf)
  (conf / "launcher" / "nowhere.yaml").write_text(
      "# @package _global_\ndefaults:\n  - override /hydra/launcher: joblib_missing\n")
  monkeypatch.setattr(m, "CONF_DIR", conf)
  with pytest.raises(ConfigError) as e:
    m.precheck(["-m", "launcher=nowhere", "experiment=erasure_bandit", "seed=0,1"])
  assert e.value.key == "launcher" and "'nowhere' needs" in str(e.value)
  assert "pip install -e '.[cluster]'" in str(e.value) and "\n" not in str(e.value)
  assert "hydra-joblib-launcher" in m._explain(
      Exception("In 'hydra/config': Could not find 'hydra/launcher/joblib'"),
      ["-m", "launcher=joblib"]).message
