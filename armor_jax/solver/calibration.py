"""Calibration statistics of a linear layer's inputs, accumulated over batches.

For inputs x in R^{d_in} (tokens of calibration text reaching the layer):

* ``h_j = mean x_j^2``, the diagonal that ARMOR, NoWag and Wanda use;
* ``XtX = sum x x^T`` (optional), the full second moment SparseGPT needs
  (its Hessian is ``2 XtX / n``).

Batches stream in: ``stats = init(d_in, full=True)``, then
``stats = accumulate(stats, x)`` per batch of any leading shape, float32
accumulation whatever the input dtype; ``finite_or_raise`` is the host-side
check that rejects NaN/Inf activations with a clear message (a jitted
accumulate cannot raise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class Stats(struct.PyTreeNode):
  """Running sums over calibration tokens.

  Attributes:
    count: () float32 number of tokens seen.
    sum_sq: (d_in,) float32 sum of x_j^2.
    xtx: (d_in, d_in) float32 sum of x x^T, or None when not tracked.
  """
  count: jax.Array
  sum_sq: jax.Array
  xtx: jax.Array | None = None

  @property
  def h(self) -> jax.Array:
    """(d_in,) mean squared activation per input channel."""
    return self.sum_sq / jnp.maximum(self.count, 1.0)

  @property
  def second_moment(self) -> jax.Array:
    """(d_in, d_in) mean of x x^T (needs full=True)."""
    if self.xtx is None:
      raise ValueError("these statistics were accumulated without the full X^T X (full=False)")
    return self.xtx / jnp.maximum(self.count, 1.0)


def init(d_in: int, full: bool = False) -> Stats:
  """Empty statistics for a d_in-input layer; ``full`` also tracks X^T X."""
  return Stats(count=jnp.zeros((), jnp.float32), sum_sq=jnp.zeros((d_in,), jnp.float32),
               xtx=jnp.zeros((d_in, d_in), jnp.float32) if full else None)


@jax.jit
def accumulate(stats: Stats, x: jax.Array) -> Stats:
  """Adds a batch ``x`` of shape (..., d_in) (any float dtype) to ``stats``."""
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  xtx = None if stats.xtx is None else stats.xtx + jnp.einsum(
      "ni,nj->ij", x, x, precision=jax.lax.Precision.HIGHEST)
  return Stats(count=stats.count + x.shape[0], sum_sq=stats.sum_sq + jnp.sum(x * x, axis=0),
               xtx=xtx)


def finite_or_raise(x, name: str = "activations") -> None:
  """Raises ValueError if ``x`` holds NaN or Inf, saying how many and where the first is."""
  bad = ~np.isfinite(np.asarray(jnp.asarray(x, jnp.float32)))
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name} contain {int(bad.sum())} NaN/Inf value(s) (first at index {first}); "
                     "calibration statistics need finite inputs")


def from_activations(x, full: bool = False, batch: int = 4096) -> Stats:
  """Statistics of a whole activation array (n, d_in), streamed in batches of ``batch`` rows."""
  x = jnp.asarray(x)
  x = x.reshape(-1, x.shape[-1])
  finite_or_raise(x)
  stats = init(x.shape[-1], full)
  for start in range(0, x.shape[0], batch):
    stats = accumulate(stats, x[start:start + batch])
  return stats
