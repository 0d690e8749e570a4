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


def test_relaxed_success_feasible_leaves_reward_failures_out():
  """``relaxed_success="feasible"``: the relaxed N* is where the violation (a - N) / N reaches
  eps, whatever the suboptimality; the strict setting is unchanged."""
  proto = dataclasses.replace(PROTO, relaxed_success="feasible")
  grid = n_grid_values(16, 2 ** 16, 2).astype(float)
  first = lambda ok: grid[np.argmax(ok)]
  feas = sc.measure(_deterministic(c=10.0)[0], proto, KEY, progress=False)
  both = sc.measure(_deterministic(c=10.0)[0], PROTO, KEY, progress=False)
  np.testing.assert_array_equal(feas["relaxed"].n_star,
                                [first((300 - grid) / grid <= e) for e in EPS])
  np.testing.assert_array_equal(both["relaxed"].n_star, [
      first((10.0 / np.sqrt(grid) <= e) & ((300 - grid) / grid <= e)) for e in EPS])
  assert (feas["relaxed"].n_star < both["relaxed"].n_star).all()
  np.testing.assert_array_equal(feas["strict"].n_star, both["strict"].n_star)


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


def _noisy(power):
  """subopt 0.1 + z / N^power and violation 0.05 - z / (2 N^power), z a function of the
  batch's key (so the reference batch shares it), as a family."""
  def run(strict, point, n, key, label):
    z = float(jax.random.normal(key, ())) + 3.0
    return 0.1 + z / n ** power, 0.05 - z / (2 * n ** power)
  return sc.Family(POINTS, run, lambda p, n: 4.0 * np.asarray(n, np.float64), "test")


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_rate_check_recovers_the_deviation_exponent(power):
  proto = dataclasses.replace(PROTO, rate_n_range=(64, 2 ** 16), rate_seeds=5)
  rates = sc.rate(_noisy(power), proto, KEY, 2, progress=False)
  head = sc.rate_headline(rates)
  for setting in sc.SETTINGS:
    r = rates[setting]
    np.testing.assert_array_equal(r.ns, n_grid_values(64, 2 ** 16, 2))
    np.testing.assert_array_equal(r.axis, 4.0 * r.ns)     # on the family's axis
    assert r.reward.shape == (r.ns.size, 5)
    # The constant parts (0.1, 0.05) cancel against the reference run: the deviation is
    # |z| (N^-p - N_ref^-p), whose log-mean is exactly linear in log N.
    np.testing.assert_allclose(r.constraint, r.reward / 2, rtol=1e-9)
    for name in ("reward", "constraint"):
      assert head[f"rate_slope_{name}_{setting}"] == pytest.approx(-power, abs=1e-5)
      assert head[f"rate_slope_{name}_{setting}_lo"] <= -power + 1e-5
    np.testing.assert_allclose(r.subopt.mean(1), 0.1 + r.reward.mean(1), atol=1e-6)
    # The signed excess violation is -z (N^-p - N_ref^-p) / 2, z = N(0, 1) + 3 > 0 here.
    np.testing.assert_allclose(r.excess, -r.reward / 2, rtol=1e-12)
  rows = sc.rate_rows(rates, delta=0.2)
  assert len(rows["setting"]) == 2 * rates["strict"].ns.size
  # One z per batch: every seed of an N has the same excess, so its tail is that value.
  np.testing.assert_allclose(rows["violation_tail"],
                             np.concatenate([rates[s].excess[:, 0] for s in rates]), rtol=1e-12)


def test_probit_exponent_recovers_a_known_exponent_within_its_interval():
  """Failures drawn from Phi(0.3 - 2 (log N - s log x)) at theory-scaled N: most of the 20
  draws. 95% intervals should hold s; all 20 must be near it."""
  from scipy import stats as st
  from experiments.stats import probit_exponent
  rng = np.random.default_rng(0)
  x = np.repeat([0.05, 0.07, 0.1, 0.14, 0.2], 3)
  ns = 1e6 * np.tile([0.5, 1.0, 2.0], 5) * (x / 0.1) ** -2.0
  covered = 0
  for s_true in (-2.0, -3.0, -2.5, 1.0) * 5:
    p = st.norm.cdf(0.3 - 2.0 * (np.log(ns / 1e6) - s_true * np.log(x / 0.1)))
    e = probit_exponent(ns, x, rng.binomial(256, p), np.full(x.size, 256))
    covered += e.lo <= s_true <= e.hi
    assert abs(e.slope - s_true) < 0.4 and e.b == pytest.approx(2.0, rel=0.25)
  assert covered >= 16      # 95% intervals: 19 expected, 16 or fewer has probability 1.6%
  assert np.isnan(probit_exponent(ns, x, np.zeros(x.size), np.full(x.size, 8)).slope)


def _probit_family(s_true):
  """Fails with probability Phi(0.5 - 2 (log N - log 1000 - s log(eps / 0.2)))."""
  from scipy import stats as st

  def run(strict, point, n, key, label):
    eps = np.array([POINTS[p]["eps"] for p in point])
    u = np.asarray(jax.random.uniform(key, (len(n),)), np.float64)
    fail = u < st.norm.cdf(0.5 - 2.0 * (np.log(n / 1000.0) - s_true * np.log(eps / 0.2)))
    return np.where(fail, 1.0, 0.0), np.zeros(len(n))   # subopt 1 > eps on failure
  return sc.Family(POINTS, run, lambda p, n: np.asarray(n, np.float64), "test")


def test_theory_scaled_check_runs_each_point_at_the_scaled_n_and_fits_the_exponent():
  proto = dataclasses.replace(PROTO, settings=("relaxed",), scaled_seeds=400,
                              scaled_levels=(0.5, 1.0, 2.0))
  family = _probit_family(-3.0)
  result = sc.measure(family, proto, KEY, progress=False)
  result = {"relaxed": dataclasses.replace(result["relaxed"],
                                           n_star=np.full(len(EPS), 1000.0))}
  checks = sc.scaled(family, proto, KEY, result, {"eps": list(EPS)}, WHERE, 1,
                     {"eps": 0.2}, lambda s, w: -2.0, progress=False)
  (c,) = checks
  # Budgets: N0 (the base's N*) x level x (eps / eps_base)^-2, rounded.
  np.testing.assert_array_equal(
      c.n, np.round(1000.0 * np.array([0.5, 1.0, 2.0])[None] * (np.array(EPS)[:, None] / 0.2) ** -2))
  assert c.failures.shape == (4, 3) and c.runs == 400
  # At the theory-scaled N the failure rate still changes with eps (true exponent -3):
  # the fit says -3, and its interval excludes the -2 it was run at.
  assert c.exponent.lo <= -3.0 <= c.exponent.hi and c.exponent.hi < -2.0
  head = sc.scaled_headline(checks)
  assert head["relaxed_scaled_slope_eps"] == c.exponent.slope
  assert len(sc.scaled_rows(checks)["fail_rate"]) == 12


def test_instance_prediction_follows_each_runs_deviation_to_the_level():
  """Violation -eps + u / sqrt(N) with u the seed's normal draw (shared by the reference
  run): a run fails at N iff u > eps sqrt(N), so N* at level l is (q_(1-l)(u) / eps)^2 with
  q the empirical quantile of the seeds' u: slope exactly -2 in eps."""
  r = 40

  def run(strict, point, n, key, label):
    u = np.asarray(jax.random.normal(key, (r,)), np.float64)[np.arange(len(n)) % r]
    eps = np.array([POINTS[p]["eps"] for p in point])
    return np.zeros(len(n)), -eps + u / np.sqrt(n)

  family = sc.Family(POINTS, run, lambda p, n: 3.0 * np.asarray(n, np.float64), "test")
  proto = dataclasses.replace(PROTO, settings=("strict",), predict_seeds=r,
                              strict_smooth_level=0.1)
  result = sc.measure(family, proto, KEY, progress=False)
  preds = sc.predicted(family, proto, KEY, result, WHERE["eps"], 1, progress=False)
  (pr,) = preds
  u = np.sort(np.asarray(jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(KEY, sc.PREDICT_STREAM), 0), (r,))))
  # 10% of 40 seeds fail where exactly 4 have u > eps sqrt(N): between the 4th and 5th largest.
  lo, hi = (3.0 * (u[-k] / np.array(EPS)) ** 2 for k in (4, 5))
  assert np.all((pr.n_pred <= lo * (1 + 1e-5)) & (pr.n_pred >= hi * (1 - 1e-5)))
  head = sc.predicted_headline(preds, {"eps": list(EPS)}, WHERE)
  assert head["predicted_slope_eps"] == pytest.approx(-2.0, abs=1e-4)
