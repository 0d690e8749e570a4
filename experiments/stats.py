"""Small statistics shared by experiments: means with confidence intervals, slopes."""

from __future__ import annotations

from typing import Sequence

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
