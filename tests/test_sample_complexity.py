"""The sample-complexity protocol on synthetic families whose N* is known in closed form."""
import dataclasses

import jax
import numpy as np
import pytest

from experiments import sample_complexity as sc
from experiments.stats import n_grid_values

PROTO = sc.Protocol(relaxed_n_range=(16, 2 ** 16), strict_n_range=(16, 2 ** 16),
                    n_per_octave=2, n_seeds=4, n_check_seeds=3, strict_smooth_level=0.1)
EPS = (0.4, 0.2, 0.1, 0.05)
POINTS = [dict(eps=e) for e in EPS]
WHERE = {"base": [1], "eps": [0, 1, 2, 3]}


KEY = jax.random.key(7)


def _which(key, n_rounds=8):
  """The purpose of a batch key the protocol derived from KEY: ("grid", setting),
  ("check", round) or ("2x",)."""
  k = sc.Keys.of(KEY)
  data = lambda x: tuple(np.asarray(jax.random.key_data(x)).ravel())
  table = {data(jax.random.fold_in(k.grid, i)): ("grid", i) for i in range(2)}
  table.update({data(jax.random.fold_in(k.check, r)): ("check", r) for r in range(n_rounds)})
  table[data(k.check_2x)] = ("2x",)
  return table[data(key)]


def _deterministic(c=2.0, a=300.0):
  """subopt c / sqrt(N) (success iff N >= (c / eps)^2); violation (a - N) / N, zero from
  N = a on. Records every call."""
  calls = []

  def run(strict, point, n, key, label):
    calls.append((strict, np.asarray(point).copy(), np.asarray(n).copy(), _which(key)))
    return c / np.sqrt(n), np.maximum(a - n, 0.0) / n

  return sc.Family(POINTS, run, lambda p, n: np.asarray(n, np.float64), "test"), calls


def test_smallest_n_and_the_strict_settle_match_the_closed_form():
  family, calls = _deterministic()
  result = sc.measure(family, PROTO, KEY, progress=False)
  grid = n_grid_values(16, 2 ** 16, 2).astype(float)
  # the first grid N with c / sqrt(N) <= eps and (a - N) / N <= eps (relaxed) or <= 0
  first = lambda ok: grid[np.argmax(ok)]
  relaxed, strict = result["relaxed"], result["strict"]
  np.testing.assert_array_equal(relaxed.n_star, [
      first((2.0 / np.sqrt(grid) <= e) & ((300 - grid) / grid <= e)) for e in EPS])
  np.testing.assert_array_equal(strict.n_success, [
      first((2.0 / np.sqrt(grid) <= e) & (grid >= 300)) for e in EPS])
  # Fresh seeds see the same deterministic outcome: every point settles at its success N.
  np.testing.assert_array_equal(strict.n_star, strict.n_success)
  assert strict.checks["strict_violations"] == 0 and strict.checks["strict_check_steps"] == 0
  assert strict.checks["strict_check_runs"] == len(EPS) * PROTO.n_check_seeds
  assert strict.checks["strict_max_violation"] == 0
  assert relaxed.runs == strict.runs == len(EPS) * len(grid) * PROTO.n_seeds
  # Grid runs: (point, N, seed) in that order; one fresh round; keys split by purpose.
  assert [c[3] for c in calls] == [("grid", 0), ("grid", 1), ("check", 0)]
  strict_grid = calls[1]
  np.testing.assert_array_equal(strict_grid[1], np.repeat(np.arange(4), len(grid) * 4))
  np.testing.assert_array_equal(strict_grid[2], np.tile(np.repeat(grid, 4), 4))
  assert calls[2][0] and list(calls[2][1]) == list(np.repeat(np.arange(4), 3))


def test_relaxed_interpolation_and_slopes_against_numpy():
  family, _ = _deterministic(a=0.0)     # always feasible: N* ~ (2 / eps)^2
  result = sc.measure(family, dataclasses.replace(PROTO, settings=("relaxed",)), KEY,
                      progress=False)
  res = result["relaxed"]
  # A 0 -> 1 jump in the success rate: the crossing of 0.9 is 90% of the way in log N.
  for p, e in enumerate(EPS):
    i = int(np.flatnonzero(res.axis[p] == res.n_star[p])[0])
    lo, hi = np.log(res.axis[p, i - 1]), np.log(res.axis[p, i])
    assert res.n_success_fit[p] == pytest.approx(np.exp(lo + 0.9 * (hi - lo)), rel=1e-12)
  head = sc.headline(result, {"eps": list(EPS)}, WHERE, base=1)
  slope = np.polyfit(np.log(EPS), np.log(res.n_success_fit), 1)[0]
  assert head["relaxed_slope_eps"] == pytest.approx(slope, rel=1e-9)
  assert head["relaxed_slope_eps_lo"] < slope < head["relaxed_slope_eps_hi"]
  assert -2.3 < slope < -1.7                                   # N* ~ eps^-2
  assert head["relaxed_n_star_base"] == res.n_star[1]
  with pytest.raises((TypeError, ValueError)):
    result["strict"] = res                                     # the result is read-only
  with pytest.raises(ValueError):
    res.n_star[0] = 1.0


def test_fresh_violations_step_up_and_all_evidence_is_pooled():
  """Fresh seeds (and only they) violate below N = 2000: points step up the grid until a
  batch is clean; the evidence holds every run, the 2x batch included."""
  log = []

  def run(strict, point, n, key, label):
    log.append(_which(key, 64))
    fresh = label.startswith("strict check")
    violation = np.where(fresh & (n < 2000), 1.0, 0.0)
    return np.zeros_like(n), violation

  family = sc.Family(POINTS, run, lambda p, n: 3.0 * np.asarray(n, np.float64), "test")
  proto = dataclasses.replace(PROTO, settings=("strict",))
  res = sc.measure(family, proto, KEY, check_2x=True, progress=False)["strict"]
  first_clean = 3.0 * n_grid_values(16, 2 ** 16, 2)[np.argmax(n_grid_values(16, 2 ** 16, 2)
                                                              >= 2000)]
  np.testing.assert_array_equal(res.n_star, first_clean)      # on the family's axis (x3)
  np.testing.assert_array_equal(res.n_success, 48.0)          # the grid's first N, x3
  steps = res.checks["strict_check_steps"] // len(EPS)
  assert log == [("grid", 0)] + [("check", r) for r in range(steps + 1)] + [("2x",)]
  assert res.checks["strict_violations_at_success_n"] == len(EPS) * proto.n_check_seeds
  assert res.checks["strict_violations_2x"] == 0
  assert res.checks["strict_check_runs_2x"] == len(EPS) * proto.n_check_seeds
  n_grid = len(n_grid_values(16, 2 ** 16, 2))
  for p in range(len(EPS)):
    pooled = sum(m for _, _, m in res.evidence[p])
    assert pooled == n_grid * proto.n_seeds + res.check_runs[p] + proto.n_check_seeds
  assert res.fresh_runs == res.check_runs.sum() + len(EPS) * proto.n_check_seeds
