"""What the Pallas kernels lower to for CUDA, read on any machine: launch settings, Triton IR, dots.

:mod:`armor_jax.kernels` is fast on a GPU only if Triton receives what its design assumes:
16-bit dot inputs with f32 accumulation, the weight tile kept in 16 bits from its load to the
dot, the tile shapes and the ``num_warps`` / ``num_stages`` that :func:`~armor_jax.kernels.
default_tiles` chose. All of that is fixed when JAX lowers a program for CUDA, which Pallas's
Triton lowering does in Python with no GPU present (it targets sm_90). :func:`lower_for_cuda`
lowers a function the way a user's program is lowered (``jax.jit(...).lower`` or
``jax.export``) and returns, for every Pallas kernel in it, a :class:`Kernel`: its grid, warps,
stages, block shapes, the Triton IR text, its loads and its dots, each dot with whether an f32
extension (``arith.extf``, ``tt.fp_to_fp``) lies on the path from a load to either operand.
The tests pin these facts at the benchmark shapes (tests/test_kernel_ir.py).

How it reads them. The launch settings and block shapes come from the ``pallas_call``
equations of the traced program (public jaxpr parameters). The Triton module is captured while
JAX lowers it, by wrapping ``jax._src.pallas.triton.lowering.lower_jaxpr_to_triton_module``
for the duration of the call: a private function, present from JAX 0.6 to 0.11 (the versions
``pyproject.toml`` allows); if it moves, :func:`lower_for_cuda` fails with a line saying so.
Where the lowered StableHLO still carries the Triton module in XLA's custom call
(jaxlib <= 0.10.2), the warps, stages and grid XLA will launch with are read from it too
(:attr:`Kernel.launch`); newer jaxlibs compile the module during lowering and need a GPU
plugin to lower for CUDA at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from typing import Any, Callable, Iterator

import jax

#: Custom-call targets a lowered Pallas Triton kernel becomes (legacy and current jaxlibs).
TRITON_CALL_TARGETS = ("__gpu$xla.gpu.triton", "triton_kernel_call")
#: Ops that widen a float to f32 (the upcasts a weight tile must not go through).
UPCAST_OPS = ("arith.extf", "tt.fp_to_fp")
_TENSOR = re.compile(r"^tensor<((?:\d+x)*)([A-Za-z0-9!._<>]+?)>$")


@dataclasses.dataclass(frozen=True)
class Operand:
  """A tensor value in the Triton IR: its shape and element type (e.g. ``bf16``, ``f32``)."""
  shape: tuple[int, ...]
  dtype: str


@dataclasses.dataclass(frozen=True)
class Dot:
  """One ``tt.dot``: ``out = lhs @ rhs + acc``.

  Attributes:
    lhs, rhs, out: operand and result types.
    lhs_upcast, rhs_upcast: whether an f32 extension lies anywhere on the
      producers of that operand (back to its loads and block arguments).
  """
  lhs: Operand
  rhs: Operand
  out: Operand
  lhs_upcast: bool
  rhs_upcast: bool

  @property
  def mnk(self) -> tuple[int, int, int]:
    return self.lhs.shape[0], self.rhs.shape[1], self.lhs.shape[1]


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One Pallas kernel of a program lowered for CUDA.

  Attributes:
    name: the ``pallas_call``'s name.
    grid: its grid, as the program was traced.
    num_warps, num_stages: the Triton launch settings it asked for.
    block_shapes: per operand (inputs, then outputs), the block of each
      dimension (None: squeezed).
    loads: the value types of every ``tt.load``.
    dots: every ``tt.dot``.
    ir: the Triton module as text.
    launch: where the lowered program carries the module (jaxlib <= 0.10.2),
      the ``grid_x/y/z``, ``num_warps`` and ``num_stages`` XLA launches with;
      else None.
  """
  name: str
  grid: tuple[int, ...]
  num_warps: int
  num_stages: int
  block_shapes: tuple[tuple[int | None, ...], ...]
  loads: tuple[Operand, ...]
  dots: tuple[Dot, ...]
  ir: str
  launch: dict[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class Lowered:
  """A program lowered for CUDA: its StableHLO text and its Pallas kernels, in program order."""
  text: str
  kernels: tuple[Kernel, ...]
  via: str


def _operand(value) -> Operand:
  t = str(value.type)
  m = _TENSOR.match(t)
  if not m:
    return Operand((), t)
  dims = tuple(int(d) for d in m.group(1).split("x") if d)
  return Operand(dims, m.group(2))


def _ops(op) -> Iterator[Any]:
  """Every operation nested in ``op``, in order."""
  for region in op.regions:
    for block in region.blocks:
      for o in block.operations:
        yield o
        yield from _ops(o.operation)


def _producer(value):
  """The operation defining ``value``, or None for a block argument."""
  owner = value.owner
  return owner if hasattr(owner, "operands") and hasattr(owner, "name") else None


def _upcast_upstream(value) -> bool:
  """Whether an f32 extension lies on any producer path of ``value``."""
  seen, stack = set(), [value]
  while stack:
    op = _producer(stack.pop())
    if op is None:
      continue
    key = op.operation
    if key in seen:
      continue
    seen.add(key)
    if op.name in UPCAST_OPS and _operand(op.results[0]).dtype == "f32":
      return True
    stack.extend(op.operands)
  return False


def _read_module(module) -> tuple[tuple[Operand, ...], tuple[Dot, ...], str]:
  loads, dots = [], []
  for o in _ops(module.operation):
    name = o.operation.name
    if name == "tt.load":
      loads.append(_operand(o.results[0]))
    elif name == "tt.dot":
      lhs, rhs = o.operands[0], o.operands[1]
      dots.append(Dot(_operand(lhs), _operand(rhs), _operand(o.results[0]),
                      _upcast_upstream(lhs), _upcast_upstream(rhs)))
  return tuple(loads), tuple(dots), str(module.operation)


def _pallas_eqns(jaxpr) -> Iterator[Any]:
  """The ``pallas_call`` equations of a jaxpr and of the jaxprs it calls, depth first."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      yield eqn
      continue
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _pallas_eqns(inner)


def _setting(params, name: str) -> int | None:
  if params is None:
    return None
  if isinstance(params, dict):
    params = params.get("triton", params)
    return params.get(name)
  return getattr(params, name, None)


def _block_shapes(grid_mapping) -> tuple[tuple[int | None, ...], ...]:
  out = []
  for bm in grid_mapping.block_mappings:
    dims = []
    for d in bm.block_shape:
      size = d if isinstance(d, int) else getattr(d, "block_size", None)
      dims.append(size if isinstance(size, int) else None)
    out.append(tuple(dims))
  return tuple(out)


def _eqn_name(eqn) -> str:
  name = eqn.params.get("name")
  if name is None and "name_and_src_info" in eqn.params:
    name = eqn.params["name_and_src_info"].name
  return str(name)


def _launches(text: str) -> dict[str, list[dict[str, int]]]:
  """name -> the launch settings of each legacy Triton custom call of that name, in text order.

  The module's bytes sit in the call's ``ir`` string; the settings are the fields after it.
  """
  out: dict[str, list[dict[str, int]]] = {}
  for line in text.splitlines():
    if "__gpu$xla.gpu.triton" not in line or "custom_call" not in line:
      continue
    tail = line[line.rfind('", name = "') + 2:] if '", name = "' in line else line
    vals = {k: int(v) for k, v in re.findall(r"(grid_[xyz]|num_warps|num_stages) = (\d+)",
                                             line[:line.find(' ir = "')] + tail)}
    name = re.search(r'name = "([^"]*)"', tail)
    out.setdefault(name.group(1) if name else "", []).append(vals)
  return out


@contextlib.contextmanager
def _capture() -> Iterator[list]:
  """Records every Triton module Pallas lowers while the context is open."""
  try:
    from jax._src.pallas.triton import lowering  # pylint: disable=import-outside-toplevel
    original = lowering.lower_jaxpr_to_triton_module
  except (ImportError, AttributeError) as e:
    raise RuntimeError("this JAX has no jax._src.pallas.triton.lowering."
                       "lower_jaxpr_to_triton_module; armor_jax.kernel_ir cannot read its Triton "
                       f"modules ({e})") from e
  seen: list = []

  @functools.wraps(original)
  def recording(*args, **kwargs):
    result = original(*args, **kwargs)
    seen.append(result)
    return result

  lowering.lower_jaxpr_to_triton_module = recording
  try:
    yield seen
  finally:
    lowering.lower_jaxpr_to_triton_module = original


def lower_for_cuda(fn: Callable, *args, via: str = "jit", **kwargs) -> Lowered:
  """Lowers ``fn(*args, **kwargs)`` for CUDA (no GPU needed) and reads its Pallas kernels.

  Args:
    fn: the function (it is wrapped in ``jax.jit``; ``kwargs`` are bound first).
    *args: arrays or ``jax.ShapeDtypeStruct`` (pytrees of them).
    via: ``"jit"`` (``jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))``)
      or ``"export"`` (``jax.export.export(jax.jit(fn), platforms=["cuda"])``, with the
      safety check for custom calls without a compatibility guarantee disabled for the
      Triton targets only).
    **kwargs: static keyword arguments of ``fn`` (e.g. ``impl="pallas"``, ``tiles=...``).

  Returns:
    :class:`Lowered`. Raises if lowering fails (an op without a Triton lowering, an
    illegal tensor shape) or if the captured modules cannot be matched to the
    program's ``pallas_call`` equations.
  """
  jitted = jax.jit(functools.partial(fn, **kwargs))
  traced = jitted.trace(*args)
  eqns = list(_pallas_eqns(traced.jaxpr.jaxpr))
  with _capture() as modules:
    if via == "jit":
      text = traced.lower(lowering_platforms=("cuda",)).as_text()
    elif via == "export":
      checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in TRITON_CALL_TARGETS]
      text = jax.export.export(jitted, platforms=["cuda"], disabled_checks=checks)(
          *args).mlir_module()
    else:
      raise ValueError(f"via must be 'jit' or 'export'; got {via!r}")
  if len(modules) != len(eqns):
    raise RuntimeError(f"captured {len(modules)} Triton modules for {len(eqns)} pallas_call "
                       "equations; cannot match them")
  launches = _launches(text)
  kernels = []
  for eqn, result in zip(eqns, modules):
    name = _eqn_name(eqn)
    loads, dots, ir = _read_module(result.module)
    gm = eqn.params["grid_mapping"]
    params = eqn.params.get("compiler_params")
    launch = launches.get(name, [])
    kernels.append(Kernel(
        name=name, grid=tuple(int(g) for g in gm.grid),
        num_warps=_setting(params, "num_warps") or 4,
        num_stages=_setting(params, "num_stages") or 3,
        block_shapes=_block_shapes(gm), loads=loads, dots=dots, ir=ir,
        launch=launch.pop(0) if launch else None))
  return Lowered(text=text, kernels=tuple(kernels), via=via)
