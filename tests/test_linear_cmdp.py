"""Linear constrained discounted MDPs: instances, ground truth, design, LS-MDVI, primal-dual."""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp import linear, lp, primal_dual, tabular
from cmdp.tabular import CMDPError

OPTS = dict(n_grid=32, n_dual=2 ** 14)   # one compiled shape per instance in these tests
R = 8


def _value_iteration(P, R_, gamma, tol=1e-13):
  """Optimal discounted values by plain value iteration (float64 numpy)."""
  V = np.zeros(P.shape[0])
  while True:
    new = (R_ + gamma * P @ V).max(1)
    if np.abs(new - V).max() < tol:
      return new
    V = new


def _random(seed=0, S=6, A=3, d=4, gamma=0.8):
  return linear.random_instance(np.random.default_rng(seed), S, A, d, gamma)


# --- model and validation ----------------------------------------------------------------------

def test_random_instance_is_a_valid_linear_cmdp_with_rewards_spanning_the_unit_interval():
  m = _random()
  t = m.tabular()
  np.testing.assert_allclose(t.P.sum(-1), 1, atol=1e-12)
  for x in (t.r, t.c):
    assert x.min() >= 0 and x.max() <= 1 and x.max() - x.min() > 1 - 1e-9
  np.testing.assert_allclose(t.P, np.einsum("sad,dt->sat", m.phi, m.psi))
  assert len(jax.tree_util.tree_leaves(m)) == 7 and m.horizon == pytest.approx(5.0)


@pytest.mark.parametrize("change, message", [
    (dict(psi=lambda m: m.psi * 1.1), "rows of P must sum to 1"),
    (dict(theta_r=lambda m: m.theta_r * 3.0), "r must lie in [0, 1]"),
    (dict(theta_c=lambda m: m.theta_c - 2.0), "c must lie in [0, 1]"),
    (dict(gamma=lambda m: 1.0), "gamma must be a scalar in (0, 1)"),
    (dict(gamma=lambda m: 0.0), "gamma must be a scalar in (0, 1)"),
    (dict(gamma=lambda m: -0.5), "gamma must be a scalar in (0, 1)"),
    (dict(psi=lambda m: m.psi[:, :-1]), "psi must have shape"),
    (dict(theta_c=lambda m: m.theta_c[:-1]), "theta_c must have shape"),
    (dict(phi=lambda m: m.phi[..., 0]), "phi must have shape (S, A, d)"),
])
def test_invalid_linear_cmdps_raise_a_clear_error(change, message):
  m = _random()
  args = dict(phi=m.phi, psi=m.psi, theta_r=m.theta_r, theta_c=m.theta_c, gamma=m.gamma)
  args.update({k: f(m) for k, f in change.items()})
  with pytest.raises(CMDPError, match=message.replace("[", r"\[").replace("(", r"\(")
                     .replace(")", r"\)").replace("]", r"\]")):
    linear.make_linear_cmdp(args["phi"], args["psi"], args["theta_r"], args["theta_c"], 0.3,
                            args["gamma"], 0)


def test_hard_instance_arguments_are_checked():
  with pytest.raises(ValueError, match="d = 4 k \\+ 1"):
    linear.hard_instance(8, 0.9, 0.5)
  with pytest.raises(ValueError, match="gamma"):
    linear.hard_instance(9, 1.0, 0.5)
  with pytest.raises(ValueError, match="zeta"):
    linear.hard_instance(9, 0.9, 5.0)


@pytest.mark.parametrize("twins, d", [(1, 7), (2, 9)])
def test_hard_instance_closed_forms(twins, d):
  H, zeta, kappa = 8.0, 0.6, 0.5
  m = linear.hard_instance(d, 1 - 1 / H, zeta, n_actions=2 * twins + 1, kappa=kappa,
                           twins=twins)
  sol = linear.solve(m)
  assert float(m.b) == pytest.approx(0.75 * H - zeta)
  assert sol.value == pytest.approx(zeta / kappa) and sol.zeta == pytest.approx(zeta)
  assert sol.dual == pytest.approx(1 / kappa, rel=1e-6)
  # Every basis action of a gadget has the value 3H/4 of staying (Azar et al.'s 1 - gamma p).
  ones = np.ones(m.tabular().r.shape)
  ones[-1] = 0.0                                     # the zero state z
  V = tabular.discounted_values(m.tabular().P, ones,
                                np.eye(m.n_actions)[np.zeros(m.n_states, int)], 1 - 1 / H)
  assert V[0] == pytest.approx(0.75 * H)


@pytest.mark.parametrize("d, gap", [(4, 0.0), (6, 1.0)])
def test_hypercube_instance_closed_forms(d, gap):
  H, eps, zeta, kappa = 8.0, 0.5, 0.6, 0.5
  gamma, q = 1 - 1 / H, d - 3
  m = linear.hypercube_instance(d, gamma, zeta, eps, gap, kappa)
  t = m.tabular()
  assert m.n_actions == 2 ** q and m.n_states == 2
  assert np.linalg.norm(m.phi, axis=-1) == pytest.approx(np.ones((2, 2 ** q)))
  # Reach probabilities delta + <a, theta>: the corners' signs set by a's bits.
  Delta = gap * eps * (1 - gamma + gamma * (1 - gamma)) ** 2 / gamma
  signs = np.array([[1 - 2 * ((a >> j) & 1) for j in range(q)] for a in range(2 ** q)])
  np.testing.assert_allclose(t.P[0, :, 1], (1 - gamma) + signs.sum(1) * Delta / q, atol=1e-12)
  np.testing.assert_allclose(t.P[1, :, 1], 1.0, atol=1e-12)
  # W(p) is the discounted time at the goal from the start (exact policy evaluation).
  at_goal = np.zeros((2, 2 ** q))
  at_goal[1] = 1.0
  for a in (0, 2 ** q - 1):
    pi = np.zeros((2, 2 ** q))
    pi[:, a] = 1.0
    V = tabular.discounted_values(t.P, at_goal, pi, gamma)
    assert V[0] == pytest.approx(linear.hypercube_reach(gamma, t.P[0, a, 1]), rel=1e-12)
  # The best corner (all +1, a = 0) reaches W(delta + Delta) = W*; b = W* - zeta.
  w_star = linear.hypercube_reach(gamma, 1 - gamma + Delta)
  assert float(m.b) == pytest.approx(w_star - zeta)
  sol = linear.solve(m)
  assert sol.value == pytest.approx(zeta / kappa) and sol.zeta == pytest.approx(zeta)
  assert sol.dual == pytest.approx(1 / kappa, rel=1e-6)
  # W' by a central difference.
  h = 1e-6
  assert linear.hypercube_reach_slope(gamma) == pytest.approx(
      (linear.hypercube_reach(gamma, 1 - gamma + h) - linear.hypercube_reach(gamma, 1 - gamma - h))
      / (2 * h), rel=1e-6)
  design = linear.g_optimal_design(m.phi.reshape(-1, d))
  assert len(design.core) == 2 ** q + 2 and design.max_variance == pytest.approx(d, rel=1e-6)


def test_hypercube_instance_arguments_are_checked():
  with pytest.raises(ValueError, match="d >= 4"):
    linear.hypercube_instance(3, 0.9, 0.5, 0.5)
  with pytest.raises(ValueError, match="zeta"):
    linear.hypercube_instance(5, 0.9, 5.0, 0.5)
  with pytest.raises(ValueError, match="Delta"):
    linear.hypercube_instance(5, 0.9, 0.5, 0.5, gap=10.0)


def test_curse_quantile_against_its_limits():
  """The closed form's quantile of e_0 + sum_j sign(rho + e_j) e_j: N(0, 1 + q) for a strong
  signal; for none, a sum whose mean is 2 q phi(0) and variance 1 + q (1 - 2 / pi), normal
  for large q."""
  from experiments.linear_cmdp_hypercube import curse_quantile
  from scipy import stats
  z = stats.norm.ppf(0.9)
  assert curse_quantile(3, 50.0, 0.1) == pytest.approx(z * 2.0, rel=0.01)
  q = 60
  normal = q * np.sqrt(2 / np.pi) + z * np.sqrt(1 + q * (1 - 2 / np.pi))
  assert curse_quantile(q, 0.0, 0.1, draws=100_000) == pytest.approx(normal, rel=0.01)
  assert curse_quantile(0, 0.0, 0.5) == pytest.approx(0.0, abs=0.01)


def _runs(m, n, strict, k_factor, r, eps, zeta, c_omega=linear.C_OMEGA):
  """The learner's outputs of r runs (key 3) with budget n on instance m."""
  runs = primal_dual.Runs(np.full(r, n), np.full(r, eps), np.full(r, zeta), np.full(r, strict))
  return linear.run_batch(jax.random.key(3), linear.make_instance(m), runs, n_grid=64,
                          n_dual=2 ** 17, n_iters=linear.default_iters(float(m.gamma), k_factor),
                          c_omega=c_omega)


def _optimism(m, ns, strict, k_factor, r, eps, zeta, c_omega=linear.C_OMEGA):
  """{N: (r,) the output's optimism in V_c, its exact-model run's value (N = 10^15, same
  keys, so the same perturbations) minus its own} for each budget N of ``ns``."""
  value = lambda n: linear.evaluate_outputs(m, _runs(m, n, strict, k_factor, r, eps, zeta,
                                                     c_omega))[1]
  exact = value(1e15)
  return {n: exact - value(n) for n in ns}


@pytest.mark.slow
def test_the_learner_pays_the_winners_curse_over_the_hypercube():
  """The chosen corner's constraint value is optimistic by W' c1 sigma 2 q phi(0): linear in
  q (the d^2 of the bounds), with a spread of only sqrt(q) sigma."""
  H, eps, n = 10.0, 0.5, 1e5
  gamma = 1 - 1 / H
  bias, model = {}, {}
  for d in (5, 9):
    m = linear.hypercube_instance(d, gamma, 0.5, eps)
    opt = _optimism(m, (n,), False, 12.0, 64, eps, 0.5)[n]
    q, u = d - 3, 2 ** (d - 3) + 2
    sigma = np.sqrt(gamma * (1 - gamma) / (np.ceil(n / u) * (u - 2)))
    c1 = (float(m.b) - eps / 2) / linear.hypercube_reach(gamma, 1 - gamma)
    expected = linear.hypercube_reach_slope(gamma) * c1 * sigma * 2 * q / np.sqrt(2 * np.pi)
    bias[q], model[q] = np.mean(opt), expected
    assert bias[q] == pytest.approx(expected, rel=0.1)
    spread = linear.hypercube_reach_slope(gamma) * c1 * sigma * np.sqrt(1 + q * (1 - 2 / np.pi))
    assert np.std(opt) == pytest.approx(spread, rel=0.3)
  # 3x the coordinates, at 0.83x the sigma (more core points share N): 2.49x the bias, where a
  # bias growing like the spread, sqrt(q), would give 1.4x.
  assert bias[6] / bias[2] == pytest.approx(model[6] / model[2], rel=0.12)


def _gadget_optimism(d, n, r, zeta=0.5, twins=2, eps=0.5, H=10.0):
  """(instance, per-run optimism of the relaxed output's constraint value: its exact-model
  run's value minus its own, same keys) on the gadget family, k_factor 12."""
  m = linear.hard_instance(d, 1 - 1 / H, zeta, n_actions=2 * twins + 1, twins=twins)
  return m, _optimism(m, (n,), False, 12.0, r, eps, zeta)[n]


@pytest.mark.slow
def test_the_gadget_family_s_curse_is_over_two_twins_per_gadget():
  """Why the gadget family's d exponent is below the bound's 2 (docs/cmdp.md): its winner's
  curse is over the 2 twins of each gadget, a count fixed in d. At the same samples per
  design point, the relaxed output's mean optimism does not grow from d = 5 (k = 1 gadget)
  to 17 (k = 4), and its spread, a mean over k gadgets, halves; with one twin (no curse) the
  mean is 0. A union over candidates growing with d (the hypercube's) would grow the mean."""
  per = 2000.0
  opt = {d: _gadget_optimism(d, per * d, 128)[1] for d in (5, 17)}
  se = lambda x: np.std(x) / np.sqrt(len(x))
  assert opt[5].mean() > 8 * se(opt[5])
  assert 0.85 < opt[17].mean() / opt[5].mean() < 1.3
  assert np.std(opt[17]) / np.std(opt[5]) == pytest.approx(0.5, rel=0.15)
  single = _gadget_optimism(9, per * 9, 128, twins=1)[1]
  assert abs(single.mean()) < 3 * se(single)


@pytest.mark.slow
def test_the_gadget_family_s_optimism_falls_faster_than_root_n_below_a_few_thousand_samples():
  """Why the gadget family's relaxed eps exponent over eps 1 to 0.35 (N* of 1.5e3 to 3e4
  samples) is shallower than -2, and -2 at eps 0.35 to 0.125 (docs/cmdp.md): the relaxed
  output's mean optimism is the twins' curse, ~N^-1/2, plus the convexity bias of the stay
  value 1 / (1 - gamma p) in the estimated p, ~1/N. Below a few thousand samples the second
  matters, so the large-eps points need more than eps^-2 of N. A fit a N^-1/2 + c N^-1 of
  the mean (512 relaxed runs per N, paired with exact-model runs) holds to 4% over N 1024 to
  65536 (measured: within 1.6%), its 1/N part over 12% of the mean at 1024 (22%) and under
  4% at 65536 (3.5%)."""
  H, eps, zeta, r = 10.0, 0.5, 0.5, 512
  ns = np.array([1024.0, 4096.0, 16384.0, 65536.0])
  opt = _optimism(linear.hard_instance(9, 1 - 1 / H, zeta), ns, False, 6.0, r, eps, zeta)
  mean = np.array([np.mean(opt[n]) for n in ns])
  # mean = a N^-1/2 + c N^-1, least squares in relative error
  basis = np.stack([ns ** -0.5, 1 / ns], axis=1) / mean[:, None]
  (a, c), *_ = np.linalg.lstsq(basis, np.ones_like(ns), rcond=None)
  fit = a * ns ** -0.5 + c / ns
  assert np.max(np.abs(fit / mean - 1)) < 0.04, (mean, fit)
  assert c / ns[0] > 0.12 * mean[0], (a, c)          # the 1/N part at N = 1024
  assert c / ns[-1] < 0.04 * mean[-1], (a, c)        # and at 65536


@pytest.mark.slow
def test_the_gadget_family_s_relaxed_zeta_dependence_is_b_prime_over_the_stay_value():
  """As on the hypercube: the relaxed optimism scales with b' / (3H/4) = (3H/4 - zeta -
  eps/2) / (3H/4), the gadget's share of time in which it pays c; from zeta 0.25 to 1.0
  (paired keys) it falls by that ratio, 0.89."""
  H, eps = 10.0, 0.5
  bias, share = {}, {}
  for zeta in (0.25, 1.0):
    m, opt = _gadget_optimism(9, 4e4, 64, zeta=zeta)
    bias[zeta], share[zeta] = opt.mean(), (float(m.b) - eps / 2) / (0.75 * H)
  assert share[1.0] / share[0.25] == pytest.approx(6.25 / 7.0, rel=1e-9)
  assert bias[1.0] / bias[0.25] == pytest.approx(share[1.0] / share[0.25], rel=0.03)
  assert bias[1.0] / bias[0.25] < 0.95


@pytest.mark.slow
def test_the_hypercube_s_relaxed_zeta_dependence_is_the_goal_s_share_b_prime_over_w():
  """The relaxed optimism scales with c1 = b'/W* = (W* - zeta - eps/2)/W*, the only place
  zeta enters the relaxed N* (the bound's exponent 0 once c1 is constant): from zeta 0.25 to
  1.0 (paired keys) it falls by c1's ratio, 0.82, not by nothing."""
  H, eps, n = 10.0, 0.5, 1e5
  w_star = linear.hypercube_reach(1 - 1 / H, 1 / H)
  bias, c1 = {}, {}
  for zeta in (0.25, 1.0):
    m = linear.hypercube_instance(7, 1 - 1 / H, zeta, eps)
    bias[zeta] = np.mean(_optimism(m, (n,), False, 12.0, 64, eps, zeta)[n])
    c1[zeta] = (float(m.b) - eps / 2) / w_star
  assert c1[1.0] / c1[0.25] == pytest.approx((w_star - 1.25) / (w_star - 0.5), rel=1e-9)
  assert bias[1.0] / bias[0.25] == pytest.approx(c1[1.0] / c1[0.25], rel=0.015)
  assert bias[1.0] / bias[0.25] < 0.9


@pytest.mark.slow
def test_the_reward_perturbation_fades_the_hypercube_s_curse_at_large_n():
  """Why the hypercube's strict N* at small zeta is below the closed form's (docs/cmdp.md):
  the reward perturbation (omega = eps (1 - gamma) / 8, random per run) gives the equal
  corners a fixed order, so once the reach noise is below it the learner stops choosing by
  the noise. Strict, zeta 0.25 (128 runs, each against its exact-model run): the mean
  optimism x sqrt(N) falls from N = 2.5e6 to 1.6e8 (measured 20.0 to 4.4), and is flat
  (23.5 at both) with omega a million times smaller."""
  m = linear.hypercube_instance(7, 0.9, 0.25, 0.5)

  def scaled_mean(c_omega):
    opt = _optimism(m, (2.5e6, 1.6e8), True, 12.0, 128, 0.5, 0.25, c_omega)
    return [np.mean(o) * np.sqrt(n) for n, o in opt.items()]
  small, large = scaled_mean(linear.C_OMEGA)
  assert large < 0.4 * small, (small, large)
  small, large = scaled_mean(8e6)
  assert large == pytest.approx(small, rel=0.05), (small, large)


@pytest.mark.parametrize("k_factor", [6.0, 12.0])
def test_strict_margin_is_the_tightening_plus_the_ls_pe_truncation(k_factor):
  """On an exact model the strict output's true margin V_c - b is the tightening eps zeta /
  (4H) plus what LS-PE's K = k_factor H steps leave out of the mixture's value (numpy
  K-step evaluation); at k_factor 6 that tail is several times the tightening."""
  eps, zeta, H = 0.5, 0.5, 10.0
  gamma = 1 - 1 / H
  m = linear.hypercube_instance(5, gamma, zeta, eps)
  out = _runs(m, 1e15, True, k_factor, 4, eps, zeta)
  t = m.tabular()
  K = linear.default_iters(gamma, k_factor)
  tail = np.zeros(4)
  for i in range(4):
    for w, pi in zip(out.weights[i], out.policies[i]):
      if w == 0:
        continue
      P_pi, c_pi = np.einsum("sa,sat->st", pi, t.P), np.einsum("sa,sa->s", pi, t.c)
      v = np.zeros(2)
      for _ in range(K):
        v = c_pi + gamma * P_pi @ v
      tail[i] += w * (tabular.discounted_values(t.P, t.c, pi, gamma)[0] - v[0])
  tighten = linear.TIGHTEN * eps * zeta / H
  margin = linear.evaluate_outputs(m, out)[1] - float(m.b)
  np.testing.assert_allclose(margin, tighten + tail, rtol=0.05)
  if k_factor == 6.0:
    assert tail.min() > 1.5 * tighten
  else:
    assert tail.max() < 0.05 * tighten


# --- exact ground truth -------------------------------------------------------------------------

def test_discounted_values_match_the_power_series_and_mixtures_are_linear():
  m = _random(1)
  t, g = m.tabular(), float(m.gamma)
  pis = np.random.default_rng(2).dirichlet(np.ones(3), size=(2, 6))
  P_pi, r_pi = tabular.policy_matrices(t.P, t.r, pis[0])
  series, Pt = np.zeros(6), np.eye(6)
  for k in range(400):
    series += g ** k * Pt @ r_pi
    Pt = Pt @ P_pi
  np.testing.assert_allclose(tabular.discounted_values(t.P, t.r, pis[0], g), series, rtol=1e-12)
  vr, vc = tabular.discounted_returns(t, pis, g)
  mix = tabular.mixture_returns(t, [0.3, 0.7], pis, g)
  assert mix == pytest.approx((0.3 * vr[0] + 0.7 * vr[1], 0.3 * vc[0] + 0.7 * vc[1]))


def _brute_force(t, gamma):
  """Best constrained value over mixtures of two deterministic policies (they suffice)."""
  S, A = t.r.shape
  dets = np.array([np.eye(A)[list(d)] for d in itertools.product(range(A), repeat=S)])
  vr, vc = tabular.discounted_returns(t, dets, gamma)
  b, best = float(t.b), -np.inf
  for i, j in itertools.product(range(len(dets)), repeat=2):
    if vc[i] >= b - 1e-12:
      best = max(best, vr[i])
    elif vc[j] > vc[i] and vc[j] >= b:
      w = (b - vc[i]) / (vc[j] - vc[i])
      best = max(best, (1 - w) * vr[i] + w * vr[j])
  return best, vc.max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discounted_lp_matches_brute_force_and_value_iteration(seed):
  m = _random(seed, S=4, A=2, d=3)
  t, g = m.tabular(), float(m.gamma)
  sol = linear.solve(m)
  best, top = _brute_force(t, g)
  assert sol.value == pytest.approx(best, abs=1e-7)
  assert sol.zeta == pytest.approx(top - float(m.b), abs=1e-7)
  assert sol.gain_r == pytest.approx(sol.value, abs=1e-7)      # the LP policy attains it
  assert sol.gain_c >= float(m.b) - 1e-8
  unc = lp.discounted_occupancy_lp(t.P, t.r, t.mu0, g)
  assert unc.value == pytest.approx(t.mu0 @ _value_iteration(t.P, t.r, g), abs=1e-8)
  # lambda* is the sensitivity of the optimal value to b.
  h = 1e-5
  up, down = (linear.solve(m.replace(b=m.b + s)).value for s in (h, -h))
  assert (down - up) / (2 * h) == pytest.approx(sol.dual, rel=1e-3, abs=1e-6)


def test_tabular_case_matches_the_tabular_lp_and_the_empirical_model():
  from cmdp import instances
  base = instances.random_instance(np.random.default_rng(3), 5, 2, "ergodic")
  t = base.replace(b=np.asarray(2.0))
  m = linear.from_tabular(t, 0.75)
  assert m.dim == 10
  assert linear.solve(m).value == pytest.approx(lp.solve_discounted_cmdp(t, 0.75).value,
                                                abs=1e-10)
  design = linear.g_optimal_design(m.phi.reshape(-1, m.dim))
  np.testing.assert_allclose(np.sort(design.weights), np.full(10, 0.1), atol=1e-9)
  assert design.max_variance == pytest.approx(10)
  # One-hot least squares is the tabular empirical model P_hat = counts / n.
  counts = np.random.default_rng(4).integers(1, 9, size=(10, 5)).astype(float)
  inst = linear.make_instance(m, design)
  with jax.enable_x64(True):
    M = np.asarray(linear.fit_next_state_measure(jnp.asarray(inst.phi_core), jnp.asarray(counts)))
  P_hat = counts / counts.sum(1, keepdims=True)
  np.testing.assert_allclose(inst.phi_core @ M, P_hat, atol=1e-12)


# --- design and least squares ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dirichlet", "gaussian", "hard"])
def test_g_optimal_design_meets_the_kiefer_wolfowitz_bound(kind):
  rng = np.random.default_rng(5)
  if kind == "dirichlet":
    X = rng.dirichlet(np.full(6, 0.3), size=60)
  elif kind == "gaussian":
    X = rng.normal(size=(60, 6))
  else:
    X = linear.hard_instance(9, 0.9, 0.5).phi.reshape(-1, 9)
  d = X.shape[1]
  design = linear.g_optimal_design(X)
  # Independent check of the guarantee on every feature.
  V = X[design.core].T @ (design.weights[:, None] * X[design.core])
  var = np.einsum("nd,de,ne->n", X, np.linalg.inv(V), X)
  assert var.max() <= 2 * d and var.max() == pytest.approx(design.max_variance, rel=1e-9)
  assert var.max() <= 1.05 * d                     # Frank-Wolfe got close to the optimum d
  assert design.weights.sum() == pytest.approx(1) and design.weights.min() > 0
  assert len(design.core) <= d * (d + 1) // 2
  if kind == "hard":                               # the decoys are left out
    assert len(design.core) == d and var.max() == pytest.approx(d)


def test_rank_deficient_features_are_rejected():
  with pytest.raises(CMDPError, match="span"):
    linear.g_optimal_design(np.ones((5, 2)))


def test_least_squares_measure_is_ols_on_the_samples():
  m = _random(6)
  inst = linear.make_instance(m)
  rng = np.random.default_rng(7)
  n = np.array([3, 5, 2, 4])[: len(inst.rho)] if len(inst.rho) <= 4 else rng.integers(
      2, 6, size=len(inst.rho))
  samples = [rng.choice(6, size=k, p=p / p.sum()) for k, p in zip(n, inst.P_core)]
  counts = np.stack([np.bincount(s, minlength=6) for s in samples]).astype(float)
  v = rng.random(6)
  X = np.concatenate([np.repeat(inst.phi_core[i:i + 1], k, 0) for i, k in enumerate(n)])
  y = np.concatenate([v[s] for s in samples])
  ref = np.linalg.lstsq(X, y, rcond=None)[0]
  with jax.enable_x64(True):
    M = np.asarray(linear.fit_next_state_measure(jnp.asarray(inst.phi_core), jnp.asarray(counts)))
  np.testing.assert_allclose(M @ v, ref, rtol=1e-9, atol=1e-12)


def test_weighted_measure_is_the_design_weighted_regression_of_the_sample_means():
  rng = np.random.default_rng(21)
  u, d, S = 6, 4, 5
  phi_core = rng.dirichlet(np.ones(d), size=u)
  rho = rng.dirichlet(np.ones(u))                      # a non-uniform design
  counts = rng.integers(0, 7, size=(u, S)).astype(float) + np.eye(u, S)
  v = rng.random(S)
  means = counts @ v / counts.sum(1)                   # per-point sample means of v(s')
  w = np.sqrt(rho)
  ref = np.linalg.lstsq(w[:, None] * phi_core, w * means, rcond=None)[0]
  with jax.enable_x64(True):
    M = np.asarray(linear.fit_next_state_measure(jnp.asarray(phi_core), jnp.asarray(counts),
                                                 jnp.asarray(rho)))
    np.testing.assert_allclose(M @ v, ref, rtol=1e-9, atol=1e-12)
    # Equal counts and a uniform design: the same as ordinary least squares on the samples.
    eq = counts / counts.sum(1, keepdims=True) * 9
    M_w = linear.fit_next_state_measure(jnp.asarray(phi_core), jnp.asarray(eq),
                                        jnp.full(u, 1.0 / u))
    M_ols = linear.fit_next_state_measure(jnp.asarray(phi_core), jnp.asarray(eq))
    np.testing.assert_allclose(np.asarray(M_w), np.asarray(M_ols), rtol=1e-9, atol=1e-12)
  # The same count at every core point, total >= N.
  n = linear.samples_per_core_point(rho, 100.0)
  assert np.all(n == 17) and n.sum() >= 100


# --- LS-MDVI and LS-PE ------------------------------------------------------------------------------

@jax.jit
def _mdvi_from_samples(keys, inst, n, theta, beta, K):
  def one(key):
    counts = linear.core_counts(key, inst.P_core, linear.samples_per_core_point(inst.rho, n))
    M = linear.fit_next_state_measure(inst.phi_core, counts)
    return linear.ls_mdvi(inst.phi, M, theta, inst.gamma, beta, K)
  return jax.vmap(one)(keys)


@pytest.mark.slow
def test_mdvi_with_fixed_lambda_converges_to_the_optimal_value_as_samples_grow():
  m = _random(8, S=8, A=3, d=5, gamma=0.9)
  t, g, lam, beta = m.tabular(), float(m.gamma), 1.5, 200.0
  R_ = t.r + lam * t.c
  V_star = t.mu0 @ _value_iteration(t.P, R_, g)
  inst = linear.make_instance(m)
  errs = []
  with jax.enable_x64(True):
    I = jax.tree.map(jnp.asarray, inst)
    keys = jax.random.split(jax.random.key(0), 16)
    for n in (1e2, 1e4, 1e6, 1e9):
      pis = np.asarray(_mdvi_from_samples(keys, I, n, jnp.asarray(m.theta_r + lam * m.theta_c),
                                          beta, linear.default_iters(g)))
      errs.append(V_star - tabular.discounted_values(t.P, R_, pis, g) @ t.mu0)
  mean = [e.mean() for e in errs]
  assert all(np.all(e >= -1e-9) for e in errs)                      # never beats V*
  assert mean[0] > mean[1] > mean[2] >= mean[3]
  assert mean[3] <= np.log(3) / beta + 1e-6                           # the entropy bias only


def test_greedy_ls_mdvi_is_the_large_beta_limit_and_optimal_on_the_exact_model():
  m = _random(13, S=7, A=3, d=5, gamma=0.85)
  t, g = m.tabular(), float(m.gamma)
  V_star = _value_iteration(t.P, t.r, g)
  K = linear.default_iters(g, 30.0)
  with jax.enable_x64(True):
    f = jax.jit(linear.ls_mdvi, static_argnums=(5,))
    args = (jnp.asarray(m.phi), jnp.asarray(m.psi), jnp.asarray(m.theta_r), g)
    greedy = np.asarray(f(*args, jnp.inf, K))
    soft = np.asarray(f(*args, 1e5, K))
  assert set(np.unique(greedy)) <= {0.0, 1.0} and np.all(greedy.sum(1) == 1)
  np.testing.assert_array_equal(greedy.argmax(1), soft.argmax(1))
  np.testing.assert_allclose(tabular.discounted_values(t.P, t.r, greedy, g), V_star, atol=1e-8)


def test_ls_pe_on_the_exact_model_is_exact_evaluation():
  m = _random(9, S=7, A=3, d=4, gamma=0.85)
  t, g = m.tabular(), float(m.gamma)
  pi = np.random.default_rng(10).dirichlet(np.ones(3), size=7)
  with jax.enable_x64(True):
    V = np.asarray(jax.jit(linear.ls_pe)(jnp.asarray(m.phi), jnp.asarray(m.psi),
                                         jnp.asarray(m.theta_c), jnp.asarray(pi), g, 400))
  np.testing.assert_allclose(V, tabular.discounted_values(t.P, t.c, pi, g), rtol=1e-10)


# --- the primal-dual algorithm --------------------------------------------------------------------

def _run(m, n, eps, zeta, strict, key=0, k_factor=6.0, inst=None):
  inst = linear.make_instance(m) if inst is None else inst
  runs = primal_dual.Runs(np.full(R, float(n)), np.full(R, eps), np.full(R, zeta),
                          np.full(R, strict))
  out = linear.run_batch(jax.random.key(key), inst, runs, n_iters=linear.default_iters(float(m.gamma), k_factor), **OPTS)
  return out, *linear.evaluate_outputs(m, out)


@pytest.mark.parametrize("name", ["hard", pytest.param("random", marks=pytest.mark.slow)])
def test_with_many_samples_the_output_converges_to_the_lp_optimum(name):
  m = linear.hard_instance(5, 0.8, 0.5) if name == "hard" else _random(11, S=6, A=3, d=4)
  sol, b = linear.solve(m), float(m.b)
  inst = linear.make_instance(m)
  gaps = []
  for eps in (0.4, 0.1):
    _, rr, rc = _run(m, 1e10, eps, sol.zeta, True, inst=inst)
    assert np.all(rc >= b - 1e-9), (eps, b - rc)                 # strictly feasible
    assert np.all(sol.value - rr <= eps), (eps, sol.value - rr)  # eps-optimal
    assert np.all(rr <= sol.value + 1e-9)                        # never beats the LP
    gaps.append(np.mean(sol.value - rr))
    out, rr, rc = _run(m, 1e10, eps, sol.zeta, False, inst=inst)
    assert np.all(rc >= b - eps) and np.all(sol.value - rr <= eps)
    np.testing.assert_allclose(out.weights.sum(1), 1)
    # The relaxed output spends at most its slack: V_r <= V*(b - eps).
    assert np.all(rr <= linear.solve(m.replace(b=m.b - eps)).value + 1e-9)
  # The error shrinks with eps (or is already nil: greedy LS-MDVI has no entropy bias, and
  # on the random instance the optimum is deterministic).
  assert gaps[1] < gaps[0] or gaps[1] <= gaps[0] <= 1e-9


def test_strict_outputs_are_feasible_at_the_tested_sample_sizes_and_fail_below():
  m = linear.hard_instance(5, 0.8, 0.5)
  b = float(m.b)
  inst = linear.make_instance(m)
  violations = []
  for n, key in ((1e3, 1), (1e8, 2), (1e9, 3)):
    _, _, rc = _run(m, n, 0.5, 0.5, True, key=key, inst=inst)
    violations.append(int(np.sum(rc < b - 1e-9)))
  assert violations[0] > 0                 # with few samples the constraint can be violated
  assert violations[1:] == [0, 0]


def test_numpy_reference_runs_the_same_algorithm():
  m = linear.hard_instance(5, 0.8, 0.5)
  design = linear.g_optimal_design(m.phi.reshape(-1, m.dim))
  K = linear.default_iters(0.8)
  rng = np.random.default_rng(0)
  outs = [linear.run_one_numpy(rng, m, design, 1e9, 0.5, 0.5, True, n_iters=K, **OPTS)
          for _ in range(2)]
  nr, nc = linear.evaluate_outputs(m, primal_dual.Mixture(np.stack([o[0] for o in outs]),
                                                          np.stack([o[1] for o in outs]),
                                                          None, None))
  _, jr, jc = _run(m, 1e9, 0.5, 0.5, True)
  # Same law: with M ~ psi both land on the same mixture up to the perturbation.
  assert abs(nr.mean() - jr.mean()) < 0.02 and abs(nc.mean() - jc.mean()) < 0.01


def test_constants_follow_the_settings():
  k = linear.constants(0.5, 0.25, 0.9, 4.0, False, 3)
  assert float(k.U) == pytest.approx(80) and float(k.b_prime) == pytest.approx(3.75)
  k = linear.constants(0.5, 0.25, 0.9, 4.0, True, 3)
  assert float(k.U) == pytest.approx(160) and float(k.b_prime) == pytest.approx(4 + 0.003125)
  assert float(k.beta) == pytest.approx(linear.C_BETA * np.log(3) / 0.5)
  assert float(k.omega) == pytest.approx(0.5 * 0.1 / linear.C_OMEGA)


# --- experiment helpers and end to end ---------------------------------------------------------------

@pytest.mark.slow
def test_experiment_end_to_end(tmp_path):
  from experiments import linear_cmdp_sample_complexity as exp
  from experiments.harness import RunContext
  cfg = dataclasses.replace(
      exp.Config(), d=5, d_grid=(5,), horizon=5.0, horizon_grid=(4.0, 5.0), eps=0.5,
      eps_grid=(1.0, 0.5), zeta=0.5, zeta_grid=(0.5, 1.0), relaxed_n_range=(64, 2 ** 12),
      strict_n_range=(2 ** 14, 2 ** 24), n_per_octave=1, n_seeds=4, n_check_seeds=4,
      n_grid=32, n_dual=2 ** 12, batch_size=128, rate_seeds=4, rate_n_range=(64, 4096),
      scaled_seeds=4, predict_seeds=4)
  ctx = RunContext(tmp_path, seed=0)
  head = exp.run(cfg, ctx)
  for k in ("slope_d", "slope_horizon", "slope_eps", "slope_zeta", "slope_d_lo", "slope_zeta_hi",
            "relaxed_slope_eps", "strict_violations", "tabular_n_star_base",
            "tabular_rate_constant", "strict_smooth_slope_d", "strict_smooth_slope_zeta_hi",
            "strict_smooth_n_base", "tabular_strict_smooth_slope_horizon",
            "rate_slope_reward_strict", "rate_slope_constraint_relaxed_hi"):
    assert k in head
  assert head["runs"] >= 100
  # The strict N reported is one at which no seed violates; it is not below the success N.
  assert head["strict_violations"] == 0 and head["strict_unsettled"] == 0
  assert head["tabular_strict_violations"] == 0 and head["strict_max_violation"] == 0
  assert head["n_star_base"] >= head["n_star_success_base"]
  for f in ("metrics.csv", "n_star.csv", "slopes.csv", "error_vs_n.png", "n_star.png",
            "strict_failure_curves.png", "rate.csv", "rate_vs_n.png", "scaled.csv",
            "scaled_check.png"):
    assert (tmp_path / f).stat().st_size > 0


@pytest.mark.slow
def test_hypercube_experiment_end_to_end(tmp_path):
  from experiments import linear_cmdp_hypercube as exp
  from experiments.harness import RunContext
  cfg = dataclasses.replace(
      exp.Config(), d=5, d_grid=(4, 5), horizon=5.0, horizon_grid=(4.0, 5.0), zeta=0.5,
      eps_grid=(1.0, 0.5), zeta_grid=(0.25, 0.5), relaxed_n_range=(2 ** 6, 2 ** 14),
      strict_n_range=(2 ** 14, 2 ** 28), n_per_octave=1, n_seeds=4, n_check_seeds=4, n_grid=32,
      n_dual=2 ** 12, k_factor=4.0, batch_size=128,
      rate_seeds=4, rate_n_range=(256, 4096), scaled_seeds=4, predict_seeds=4)
  head = exp.run(cfg, RunContext(tmp_path, seed=0))
  for sweep in exp.SWEEPS:
    for pre in ("", "relaxed_", "strict_smooth_", "scaled_", "relaxed_predicted_",
                "instance_", "relaxed_instance_"):
      assert f"{pre}slope_{sweep}" in head
  # The closed form's own exponents: H^5 / (eps^2 zeta^2) strict, up to the mild H and zeta
  # dependence of b' / W*; q^2 bent by the spread term at small q. (Relaxed, b' = b - eps / 2
  # moves b' / W* with eps too: steeper than -2 at small H.)
  assert head["relaxed_instance_slope_hard_eps"] < -2.0
  assert head["instance_slope_hard_eps"] == pytest.approx(-2.0, abs=0.05)
  assert head["instance_slope_hard_zeta"] == pytest.approx(-2.0, abs=0.5)
  assert 4.5 < head["instance_slope_hard_horizon"] < 7.0   # H^5 as H grows; 6.1 at H = 4-5
  assert 0.5 < head["instance_slope_hard_q"] < 2.0
  assert head["strict_violations"] == 0 and head["A"] == 4
  rows = (tmp_path / "n_star.csv").read_text().splitlines()
  assert rows[0].endswith("n_star_closed_form") and len(rows) > 8
  for f in ("metrics.csv", "slopes.csv", "error_vs_n.png", "n_star.png", "scaled.csv"):
    assert (tmp_path / f).stat().st_size > 0
