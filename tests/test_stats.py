"""The statistics of the sample-complexity experiments (experiments.stats and the experiments'
N-selection helpers), against closed forms and scipy references."""

import numpy as np
import pytest
from scipy import stats


def test_smallest_n_takes_the_first_n_from_which_on_the_rate_holds():
  from experiments.stats import n_grid_values, smallest_n
  ns = n_grid_values(16, 256, 1)
  np.testing.assert_array_equal(ns, [16, 32, 64, 128, 256])
  rate = np.array([0.0, 0.95, 0.5, 0.8, 1.0])
  n, ni, i = smallest_n(ns, rate, np.ones(5, bool), 0.9)
  assert (n, i) == (256, 4) and ni == pytest.approx(128 * 2 ** 0.5)  # 0.8 -> 1.0 crosses 0.9
  n, ni, i = smallest_n(ns, rate, np.array([1, 1, 1, 1, 0], bool), 0.9)
  assert np.isnan(n) and i == -1


def test_feasible_n_steps_past_grid_points_where_fresh_seeds_violate():
  from experiments.stats import feasible_n, from_which_on
  # 4 points x 6 grid N; target 0.9; 8 selection seeds, 5 fresh seeds per round.
  rate = np.array([[0.0, 0.5, 0.95, 0.8, 0.95, 1.0],     # success N: index 4 (0.8 at 3)
                   [0.5, 0.9, 0.9, 0.95, 1.0, 1.0],      # index 3 (a selection seed violates at 2)
                   [0.0, 0.1, 0.2, 0.5, 0.8, 0.85],      # never
                   [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])      # index 0
  sel_viol = np.array([[3, 2, 0, 0, 0, 0], [2, 0, 1, 0, 0, 0], [8, 5, 3, 1, 0, 0],
                       [0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(from_which_on((rate >= 0.9) & (sel_viol == 0)), [4, 3, -1, 0])
  # Fresh violations per (point, grid index): point 0 is clean from index 5, point 1 never.
  fresh = {(0, 4): 2, (0, 5): 0, (1, 3): 1, (1, 4): 1, (1, 5): 1, (3, 0): 0}
  calls = []

  def check(ps, ii, rnd):
    calls.append((rnd, list(ps), list(ii)))
    return np.array([fresh[(p, i)] for p, i in zip(ps, ii)])

  fn = feasible_n(rate, sel_viol, 0.9, check, n_seeds=8, n_fresh=5)
  assert calls == [(0, [0, 1, 3], [4, 3, 0]), (1, [0, 1], [5, 4]), (2, [1], [5])]
  np.testing.assert_array_equal(fn.index, [5, -1, -1, 0])
  np.testing.assert_array_equal(fn.success_index, [4, 3, -1, 0])
  np.testing.assert_array_equal(fn.violations, [0, 1, 0, 0])     # unsettled: its last count
  np.testing.assert_array_equal(fn.violations_at_success, [2, 1, 0, 0])
  np.testing.assert_array_equal(fn.fresh_runs, [10, 15, 0, 5])
  np.testing.assert_array_equal(fn.runs_at_index, [13, 0, 0, 13])
  np.testing.assert_array_equal(fn.steps, [1, 2, 0, 0])
  head = fn.headline("strict_")
  assert head == pytest.approx(dict(
      strict_violations=1, strict_check_runs=30, strict_violations_at_success_n=3,
      strict_check_steps=3, strict_unsettled=1, strict_violation_rate_ub95=1 - 0.05 ** (1 / 13)))
  # Without fresh seeds the selection N is reported as it is.
  fn = feasible_n(rate, sel_viol, 0.9, None, n_seeds=8, n_fresh=0)
  np.testing.assert_array_equal(fn.index, [4, 3, -1, 0])
  assert fn.headline()["strict_violations"] == 0 and fn.headline()["strict_check_runs"] == 0


def test_probit_crossing_recovers_the_target_sample_size():
  from experiments.stats import probit_crossing
  rng = np.random.default_rng(12)
  ns = 1000 * 2.0 ** np.arange(0, 12, 0.5)
  alpha, beta = 1.0, 0.02                        # P = Phi(beta sqrt(N) - alpha)
  p = stats.norm.cdf(beta * np.sqrt(ns) - alpha)
  success = rng.random((ns.size, 400)) < p[:, None]
  truth = ((alpha + stats.norm.ppf(0.9)) / beta) ** 2
  assert probit_crossing(ns, success, 0.9) == pytest.approx(truth, rel=0.1)
  assert np.isnan(probit_crossing(ns, np.zeros_like(success), 0.9))


def test_failure_probit_recovers_a_known_curve_and_maximizes_the_likelihood():
  from experiments.stats import failure_probit_n
  rng = np.random.default_rng(14)
  a, b, q = 9.0, 1.1, 0.05                     # P(fail | N) = Phi(a - b log N)
  ns = np.exp(np.linspace(4.0, 12.0, 25))
  ns = np.concatenate([ns, ns[15:]])           # repeated N pool (fresh batches)
  runs = rng.integers(20, 80, size=ns.size)
  fails = rng.binomial(runs, stats.norm.cdf(a - b * np.log(ns)))
  fit = failure_probit_n(ns, fails, runs, q)
  truth = np.exp((a - stats.norm.ppf(q)) / b)
  assert fit.n_level == pytest.approx(truth, rel=0.15)
  assert fit.prob(fit.n_level) == pytest.approx(q, rel=1e-6)
  # Independent reference: the binomial likelihood (scipy.stats.binom) on a dense grid of
  # (a, b) around the fit; the fit is at least as likely as every grid point, and the
  # grid's best point gives about the same crossing.
  A_, B_ = np.meshgrid(np.linspace(a - 3, a + 3, 241), np.linspace(b - 0.4, b + 0.4, 161))
  p = stats.norm.cdf(A_[..., None] - B_[..., None] * np.log(ns))
  ll = stats.binom.logpmf(fails, runs, p).sum(-1)
  i = np.unravel_index(np.argmax(ll), ll.shape)
  ll_fit = stats.binom.logpmf(fails, runs, fit.prob(ns)).sum()
  assert ll_fit >= ll[i] - 1e-9
  grid_n = np.exp((A_[i] - stats.norm.ppf(q)) / B_[i])
  assert fit.n_level == pytest.approx(grid_n, rel=0.03)
  # Degenerate evidence: no fit.
  assert np.isnan(failure_probit_n(ns, 0 * fails, runs, q).n_level)
  assert np.isnan(failure_probit_n(ns, runs, runs, q).n_level)
  # Perfectly separated evidence: the crossing lands between the last failing N and the
  # first clean one.
  sep = np.where(ns < 1000.0, runs, 0)
  n_sep = failure_probit_n(ns, sep, runs, q).n_level
  assert ns[ns < 1000].max() <= n_sep <= ns[ns >= 1000].min()
