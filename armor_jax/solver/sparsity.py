"""2:4 masks along the input dimension and their compressed storage.

A weight matrix is (d_out, d_in) and ``y = x @ W.T``; a 2:4 mask keeps exactly
2 of every 4 consecutive *input* columns in each row (the layout sparse tensor
cores use). Groups are the column slices ``[4g, 4g + 4)``.

Compressed format (:class:`Packed24`): per row the d_in / 2 kept values in
column order, and for each a 2-bit position inside its group, packed four to a
byte (little end first). For bf16 values that is 1.125 bytes per original
weight against 2 for the dense matrix.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

GROUP = 4
KEEP = 2
#: The C(4, 2) = 6 patterns of a group, as positions (lower first).
PAIRS = np.array(list(itertools.combinations(range(GROUP), KEEP)), np.int32)   # (6, 2)


def check_groupable(d_in: int) -> None:
  """Raises ValueError unless the input dimension splits into groups of 4."""
  if d_in % GROUP:
    raise ValueError(f"2:4 sparsity needs the input dimension to be a multiple of {GROUP}; "
                     f"got d_in={d_in}")


def grouped(x: jax.Array) -> jax.Array:
  """(..., d_in) -> (..., d_in / 4, 4)."""
  check_groupable(x.shape[-1])
  return x.reshape(x.shape[:-1] + (x.shape[-1] // GROUP, GROUP))


def mask_from_scores(score: jax.Array) -> jax.Array:
  """The 2:4 mask keeping the 2 largest scores of every group of 4 columns.

  Ties keep the lower column (a stable sort of the negated scores); NaN scores
  count as -inf. Pure and jittable.

  Args:
    score: (..., d_in) importance of each weight.

  Returns:
    (..., d_in) bool mask with exactly 2 True per group.
  """
  s = grouped(jnp.where(jnp.isnan(score), -jnp.inf, score))
  # rank[k] = how many entries of the group beat entry k (earlier index wins ties)
  beats = (s[..., None, :] > s[..., :, None]) | (
      (s[..., None, :] == s[..., :, None]) & (jnp.arange(GROUP)[None, :] < jnp.arange(GROUP)[:, None]))
  rank = jnp.sum(beats, axis=-1)
  return (rank < KEEP).reshape(score.shape)


def is_24(mask) -> bool:
  """Whether ``mask`` keeps exactly 2 of every 4 input columns in each row."""
  m = np.asarray(mask)
  if m.dtype != np.bool_ or m.shape[-1] % GROUP:
    return False
  return bool(np.all(m.reshape(m.shape[:-1] + (-1, GROUP)).sum(-1) == KEEP))


def validate_24(mask) -> None:
  """Raises ValueError naming the first offending group unless ``mask`` is 2:4."""
  m = np.asarray(mask)
  if m.dtype != np.bool_:
    raise ValueError(f"a 2:4 mask must be boolean, got {m.dtype}")
  check_groupable(m.shape[-1])
  counts = m.reshape(m.shape[:-1] + (-1, GROUP)).sum(-1)
  bad = np.argwhere(counts != KEEP)
  if bad.size:
    idx = tuple(int(i) for i in bad[0])
    raise ValueError(f"not a 2:4 mask: group {idx} (columns {GROUP * idx[-1]}..{GROUP * idx[-1] + 3}"
                     f" of row {idx[:-1]}) keeps {int(counts[idx])} of {GROUP}; "
                     f"{len(bad)} bad group(s) in all")


class Packed24(struct.PyTreeNode):
  """A 2:4-sparse (d_out, d_in) matrix in compressed form.

  Attributes:
    values: (d_out, d_in / 2) kept values in column order (any float dtype).
    meta: (d_out, ceil(d_in / 8)) uint8, the 2-bit in-group positions of the
      kept values, four per byte, the first in the lowest bits.
    d_in: the dense input dimension (static).
  """
  values: jax.Array
  meta: jax.Array
  d_in: int = struct.field(pytree_node=False)

  @property
  def shape(self) -> tuple[int, int]:
    return (self.values.shape[0], self.d_in)

  def nbytes(self) -> int:
    return int(self.values.size * self.values.dtype.itemsize + self.meta.size)


def positions(mask: jax.Array) -> jax.Array:
  """(..., d_in) 2:4 mask -> (..., d_in / 2) int32 in-group positions of the kept entries."""
  g = grouped(mask)
  first = jnp.argmax(g, axis=-1)
  second = GROUP - 1 - jnp.argmax(g[..., ::-1], axis=-1)
  return jnp.stack([first, second], -1).reshape(mask.shape[:-1] + (-1,)).astype(jnp.int32)


def pack(dense: jax.Array, mask: jax.Array) -> Packed24:
  """Compresses ``dense * mask`` (a 2:4 mask; not checked here, see validate_24)."""
  d_out, d_in = dense.shape
  pos = positions(mask)                                         # (d_out, d_in/2)
  cols = pos + GROUP * (jnp.arange(pos.shape[-1]) // KEEP)
  values = jnp.take_along_axis(dense, cols, axis=-1)
  pad = (-pos.shape[-1]) % 4
  p = jnp.pad(pos, ((0, 0), (0, pad))).reshape(d_out, -1, 4).astype(jnp.uint8)
  meta = p[..., 0] | (p[..., 1] << 2) | (p[..., 2] << 4) | (p[..., 3] << 6)
  return Packed24(values=values, meta=meta, d_in=d_in)


def unpack_positions(packed: Packed24) -> jax.Array:
  """(d_out, d_in / 2) int32 in-group positions stored in ``packed.meta``."""
  m = packed.meta[..., None] >> jnp.array([0, 2, 4, 6], jnp.uint8)
  pos = (m & 3).reshape(packed.meta.shape[0], -1)
  return pos[:, :packed.d_in // KEEP].astype(jnp.int32)


def unpack(packed: Packed24) -> tuple[jax.Array, jax.Array]:
  """The dense (d_out, d_in) matrix and its bool mask; exact inverse of :func:`pack`."""
  pos = unpack_positions(packed)
  d_out = packed.values.shape[0]
  n_groups = packed.d_in // GROUP
  onehot = jax.nn.one_hot(pos.reshape(d_out, n_groups, KEEP), GROUP, dtype=jnp.bool_)
  vals = packed.values.reshape(d_out, n_groups, KEEP)
  dense = jnp.sum(jnp.where(onehot, vals[..., None], jnp.zeros((), vals.dtype)), axis=-2)
  mask = jnp.any(onehot, axis=-2)
  return dense.reshape(d_out, packed.d_in).astype(packed.values.dtype), mask.reshape(d_out, -1)
