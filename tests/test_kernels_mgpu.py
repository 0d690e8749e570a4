"""The Mosaic GPU (Hopper) kernels, run on CPU in GPU interpret mode with race detection.

Each kernel result is compared with the plain-JAX reference of :mod:`armor_jax.kernels` and a
float64 NumPy product, on shapes that take every tile path: decode (one 16-row batch tile) and
prefill (64-row tiles), a K loop longer than the TMA ring (so slots are refilled), ragged N and K
(padded), ARMOR with both wrappers as kernels (A fused into the 2:4 kernel) and with blocks that
fall back to XLA. After every kernel the race detector must have seen no race; a control kernel
that reads shared memory before its TMA barrier shows it would. ``impl="auto"`` is checked with
faked device kinds, and every kernel is lowered for CUDA (no GPU needed) at the benchmark shapes.
On a GPU the same cases also run the compiled kernels (``impl="mosaic"``) when it is a Hopper.
"""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.experimental.pallas import mosaic_gpu as plgpu

from armor_jax import kernels, kernels_mgpu
from armor_jax.solver import sparsity
from armor_jax.solver.layer import PrunedLayer

F64 = np.float64
ON_HOPPER = jax.default_backend() == "gpu" and kernels.is_hopper(kernels.device_kind())
IMPLS = ["mosaic_interpret"] + (["mosaic"] if ON_HOPPER else [])
BENCH_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))
BENCH_BATCHES = (1, 16, 2048)

_pack = jax.jit(lambda w, score: sparsity.pack(w, sparsity.mask_from_scores(score)))
_unpack = jax.jit(lambda p: sparsity.unpack(p)[0].astype(jnp.float32))


def _rng(request):
  return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _packed(rng, n, k, dtype):
  w = jnp.asarray(rng.standard_normal((n, k)), jnp.float32).astype(dtype)
  return _pack(w, jnp.asarray(rng.random((n, k)), jnp.float32))


def _x(rng, m, k):
  return jnp.asarray(rng.standard_normal((m, k)), jnp.float32)


def _rel(a, b):
  a, b = np.asarray(a, F64), np.asarray(b, F64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _blockdiag64(blocks):
  return scipy.linalg.block_diag(*np.asarray(jnp.asarray(blocks).astype(jnp.float32), F64))


@pytest.fixture(autouse=True)
def _no_races():
  """Every test starts from a clean simulator and must leave no race behind."""
  kernels_mgpu.reset_interpret_state()
  yield
  assert not kernels_mgpu.races_found(), "GPU interpret mode detected a race"


def test_words_layout_is_values_by_parity(request):
  """``mgpu_words`` holds the kept pairs of groups 2r (e=0) and 2r+1 (e=1), low half first."""
  rng = _rng(request)
  p = _packed(rng, 8, 64, jnp.bfloat16)
  words = np.asarray(kernels_mgpu.mgpu_words(p))
  assert words.shape == (2, 8, 8) and words.dtype == np.uint32
  bits = np.asarray(p.values).view(np.uint16).astype(np.uint32)       # (8, 32)
  for e in range(2):
    np.testing.assert_array_equal(words[e] & 0xFFFF, bits[:, 2 * e::4])
    np.testing.assert_array_equal(words[e] >> 16, bits[:, 2 * e + 1::4])


def test_default_tiles_fit_shared_memory():
  for m in (1, 16, 17, 2048):
    for block_a in (None, 64, 128):
      t = kernels_mgpu.default_tiles(m, 4096, 4096, block_a=block_a)
      assert kernels_mgpu.smem_bytes(t, fuse_a=block_a is not None) <= kernels_mgpu.SMEM_BUDGET
      assert t.bn == (block_a or 64) and t.bm == (16 if m <= 16 else t.bm) and t.bm % 16 == 0


# (m, n, k, dtype, tiles): decode with 4 K steps through a 2-slot ring (refills), the same
# split over two programs per tile (f32 partials added by XLA), 8 steps with the expansion
# overlapping the previous step's wgmmas (3-slot ring), prefill (two 64-row tiles,
# two column tiles); slow tier: ragged N and K (padded to 64 and 256) in fp16, and decode with
# the default tiles over 6 K steps and 3 column tiles (a 2-stage ring, split in two)
SPARSE_CASES = [
    (3, 64, 1024, jnp.bfloat16, kernels_mgpu.MgpuTiles(bm=16, bn=64, r=32, stages=2)),
    (5, 64, 1024, jnp.bfloat16, kernels_mgpu.MgpuTiles(bm=16, bn=64, r=32, stages=2, split=2)),
    (4, 64, 2048, jnp.bfloat16, kernels_mgpu.MgpuTiles(bm=16, bn=64, r=32, stages=3,
                                                       overlap=True)),
    (70, 128, 256, jnp.bfloat16, None),
    pytest.param(5, 40, 84, jnp.float16, None, marks=pytest.mark.slow),
    pytest.param(16, 192, 1536, jnp.bfloat16, None, marks=pytest.mark.slow),
]


def _case_id(c):
  v = c.values if hasattr(c, "values") else c
  return f"m{v[0]}_n{v[1]}_k{v[2]}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m, n, k, dtype, tiles", SPARSE_CASES, ids=map(_case_id, SPARSE_CASES))
def test_sparse24_mgpu_matches_references(request, m, n, k, dtype, tiles, impl):
  rng = _rng(request)
  p = _packed(rng, n, k, dtype)
  x = _x(rng, m, k)
  y = kernels.sparse24_matmul(x, p, impl=impl, tiles=tiles)
  exact = np.asarray(x.astype(dtype), F64) @ np.asarray(_unpack(p), F64).T
  assert y.shape == (m, n) and y.dtype == x.dtype
  assert np.all(np.isfinite(np.asarray(y)))
  tol = 1e-5 if impl == "mosaic_interpret" else 1e-4
  assert _rel(y, exact) < tol
  assert _rel(y, kernels.sparse24_matmul(x, p, impl="reference")) < tol


@pytest.mark.parametrize("impl", IMPLS)
def test_prepared_weights_give_the_same_product(request, impl):
  """:func:`kernels_mgpu.prepare` regroups once; its product is the per-call one, bit for bit,
  and tiles its padding does not fit are refused."""
  rng = _rng(request)
  p = _packed(rng, 100, 520, jnp.bfloat16)
  x = _x(rng, 4, 520).astype(jnp.bfloat16)
  interpret = kernels_mgpu.interpret_params() if impl == "mosaic_interpret" else None
  prepared = kernels_mgpu.prepare(p)
  assert prepared.words.shape == (2, 128, 96) and prepared.shape == (100, 520)
  y = kernels_mgpu.sparse24_matmul(x, prepared, interpret=interpret)
  np.testing.assert_array_equal(np.asarray(y, F64), np.asarray(
      kernels_mgpu.sparse24_matmul(x, p, interpret=interpret), F64))
  exact = np.asarray(x, F64) @ np.asarray(_unpack(p), F64).T
  assert _rel(y, exact) < 1e-2
  with pytest.raises(ValueError, match="prepare with those"):
    kernels_mgpu.sparse24_matmul(x, prepared, tiles=kernels_mgpu.MgpuTiles(split=2),
                                 interpret=interpret)
  with pytest.raises(ValueError, match="impl='mosaic'"):
    kernels.sparse24_matmul(x, prepared, impl="reference")


@pytest.mark.parametrize("impl", IMPLS)
def test_prepared_armor_gives_the_same_product(request, impl):
  """:func:`kernels_mgpu.prepare_armor` (core padded to A's block and regrouped once) gives the
  per-call product bit for bit, and runs on the Mosaic GPU path only."""
  rng = _rng(request)
  w = kernels.prepare(_armor_layer(rng, 128, 256, 64), jnp.bfloat16)
  x = _x(rng, 3, 256)
  prepared = kernels_mgpu.prepare_armor(w)
  assert isinstance(prepared.core, kernels_mgpu.MgpuPacked) and prepared.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(kernels.armor_linear(x, prepared, impl=impl), F64),
      np.asarray(kernels.armor_linear(x, w, impl=impl), F64))
  with pytest.raises(ValueError, match="impl='mosaic'"):
    kernels.armor_linear(x, prepared, impl="reference")


def test_sparse24_mgpu_writes_every_tile(request):
  """The raw transposed output (no padding to hide behind): every (bn, bm) tile is written.

  Shared memory starts NaN-filled in interpret mode, and an output tile that no program
  stores keeps the zeros XLA's output buffer may hold; both are caught by comparing every
  element with the exact product.
  """
  rng = _rng(request)
  m_pad, n, k = 32, 128, 512
  p = _packed(rng, n, k, jnp.bfloat16)
  x = _x(rng, m_pad, k).astype(jnp.bfloat16)
  tiles = kernels_mgpu.MgpuTiles(bm=16, bn=64, r=32, stages=1)
  yt = kernels_mgpu.sparse_mgpu_t(kernels_mgpu._xp(x, m_pad, jnp.bfloat16),
                                  kernels_mgpu.mgpu_words(p), p.meta, tiles=tiles,
                                  out_dtype=jnp.float32, interpret=kernels_mgpu.interpret_params())
  exact = np.asarray(x, F64) @ np.asarray(_unpack(p), F64).T
  assert yt.shape == (n, m_pad)
  np.testing.assert_allclose(np.asarray(yt, F64), exact.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_blockdiag_mgpu_matches_references(request, impl):
  rng = _rng(request)
  m, nb, b = 3, 2, 64
  blocks = jnp.asarray(rng.standard_normal((nb, b, b)), jnp.float32).astype(jnp.bfloat16)
  x = _x(rng, m, nb * b)
  s_in = jnp.asarray(rng.uniform(0.5, 2, nb * b), jnp.float32)
  s_out = jnp.asarray(rng.uniform(0.5, 2, nb * b), jnp.float32)
  y = kernels.blockdiag_matmul(x, blocks, s_in, s_out, impl=impl)
  z = np.asarray((x * s_in).astype(jnp.bfloat16), F64)
  exact = (z @ _blockdiag64(blocks).T) * np.asarray(s_out, F64)
  assert _rel(y, exact) < 1e-5
  with pytest.raises(ValueError, match="blocks of 64 or 128"):
    kernels.blockdiag_matmul(x[:, :96], jnp.ones((3, 32, 32), jnp.bfloat16), impl=impl)


def _armor_layer(rng, n, k, block):
  p = _packed(rng, n, k, jnp.float32)
  a, b = (jnp.asarray(np.eye(block) + 0.3 * rng.standard_normal((d // block, block, block)),
                      jnp.float32) for d in (n, k))
  return PrunedLayer(p, jnp.asarray(rng.uniform(0.5, 2, n), jnp.float32),
                     jnp.asarray(rng.uniform(0.5, 2, k), jnp.float32), a, b, method="armor")


def _armor_exact(x, w):
  f = lambda v: np.asarray(jnp.asarray(v).astype(jnp.float32), F64)  # noqa: E731
  s = np.asarray(_unpack(w.core), F64)[:w.d_out, :w.d_in]
  w_hat = f(w.row_scale)[:w.d_out, None] * (_blockdiag64(w.a) @ s @ _blockdiag64(w.b))
  return f(x) @ (w_hat * f(w.col_scale)[None, :w.d_in]).T


# (m, n, k, block): decode with both wrappers as kernels (A fused, bn = 64), prefill with
# 128-wide blocks (bn = 128, a 32-row tile); slow tier: blocks that fall back to XLA einsums
# (core padded), and a K loop of 4 steps behind both wrappers
ARMOR_CASES = [(3, 128, 256, 64), (20, 128, 256, 128),
               pytest.param(3, 48, 96, 16, marks=pytest.mark.slow),
               pytest.param(9, 128, 1024, 64, marks=pytest.mark.slow)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m, n, k, block", ARMOR_CASES,
                         ids=[_case_id(c) + f"_b{(c.values if hasattr(c, 'values') else c)[3]}"
                              for c in ARMOR_CASES])
def test_armor_linear_mgpu_matches_references(request, m, n, k, block, impl):
  rng = _rng(request)
  w = kernels.prepare(_armor_layer(rng, n, k, block), jnp.bfloat16)
  x = _x(rng, m, k)
  y = kernels.armor_linear(x, w, impl=impl)
  assert y.shape == (m, n) and np.all(np.isfinite(np.asarray(y)))
  assert _rel(y, kernels.armor_linear(x, w, impl="reference")) < 2e-3
  assert _rel(y, _armor_exact(x, w)) < 1e-2


def test_race_detector_catches_a_missing_barrier_wait():
  """Control: reading shared memory before waiting on the TMA barrier is reported."""

  def body(x_gmem, o_gmem, x_smem, o_smem, bar):
    plgpu.copy_gmem_to_smem(x_gmem, x_smem, bar.at[0])
    o_smem[...] = x_smem[...] + 1                # no barrier_wait first: a race
    plgpu.barrier_wait(bar.at[0])
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_gmem)
    plgpu.wait_smem_to_gmem(0)

  shape = (64, 64)
  f = plgpu.kernel(body, out_type=jax.ShapeDtypeStruct(shape, jnp.float32),
                   scratch_types=[plgpu.SMEM(shape, jnp.float32), plgpu.SMEM(shape, jnp.float32),
                                  plgpu.Barrier(num_arrivals=1, num_barriers=1)],
                   interpret=kernels_mgpu.interpret_params())
  jax.block_until_ready(jax.jit(f)(jnp.ones(shape)))
  assert kernels_mgpu.races_found()
  kernels_mgpu.reset_interpret_state()


@pytest.mark.parametrize("kind, gpu, expected", [
    ("NVIDIA H100 80GB HBM3", True, "mosaic"), ("NVIDIA H200", True, "mosaic"),
    ("NVIDIA GH200 480GB", True, "mosaic"), ("NVIDIA H100 PCIe", True, "mosaic"),
    ("NVIDIA A100-SXM4-80GB", True, "pallas"), ("NVIDIA L4", True, "pallas"),
    ("NVIDIA GeForce RTX 4090", True, "pallas"), ("NVIDIA H100 80GB HBM3", False, "reference"),
    ("cpu", False, "reference")])
def test_auto_picks_mosaic_on_hopper(kind, gpu, expected):
  assert kernels.resolve_impl("auto", gpu=gpu, kind=kind) == expected
  assert kernels.resolve_impl("mosaic", gpu=False, kind="cpu") == "mosaic"


@pytest.mark.parametrize("rows, prepared, expected", [
    (1, False, "mosaic"), (kernels.MOSAIC_MAX_ROWS, False, "mosaic"),
    (kernels.MOSAIC_MAX_ROWS + 1, False, "reference"), (2048, False, "reference"),
    (2048, True, "mosaic"), (None, False, "mosaic")])
def test_auto_on_hopper_sends_prefill_to_xla(rows, prepared, expected):
  """Above MOSAIC_MAX_ROWS rows ``auto`` takes the plain-XLA path on Hopper, unless the
  weights are already in the Mosaic layout; other GPUs keep Triton at every size."""
  h200 = dict(gpu=True, kind="NVIDIA H200")
  assert kernels.resolve_impl("auto", rows=rows, prepared=prepared, **h200) == expected
  assert kernels.resolve_impl("auto", rows=rows, gpu=True, kind="NVIDIA L4") == "pallas"
  assert kernels.resolve_impl("mosaic", rows=rows, **h200) == "mosaic"


def test_auto_dispatch_through_faked_device(monkeypatch, request):
  """``impl="auto"`` inside the entry points reads the (faked) device kind at trace time."""
  monkeypatch.setattr(kernels, "on_gpu", lambda: True)
  monkeypatch.setattr(kernels, "device_kind", lambda: "NVIDIA H200")
  seen = []
  original = kernels_mgpu.sparse24_matmul

  def spy(x, w, **kw):
    seen.append(kw["interpret"])
    return original(x, w, tiles=kw["tiles"], interpret=kernels_mgpu.interpret_params())

  monkeypatch.setattr(kernels_mgpu, "sparse24_matmul", spy)
  rng = _rng(request)
  p = _packed(rng, 64, 256, jnp.bfloat16)
  x = _x(rng, 2, 256)
  y = kernels.sparse24_matmul(x, p)            # auto -> "mosaic" (compiled: interpret None)
  assert seen == [None]
  assert _rel(y, kernels.sparse24_matmul(x, p, impl="reference")) < 1e-5
  # prefill rows take the plain-XLA path: the same bits as impl="reference", no kernel call
  xp = _x(rng, kernels.MOSAIC_MAX_ROWS + 1, 256)
  np.testing.assert_array_equal(kernels.sparse24_matmul(xp, p),
                                kernels.sparse24_matmul(xp, p, impl="reference"))
  assert seen == [None]


def _abstract_packed(n, k):
  w = jax.ShapeDtypeStruct((n, k), jnp.bfloat16)
  return jax.eval_shape(lambda w: sparsity.pack(w, sparsity.mask_from_scores(
      w.astype(jnp.float32))), w)


def _abstract_armor(n, k, block=128):
  s = jax.ShapeDtypeStruct
  return kernels.ArmorWeights(core=_abstract_packed(n, k), col_scale=s((k,), jnp.float32),
                              row_scale=s((n,), jnp.float32),
                              a=s((n // block, block, block), jnp.bfloat16),
                              b=s((k // block, block, block), jnp.bfloat16), d_out=n, d_in=k)


@pytest.mark.parametrize("m", BENCH_BATCHES)
@pytest.mark.parametrize("n, k", [pytest.param(*s, marks=() if s == BENCH_SHAPES[0] else
                                               pytest.mark.slow) for s in BENCH_SHAPES],
                         ids=[f"{n}x{k}" for n, k in BENCH_SHAPES])
def test_mosaic_kernels_lower_for_cuda_at_benchmark_shapes(m, n, k):
  """Pallas's Mosaic GPU lowering runs on CPU: layouts, swizzles, the shared-memory limit."""
  x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
  lower = functools.partial(jax.jit, static_argnames="impl")
  # ARMOR: B's kernel and the sparse one with A fused, or A's own kernel after split-K
  split = kernels_mgpu.default_tiles(m, n, k, block_a=128).split
  for fn, w, calls in ((kernels.sparse24_matmul, _abstract_packed(n, k), 1),
                       (kernels.armor_linear, _abstract_armor(n, k), 2 + (split > 1))):
    text = lower(fn).trace(x, w, impl="mosaic").lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("custom_call @mosaic_gpu") == calls, (fn.__name__, m, n, k)


def test_overlapped_tiles_lower_for_cuda():
  """The overlapped ring (two sets of slot tiles, indexed by the step's parity) lowers."""
  x = jax.ShapeDtypeStruct((1, 4096), jnp.bfloat16)
  t = kernels_mgpu.MgpuTiles(bm=16, bn=64, stages=3, split=4, overlap=True)
  text = jax.jit(lambda x, p: kernels_mgpu.sparse24_matmul(x, p, tiles=t)).trace(
      x, _abstract_packed(4096, 4096)).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("custom_call @mosaic_gpu") == 1


def test_lowering_rejects_tiles_over_shared_memory():
  """Control: the lowering enforces the device's shared-memory size (so the test above can fail)."""
  x = jax.ShapeDtypeStruct((16, 4096), jnp.bfloat16)
  big = kernels_mgpu.MgpuTiles(bm=16, bn=256, r=64, stages=4)
  with pytest.raises(Exception, match="shared memory"):
    jax.jit(lambda x, p: kernels_mgpu.sparse24_matmul(x, p, tiles=big)).trace(
        x, _abstract_packed(4096, 4096)).lower(lowering_platforms=("cuda",))


@pytest.mark.parametrize("impl", [
    pytest.param(i, marks=pytest.mark.slow) if i == "mosaic_interpret" else i for i in IMPLS])
def test_compressed_llama_runs_through_the_mosaic_kernels(impl):
  """A Llama block pruned by ARMOR (64-wide wrappers, so A is fused into the kernel) and
  stored in bf16 gives the plain-JAX path's logits when its seven linears run through the
  Mosaic GPU kernels: the kernels inside a model, at decode rows."""
  from armor_jax.model import checkpoint, llama, pipeline  # pylint: disable=import-outside-toplevel
  from armor_jax.solver import armor  # pylint: disable=import-outside-toplevel
  cfg = llama.LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_layers=1,
                          num_heads=2, num_kv_heads=1, head_dim=64)
  params = llama.init_params(cfg, jax.random.PRNGKey(3))
  calib = np.asarray(jax.random.randint(jax.random.PRNGKey(4), (4, 16), 0, cfg.vocab_size),
                     np.int32)
  pc = pipeline.PruneConfig(method="armor", armor=armor.ArmorConfig(block_size=64, iters=1),
                            batch=4)
  _, comp, _ = pipeline.prune_model(params, cfg, calib, pc, jax.random.PRNGKey(0))
  comp = checkpoint.cast(comp, "bfloat16")
  toks = jnp.asarray(calib[:1, :8])               # 8 rows: the decode tiles
  ref = np.asarray(llama.forward(comp, toks, cfg, impl="reference"))
  got = np.asarray(llama.forward(comp, toks, cfg, impl=impl))
  assert np.isfinite(got).all()
  assert 0 < _rel(got, ref) < 2e-2                # > 0: the kernels ran, not the same einsums
