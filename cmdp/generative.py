"""The generative model: N next-state samples per (s, a) and the empirical model.

Pure functions of explicit PRNG keys; they work on one model and are vmapped
over seeds and N by the callers. :func:`sample_next_states` draws the samples
themselves (for small N and for tests); :func:`empirical_model` draws their
counts directly from the multinomial law of N i.i.d. draws, which is the same
distribution of ``P_hat`` at a cost independent of N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sample_next_states(key: jax.Array, P: jax.Array, n: int) -> jax.Array:
  """(n, S, A) int32 i.i.d. next states ``s' ~ P(. | s, a)`` for every (s, a).

  Args:
    key: PRNG key.
    P: (S, A, S) transition probabilities.
    n: samples per (s, a) (static).
  """
  logits = jnp.log(jnp.clip(P, 0.0, None))
  return jax.random.categorical(key, logits, axis=-1, shape=(n,) + P.shape[:2]).astype(jnp.int32)


def counts_from_samples(samples: jax.Array, n_states: int) -> jax.Array:
  """(n, S, A) next-state samples -> (S, A, S) counts."""
  return jax.nn.one_hot(samples, n_states, dtype=jnp.float32).sum(0)


def empirical_model(key: jax.Array, P: jax.Array, n) -> jax.Array:
  """P_hat (S, A, S): empirical next-state frequencies of ``n`` samples per (s, a).

  ``n`` may be traced (vmap over a grid of N). The counts are one multinomial
  draw per (s, a), exactly the law of the counts of ``n`` i.i.d. samples; a
  non-integer ``n`` is rounded down (each row is divided by its own count, so
  P_hat is always stochastic).
  """
  p = jnp.clip(P, 0.0, None)
  p = p / p.sum(-1, keepdims=True)
  counts = jax.random.multinomial(key, jnp.floor(jnp.asarray(n, p.dtype)), p, dtype=p.dtype)
  return counts / counts.sum(-1, keepdims=True)


def empirical_model_numpy(rng: np.random.Generator, P: np.ndarray, n: int) -> np.ndarray:
  """numpy reference of :func:`empirical_model` (used by the numpy baseline)."""
  S, A, _ = P.shape
  p = np.clip(P, 0, None)
  p = p / p.sum(-1, keepdims=True)
  return rng.multinomial(n, p.reshape(S * A, S)).reshape(S, A, S) / n
