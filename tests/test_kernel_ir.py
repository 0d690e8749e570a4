"""What the Pallas kernels lower to for CUDA, checked on CPU: every tile choice, the benchmark
shapes, and the facts their speed rests on.

Lowering for CUDA runs Pallas's Triton lowering in Python (sm_90, no GPU). These tests lower the
kernels the way a user's program does (``jax.jit(...).lower`` and ``jax.export``), at the
shapes the benchmark times and at every tile configuration :func:`armor_jax.kernels.default_tiles`
can pick, and pin from the Triton IR what the design relies on (module docstring of
:mod:`armor_jax.kernels`): 16-bit dot inputs with f32 accumulation, no f32 upcast on the path of
any weight operand (2:4 tile, A or B block), the dot and block shapes of the chosen tiles, and
the warps and stages XLA launches with. A control kernel shows the reader catches an upcast.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armor_jax import kernel_ir, kernels
from armor_jax.solver import sparsity

DTYPES = {"bfloat16": "bf16", "float16": "f16"}
#: The benchmark's layer shapes (d_out x d_in) and batches (decode 1 and 16, prefill 2048).
BENCH_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))
BENCH_BATCHES = (1, 16, 2048)
BLOCK = 128     # ArmorConfig's default block size, the benchmark's
KINDS = ("sparse24", "armor", "armor_fused_b")


def _packed(n: int, k: int, dtype) -> sparsity.Packed24:
  """The abstract (shape-only) compressed 2:4 matrix of an (n, k) weight."""
  w = jax.ShapeDtypeStruct((n, k), dtype)
  return jax.eval_shape(lambda w: sparsity.pack(w, sparsity.mask_from_scores(
      w.astype(jnp.float32))), w)


def _armor(n: int, k: int, block: int, dtype) -> kernels.ArmorWeights:
  """Abstract prepared ARMOR weights: core, f32 scales, A and B blocks in the compute dtype."""
  s = jax.ShapeDtypeStruct
  return kernels.ArmorWeights(core=_packed(n, k, dtype), col_scale=s((k,), jnp.float32),
                              row_scale=s((n,), jnp.float32), a=s((n // block, block, block), dtype),
                              b=s((k // block, block, block), dtype), d_out=n, d_in=k)


def _lower(kind: str, m: int, n: int, k: int, *, dtype=jnp.bfloat16, block: int = BLOCK,
           tiles: kernels.Tiles | None = None, via: str = "jit"):
  """Lowers one kernel product; returns (lowered, the sparse kernel's effective tiles, weights)."""
  x = jax.ShapeDtypeStruct((m, k), dtype)
  if kind == "sparse24":
    w = _packed(n, k, dtype)
    tiles = tiles or kernels.default_tiles(m, n, k)
    return kernel_ir.lower_for_cuda(kernels.sparse24_matmul, x, w, via=via, impl="pallas",
                                    tiles=tiles), tiles, w
  w = _armor(n, k, block, dtype)
  if kind == "armor_fused_b":
    tiles = dataclasses.replace(tiles or kernels.default_tiles(m, n, k, block_a=block),
                                fuse_b=True)
  lowered = kernel_ir.lower_for_cuda(kernels.armor_linear, x, w, via=via, impl="pallas",
                                     tiles=tiles)
  return lowered, kernels.armor_tiles(m, w, tiles), w


def _check_sparse(kern: kernel_ir.Kernel, t: kernels.Tiles, m: int, n: int, k: int, dt: str, *,
                  fused_a: bool, block_b: int | None, where: str):
  """The sparse kernel's grid, launch, blocks and dots are those of tiles ``t``."""
  ks = k // t.split_k
  assert kern.grid == (math.ceil(m / t.bm), n // t.bn, t.split_k), where
  assert (kern.num_warps, kern.num_stages) == (t.num_warps, t.num_stages), where
  if kern.launch is not None:          # what XLA launches with (jaxlib <= 0.10.2 carries it)
    assert kern.launch == {"grid_x": kern.grid[0], "grid_y": kern.grid[1], "grid_z": kern.grid[2],
                           "num_warps": t.num_warps, "num_stages": t.num_stages}, where
  assert kern.block_shapes[:3] == ((t.bm, ks), (t.bn, ks // 2), (t.bn, ks // 8)), where
  w = block_b if t.fuse_b else t.bk
  units = t.bk // w
  # the K loop body: `units` sub-tiles, each a B dot when B is fused and a 2:4 dot; then A
  assert len(kern.dots) == units * (2 if t.fuse_b else 1) + (1 if fused_a else 0), where
  assert sum(d.mnk == (t.bm, t.bn, w) for d in kern.dots) >= units, where
  assert kernel_ir.Operand((t.bn, w // 2), dt) in kern.loads, where      # kept values
  assert kernel_ir.Operand((t.bn, w // 8), "i8") in kern.loads, where    # 2-bit positions
  if fused_a:
    assert kern.dots[-1].mnk == (t.bm, t.bn, t.bn), where


def _check_dots(kern: kernel_ir.Kernel, dt: str, where: str):
  """16-bit inputs, f32 accumulation, no f32 upcast on a weight operand's path."""
  assert kern.dots, where
  for d in kern.dots:
    assert (d.lhs.dtype, d.rhs.dtype, d.out.dtype) == (dt, dt, "f32"), f"{where}: {d}"
    assert not d.rhs_upcast, f"{where}: the weight operand is upcast to f32 before {d}"


def _check(kind: str, lowered: kernel_ir.Lowered, t: kernels.Tiles, w, m: int, dtype):
  """Every pin for one lowered product of ``kind``."""
  dt = DTYPES[jnp.dtype(dtype).name]
  n, k = (w.shape if kind == "sparse24" else w.core.shape)
  where = f"{kind} m={m} (N, K)=({n}, {k}) via {lowered.via} tiles={t}"
  for kern in lowered.kernels:
    _check_dots(kern, dt, where)
  if kind == "sparse24":
    [kern] = lowered.kernels
    assert kern.name == "sparse24_matmul"
    _check_sparse(kern, t, m, n, k, dt, fused_a=False, block_b=None, where=where)
    assert not any(d.lhs_upcast for d in kern.dots), where   # x is 16-bit already
    return
  block = w.a.shape[-1]
  names = [kern.name for kern in lowered.kernels]
  if t.fuse_b:
    assert names == ["sparse24_matmul"], where
  else:                                # the B pre-pass, then the sparse kernel with A fused
    assert names == ["blockdiag_matmul", "sparse24_matmul"], where
    pre = lowered.kernels[0]
    bm = kernels._bm_for(m)  # pylint: disable=protected-access
    assert pre.grid == (math.ceil(m / bm), k // block) and pre.num_stages == 1, where
    assert [d.mnk for d in pre.dots] == [(bm, block, block)], where
  _check_sparse(lowered.kernels[-1], t, m, n, k, dt, fused_a=True, block_b=block, where=where)


@pytest.mark.parametrize("via", ["jit", "export"])
@pytest.mark.parametrize("kind", KINDS)
def test_kernels_lower_and_keep_their_design_at_a_benchmark_shape(kind, via):
  """Fast tier: decode at 4096 x 14336, each kernel, through jit and through jax.export."""
  m, (n, k) = 1, BENCH_SHAPES[1]
  lowered, t, w = _lower(kind, m, n, k, via=via)
  _check(kind, lowered, t, w, m, jnp.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("via", ["jit", "export"])
@pytest.mark.parametrize("m", BENCH_BATCHES)
@pytest.mark.parametrize("n, k", BENCH_SHAPES, ids=[f"{n}x{k}" for n, k in BENCH_SHAPES])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kernel_lowers_at_every_benchmark_shape(kind, n, k, m, via):
  lowered, t, w = _lower(kind, m, n, k, via=via)
  _check(kind, lowered, t, w, m, jnp.bfloat16)


def test_half_precision_kernels_keep_f16_dots():
  """fp16 weights: the same design with f16 dot inputs (the benchmark's other dtype)."""
  for kind in KINDS:
    lowered, t, w = _lower(kind, 16, 256, 512, dtype=jnp.float16, block=32)
    _check(kind, lowered, t, w, 16, jnp.float16)


# --------------------------------------------------------------------------------------------
# Every tile configuration default_tiles can pick

_PROBE_BATCHES = (1, 8, 16, 17, 64, 256, 257, 2048)
_PROBE_DIMS = tuple(sorted({16 * j for j in range(1, 65)} | {4096, 8192, 8208, 8224, 11008,
                                                             14336, 16384, 16448, 28672}))
_BLOCKS = (None, 16, 32, 64, 128, 256)


def _tile_key(t: kernels.Tiles, block: int | None, fuse_b: bool):
  """What decides a kernel's IR: tile shapes, launch settings and the fused stages
  (``split_k`` only changes the grid and the loop's trip count)."""
  return (t.bm, t.bn, t.bk, t.num_warps, t.num_stages, block, fuse_b)


def _probe() -> dict:
  """key -> the first (m, n, k) where default_tiles picks it, over shapes that reach every
  branch of the heuristic (divisibility of n and k by 16 .. 512 and beyond, n // bn around
  the program target, decode / mid / prefill batches, each fusable A block, B fused or not)."""
  found = {}
  for block in _BLOCKS:
    for m in _PROBE_BATCHES:
      for n in _PROBE_DIMS:
        for k in _PROBE_DIMS:
          if block and (n % block or k % block):
            continue
          for fuse_b in ((False,) if block is None else (False, True)):
            t = kernels.default_tiles(m, n, k, block_a=block, fuse_b=fuse_b)
            found.setdefault(_tile_key(t, block, fuse_b), (m, n, k))
  return found


PROBED = _probe()


@settings(max_examples=300, deadline=None)
@given(m=st.integers(1, 8192), n16=st.integers(1, 4096), k16=st.integers(1, 4096),
       block=st.sampled_from(_BLOCKS), fuse_b=st.booleans())
def test_the_lowered_tile_set_covers_every_default_choice(m, n16, k16, block, fuse_b):
  """Any shape's default tiles are among those the lowering test below compiles."""
  n, k = 16 * n16, 16 * k16
  if block:
    n, k = block * -(-n // block), block * -(-k // block)
  fuse_b = fuse_b and block is not None
  t = kernels.default_tiles(m, n, k, block_a=block, fuse_b=fuse_b)
  assert _tile_key(t, block, fuse_b) in PROBED, (m, n, k, block, t)


@pytest.mark.slow
def test_every_tile_configuration_default_tiles_picks_lowers():
  failures = []
  for (bm, bn, bk, warps, stages, block, fuse_b), (m, n, k) in sorted(
      PROBED.items(), key=lambda kv: str(kv)):
    kind = "sparse24" if block is None else ("armor_fused_b" if fuse_b else "armor")
    try:
      lowered, t, w = _lower(kind, m, n, k, block=block or BLOCK)
      _check(kind, lowered, t, w, m, jnp.bfloat16)
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f"{kind} m={m} (N, K)=({n}, {k}) tiles=(bm={bm}, bn={bn}, bk={bk}, "
                      f"warps={warps}, stages={stages}, block={block}): "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
  assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------------------------
# The reader can fail


def test_the_reader_sees_an_f32_upcast_of_the_weight_tile():
  """Control: a kernel that widens its weight tile to f32 before the dot is caught."""
  def upcast_kernel(x_ref, w_ref, o_ref):
    o_ref[...] = jax.lax.dot_general(x_ref[...].astype(jnp.float32),
                                     w_ref[...].astype(jnp.float32), (((1,), (1,)), ((), ())),
                                     preferred_element_type=jnp.float32)

  def product(x, w):
    return kernels.pl.pallas_call(
        upcast_kernel, out_shape=jax.ShapeDtypeStruct((16, 32), jnp.float32), grid=(1,),
        in_specs=[kernels.pl.BlockSpec((16, 64), lambda i: (0, 0)),
                  kernels.pl.BlockSpec((32, 64), lambda i: (0, 0))],
        out_specs=kernels.pl.BlockSpec((16, 32), lambda i: (0, 0)),
        compiler_params=kernels.pltriton.CompilerParams(num_warps=2, num_stages=2))(x, w)

  lowered = kernel_ir.lower_for_cuda(product, jax.ShapeDtypeStruct((16, 64), jnp.bfloat16),
                                     jax.ShapeDtypeStruct((32, 64), jnp.bfloat16))
  [kern] = lowered.kernels
  [dot] = kern.dots
  assert dot.rhs_upcast and dot.lhs_upcast and dot.rhs.dtype == "f32"
  assert (kern.num_warps, kern.num_stages) == (2, 2)
  with pytest.raises(AssertionError):
    _check_dots(kern, "bf16", "control")


def test_the_block_diagonal_kernel_lowers_with_both_scales():
  """The standalone block-diagonal product (scales on both sides, masked decode rows)."""
  s = jax.ShapeDtypeStruct
  lowered = kernel_ir.lower_for_cuda(
      kernels.blockdiag_matmul, s((3, 4096), jnp.bfloat16), s((32, BLOCK, BLOCK), jnp.bfloat16),
      s((4096,), jnp.float32), s((4096,), jnp.float32), via="export", impl="pallas")
  [kern] = lowered.kernels
  assert kern.name == "blockdiag_matmul" and kern.grid == (1, 32) and kern.num_stages == 1
  _check_dots(kern, "bf16", "blockdiag_matmul")
  assert [d.mnk for d in kern.dots] == [(16, BLOCK, BLOCK)]
