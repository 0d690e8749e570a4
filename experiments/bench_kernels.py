"""Speed of the 2:4 and ARMOR linears against a dense XLA dot, per layer shape and batch.

For each shape ``d_out x d_in`` (default 4096x4096, 4096x14336, 14336x4096)
and batch (default 1, 8, 16, 128, 2048), three products ``y = x @ W.T`` in
``dtype`` with random data:

* ``dense``: the dense weight through XLA's dot;
* ``24``: a 2:4 core through :func:`armor_jax.kernels.sparse24_matmul`;
* ``armor``: an ARMOR layer (A and B blocks of ``block_size``, row and column
  scales, random) through :func:`armor_jax.kernels.armor_linear`: the B stage as a
  block-diagonal pre-pass, A fused into the sparse kernel's epilogue;
* ``armor_fused_b`` (kernels only, with ``fuse_b``): the same layer with B fused
  into the sparse kernel too (one launch).

Timing: one jitted call runs ``calls`` products on distinct inputs (no host
dispatch between them, no common subexpression to merge), each on its own copy
of the weights (``weight_sets >= calls``): the L2 cache cannot hold them, and
XLA's GPU dot merger, which turns dots that share an operand into one dot that
reads it once, finds nothing to merge. The time per product is the median over
``repeats`` such calls, after a compiled warm-up. The Mosaic GPU kernels take
their weights prepared once (:func:`armor_jax.kernels_mgpu.prepare`, the values
regrouped into the kernels' words), as a model that keeps them would. Bytes are
the floor of :func:`armor_jax.kernels.bytes_moved` (weights once, x in, y out);
``bandwidth_fraction`` divides bytes / time by the bandwidth of a ``copy_mb`` MB
elementwise pass (bytes read + written); the CSV's
``peak_fraction`` divides it by the device's nominal peak bandwidth instead
(``peak_bandwidth_gbs``, or the datasheet figure of a known GPU, :data:`PEAK_GBS`).

On a GPU ``impl=auto`` times the Pallas kernels (Mosaic GPU on Hopper, Triton
elsewhere; ``armor_fused_b`` is a Triton tiling, timed with ``impl=pallas``) (and, with
``compare_reference``, the plain-XLA paths too, in the CSV). Elsewhere it
times the plain-JAX reference paths: those numbers say nothing about the
kernels, and the log and ``info.note`` say so. ``impl=interpret`` runs the
kernels in Pallas's interpreter (a functional check of this script on CPU;
its times mean nothing).

Headline, per batch B and shape S: ``speedup_{24,armor,armor_fused_b}_b<B>_<S>``
(dense time over ours), and ``bandwidth_fraction_{dense,24,armor,armor_fused_b}_b<B>_<S>``;
plus ``copy_bandwidth_gbs``, ``peak_bandwidth_gbs`` (0 when unknown), ``device`` (0 CPU,
1 GPU, 2 other; the device's name is in ``info``) and, when kernels ran,
``max_rel_error_{24,armor,armor_fused_b}``: each kernel's largest relative error against
the plain-XLA path over the cases (checked before timing).

    python -m experiments.main experiment=bench_kernels                      # GPU
    python -m experiments.main experiment=bench_kernels shapes=[256x512] batches=[1,16] \\
        copy_mb=64                                                             # CPU smoke
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from armor_jax.solver.armor import ArmorConfig
from experiments.schema import Check, each, ge, one_of, param

_SHAPE = re.compile(r"^(\d+)x(\d+)$")
DEVICE_CODES = {"cpu": 0, "gpu": 1}
#: Nominal (datasheet) memory bandwidth in GB/s by device-kind substring, most specific first.
PEAK_GBS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
            ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
            ("L40S", 864.0), ("L4", 300.0))


def peak_bandwidth(device_kind: str) -> float:
  """Nominal memory bandwidth (GB/s) of a known GPU kind, 0.0 if unknown."""
  return next((gbs for name, gbs in PEAK_GBS if name in device_kind), 0.0)


def _shape(s: str) -> tuple[int, int]:
  d_out, d_in = (int(v) for v in _SHAPE.match(s).groups())
  return d_out, d_in


def _shape_ok(s) -> bool:
  if not isinstance(s, str) or not _SHAPE.match(s):
    return False
  d_out, d_in = _shape(s)
  return d_out >= 16 and d_in >= 16 and d_in % 8 == 0


def shapes_param():
  """The ``shapes`` key of the kernel benchmarks (a fresh field for each config)."""
  return param(("4096x4096", "4096x14336", "14336x4096"), "layer shapes d_outxd_in",
               check=Check(lambda v: len(v) > 0 and all(_shape_ok(s) for s in v),
                           "a non-empty list of 'DOUTxDIN' strings, both >= 16, d_in a "
                           "multiple of 8"))


def dtype_param():
  """The ``dtype`` key of the kernel benchmarks (a fresh field for each config)."""
  return param("bfloat16", "weight and activation dtype", check=one_of("bfloat16", "float16"))


@dataclasses.dataclass(frozen=True)
class Timing:
  """How a kernel benchmark times its products (shared by the kernel benchmarks' configs)."""
  calls: int = param(16, "products per timed jitted call", check=ge(1))
  weight_sets: int = param(16, "weight copies, one per product of a timed call (at least "
                           "calls): defeats the L2 cache and XLA's dot merger", check=ge(1))
  repeats: int = param(10, "timed calls per case (median kept)", check=ge(1))
  copy_mb: int = param(1024, "size of the bandwidth-measuring copy, MB", check=ge(1))

  def check(self) -> None:
    from experiments.schema import ConfigError  # pylint: disable=import-outside-toplevel
    if self.weight_sets < self.calls:
      raise ConfigError("weight_sets", f"must be at least calls ({self.calls}), so that no two "
                        f"products of a timed call share weights; got {self.weight_sets}")


@dataclasses.dataclass(frozen=True)
class Config(Timing):
  shapes: tuple[str, ...] = shapes_param()
  batches: tuple[int, ...] = param((1, 8, 16, 128, 2048), "batch sizes (tokens per product)",
                                   check=each(ge(1)))
  dtype: str = dtype_param()
  block_size: int = param(ArmorConfig.block_size, "ARMOR's A and B block size (a divisor of "
                          "both dims; the default is ArmorConfig's)",
                          check=ge(1))
  impl: str = param("auto", "auto (Mosaic GPU on Hopper, Pallas Triton on other GPUs, reference "
                    "elsewhere), pallas, mosaic, reference, or interpret (the Triton kernels in "
                    "Pallas's interpreter: a CPU check, tiny shapes)",
                    check=one_of("auto", "pallas", "mosaic", "reference", "interpret"))
  fuse_b: bool = param(True, "with the kernels, also time ARMOR with B fused into the sparse "
                       "kernel (kind armor_fused_b) next to the B pre-pass (kind armor)")
  peak_bandwidth_gbs: float = param(0.0, "the device's peak memory bandwidth, GB/s (0 = the "
                                    "datasheet figure of a known GPU, else none)", check=ge(0))
  compare_reference: bool = param(True, "with the Pallas kernels, also time the plain-XLA "
                                  "paths (CSV only)")

  def check(self) -> None:
    from experiments.schema import ConfigError  # pylint: disable=import-outside-toplevel
    super().check()
    for s in self.shapes:
      d_out, d_in = _shape(s)
      if d_out % self.block_size or d_in % self.block_size:
        raise ConfigError("block_size", f"must divide both dims of every shape; "
                          f"{self.block_size} does not divide {s}")


def _median_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))            # compile + warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _per_product(product, xs, ws, repeats: int) -> float:
  """Median seconds of one ``product(x, w)``, from jitted calls doing len(xs) of them."""
  many = jax.jit(lambda xs, ws: [product(x, ws[i % len(ws)]) for i, x in enumerate(xs)])
  return _median_seconds(many, (xs, ws), repeats) / len(xs)


def _rel_error(y, y_ref) -> float:
  """||y - y_ref|| / ||y_ref|| in float64 (inf if y has a NaN)."""
  y, y_ref = np.asarray(y, np.float64), np.asarray(y_ref, np.float64)
  if not np.all(np.isfinite(y)):
    return float("inf")
  return float(np.linalg.norm(y - y_ref) / max(np.linalg.norm(y_ref), 1e-30))


def copy_bandwidth(mb: int, repeats: int, key) -> float:
  """Bytes per second of an elementwise pass over ``mb`` MB (read + write counted).

  The pass flips the top bit of uint32 words: no float conversion on any
  backend, and nothing XLA can elide.
  """
  a = jax.random.bits(key, (mb * 2 ** 20 // 4,), jnp.uint32)
  seconds = _median_seconds(jax.jit(lambda a: a ^ jnp.uint32(1 << 31)), (a,), repeats)
  return 2 * a.size * a.dtype.itemsize / seconds


def _layer(key, d_out, d_in, block, dtype):
  """Random dense weight, its 2:4 core and a random ARMOR layer (prepared), all in dtype."""
  from armor_jax.solver import blockdiag, sparsity  # pylint: disable=import-outside-toplevel
  from armor_jax import kernels  # pylint: disable=import-outside-toplevel
  from armor_jax.solver.layer import PrunedLayer  # pylint: disable=import-outside-toplevel
  k_w, k_s, k_a, k_b, k_r, k_c = jax.random.split(key, 6)
  w = jax.random.normal(k_w, (d_out, d_in), jnp.float32)
  mask = sparsity.mask_from_scores(jax.random.uniform(k_s, (d_out, d_in)))
  core = sparsity.pack(w.astype(dtype), mask)

  def wrapper(k, d):
    return blockdiag.identity(d, block) + 0.1 * jax.random.normal(k, (d // block, block, block))

  layer = PrunedLayer(core, jax.random.uniform(k_r, (d_out,), minval=0.5, maxval=2),
                      jax.random.uniform(k_c, (d_in,), minval=0.5, maxval=2),
                      wrapper(k_a, d_out), wrapper(k_b, d_in), method="armor")
  return w.astype(dtype), core, kernels.prepare(layer, dtype)


def _copies(tree, n: int, convert=lambda t: t):
  return [convert(jax.tree.map(lambda v: jnp.array(v, copy=True), tree)) for _ in range(n)]


def run(cfg: Config, ctx) -> dict:
  from armor_jax import kernels  # pylint: disable=import-outside-toplevel
  dtype = jnp.dtype(cfg.dtype)
  backend = jax.default_backend()
  impl = kernels.resolve_impl(cfg.impl)
  dev = jax.devices()[0]
  ctx.info["device"] = f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}"
  ctx.info["impl"] = impl
  if impl not in ("pallas", "mosaic"):
    ctx.info["note"] = (f"backend {backend}: timed the plain-JAX reference paths (unpack + XLA "
                        "dot), not the compiled Pallas kernels" if impl == "reference" else
                        "timed the kernels in Pallas's interpreter: a functional check, the "
                        "times mean nothing")
    ctx.say(f"[bench_kernels] {ctx.info['note']}")
  key = jax.random.PRNGKey(ctx.seed)
  key, k_copy = jax.random.split(key)
  bw = copy_bandwidth(cfg.copy_mb, cfg.repeats, k_copy)
  peak = cfg.peak_bandwidth_gbs or peak_bandwidth(getattr(dev, "device_kind", ""))
  ctx.say(f"[bench_kernels] {ctx.info['device']}: copy bandwidth {bw / 1e9:.1f} GB/s"
          + (f", peak {peak:.0f} GB/s" if peak else ""))
  headline: dict[str, float] = {"device": float(DEVICE_CODES.get(backend, 2)),
                                "copy_bandwidth_gbs": bw / 1e9, "peak_bandwidth_gbs": peak}
  rows = {k: [] for k in ("shape", "batch", "kind", "impl", "seconds", "bytes",
                          "bandwidth_fraction", "peak_fraction", "speedup_vs_dense")}
  dense_dot = lambda x, w: jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())))  # noqa: E731
  sparse_fn = {p: (lambda x, s, p=p: kernels.sparse24_matmul(x, s, impl=p))
               for p in ("pallas", "mosaic", "interpret", "reference")}
  tiles = {}

  def armor_fn(p, fused):
    def fn(x, w):
      t = None
      if fused:
        t = dataclasses.replace(kernels.default_tiles(x.shape[0], *w.core.shape,
                                                      block_a=cfg.block_size), fuse_b=True)
      return kernels.armor_linear(x, w, impl=p, tiles=t)
    return fn

  impls = [impl] + (["reference"] if impl != "reference" and cfg.compare_reference else [])
  # B fused into the sparse kernel is a Triton tiling; the Mosaic ARMOR fuses A only
  fused = cfg.fuse_b and impl in ("pallas", "interpret")
  errors: dict[str, float] = {}
  for shape in cfg.shapes:
    d_out, d_in = _shape(shape)
    key, k_layer = jax.random.split(key)
    w, core, armor = _layer(k_layer, d_out, d_in, cfg.block_size, dtype)
    sets = {"dense": _copies(w, cfg.weight_sets), "24": _copies(core, cfg.weight_sets),
            "armor": _copies(armor, cfg.weight_sets)}
    if impl == "mosaic":
      from armor_jax import kernels_mgpu  # pylint: disable=import-outside-toplevel
      sets[impl, "24"] = _copies(core, cfg.weight_sets, kernels_mgpu.prepare)
      sets[impl, "armor"] = _copies(armor, cfg.weight_sets, kernels_mgpu.prepare_armor)
    for batch in cfg.batches:
      key, k_x = jax.random.split(key)
      xs = list(jax.random.normal(k_x, (cfg.calls, batch, d_in), jnp.float32).astype(dtype))
      nbytes = {"dense": kernels.bytes_moved(batch, d_out, d_in, dtype=dtype, dense=True),
                "24": kernels.bytes_moved(batch, d_out, d_in, dtype=dtype),
                "armor": kernels.bytes_moved(batch, d_out, d_in, dtype=dtype,
                                             block_a=cfg.block_size, block_b=cfg.block_size,
                                             scales=True)}
      nbytes["armor_fused_b"] = nbytes["armor"]
      if impl != "reference":
        # correct first: the kernels against the plain-XLA paths on this case's first input
        checks = [("24", sparse_fn[impl], sparse_fn["reference"], core),
                  ("armor", armor_fn(impl, False), armor_fn("reference", False), armor)]
        if fused:
          checks.append(("armor_fused_b", armor_fn(impl, True), armor_fn("reference", False),
                         armor))
        for kind, fn, ref, weights in checks:
          err = _rel_error(jax.jit(fn)(xs[0], weights), jax.jit(ref)(xs[0], weights))
          errors[kind] = max(errors.get(kind, 0.0), err)
          if not err < 2e-2:
            ctx.say(f"  {shape} b={batch} {kind}: relative error {err:.3g} against the "
                    "reference path")
      t_dense = _per_product(dense_dot, xs, sets["dense"], cfg.repeats)
      timed = [("dense", "xla", t_dense)]
      for p in impls:
        timed.append(("24", p, _per_product(sparse_fn[p], xs, sets.get((p, "24"), sets["24"]),
                                            cfg.repeats)))
        timed.append(("armor", p, _per_product(armor_fn(p, False), xs,
                                               sets.get((p, "armor"), sets["armor"]),
                                               cfg.repeats)))
        if fused and p != "reference":
          timed.append(("armor_fused_b", p, _per_product(armor_fn(p, True), xs, sets["armor"],
                                                         cfg.repeats)))
      tiles[f"b{batch}_{shape}"] = str(kernels.default_tiles(batch, d_out, d_in))
      tiles[f"armor_b{batch}_{shape}"] = str(kernels.armor_tiles(batch, armor))
      for kind, p, seconds in timed:
        frac = nbytes[kind] / seconds / bw
        peak_frac = nbytes[kind] / seconds / (peak * 1e9) if peak else float("nan")
        speedup = t_dense / seconds
        for col, v in zip(rows, (shape, batch, kind, p, seconds, nbytes[kind], frac, peak_frac,
                                 speedup)):
          rows[col].append(v)
        if p in ("xla", impl):
          headline[f"bandwidth_fraction_{kind}_b{batch}_{shape}"] = frac
          if kind != "dense":
            headline[f"speedup_{kind}_b{batch}_{shape}"] = speedup
        ctx.say(f"  {shape} b={batch:<5} {kind:>5} {p:<16} {seconds * 1e6:10.1f} us  "
                f"{frac:6.1%} of copy bw  {speedup:5.2f}x vs dense")
    del sets
  ctx.info["default_tiles"] = tiles
  for kind, err in errors.items():
    headline[f"max_rel_error_{kind}"] = err
  ctx.write_csv("kernels.csv", rows)
  return headline
