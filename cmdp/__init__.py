"""Constrained MDPs under a generative model.

Shared by every CMDP system (average-reward and linear/discounted):

* :mod:`cmdp.tabular`: the tabular CMDP pytree, its validation, exact float64
  evaluation (gain, bias, span; multichain and periodic chains), mixtures.
* :mod:`cmdp.lp`: occupancy-measure LPs (scipy HiGHS), the exact ground truth:
  optimal constrained gain, an optimal policy, lambda*, the Slater constant.
* :mod:`cmdp.generative`: N next-state samples per (s, a) and the empirical model.
* :mod:`cmdp.instances`: hard instances (tunable S, A, H, B, zeta) and random ones.
* :mod:`cmdp.primal_dual`: the dual loop both learners share (a grid of Lagrangian best
  responses, projected dual subgradient steps, the output mixture) and a batch's per-run
  settings (:class:`cmdp.primal_dual.Runs`).

Average-reward specifics: :mod:`cmdp.average_reward` (arXiv 2509.16586, reconstructed).
Linear (discounted) CMDPs: :mod:`cmdp.linear` (arXiv 2507.02089, reconstructed), a package
with the same rooms: model (``P = phi psi``), instances, design (the G-optimal design and its
core-set samples), learner (LS-MDVI and LS-PE at the core set), exact, numpy_ref;
the discounted occupancy LP and exact discounted evaluation live in :mod:`cmdp.lp` and
:mod:`cmdp.tabular`.
"""
