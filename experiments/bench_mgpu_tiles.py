"""Tile sweep of the Mosaic GPU 2:4 kernel (Hopper) against a dense XLA dot, per shape and batch.

For each layer shape ``d_out x d_in`` and batch, the product ``y = x @ S.T`` of a random 2:4
core through :func:`armor_jax.kernels_mgpu.sparse24_matmul`, once per tile variant in
``tiles`` (``BMxBNxSTAGESxSPLIT``, a final ``o`` for ``overlap``, see
:class:`~armor_jax.kernels_mgpu.MgpuTiles`; or ``default`` for
:func:`~armor_jax.kernels_mgpu.default_tiles`), on weights prepared once
(:func:`~armor_jax.kernels_mgpu.prepare`), so that the time is the kernel's and its operand
transposes'; plus
``per_call``: the default tiles on the stored :class:`~armor_jax.solver.sparsity.Packed24`,
regrouped into the kernel's words on every call, as :mod:`experiments.bench_kernels` times
it. A variant applies to a batch when both are decode (batch and ``BM`` at most 16) or both
are not, and when it fits shared memory and divides the padded K; the others are skipped
and listed in ``info``. Each variant is checked against the plain-JAX product before it is
timed. Timing as in :mod:`experiments.bench_kernels` (jitted calls of ``calls`` products on
distinct inputs, each on its own weight copy, median of ``repeats``).

Headline, per batch B and shape S: ``speedup_best_b<B>_<S>`` (dense time over the fastest
variant's), ``speedup_default_b<B>_<S>``, ``speedup_per_call_b<B>_<S>``,
``bandwidth_fraction_best_b<B>_<S>`` (bytes floor over time over the measured copy
bandwidth); ``copy_bandwidth_gbs`` and ``max_rel_error``. The fastest variant of each case is
in ``info.best``; every row in ``tiles.csv``. ``impl=mosaic_interpret`` runs the kernels in
GPU interpret mode (a CPU check of this script: tiny shapes, the times mean nothing).

    python -m experiments.main experiment=bench_mgpu_tiles                      # a Hopper GPU
    python -m experiments.main experiment=bench_mgpu_tiles impl=mosaic_interpret \\
        shapes=[64x512] batches=[1] "tiles=[default,16x64x1x2]" copy_mb=1 repeats=1 calls=1
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from experiments.bench_kernels import (Timing, _copies, _layer, _per_product, _rel_error,
                                       _shape, copy_bandwidth, dtype_param, shapes_param)
from experiments.schema import Check, each, ge, one_of, param

_TILES = re.compile(r"^([1-9]\d*)x([1-9]\d*)x([1-9]\d*)x([1-9]\d*)(o?)$")
#: Shared memory one block may use on an H100 or H200.
SMEM_LIMIT = 227 * 1024


def _tiles_ok(v) -> bool:
  return isinstance(v, str) and (v == "default" or bool(_TILES.match(v)))


@dataclasses.dataclass(frozen=True)
class Config(Timing):
  shapes: tuple[str, ...] = shapes_param()
  batches: tuple[int, ...] = param((1, 16, 2048), "batch sizes (tokens per product)",
                                   check=each(ge(1)))
  tiles: tuple[str, ...] = param(
      ("default", "16x64x2x1", "16x64x4x1", "16x64x2x2", "16x64x2x4", "16x64x4x4", "16x64x2x8",
       "16x128x2x4", "16x64x3x4o", "64x64x1x1", "32x128x2x1", "128x64x1x1", "64x128x1x1",
       "32x64x3x1o"),
      "tile variants: 'default' or 'BMxBNxSTAGESxSPLIT', with a final 'o' for the overlapped "
      "ring (BM a multiple of 16, BN of 64)",
      check=Check(lambda v: len(v) > 0 and all(_tiles_ok(t) for t in v),
                  "a non-empty list of 'default' or 'BMxBNxSTAGESxSPLIT[o]' strings"))
  dtype: str = dtype_param()
  impl: str = param("mosaic", "mosaic (compiled, a Hopper GPU) or mosaic_interpret (GPU "
                    "interpret mode: a CPU check, tiny shapes)",
                    check=one_of("mosaic", "mosaic_interpret"))


def _variant(spec: str, batch: int, n: int, k: int):
  """The MgpuTiles of ``spec`` for this case, or (None, why) when it does not apply."""
  from armor_jax import kernels_mgpu as mg  # pylint: disable=import-outside-toplevel
  round_up = mg._round_up  # pylint: disable=protected-access
  k_pad, n_pad = round_up(k, 8 * mg.STEP_R), round_up(n, mg.WG_M)
  if spec == "default":
    return mg.default_tiles(batch, n_pad, k_pad), ""
  *sizes, overlap = _TILES.match(spec).groups()
  bm, bn, stages, split = (int(v) for v in sizes)
  t = mg.MgpuTiles(bm=bm, bn=bn, r=mg.STEP_R, stages=stages, split=split,
                   overlap=bool(overlap))
  try:
    t.check(round_up(batch, bm), n_pad, k_pad)
  except ValueError as e:
    return None, str(e)
  if (batch <= 16) != (bm <= 16):
    return None, "decode tiles for decode batches only"
  if mg.smem_bytes(t, fuse_a=False) > SMEM_LIMIT:
    return None, f"{mg.smem_bytes(t, fuse_a=False)} bytes of shared memory"
  return t, ""


def run(cfg: Config, ctx) -> dict:
  from armor_jax import kernels_mgpu as mg  # pylint: disable=import-outside-toplevel
  from armor_jax import kernels  # pylint: disable=import-outside-toplevel
  dtype = jnp.dtype(cfg.dtype)
  interpret = mg.interpret_params() if cfg.impl == "mosaic_interpret" else None
  dev = jax.devices()[0]
  ctx.info["device"] = f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}"
  if interpret is not None:
    ctx.info["note"] = "GPU interpret mode: a functional check, the times mean nothing"
    ctx.say(f"[bench_mgpu_tiles] {ctx.info['note']}")
  key = jax.random.PRNGKey(ctx.seed)
  key, k_copy = jax.random.split(key)
  bw = copy_bandwidth(cfg.copy_mb, cfg.repeats, k_copy)
  ctx.say(f"[bench_mgpu_tiles] {ctx.info['device']}: copy bandwidth {bw / 1e9:.1f} GB/s")
  headline: dict[str, float] = {"copy_bandwidth_gbs": bw / 1e9}
  rows = {k: [] for k in ("shape", "batch", "tiles", "path", "seconds", "bytes",
                          "bandwidth_fraction", "speedup_vs_dense", "rel_error")}
  dense_dot = lambda x, w: jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())))  # noqa: E731
  skipped, best, max_err = {}, {}, 0.0
  for shape in cfg.shapes:
    d_out, d_in = _shape(shape)
    key, k_layer = jax.random.split(key)
    w, core, _ = _layer(k_layer, d_out, d_in, 16, dtype)
    dense_sets, core_sets = _copies(w, cfg.weight_sets), _copies(core, cfg.weight_sets)
    for batch in cfg.batches:
      key, k_x = jax.random.split(key)
      xs = list(jax.random.normal(k_x, (cfg.calls, batch, d_in), jnp.float32).astype(dtype))
      nbytes = kernels.bytes_moved(batch, d_out, d_in, dtype=dtype)
      dense_bytes = kernels.bytes_moved(batch, d_out, d_in, dtype=dtype, dense=True)
      y_ref = jax.jit(lambda x, p: kernels.sparse24_matmul(x, p, impl="reference"))(xs[0], core)
      t_dense = _per_product(dense_dot, xs, dense_sets, cfg.repeats)
      case = f"b{batch}_{shape}"
      timed = []
      variants = [("per_call", "default")] + [("prepared", s) for s in cfg.tiles]
      for path, spec in variants:
        tiles, why = _variant(spec, batch, d_out, d_in)
        if tiles is None:
          skipped[f"{spec}_{case}"] = why
          continue
        if path == "prepared":
          weights = [mg.prepare(c, n_multiple=tiles.bn, k_multiple=8 * tiles.r * tiles.split)
                     for c in core_sets]
        else:
          weights = core_sets
        fn = (lambda x, p, t=tiles: mg.sparse24_matmul(x, p, tiles=t, interpret=interpret))
        err = _rel_error(jax.jit(fn)(xs[0], weights[0]), y_ref)
        max_err = max(max_err, err)
        seconds = _per_product(fn, xs, weights, cfg.repeats)
        name = spec if spec != "default" else (
            f"default={tiles.bm}x{tiles.bn}x{tiles.stages}x{tiles.split}"
            + ("o" if tiles.overlap else ""))
        timed.append((path, name, seconds, err))
        ctx.say(f"  {shape} b={batch:<5} {path:<8} {name:<22} {seconds * 1e6:9.1f} us  "
                f"{nbytes / seconds / bw:6.1%} of copy bw  {t_dense / seconds:5.2f}x vs dense"
                f"  err {err:.1e}")
      timed.append(("dense", "xla", t_dense, 0.0))
      for path, name, seconds, err in timed:
        b = dense_bytes if path == "dense" else nbytes
        for col, v in zip(rows, (shape, batch, name, path, seconds, b, b / seconds / bw,
                                 t_dense / seconds, err)):
          rows[col].append(v)
      prepared = [r for r in timed if r[0] == "prepared"]
      if prepared:
        fastest = min(prepared, key=lambda r: r[2])
        best[case] = fastest[1]
        headline[f"speedup_best_{case}"] = t_dense / fastest[2]
        headline[f"bandwidth_fraction_best_{case}"] = nbytes / fastest[2] / bw
        default = [r for r in prepared if r[1].startswith("default")]
        if default:
          headline[f"speedup_default_{case}"] = t_dense / default[0][2]
      per_call = [r for r in timed if r[0] == "per_call"]
      if per_call:
        headline[f"speedup_per_call_{case}"] = t_dense / per_call[0][2]
    del dense_sets, core_sets
  ctx.info["best"] = best
  if skipped:
    ctx.info["skipped"] = skipped
  headline["max_rel_error"] = max_err
  ctx.write_csv("tiles.csv", rows)
  return headline
