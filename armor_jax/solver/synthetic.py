"""Random layers with the statistics of trained LLM layers, for tests and benchmarks.

Real projections have a power-law singular spectrum, a few rows/columns of
much larger norm, and inputs whose channels are correlated and whose
per-channel scales are heavy tailed (a handful of "massive activation"
channels). :func:`layer_and_inputs` draws such a (W, X) pair:

* W = U diag(s) V^T with s_k = k^-alpha, U, V Haar-random, then rows and
  columns scaled by log-normal factors;
* X = Z L^T diag(c), Z standard normal, L a random factor with a decaying
  spectrum (channel correlations), c log-normal channel scales with a few
  outliers ``outlier_scale`` times larger.

Used when a real checkpoint is not at hand; the layer tests also run on real
SmolLM2 layers when that model is installed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _haar(key, n, k):
  q, r = jnp.linalg.qr(jax.random.normal(key, (n, k)))
  return q * jnp.sign(jnp.diagonal(r))


def layer_and_inputs(key: jax.Array, d_out: int, d_in: int, n_tokens: int, alpha: float = 0.6,
                     row_sigma: float = 0.3, channel_sigma: float = 0.8, n_outliers: int = 4,
                     outlier_scale: float = 20.0) -> tuple[jax.Array, jax.Array]:
  """A (d_out, d_in) weight and (n_tokens, d_in) inputs, float32 (see module docstring)."""
  ks = jax.random.split(key, 8)
  r = min(d_out, d_in)
  s = jnp.arange(1, r + 1, dtype=jnp.float32) ** -alpha
  w = (_haar(ks[0], d_out, r) * s) @ _haar(ks[1], d_in, r).T
  w = w * jnp.exp(row_sigma * jax.random.normal(ks[2], (d_out, 1)))
  w = w * jnp.exp(row_sigma * jax.random.normal(ks[3], (1, d_in)))
  w = w / jnp.sqrt(jnp.mean(w * w)) * 0.02
  spec = jnp.arange(1, d_in + 1, dtype=jnp.float32) ** -0.5
  mix = _haar(ks[4], d_in, d_in) * spec
  c = jnp.exp(channel_sigma * jax.random.normal(ks[5], (d_in,)))
  out = jax.random.choice(ks[6], d_in, (n_outliers,), replace=False)
  c = c.at[out].multiply(outlier_scale)
  x = (jax.random.normal(ks[7], (n_tokens, d_in)) @ mix.T) * c
  return w, x
