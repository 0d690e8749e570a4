"""Timing helpers every benchmark shares: the best of repeated calls and a table of timings.

A benchmark times our jitted call and the baseline the issue names in the same run and
reports their ratio. :func:`timed` runs a call once to compile (and to measure compile
plus run), then ``repeats`` more times with fresh inputs, keeping the fastest; baselines
get the same best-of treatment (:func:`best_of`), so a noisy neighbour on a shared
machine cannot flatter the ratio. :class:`Table` collects one row per timed thing for the
benchmark's ``metrics.csv``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax


class Timing(NamedTuple):
  """first: seconds of the first call (compile + run); best: the fastest of the repeats;
  result: the last call's result."""
  first: float
  best: float
  result: Any


def _call(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def timed(fn: Callable[[int], Any], repeats: int) -> Timing:
  """``fn(0)`` (compile and run), then ``fn(1) .. fn(repeats)`` timed; ``fn(i)`` should
  differ only in its inputs (e.g. the PRNG key ``seed + i``)."""
  first, out = _call(fn, 0)
  best = float("inf")
  for i in range(1, repeats + 1):
    seconds, out = _call(fn, i)
    best = min(best, seconds)
  return Timing(first, best, out)


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
  """(fastest seconds, last result) of ``repeats`` calls of ``fn()``."""
  best, out = float("inf"), None
  for _ in range(repeats):
    seconds, out = _call(fn)
    best = min(best, seconds)
  return best, out


class Table:
  """Rows of named columns (a metrics CSV): ``add(**row)`` appends one."""

  def __init__(self, *columns: str):
    self.columns = {c: [] for c in columns}

  def add(self, **row) -> None:
    if set(row) != set(self.columns):
      raise KeyError(f"row {sorted(row)} != columns {sorted(self.columns)}")
    for k, v in row.items():
      self.columns[k].append(v)

  def column(self, name: str) -> list:
    return self.columns[name]
