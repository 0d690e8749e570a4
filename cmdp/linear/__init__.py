"""Linear constrained discounted MDPs under a generative model (arXiv 2507.02089, partly reconstructed).

Rooms (as on the tabular side): :mod:`~cmdp.linear.model` (the model pytree and its tabular
form), :mod:`~cmdp.linear.instances` (random and hard instances), :mod:`~cmdp.linear.design`
(the G-optimal design and the samples drawn at its core set), :mod:`~cmdp.linear.learner`
(least squares, LS-MDVI, LS-PE, the primal-dual runs), :mod:`~cmdp.linear.exact` (the LP
optimum and exact evaluation of outputs) and :mod:`~cmdp.linear.numpy_ref` (the learner as a
numpy loop). Their public names are re-exported here.

What is the papers' and what is reconstruction. Liu, Yang & Vaswani ("Sample
Complexity Bounds for Linear Constrained MDPs with a Generative Model", ALT
2026) solve ``max_pi V_r^pi(mu0) s.t. V_c^pi(mu0) >= b`` for a linear CMDP
(``P(.|s,a) = phi(s,a)^T psi``, ``r = phi^T theta_r``, ``c = phi^T theta_c``)
with a model-based primal-dual framework built from three oracles: data
collection at a G-optimal (Kiefer-Wolfowitz) core set of features, an
unconstrained MDP solver (LS-MDVI of Kitamura et al. 2023, ICML, "Regularization
and variance-weighted regression achieves minimax optimality in linear MDPs")
and least-squares policy evaluation (LS-PE). They prove
O~(d^2 / ((1-gamma)^4 eps^2)) samples for relaxed feasibility and
O~(d^2 / ((1-gamma)^6 eps^2 zeta^2)) for strict feasibility, and (PMLR
version, v313 liu26b) a strict-setting lower bound
Omega(d^2 / ((1-gamma)^5 eps^2 zeta^2)).

Sources checked, and what they fixed here:

* Kitamura et al.'s own code, github.com/matsuolab/Variance-Weighted-MDVI,
  ``VWLS-MDVI/VWLS-MDVI-Experiment.ipynb`` (``wlsmdvi_G``, ``lsmdvi`` = WLS-MDVI
  with f = 1, ``compute_optimal_design``): the LS-MDVI update below, alpha =
  gamma, the greedy limit beta = inf (``w_k = max_a s_k``, greedy policy), the
  same number of samples at every core point with the design weights in the
  regression, a Frank-Wolfe G-optimal design. Read, not copied.
  matsuolab/Deep-Variance-Weighting-Maze (``experiments/run_generative.py``)
  sets the KL and entropy weights of its deep variant so that alpha = gamma too.
* Liu et al.: the PMLR abstract (proceedings.mlr.press/v313/liu26b.html) and two
  third-party summaries of arXiv 2507.02089 (sciencestack.ai/paper/2507.02089;
  the AI-written review at themoonlight.io/.../sample-complexity-bounds-for-
  linear-constrained-mdps-with-a-generative-model): Algorithm 1 collects N
  next-state samples at each core state-action pair once into a buffer B, the
  MDP solver and the policy evaluation both run on B, and the dual step is
  ``lambda_{k+1} = Proj_[0,U](lambda_k - eta (V_c^k(rho) - b'))``. Secondary
  sources; the paper's text (its LS-MDVI instantiation on B, U, b', eta, the
  perturbation, its hard instance) was not reachable, so those stay
  reconstructions (marked "(recon)"), following the primal-dual template of
  Vaswani, Yang & Szepesvari 2022 (arXiv 2206.06270) that
  :mod:`cmdp.average_reward` reconstructs too, with which this module shares
  the dual loop (:mod:`cmdp.primal_dual`), the tabular model
  and its exact evaluation (:mod:`cmdp.tabular`) and the LP ground truth
  (:func:`cmdp.lp.solve_discounted_cmdp`).

Values are unnormalized discounted values (in [0, 1/(1-gamma)]); ``eps`` and
``zeta`` are on that scale, as in the bounds. ``H = 1/(1-gamma)``.

Algorithm (one run; N = sample budget):

1. Design: a G-optimal design ``rho`` over the distinct feature vectors
   (Frank-Wolfe with away steps; the authors' code runs plain Frank-Wolfe to a
   1% tolerance and keeps the points that pass a support-elimination bound),
   core set ``C`` = its support (u points); ``n = ceil(N / u)`` next-state
   samples at each core point ``x = (s, a)`` (the same count everywhere, as the
   sources; on the designs of this project's instances, all uniform on their
   support, this equals ``ceil(rho_x N)``).
2. Least squares: the design-weighted regression of the per-point empirical
   next-state laws, ``M = G^{-1} sum_x rho_x phi_x counts_x / n`` with ``G =
   sum_x rho_x phi_x phi_x^T`` (d, S), so that for any ``v`` the regression of
   the sample means of ``v(s')`` is ``phi^T M v`` (the authors' regression with
   f = 1). (The rewards are known and exactly linear, so their regression
   returns ``theta_r``, ``theta_c``.) Every LS-MDVI and LS-PE step, for every
   lambda, reuses these data (Liu et al.'s buffer B, per the summaries; the
   authors' stand-alone LS-MDVI instead draws M fresh samples per core point in
   every one of its K iterations, K u M in all).
3. Perturbed reward (recon, as Vaswani et al.): ``theta_rp = theta_r + xi``,
   ``xi ~ U[0, omega]^d``, ``omega = eps (1-gamma) / 8``; for features on the
   simplex (all instances here) ``r_p - r`` lies in [0, omega].
4. Best responses on a dual grid of ``n_grid`` points of [0, U] (vmapped):
   ``pi_lambda`` = LS-MDVI for ``theta_rp + lambda theta_c``; its constraint
   value from mu0 estimated by LS-PE.
5. Projected dual descent, T steps, ``eta = U / sqrt(T)``, best response looked
   up at the nearest grid point, lambda itself kept continuous (Vaswani et
   al. round lambda to a grid; shared with the average-reward system).
   Output: the mixture of the grid policies weighted by their visit frequency
   (the uniform mixture of pi_0..pi_{T-1}).

LS-MDVI (checked against the authors' ``wlsmdvi_G``): ``theta_bar_0 = 0``,
``w_0 = w_{-1} = 0``; for k < K: ``v_k = clip(w_k - alpha w_{k-1}, 0, v_max)``
(the clip is ours, not in their code: a no-op on a stochastic model, it keeps
the fitted, possibly signed, model from blowing up), ``theta_bar_{k+1} = theta +
gamma M v_k + alpha theta_bar_k`` (their ``theta = theta_target + gamma theta``:
``s_{k+1} = phi^T theta_bar_{k+1} = q_{k+1} + alpha s_k``), ``w_{k+1}(s) =
max_a s_{k+1}(s, a)``; output the greedy policy ``argmax_a s_K`` (they score the
greedy policy of ``s_k``); ``alpha = gamma``. The general MDVI with a finite
``beta`` (``w = (1/beta) logsumexp(beta s)``, ``pi_K = softmax(beta s_K)``, within
``ln(A)/beta`` of greedy at the fixed point) is kept behind ``c_beta``: ``beta =
c_beta ln(A) / eps`` (``c_beta = 8`` is a softmax close to greedy; the
default ``C_BETA = inf`` is the authors' greedy limit). K = ``k_factor * H``
(recon; their experiments fix K = 100 or 1000 at H = 10).

LS-PE (recon): ``theta_{j+1} = theta_c + gamma M clip(Phi_pi theta_j, 0, H)``
for K steps (``Phi_pi[s] = sum_a pi(a|s) phi(s,a)``); estimate
``mu0 . clip(Phi_pi theta_K, 0, H)``.

Settings (recon, the constants chosen so that each error is a fixed fraction
of eps): relaxed ``U = 4 H / eps``, ``b' = b - eps/2``; strict ``U = 4 H /
zeta``, ``b' = b + eps zeta / (4 H)`` (lambda* <= H / zeta, so the tightening
costs at most eps / 4 in reward).
"""

from cmdp.linear.design import Design, core_counts, g_optimal_design, samples_per_core_point
from cmdp.linear.exact import evaluate_outputs, solve
from cmdp.linear.instances import (hard_instance, hypercube_instance, hypercube_reach,
                                    hypercube_reach_slope, random_instance)
from cmdp.linear.learner import (C_BETA, C_OMEGA, RELAX, TIGHTEN, U_RELAXED, U_STRICT, Constants,
                                 Instance, MDVIState, best_responses, constants, default_iters,
                                 fit_next_state_measure, ls_mdvi, ls_pe, make_instance, run_batch,
                                 run_one)
from cmdp.linear.model import LinearCMDP, from_tabular, make_linear_cmdp, validate, with_slater
from cmdp.linear.numpy_ref import run_one_numpy

__all__ = [
    "C_BETA", "C_OMEGA", "RELAX", "TIGHTEN", "U_RELAXED", "U_STRICT", "Constants", "Design",
    "Instance", "LinearCMDP", "MDVIState", "best_responses", "constants", "core_counts",
    "default_iters", "evaluate_outputs", "fit_next_state_measure", "from_tabular",
    "g_optimal_design", "hard_instance", "hypercube_instance", "hypercube_reach",
    "hypercube_reach_slope", "ls_mdvi", "ls_pe", "make_instance",
    "make_linear_cmdp", "random_instance", "run_batch", "run_one", "run_one_numpy",
    "samples_per_core_point", "solve", "validate", "with_slater",
]
