"""The linear-CMDP learner as a plain numpy loop (float64): the benchmark's baseline and an
independent check of :mod:`cmdp.linear.learner`."""

from __future__ import annotations

import numpy as np

from cmdp import primal_dual
from cmdp.linear.design import Design, samples_per_core_point
from cmdp.linear.learner import C_BETA, constants, make_instance
from cmdp.linear.model import LinearCMDP

def run_one_numpy(rng: np.random.Generator, m: LinearCMDP, design: Design, n: float, eps: float,
                  zeta: float, strict: bool, *, n_grid: int = 64, n_dual: int = 2 ** 17,
                  n_iters: int = 200, c_beta: float = C_BETA) -> tuple[np.ndarray, np.ndarray]:
  """The same algorithm as :func:`run_one`, as a plain numpy loop (float64).

  Returns:
    (policies (M, S, A), weights (M,)).
  """
  gamma = float(m.gamma)
  S, A, d = m.phi.shape
  inst = make_instance(m, design)
  n_core = samples_per_core_point(design.weights, n).astype(np.int64)
  counts = np.stack([rng.multinomial(k, p / p.sum())
                     for k, p in zip(n_core, np.clip(inst.P_core, 0, None))]).astype(np.float64)
  rho = design.weights
  G = inst.phi_core.T @ (rho[:, None] * inst.phi_core)
  M = np.linalg.solve(G, inst.phi_core.T @ (rho[:, None] * counts / counts.sum(1, keepdims=True)))
  k = constants(eps, zeta, gamma, float(m.b), strict, A, c_beta)
  greedy = np.isinf(k.beta)
  theta_rp = m.theta_r + k.omega * rng.random(d)
  pols, vcs = np.zeros((n_grid, S, A)), np.zeros(n_grid)
  for g, lam in enumerate(np.linspace(0, 1, n_grid) * k.U):
    theta = theta_rp + lam * m.theta_c
    v_max = (m.phi @ theta).max() / (1 - gamma) + (0.0 if greedy else np.log(A) / k.beta)
    theta_bar, w, w_prev = np.zeros(d), np.zeros(S), np.zeros(S)
    for _ in range(n_iters):
      v = np.clip(w - gamma * w_prev, 0.0, v_max)
      theta_bar = theta + gamma * M @ v + gamma * theta_bar
      q = m.phi @ theta_bar
      if greedy:
        w, w_prev = q.max(1), w
      else:
        s = k.beta * q
        top = s.max(1)
        w, w_prev = (top + np.log(np.exp(s - top[:, None]).sum(1))) / k.beta, w
    q = m.phi @ theta_bar
    if greedy:
      pi = np.eye(A)[q.argmax(1)]
    else:
      s = k.beta * q
      pi = np.exp(s - s.max(1, keepdims=True))
      pi /= pi.sum(1, keepdims=True)
    phi_pi = np.einsum("sa,sad->sd", pi, m.phi)
    vc_max = (m.phi @ m.theta_c).max() / (1 - gamma)
    th = np.zeros(d)
    for _ in range(n_iters):
      th = m.theta_c + gamma * M @ np.clip(phi_pi @ th, 0.0, vc_max)
    pols[g], vcs[g] = pi, m.mu0 @ np.clip(phi_pi @ th, 0.0, vc_max)
  return pols, primal_dual.dual_descent_numpy(vcs, k.b_prime, k.U, n_dual)
