"""SLURM through Hydra's submitit launcher on clusters without job accounting.

submitit learns a job's state from ``sacct``. On a cluster without accounting (a one-node test
cluster, a small lab cluster: ``AccountingStorageType=accounting_storage/none``) every call
fails; submitit warns on each poll ("Bypassing sacct error") and, worse, never learns that a
job ended without writing its result (killed for time or memory), so the sweep waits for it
forever. :func:`watch_without_accounting` replaces submitit's SLURM watcher with one that asks
``sacct`` while it works and, once ``sacct`` says accounting is disabled, reads ``squeue``
instead: a job it no longer lists has ended (submitit then finds its result, or reports the
job as having produced none).
"""

from __future__ import annotations

import getpass
import logging
import subprocess

_LOG = logging.getLogger(__name__)
_installed = False


def _accounting_disabled() -> bool:
  """Whether ``sacct`` answers that accounting storage is disabled (one cheap call)."""
  try:
    p = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True,
                       timeout=30, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return p.returncode != 0 and "accounting storage is disabled" in p.stderr.lower()


def watch_without_accounting() -> bool:
  """Installs the accounting-aware watcher on submitit's SLURM jobs (idempotent).

  Returns False where submitit is not installed (nothing to do).
  """
  global _installed  # pylint: disable=global-statement
  if _installed:
    return True
  try:
    from submitit.slurm import slurm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False

  class Watcher(slurm.SlurmInfoWatcher):
    """sacct while accounting works; squeue (jobs it no longer lists have ended) otherwise."""

    def __init__(self, delay_s: int = 60):
      super().__init__(delay_s=delay_s)
      self._squeue = None        # decided at the first poll
      self._asked: set[str] = set()

    def _make_command(self):
      command = super()._make_command()
      if command is None:
        return None
      if self._squeue is None:
        self._squeue = _accounting_disabled()
        if self._squeue:
          _LOG.info("SLURM accounting is disabled: job states come from squeue")
      if not self._squeue:
        return command
      self._asked = set(self._registered - self._finished)     # e.g. "12" or "12_3"
      # -r: one line per array task, so that each task's id can be looked up
      return ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%N"]

    def read_info(self, string):
      if not self._squeue:
        return super().read_info(string)
      if not isinstance(string, str):
        string = string.decode()
      listed = [line for line in string.splitlines() if line.strip()]
      present = {line.split("|")[0] for line in listed}
      ended = [f"{jid}|COMPLETED|" for jid in self._asked - present]
      return super().read_info("\n".join(["JobID|State|NodeList", *listed, *ended]))

  slurm.SlurmJob.watcher = Watcher(delay_s=slurm.SlurmJob.watcher._delay_s)  # pylint: disable=protected-access
  _installed = True
  return True
