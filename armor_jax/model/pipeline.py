"""Layer-wise pruning of a whole Llama-family model, streamed block by block, resumable.

For every decoder block ``i`` in order, its weights are read from the model's
:class:`~armor_jax.model.loaders.Source` (nothing else of the model is held), then:

1. the block runs on the calibration hidden states ``X_i`` (batch by batch)
   and the statistics of the inputs of its linears accumulate in float32 (the
   mean squares ``h`` and the full ``X^T X``; q, k, v share one input, gate
   and up another);
2. its seven linears (q, k, v, o, gate, up, down) are pruned with the chosen
   method (:data:`METHODS`), each from the statistics of its own input; they
   are independent problems, spread over every local JAX device;
3. the pruned block is written to the store at once (:class:`Store`: a
   directory of per-block files in the compressed 2:4 format, or memory);
4. ``X_{i+1}`` is computed: in ``sequential`` mode through the *pruned* block
   (as SparseGPT and Wanda do), in ``dense`` mode through the dense block
   (ARMOR's official code: statistics of the dense model only).

Peak memory is one block's weights, the calibration hidden states and one
block's statistics, whatever the depth. In ``dense`` mode blocks are
independent, so a range of blocks (``block_range``) can be pruned by one
process into a directory that other processes fill with the other ranges;
:func:`assemble_check` then says whether every block is there, made with the
same settings. :func:`perplexity` and :func:`generate` stream the same way.

Each layer's PRNG key is ``fold_in(fold_in(key, block), linear)`` and a
directory store saves exact float32 states, so a resumed run, a run split
into block ranges and a run on several devices return, bit for bit, what one
uninterrupted single-device run would. A block whose weights hold a NaN or
Inf stops the run with :class:`~armor_jax.errors.InputError` before any work
on it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from armor_jax.errors import InputError, check_settings
from armor_jax.model import checkpoint, heap, llama, text
from armor_jax.model.llama import INPUT_OF, LINEARS, LlamaConfig
from armor_jax.model.loaders import Source
from armor_jax.solver import armor as armor_lib, baselines, calibration, layer as layer_lib

METHODS = ("magnitude", "wanda", "sparsegpt", "nowag_p", "armor", "armor_output")
# ARMOR with its settings as given, and ARMOR with the full-covariance objective
ARMOR_METHODS = ("armor", "armor_output")
MODES = ("sequential", "dense")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  """How to prune a model.

  Attributes:
    method: one of :data:`METHODS`.
    mode: ``sequential`` (inputs through the already-pruned blocks) or ``dense``.
    armor: ARMOR's settings (method ``armor`` only).
    sparsegpt_damp: SparseGPT's dampening (fraction of the mean diagonal).
    sparsegpt_block: SparseGPT's lazy-update block width.
    batch: calibration sequences per forward call.
    compute_dtype: dtype of the blocks' forward passes (float32 or bfloat16); statistics,
      solvers and hidden states between blocks stay float32.
  """
  method: str = "armor"
  mode: str = "sequential"
  armor: armor_lib.ArmorConfig = armor_lib.ArmorConfig()
  sparsegpt_damp: float = 0.01
  sparsegpt_block: int = 128
  batch: int = 8
  compute_dtype: str = "float32"

  def __post_init__(self):
    check_settings(self, (
        ("method", lambda v: v in METHODS, "one of " + ", ".join(METHODS)),
        ("mode", lambda v: v in MODES, "one of " + ", ".join(MODES)),
        ("sparsegpt_damp", lambda v: v > 0, "a number > 0"),
        ("sparsegpt_block", lambda v: v >= 4, "an integer >= 4"),
        ("batch", lambda v: v >= 1, "an integer >= 1"),
        ("compute_dtype", lambda v: v in COMPUTE_DTYPES, "one of " + ", ".join(COMPUTE_DTYPES)),
    ))

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    if self.method not in ARMOR_METHODS:
      d.pop("armor")
    if self.method != "sparsegpt":
      d.pop("sparsegpt_damp"), d.pop("sparsegpt_block")
    if self.compute_dtype == "float32":     # the fingerprint of runs made before the setting
      d.pop("compute_dtype")
    return d


# -- where the time goes ----------------------------------------------------------------------------


class Phases:
  """Wall seconds of a run by phase, accumulated: ``with phases("statistics"): ...``.

  :func:`prune` times ``read`` (a block's tensors from the checkpoint), ``statistics``,
  ``transfer`` (weights and statistics to a linear's device, results back), ``solve`` (a
  baseline's solver) or ARMOR's ``armor_start``, ``armor_iterations`` and ``armor_finish``,
  ``report`` (a layer's errors), ``propagate`` (the states through the pruned block, in
  sequential mode) and ``store`` (block and state files). Every phase waits for its
  results, so the seconds are the phase's own. ``compile`` holds the seconds JAX spent
  tracing, lowering and compiling while the object was :meth:`active` (it is inside the
  other phases' seconds, not beside them); ``counts`` holds ARMOR's ``iterations`` run
  and the ``layers`` solved.
  """

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self.counts: dict[str, int] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

  def count(self, name: str, n: int = 1) -> None:
    self.counts[name] = self.counts.get(name, 0) + n

  @contextlib.contextmanager
  def active(self):
    """Adds JAX's compile-time events (:mod:`jax.monitoring`) to ``compile`` meanwhile."""
    _COMPILING.append(self)
    try:
      yield self
    finally:
      _COMPILING.remove(self)


_COMPILING: list[Phases] = []
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def _on_event(event: str, seconds: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    for ph in _COMPILING:
      ph.seconds["compile"] = ph.seconds.get("compile", 0.0) + seconds


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _no_phases(name: str):
  return contextlib.nullcontext()


# -- one block ------------------------------------------------------------------------------------

def on_device(tree: Mapping, dtype: Any = None) -> dict:
  """A parameter tree as device arrays, in their stored dtypes (the forward passes cast the
  weights to the compute dtype inside their compiled code) or, given ``dtype``, floating
  leaves in it."""
  def cast(x):
    if dtype is not None and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
      x = x.astype(dtype) if isinstance(x, jax.Array) else np.asarray(x, dtype)
    return jax.device_put(x)    # no compiled program per shape, unlike jnp.asarray
  return jax.tree_util.tree_map(cast, dict(tree))


# queries per attention step in the pipeline's forward passes: the scores held at once are
# (heads, Q_CHUNK, seq) for one sequence
Q_CHUNK = 256

# resident bytes of XLA's compiler state and the run's compiled programs, which a process
# keeps until it exits (measured on CPU: about 0.1 GiB for the forward, statistics and
# baseline programs; ARMOR's iterations add about 0.1 GiB more)
PROGRAM_BYTES = {"armor": 256 << 20, "other": 128 << 20}


def _one_sequence(block_params, x, cfg, window, dtype, capture):
  return llama.block_forward(block_params, x[None], cfg, capture=capture, window=window,
                             dtype=dtype, q_chunk=Q_CHUNK)


@jax.jit(static_argnames=("cfg", "window", "dtype", "propagate"), donate_argnames=("stats",))
def _block_stats(block_params, x, stats, cfg, window, dtype, propagate):
  """Adds the inputs of the block's linears on x (n, t, hidden) to ``stats``; with
  ``propagate`` also returns the block's output. The block runs one sequence at a time (one
  sequence's activations are held, not the batch's), and each sequence's inputs are added
  as they come: the statistics are the same float32 sums, in the same order, however the
  sequences are split into calls (``batch`` changes no bit of a pruned model)."""
  def one(st, xi):
    y, inputs = _one_sequence(block_params, xi, cfg, window, dtype, True)
    st = {k: calibration.accumulate(s, inputs[k][0]) for k, s in st.items()}
    return st, y[0].astype(jnp.float32) if propagate else None
  return jax.lax.scan(one, stats, x)


@jax.jit(static_argnames=("cfg", "window", "dtype"))
def _block(block_params, x, cfg, window, dtype):
  """The block on x (n, t, hidden), one sequence at a time."""
  one = lambda _, xi: (None, _one_sequence(block_params, xi, cfg, window, dtype, False)[0]
                       .astype(jnp.float32))
  return jax.lax.scan(one, None, x)[1]


def input_widths(cfg: LlamaConfig) -> dict[str, int]:
  """The width of each distinct linear input ({"qkv", "o", "gate_up", "down"} -> d_in)."""
  return {INPUT_OF[name]: cfg.linear_shape(name)[1] for name in LINEARS}


def block_statistics(block_params: Mapping, states: np.ndarray, cfg: LlamaConfig,
                     batch: int, window: int | None = None, dtype: str = "float32",
                     propagate: bool = False) -> dict[str, calibration.Stats]:
  """Statistics ({"qkv", "o", "gate_up", "down"} -> Stats, full X^T X) of a block's inputs
  over ``states`` (n, t, hidden), ``batch`` sequences per call; with ``propagate`` the
  states are replaced, in place, by the block's outputs (what :func:`run_block` gives)."""
  stats = {k: calibration.init(d, full=True) for k, d in input_widths(cfg).items()}
  block_params = on_device(block_params)
  for i in range(0, states.shape[0], batch):
    stats, y = _block_stats(block_params, jax.device_put(states[i:i + batch]), stats, cfg, window,
                            COMPUTE_DTYPES[dtype], propagate)
    if propagate:
      states[i:i + batch] = np.asarray(y)
  for k, s in stats.items():
    calibration.finite_or_raise(s.sum_sq, f"statistics of the {k} inputs")
  return stats


def run_block(block_params: Mapping, states: np.ndarray, cfg: LlamaConfig,
              batch: int, window: int | None = None, dtype: str = "float32") -> np.ndarray:
  """The block applied to float32 hidden states (n, t, hidden), batch by batch, in place."""
  block_params = on_device(block_params)
  for i in range(0, states.shape[0], batch):
    states[i:i + batch] = np.asarray(_block(block_params, jax.device_put(states[i:i + batch]), cfg,
                                            window, COMPUTE_DTYPES[dtype]))
  return states


def armor_settings(pcfg: PruneConfig) -> armor_lib.ArmorConfig:
  """ARMOR's settings for ``pcfg.method``: ``armor_output`` is ``armor`` with the
  full-covariance objective (:mod:`armor_jax.solver.armor_output`)."""
  if pcfg.method == "armor_output":
    return dataclasses.replace(pcfg.armor, objective="output", scheme="exact")
  return pcfg.armor


def prune_linear(w: jax.Array, stats: calibration.Stats, pcfg: PruneConfig,
                 key: jax.Array, phases: Phases | None = None) -> layer_lib.PrunedLayer:
  if pcfg.method in ARMOR_METHODS:
    pl, curve = armor_lib.armor(w, stats, armor_settings(pcfg), key=key, phase=phases)
    if phases is not None:
      phases.count("iterations", len(curve) - 1)
    return pl
  if pcfg.method == "sparsegpt":
    return baselines.sparsegpt(w, stats, damp=pcfg.sparsegpt_damp, blocksize=pcfg.sparsegpt_block)
  return baselines.METHODS[pcfg.method](w, stats)


@jax.jit(static_argnames=("d_in",))
def _dense_kernel(p, d_in):
  p = {k: v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v
       for k, v in p.items()}
  return llama.pruned_from_params(p, d_in).dense().astype(jnp.float32)


def dense_block(block_params: Mapping, cfg: LlamaConfig) -> dict:
  """A block's parameters with every compressed linear reconstructed as a float32 kernel
  (whatever the stored dtype)."""
  for name in LINEARS:
    sub, lin = llama.linear_path(name)
    p = block_params[sub][lin]
    if "values" in p:
      kernel = _dense_kernel({k: v for k, v in p.items() if k != "bias"},
                             cfg.linear_shape(name)[1])
      block_params = llama.set_block_linear(block_params, name, {"kernel": kernel})
  return block_params


# Each linear's solver and errors run as compiled programs, one per shape (XLA's CPU client
# keeps every compiled program, about 1.5 MB each, for the life of the process: op-by-op
# code would compile hundreds)
@jax.jit(static_argnames=("pcfg",))
def _solve(w, stats, key, pcfg):
  return prune_linear(w.astype(jnp.float32), stats, pcfg, key)


_as_float32 = jax.jit(lambda w: w.astype(jnp.float32))


def solve_linear(w, stats: calibration.Stats, pcfg: PruneConfig,
                 key: jax.Array, phases: Phases | None = None) -> layer_lib.PrunedLayer:
  """One linear pruned (weight in any float dtype, solved in float32): a baseline as one
  compiled program; ARMOR as its own compiled iterations, the loss read between them
  (with the heap kept for reuse meanwhile: :func:`armor_jax.model.heap.iterating`).
  ``phases`` (:class:`Phases`) gets the solver's seconds."""
  if phases is not None:
    phases.count("layers")
  if pcfg.method in ARMOR_METHODS:
    with heap.iterating():
      return prune_linear(_as_float32(w), stats, pcfg, key, phases)
  with (phases or _no_phases)("solve"):
    return jax.block_until_ready(_solve(w, stats, key, pcfg))


def solve_linears(ws, stats, pcfg: PruneConfig, keys, phases: Phases | None = None
                  ) -> list[layer_lib.PrunedLayer]:
  """Same-shape linears pruned together by ARMOR (:func:`armor_jax.solver.armor.armor_many`,
  float32, the heap kept meanwhile); one statistics per linear, ``keys`` one each."""
  if pcfg.method not in ARMOR_METHODS:
    raise ValueError(f"linears are solved together by ARMOR only, not {pcfg.method!r}")
  if phases is not None:
    phases.count("layers", len(ws))
  with heap.iterating():
    res = armor_lib.armor_many([_as_float32(w) for w in ws], stats, armor_settings(pcfg),
                               keys, phase=phases)
  if phases is not None:
    phases.count("iterations", sum(len(curve) - 1 for _, curve in res))
  return [pl for pl, _ in res]


@jax.jit
def _errors(pl, w, stats):
  return layer_lib.errors(pl, w, stats.h, stats.second_moment)


def linear_groups(cfg: LlamaConfig, method: str) -> list[tuple[str, ...]]:
  """The groups of a block's linears solved together: for ARMOR, the linears of one shape
  (one vmapped program each: :func:`armor_jax.solver.armor.armor_many`), in the order of
  their first member; for the other methods, each linear alone."""
  if method not in ARMOR_METHODS:
    return [(name,) for name in LINEARS]
  groups: dict[tuple[int, int], list[str]] = {}
  for name in LINEARS:
    groups.setdefault(cfg.linear_shape(name), []).append(name)
  return [tuple(g) for g in groups.values()]


def _prune_block(bp: Mapping, stats: Mapping, cfg: LlamaConfig, pcfg: PruneConfig,
                 key: jax.Array, block: int, devices: list, on_layer,
                 phases: Phases | None = None) -> tuple[dict, list[dict]]:
  """Block ``block``'s seven linears pruned in the groups of :func:`linear_groups`, group g
  on ``devices[g % len(devices)]`` (concurrently, one thread per device, on accelerators);
  returns (compressed block, records in the order of :data:`LINEARS`). A group's
  ``seconds`` are shared equally by its records."""

  phase = phases or _no_phases

  def one(g: int, names: tuple[str, ...]):
    dev = devices[g % len(devices)]
    with jax.default_device(dev):
      with phase("transfer"):
        ws = [jax.block_until_ready(jax.device_put(bp[sub][lin]["kernel"], dev))
              for sub, lin in map(llama.linear_path, names)]
        inputs = sorted({INPUT_OF[name] for name in names})
        on_dev = {i: jax.block_until_ready(jax.device_put(stats[i], dev)) for i in inputs}
      sts = [on_dev[INPUT_OF[name]] for name in names]
      keys = [jax.random.fold_in(jax.random.fold_in(key, block), LINEARS.index(name))
              for name in names]
      t0 = time.perf_counter()
      if len(names) == 1:
        pls = [jax.block_until_ready(solve_linear(ws[0], sts[0], pcfg, keys[0], phases))]
      else:
        pls = solve_linears(ws, sts, pcfg, keys, phases)
      dt = (time.perf_counter() - t0) / len(names)
      out = []
      for name, w, st, pl in zip(names, ws, sts, pls):
        with phase("report"):
          rep = layer_lib.summary(pl, _errors(pl, w, st), w)
        rec = {"block": block, "linear": name, "d_out": int(w.shape[0]),
               "d_in": int(w.shape[1]), "proxy_loss": rep["proxy_loss"],
               "output_error": rep["output_error"], "overhead": rep["overhead"], "seconds": dt}
        with phase("transfer"):
          out.append((name, jax.device_get(pl), rec))
    return out

  groups = linear_groups(cfg, pcfg.method)
  done: dict[str, tuple] = {}

  def finished(results):
    for name, pl, rec in results:
      done[name] = (pl, rec)
      if on_layer is not None:
        on_layer(rec)

  if len(devices) == 1 or devices[0].platform == "cpu":
    # host devices share the host's cores (and executing on two from two threads can
    # deadlock XLA's CPU client): one group after another, each on its device
    for g, names in enumerate(groups):
      finished(one(g, names))
  else:
    with concurrent.futures.ThreadPoolExecutor(len(devices)) as ex:
      futures = [ex.submit(one, g, names) for g, names in enumerate(groups)]
      for f in futures:
        finished(f.result())
  cblk = dict(bp)
  for name in LINEARS:
    cblk = llama.set_block_linear(cblk, name, llama.linear_params(done[name][0]))
  return cblk, [done[name][1] for name in LINEARS]


def digest(tree: Mapping) -> str:
  """A content hash of a parameter (sub)tree: names, dtypes, shapes and bytes of its leaves."""
  h = hashlib.blake2b(digest_size=16)
  for name, x in sorted(checkpoint.flatten(tree).items()):
    a = np.ascontiguousarray(np.asarray(x))
    h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()


# -- where pruned blocks go -----------------------------------------------------------------------

class Store:
  """Pruned blocks kept in memory: the interface every store has.

  ``get(i)`` is block i's (compressed block, records, dense-weight digest) when it was
  finished with this store's settings, else None; ``put`` records a finished block;
  ``states(n)`` / ``put_states(n, x)`` keep the calibration hidden states before block n
  (only a directory keeps them: memory runs do not resume).
  """

  def __init__(self):
    self.blocks: dict[int, tuple[dict, list[dict], str]] = {}

  def get(self, i: int):
    return self.blocks.get(i)

  def has(self, i: int) -> bool:
    """Whether block i is finished with these settings (without reading its tensors)."""
    return i in self.blocks

  def put(self, i: int, cblock: Mapping, records: list[dict], dense_digest: str) -> None:
    self.blocks[i] = (dict(cblock), records, dense_digest)

  def why(self, i: int) -> str:
    """Why block i, present but unusable, is not reused ("" when it is simply absent)."""
    return ""

  def states(self, n: int) -> np.ndarray | None:
    return None

  def put_states(self, n: int, states: np.ndarray, drop: int | None = None) -> None:
    pass


def _write_with(path: Path, save, *args, **kwargs) -> None:
  with open(path, "wb") as f:    # a file object: numpy would append a suffix to the name
    save(f, *args, **kwargs)


class Checkpoint(Store):
  """A directory of pruned blocks: a compressed 2:4 checkpoint that grows block by block.

  ``block_<i>.safetensors`` holds block i's parameters (pruned linears compressed, float32,
  under ``layers_<i>/...``), ``block_<i>.json`` its records, the digest of its dense weights
  and the settings' fingerprint; ``states_<n>.npy`` the calibration hidden states before
  block n. Each file is written through a temporary name and an atomic rename, the JSON
  after the tensors, so a kill at any point leaves finished blocks and nothing torn.
  Processes pruning different block ranges may share the directory.
  :func:`armor_jax.model.checkpoint.export` turns it into a checkpoint of another dtype.
  """

  def __init__(self, path: str | os.PathLike, fingerprint: Mapping[str, Any],
               create: bool = True):
    super().__init__()
    self.path = Path(path)
    if create:       # else: read only
      self.path.mkdir(parents=True, exist_ok=True)
      checkpoint.clear_temporaries(self.path)
    self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

  def why(self, i: int) -> str:
    p = self.path / f"block_{i}.json"
    return self.info(i)[1] if p.exists() else ""

  def info(self, i: int) -> tuple[dict | None, str]:
    """(block i's JSON when it is there with the same fingerprint, else None; why not)."""
    p = self.path / f"block_{i}.json"
    if not p.exists():
      return None, f"block {i} is missing ({p.name})"
    try:
      info = json.loads(p.read_text())
    except json.JSONDecodeError:
      return None, f"{p.name} is not valid JSON"
    if info.get("fingerprint") != self.fingerprint:
      return None, f"block {i} was made with other settings ({p.name})"
    if not (self.path / f"block_{i}.safetensors").exists():
      return None, f"block {i} is missing (block_{i}.safetensors)"
    return info, ""

  def has(self, i: int) -> bool:
    return self.info(i)[0] is not None

  def get(self, i: int):
    info, _ = self.info(i)
    if info is None:
      return None
    flat = checkpoint.read_safetensors(self.path / f"block_{i}.safetensors")
    return checkpoint.unflatten(flat)[f"layers_{i}"], info["records"], info["digest"]

  def put(self, i: int, cblock: Mapping, records: list[dict], dense_digest: str) -> None:
    flat = {k: np.asarray(v) for k, v in checkpoint.flatten({f"layers_{i}": cblock}).items()}
    checkpoint.write_safetensors(self.path / f"block_{i}.safetensors", flat)
    info = {"fingerprint": self.fingerprint, "block": i, "digest": dense_digest,
            "records": records}
    checkpoint.atomic_write(self.path / f"block_{i}.json",
                            lambda t: t.write_text(json.dumps(info, indent=1)))

  def states(self, n: int) -> np.ndarray | None:
    p = self.path / f"states_{n}.npy"
    try:
      return np.load(p)
    except (FileNotFoundError, ValueError, EOFError):    # absent, or removed under us
      return None

  def put_states(self, n: int, states: np.ndarray, drop: int | None = None) -> None:
    checkpoint.atomic_write(self.path / f"states_{n}.npy",
                            lambda t: _write_with(t, np.save, states))
    if drop is not None:
      (self.path / f"states_{drop}.npy").unlink(missing_ok=True)


def fingerprint(source: Source, calib: np.ndarray, pcfg: PruneConfig, key: jax.Array) -> dict:
  """What a pruned block depends on besides its own weights: settings, architecture,
  calibration tokens, embedding and PRNG key."""
  return {"pcfg": pcfg.as_dict(), "model": source.cfg.to_hf(),
          "calib_digest": digest({"calib": np.asarray(calib)}),
          "embed_digest": digest(source.outer()["embed"]),
          "key": np.asarray(jax.random.key_data(key)).tolist()}


# -- the whole model -------------------------------------------------------------------------------

def embed_tokens(outer: Mapping, tokens: np.ndarray, batch: int | None = None) -> np.ndarray:
  """float32 hidden states (n, t, hidden) of token windows (n, t): rows of the embedding,
  read as stored (``outer["embed"]`` only)."""
  del batch
  return np.asarray(outer["embed"]["embedding"])[tokens].astype(np.float32)


def prune(source: Source, calib: np.ndarray, pcfg: PruneConfig, key: jax.Array,
          store: Store, block_range: tuple[int, int] | None = None,
          on_layer: Callable[[dict], None] | None = None,
          on_block: Callable[[int], None] | None = None,
          devices: list | None = None,
          say: Callable[[str], None] | None = None,
          phases: Phases | None = None) -> list[dict]:
  """Prunes the block linears of ``source``'s model into ``store``, one block at a time.

  Args:
    source: the dense model, read block by block.
    calib: (n, t) int32 calibration token windows.
    pcfg: method, mode and settings.
    key: PRNG key (ARMOR's official scheme samples).
    store: where finished blocks go (:class:`Checkpoint` to resume and share); blocks it
      already holds, made with the same settings from the same weights (theirs and those
      of every block before them, :func:`link`), are reused.
    block_range: (start, stop): prune blocks start .. stop-1; None = all. In ``sequential``
      mode the blocks before ``start`` must be in the store already.
    on_layer: called with each layer's record as soon as it is done.
    on_block: called with each block's index once it is in the store.
    devices: the JAX devices the linears of a block are spread over (default:
      :func:`default_devices`).
    say: called with a line when finished blocks cannot be reused, and why.
    phases: gets the seconds of each phase (:class:`Phases`); the caller activates it to
      count compile time too.

  Returns:
    The per-layer records of blocks ``start .. stop-1``: block, linear, d_out, d_in,
    proxy_loss, output_error, overhead, seconds (the solver's), block_seconds (the whole
    block: statistics, solver, propagation).

  Raises:
    InputError: a block to prune holds a NaN or Inf weight (blocks finished before it are
      in the store).
  """
  cfg = source.cfg
  start, stop = block_range or (0, cfg.num_layers)
  devices = list(devices or default_devices())
  records: list[dict] = []
  chain = [""]    # chain[i + 1]: digest of the dense weights of blocks 0 .. i
  while len(chain) <= start:
    chain.append(link(chain[-1], source.block(len(chain) - 1)))

  # the finished blocks at the start of the range, then the states before the first to prune
  first, bp = start, None
  phase = phases or _no_phases
  while first < stop:
    with phase("read"):
      bp = source.block(first)    # a NaN or Inf weight raises here, naming its file and tensor
    chain.append(link(chain[-1], bp))
    got = store.get(first)
    if got is None or got[2] != chain[first + 1]:
      why = store.why(first) if got is None else "its weights or an earlier block's changed"
      if why and say is not None:
        say(f"[pipeline] block {first}: not reused, {why}")
      break
    records += [dict(r) for r in got[1]]
    first += 1
  if first == stop:
    return records
  if pcfg.mode == "sequential":
    for j in range(first):
      if not store.has(j):
        raise InputError(f"block_range starts at block {start} in sequential mode, but block "
                         f"{j} is not pruned yet with these settings")
  n, states = first, store.states(first)
  while states is None and n > 0:
    n -= 1
    states = store.states(n)
  if states is None:
    states = embed_tokens(source.outer(), calib, pcfg.batch)
  dense = pcfg.mode == "dense"

  def forward(j: int, blk: Mapping) -> None:
    """states <- block j's outputs, computed as a fresh prune computes them (in dense mode
    by the statistics pass itself), so reused and fresh blocks give the same bits."""
    if dense:
      block_statistics(blk, states, cfg, pcfg.batch, cfg.window(j), pcfg.compute_dtype,
                       propagate=True)
    else:
      run_block(dense_block(blk, cfg), states, cfg, pcfg.batch, cfg.window(j),
                pcfg.compute_dtype)

  for j in range(n, first):     # forward to the first block to prune
    forward(j, source.block(j) if dense else store.get(j)[0])
  for i in range(first, stop):
    t_block = time.perf_counter()
    if i != first:
      with phase("read"):
        bp = source.block(i)
    if len(chain) <= i + 1:
      chain.append(link(chain[-1], bp))
    got = None if i == first else store.get(i)      # the scan above found first unusable
    if got is not None and got[2] != chain[i + 1]:
      got = None
    if got is not None:
      cblk, block_records, _ = got
      forward(i, bp if dense else cblk)
    else:
      # in dense mode the statistics pass is the propagation
      with phase("statistics"):
        stats = block_statistics(bp, states, cfg, pcfg.batch, cfg.window(i),
                                 pcfg.compute_dtype, propagate=dense)
      cblk, block_records = _prune_block(bp, stats, cfg, pcfg, key, i, devices, on_layer,
                                          phases)
      del stats
      if not dense:
        with phase("propagate"):
          forward(i, cblk)
    if got is None:
      secs = time.perf_counter() - t_block
      block_records = [dict(r, block_seconds=secs) for r in block_records]
      with phase("store"):
        store.put(i, cblk, block_records, chain[i + 1])
    records += block_records
    if i + 1 < cfg.num_layers:
      with phase("store"):
        store.put_states(i + 1, states, drop=i if i > start else None)
    if on_block is not None:
      on_block(i)
  return records


def default_devices() -> list:
  """Every local accelerator; on a host without one, the first CPU device (host devices
  share the same cores, so spreading over them only compiles each solver once per device)."""
  devs = jax.local_devices()
  return devs if devs[0].platform != "cpu" else devs[:1]


def link(prev: str, block_params: Mapping) -> str:
  """The digest of the dense weights of blocks 0 .. i, from that of blocks 0 .. i-1 and block
  i's own: a pruned block depends on every block before it (its inputs), in both modes."""
  return hashlib.blake2b((prev + digest(block_params)).encode(), digest_size=16).hexdigest()


def pruned_block(store: Store, source: Source, i: int) -> dict:
  """Block i of the pruned model: from the store when it is there, else the dense block."""
  got = store.get(i)
  return got[0] if got is not None else source.block(i)


def assemble_check(store: Checkpoint, cfg: LlamaConfig, source: Source | None = None) -> None:
  """Raises :class:`InputError` naming the first block that is missing from a shared
  directory, was made with other settings or (given ``source``) from other weights."""
  chain = ""
  for i in range(cfg.num_layers):
    info, why = store.info(i)
    if info is None:
      raise InputError(f"{store.path}: {why}")
    if source is not None:
      chain = link(chain, source.block(i))
      if info["digest"] != chain:
        raise InputError(f"{store.path}: block {i} was made from other weights than "
                         f"{source.source} has (block_{i}.json)")


def prune_model(params: Mapping, cfg: LlamaConfig, calib: np.ndarray, pcfg: PruneConfig,
                key: jax.Array, checkpoint: str | os.PathLike | None = None,
                on_layer: Callable[[dict], None] | None = None,
                blocks: int | None = None,
                say: Callable[[str], None] | None = None) -> tuple[dict, dict, list[dict]]:
  """:func:`prune` for a model held in memory: blocks 0 .. ``blocks``-1 (None = all).

  Returns:
    (dense-kernel parameters of the pruned model; compressed parameters, each pruned block
     linear as :func:`llama.linear_params`; per-layer records).
  """
  from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
  source = loaders.from_params(loaders.Model(cfg, dict(params), None, "memory"))
  end = cfg.num_layers if blocks is None else min(cfg.num_layers, blocks)
  store = (Store() if checkpoint is None
           else Checkpoint(checkpoint, fingerprint(source, calib, pcfg, key)))
  records = prune(source, calib, pcfg, key, store, (0, end), on_layer=on_layer, say=say)
  compressed, dense_params = dict(params), dict(params)
  for i in range(end):
    cblk = store.get(i)[0]
    compressed[f"layers_{i}"] = jax.tree_util.tree_map(jnp.asarray, cblk)
    dense_params[f"layers_{i}"] = dense_block(on_device(cblk, jnp.float32), cfg)
  return dense_params, compressed, records


# -- evaluation, streamed --------------------------------------------------------------------------

@jax.jit(static_argnames=("cfg",))
def _head_nll(outer, x, windows, cfg):
  return text.nll_sums(llama.head(outer, x, cfg), windows)


def perplexity(block: Callable[[int], Mapping], outer: Callable[[], Mapping], cfg: LlamaConfig,
               windows: np.ndarray, batch: int, dtype: str = "float32",
               progress: Callable[[int], None] | None = None) -> float:
  """exp(mean next-token NLL) over ``windows`` (w, t) of the model whose block i is
  ``block(i)`` (dense or compressed, any stored dtype) and whose embedding, final norm and
  head are ``outer()``: all windows advance through one block at a time, so only one
  block's weights are held (the embedding while embedding, the head at the end)."""
  states = embed_tokens(outer(), windows, batch)
  for i in range(cfg.num_layers):
    run_block(dense_block(block(i), cfg), states, cfg, batch,
              cfg.window(i), dtype)
    if progress is not None:
      progress(i + 1)
  head = _head_params(outer(), cfg)
  total, count = 0.0, 0
  for j in range(len(windows)):       # one window's logits at a time: (t, vocab) float32
    s, c = _head_nll(head, jax.device_put(states[j:j + 1]), jax.device_put(windows[j:j + 1]), cfg)
    total += float(s)
    count += int(c)
  return float(np.exp(total / count))


def _head_params(outer: Mapping, cfg: LlamaConfig) -> dict:
  """What :func:`llama.head` reads (the final norm and the head or tied embedding), float32."""
  keep = ("norm", "embed") if cfg.tie_embeddings else ("norm", "lm_head")
  return on_device({k: outer[k] for k in keep})


def generate(block: Callable[[int], Mapping], outer: Callable[[], Mapping], cfg: LlamaConfig,
             ids: Iterable[int], n: int, dtype: str = "float32",
             hold_bytes: int = 1 << 30) -> list[int]:
  """``ids`` followed by ``n`` greedy tokens.

  Each token is a streamed forward pass over the prompt and the tokens so far, padded with
  zeros to the final length: causal attention leaves a position unchanged by what follows
  it, and one compiled block serves every step. The embedding and head are read once; the
  blocks, reconstructed dense in float32, are kept while their total stays within
  ``hold_bytes`` and read again for every token past that.
  """
  ids = list(ids)
  length = len(ids) + n
  parts = outer()
  head = _head_params(parts, cfg)
  held: dict[int, dict] = {}
  room = hold_bytes
  for _ in range(n):
    tokens = np.zeros((1, length), np.int32)
    tokens[0, :len(ids)] = ids
    x = embed_tokens(parts, tokens)
    for i in range(cfg.num_layers):
      bp = held.get(i)
      if bp is None:
        bp = on_device(dense_block(block(i), cfg))
        size = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(bp))
        if size <= room:
          held[i], room = bp, room - size
      run_block(bp, x, cfg, 1, cfg.window(i), dtype)
    logits = llama.head(head, jnp.asarray(x[:, len(ids) - 1:len(ids)]), cfg)
    ids.append(int(jnp.argmax(logits[0, -1])))
  return ids


# -- the memory plan -------------------------------------------------------------------------------

def forward_bytes(cfg: LlamaConfig, seqs: int, seq: int, capture: bool) -> int:
  """float32 bytes one call of the pipeline's block forward over ``seqs`` sequences of
  ``seq`` tokens holds at once: the batch's input and output states, one sequence's
  activations (the call runs one sequence at a time: attention scores and probabilities
  for :data:`Q_CHUNK` queries, q/k/v/o, the MLP's three activations) and, with
  ``capture``, that sequence's inputs of the seven linears (added to the statistics before
  the next sequence runs)."""
  h, inter = cfg.hidden_size, cfg.intermediate_size
  q, kv = cfg.linear_shape("q")[0], cfg.linear_shape("k")[0]
  one = 2 * cfg.num_heads * min(Q_CHUNK, seq) * seq + seq * (2 * (q + 2 * kv) + q + 3 * inter
                                                             + 2 * h)
  if capture:
    one += seq * (2 * h + q + inter)
  return 4 * (2 * seqs * seq * h + one)


# XLA's buffers of the vmapped iterations per problem, over one problem's: 1.07-1.10x
# measured (1408x512, 5632x2048); tests/test_armor_stream.py checks the group's bound
BATCHED_SCRATCH = 1.12


def solver_bytes(shape: tuple[int, int], n: int, method: str,
                 armor: armor_lib.ArmorConfig = armor_lib.ArmorConfig()) -> int:
  """Bytes the solver holds for ``n`` linears of ``shape`` solved together
  (:func:`linear_groups`): a baseline's four float32 copies of its weight; for ARMOR the
  weight in float32 and :func:`armor_jax.solver.armor.working_bytes` per linear and, for
  a group, the stacked weights (and full-covariance statistics) besides."""
  m = 4 * math.prod(shape)
  if method not in ARMOR_METHODS:
    return 4 * m
  acfg = armor_settings(PruneConfig(method, armor=armor))
  work = armor_lib.working_bytes(*shape, acfg)
  if n == 1:
    return m + work
  # the float32 weights and their stack (and the stacked full X^T X), then the vmapped
  # iterations (BATCHED_SCRATCH)
  return n * (2 * m + math.ceil(BATCHED_SCRATCH * work)
              + (4 * shape[1] ** 2 if acfg.objective == "output" else 0))


def plan(source: Source, n_calib: int, calib_len: int, n_eval: int, eval_len: int,
         batch: int, method: str, dtype: str = "float32",
         armor: armor_lib.ArmorConfig = armor_lib.ArmorConfig()) -> dict[str, int]:
  """The bytes a streamed prune-and-evaluate run holds, by part and at its peak, without
  the process's own libraries (measure those: the resident size before any work).

  The parts: one block's weights as stored, cast to the compute dtype ``dtype`` (what is
  stored otherwise), pruned (compressed, float32) and reconstructed dense in float32 for
  propagation; the calibration hidden states; one block's statistics
  (a float32 X^T X per distinct input); one batch of a forward pass
  (:func:`forward_bytes`); the solver on the largest group of linears solved together
  (:func:`solver_bytes`); the evaluation hidden states; the embedding as stored (read to
  embed, then dropped); the head as stored, in float32 and one window's logits. The peak
  (``total``) is the largest of four phases: the statistics pass, the solvers, propagation
  and evaluation.
  """
  cfg = source.cfg
  compute = COMPUTE_DTYPES[dtype]
  f32, h = 4, cfg.hidden_size
  n_block = cfg.block_params() // cfg.num_layers     # one block's linears
  head_name = "embed" if cfg.tie_embeddings else "lm_head"
  parts = {
      "block_stored": source.nbytes("layers_0"),
      "block_pruned": (f32 // 2 + 1) * n_block,
      "block_dense_f32": f32 * n_block,
      # the statistics pass casts weights stored in another dtype to the compute dtype
      # inside its compiled call, all at once (XLA schedules the casts first)
      "block_cast": sum(np.dtype(compute).itemsize * math.prod(cfg.linear_shape(name))
                        for name in LINEARS
                        if source.stored["/".join(("layers_0",) + llama.linear_path(name)
                                                  + ("kernel",))] != np.dtype(compute)),
      "calibration_states": f32 * n_calib * calib_len * h,
      "statistics": f32 * sum(d * d for d in input_widths(cfg).values()),
      "forward_capture": forward_bytes(cfg, batch, calib_len, True),
      "forward": forward_bytes(cfg, batch, calib_len, False),
      "solver": max(solver_bytes(cfg.linear_shape(g[0]), len(g), method, armor)
                    for g in linear_groups(cfg, method)),
      "evaluation_states": f32 * n_eval * eval_len * h,
      "embedding": source.nbytes("embed"),
      # the head as stored, cast to float32 inside its compiled call, one window's logits
      "head": source.nbytes(head_name) + (f32 * cfg.vocab_size * h if source.stored[
          head_name + ("/embedding" if cfg.tie_embeddings else "/kernel")] != np.float32 else 0)
              + 3 * f32 * eval_len * cfg.vocab_size,
      "programs": PROGRAM_BYTES["armor" if method in ARMOR_METHODS else "other"],
  }
  p = parts
  phases = {
      "statistics_pass": p["block_stored"] + p["block_cast"] + p["calibration_states"]
                         + p["statistics"] + p["forward_capture"],
      "solvers": p["block_stored"] + p["calibration_states"] + p["statistics"]
                 + p["block_pruned"] + p["solver"],
      "propagation": p["block_stored"] + p["calibration_states"] + p["block_pruned"]
                     + p["block_dense_f32"] + p["forward"],
      "evaluation": p["evaluation_states"] + max(
          p["block_stored"] + p["block_dense_f32"]
          + forward_bytes(cfg, batch, eval_len, False), p["embedding"], p["head"]),
  }
  phases = {k: v + p["programs"] for k, v in phases.items()}
  return dict(parts, **{f"phase_{k}": v for k, v in phases.items()}, total=max(phases.values()))


def sparsity_check(compressed: Mapping, cfg: LlamaConfig) -> float:
  """Fraction of zeros over every block linear (0.5 for a 2:4 model), from the masks."""
  kept = total = 0
  for i in range(cfg.num_layers):
    for name in LINEARS:
      p = llama.get_linear(compressed, i, name)
      d_out, d_in = cfg.linear_shape(name)
      if "values" in p:
        mask = llama.pruned_from_params(p, d_in).mask()
        kept += int(np.asarray(mask).sum())
      else:
        kept += d_out * d_in
      total += d_out * d_in
  return 1.0 - kept / total
