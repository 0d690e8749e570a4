"""The shared CMDP layer: model validation, exact evaluation, generative sampling, LP truth."""
import itertools

import jax
import numpy as np
import pytest

from cmdp import generative, instances, lp, tabular

KINDS = ("ergodic", "weakly_communicating", "multichain")


def _cesaro(P, n=20_000):
  """(1/n) sum_{t<n} P^t by plain accumulation (independent of the class decomposition)."""
  acc, Pt = np.zeros_like(P), np.eye(P.shape[0])
  for _ in range(n):
    acc += Pt
    Pt = Pt @ P
  return acc / n


# A periodic (period 2) chain with a transient state feeding two closed classes.
PERIODIC_MULTICHAIN = np.array([
    [0.2, 0.3, 0.0, 0.5, 0.0],   # transient
    [0.0, 0.0, 1.0, 0.0, 0.0],   # class {1, 2}: period 2
    [0.0, 1.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.5, 0.5],   # class {3, 4}: aperiodic
    [0.0, 0.0, 0.0, 1.0, 0.0],
])


# --- model and validation ----------------------------------------------------------------------

def test_make_cmdp_accepts_a_valid_model_and_builds_the_start_distribution():
  m = instances.hard_instance(6, 3, 10, 0.1)
  assert m.P.shape == (6, 3, 6) and m.mu0[0] == 1 and m.mu0.sum() == 1
  assert m.P.dtype == np.float64
  flat = jax.tree_util.tree_leaves(m)  # a pytree of its arrays
  assert len(flat) == 5


@pytest.mark.parametrize("mutate, message", [
    (lambda P, r, c: (P * 1.01, r, c), "rows of P must sum to 1"),
    (lambda P, r, c: (P[:, :, :-1], r, c), "shape"),
    (lambda P, r, c: (P, r[:, :1], c), "r must have shape"),
    (lambda P, r, c: (P, r, c + 1.5), "c must lie in [0, 1]"),
    (lambda P, r, c: (P, r - 1.0, c), "r must lie in [0, 1]"),
])
def test_invalid_models_raise_a_clear_error(mutate, message):
  m = instances.hard_instance(4, 2, 5, 0.1)
  P, r, c = mutate(m.P, m.r, m.c)
  with pytest.raises(tabular.CMDPError, match=message.replace("[", r"\[").replace("]", r"\]")):
    tabular.make_cmdp(P, r, c, 0.3, 0)


def test_invalid_start_and_threshold_raise():
  m = instances.hard_instance(4, 2, 5, 0.1)
  with pytest.raises(tabular.CMDPError, match="start state"):
    tabular.make_cmdp(m.P, m.r, m.c, 0.3, 7)
  with pytest.raises(tabular.CMDPError, match="mu0"):
    tabular.make_cmdp(m.P, m.r, m.c, 0.3, np.full(4, 0.3))


# --- exact evaluation --------------------------------------------------------------------------

def test_stationary_matrix_is_the_cesaro_limit_for_periodic_multichain_chains():
  P = PERIODIC_MULTICHAIN
  Pstar = tabular.stationary_matrix(P)
  np.testing.assert_allclose(Pstar, _cesaro(P), atol=2e-4)
  np.testing.assert_allclose(Pstar @ P, Pstar, atol=1e-12)
  np.testing.assert_allclose(P @ Pstar, Pstar, atol=1e-12)
  np.testing.assert_allclose(Pstar.sum(1), 1, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gain_and_bias_match_the_laurent_expansion_of_the_discounted_value(kind):
  """V_gamma = g / (1 - gamma) + h + O(1 - gamma), an independent linear-solve reference."""
  m = instances.random_instance(np.random.default_rng(3), 6, 2, kind)
  rng = np.random.default_rng(4)
  pi = rng.dirichlet(np.ones(2), size=6)
  P_pi, r_pi = tabular.policy_matrices(m.P, m.r, pi)
  ev = tabular.evaluate(m.P, m.r, pi)
  for one_minus_gamma in (1e-5, 2e-5):
    V = np.linalg.solve(np.eye(6) - (1 - one_minus_gamma) * P_pi, r_pi)
    np.testing.assert_allclose(one_minus_gamma * V, ev.gain, atol=1e-4)
  # Richardson: h = lim (V - g / (1 - gamma)); the O(1 - gamma) term cancels in 2 V(2d) - V(d).
  d = 1e-5
  h = [np.linalg.solve(np.eye(6) - (1 - k * d) * P_pi, r_pi) - ev.gain / (k * d) for k in (1, 2)]
  np.testing.assert_allclose(2 * h[0] - h[1], ev.bias, atol=1e-4)
  assert ev.span == pytest.approx(ev.bias.max() - ev.bias.min())


def test_gain_matches_the_cesaro_average_and_a_long_simulation():
  m = instances.random_instance(np.random.default_rng(5), 5, 3, "weakly_communicating")
  pi = np.random.default_rng(6).dirichlet(np.ones(3), size=5)
  P_pi, r_pi = tabular.policy_matrices(m.P, m.r, pi)
  ev = tabular.evaluate(m.P, m.r, pi)
  np.testing.assert_allclose(ev.gain, _cesaro(P_pi, 5000) @ r_pi, atol=2e-3)
  sim = tabular.simulate_average(m.P, m.r, pi, 0, 200_000, np.random.default_rng(7))
  assert sim == pytest.approx(ev.gain[0], abs=0.01)


def test_hard_instance_closed_forms():
  H, zeta = 12.0, 0.08
  m = instances.hard_instance(8, 4, H, zeta)
  sol = lp.solve_cmdp(m)
  assert float(m.b) == pytest.approx(0.5 - zeta)
  assert sol.value == pytest.approx(0.25) and sol.zeta == pytest.approx(zeta)
  assert sol.dual == pytest.approx(1 / (4 * zeta), rel=1e-6)
  # Two-state core with leave rates 1/H: span of the bias of c is (1 - 2 zeta) H / 2.
  assert tabular.evaluate(m.P, m.c, sol.policy.stationary()).span == pytest.approx((1 - 2 * zeta) * H / 2)
  from cmdp import average_reward
  g = instances.hard_instance(8, 4, H, zeta, B=30)
  assert average_reward.instance_parameters(g).B == pytest.approx(30)


# --- generative model --------------------------------------------------------------------------

@pytest.mark.slow
def test_empirical_model_is_unbiased_with_multinomial_variance():
  m = instances.random_instance(np.random.default_rng(8), 4, 2, "ergodic")
  n, reps = 50, 4000
  keys = jax.random.split(jax.random.key(0), reps)
  P_hat = np.asarray(jax.vmap(lambda k: generative.empirical_model(k, m.P, n))(keys))
  np.testing.assert_allclose(P_hat.sum(-1), 1, atol=1e-5)
  se = np.sqrt(m.P * (1 - m.P) / n / reps)
  assert np.all(np.abs(P_hat.mean(0) - m.P) < 5 * se + 1e-6)
  np.testing.assert_allclose(P_hat.var(0), m.P * (1 - m.P) / n, rtol=0.15, atol=1e-6)


def test_sampled_next_states_have_the_law_of_P():
  m = instances.random_instance(np.random.default_rng(9), 4, 2, "ergodic")
  samples = generative.sample_next_states(jax.random.key(1), m.P, 20_000)
  assert samples.shape == (20_000, 4, 2)
  freq = np.asarray(generative.counts_from_samples(samples, 4)) / 20_000
  np.testing.assert_allclose(freq, m.P, atol=0.015)


# --- LP ground truth ---------------------------------------------------------------------------

def _brute_force(m):
  """Optimal constrained gain over mixtures of deterministic policies (pairs suffice)."""
  S, A = m.n_states, m.n_actions
  g = np.array([tabular.gains(m, tabular.deterministic(np.array(d), A))
                for d in itertools.product(range(A), repeat=S)])
  b, best = float(m.b), -np.inf
  for (r0, c0), (r1, c1) in itertools.product(g, g):
    if c0 >= b - 1e-12:
      best = max(best, r0)
    elif c1 > c0 and c1 >= b:
      w = (b - c0) / (c1 - c0)
      best = max(best, (1 - w) * r0 + w * r1)
  return best, g


@pytest.mark.parametrize("kind, seed", [(k, s) for k in KINDS for s in (0, 1)])
def test_lp_optimum_matches_brute_force_and_its_policy_meets_the_constraint(kind, seed):
  m = instances.random_instance(np.random.default_rng(seed), 5, 2, kind)
  sol = lp.solve_cmdp(m)
  best, g = _brute_force(m)
  assert sol.value == pytest.approx(best, abs=1e-7)
  assert sol.gain_r == pytest.approx(sol.value, abs=1e-7)
  assert sol.gain_c >= float(m.b) - 1e-9
  assert sol.zeta == pytest.approx(g[:, 1].max() - float(m.b), abs=1e-7)
  # No randomized stationary policy beats it.
  rng = np.random.default_rng(seed + 10)
  for _ in range(30):
    pi = rng.dirichlet(np.full(2, 0.3), size=5)
    gr, gc = tabular.gains(m, pi)
    if gc >= float(m.b):
      assert gr <= sol.value + 1e-9


# Seeds of 'general' 5x2 instances whose optimum needs a time-0 mixture (17 of the first 200
# seeds do) and of ones where a stationary policy is optimal.
MIXED_SEEDS, STATIONARY_SEEDS = (35, 48, 76, 133), (0, 1)


@pytest.mark.parametrize("seed", MIXED_SEEDS + STATIONARY_SEEDS)
def test_the_solution_policy_is_optimal_even_when_it_must_mix(seed):
  m = instances.random_instance(np.random.default_rng(seed), 5, 2, "general")
  sol = lp.solve_cmdp(m)
  best, g = _brute_force(m)
  pol = sol.policy
  assert sol.value == pytest.approx(best, abs=1e-7)
  np.testing.assert_allclose(pol.weights.sum(), 1.0)
  assert np.all(pol.weights > 0)
  gr, gc = tabular.mixture_gains(m, *pol)                   # the caller's evaluation
  assert gr == pytest.approx(best, abs=1e-7) and gc >= float(m.b) - 1e-9
  assert (gr, gc) == pytest.approx((sol.gain_r, sol.gain_c), abs=1e-12)
  if seed in MIXED_SEEDS:
    assert pol.weights.shape == (2,) and not pol.is_stationary
    with pytest.raises(ValueError, match="mixes 2 stationary policies"):
      pol.stationary()
    # No single component is optimal and feasible: the mixture is needed.
    for pi in pol.components:
      r_k, c_k = tabular.gains(m, pi)
      assert r_k < best - 1e-7 or c_k < float(m.b) - 1e-9
    # Nor is any randomized stationary policy.
    rng = np.random.default_rng(seed)
    for _ in range(200):
      pi = rng.dirichlet(np.full(2, 0.3), size=5)
      r_k, c_k = tabular.gains(m, pi)
      assert r_k < best - 1e-7 or c_k < float(m.b) - 1e-9
  else:
    assert pol.is_stationary
    assert tabular.gains(m, pol.stationary()) == pytest.approx((best, sol.gain_c), abs=1e-7)


def test_dual_variable_is_the_sensitivity_of_the_value_to_b():
  m = instances.random_instance(np.random.default_rng(2), 5, 2, "ergodic")
  sol = lp.solve_cmdp(m)
  h = 1e-5
  up = lp.solve_cmdp(m.replace(b=m.b + h)).value
  down = lp.solve_cmdp(m.replace(b=m.b - h)).value
  assert (down - up) / (2 * h) == pytest.approx(sol.dual, rel=1e-3, abs=1e-6)


def test_weakly_communicating_lp_agrees_with_the_multichain_one():
  m = instances.random_instance(np.random.default_rng(11), 6, 3, "weakly_communicating")
  assert lp.solve_cmdp(m, multichain=False).value == pytest.approx(lp.solve_cmdp(m).value,
                                                                      abs=1e-8)
