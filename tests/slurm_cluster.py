"""A real one-node SLURM cluster on the loopback, for tests: munge, slurmctld and slurmd started
from files in a temporary directory and stopped by their pids.

No cgroups and no accounting (``proctrack/linuxproc``, ``task/none``,
``accounting_storage/none``): what a container or a CI machine allows. Starts in seconds as
root or as an ordinary user (the daemons and the jobs run as the user who starts them). Where the
daemons are not installed, :func:`ensure_installed` installs Debian's ``slurm-wlm`` and
``munge`` with apt-get only when ``ARMOR_INSTALL_SLURM=1`` (which .ci/run sets), and otherwise
says why the tests that need it skip.

    cluster = OneNodeSlurm(tmp_dir)
    cluster.start()                  # waits until the node is idle
    subprocess.run(["sbatch", ...], env=cluster.env())
    cluster.stop()                   # exactly the daemons it started
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel")
PACKAGES = ("slurm-wlm", "munge")
INSTALL_ENV = "ARMOR_INSTALL_SLURM"


def _which(name: str) -> str | None:
  return shutil.which(name) or next(
      (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)


def missing() -> list[str]:
  """The daemons and clients that are not installed."""
  return [n for n in DAEMONS + CLIENTS if _which(n) is None]


def ensure_installed() -> str | None:
  """None when SLURM and munge are usable; otherwise why not (after installing them with
  apt-get if ``ARMOR_INSTALL_SLURM=1`` and this is root on a Debian-like system)."""
  if not missing():
    return None
  if os.environ.get(INSTALL_ENV) != "1":
    return (f"SLURM is not installed ({', '.join(missing())} missing); set {INSTALL_ENV}=1 to "
            f"let the tests apt-get install {' '.join(PACKAGES)}")
  if os.geteuid() != 0 or not shutil.which("apt-get"):
    return f"{INSTALL_ENV}=1 but installing needs root and apt-get"
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  error = ""
  for cmd in (["apt-get", "install", "-y", "-q", *PACKAGES],
              ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
    try:
      p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=600)
    except subprocess.TimeoutExpired:
      return f"{' '.join(cmd)} ran past 600 s"
    error = p.stderr.strip()[-300:]
    if p.returncode == 0 and cmd[1] == "install" and not missing():
      return None
  return f"apt-get install {' '.join(PACKAGES)} failed: {error}"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _node_line() -> str:
  """This machine as slurmd sees it (``slurmd -C``): NodeName=... CPUs=... RealMemory=..."""
  out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True,
                       timeout=60).stdout
  return next(line for line in out.splitlines() if line.startswith("NodeName="))


class OneNodeSlurm:
  """A one-node cluster whose every file lives under ``root``."""

  def __init__(self, root: Path):
    self.root = Path(root)
    self.conf = self.root / "slurm.conf"
    self.socket = self.root / "munge" / "munge.socket"
    self.pids: dict[str, int] = {}
    self.node = ""

  def env(self) -> dict[str, str]:
    """The environment a client (sbatch, submitit) needs to reach this cluster."""
    return dict(os.environ, SLURM_CONF=str(self.conf))

  def _write(self) -> None:
    r = self.root
    for d in ("munge", "state", "spool", "log"):
      (r / d).mkdir(parents=True, exist_ok=True)
    os.chmod(r / "munge", 0o700)
    key = r / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    line = _node_line()
    self.node = line.split()[0].split("=", 1)[1]
    user = getpass.getuser()
    self.conf.write_text("\n".join([
        "ClusterName=armortest",
        f"SlurmctldHost={self.node}(127.0.0.1)",
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={self.socket}",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        "KillWait=5",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={r / 'state'}",
        f"SlurmdSpoolDir={r / 'spool'}",
        f"SlurmctldPidFile={r / 'slurmctld.pid'}",
        f"SlurmdPidFile={r / 'slurmd.pid'}",
        f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
        f"{line} NodeAddr=127.0.0.1 State=UNKNOWN",
        f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ""]))

  def _pid(self, name: str, timeout: float = 30.0) -> int:
    path = {"munged": self.root / "munge" / "munged.pid", "slurmctld": self.root / "slurmctld.pid",
            "slurmd": self.root / "slurmd.pid"}[name]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
      if path.is_file() and path.read_text().strip():
        return int(path.read_text().split()[0])
      time.sleep(0.1)
    raise RuntimeError(f"{name} did not start: {self.logs(name)}")

  def logs(self, name: str) -> str:
    """The tail of a daemon's log."""
    path = {"munged": self.root / "munge" / "munged.log",
            "slurmctld": self.root / "log" / "slurmctld.log",
            "slurmd": self.root / "log" / "slurmd.log"}[name]
    return path.read_text(errors="replace")[-2000:] if path.is_file() else "(no log)"

  def start(self, timeout: float = 60.0) -> None:
    """Writes the config and key, starts munged, slurmctld and slurmd, waits for an idle node."""
    self._write()
    m = self.root / "munge"
    self._daemon("munged", [_which("munged"), "--force", f"--socket={self.socket}",
                            f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                            f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
    self._daemon("slurmctld", [_which("slurmctld"), "-f", str(self.conf)])
    self._daemon("slurmd", [_which("slurmd"), "-f", str(self.conf)])
    t0 = time.monotonic()
    state = ""
    while time.monotonic() - t0 < timeout:
      p = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True,
                         text=True, check=False, timeout=30)
      state = p.stdout.strip()
      if state == "idle":
        return
      time.sleep(0.5)
    self.stop()
    raise RuntimeError(f"the node did not become idle (state {state!r}); slurmctld: "
                       f"{self.logs('slurmctld')[-600:]} slurmd: {self.logs('slurmd')[-600:]}")

  def _daemon(self, name: str, argv: list[str]) -> None:
    p = subprocess.run(argv, env=self.env(), capture_output=True, text=True, check=False,
                       timeout=60)
    if p.returncode:
      self.stop()
      raise RuntimeError(f"{name} failed to start ({p.returncode}): {p.stderr.strip()[-500:]} "
                         f"{self.logs(name)[-500:]}")
    self.pids[name] = self._pid(name)

  def stop(self, timeout: float = 20.0) -> None:
    """Stops the daemons this object started (by pid, newest first) and waits for them."""
    for name in reversed(list(self.pids)):
      pid = self.pids.pop(name)
      try:
        os.kill(pid, signal.SIGTERM)
      except ProcessLookupError:
        continue
      t0 = time.monotonic()
      while time.monotonic() - t0 < timeout:
        try:
          os.kill(pid, 0)
        except ProcessLookupError:
          break
        time.sleep(0.1)
      else:
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
