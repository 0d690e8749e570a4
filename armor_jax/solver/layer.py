"""The pruned layer every method returns, the normalization and the proxy loss.

A pruned (d_out, d_in) layer is stored as

    W_hat = diag(row_scale) . A . S . B . diag(col_scale)

with S a 2:4-sparse core (compressed, :class:`~armor_jax.solver.sparsity.Packed24`)
and A, B block-diagonal wrappers (None for the baselines, which have none).
It reconstructs the dense weight (:meth:`PrunedLayer.dense`) and applies to
activations without forming W_hat (:meth:`PrunedLayer.apply`: scale, B, the
sparse core, A, scale).

Normalization (NoWag, and ARMOR's proxy): column norms ``r1_j = ||W[:, j]||``,
``W1 = W / r1``, then row norms ``r2_i = ||W1[i, :]||``,
``W_bar = W1 / r2[:, None]``, so ``W = diag(r2) W_bar diag(r1)``. A zero
column or row keeps scale 1 (the authors add eps = 1e-5 to every norm, which
is not scale invariant; guarding zeros is). Norms are computed with a max
rescaling so huge or tiny weights neither overflow nor underflow.

Proxy loss (normalized): ``sum_ij (W_bar - A S B)_ij^2 h_j / sum_ij W_bar_ij^2 h_j``
with ``h_j = mean x_j^2``: 1 for the all-zero core, 0 for a perfect one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from armor_jax.solver import blockdiag, sparsity

_HI = jax.lax.Precision.HIGHEST


def compute_dtype(x) -> jnp.dtype:
  """float32, or float64 when ``x`` is float64 (jax_enable_x64 on)."""
  return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def safe_norm(x: jax.Array, axis: int) -> jax.Array:
  """Euclidean norm along ``axis`` without overflow/underflow; 0 for an all-zero slice."""
  m = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
  scaled = x / jnp.where(m > 0, m, 1)
  return jnp.squeeze(m, axis) * jnp.sqrt(jnp.sum(scaled * scaled, axis=axis))


def normalize(w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(W_bar, row_scale r2, col_scale r1) with W = diag(r2) W_bar diag(r1)."""
  w = w.astype(compute_dtype(w))
  r1 = safe_norm(w, 0)
  r1 = jnp.where(r1 > 0, r1, 1)
  w1 = w / r1
  r2 = safe_norm(w1, 1)
  r2 = jnp.where(r2 > 0, r2, 1)
  return w1 / r2[:, None], r2, r1


def weighted_sq(r: jax.Array, h: jax.Array) -> jax.Array:
  """sum_ij r_ij^2 h_j."""
  return jnp.sum(jnp.sum(r * r, axis=0) * h)


def proxy_loss(w_bar: jax.Array, h: jax.Array, w_hat_bar: jax.Array) -> jax.Array:
  """Normalized proxy loss of an approximation ``w_hat_bar`` of ``w_bar`` (see module doc)."""
  zero = weighted_sq(w_bar, h)
  return weighted_sq(w_bar - w_hat_bar, h) / jnp.where(zero > 0, zero, 1)


class PrunedLayer(struct.PyTreeNode):
  """A pruned linear layer (see module docstring).

  Attributes:
    core: the 2:4 core S in compressed form.
    row_scale: (d_out,) float.
    col_scale: (d_in,) float.
    a: (d_out / b_a, b_a, b_a) blocks of A, or None (identity).
    b: (d_in / b_b, b_b, b_b) blocks of B, or None (identity).
    method: name of the method that produced it (static).
  """
  core: sparsity.Packed24
  row_scale: jax.Array
  col_scale: jax.Array
  a: jax.Array | None = None
  b: jax.Array | None = None
  method: str = struct.field(pytree_node=False, default="")

  @property
  def shape(self) -> tuple[int, int]:
    return self.core.shape

  def core_dense(self) -> tuple[jax.Array, jax.Array]:
    """(S, mask): the dense core and its 2:4 mask."""
    return sparsity.unpack(self.core)

  def normalized(self) -> jax.Array:
    """A S B: the approximation of W_bar (the scales left out)."""
    s, _ = self.core_dense()
    s = s.astype(self.row_scale.dtype)
    if self.b is not None:
      s = blockdiag.right(s, self.b)
    if self.a is not None:
      s = blockdiag.left(self.a, s)
    return s

  def dense(self) -> jax.Array:
    """The reconstructed (d_out, d_in) weight W_hat."""
    return self.row_scale[:, None] * self.normalized() * self.col_scale[None, :]

  def apply(self, x: jax.Array) -> jax.Array:
    """``x @ W_hat.T`` for x of shape (..., d_in), without forming W_hat."""
    s, _ = self.core_dense()
    z = x.astype(self.col_scale.dtype) * self.col_scale
    if self.b is not None:
      z = blockdiag.right(z, jnp.swapaxes(self.b, 1, 2))       # z B^T
    z = jnp.einsum("...i,oi->...o", z, s.astype(z.dtype), precision=_HI)
    if self.a is not None:
      z = blockdiag.right(z, jnp.swapaxes(self.a, 1, 2))       # z A^T
    return z * self.row_scale

  def mask(self) -> jax.Array:
    return self.core_dense()[1]

  def wrapper_params(self) -> int:
    """Parameters of the wrappers A and B (0 for a baseline)."""
    return sum(int(m.size) for m in (self.a, self.b) if m is not None)

  def overhead(self) -> float:
    """Wrapper parameters relative to the dense layer: about b (d_in + d_out) / (d_in d_out)."""
    d_out, d_in = self.shape
    return self.wrapper_params() / (d_out * d_in)


def from_mask(w: jax.Array, mask: jax.Array, method: str, normalized: bool = False) -> PrunedLayer:
  """A wrapper-free layer keeping ``w`` on ``mask`` (in normalized form if ``normalized``)."""
  dt = compute_dtype(w)
  w = w.astype(dt)
  if normalized:
    w_bar, r2, r1 = normalize(w)
    return PrunedLayer(sparsity.pack(w_bar, mask), r2, r1, method=method)
  ones_out, ones_in = jnp.ones(w.shape[0], dt), jnp.ones(w.shape[1], dt)
  return PrunedLayer(sparsity.pack(w, mask), ones_out, ones_in, method=method)


@jax.jit
def errors(layer: PrunedLayer, w: jax.Array, h: jax.Array,
           second_moment: jax.Array | None = None) -> dict[str, jax.Array]:
  """The layer's proxy loss and, given ``second_moment``, the numerator and denominator of
  its output error (see :func:`report`), as one compiled program per shape."""
  w = w.astype(compute_dtype(w))
  w_bar, r2, r1 = normalize(w)
  w_hat = layer.dense()
  # the layer's own scales may differ (baselines keep W unnormalized): map W_hat to W_bar space
  out = {"proxy_loss": proxy_loss(w_bar, h, w_hat / r2[:, None] / r1[None, :])}
  if second_moment is not None:
    delta = w - w_hat
    out["num"] = jnp.sum(delta * jnp.matmul(delta, second_moment, precision=_HI))
    out["den"] = jnp.sum(w * jnp.matmul(w, second_moment, precision=_HI))
  return out


def report(layer: PrunedLayer, w: jax.Array, h: jax.Array,
           second_moment: jax.Array | None = None, x_eval: jax.Array | None = None) -> dict:
  """The numbers every method reports for a layer.

  Args:
    layer: the pruned layer.
    w: (d_out, d_in) the dense weight.
    h: (d_in,) mean squared calibration activations.
    second_moment: (d_in, d_in) mean x x^T of the calibration inputs, for the
      output error on calibration data.
    x_eval: (n, d_in) held-out inputs, for the output error on them.

  Returns:
    dict with ``proxy_loss`` (normalized, in W_bar space), ``output_error``
    (relative, ``E||x (W - W_hat)^T||^2 / E||x W^T||^2`` on calibration data),
    ``output_error_eval`` (the same on ``x_eval``), ``overhead``.
  """
  return summary(layer, errors(layer, w, h, second_moment), w, x_eval)


def summary(layer: PrunedLayer, errs: dict, w: jax.Array, x_eval: jax.Array | None = None
            ) -> dict:
  """:func:`report`'s numbers from :func:`errors`' arrays (and ``x_eval``)."""
  out = {"proxy_loss": float(errs["proxy_loss"]), "overhead": layer.overhead()}
  if "num" in errs:
    out["output_error"] = (float(errs["num"] / errs["den"]) if float(errs["den"]) > 0
                           else 0.0)
  if x_eval is not None:
    w = w.astype(compute_dtype(w))
    x_eval = x_eval.astype(w.dtype)
    y = jnp.matmul(x_eval, w.T, precision=_HI)
    y_hat = layer.apply(x_eval)
    den = float(jnp.sum(y * y))
    out["output_error_eval"] = float(jnp.sum((y - y_hat) ** 2)) / den if den > 0 else 0.0
  return out
