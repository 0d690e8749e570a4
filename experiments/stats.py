"""Small statistics shared by experiments: means with confidence intervals, slopes, and the
strict setting's feasible sample size (:func:`feasible_n`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from scipy import stats


def mean_ci(x, level: float = 0.95) -> tuple[float, float, float]:
  """(mean, lo, hi): Student-t confidence interval of the mean of ``x``."""
  x = np.asarray(x, np.float64).reshape(-1)
  m = float(x.mean())
  if x.size < 2:
    return m, m, m
  half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
  return m, m - half, m + half


def loglog_slope(x, y, level: float = 0.95) -> tuple[float, float, float]:
  """(slope, lo, hi) of the least-squares fit log y = a + slope log x.

  The interval is the t interval of the OLS slope (nan with fewer than 3 points).
  """
  lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
  fit = stats.linregress(lx, ly)
  if lx.size < 3:
    return float(fit.slope), float("nan"), float("nan")
  half = float(stats.t.ppf(0.5 + level / 2, lx.size - 2) * fit.stderr)
  return float(fit.slope), float(fit.slope) - half, float(fit.slope) + half


def finite_loglog_slope(x, y, level: float = 0.95) -> tuple[float, float, float]:
  """:func:`loglog_slope` over the points with finite y (nan unless two distinct x remain)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(y)
  if ok.sum() >= 2 and len(np.unique(x[ok])) >= 2:
    return loglog_slope(x[ok], y[ok], level)
  return float("nan"), float("nan"), float("nan")


def one_at_a_time(base: dict, sweeps: dict[str, tuple[str, Sequence]]
                  ) -> tuple[list[dict], dict[str, list[int]]]:
  """Unique points of one-at-a-time sweeps around ``base`` and, per sweep, its point indices.

  Args:
    base: the base point, e.g. ``{"eps": 0.1, "H": 10}``.
    sweeps: sweep name -> (the key it varies, its values).

  Returns:
    (points, where): ``where["base"]`` and ``where[name]`` index into ``points``;
    a point shared by several sweeps (the base, typically) appears once.
  """
  points: list[dict] = []

  def add(p):
    if p not in points:
      points.append(p)
    return points.index(p)

  where = {"base": [add(dict(base))]}
  for name, (key, grid) in sweeps.items():
    where[name] = [add(dict(base, **{key: v})) for v in grid]
  return points, where


def from_which_on(good) -> np.ndarray:
  """Index of the first True from which on every entry of the last axis is True (-1 if none).

  ``good`` has shape (..., n); the result has shape ``good.shape[:-1]``.
  """
  good = np.asarray(good, bool)
  tail = np.flip(np.cumprod(np.flip(good, -1), -1), -1).astype(bool)  # good here and after
  return np.where(tail.any(-1), np.argmax(tail, -1), -1)


@dataclasses.dataclass(frozen=True)
class FeasibleN:
  """Per sweep point (arrays of length P): the outcome of :func:`feasible_n`.

  Attributes:
    index: grid index of the reported N (-1: none; no success N, or the grid ran out
      before a fresh batch came back clean).
    success_index: grid index of the selection rule's N (-1 if none): the smallest grid N
      from which on the success rate is >= target and no selection seed violates.
    violations: fresh violations at the last N checked (0 where ``index >= 0``).
    violations_at_success: fresh violations in the first batch, at ``success_index``.
    fresh_runs: fresh runs checked, all rounds together.
    runs_at_index: runs at the reported N, selection seeds plus fresh ones (all feasible).
    steps: grid steps taken past ``success_index``.
  """
  index: np.ndarray
  success_index: np.ndarray
  violations: np.ndarray
  violations_at_success: np.ndarray
  fresh_runs: np.ndarray
  runs_at_index: np.ndarray
  steps: np.ndarray

  def headline(self, prefix: str = "strict_") -> dict[str, float]:
    """The totals over points: violations, fresh runs, steps, the 95% bound on the rate."""
    ok = self.index >= 0
    m = int(self.runs_at_index[ok].min()) if ok.any() else 0
    return {f"{prefix}violations": int(self.violations.sum()),
            f"{prefix}check_runs": int(self.fresh_runs.sum()),
            f"{prefix}violations_at_success_n": int(self.violations_at_success.sum()),
            f"{prefix}check_steps": int(self.steps.sum()),
            f"{prefix}unsettled": int(np.sum((self.success_index >= 0) & ~ok)),
            # One-sided 95% upper bound on a point's violation probability from its m clean
            # runs at the reported N (exact binomial: 1 - 0.05^(1/m), about 3/m).
            f"{prefix}violation_rate_ub95": float(1 - 0.05 ** (1 / m)) if m else float("nan")}


def feasible_n(rate, selection_violations, target: float, check: Callable, n_seeds: int,
               n_fresh: int) -> FeasibleN:
  """Strict setting: a grid N per sweep point at which no seed, selection or fresh, violates.

  1. Selection: the smallest grid N from which on (at it and every larger grid N) the
     success rate over the selection seeds is >= ``target`` and none of them violates the
     constraint (a monotone envelope).
  2. Verification: ``check`` re-runs ``n_fresh`` fresh seeds at each point's current N.
     A point whose fresh batch has a violation steps up to the next grid N (where, by 1,
     the selection seeds are all feasible too) and is checked again with new seeds, until
     a batch comes back clean (that N is reported) or the grid runs out (-1).

  The reported N thus has zero violations among all ``n_seeds + n_fresh`` runs there by
  construction; what the clean runs bound is the violation probability (95% upper bound
  about 3 / (n_seeds + n_fresh)), and ``violations_at_success`` keeps what the fresh seeds
  found at the selection rule's N. Stopping at the first clean batch selects on the fresh
  seeds too, so a point whose violation probability is p still passes with probability
  (1-p)^n_fresh (0.04 at p = 0.05, n_fresh = 64).

  Args:
    rate: (P, n) success rate of the selection seeds per grid N (increasing N).
    selection_violations: (P, n) number of selection seeds violating the constraint.
    target: 1 - delta.
    check: ``check(points, index, round) -> violations``: runs ``n_fresh`` new seeds (new
      per ``round``) for each ``points[j]`` at grid index ``index[j]`` and returns the
      number violating per point (int array like ``points``).
    n_seeds: selection seeds per (point, N).
    n_fresh: fresh seeds per point and round (0: no verification, the selection N is
      reported).
  """
  rate = np.asarray(rate, np.float64)
  sel_ok = np.asarray(selection_violations) == 0
  n_pts, n_n = rate.shape
  start = from_which_on((rate >= target) & sel_ok)
  index, cur = np.full(n_pts, -1), start.copy()
  violations, at_success = np.zeros(n_pts, int), np.zeros(n_pts, int)
  fresh_runs, runs_at, steps = np.zeros(n_pts, int), np.zeros(n_pts, int), np.zeros(n_pts, int)
  if n_fresh == 0:
    index = start.copy()
    runs_at[index >= 0] = n_seeds
    return FeasibleN(index, start, violations, at_success, fresh_runs, runs_at, steps)
  active = np.flatnonzero(start >= 0)
  rnd = 0
  while active.size:
    bad = np.asarray(check(active, cur[active], rnd), int).reshape(active.shape)
    if rnd == 0:
      at_success[active] = bad
    violations[active] = bad
    fresh_runs[active] += n_fresh
    clean = bad == 0
    index[active[clean]] = cur[active[clean]]
    runs_at[active[clean]] = n_seeds + n_fresh
    active = active[~clean]
    cur[active] += 1
    steps[active] += 1
    over = cur[active] >= n_n              # the grid ran out: unsettled, keep the last count
    steps[active[over]] -= 1
    active = active[~over]
    rnd += 1
  return FeasibleN(index, start, violations, at_success, fresh_runs, runs_at, steps)
