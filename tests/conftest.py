"""Test setup: the entry point's XLA flags (one host device per core), set before jax loads."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import experiments.main  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import

import pytest  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def precheck_cli(tmp_path, monkeypatch, capsys):
  """The entry point in this process, for command lines that must stop before Hydra starts
  (config and input errors): returns (exit code, stderr lines), run from an empty tmp_path."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HYDRA_FULL_ERROR", "0")

  def run(args):
    with pytest.raises(SystemExit) as e:
      experiments.main.main(list(args))
      pytest.fail("the command line started a run; precheck_cli is for errors before one")
    return e.value.code, capsys.readouterr().err.strip().splitlines()

  return run


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
  """A real one-node SLURM cluster on the loopback for the session (tests/slurm_cluster.py);
  skips with the reason where SLURM is not installed and may not be."""
  import slurm_cluster  # pylint: disable=import-outside-toplevel
  why = slurm_cluster.ensure_installed()
  if why:
    pytest.skip(why)
  cluster = slurm_cluster.OneNodeSlurm(tmp_path_factory.mktemp("slurm"))
  cluster.start()
  yield cluster
  cluster.stop()


def pytest_terminal_summary(terminalreporter):
  """How many SLURM tests ran and how many skipped (CI prints this)."""
  counts = {}
  for outcome in ("passed", "failed", "error", "skipped"):
    for rep in terminalreporter.stats.get(outcome, []):
      if "needs_slurm" in getattr(rep, "keywords", {}) and (
          rep.when == "call" or (rep.when == "setup" and outcome in ("skipped", "error"))):
        counts[outcome] = counts.get(outcome, 0) + 1
  if counts:
    terminalreporter.write_line("SLURM tests: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
