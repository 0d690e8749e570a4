"""The primal-dual learner of linear CMDPs (arXiv 2507.02089, partly reconstructed; see
:mod:`cmdp.linear`): least squares at the core set, LS-MDVI best responses on the dual grid,
LS-PE constraint values, and the dual loop of :mod:`cmdp.primal_dual`, one run or a jitted,
vmapped batch of runs."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cmdp import primal_dual
from cmdp.linear.design import Design, core_counts, g_optimal_design, samples_per_core_point
from cmdp.linear.model import LinearCMDP

# Reconstruction constants (see module docstring).
C_BETA = np.inf    # beta = C_BETA ln(A) / eps; inf: greedy LS-MDVI, as the authors' code
C_OMEGA = 8.0      # omega = eps (1 - gamma) / C_OMEGA
U_RELAXED = 4.0    # U = U_RELAXED H / eps
U_STRICT = 4.0     # U = U_STRICT H / zeta
RELAX = 0.5        # relaxed: b' = b - RELAX eps
TIGHTEN = 0.25     # strict:  b' = b + TIGHTEN eps zeta / H


def fit_next_state_measure(phi_core: jax.Array, counts: jax.Array, rho=None) -> jax.Array:
  """Least-squares next-state measure M (d, S) from core-set samples.

  With ``rho`` (the design weights, as :func:`run_one` calls it): the
  design-weighted regression of the per-point empirical next-state laws,
  ``M = G_rho^{-1} sum_x rho_x phi_x counts_x / n_x`` with ``G_rho = sum_x rho_x
  phi_x phi_x^T``, so that ``phi^T M v`` regresses the sample means of
  ``v(s')`` at the core points with weights ``rho`` (the regression of the
  authors' LS-MDVI code, ``wlsmdvi_G`` with f = 1). Without ``rho``: ordinary
  least squares over all samples, ``G^{-1} sum_x phi_x sum_m v(s'_{x,m})`` with
  ``G = sum_x n_x phi_x phi_x^T``. The two coincide when every core point has the
  same count and the same weight (every design of this project's instances).

  Args:
    phi_core: (u, d) core-set features.
    counts: (u, S) next-state counts (``n_x = counts[x].sum()``).
    rho: (u,) design weights, or None (ordinary least squares).
  """
  n = counts.sum(-1)
  if rho is None:
    G = phi_core.T @ (n[:, None] * phi_core)
    return jnp.linalg.solve(G, phi_core.T @ counts)
  G = phi_core.T @ (rho[:, None] * phi_core)
  means = counts / jnp.maximum(n, 1.0)[:, None]
  return jnp.linalg.solve(G, phi_core.T @ (rho[:, None] * means))


class MDVIState(NamedTuple):
  """LS-MDVI's carry.

  Attributes:
    theta_bar: (d,) ``s_k = phi^T theta_bar`` (the alpha-discounted sum of q's).
    w: (S,) ``w_k``.
    w_prev: (S,) ``w_{k-1}``.
  """
  theta_bar: jax.Array
  w: jax.Array
  w_prev: jax.Array


def ls_mdvi(phi: jax.Array, M: jax.Array, theta: jax.Array, gamma, beta, n_iters,
            alpha=None) -> jax.Array:
  """LS-MDVI (Kitamura et al. 2023) on fitted data: the policy (S, A) after K steps.

  ``beta = inf`` (the default of :func:`constants`) is the update of the authors'
  code (matsuolab/Variance-Weighted-MDVI, ``VWLS-MDVI/VWLS-MDVI-Experiment.ipynb``,
  ``wlsmdvi_G``): ``w_k = max_a s_k`` and the greedy policy ``argmax_a s_K`` (ties:
  the first action, as ``jnp.argmax``). A finite ``beta`` is the general MDVI
  (``w_k = (1/beta) logsumexp(beta s_k)``, policy ``softmax(beta s_K)``).

  Args:
    phi: (S, A, d) features.
    M: (d, S) least-squares next-state measure (:func:`fit_next_state_measure`).
    theta: (d,) reward parameter of the MDP solved (e.g. ``theta_r + lambda theta_c``).
    gamma: discount; beta: inverse temperature (``inf``: greedy); alpha: KL weight
      (default gamma, as the authors' code).
    n_iters: K (may be traced: one compiled loop serves every horizon).
  """
  alpha = gamma if alpha is None else alpha
  A = phi.shape[1]
  greedy = jnp.isinf(beta)
  b = jnp.where(greedy, 1.0, beta)          # a finite stand-in, unused where greedy
  r = phi @ theta
  v_max = r.max() / (1.0 - gamma) + jnp.where(greedy, 0.0, jnp.log(A) / b)

  def soft_max(s):                                          # (S, A) -> (S,)
    return jnp.where(greedy, s.max(axis=1), jax.nn.logsumexp(b * s, axis=1) / b)

  def step(_, st: MDVIState):
    v = jnp.clip(st.w - alpha * st.w_prev, 0.0, v_max)
    theta_bar = theta + gamma * M @ v + alpha * st.theta_bar
    return MDVIState(theta_bar, soft_max(phi @ theta_bar), st.w)

  S, _, d = phi.shape
  z = jnp.zeros(S, phi.dtype)
  st = jax.lax.fori_loop(0, n_iters, step, MDVIState(jnp.zeros(d, phi.dtype), z, z))
  s = phi @ st.theta_bar
  return jnp.where(greedy, jax.nn.one_hot(jnp.argmax(s, axis=1), A, dtype=s.dtype),
                   jax.nn.softmax(b * s, axis=1))


def ls_pe(phi: jax.Array, M: jax.Array, theta: jax.Array, pi: jax.Array, gamma,
          n_iters) -> jax.Array:
  """Least-squares policy evaluation on fitted data: V^pi (S,) for reward ``phi^T theta``.

  K steps of ``theta_{j+1} = theta + gamma M clip(Phi_pi theta_j, 0, v_max)``
  (recon; the clip to the valid value range is ours).
  """
  phi_pi = jnp.einsum("sa,sad->sd", pi, phi)
  v_max = (phi @ theta).max() / (1.0 - gamma)
  vals = lambda th: jnp.clip(phi_pi @ th, 0.0, v_max)

  def step(_, th):
    return theta + gamma * M @ vals(th)

  th = jax.lax.fori_loop(0, n_iters, step, jnp.zeros_like(theta))
  return vals(th)


class Constants(NamedTuple):
  """Derived parameters of one run (scalars, may be traced).

  Attributes:
    U: dual box [0, U].
    b_prime: the threshold the estimated problem is solved for.
    beta: LS-MDVI inverse temperature.
    omega: reward perturbation scale.
  """
  U: jax.Array
  b_prime: jax.Array
  beta: jax.Array
  omega: jax.Array


def constants(eps, zeta, gamma, b, strict, n_actions: int, c_beta: float = C_BETA,
              c_omega: float = C_OMEGA) -> Constants:
  """:class:`Constants` from eps, zeta, gamma, b, the setting (bool) and A (module docstring).

  ``beta = c_beta ln(A) / eps`` (``inf`` for ``c_beta = inf``: greedy LS-MDVI);
  ``omega = eps (1 - gamma) / c_omega``."""
  xp = jnp if any(isinstance(v, jax.Array) for v in (eps, zeta, gamma, b, strict)) else np
  H = 1.0 / (1.0 - gamma)
  U = xp.where(strict, U_STRICT * H / zeta, U_RELAXED * H / eps)
  b_prime = xp.where(strict, b + TIGHTEN * eps * zeta / H, b - RELAX * eps)
  beta = c_beta * np.log(max(n_actions, 2)) / eps
  return Constants(U, b_prime, beta, eps / (c_omega * H))


class Instance(NamedTuple):
  """What one run needs of a linear CMDP (jax arrays; P_core only to sample from).

  Attributes:
    phi: (S, A, d); theta_r, theta_c: (d,); mu0: (S,); b, gamma: ().
    phi_core: (u, d) core-set features; rho: (u,) design weights.
    P_core: (u, S) true next-state laws at the core set (the generative model).
  """
  phi: jax.Array
  theta_r: jax.Array
  theta_c: jax.Array
  mu0: jax.Array
  b: jax.Array
  gamma: jax.Array
  phi_core: jax.Array
  rho: jax.Array
  P_core: jax.Array


def make_instance(m: LinearCMDP, design: Design | None = None) -> Instance:
  """The :class:`Instance` of ``m`` (numpy float64), with its G-optimal design."""
  design = g_optimal_design(m.phi.reshape(-1, m.dim)) if design is None else design
  flat = m.phi.reshape(-1, m.dim)
  P = (m.phi @ m.psi).reshape(-1, m.n_states)
  return Instance(m.phi, m.theta_r, m.theta_c, m.mu0, np.asarray(m.b, np.float64),
                  np.asarray(m.gamma, np.float64), flat[design.core], design.weights,
                  P[design.core])


def best_responses(phi, M, theta_rp, theta_c, mu0, gamma, beta, lam_grid, n_iters):
  """LS-MDVI policies (G, S, A) on the dual grid and their LS-PE constraint values (G,)."""
  def one(lam):
    pi = ls_mdvi(phi, M, theta_rp + lam * theta_c, gamma, beta, n_iters)
    return pi, mu0 @ ls_pe(phi, M, theta_c, pi, gamma, n_iters)

  return jax.vmap(one)(lam_grid)


def run_one(key, inst: Instance, run: primal_dual.Runs, n_iters, *, n_grid: int,
            n_dual: int, c_beta: float = C_BETA, c_omega: float = C_OMEGA
            ) -> primal_dual.Mixture:
  """The primal-dual algorithm on one instance for one (N, seed); see the module docstring.

  Args:
    key: PRNG key of the run.
    inst: the instance (its P_core is only sampled from).
    run: the sample budget N (``ceil(rho_x N)`` at core point x), eps and zeta (known, as in
      the theory) and the setting, as scalars.
    n_iters: LS-MDVI / LS-PE steps K (may be traced).
    n_grid, n_dual: dual grid size and dual steps T (static).
    c_beta: LS-MDVI's ``beta = c_beta ln(A) / eps`` (static; inf: greedy).
    c_omega: the reward perturbation's ``omega = eps (1 - gamma) / c_omega`` (static).
  """
  k_data, k_perturb = jax.random.split(key)
  dtype = inst.phi.dtype
  counts = core_counts(k_data, inst.P_core, samples_per_core_point(inst.rho, run.n))
  M = fit_next_state_measure(inst.phi_core, counts, inst.rho)
  k = constants(run.eps, run.zeta, inst.gamma, inst.b, run.strict, inst.phi.shape[1], c_beta,
                c_omega)
  theta_rp = inst.theta_r + k.omega * jax.random.uniform(k_perturb, inst.theta_r.shape, dtype)
  pols, vc = best_responses(inst.phi, M, theta_rp, inst.theta_c, inst.mu0, inst.gamma, k.beta,
                            primal_dual.dual_grid(k.U, n_grid, dtype), n_iters)
  weights, lam = primal_dual.dual_descent(vc, k.b_prime, k.U, n_dual)
  return primal_dual.Mixture(pols, weights, vc, lam)


@functools.partial(jax.jit, static_argnames=("n_grid", "n_dual", "c_beta", "c_omega"))
def _run_batch(keys, inst, runs, n_iters, *, n_grid, n_dual, c_beta, c_omega):
  fn = functools.partial(run_one, n_grid=n_grid, n_dual=n_dual, c_beta=c_beta, c_omega=c_omega)
  return jax.vmap(fn, in_axes=(0, None, 0, None))(keys, inst, runs, n_iters)


def run_batch(key: jax.Array, inst: Instance, runs: primal_dual.Runs, *, n_grid: int = 64,
              n_dual: int = 2 ** 17, n_iters: int = 200,
              c_beta: float = C_BETA, c_omega: float = C_OMEGA) -> primal_dual.Mixture:
  """R runs on one instance in one jitted call, vmapped over runs and the dual grid (float64).

  Every field of ``runs`` has shape (R,); run i uses key ``fold_in(key, i)``.
  ``n_iters`` (K) is traced, so calls that differ only in K (or in the instance's
  numbers) share one compilation per shape. x64 is enabled only for this call. (The
  runs are not sharded over the host's devices: on CPU, a sharded call deadlocked in
  XLA once, so one device runs the batch.)

  Returns:
    :class:`cmdp.primal_dual.Mixture` with numpy arrays and a leading axis R; its
    policies are the LS-MDVI softmax policies, (R, M, S, A).
  """
  with jax.enable_x64(True):
    keys = primal_dual.run_keys(key, np.shape(runs.n)[0])
    f64 = lambda x: jnp.asarray(np.asarray(x, np.float64))
    out = _run_batch(keys, jax.tree.map(f64, inst), runs.as_jax(),
                     jnp.asarray(n_iters, jnp.int32), n_grid=n_grid, n_dual=n_dual,
                     c_beta=float(c_beta), c_omega=float(c_omega))
    return jax.tree.map(np.asarray, out)


def default_iters(gamma: float, k_factor: float = 12.0) -> int:
  """K = ceil(k_factor H) LS-MDVI / LS-PE steps (gamma^K ~ exp(-k_factor))."""
  return int(np.ceil(k_factor / (1.0 - gamma)))
