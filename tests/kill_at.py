"""Runs the entry point and SIGKILLs the process at a chosen point (resume tests).

    python tests/kill_at.py POINT N [SUBSTR] -- experiment=armor_prune ...

POINT, counted over the whole process:

* ``layer``: inside a block, as the N-th linear is pruned (armor_jax.model.pipeline.solve_linear,
  or the group of linears solved together that holds it: solve_linears);
* ``block``: between blocks, right after the N-th block checkpoint is saved;
* ``eval``: during an evaluation, at the N-th trace of the head's loss (armor_jax.model.text.nll_sums,
  traced once per process and window shape);
* ``write``: while a file is written, at the N-th atomic rename whose target contains
  SUBSTR: the temporary file is cut to half its size first, as a kill mid-write leaves it.

SIGKILL runs no handler and no ``finally``: what is on disk is what a real kill leaves.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _kill() -> None:
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def _counting(fn, n: int, before: bool = True, calls=None, weight=lambda *a: 1):
  """``fn``, killing the process at its call that brings the count (``calls[0]``, shared
  between wrappers; each call adds ``weight(*args)``) to ``n`` or past it."""
  calls = [0] if calls is None else calls

  def wrapped(*args, **kwargs):
    seen = calls[0]
    calls[0] += weight(*args)
    hit = seen < n <= calls[0]
    if before and hit:
      _kill()
    out = fn(*args, **kwargs)
    if not before and hit:
      _kill()
    return out

  return wrapped


def install(point: str, n: int, substr: str = "") -> None:
  from armor_jax.model import pipeline, text
  if point == "layer":
    calls = [0]     # a linear alone, or same-shape linears solved together (ARMOR)
    pipeline.solve_linear = _counting(pipeline.solve_linear, n, calls=calls)
    pipeline.solve_linears = _counting(pipeline.solve_linears, n, calls=calls,
                                       weight=lambda ws, *_: len(ws))
  elif point == "block":
    pipeline.Checkpoint.put = _counting(pipeline.Checkpoint.put, n, before=False)
  elif point == "eval":
    text.nll_sums = _counting(text.nll_sums, n)
  elif point == "write":
    replace, calls = os.replace, [0]

    def cut_then_kill(src, dst, *args, **kwargs):
      if substr in str(dst):
        calls[0] += 1
        if calls[0] == n:
          size = os.path.getsize(src)
          with open(src, "r+b") as f:
            f.truncate(size // 2)
          _kill()
      return replace(src, dst, *args, **kwargs)

    os.replace = cut_then_kill
  else:
    raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
  sep = sys.argv.index("--")
  point, n, *rest = sys.argv[1:sep]
  from experiments import main   # first: it sets XLA_FLAGS before jax starts
  install(point, int(n), *rest)
  main.main(sys.argv[sep + 1:])
