"""Pallas kernels for 2:4-sparse and ARMOR linears at inference, with plain-JAX references.

Public functions (one entry point per product, the same on every backend):

* :func:`sparse24_matmul` ``(x, w)``: ``x @ S.T`` for a compressed 2:4 matrix
  :class:`~armor_jax.solver.sparsity.Packed24`.
* :func:`blockdiag_matmul` ``(x, blocks)``: ``((x * in_scale) @ D.T) * out_scale``
  for a block-diagonal ``D`` stored as its ``(d / b, b, b)`` blocks.
* :func:`armor_linear` ``(x, layer)``: ``x @ W_hat.T`` for a
  :class:`~armor_jax.solver.layer.PrunedLayer`, ``W_hat = diag(r) A S B diag(c)``,
  without forming ``W_hat``; :func:`prepare` turns a layer into the
  kernel-ready :class:`ArmorWeights` once, at load time.

Each takes ``impl``: ``"pallas"`` (the Pallas kernel, compiled for the GPU
through the Triton backend), ``"interpret"`` (the same kernel run by Pallas's
interpreter: any backend, slow, how the tests check it on CPU), ``"mosaic"`` /
``"mosaic_interpret"`` (the Mosaic GPU kernels of :mod:`armor_jax.kernels_mgpu`,
compiled for Hopper or in GPU interpret mode with race detection), ``"reference"``
(plain JAX: unpack, einsum) or ``"auto"`` (on a Hopper GPU ``mosaic`` for decode, up to
:data:`MOSAIC_MAX_ROWS` rows, and ``reference`` above; ``pallas`` on other GPUs;
``reference`` elsewhere; :func:`resolve_impl`). All of them compute in the dtype of the
weights' values (bf16 or fp16; f32 works too) with f32 accumulation, and return
``x.dtype``.

Byte floor (why this can win at all)
------------------------------------
A dense bf16 ``(N, K)`` weight is 2 bytes per weight. The 2:4 core stores half
the values (1 byte per original weight) and a 2-bit in-group position per kept
value (0.125 byte per weight): 1.125 bytes, 56 %. Decode (batch 1 to 16) reads
each weight once and does 2 to 32 flops per weight, far below the H100's
ridge point (~300 flops per byte), so it is bound by weight bytes and the
ceiling is 2 / 1.125 = 1.78x over dense. ARMOR adds its wrappers: A and B as
bf16 ``(d / b, b, b)`` blocks are ``2 b (N + K)`` bytes, the f32 scales
``4 (N + K)``; per weight that is 0.125 byte at ``N = K = 4096, b = 128``
(1.25 bytes, ceiling 1.60x), 0.08 at 4096 x 14336 (1.66x), 0.03 at b = 32
(1.73x): about 1.64x for typical shapes.
:func:`bytes_moved` counts these floors; the benchmark divides by a measured
copy bandwidth. Prefill (batch >= ~300 on H100) is compute bound: there is no
2:4 MMA on Hopper in Pallas, so the expanded tile goes through a dense MMA and
the best case is parity with dense (the expansion costs ALU time on top).

Layout
------
The kernels read :class:`~armor_jax.solver.sparsity.Packed24` as it is stored (no
second layout): ``values`` (N, K/2) in column order, ``meta`` (N, K/8) uint8,
byte ``r`` of a row holding the positions of kept values ``4r .. 4r+3``
(groups ``2r`` and ``2r+1``) in bits 0-1, 2-3, 4-5, 6-7. A (bn, w) tile of S is
expanded on chip without gathers, using only the ops Triton has:

* the kept pairs of each group: ``values`` tile (bn, w/2) -> (bn, w/4, 2) ->
  ``v0, v1`` (Triton ``split``);
* their positions: ``p0 = interleave(m & 3, m >> 4 & 3)``,
  ``p1 = interleave(m >> 2 & 3, m >> 6 & 3)`` with ``m`` the (bn, w/8) meta
  tile (Triton ``join`` + reshape, register-local);
* slot ``j`` of each group: ``where(p0 == j, v0, where(p1 == j, v1, 0))``, and
  the four slots interleaved back to (bn, w).

That is about 5 integer/select ops per dense weight, independent of the batch
(a whole (bm, bn) output tile reuses the expanded tile), then a dense
``dot(x_tile, W_tile.T)`` with f32 accumulation (tensor cores via Triton's
``tt.dot``; wgmma on Hopper if Triton picks it). Because the meta byte spans
8 columns, the tile width ``bk`` is a power of two >= 16.

Tiling and grid
---------------
Grid ``(M / bm, N / bn, split_k)``; program ``(i, j, s)`` owns output tile
``(i, j)`` and the K range ``s`` and loops over it in steps of ``bk``
(``lax.fori_loop``; Triton software-pipelines the loads over ``num_stages``).
Triton needs every tensor dimension a power of two and dot dimensions >= 16,
so ``bm >= 16``: decode batches (1 to 16) run in one 16-row tile whose
missing rows are masked on load and store, costing no bytes and idle MMA lanes
only (decode is not MMA bound). Defaults (:func:`default_tiles`):

* decode (M <= 16): ``bm = 16, bk = 512`` and ``bn`` the largest of 64, 32,
  16 that still gives >= 256 programs (~2 per H100 SM): 16 for N = 4096, 32
  for N = 14336. A program streams ``bn x bk`` weights per step (bn = 16:
  16 x 512 x 1.125 = 9 KB; three stages in flight and two programs per SM
  give ~55 KB per SM, above the ~20 KB that Little's law asks of HBM3). Skinny tiles beat split-K
  here because split partials cost an extra reduction launch.
* 16 < M <= 256: ``bm = 64, bn = 128, bk = 64``; M > 256: ``bm = bn = 128,
  bk = 64``, 8 warps (the usual Triton GEMM shapes; bn ~ 2 bm balances the
  re-reads of x, N / bn times, against those of S, M / bm times, from L2).
* ``split_k`` doubles while the grid has < 128 programs (M <= 256 only):
  f32 partials ``(split_k, M, N)`` summed by XLA, deterministic, no atomics.
  ARMOR's fused A forces ``bn = b_A`` (128: only 32 row tiles at N = 4096,
  hence split 4).

ARMOR. ``y = ((((x * c) @ B.T) @ S.T) @ A.T) * r``. The A stage is an
epilogue of the sparse kernel: with ``bn = b_A`` a program's f32 tile ``u``
becomes ``(u @ A_j.T) * r_j`` before the store (split partials too: the stage is
linear), so A and S are each read once from HBM (A's blocks once more from L2
per extra K split). The B stage needs all of a K range of
``x``, which every row tile ``j`` would recompute; by default it runs first as
:func:`blockdiag_matmul` (one more launch, B read once, ``x`` and ``z`` are
M x K, tiny at decode), with ``c`` folded into it. ``fuse_b=True`` computes
``z`` inside the sparse kernel instead (one launch, but B re-read from L2 by
each of the N / bn row tiles: 32 MB of L2 reads for a 4096 x 4096 layer at
b = 128); which wins is a measurement. Blocks that are not a power of two in
[16, 256] (e.g. 96 for a 576-wide model) fall back to XLA einsums for that
wrapper (still correct, one more launch each).

Ragged shapes. K and N are padded with zero weights to multiples of the tiles
(exact: a zero value contributes nothing whatever its position bits), M is
masked. For a layer :func:`prepare` does the padding once; a bare
:class:`Packed24` whose N or K is not a multiple of 16 is padded on every
call (a copy of the weights: correct but slow).

What needs a GPU to verify (nothing here was run on one)
---------------------------------------------------------
The tests run every kernel under ``interpret=True`` on CPU against the plain
JAX path and a float64 NumPy reference. They also lower every kernel for CUDA
on CPU (:func:`armor_jax.kernel_ir.lower_for_cuda`, through ``jax.jit`` and
``jax.export``) at the benchmark shapes and at every tile configuration
:func:`default_tiles` can pick, and pin from the Triton IR what the design
relies on: 16-bit dot inputs with f32 accumulation, no f32 upcast on the path
of a weight operand, the tile and dot shapes, the warps and stages
(tests/test_kernel_ir.py). Not checked: Triton's compilation of that IR to
PTX, run-time correctness on the device, and all performance: whether the
defaults are the fastest tiles, whether the expansion stays register-local,
whether split-K's extra reduction and the B pre-pass launch eat the decode
gain, and whether Triton uses wgmma. Also unchecked: that Triton drops the
dead masked load that Pallas emits before each masked store
(``pltriton.store`` lowers as a swap). JAX 0.11 deprecates the Triton backend
of Pallas (Mosaic GPU is its successor); the kernels pass
``pltriton.CompilerParams`` explicitly so they keep selecting it while it
exists.

On a GPU machine: ``python -m pytest tests/test_kernels.py`` runs the compiled
kernels (``impl="pallas"``) against the references, and ``python -m
experiments.main experiment=bench_kernels key=value ...`` runs the benchmark (with or
without Hydra installed; without it, as a single run through the same harness); it
checks each kernel against the XLA path before timing it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from armor_jax.solver import sparsity
from armor_jax.solver.layer import PrunedLayer

Impl = Literal["auto", "pallas", "interpret", "reference", "mosaic", "mosaic_interpret"]
IMPLS = ("auto", "pallas", "interpret", "reference", "mosaic", "mosaic_interpret")
#: The Mosaic GPU (Hopper) kernels of :mod:`armor_jax.kernels_mgpu`: compiled, and in GPU
#: interpret mode with race detection.
MOSAIC_IMPLS = ("mosaic", "mosaic_interpret")

#: Smallest tile dimension a Triton dot accepts.
MIN_DOT = 16
#: Largest block of A or B the kernels fuse (a (b, b) tile in registers/smem).
MAX_FUSED_BLOCK = 256
#: Programs the decode grid aims for (about two per H100 SM).
TARGET_PROGRAMS = 256


# --------------------------------------------------------------------------------------------
# Tiles


@dataclasses.dataclass(frozen=True)
class Tiles:
  """Tile sizes and launch settings of the sparse kernel.

  Attributes:
    bm: rows of x per program (power of two >= 16; rows beyond M are masked).
    bn: output columns (rows of S) per program (power of two >= 16).
    bk: dense input columns expanded per loop step (power of two >= 16).
    split_k: number of K ranges computed by separate programs (power of two);
      > 1 gives f32 partials summed afterwards.
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth of the K loop.
    fuse_b: compute ARMOR's ``z = (x * c) @ B.T`` inside the sparse kernel
      instead of a separate block-diagonal pass (see module docstring).
  """
  bm: int = 16
  bn: int = 64
  bk: int = 256
  split_k: int = 1
  num_warps: int = 4
  num_stages: int = 3
  fuse_b: bool = False

  def check(self) -> None:
    for name in ("bm", "bn", "bk", "split_k"):
      v = getattr(self, name)
      if v < 1 or v & (v - 1):
        raise ValueError(f"Tiles.{name}={v} must be a power of two")
    for name in ("bm", "bn", "bk"):
      if getattr(self, name) < MIN_DOT:
        raise ValueError(f"Tiles.{name}={getattr(self, name)} must be >= {MIN_DOT} (Triton dot)")


def _pow2_floor(v: int) -> int:
  return 1 << (max(int(v), 1).bit_length() - 1)


def _largest_pow2_divisor(v: int, cap: int) -> int:
  """Largest power of two <= cap dividing v (1 if v is odd)."""
  return min(v & -v, _pow2_floor(cap)) if v else _pow2_floor(cap)


def default_tiles(m: int, n: int, k: int, *, block_a: int | None = None,
                  fuse_b: bool = False) -> Tiles:
  """Tile heuristic for an (m, k) x (n, k)^T product (see module docstring).

  Args:
    m: batch rows.
    n: output columns (rows of S), after padding to a multiple of 16.
    k: input columns, after padding to a multiple of 16.
    block_a: ARMOR's A block when its stage is fused (then ``bn = block_a``).
    fuse_b: recorded in the result.

  Returns:
    :class:`Tiles` with every dimension dividing the (padded) problem.
  """
  decode = m <= MIN_DOT
  if decode:
    # weight streaming: skinny row tiles, as many as it takes to fill the machine
    bm, bk = MIN_DOT, _largest_pow2_divisor(k, 512)
    bn = block_a or next((c for c in (64, 32) if n % c == 0 and n // c >= TARGET_PROGRAMS),
                         _largest_pow2_divisor(n, MIN_DOT))
  else:
    # GEMM-like: bn ~ 2 bm balances re-reads of x (N / bn times) and of S (M / bm times)
    bm = 64 if m <= 256 else 128
    bk = _largest_pow2_divisor(k, 64)
    bn = block_a or _largest_pow2_divisor(n, 128)
  split = 1
  if m <= 256:
    # split K while the grid has fewer than TARGET_PROGRAMS / 2 programs (f32 partials)
    tiles_mn = -(-m // bm) * (n // bn)
    while tiles_mn * split < TARGET_PROGRAMS // 2:
      if (k // bk) % (2 * split) == 0:
        split *= 2
      elif decode and bk > 128:
        bk //= 2                              # shorter steps, so that K splits evenly
      else:
        break
  return Tiles(bm=bm, bn=bn, bk=bk, split_k=split, num_warps=4 if bm * bn <= 64 * 128 else 8,
               num_stages=3, fuse_b=fuse_b)


def _round_up(v: int, mult: int) -> int:
  return -(-v // mult) * mult


def _fusable(block: int | None) -> bool:
  """Whether a wrapper block size can be a Triton tile (power of two in [16, 256])."""
  return block is not None and MIN_DOT <= block <= MAX_FUSED_BLOCK and not block & (block - 1)


# --------------------------------------------------------------------------------------------
# Weights


class ArmorWeights(struct.PyTreeNode):
  """A pruned layer in kernel-ready form (made once by :func:`prepare`).

  Attributes:
    core: the 2:4 core, values in the compute dtype, K padded to a multiple of
      16 and N to a multiple of 16 (zero weights); or, for ``impl="mosaic"`` only,
      its :class:`~armor_jax.kernels_mgpu.MgpuPacked` form
      (:func:`armor_jax.kernels_mgpu.prepare_armor`).
    col_scale: (K_pad,) f32 column scale c, or None (all ones).
    row_scale: (N_pad,) f32 row scale r, or None (all ones).
    a: (N / b_A, b_A, b_A) blocks of A in the compute dtype, or None.
    b: (K / b_B, b_B, b_B) blocks of B in the compute dtype, or None.
    d_out: true output dimension (static).
    d_in: true input dimension (static).
  """
  core: sparsity.Packed24
  col_scale: jax.Array | None = None
  row_scale: jax.Array | None = None
  a: jax.Array | None = None
  b: jax.Array | None = None
  d_out: int = struct.field(pytree_node=False, default=0)
  d_in: int = struct.field(pytree_node=False, default=0)

  @property
  def dtype(self):
    core = self.core       # Packed24, or the Mosaic GPU kernels' prepared form
    return core.values.dtype if isinstance(core, sparsity.Packed24) else jnp.dtype(core.dtype)

  def nbytes(self) -> int:
    """Bytes of every array (what one product reads at least once)."""
    return int(sum(int(v.size) * v.dtype.itemsize for v in jax.tree.leaves(self)))


def pad_packed(packed: sparsity.Packed24, n_to: int, k_to: int) -> sparsity.Packed24:
  """``packed`` with zero weights appended: (n_to, k_to), both >= its shape, k_to % 8 == 0."""
  n, k = packed.shape
  if k_to % 8:
    raise ValueError(f"padded K must be a multiple of 8 (whole meta bytes); got {k_to}")
  if (n_to, k_to) == (n, k):
    return packed
  values = jnp.pad(packed.values, ((0, n_to - n), (0, (k_to - k) // 2)))
  # a row whose K is 4 mod 8 has a half-used last byte whose high bits are 0:
  # appending zero bytes keeps the existing positions in place
  meta = jnp.pad(packed.meta, ((0, n_to - n), (0, k_to // 8 - packed.meta.shape[1])))
  return sparsity.Packed24(values=values, meta=meta, d_in=k_to)


def prepare(layer: PrunedLayer, dtype=jnp.bfloat16) -> ArmorWeights:
  """Converts a layer once into kernel-ready :class:`ArmorWeights`.

  Casts the core values and the wrappers A, B to ``dtype`` (the compute
  dtype; None keeps the core's dtype), keeps the scales in f32 (dropped when
  all ones), and pads N and K with zero weights to multiples of 16.

  Args:
    layer: a pruned layer (any method; ARMOR's has A and B).
    dtype: compute dtype, e.g. ``jnp.bfloat16`` or ``jnp.float16``.

  Returns:
    The layer as :class:`ArmorWeights`.
  """
  dtype = layer.core.values.dtype if dtype is None else jnp.dtype(dtype)
  n, k = layer.shape
  n_pad, k_pad = _round_up(n, MIN_DOT), _round_up(k, MIN_DOT)
  core = sparsity.Packed24(values=layer.core.values.astype(dtype), meta=layer.core.meta,
                           d_in=layer.core.d_in)
  core = pad_packed(core, n_pad, k_pad)

  def scale(s, size):
    s = jnp.asarray(s, jnp.float32)
    try:
      if bool(np.all(np.asarray(s) == 1)):
        return None  # a baseline's unit scale: skip the multiply
    except jax.errors.TracerArrayConversionError:
      pass         # under jit: keep it
    return jnp.pad(s, (0, size - s.shape[0]), constant_values=1)

  def wrapper(w):
    return None if w is None else jnp.asarray(w).astype(dtype)

  return ArmorWeights(core=core, col_scale=scale(layer.col_scale, k_pad),
                      row_scale=scale(layer.row_scale, n_pad), a=wrapper(layer.a),
                      b=wrapper(layer.b), d_out=n, d_in=k)


def bytes_moved(m: int, n: int, k: int, *, dtype=jnp.bfloat16, block_a: int | None = None,
                block_b: int | None = None, scales: bool = False, dense: bool = False) -> int:
  """Fewest bytes one product must move: weights once, x read once, y written once.

  Args:
    m, n, k: batch, output and input dimensions.
    dtype: weight and activation dtype.
    block_a, block_b: ARMOR wrapper blocks (None: no wrapper).
    scales: count f32 row and column scales.
    dense: count a dense (n, k) weight instead of the 2:4 core.

  Returns:
    Bytes (int).
  """
  item = jnp.dtype(dtype).itemsize
  weights = n * k * item if dense else n * (k // 2) * item + n * (k // 8)
  weights += item * ((block_a or 0) * n + (block_b or 0) * k)
  weights += 4 * (n + k) if scales else 0
  return int(weights + item * m * (n + k))


# --------------------------------------------------------------------------------------------
# References (plain JAX): the CPU path and the oracle of the kernels


def _unpack_dense(packed: sparsity.Packed24) -> jax.Array:
  return sparsity.unpack(packed)[0]


def _dot_t(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x @ w.T`` in w's dtype with f32 accumulation, f32 out."""
  return jnp.einsum("...k,nk->...n", x.astype(w.dtype), w,
                    preferred_element_type=jnp.float32)


def sparse24_reference(x: jax.Array, packed: sparsity.Packed24) -> jax.Array:
  """``x @ S.T``: expand S to dense, then one dot (compute dtype = S's)."""
  return _dot_t(x, _unpack_dense(packed)).astype(x.dtype)


def blockdiag_reference(x: jax.Array, blocks: jax.Array, in_scale: jax.Array | None = None,
                        out_scale: jax.Array | None = None) -> jax.Array:
  """``((x * in_scale) @ D.T) * out_scale`` with D = blockdiag(blocks), f32 out."""
  n, b, _ = blocks.shape
  z = x.astype(jnp.float32) if in_scale is None else x.astype(jnp.float32) * in_scale
  z = z.astype(blocks.dtype).reshape(x.shape[:-1] + (n, b))
  y = jnp.einsum("...gj,gij->...gi", z, blocks, preferred_element_type=jnp.float32)
  y = y.reshape(x.shape[:-1] + (n * b,))
  return y if out_scale is None else y * out_scale


def armor_reference(x: jax.Array, w: ArmorWeights) -> jax.Array:
  """``x @ W_hat.T`` stage by stage, rounding where the kernels round.

  Stages: ``z = (x * c) @ B.T`` rounded to the compute dtype (with no B, just
  ``x * c``), ``u = z @ S.T`` in f32, ``y = (u @ A.T) * r`` with ``u`` rounded
  to the compute dtype before A; cast to ``x.dtype``.
  """
  dt = w.dtype
  c = None if w.col_scale is None else w.col_scale[:w.d_in]
  r = None if w.row_scale is None else w.row_scale[:w.d_out]
  if w.b is not None:
    z = blockdiag_reference(x, w.b, c)
  elif c is not None:
    z = x.astype(jnp.float32) * c
  else:
    z = x
  u = _dot_t(_pad_last(z.astype(dt), w.core.d_in), _unpack_dense(w.core))[..., :w.d_out]
  if w.a is not None:
    u = blockdiag_reference(u, w.a, None, r)
  elif r is not None:
    u = u * r
  return u.astype(x.dtype)


def _pad_last(x: jax.Array, size: int) -> jax.Array:
  if x.shape[-1] == size:
    return x
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


# --------------------------------------------------------------------------------------------
# In-kernel expansion


def _interleave(a: jax.Array, b: jax.Array) -> jax.Array:
  """(r, c), (r, c) -> (r, 2c) with a in the even and b in the odd columns."""
  return jnp.stack([a, b], axis=-1).reshape(a.shape[0], 2 * a.shape[1])


def expand_tile(values: jax.Array, meta: jax.Array) -> jax.Array:
  """Dense (bn, w) tile from its (bn, w/2) kept values and (bn, w/8) uint8 meta.

  Uses only reshapes of a trailing pair (Triton split/join), shifts, compares
  and selects, so it lowers to Triton; also usable outside a kernel.
  """
  bn, half = values.shape
  v0, v1 = jnp.unstack(values.reshape(bn, half // 2, 2), axis=-1)     # (bn, w/4) each
  m = meta.astype(jnp.int32)
  p0 = _interleave(m & 3, (m >> 4) & 3)                                # (bn, w/4)
  p1 = _interleave((m >> 2) & 3, (m >> 6) & 3)
  zero = jnp.zeros_like(v0)
  slot = [jnp.where(p0 == j, v0, jnp.where(p1 == j, v1, zero)) for j in range(sparsity.GROUP)]
  # [..., a, c] = slot[2a + c]  ->  column 4g + 2a + c
  return _interleave(_interleave(slot[0], slot[2]), _interleave(slot[1], slot[3]))


# --------------------------------------------------------------------------------------------
# Kernels


def _sparse_kernel(*refs, bk: int, bb: int | None, n_steps: int, m: int, bm: int,
                   has_c: bool, has_b: bool, has_a: bool, has_r: bool, has_init: bool,
                   mask_rows: bool):
  """One (bm, bn) output tile over one K range; see module docstring.

  Refs, in order: x (bm, Ks), values (bn, Ks/2), meta (bn, Ks/8),
  [c (Ks,)], [B (Ks/bb, bb, bb)], [A (1, bn, bn)], [r (bn,)], [init (aliased
  to the output, never read)], out (bm, bn).
  """
  refs = list(refs)
  x_ref, v_ref, m_ref = refs[:3]
  rest = refs[3:-2] if has_init else refs[3:-1]
  o_ref = refs[-1]
  c_ref = rest.pop(0) if has_c else None
  b_ref = rest.pop(0) if has_b else None
  a_ref = rest.pop(0) if has_a else None
  r_ref = rest.pop(0) if has_r else None
  dt = v_ref.dtype
  rows_ok = None
  if mask_rows:
    rows_ok = (pl.program_id(0) * bm + jnp.arange(bm)) < m

  def load_x(start, width):
    ref = x_ref.at[:, pl.ds(start, width)]
    if rows_ok is None:
      return ref[...]
    return pltriton.load(ref, mask=rows_ok[:, None], other=0)

  # a step covers bk columns as `units` sub-tiles of width w (w = bb with a fused B);
  # offsets are products (not quotients) so Triton sees their alignment
  w = bb if has_b else bk
  units = bk // w

  def step(t, acc):
    for u in range(units):
      k0 = pl.multiple_of(t * bk + u * w, w)
      h0 = pl.multiple_of(t * (bk // 2) + u * (w // 2), w // 2)
      q0 = pl.multiple_of(t * (bk // 8) + u * (w // 8), w // 8)
      x = load_x(k0, w)
      if has_c:
        x = x.astype(jnp.float32) * c_ref[pl.ds(k0, w)][None, :]
      if has_b:
        blk = b_ref[t * units + u]                                       # (bb, bb)
        x = jax.lax.dot_general(x.astype(dt), blk, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
      tile = expand_tile(v_ref[:, pl.ds(h0, w // 2)], m_ref[:, pl.ds(q0, w // 8)])  # (bn, w)
      acc += jax.lax.dot_general(x.astype(dt), tile, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32)
    return acc

  acc = jnp.zeros((bm, o_ref.shape[-1]), jnp.float32)
  acc = jax.lax.fori_loop(0, n_steps, step, acc)
  if has_a:
    acc = jax.lax.dot_general(acc.astype(dt), a_ref[0], (((1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32)
  if has_r:
    acc = acc * r_ref[...][None, :]
  out = acc.astype(o_ref.dtype)
  if rows_ok is None:
    o_ref[...] = out
  else:
    pltriton.store(o_ref, out, mask=rows_ok[:, None])


def _blockdiag_kernel(*refs, m: int, bm: int, has_in: bool, has_out: bool, has_init: bool,
                      mask_rows: bool):
  """One (bm, b) tile: ``((x * s_in) @ D_blk.T) * s_out``.

  Refs: x (bm, b), blocks (1, b, b), [s_in (b,)], [s_out (b,)], [init], out (bm, b).
  """
  refs = list(refs)
  x_ref, d_ref = refs[:2]
  rest = refs[2:-2] if has_init else refs[2:-1]
  o_ref = refs[-1]
  in_ref = rest.pop(0) if has_in else None
  out_ref = rest.pop(0) if has_out else None
  rows_ok = None
  if mask_rows:
    rows_ok = (pl.program_id(0) * bm + jnp.arange(bm)) < m
    x = pltriton.load(x_ref, mask=rows_ok[:, None], other=0)
  else:
    x = x_ref[...]
  blk = d_ref[0]
  if has_in:
    x = x.astype(jnp.float32) * in_ref[...][None, :]
  y = jax.lax.dot_general(x.astype(blk.dtype), blk, (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32)
  if has_out:
    y = y * out_ref[...][None, :]
  y = y.astype(o_ref.dtype)
  if rows_ok is None:
    o_ref[...] = y
  else:
    pltriton.store(o_ref, y, mask=rows_ok[:, None])


def _compiler_params(tiles: Tiles):
  return pltriton.CompilerParams(num_warps=tiles.num_warps, num_stages=tiles.num_stages)


def _sparse_call(x2, packed, *, tiles: Tiles, out_dtype, interpret: bool,
                 col_scale=None, b=None, a=None, row_scale=None, init=None):
  """The sparse kernel on 2-D x (M, K) and a padded core (N, K); (M, N) in out_dtype.

  ``init``, if given, is the kernel's output buffer before it runs (aliased;
  shape of the raw output: (M, N), or (split_k, M, N) f32): the tests fill it
  with NaN to catch elements the kernel does not write.
  """
  tiles.check()
  m, k = x2.shape
  n = packed.values.shape[0]
  bm, bn, bk, sk = tiles.bm, tiles.bn, tiles.bk, tiles.split_k
  bb = None if b is None else b.shape[-1]
  if k != packed.d_in:
    raise ValueError(f"x has {k} columns but the core has d_in={packed.d_in}")
  if n % bn or k % (bk * sk):
    raise ValueError(f"tiles bn={bn}, bk={bk}, split_k={sk} do not divide (N, K)=({n}, {k}); "
                     "pad with pad_packed or pick other tiles")
  if a is not None and a.shape[-1] != bn:
    raise ValueError(f"a fused A stage needs bn == A's block ({a.shape[-1]}); got bn={bn}")
  if b is not None and bk % bb:
    raise ValueError(f"a fused B stage needs bk a multiple of B's block ({bb}); got bk={bk}")
  ks = k // sk
  grid = (pl.cdiv(m, bm), n // bn, sk)
  operands = [x2, packed.values, packed.meta]
  specs = [pl.BlockSpec((bm, ks), lambda i, j, s: (i, s)),
           pl.BlockSpec((bn, ks // 2), lambda i, j, s: (j, s)),
           pl.BlockSpec((bn, ks // 8), lambda i, j, s: (j, s))]
  if col_scale is not None:
    operands.append(col_scale)
    specs.append(pl.BlockSpec((ks,), lambda i, j, s: (s,)))
  if b is not None:
    operands.append(b)
    specs.append(pl.BlockSpec((ks // bb, bb, bb), lambda i, j, s: (s, 0, 0)))
  if a is not None:
    operands.append(a)
    specs.append(pl.BlockSpec((1, bn, bn), lambda i, j, s: (j, 0, 0)))
  if row_scale is not None:
    operands.append(row_scale)
    specs.append(pl.BlockSpec((bn,), lambda i, j, s: (j,)))
  if sk == 1:
    out_shape = jax.ShapeDtypeStruct((m, n), out_dtype)
    out_spec = pl.BlockSpec((bm, bn), lambda i, j, s: (i, j))
  else:
    out_shape = jax.ShapeDtypeStruct((sk, m, n), jnp.float32)
    out_spec = pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j))
  aliases = {}
  if init is not None:
    aliases = {len(operands): 0}
    operands.append(init)
    specs.append(out_spec)
  kernel = functools.partial(
      _sparse_kernel, bk=bk, bb=bb, n_steps=ks // bk, m=m, bm=bm,
      has_c=col_scale is not None, has_b=b is not None, has_a=a is not None,
      has_r=row_scale is not None, has_init=init is not None, mask_rows=m % bm != 0)
  out = pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=specs,
                       out_specs=out_spec, input_output_aliases=aliases, interpret=interpret,
                       compiler_params=_compiler_params(tiles), name="sparse24_matmul")(*operands)
  if sk > 1:
    out = jnp.sum(out, axis=0).astype(out_dtype)
  return out


def _blockdiag_call(x2, blocks, *, in_scale, out_scale, out_dtype, interpret: bool,
                    bm: int, num_warps: int = 4, init=None):
  """The block-diagonal kernel on 2-D x (M, d); ``init`` as in :func:`_sparse_call`."""
  m, d = x2.shape
  nb, b, _ = blocks.shape
  if nb * b != d:
    raise ValueError(f"x has {d} columns but the blocks cover {nb} x {b}")
  operands = [x2, blocks]
  specs = [pl.BlockSpec((bm, b), lambda i, g: (i, g)),
           pl.BlockSpec((1, b, b), lambda i, g: (g, 0, 0))]
  for s in (in_scale, out_scale):
    if s is not None:
      operands.append(s)
      specs.append(pl.BlockSpec((b,), lambda i, g: (g,)))
  out_spec = pl.BlockSpec((bm, b), lambda i, g: (i, g))
  aliases = {}
  if init is not None:
    aliases = {len(operands): 0}
    operands.append(init)
    specs.append(out_spec)
  kernel = functools.partial(_blockdiag_kernel, m=m, bm=bm, has_in=in_scale is not None,
                             has_out=out_scale is not None, has_init=init is not None,
                             mask_rows=m % bm != 0)
  return pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((m, d), out_dtype), grid=(pl.cdiv(m, bm), nb),
      in_specs=specs, out_specs=out_spec, input_output_aliases=aliases,
      interpret=interpret, name="blockdiag_matmul",
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=1))(*operands)


# --------------------------------------------------------------------------------------------
# Public entry points


def on_gpu() -> bool:
  """Whether the default backend is a GPU (where ``impl="auto"`` runs the kernels)."""
  return jax.default_backend() == "gpu"


def device_kind() -> str:
  """The first device's kind, e.g. ``"NVIDIA H100 80GB HBM3"`` (``""`` if it has none)."""
  return getattr(jax.devices()[0], "device_kind", "")


def is_hopper(kind: str) -> bool:
  """Whether a device kind names a Hopper GPU (H100, H200, H800, H20, GH200)."""
  return re.search(r"(^|[\s_-])G?H(100|200|800|20)\b", kind, re.IGNORECASE) is not None


#: The most rows (batch x sequence) ``impl="auto"`` sends to the Mosaic GPU kernels on Hopper;
#: more go to the plain-XLA path. On an H200 the Mosaic kernels were faster than it in 6 of 8
#: decode cases (1 and 16 rows; within 6% in the other two) and took 3.7-7.2x its time at
#: 2048 rows (docs/kernels.md, "Measured").
MOSAIC_MAX_ROWS = 16


def resolve_impl(impl: str, *, rows: int | None = None, prepared: bool = False,
                 gpu: bool | None = None, kind: str | None = None) -> str:
  """``"auto"`` -> on Hopper ``"mosaic"`` for at most :data:`MOSAIC_MAX_ROWS` ``rows``
  (or weights ``prepared`` for it, or ``rows`` unknown) and ``"reference"`` (plain XLA) for
  more; ``"pallas"`` (Triton) on other GPUs; ``"reference"`` elsewhere. Checks the name.
  ``gpu`` and ``kind`` default to :func:`on_gpu` and :func:`device_kind` (tests pass fakes)."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
  if impl == "auto":
    if not (on_gpu() if gpu is None else gpu):
      return "reference"
    if not is_hopper(device_kind() if kind is None else kind):
      return "pallas"
    return "mosaic" if prepared or rows is None or rows <= MOSAIC_MAX_ROWS else "reference"
  return impl


def _rows(x: jax.Array) -> int:
  return math.prod(x.shape[:-1])


def _mosaic(impl: str):
  """:mod:`armor_jax.kernels_mgpu` and its ``interpret`` argument for a Mosaic impl."""
  from armor_jax import kernels_mgpu  # pylint: disable=import-outside-toplevel
  return kernels_mgpu, (kernels_mgpu.interpret_params() if impl == "mosaic_interpret" else None)


def _mosaic_tiles(tiles):
  """Tiles for the Mosaic path: its own ``MgpuTiles``; Triton :class:`Tiles` are dropped."""
  return None if tiles is None or isinstance(tiles, Tiles) else tiles


def _check_prepared_for(core, impl: str) -> None:
  """Weights in the Mosaic GPU kernels' layout run only there (one line if not)."""
  if not isinstance(core, sparsity.Packed24) and impl not in MOSAIC_IMPLS:
    raise ValueError(f"weights prepared for the Mosaic GPU kernels run with impl='mosaic' "
                     f"(or 'mosaic_interpret'), not {impl!r}")


def _as_2d(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
  return x.reshape(-1, x.shape[-1]), x.shape[:-1]


def _bm_for(m: int) -> int:
  return MIN_DOT if m <= MIN_DOT else (64 if m <= 128 else 128)


@functools.partial(jax.jit, static_argnames=("impl", "tiles"))
def sparse24_matmul(x: jax.Array, w, *, impl: Impl = "auto",
                    tiles: Tiles | None = None) -> jax.Array:
  """``x @ S.T`` for a compressed 2:4 matrix S of shape (N, K).

  Args:
    x: (..., K) activations (any float dtype; cast to S's values dtype).
    w: the compressed matrix (:class:`~armor_jax.solver.sparsity.Packed24`; its values
      dtype is the compute dtype), or its Mosaic GPU form
      (:func:`armor_jax.kernels_mgpu.prepare`, ``impl="mosaic"`` only).
    impl: one of :data:`IMPLS` (see the module docstring).
    tiles: kernel tiles (default :func:`default_tiles`); must divide the
      padded problem.

  Returns:
    (..., N) in ``x.dtype``.
  """
  impl = resolve_impl(impl, rows=_rows(x), prepared=not isinstance(w, sparsity.Packed24))
  n, k = w.shape
  if x.shape[-1] != k:
    raise ValueError(f"x has {x.shape[-1]} columns, S is {n} x {k}")
  _check_prepared_for(w, impl)
  if impl == "reference":
    return sparse24_reference(x, w)
  if impl in MOSAIC_IMPLS:
    mgpu, interpret = _mosaic(impl)
    return mgpu.sparse24_matmul(x, w, tiles=_mosaic_tiles(tiles), interpret=interpret)
  x2, lead = _as_2d(x)
  n_pad, k_pad = _round_up(n, MIN_DOT), _round_up(k, MIN_DOT)
  w = pad_packed(w, n_pad, k_pad)
  x2 = _pad_last(x2, k_pad)
  tiles = tiles or default_tiles(x2.shape[0], n_pad, k_pad)
  y = _sparse_call(x2, w, tiles=tiles, out_dtype=x.dtype, interpret=impl == "interpret")
  return y[:, :n].reshape(lead + (n,))


@functools.partial(jax.jit, static_argnames=("impl", "bm"))
def blockdiag_matmul(x: jax.Array, blocks: jax.Array, in_scale: jax.Array | None = None,
                     out_scale: jax.Array | None = None, *, impl: Impl = "auto",
                     bm: int | None = None) -> jax.Array:
  """``((x * in_scale) @ D.T) * out_scale`` for D = blockdiag(blocks), without forming D.

  The Pallas kernel runs one (bm, b) tile per program (grid ``(M / bm, d / b)``),
  reading each block once per row tile; it needs b a power of two in [16, 256]
  (otherwise ``"pallas"`` raises and ``"auto"`` uses the XLA einsum).

  Args:
    x: (..., d) activations.
    blocks: (d / b, b, b); their dtype is the compute dtype.
    in_scale: optional (d,) scale applied to x first (f32).
    out_scale: optional (d,) scale applied to the result (f32).
    impl: one of :data:`IMPLS` (see the module docstring).
    bm: rows per program (default 16 for M <= 16, else 64 or 128).

  Returns:
    (..., d) in ``x.dtype``.
  """
  impl = resolve_impl(impl, rows=_rows(x))
  b = blocks.shape[-1]
  if impl in ("pallas", "interpret") and not _fusable(b):
    raise ValueError(f"the block-diagonal kernel needs a block size that is a power of two in "
                     f"[{MIN_DOT}, {MAX_FUSED_BLOCK}]; got {b} (use impl='reference')")
  if impl == "reference":
    return blockdiag_reference(x, blocks, in_scale, out_scale).astype(x.dtype)
  if impl in MOSAIC_IMPLS:
    mgpu, interpret = _mosaic(impl)
    return mgpu.blockdiag_matmul(x, blocks, in_scale, out_scale, interpret=interpret)
  x2, lead = _as_2d(x)
  y = _blockdiag_call(x2, blocks, in_scale=in_scale, out_scale=out_scale, out_dtype=x.dtype,
                      interpret=impl == "interpret", bm=bm or _bm_for(x2.shape[0]))
  return y.reshape(x.shape)


def armor_tiles(m: int, w: ArmorWeights, tiles: Tiles | None = None) -> Tiles:
  """The sparse-kernel tiles :func:`armor_linear` runs ``m`` rows of ``w`` with.

  ``tiles`` (default :func:`default_tiles`, with ``bn`` = A's block when A is fused) adjusted
  to the layer: ``bn`` set to A's block when A is fused, ``bk`` raised to a multiple of B's
  block when B is fused, ``split_k`` halved until it divides K. ``fuse_b`` in the result says
  whether B is fused (it needs ``tiles.fuse_b`` and a block that can be a Triton tile).
  """
  n_pad, k_pad = w.core.shape
  block_a = None if w.a is None else w.a.shape[-1]
  block_b = None if w.b is None else w.b.shape[-1]
  fuse_a = _fusable(block_a)
  fuse_b = _fusable(block_b) and tiles is not None and tiles.fuse_b
  if tiles is None:
    tiles = default_tiles(m, n_pad, k_pad, block_a=block_a if fuse_a else None)
  tiles = dataclasses.replace(tiles, fuse_b=fuse_b)
  if fuse_a and tiles.bn != block_a:
    tiles = dataclasses.replace(tiles, bn=block_a)
  if fuse_b and tiles.bk % block_b:
    tiles = dataclasses.replace(tiles, bk=max(tiles.bk, block_b))
  while k_pad % (tiles.bk * tiles.split_k):
    tiles = dataclasses.replace(tiles, split_k=tiles.split_k // 2)
  return tiles


def _armor_pallas(x2, w: ArmorWeights, *, tiles: Tiles | None, interpret: bool):
  """ARMOR on 2-D x (M, d_in) with the kernels (plan in the module docstring); (M, d_out)."""
  m = x2.shape[0]
  k_pad = w.core.shape[1]
  dt = w.dtype
  block_b = None if w.b is None else w.b.shape[-1]
  fuse_a = _fusable(None if w.a is None else w.a.shape[-1])
  tiles = armor_tiles(m, w, tiles)
  fuse_b = tiles.fuse_b
  c = None if w.col_scale is None else w.col_scale[:w.d_in]
  r = None if w.row_scale is None else w.row_scale[:w.d_out]
  z, col_scale, b = x2, w.col_scale, None
  if fuse_b:
    b = w.b                                   # fusable blocks divide d_in: no K padding
  elif w.b is not None:
    # the B stage first, with c folded in; z in the compute dtype
    z = (_blockdiag_call(x2, w.b, in_scale=c, out_scale=None, out_dtype=dt,
                         interpret=interpret, bm=_bm_for(m)) if _fusable(block_b)
         else blockdiag_reference(x2, w.b, c).astype(dt))
    col_scale = None
  z = _pad_last(z, k_pad)
  a = w.a if fuse_a else None
  row_scale = w.row_scale if (fuse_a or w.a is None) else None
  # with an unfused A, u stays f32 until A
  out_dtype = x2.dtype if (w.a is None or fuse_a) else jnp.float32
  u = _sparse_call(z, w.core, tiles=tiles, out_dtype=out_dtype, interpret=interpret,
                   col_scale=col_scale, b=b, a=a, row_scale=row_scale)[:, :w.d_out]
  if w.a is not None and not fuse_a:
    u = blockdiag_reference(u, w.a, None, r)
  return u.astype(x2.dtype)


@functools.partial(jax.jit, static_argnames=("impl", "tiles", "dtype"))
def armor_linear(x: jax.Array, layer: PrunedLayer | ArmorWeights, *, impl: Impl = "auto",
                 tiles: Tiles | None = None, dtype=None) -> jax.Array:
  """``x @ W_hat.T`` for a pruned layer ``W_hat = diag(r) A S B diag(c)``.

  Args:
    x: (..., d_in) activations.
    layer: :class:`ArmorWeights` (made once by :func:`prepare`; the fast way) or
      a :class:`~armor_jax.solver.layer.PrunedLayer`, converted on every call with
      ``prepare(layer, dtype)``.
    impl: one of :data:`IMPLS` (see the module docstring).
    tiles: sparse-kernel tiles (default :func:`default_tiles`, with ``bn``
      equal to A's block when A is fused); ``tiles.fuse_b`` selects the fused
      B stage.
    dtype: compute dtype when ``layer`` is a PrunedLayer (None: the core's).

  Returns:
    (..., d_out) in ``x.dtype``.
  """
  w = layer if isinstance(layer, ArmorWeights) else prepare(layer, dtype)
  impl = resolve_impl(impl, rows=_rows(x), prepared=not isinstance(w.core, sparsity.Packed24))
  if x.shape[-1] != w.d_in:
    raise ValueError(f"x has {x.shape[-1]} columns, the layer is {w.d_out} x {w.d_in}")
  _check_prepared_for(w.core, impl)
  if impl == "reference":
    return armor_reference(x, w)
  if impl in MOSAIC_IMPLS:
    mgpu, interpret = _mosaic(impl)
    return mgpu.armor_linear(x, w, tiles=_mosaic_tiles(tiles), interpret=interpret)
  x2, lead = _as_2d(x)
  y = _armor_pallas(x2, w, tiles=tiles, interpret=impl == "interpret")
  return y.reshape(lead + (w.d_out,))

