"""The layer solver: one weight matrix and its calibration statistics in, a 2:4 layer out.

:mod:`~armor_jax.solver.calibration` (statistics of a layer's inputs),
:mod:`~armor_jax.solver.sparsity` (2:4 masks and packing),
:mod:`~armor_jax.solver.baselines` (magnitude, Wanda, SparseGPT, NoWag-P),
:mod:`~armor_jax.solver.armor` (ARMOR, arXiv 2510.05528),
:mod:`~armor_jax.solver.blockdiag` (block-diagonal wrappers),
:mod:`~armor_jax.solver.layer` (the pruned layer, its normalization and proxy loss),
:mod:`~armor_jax.solver.synthetic` (layers and inputs with trained-LLM statistics).
"""
