"""Exact answers for a linear CMDP (numpy float64): its optimum through the discounted
occupancy LP of its tabular form, and the exact values of a learner's output mixtures."""

from __future__ import annotations

import numpy as np

from cmdp import lp, primal_dual, tabular
from cmdp.linear.model import LinearCMDP

def solve(m: LinearCMDP) -> lp.CMDPSolution:
  """Exact ground truth: optimal V_r*(mu0), a policy, lambda* and zeta (discounted LP)."""
  return lp.solve_discounted_cmdp(m.tabular(), float(m.gamma))


def evaluate_outputs(m: LinearCMDP, out: primal_dual.Mixture) -> tuple[np.ndarray, np.ndarray]:
  """Exact (V_r(mu0), V_c(mu0)) of every run's output mixture (runs on the instance ``m``).

  Every grid policy is evaluated by a linear solve in float64
  (:func:`cmdp.tabular.discounted_returns`); the mixture's values are the
  weighted sums.

  Returns:
    (V_r (R,), V_c (R,)).
  """
  vr, vc = tabular.discounted_returns(m.tabular(), out.policies, float(m.gamma))
  return np.einsum("rk,rk->r", out.weights, vr), np.einsum("rk,rk->r", out.weights, vc)
