"""Model-based primal-dual learning of constrained average-reward MDPs (arXiv 2509.16586).

What is the paper's and what is reconstruction. The paper (Wei, Li & Yang,
"Near-Optimal Sample Complexity Bounds for Constrained Average-Reward MDPs")
proves O~(SA(B+H)/eps^2) samples for relaxed feasibility and
O~(SA(B+H)/(eps^2 zeta^2)) for strict feasibility with a model-based algorithm
under a generative model; its full text was not available here (only the
abstract and first page), so the algorithm below is the reconstruction of
``shared/research/theory-papers.md`` sec. 1: Vaswani, Yang & Szepesvari's
primal-dual template for discounted CMDPs (arXiv 2206.06270) run on a
discounted surrogate with 1 - gamma ~ eps / (B + H) as in Zurek & Chen's
reduction for average-reward MDPs (arXiv 2403.11477). The constants below are
ours (chosen so that each error term is a fixed fraction of the target).

Algorithm (one run):

1. Empirical model ``P_hat`` from N next-state samples per (s, a).
2. Perturbed reward ``r_p = r + U[0, omega]`` i.i.d. per (s, a) (makes each
   Lagrangian best response unique; costs at most omega in reward).
3. A discounted surrogate: ``(1 - gamma) V^gamma`` is within ~(1 - gamma)(B + H)
   of the gain for policies with bias span <= B + H.
4. Projected dual subgradient descent on [0, U], ``T`` steps, ``eta = U / sqrt(T)``,
   ``lambda_0 = 0``: ``pi_t`` = best response (discounted-optimal for
   ``r_p + lambda_t c`` on ``P_hat``), ``lambda_{t+1} = proj_[0,U](lambda_t -
   eta (rho_hat_c(pi_t) - b'))``. Output: the uniform mixture of pi_0..pi_{T-1}.

Constants (:func:`constants`; ``variant`` selects them):

* ``recovered`` (the default): the constants recovered from secondary sources on
  the paper (``shared/research/theory-papers.md``, addendum), with ``eps_opt`` the
  optimization accuracy: ``1 - gamma = eps_opt / (4 (B + H))``,
  ``omega = (1 - gamma) eps_bar / 6``, relaxed ``b' = b - 3 eps / 8`` and dual
  bound ``lambda_max = 2 (1 + omega) / (eps + eps_opt)``,
  ``T = (U / eps_opt)^2 (1 + 1 / (U - lambda*)^2)``. **Our choices where the
  sources leave a symbol open** (reconstruction): ``eps_opt = acc / 4``, the
  largest value for which the recovered relaxed budget (``b' = b - 3 eps/8``,
  optimization error eps_opt, concentration ``(eps - eps_opt)/2``) still gives
  ``rho_c >= b - eps``; ``eps_bar = eps / (1 - gamma)`` (the target in the
  surrogate's unnormalized value scale), so ``omega = eps / 6``; ``U = 2
  lambda_max`` (T needs ``U > lambda*``); and, since the strict formulas were not
  recovered, the strict setting is the relaxed one run at accuracy
  ``acc = eps zeta / 4`` on the tightened threshold ``b + acc`` (so ``b' = b + 5
  acc / 8``) with the Slater bound ``lambda_max = 2 (1 + omega) / zeta``; the
  relaxed setting has ``acc = eps``. T is computed with ``lambda_max`` in place of
  the unknown lambda*.
* ``recovered_oracle``: the same, but T uses the exact LP's lambda* of the true
  instance (an oracle the algorithm does not have; shown beside it only).
* ``fractions``: constants chosen so that each error term is a fixed fraction of
  the target (``acc = eps`` relaxed, ``eps zeta`` strict): ``1 - gamma = acc /
  (32 (B + H))``, ``omega = eps / 8``, relaxed ``U = 4 / eps``, ``b' = b - eps / 2``,
  strict ``U = 4 / zeta``, ``b' = b + eps zeta / 4``, and a fixed T (``n_iters``).

Dual grid (:mod:`cmdp.primal_dual`, shared with :mod:`cmdp.linear`): the best
responses are planned once on ``n_grid`` equally spaced points of [0, U], vmapped
over the grid, by discounted policy iteration (exact linear solves, float64); the T
dual steps look up the nearest grid point, so the output mixture is a weight vector
over the grid's deterministic policies.

Everything in :func:`run_batch` is one jitted, vmapped call over runs (seeds x
N x instances) under a scoped ``jax.enable_x64`` (never global). The exact
error of each output (reward suboptimality and constraint violation against
the LP optimum) is computed in numpy float64 by :func:`evaluate_outputs`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cmdp import generative, lp, primal_dual, tabular

VARIANTS = ("recovered", "recovered_oracle", "fractions")

# The ``fractions`` variant (see module docstring).
C_GAMMA = 32.0     # 1 - gamma = acc / (C_GAMMA (B + H))
C_OMEGA = 8.0      # omega = eps / C_OMEGA
U_RELAXED = 4.0    # U = U_RELAXED / eps
U_STRICT = 4.0     # U = U_STRICT / zeta
RELAX = 0.5        # relaxed: b' = b - RELAX eps
TIGHTEN = 0.25     # strict:  b' = b + TIGHTEN eps zeta


class Constants(NamedTuple):
  """The algorithm's derived parameters for one run (scalars, may be traced).

  Attributes:
    gamma: surrogate discount factor.
    omega: reward perturbation scale.
    U: dual box [0, U].
    b_prime: the threshold the empirical problem is solved for.
    T: dual steps (a float: the recovered T reaches 10^10).
  """
  gamma: jax.Array
  omega: jax.Array
  U: jax.Array
  b_prime: jax.Array
  T: jax.Array


def constants(eps, zeta, span, b, strict, variant: str = "recovered", *, lam_star=None,
              n_iters: int = 2 ** 19) -> Constants:
  """:class:`Constants` of one run (see the module docstring for each variant).

  Args:
    eps, zeta: target accuracy and Slater constant.
    span: B + H.
    b: the constraint threshold.
    strict: the setting (bool).
    variant: one of :data:`VARIANTS`.
    lam_star: the true instance's lambda* (used by ``recovered_oracle`` only).
    n_iters: T of the ``fractions`` variant.
  """
  traced = any(isinstance(v, jax.Array) for v in (eps, zeta, span, b, strict, lam_star))
  xp = jnp if traced else np
  if variant == "fractions":
    acc = xp.where(strict, eps * zeta, eps)
    gamma = 1.0 - acc / (C_GAMMA * span)
    U = xp.where(strict, U_STRICT / zeta, U_RELAXED / eps)
    b_prime = xp.where(strict, b + TIGHTEN * eps * zeta, b - RELAX * eps)
    return Constants(gamma, eps / C_OMEGA, U, b_prime, xp.full_like(U, float(n_iters)))
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
  acc = xp.where(strict, eps * zeta / 4.0, eps)            # our choice for strict
  eps_opt = acc / 4.0                                      # our choice
  gamma = 1.0 - eps_opt / (4.0 * span)                     # recovered
  omega = eps / 6.0                # recovered (1 - gamma) eps_bar / 6, eps_bar = eps/(1 - gamma)
  lam_max = xp.where(strict, 2.0 * (1.0 + omega) / zeta,              # Slater bound (ours)
                     2.0 * (1.0 + omega) / (eps + eps_opt))          # recovered
  U = 2.0 * lam_max                                        # our choice: U > lambda*
  b_prime = xp.where(strict, b + acc - 3.0 * acc / 8.0, b - 3.0 * eps / 8.0)
  lam_T = lam_max
  if variant == "recovered_oracle":
    if lam_star is None:
      raise ValueError("variant 'recovered_oracle' needs lam_star")
    lam_T = xp.minimum(lam_star, lam_max)                  # lambda* <= lambda_max in theory
  T = xp.ceil((U / eps_opt) ** 2 * (1.0 + 1.0 / (U - lam_T) ** 2))    # recovered
  return Constants(gamma, omega, U, b_prime, T)


# --- planner: discounted policy iteration (jax) -------------------------------------------------

def policy_iteration(P: jax.Array, R: jax.Array, gamma, max_iter: int = 100):
  """Discounted-optimal deterministic policy of (P, R) by policy iteration.

  Args:
    P: (S, A, S) transitions.
    R: (S, A) rewards.
    gamma: discount factor (scalar, may be traced).
    max_iter: iteration cap (PI converges in a few iterations here).

  Returns:
    (policy (S,) int32, V (S,)) with V the value of the returned policy.
  """
  S, A = R.shape
  rows = jnp.arange(S)
  eye = jnp.eye(S, dtype=P.dtype)

  def value(pi):
    return jnp.linalg.solve(eye - gamma * P[rows, pi], R[rows, pi])

  def improve(pi, V):
    Q = R + gamma * P @ V
    best = Q.max(1)
    keep = Q[rows, pi] >= best - 1e-12 * (1.0 + jnp.abs(best))  # keep ties: no cycling
    return jnp.where(keep, pi, jnp.argmax(Q, 1).astype(pi.dtype))

  def cond(state):
    _, _, changed, it = state
    return changed & (it < max_iter)

  def body(state):
    pi, V, _, it = state
    new = improve(pi, V)
    return new, value(new), jnp.any(new != pi), it + 1

  pi0 = jnp.argmax(R, 1).astype(jnp.int32)
  pi, V, _, _ = jax.lax.while_loop(cond, body, (pi0, value(pi0), jnp.array(True), 0))
  return pi, V


def best_responses(P_hat, r_p, c, mu0, gamma, lam_grid, max_iter: int = 100):
  """Best responses on the dual grid (vmapped).

  Returns:
    policies (M, S) int32 and their surrogate gains ``(1 - gamma) mu0 . V`` for
    the perturbed reward, ``vr`` (M,), and for c, ``vc`` (M,), on ``P_hat``.
  """
  S = r_p.shape[0]
  rows = jnp.arange(S)
  eye = jnp.eye(S, dtype=P_hat.dtype)

  def one(lam):
    pi, _ = policy_iteration(P_hat, r_p + lam * c, gamma, max_iter)
    M = eye - gamma * P_hat[rows, pi]
    V = jnp.linalg.solve(M, jnp.stack([r_p[rows, pi], c[rows, pi]], axis=1))  # (S, 2)
    v = (1.0 - gamma) * mu0 @ V
    return pi, v[0], v[1]

  return jax.vmap(one)(lam_grid)


class Instance(NamedTuple):
  """What a run needs of a true instance (a batch adds a leading run axis).

  Attributes:
    P: (S, A, S) transition law (only sampled from); r, c: (S, A); mu0: (S,); b: ().
    span: B + H (known to the algorithm, as in the theory; B = 0 for weakly
      communicating instances).
    lam_star: the exact LP's lambda* (read only by the ``recovered_oracle``
      constants; nan when not given).
  """
  P: jax.Array
  r: jax.Array
  c: jax.Array
  mu0: jax.Array
  b: jax.Array
  span: jax.Array
  lam_star: jax.Array


def instance(m: tabular.TabularCMDP, span: float, lam_star: float = float("nan")) -> Instance:
  """The :class:`Instance` of ``m`` (numpy float64) with the span the algorithm is given."""
  f64 = lambda x: np.asarray(x, np.float64)
  return Instance(f64(m.P), f64(m.r), f64(m.c), f64(m.mu0), f64(m.b), f64(span), f64(lam_star))


def run_one(key, inst: Instance, run: primal_dual.Runs, *, n_grid: int, variant: str,
            n_iters: int, max_pi_iter: int = 100) -> primal_dual.Mixture:
  """The algorithm on one instance for one (N, seed); see the module docstring.

  Args:
    key: PRNG key of the run.
    inst: the true instance (P is only sampled from) and its B + H.
    run: N (samples per (s, a)), eps, zeta and the setting, as scalars.
    n_grid: dual grid size M (static).
    variant: the constants (:data:`VARIANTS`; static).
    n_iters: dual steps T of the ``fractions`` constants.
  """
  k_model, k_perturb = jax.random.split(key)
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  P, r, c, mu0 = (jnp.asarray(x, dtype) for x in (inst.P, inst.r, inst.c, inst.mu0))
  P_hat = generative.empirical_model(k_model, P, run.n)
  k = constants(*(jnp.asarray(v, dtype) for v in (run.eps, run.zeta, inst.span, inst.b)),
                jnp.asarray(run.strict), variant, lam_star=jnp.asarray(inst.lam_star, dtype),
                n_iters=n_iters)
  r_p = r + k.omega * jax.random.uniform(k_perturb, r.shape, dtype)
  pols, _, vc = best_responses(P_hat, r_p, c, mu0, k.gamma,
                               primal_dual.dual_grid(k.U, n_grid, dtype), max_pi_iter)
  weights, lam = primal_dual.dual_descent(vc, k.b_prime, k.U, k.T)
  return primal_dual.Mixture(pols, weights, vc, lam)


@functools.partial(jax.jit, static_argnames=("n_grid", "variant", "n_iters", "max_pi_iter"))
def _run_batch(keys, inst, runs, *, n_grid, variant, n_iters, max_pi_iter):
  fn = functools.partial(run_one, n_grid=n_grid, variant=variant, n_iters=n_iters,
                         max_pi_iter=max_pi_iter)
  return jax.vmap(fn)(keys, inst, runs)


def run_batch(key: jax.Array, inst: Instance, runs: primal_dual.Runs, *, n_grid: int = 128,
              variant: str = "recovered", n_iters: int = 2 ** 19, max_pi_iter: int = 100
              ) -> primal_dual.Mixture:
  """Runs the algorithm for a flat batch of R runs in one jitted, vmapped call (float64).

  Every field of ``inst`` and ``runs`` has a leading run axis R (run i on instance
  ``inst[i]`` with settings ``runs[i]``), so one call can mix instances of one shape.
  Run i uses key ``fold_in(key, i)``. x64 is enabled only for this call. ``variant``
  picks the constants (:data:`VARIANTS`); ``n_iters`` is T of ``fractions`` only.

  Returns:
    :class:`cmdp.primal_dual.Mixture` with numpy arrays and a leading axis R; its
    policies are deterministic, (R, M, S).
  """
  with jax.enable_x64(True):
    keys = primal_dual.run_keys(key, np.shape(runs.n)[0])
    inst = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), inst)
    out = _run_batch(keys, inst, runs.as_jax(), n_grid=n_grid, variant=variant,
                     n_iters=n_iters, max_pi_iter=max_pi_iter)
    return jax.tree.map(np.asarray, out)


# --- exact evaluation of outputs (numpy float64) -----------------------------------------------

def evaluate_outputs(models: list, instance_of_run, out: primal_dual.Mixture,
                     min_weight: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Exact gains (rho_r, rho_c) from mu0 of every run's output mixture.

  Deterministic grid policies are deduplicated per instance, each evaluated
  once with :func:`cmdp.tabular.gains`.

  Args:
    models: the true instances (list of TabularCMDP).
    instance_of_run: (R,) index into ``models`` of each run.
    out: :class:`cmdp.primal_dual.Mixture` with leading run axis R (numpy).
    min_weight: grid points with weight <= this are skipped.

  Returns:
    (rho_r (R,), rho_c (R,)).
  """
  cache: dict = {}
  R_ = out.weights.shape[0]
  rho = np.zeros((R_, 2))
  for i in range(R_):
    m = models[int(instance_of_run[i])]
    A = m.n_actions
    for k in np.flatnonzero(out.weights[i] > min_weight):
      pol = out.policies[i, k]
      key = (int(instance_of_run[i]), pol.tobytes())
      if key not in cache:
        cache[key] = np.asarray(tabular.gains(m, tabular.deterministic(pol, A)))
      rho[i] += out.weights[i, k] * cache[key]
  return rho[:, 0], rho[:, 1]


# --- instance parameters ----------------------------------------------------------------------

class InstanceParameters(NamedTuple):
  """What the bounds use, for one instance.

  Attributes:
    H: max span of the bias (for r and for c) of the optimal constrained
      policy's components (reconstruction of "span of the optimal bias").
    H_unconstrained: span of the optimal bias of r, unconstrained.
    B: transient-time bound: max over policies of the expected time in
      transient states (exact over all deterministic policies when A^S <=
      ``brute_force_max``, else over the constant-action policies, the optimal
      ones and any given; a lower estimate then).
    B_exact: whether B was computed over all deterministic policies.
    zeta: Slater constant.
    rho_star: optimal constrained gain.
    lam_star: optimal dual variable.
  """
  H: float
  H_unconstrained: float
  B: float
  B_exact: bool
  zeta: float
  rho_star: float
  lam_star: float


def instance_parameters(m: tabular.TabularCMDP, sol: lp.CMDPSolution | None = None, *,
                        policies=(), brute_force_max: int = 4096) -> InstanceParameters:
  """H, B and zeta of a CMDP (see :class:`InstanceParameters`)."""
  if sol is None:
    sol = lp.solve_cmdp(m)
  S, A = m.n_states, m.n_actions
  H = 0.0
  for pi in sol.policy.components:
    H = max(H, tabular.evaluate(m.P, m.r, pi).span, tabular.evaluate(m.P, m.c, pi).span)
  unc = lp.optimal_gain(m.P, m.r, m.mu0)
  H_unc = tabular.evaluate(m.P, m.r, unc.policy).span
  exact = A ** S <= brute_force_max
  if exact:
    cands = (tabular.deterministic(np.array(np.unravel_index(i, (A,) * S)), A)
             for i in range(A ** S))
  else:
    cands = [tabular.deterministic(np.full(S, a), A) for a in range(A)]
    cands += list(sol.policy.components) + [unc.policy] + [np.asarray(p, np.float64) for p in policies]
  B = max(tabular.transient_time(tabular.policy_matrices(m.P, m.r, pi)[0]) for pi in cands)
  return InstanceParameters(H, H_unc, B, exact, sol.zeta, sol.value, sol.dual)


# --- numpy reference of the same algorithm (the benchmark's baseline) ------------------------

def run_one_numpy(rng: np.random.Generator, m: tabular.TabularCMDP, n: int, eps: float,
                  zeta: float, span: float, strict: bool, *, n_grid: int = 128,
                  n_iters: int = 2 ** 17, max_pi_iter: int = 100):
  """The same algorithm as :func:`run_one` with the ``fractions`` constants, as a plain
  numpy loop (float64), one dual step at a time.

  Returns:
    (policies (M, S), weights (M,)).
  """
  S, A = m.n_states, m.n_actions
  P_hat = generative.empirical_model_numpy(rng, m.P, n)
  k = constants(eps, zeta, span, float(m.b), strict, "fractions", n_iters=n_iters)
  r_p = m.r + k.omega * rng.random((S, A))
  rows, eye = np.arange(S), np.eye(S)
  pols, vc = np.zeros((n_grid, S), np.int64), np.zeros(n_grid)
  for g, lam in enumerate(np.linspace(0, 1, n_grid) * k.U):
    R = r_p + lam * m.c
    pi = np.argmax(R, 1)
    V = np.linalg.solve(eye - k.gamma * P_hat[rows, pi], R[rows, pi])
    for _ in range(max_pi_iter):
      Q = R + k.gamma * P_hat @ V
      best = Q.max(1)
      new = np.where(Q[rows, pi] >= best - 1e-12 * (1 + np.abs(best)), pi, Q.argmax(1))
      if np.array_equal(new, pi):
        break
      pi = new
      V = np.linalg.solve(eye - k.gamma * P_hat[rows, pi], R[rows, pi])
    pols[g] = pi
    Vc = np.linalg.solve(eye - k.gamma * P_hat[rows, pi], m.c[rows, pi])
    vc[g] = (1 - k.gamma) * m.mu0 @ Vc
  return pols, primal_dual.dual_descent_numpy(vc, k.b_prime, k.U, n_iters)
