"""The 2:4 / block-diagonal / ARMOR kernels, run by Pallas's interpreter on CPU.

Every kernel result is compared with the plain-JAX path and with a float64
NumPy product of the same (rounded) operands, on fresh random inputs, with the
output buffer poisoned with NaN first (an unwritten element stays NaN), on
ragged shapes (padded) and decode/prefill tilings with split-K. What the kernels
lower to for CUDA is checked in tests/test_kernel_ir.py. Sizes are tiny:
interpret mode is slow.
"""

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from armor_jax import kernels
from armor_jax.solver import sparsity
from armor_jax.solver.layer import PrunedLayer

F64 = np.float64
#: Kernel modes under test: the interpreter everywhere, the compiled kernels too on a GPU.
ON_GPU = jax.default_backend() == "gpu"
IMPLS = ["interpret"] + (["pallas"] if ON_GPU else [])


def _rng(request):
  """A fresh generator per test, seeded from the test's name (reproducible, not shared)."""
  return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# helpers jitted whole: one compile per shape instead of one per eager op
_pack = jax.jit(lambda w, score: sparsity.pack(w, sparsity.mask_from_scores(score)))
_unpack = jax.jit(lambda p: sparsity.unpack(p)[0].astype(jnp.float32))
_apply = jax.jit(PrunedLayer.apply)


def _packed(rng, n, k, dtype):
  w = jnp.asarray(rng.standard_normal((n, k)), jnp.float32).astype(dtype)
  return _pack(w, jnp.asarray(rng.random((n, k)), jnp.float32))


def _dense64(packed):
  return np.asarray(_unpack(packed), F64)


def _blockdiag64(blocks):
  return scipy.linalg.block_diag(*np.asarray(jnp.asarray(blocks).astype(jnp.float32), F64))


def _x(rng, m, k, dtype=jnp.float32):
  return jnp.asarray(rng.standard_normal((m, k)), jnp.float32).astype(dtype)


def _rel(a, b):
  a, b = np.asarray(a, F64), np.asarray(b, F64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _poison(shape, dtype):
  return jnp.full(shape, jnp.nan, dtype)


def test_expand_tile_is_unpack(request):
  """The in-kernel expansion (split/join/select only) equals sparsity.unpack, exactly."""
  rng = _rng(request)
  p = _packed(rng, 8, 64, jnp.bfloat16)
  tile = kernels.expand_tile(p.values, p.meta)
  np.testing.assert_array_equal(np.asarray(tile, F64), _dense64(p))


# (m, n, k, values dtype, tiles or None for the default): decode with split-K, ragged N and K
# (padded to 16s), a prefill tiling with masked rows
SPARSE_CASES = [
    (1, 64, 256, jnp.bfloat16, kernels.Tiles(bm=16, bn=32, bk=64, split_k=2)),
    (5, 40, 84, jnp.float16, None),
    (37, 64, 128, jnp.bfloat16, None),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m, n, k, dtype, tiles", SPARSE_CASES,
                         ids=[f"m{c[0]}_n{c[1]}_k{c[2]}" for c in SPARSE_CASES])
def test_sparse24_kernel_matches_references(request, m, n, k, dtype, tiles, impl):
  rng = _rng(request)
  p = _packed(rng, n, k, dtype)
  x = _x(rng, m, k)                    # f32 in: the kernel rounds x to `dtype`, f32 out
  y = kernels.sparse24_matmul(x, p, impl=impl, tiles=tiles)
  y_ref = kernels.sparse24_matmul(x, p, impl="reference")
  exact = np.asarray(x.astype(dtype), F64) @ _dense64(p).T
  assert y.shape == (m, n) and y.dtype == x.dtype
  assert np.all(np.isfinite(np.asarray(y)))
  # products of 16-bit values are exact in f32; only the summation order differs (tensor
  # cores may round their f32 sums a little differently, hence the looser GPU bound)
  tol = 1e-5 if impl == "interpret" else 1e-4
  assert _rel(y, exact) < tol
  assert _rel(y, y_ref) < tol


@pytest.mark.parametrize("impl", IMPLS)
def test_sparse24_kernel_writes_every_element(request, impl):
  """Raw kernel output over a NaN-poisoned buffer: split partials and the masked row tile."""
  rng = _rng(request)
  m, n, k = 3, 64, 256
  p = _packed(rng, n, k, jnp.bfloat16)
  x = _x(rng, m, k, jnp.bfloat16)
  exact = np.asarray(x, F64) @ _dense64(p).T
  for tiles in (kernels.Tiles(bm=16, bn=32, bk=32, split_k=4),
                kernels.Tiles(bm=16, bn=16, bk=128, split_k=1)):
    sk = tiles.split_k
    shape, dt = ((sk, m, n), jnp.float32) if sk > 1 else ((m, n), jnp.float32)
    raw = kernels._sparse_call(x, p, tiles=tiles, out_dtype=jnp.float32,
                               interpret=impl == "interpret", init=_poison(shape, dt))
    assert raw.shape == (m, n) and np.all(np.isfinite(np.asarray(raw))), tiles
    assert _rel(raw, exact) < (1e-5 if impl == "interpret" else 1e-4)


def test_poison_is_visible(request):
  """Control: a grid that skips the second column tile leaves NaN where it did not write."""
  rng = _rng(request)
  p = _packed(rng, 32, 64, jnp.bfloat16)
  x = _x(rng, 16, 64, jnp.bfloat16)
  half = sparsity.Packed24(values=p.values[:16], meta=p.meta[:16], d_in=64)
  init = _poison((16, 32), jnp.float32)
  # run the kernel on the first 16 rows only, writing into a (16, 32) buffer
  raw = jax.jit(lambda x, v, mt, init: kernels.pl.pallas_call(
      lambda *r: kernels._sparse_kernel(*r, bk=64, bb=None, n_steps=1, m=16, bm=16,
                                        has_c=False, has_b=False, has_a=False, has_r=False,
                                        has_init=True, mask_rows=False),
      out_shape=jax.ShapeDtypeStruct((16, 32), jnp.float32), grid=(1, 1),
      in_specs=[kernels.pl.BlockSpec((16, 64), lambda i, j: (0, 0)),
                kernels.pl.BlockSpec((16, 32), lambda i, j: (0, 0)),
                kernels.pl.BlockSpec((16, 8), lambda i, j: (0, 0)),
                kernels.pl.BlockSpec((16, 16), lambda i, j: (0, 0))],
      out_specs=kernels.pl.BlockSpec((16, 16), lambda i, j: (0, 0)),
      input_output_aliases={3: 0}, interpret=True)(x, v, mt, init))(
          x, half.values, half.meta, init)
  raw = np.asarray(raw)
  assert np.all(np.isfinite(raw[:, :16])) and np.all(np.isnan(raw[:, 16:]))


@pytest.mark.parametrize("impl", IMPLS)
def test_blockdiag_kernel_matches_references(request, impl):
  rng = _rng(request)
  m, nb, b = 3, 4, 16
  blocks = jnp.asarray(rng.standard_normal((nb, b, b)), jnp.float32).astype(jnp.bfloat16)
  x = _x(rng, m, nb * b)
  s_in = jnp.asarray(rng.uniform(0.5, 2, nb * b), jnp.float32)
  s_out = jnp.asarray(rng.uniform(0.5, 2, nb * b), jnp.float32)
  raw = kernels._blockdiag_call(x, blocks, in_scale=s_in, out_scale=s_out,
                                out_dtype=jnp.float32, interpret=impl == "interpret", bm=16,
                                init=_poison((m, nb * b), jnp.float32))
  y = kernels.blockdiag_matmul(x, blocks, s_in, s_out, impl=impl)
  y_ref = kernels.blockdiag_matmul(x, blocks, s_in, s_out, impl="reference")
  z = np.asarray((x * s_in).astype(jnp.bfloat16), F64)
  exact = (z @ _blockdiag64(blocks).T) * np.asarray(s_out, F64)
  assert np.all(np.isfinite(np.asarray(raw)))
  for out in (raw, y, y_ref):
    assert _rel(out, exact) < (1e-5 if impl == "interpret" else 1e-4)


def _armor_layer(rng, n, k, block):
  """A random ARMOR-shaped layer: 2:4 core, A and B blocks near identity, positive scales."""
  p = _packed(rng, n, k, jnp.float32)
  a, b = (jnp.asarray(np.eye(block) + 0.3 * rng.standard_normal((d // block, block, block)),
                      jnp.float32) for d in (n, k))
  return PrunedLayer(p, jnp.asarray(rng.uniform(0.5, 2, n), jnp.float32),
                     jnp.asarray(rng.uniform(0.5, 2, k), jnp.float32), a, b, method="armor")


def _armor_exact(x, w: kernels.ArmorWeights):
  """float64 product with the prepared (rounded) weights, no intermediate rounding."""
  f = lambda v: np.asarray(jnp.asarray(v).astype(jnp.float32), F64)  # noqa: E731
  s = _dense64(w.core)[:w.d_out, :w.d_in]
  c = np.ones(w.d_in) if w.col_scale is None else f(w.col_scale)[:w.d_in]
  r = np.ones(w.d_out) if w.row_scale is None else f(w.row_scale)[:w.d_out]
  a = np.eye(w.d_out) if w.a is None else _blockdiag64(w.a)
  b = np.eye(w.d_in) if w.b is None else _blockdiag64(w.b)
  w_hat = r[:, None] * (a @ s @ b) * c[None, :]
  return f(x) @ w_hat.T


# (m, n, k, block, fuse_b): fused A with the B pre-pass, fused A and B, blocks that are not a
# power of two (both wrappers fall back to XLA einsums; N and K padded to 32 and 80)
ARMOR_CASES = [(2, 64, 128, 16, False), (20, 32, 64, 16, True), (3, 24, 72, 24, False)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m, n, k, block, fuse_b", ARMOR_CASES,
                         ids=[f"m{c[0]}_n{c[1]}_k{c[2]}_b{c[3]}_fuseb{c[4]}" for c in ARMOR_CASES])
def test_armor_linear_matches_references(request, m, n, k, block, fuse_b, impl):
  rng = _rng(request)
  layer = _armor_layer(rng, n, k, block)
  w = kernels.prepare(layer, jnp.bfloat16)
  x = _x(rng, m, k)
  tiles = None
  if fuse_b:
    tiles = dataclasses.replace(kernels.default_tiles(m, n, k, block_a=block), fuse_b=True)
  y = kernels.armor_linear(x, w, impl=impl, tiles=tiles)
  y_ref = kernels.armor_linear(x, w, impl="reference")
  assert y.shape == (m, n) and np.all(np.isfinite(np.asarray(y)))
  # the kernel rounds where the reference rounds (z and u to bf16): equal up to a rare ulp
  assert _rel(y, y_ref) < 2e-3
  # bf16 intermediates against an unrounded float64 product, and the layer's own f32 apply
  assert _rel(y, _armor_exact(x, w)) < 1e-2
  assert _rel(y, _apply(layer, x)) < 2e-2


def test_armor_linear_takes_a_pruned_layer_and_batch_dims(request):
  rng = _rng(request)
  layer = _armor_layer(rng, 32, 64, 16)
  x = _x(rng, 6, 64).reshape(2, 3, 64)
  # f32 compute (the core's dtype); full f32 products, which a GPU's default (TF32) is not
  with jax.default_matmul_precision("float32"):
    y = kernels.armor_linear(x, layer, impl="reference")
    y_layer = _apply(layer, x)
  assert y.shape == (2, 3, 32)
  assert _rel(y, y_layer) < 1e-5
  y16 = kernels.armor_linear(x, layer, impl="reference", dtype=jnp.bfloat16)
  assert _rel(y16, y_layer) < 2e-2


def test_wrapper_free_layer_drops_unit_scales_and_runs(request):
  """A baseline layer (no A, B; unit scales) prepares to a bare core and runs through the kernel."""
  rng = _rng(request)
  p = _packed(rng, 32, 64, jnp.float32)
  layer = PrunedLayer(p, jnp.ones(32), jnp.ones(64), method="wanda")
  w = kernels.prepare(layer, jnp.bfloat16)
  assert w.a is None and w.b is None and w.col_scale is None and w.row_scale is None
  x = _x(rng, 4, 64)
  y = kernels.armor_linear(x, w, impl="interpret")
  assert _rel(y, kernels.sparse24_matmul(x, w.core, impl="reference")) < 1e-5


def test_auto_dispatch_and_bad_inputs_raise(request):
  rng = _rng(request)
  p = _packed(rng, 16, 32, jnp.bfloat16)
  x = _x(rng, 2, 32)
  auto = kernels.resolve_impl("auto")
  hopper = kernels.is_hopper(kernels.device_kind())
  assert auto == (("mosaic" if hopper else "pallas") if ON_GPU else "reference")
  np.testing.assert_array_equal(kernels.sparse24_matmul(x, p),
                                kernels.sparse24_matmul(x, p, impl=auto))
  with pytest.raises(ValueError, match="impl must be one of"):
    kernels.sparse24_matmul(x, p, impl="cuda")
  with pytest.raises(ValueError, match="x has 31 columns"):
    kernels.sparse24_matmul(x[:, :31], p, impl="interpret")
  with pytest.raises(ValueError, match="do not divide"):
    kernels.sparse24_matmul(x, p, impl="interpret", tiles=kernels.Tiles(bm=16, bn=32, bk=32))
  with pytest.raises(ValueError, match="power of two"):
    kernels.sparse24_matmul(x, p, impl="interpret", tiles=kernels.Tiles(bm=16, bn=16, bk=24))
  with pytest.raises(ValueError, match="power of two in"):
    kernels.blockdiag_matmul(x[:, :24], jnp.ones((1, 24, 24), jnp.bfloat16), impl="interpret")


def test_prepare_pads_ragged_layers_and_bytes_floor(request):
  rng = _rng(request)
  layer = PrunedLayer(_packed(rng, 20, 36, jnp.float32), jnp.full(20, 2.0), jnp.ones(36))
  w = kernels.prepare(layer, jnp.float16)
  assert w.core.shape == (32, 48) and w.core.values.dtype == jnp.float16
  assert (w.d_out, w.d_in) == (20, 36) and w.col_scale is None and w.row_scale.shape == (32,)
  np.testing.assert_array_equal(_dense64(w.core)[:20, :36],
                                np.asarray(_dense64(layer.core).astype(np.float16), F64))
  assert not np.any(_dense64(w.core)[20:]) and not np.any(_dense64(w.core)[:, 36:])
  dense = kernels.bytes_moved(1, 4096, 4096, dense=True)
  sparse = kernels.bytes_moved(1, 4096, 4096)
  assert sparse / (4096 * 4096) == pytest.approx(1.125, abs=1e-3)
  assert dense / sparse == pytest.approx(1.78, abs=0.01)
  armor = kernels.bytes_moved(1, 4096, 4096, block_a=128, block_b=128, scales=True)
  assert 1.58 < dense / armor < 1.61     # wrappers: 2 b (N + K) bytes = 0.125 B/weight here

