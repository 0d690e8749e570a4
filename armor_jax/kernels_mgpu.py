"""Mosaic GPU (Hopper) kernels for 2:4-sparse and ARMOR linears, checked on CPU in GPU interpret mode.

The Mosaic GPU backend of Pallas is the one JAX develops for H100/H200; these kernels are the
Hopper path of :mod:`armor_jax.kernels` (whose Triton kernels stay the path for Ampere and
other GPUs), written with explicit copies: TMA copies of each K step's tiles into shared memory
on a ring of barriers, a pipelined loop over K, the 2:4 tile expanded from its packed words and
position bytes by shifts and selects, and warpgroup MMAs (wgmma) with f32 accumulators. What is
proven without a GPU: every kernel equals the plain-JAX reference in Mosaic GPU's interpret
mode with race detection on (which simulates shared memory, TMA copies, barriers and wgmma), on
shapes that take every tile path (tests/test_kernels_mgpu.py), and every kernel lowers for
CUDA through Pallas's Mosaic GPU lowering on a CPU-only machine at the benchmark shapes. On an
H200 the same tests pass with the kernels compiled; the kernels are slow there, latency-bound
per K step at decode and repeating the expansion for every batch tile at prefill
(docs/kernels.md has the figures).

Data layout
-----------
Mosaic GPU cannot take every other element of a register array or of a shared-memory row
(strided slices and minor-dimension reshapes do not lower), so a K tile is consumed as
elementwise-aligned arrays. A meta byte ``r`` of a row holds the positions of the kept values
``4r .. 4r+3``, i.e. groups ``2r`` (bits 0-3) and ``2r+1`` (bits 4-7); the kernels read

* ``words`` (2, N, K/8) uint32: ``words[e, n, r]`` is the pair of kept values of group
  ``2r + e`` as one 32-bit word (first value in the low half): the stored ``values`` bytes,
  regrouped by group parity (:func:`mgpu_words`: the same bytes, made by one XLA pass over
  the values, on every call for a ``Packed24``, once by :func:`prepare`);
* ``meta`` (N, K/8) uint8 exactly as stored;
* the activations as ``xp`` (8, K/8, M_pad): ``xp[s, r, m] = x[m, 8r + s]`` (a transpose of
  the small operand, fused by XLA with the padding, the column scale and the cast).

Dense column ``8r + 4e + j`` of S is ``where(p0 == j, lo, where(p1 == j, hi, 0))`` with
``lo``/``hi`` the halves of ``words[e]`` (bit casts to the compute dtype) and ``p0, p1`` the
two 2-bit fields of nibble ``e`` of the meta byte. So a (bn, R) tile of meta bytes yields
eight (bn, R) slot tiles, slot ``s = 4e + j``, and ``y.T += slot_s @ xp[s]`` (an (R, bm) tile):
eight wgmmas per K step of ``8 R`` dense columns, with the output computed transposed
(``acc`` is (bn, bm); wgmma's M is 64 per warpgroup, its N can be as small as 8, which is what
makes decode batches of 1 to 16 cheap). XLA transposes ``y.T`` back, fused with the row scale.

Pipeline
--------
One program per (bn, bm) output tile, grid (N / bn, M_pad / bm), one warpgroup. The K loop
keeps ``stages`` steps in flight: step ``t``'s words, meta and x tiles are TMA copies into
ring slot ``t % stages``, all on that slot's barrier. Step ``t`` waits the previous step's
wgmmas (the slot tiles and the x slot they read are reused), refills the slot they freed with
step ``t - 1 + stages``, waits its own slot's barrier, expands into the eight slot tiles in
shared memory, fences them (``commit_smem``) and issues its eight wgmmas. In interpret mode
wgmma reads both operands from shared memory, so the expanded tile is staged there (a
register-operand wgmma cannot be checked on CPU); on a device that costs shared-memory
bandwidth, not HBM bytes.

ARMOR (``y = ((((x * c) @ B.T) @ S.T) @ A.T) * r``): the B stage is its own kernel
(:func:`blockdiag_mgpu`, one wgmma per block, output ``z.T``); the sparse kernel fuses A as its
epilogue (``bn = b_A``: the f32 tile is rounded to the compute dtype, staged in shared memory
and multiplied by A's block with one more wgmma); ``c`` and ``r`` are applied by XLA in the
operand and result transposes. Blocks that are not a multiple of 64 (wgmma's M) fall back to
XLA einsums for that wrapper.

Tiles (:class:`MgpuTiles`): ``bn`` = 64 (or A's block), ``bm`` = 16 for decode (M <= 16; a
16-bit tile cannot be swizzled narrower), else 64; ``r`` = 32 meta bytes (256 dense columns)
per K step; 2 stages, fewer and then a narrower ``bm`` while the kernel would use more than
:data:`SMEM_BUDGET` of shared memory (:func:`smem_bytes`); at decode K split over programs
(``split``: each writes an f32 partial, XLA adds them, and A then runs as its own
block-diagonal kernel) until the grid has :data:`MIN_PROGRAMS` programs. Only the decode
stages and split were chosen from timings (``experiments/bench_mgpu_tiles.py``, one shape).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from armor_jax.solver import sparsity

#: wgmma's M: rows of the output tile (and of A's block) per warpgroup.
WG_M = 64
#: Meta bytes per K step (8 dense columns each).
STEP_R = 32
#: Shared memory the default tiles may use (an H100 block gets 227 KB; room for barriers).
SMEM_BUDGET = 200 * 1024
#: Programs the default decode tiles aim for (an H100 or H200 has 132 multiprocessors).
MIN_PROGRAMS = 256


# --------------------------------------------------------------------------------------------
# Interpret mode (the one place that touches JAX's private modules)


def _interpret_api():
  """``(InterpretGPUParams, races_found, reset)`` from the public export or JAX's private module.

  JAX exports GPU interpret mode's parameters from ``jax.experimental.pallas.mosaic_gpu`` in
  newer releases; JAX 0.10 keeps them in ``jax._src.pallas.mosaic_gpu.interpret``. The race
  report and the reset of the simulator's state are only in the private module.
  """
  params = getattr(plgpu, "InterpretGPUParams", None) or getattr(plgpu, "InterpretParams", None)
  try:
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call  # pylint: disable=import-outside-toplevel
    from jax._src.pallas.mosaic_gpu.interpret import params as private  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise RuntimeError(f"this JAX ({jax.__version__}) has no Mosaic GPU interpret mode where "
                       f"armor_jax.kernels_mgpu looks for it ({e})") from e

  def races() -> bool:
    try:
      return bool(interpret_pallas_call.get_races().races_found)
    except AssertionError:        # no kernel interpreted since the last reset
      return False

  return (params or private.InterpretGPUParams, races,
          interpret_pallas_call.reset_gpu_interpret_mode_state)


def interpret_params(detect_races: bool = True):
  """Parameters that run a Mosaic GPU kernel in GPU interpret mode (any backend, slow).

  NaN-fills uninitialized shared memory and raises on out-of-bounds reads (JAX's defaults);
  ``detect_races`` turns on the happens-before race detector (see :func:`races_found`).
  """
  cls = _interpret_api()[0]
  return cls(detect_races=detect_races)


def races_found() -> bool:
  """Whether the race detector has seen a race since the process started (or the last reset)."""
  return _interpret_api()[1]()


def reset_interpret_state() -> None:
  """Clears GPU interpret mode's simulated memory and race report (needed after a failure)."""
  _interpret_api()[2]()


# --------------------------------------------------------------------------------------------
# Tiles and layouts


@dataclasses.dataclass(frozen=True)
class MgpuTiles:
  """Tile sizes of the Mosaic GPU sparse kernel.

  Attributes:
    bm: batch rows per program (wgmma N; a multiple of 16, the narrowest tile a 16-bit
      operand can be swizzled in: 16 at decode).
    bn: output columns per program (wgmma M: a multiple of 64; A's block when A is fused).
    r: meta bytes (8 dense input columns each) per K step; a multiple of 32 (a uint8 tile
      is swizzled in 32-byte rows at least).
    stages: K steps in flight (TMA ring depth).
    split: programs that share one output tile's K loop (split-K): each sums ``1 / split``
      of the K steps into an f32 partial, and XLA adds the partials. More programs to fill
      the machine at decode, where N / bn tiles alone leave multiprocessors idle.
    overlap: expand step t + 1 while step t's wgmmas run (two sets of slot tiles; the wait
      before a step lets the previous step's eight wgmmas stay in flight). Needs 3 stages
      or more: a ring slot is refilled only once the wgmmas two steps back are done.
  """
  bm: int = 16
  bn: int = WG_M
  r: int = STEP_R
  stages: int = 4
  split: int = 1
  overlap: bool = False

  def check(self, m_pad: int, n: int, k: int) -> None:
    if (self.bm % 16 or self.bn % WG_M or self.r % STEP_R or self.stages < 1
        or self.split < 1 or (self.overlap and self.stages < 3)):
      raise ValueError(f"{self}: bm must be a multiple of 16, bn of {WG_M}, r of {STEP_R}, "
                       "stages and split >= 1, stages >= 3 with overlap")
    if m_pad % self.bm or n % self.bn or (k // 8) % (self.r * self.split):
      raise ValueError(f"{self} does not divide (M_pad, N, K) = ({m_pad}, {n}, {k})")


def smem_bytes(t: MgpuTiles, *, fuse_a: bool, itemsize: int = 2) -> int:
  """Shared memory the sparse kernel allocates with tiles ``t`` (barriers aside)."""
  per_stage = 8 * t.r * t.bm * itemsize + 2 * t.bn * t.r * 4 + t.bn * t.r
  fixed = (1 + t.overlap) * 8 * t.bn * t.r * itemsize + t.bn * t.bm * 4
  if fuse_a:
    fixed += t.bn * t.bn * itemsize + t.bn * t.bm * itemsize
  return t.stages * per_stage + fixed


def default_tiles(m: int, n: int, k: int, *, block_a: int | None = None) -> MgpuTiles:
  """Tiles for an (m, k) x (n, k)^T product, N and K padded (see the module docstring).

  ``bm`` 16 at decode (m <= 16), else 64; ``bn`` 64 or A's block; 2 stages, fewer (then a
  narrower ``bm``) while :func:`smem_bytes` exceeds :data:`SMEM_BUDGET`. At decode K is split
  (:attr:`MgpuTiles.split`, a power of two dividing the K steps, at least two steps each)
  until the grid has :data:`MIN_PROGRAMS` programs. The decode stages and split are the
  fastest of the variants timed on an H200 at one shape (docs/kernels.md); the rest is untuned.
  """
  decode = m <= 16
  t = MgpuTiles(bm=16 if decode else 64, bn=block_a or WG_M, r=STEP_R, stages=2)
  while smem_bytes(t, fuse_a=block_a is not None) > SMEM_BUDGET:
    if t.stages > 1:
      t = dataclasses.replace(t, stages=t.stages - 1)
    elif t.bm > 16:
      t = dataclasses.replace(t, bm=t.bm // 2, stages=2)
    else:
      break
  if decode:
    steps, programs, split = k // 8 // t.r, (n // t.bn) * -(-m // t.bm), 1
    while (programs * split < MIN_PROGRAMS and steps % (2 * split) == 0
           and steps // (2 * split) >= 2):
      split *= 2
    t = dataclasses.replace(t, split=split)
  return t


def mgpu_words(packed: sparsity.Packed24) -> jax.Array:
  """The (2, N, K/8) uint32 words of ``packed`` (module docstring): pairs regrouped by parity."""
  n, k = packed.shape
  if k % 8 or packed.values.dtype.itemsize != 2:
    raise ValueError(f"Mosaic GPU kernels need K % 8 == 0 and 16-bit values; got K={k}, "
                     f"{packed.values.dtype}")
  pairs = packed.values.reshape(n, k // 8, 2, 2)                       # [n, r, e, half]
  words = jax.lax.bitcast_convert_type(pairs, jnp.uint32)             # [n, r, e]
  return jnp.transpose(words, (2, 0, 1))


class MgpuPacked(struct.PyTreeNode):
  """A 2:4 matrix in the kernels' layout, made once by :func:`prepare` (no regrouping per call).

  Attributes:
    words: (2, N_pad, K_pad / 8) uint32 (:func:`mgpu_words` of the padded matrix).
    meta: (N_pad, K_pad / 8) uint8, as stored.
    n, k: the unpadded shape (static).
    dtype: the values' dtype name (static), the compute dtype of the products.
  """
  words: jax.Array
  meta: jax.Array
  n: int = struct.field(pytree_node=False)
  k: int = struct.field(pytree_node=False)
  dtype: str = struct.field(pytree_node=False)

  @property
  def shape(self) -> tuple[int, int]:
    return (self.n, self.k)


def prepare(packed: sparsity.Packed24, *, n_multiple: int = WG_M,
            k_multiple: int = 8 * STEP_R) -> MgpuPacked:
  """``packed`` padded (N to ``n_multiple``, K to ``k_multiple``) and regrouped into words.

  The same bytes as the values and meta; do it once per weight, not per call. Tiles used
  with the result must divide the padded shape (``bn | N_pad``, ``8 r split | K_pad``).
  """
  n, k = packed.shape
  core = _pad_core(packed, _round_up(n, n_multiple), _round_up(k, k_multiple))
  return MgpuPacked(mgpu_words(core), core.meta, n, k, jnp.dtype(core.values.dtype).name)


def prepare_armor(w):
  """:class:`~armor_jax.kernels.ArmorWeights` with the core in :class:`MgpuPacked` form.

  N is padded to A's block when A runs fused (:func:`fusable`), else to 64; K to 256. The
  result runs with ``impl="mosaic"`` (or ``"mosaic_interpret"``) only.
  """
  if isinstance(w.core, MgpuPacked):
    return w
  block = w.a.shape[-1] if w.a is not None and fusable(w.a.shape[-1]) else WG_M
  return w.replace(core=prepare(w.core, n_multiple=block))


def _as_prepared(core, n_multiple: int, k_multiple: int) -> MgpuPacked:
  """``core`` as :class:`MgpuPacked`, padded to these multiples (checked if already prepared)."""
  if not isinstance(core, MgpuPacked):
    return prepare(core, n_multiple=n_multiple, k_multiple=k_multiple)
  n_pad, kr = core.meta.shape
  if n_pad % n_multiple or (8 * kr) % k_multiple:
    raise ValueError(f"prepared weights padded to ({n_pad}, {8 * kr}) do not fit tiles that "
                     f"need multiples of ({n_multiple}, {k_multiple}); prepare with those")
  return core


def _xp(x2: jax.Array, m_pad: int, dtype) -> jax.Array:
  """(M, K) -> (8, K/8, M_pad) in ``dtype``: ``xp[s, r, m] = x[m, 8r + s]``."""
  m, k = x2.shape
  x2 = jnp.pad(x2.astype(dtype), ((0, m_pad - m), (0, 0)))
  return jnp.transpose(x2.reshape(m_pad, k // 8, 8), (2, 1, 0))


def _smem_transforms(dtype, minor: int, swizzle: int | None = None):
  """Tiling and swizzle of a 2-D shared-memory tile whose minor dimension holds ``minor``.

  ``swizzle`` (bytes) defaults to the widest that the minor dimension fills; the two operands
  of a wgmma must share one (``_mma_swizzle``).
  """
  bits = jnp.dtype(dtype).itemsize * 8
  swizzle = swizzle or plgpu.find_swizzle(minor * bits)
  return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


def _mma_swizzle(dtype, *minors: int) -> int:
  """The one swizzle (bytes) that 2-D wgmma operand tiles with these minor sizes can share."""
  return min(plgpu.find_swizzle(m * jnp.dtype(dtype).itemsize * 8) for m in minors)


# --------------------------------------------------------------------------------------------
# Kernels


def _expand_slots(words_smem, meta_smem, slots_smem, dtype):
  """Writes the eight (bn, r) slot tiles of one K step (``s = 4e + j``) to shared memory."""
  m = meta_smem[...].astype(jnp.uint32)
  for e in range(2):
    w = words_smem[e]
    lo = jax.lax.bitcast_convert_type(w.astype(jnp.uint16), dtype)
    hi = jax.lax.bitcast_convert_type((w >> 16).astype(jnp.uint16), dtype)
    p0 = (m >> (4 * e)) & 3
    p1 = (m >> (4 * e + 2)) & 3
    zero = jnp.zeros_like(lo)
    for j in range(sparsity.GROUP):
      slots_smem[4 * e + j] = jnp.where(p0 == j, lo, jnp.where(p1 == j, hi, zero))


def _sparse_body(x_gmem, w_gmem, m_gmem, *gmem, t: MgpuTiles, n_steps: int, fuse_a: bool,
                 dtype, x_smem, w_smem, m_smem, slots, o_smem, bars, a_smem=None, u_smem=None,
                 a_bar=None):
  """One (bn, bm) tile of ``y.T = S @ x.T`` (then ``A_j @`` it when ``fuse_a``)."""
  a_gmem, o_gmem = gmem if fuse_a else (None,) + gmem
  bm, bn, r, stages = t.bm, t.bn, t.r, t.stages
  j = jax.lax.axis_index("n")
  i = jax.lax.axis_index("m")
  rows = pl.ds(j * bn, bn)
  cols = pl.ds(i * bm, bm)
  if t.split > 1:                      # this program's share of K, and its partial's plane
    kc = jax.lax.axis_index("k")
    first, o_gmem = kc * n_steps, o_gmem.at[kc]
  else:
    first = 0

  def fetch(step, slot):
    ks = pl.ds((first + step) * r, r)
    bar = bars.at[slot]
    plgpu.copy_gmem_to_smem(w_gmem.at[:, rows, ks], w_smem.at[slot], bar)
    plgpu.copy_gmem_to_smem(m_gmem.at[rows, ks], m_smem.at[slot], bar)
    plgpu.copy_gmem_to_smem(x_gmem.at[:, ks, cols], x_smem.at[slot], bar)

  if fuse_a:
    plgpu.copy_gmem_to_smem(a_gmem.at[j], a_smem, a_bar.at[0])
  for s in range(min(stages, n_steps)):
    fetch(s, s)

  def scope(acc):
    def step(tk, carry):
      slot = tk % stages
      if t.overlap:
        # each wgmma is its own group: leaving 8 in flight lets step tk - 1's run on, while
        # step tk - 2's, which read slot tiles tk % 2 and ring slot (tk - 2) % stages, are done
        plgpu.wgmma_wait(8)
        back, tiles = 2, slots.at[tk % 2]
      else:
        plgpu.wgmma_wait(0)            # step tk - 1's wgmmas read the slot tiles and its x
        back, tiles = 1, slots

      @pl.when(jnp.logical_and(tk >= back, tk - back + stages < n_steps))
      def _refill():                   # before the wait: with one stage it is this step's
        fetch(tk - back + stages, (tk - back) % stages)

      plgpu.barrier_wait(bars.at[slot])
      _expand_slots(w_smem.at[slot], m_smem.at[slot], tiles, dtype)
      plgpu.commit_smem()
      for s in range(8):
        plgpu.wgmma(acc, tiles.at[s], x_smem.at[slot, s])
      return carry

    jax.lax.fori_loop(0, n_steps, step, None)
    plgpu.wgmma_wait(0)
    return acc[...]

  u = pl.run_scoped(scope, plgpu.ACC((bn, bm), jnp.float32))
  if fuse_a:
    u_smem[...] = u.astype(dtype)
    plgpu.commit_smem()
    plgpu.barrier_wait(a_bar.at[0])

    def a_scope(acc):
      plgpu.wgmma(acc, a_smem, u_smem)
      plgpu.wgmma_wait(0)
      return acc[...]

    u = pl.run_scoped(a_scope, plgpu.ACC((bn, bm), jnp.float32))
  o_smem[...] = u.astype(o_smem.dtype)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[rows, cols])
  plgpu.wait_smem_to_gmem(0)


def sparse_mgpu_t(xp: jax.Array, words: jax.Array, meta: jax.Array, *, tiles: MgpuTiles,
                  out_dtype, a: jax.Array | None = None, interpret=None) -> jax.Array:
  """The sparse kernel on prepared operands: ``y.T`` (N, M_pad), or ``(y @ A.T).T`` with ``a``.

  With ``tiles.split > 1`` the result is the (split, N, M_pad) stack of f32 partial sums
  over K (their sum is ``y.T``), and ``a`` must be None: A cannot act before the partials
  are added.

  Args:
    xp: (8, K/8, M_pad) activations in the compute dtype (:func:`_xp`).
    words: (2, N, K/8) uint32 (:func:`mgpu_words`).
    meta: (N, K/8) uint8, as stored.
    tiles: :class:`MgpuTiles` dividing the problem (``bn`` = A's block with ``a``).
    out_dtype: dtype of the result (f32 keeps the accumulator).
    a: optional (N / bn, bn, bn) blocks of A in the compute dtype (fused epilogue).
    interpret: None (compile for the GPU) or :func:`interpret_params`.

  Returns:
    (N, M_pad) in ``out_dtype``, or (split, N, M_pad) f32 partials when ``tiles.split > 1``.
  """
  _, kr, m_pad = xp.shape
  n = meta.shape[0]
  dtype = xp.dtype
  tiles.check(m_pad, n, 8 * kr)
  if a is not None and a.shape[-1] != tiles.bn:
    raise ValueError(f"a fused A needs bn == A's block ({a.shape[-1]}); got bn={tiles.bn}")
  split = tiles.split
  if split > 1 and a is not None:
    raise ValueError("a fused A needs split == 1 (A acts on the sum of the K partials)")
  out_dtype = jnp.float32 if split > 1 else out_dtype
  bm, bn, r, stages = tiles.bm, tiles.bn, tiles.r, tiles.stages
  n_steps = kr // r // split
  stages = min(stages, n_steps)
  tiles = dataclasses.replace(tiles, stages=stages)
  sw = _mma_swizzle(dtype, bm, r)          # slot tiles (bn, r) x x tiles (r, bm)
  scratch = dict(
      x_smem=plgpu.SMEM((stages, 8, r, bm), dtype, transforms=_smem_transforms(dtype, bm, sw)),
      w_smem=plgpu.SMEM((stages, 2, bn, r), jnp.uint32,
                        transforms=_smem_transforms(jnp.uint32, r)),
      m_smem=plgpu.SMEM((stages, bn, r), jnp.uint8, transforms=_smem_transforms(jnp.uint8, r)),
      slots=plgpu.SMEM((2, 8, bn, r) if tiles.overlap else (8, bn, r), dtype,
                       transforms=_smem_transforms(dtype, r, sw)))
  if a is not None:
    sw_a = _mma_swizzle(dtype, bm, bn)      # A's block (bn, bn) x u (bn, bm)
    scratch.update(
        a_smem=plgpu.SMEM((bn, bn), dtype, transforms=_smem_transforms(dtype, bn, sw_a)),
        u_smem=plgpu.SMEM((bn, bm), dtype, transforms=_smem_transforms(dtype, bm, sw_a)))
  scratch.update(
      o_smem=plgpu.SMEM((bn, bm), out_dtype, transforms=_smem_transforms(out_dtype, bm)),
      bars=plgpu.Barrier(num_arrivals=3, num_barriers=stages))
  if a is not None:
    scratch.update(a_bar=plgpu.Barrier(num_arrivals=1, num_barriers=1))
  body = functools.partial(_sparse_body, t=tiles, n_steps=n_steps, fuse_a=a is not None,
                           dtype=dtype)
  operands = (xp, words, meta) + (() if a is None else (a,))
  grid, names, shape = (n // bn, m_pad // bm), ("n", "m"), (n, m_pad)
  if split > 1:
    grid, names, shape = grid + (split,), names + ("k",), (split,) + shape
  return plgpu.kernel(
      body, out_type=jax.ShapeDtypeStruct(shape, out_dtype), grid=grid, grid_names=names,
      scratch_types=scratch, interpret=interpret, kernel_name="sparse24_mgpu")(*operands)


def _blockdiag_body(x_gmem, d_gmem, o_gmem, *, b: int, bm: int, x_smem, d_smem, o_smem, bar):
  """One (b, bm) tile of ``z.T = D_g @ x_g.T``."""
  g = jax.lax.axis_index("g")
  i = jax.lax.axis_index("m")
  rows = pl.ds(g * b, b)
  cols = pl.ds(i * bm, bm)
  plgpu.copy_gmem_to_smem(d_gmem.at[g], d_smem, bar.at[0])
  plgpu.copy_gmem_to_smem(x_gmem.at[rows, cols], x_smem, bar.at[0])
  plgpu.barrier_wait(bar.at[0])

  def scope(acc):
    plgpu.wgmma(acc, d_smem, x_smem)
    plgpu.wgmma_wait(0)
    return acc[...]

  z = pl.run_scoped(scope, plgpu.ACC((b, bm), jnp.float32))
  o_smem[...] = z.astype(o_smem.dtype)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[rows, cols])
  plgpu.wait_smem_to_gmem(0)


def blockdiag_mgpu_t(xt: jax.Array, blocks: jax.Array, *, bm: int, out_dtype,
                     interpret=None) -> jax.Array:
  """``(x @ D.T).T`` for D = blockdiag(blocks), from ``xt = x.T`` (d, M_pad) in D's dtype.

  Grid (d / b, M_pad / bm), one wgmma per program; b must be a multiple of 64.
  """
  d, m_pad = xt.shape
  nb, b, _ = blocks.shape
  if nb * b != d or b % WG_M or m_pad % bm or bm % 8:
    raise ValueError(f"blockdiag_mgpu: blocks {blocks.shape} vs x.T {xt.shape}, bm={bm}")
  dtype = blocks.dtype
  sw = _mma_swizzle(dtype, bm, b)
  scratch = dict(x_smem=plgpu.SMEM((b, bm), dtype, transforms=_smem_transforms(dtype, bm, sw)),
                 d_smem=plgpu.SMEM((b, b), dtype, transforms=_smem_transforms(dtype, b, sw)),
                 o_smem=plgpu.SMEM((b, bm), out_dtype,
                                   transforms=_smem_transforms(out_dtype, bm)),
                 bar=plgpu.Barrier(num_arrivals=2, num_barriers=1))
  return plgpu.kernel(
      functools.partial(_blockdiag_body, b=b, bm=bm),
      out_type=jax.ShapeDtypeStruct((d, m_pad), out_dtype), grid=(nb, m_pad // bm),
      grid_names=("g", "m"), scratch_types=scratch, interpret=interpret,
      kernel_name="blockdiag_mgpu")(xt.astype(dtype), blocks)


# --------------------------------------------------------------------------------------------
# Entry points (called by armor_jax.kernels with impl="mosaic" / "mosaic_interpret")


def _round_up(v: int, mult: int) -> int:
  return -(-v // mult) * mult


def _k_multiple() -> int:
  """K padding: whole K steps (32 meta bytes, the narrowest swizzled uint8 tile)."""
  return 8 * STEP_R


def _bm_blockdiag(m: int) -> int:
  return 16 if m <= 16 else 64


def _sparse_t(z: jax.Array, core, *, tiles: MgpuTiles | None, out_dtype,
              a: jax.Array | None, interpret) -> jax.Array:
  """``(z @ S.T).T`` (or ``A @`` it) on 2-D z (M, K_core); (N, M) after unpadding.

  ``core`` is a :class:`~armor_jax.solver.sparsity.Packed24` (padded and regrouped on every
  call) or :class:`MgpuPacked`. A is fused into the kernel when the tiles have no split; with
  split-K the partials are added by XLA, rounded to the compute dtype (as the fused epilogue
  rounds its tile) and multiplied by A in :func:`blockdiag_mgpu_t`.
  """
  m = z.shape[0]
  n, k = core.shape
  bn = WG_M if a is None else a.shape[-1]
  k_mult = _k_multiple() if tiles is None else 8 * tiles.r * tiles.split
  core = _as_prepared(core, bn if tiles is None else tiles.bn, k_mult)
  n_pad, kr = core.meta.shape
  tiles = tiles or default_tiles(m, n_pad, 8 * kr, block_a=None if a is None else bn)
  m_pad = _round_up(m, tiles.bm)
  dtype = jnp.dtype(core.dtype)
  xp = _xp(_pad_cols(z, 8 * kr), m_pad, dtype)
  fused = a if tiles.split == 1 else None
  yt = sparse_mgpu_t(xp, core.words, core.meta, tiles=tiles, out_dtype=out_dtype, a=fused,
                     interpret=interpret)
  if tiles.split > 1:
    yt = yt.sum(0)
    if a is not None:
      yt = blockdiag_mgpu_t(yt.astype(dtype), a, bm=tiles.bm, out_dtype=jnp.float32,
                            interpret=interpret)
  return yt[:n, :m].astype(out_dtype)


def _pad_core(core: sparsity.Packed24, n_to: int, k_to: int) -> sparsity.Packed24:
  from armor_jax import kernels  # pylint: disable=import-outside-toplevel
  return kernels.pad_packed(core, n_to, k_to)


def _pad_cols(x: jax.Array, size: int) -> jax.Array:
  return x if x.shape[-1] == size else jnp.pad(x, ((0, 0), (0, size - x.shape[-1])))


def sparse24_matmul(x: jax.Array, packed, *, tiles: MgpuTiles | None = None,
                    interpret=None) -> jax.Array:
  """``x @ S.T`` through the Mosaic GPU sparse kernel; (..., N) in ``x.dtype``.

  A :class:`~armor_jax.solver.sparsity.Packed24` is padded (N to 64, K to 256, zero weights)
  and regrouped into words on every call (one pass over the values); :func:`prepare` does it
  once. x is cast to the values' dtype (bf16 or fp16), products accumulate in f32.

  Args:
    x: (..., K) activations.
    packed: the compressed (N, K) matrix, 16-bit values, or its :class:`MgpuPacked` form.
    tiles: :class:`MgpuTiles` (default :func:`default_tiles`).
    interpret: None (compile for the GPU) or :func:`interpret_params`.
  """
  n, k = packed.shape
  x2 = x.reshape(-1, k)
  yt = _sparse_t(x2, packed, tiles=tiles, out_dtype=jnp.float32, a=None, interpret=interpret)
  return yt.T.astype(x.dtype).reshape(x.shape[:-1] + (n,))


def fusable(block: int | None) -> bool:
  """Whether a wrapper block runs in a kernel here: 64 or 128 (wgmma M; shared memory)."""
  return block is not None and block in (WG_M, 2 * WG_M)


def blockdiag_matmul(x: jax.Array, blocks: jax.Array, in_scale: jax.Array | None = None,
                     out_scale: jax.Array | None = None, *, interpret=None) -> jax.Array:
  """``((x * in_scale) @ D.T) * out_scale`` through :func:`blockdiag_mgpu_t`; ``x.dtype`` out.

  The scales are applied by XLA in the operand and result transposes; blocks must be
  :func:`fusable`.
  """
  if not fusable(blocks.shape[-1]):
    raise ValueError(f"the Mosaic GPU block-diagonal kernel needs blocks of 64 or 128; got "
                     f"{blocks.shape[-1]} (use impl='reference')")
  d = x.shape[-1]
  x2 = x.reshape(-1, d)
  m = x2.shape[0]
  z = x2 if in_scale is None else x2.astype(jnp.float32) * in_scale
  bm = _bm_blockdiag(m)
  zt = jnp.pad(z.astype(blocks.dtype), ((0, _round_up(m, bm) - m), (0, 0))).T
  y = blockdiag_mgpu_t(zt, blocks, bm=bm, out_dtype=jnp.float32, interpret=interpret)[:, :m].T
  if out_scale is not None:
    y = y * out_scale
  return y.astype(x.dtype).reshape(x.shape)


def armor_linear(x: jax.Array, w, *, tiles: MgpuTiles | None = None, interpret=None) -> jax.Array:
  """``x @ W_hat.T`` for prepared :class:`~armor_jax.kernels.ArmorWeights`, Mosaic GPU kernels.

  The B stage runs as :func:`blockdiag_mgpu_t` (``c`` folded into its operand), the 2:4
  kernel fuses A when its block is a multiple of 64 (:func:`fusable`), ``r`` is applied in the
  result's transpose; rounding as in :func:`armor_jax.kernels.armor_reference` (``z`` and
  ``u`` in the compute dtype). Wrappers whose blocks are not fusable run as XLA einsums.

  Args:
    x: (..., d_in) activations.
    w: :class:`~armor_jax.kernels.ArmorWeights` with 16-bit values.
    tiles: sparse-kernel tiles (default :func:`default_tiles`, ``bn`` = A's block when fused).
    interpret: None (compile for the GPU) or :func:`interpret_params`.

  Returns:
    (..., d_out) in ``x.dtype``.
  """
  from armor_jax import kernels  # pylint: disable=import-outside-toplevel
  dt = w.dtype
  x2 = x.reshape(-1, w.d_in)
  m = x2.shape[0]
  c = None if w.col_scale is None else w.col_scale[:w.d_in]
  r = None if w.row_scale is None else w.row_scale[:w.d_out]
  z = x2 if c is None else x2.astype(jnp.float32) * c
  if w.b is not None and fusable(w.b.shape[-1]):
    bm = _bm_blockdiag(m)
    zt = jnp.pad(z.astype(dt), ((0, _round_up(m, bm) - m), (0, 0))).T
    z = blockdiag_mgpu_t(zt, w.b, bm=bm, out_dtype=dt, interpret=interpret)[:, :m].T
  elif w.b is not None:
    z = kernels.blockdiag_reference(x2, w.b, c)
  fuse_a = w.a is not None and fusable(w.a.shape[-1])
  ut = _sparse_t(z.astype(dt), w.core, tiles=tiles, out_dtype=jnp.float32,
                 a=w.a if fuse_a else None, interpret=interpret)[:w.d_out]
  u = ut.T
  if w.a is not None and not fuse_a:
    u = kernels.blockdiag_reference(u, w.a, None, r)
  elif r is not None:
    u = u * r
  return u.astype(x.dtype).reshape(x.shape[:-1] + (w.d_out,))
