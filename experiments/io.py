"""Crash-safe writing of a run's files: results.json, metrics CSV, figures.

Every file is written to a temporary name in the same directory and moved
into place with ``os.replace``, which is atomic on POSIX: a killed run leaves
either the previous file or the complete new one, never a truncated one. The
file gets the mode the user's umask gives any new file, so colleagues on a
shared directory can read it.
``results.json`` is written last and carries ``"complete": true``; a run
directory without it is unfinished and is redone on resume.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

RESULTS = "results.json"
#: Written into a sweep run's directory when the run fails: one line, the error.
FAILED = "failed.json"

# Keys of the resolved config that do not change what a run computes, so they
# are left out of the hash that resume compares.
VOLATILE_KEYS = ("resume", "progress", "logger")

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "hydra-core", "omegaconf",
             "wandb", "matplotlib")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary path; on success it is renamed onto ``path``."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  tmp = Path(tmp)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fchmod(f.fileno(), new_file_mode())   # mkstemp's 0600 would hide it from colleagues
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def new_file_mode() -> int:
  """The mode the process's umask gives a new file (0644 under the usual umask 022)."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def clear_temporaries(run_dir: str | os.PathLike) -> int:
  """Removes the temporaries :func:`atomic_path` leaves when a run is killed mid-write
  (``.<name>.<random>.tmp`` anywhere under ``run_dir``); returns how many."""
  stale = [p for p in Path(run_dir).rglob(".*.tmp") if p.is_file()]
  for p in stale:
    p.unlink()
  return len(stale)


def _jsonable(x):
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.generic,)):
    x = x.item()
  if isinstance(x, np.ndarray) or hasattr(x, "__jax_array__") or type(x).__name__ == "ArrayImpl":
    return _jsonable(np.asarray(x).tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
  return x


def write_json(path, obj) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_csv(path, columns: Mapping[str, Sequence[Any]]) -> None:
  """Writes equal-length columns as a CSV with a header row."""
  names = list(columns)
  cols = [np.asarray(columns[n]).reshape(-1) for n in names]
  lengths = {len(c) for c in cols}
  if len(lengths) > 1:
    raise ValueError(f"columns of unequal length: { {n: len(c) for n, c in zip(names, cols)} }")
  with atomic_path(path) as tmp:
    with open(tmp, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(names)
      for row in zip(*cols):
        writer.writerow([_jsonable(v) for v in row])


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend (runs write PNGs, no display)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_figure(fig, path) -> None:
  plt = pyplot()
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
  plt.close(fig)


def config_hash(resolved: Mapping[str, Any]) -> str:
  """A stable hash of the config keys that determine a run's results."""
  kept = {k: v for k, v in resolved.items() if k not in VOLATILE_KEYS and k != "hydra"}
  blob = json.dumps(_jsonable(kept), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_complete_results(run_dir) -> dict | None:
  """The run's results.json if it exists, parses and is marked complete."""
  path = Path(run_dir) / RESULTS
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) and data.get("complete") is True else None


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  try:
    import jax  # pylint: disable=import-outside-toplevel
    out["jax_backend"] = jax.default_backend()
  except Exception:  # pragma: no cover - jax is a hard dependency
    pass
  # the compiler flags the run had (host devices, CPU vector width: experiments/main.py)
  out["xla_flags"] = os.environ.get("XLA_FLAGS", "").strip()
  return out
