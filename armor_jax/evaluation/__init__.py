"""Evaluation of the project's models by the field's tools: lm-evaluation-harness tasks
(:mod:`armor_jax.evaluation.lm_backend`)."""
