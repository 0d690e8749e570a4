"""What every bandit system here shares: the algorithm and environment interfaces and the run loop.

An algorithm is a triple of pure functions, in the shape of an optax
transformation::

    state = algo.init(key, spec)             # spec: what the learner may know
    action = algo.act(key, state)            # the arm(s) it requests this round
    action = algo.act(key, state, context)   # ... when the environment shows a context first
    state = algo.update(state, action, obs)  # obs: what it observed

An environment follows gymnax: ``reset(key, params) -> state`` and
``step(key, state, action, params) -> (state, obs, outcome)``, where ``outcome``
is what the round cost, hidden from the learner: the arm the environment actually
pulled (erasure bandits; the run's ``regret_of`` turns it into pseudo-regret through
the gaps) or each agent's pseudo-regret itself (linear bandits). An environment may
show the learner a ``context`` before it acts (a linear bandit's action set).

:func:`simulate` runs a batch of (grid point, seed) pairs in one jitted call: an
outer ``lax.scan`` over chunks of rounds (progress is reported once per chunk; each
chunk's randomness is drawn in one vectorized call) and inside each chunk a
``lax.scan`` over rounds; the regret curve has a point per chunk or per round.
:func:`run` is that call, jitted, with each local device simulating its share of the
runs (:func:`on_each_device`). Memory is O(grid x seeds x arms) plus the curve.

Layout convention: per-arm arrays are (K, *batch) and per-run scalars
(*batch), batch axes trailing. Algorithms written with the helpers below
(:func:`take`, :func:`add_at`, :func:`first_true`, reductions over axis 0)
are batch-polymorphic: the same code runs one instance, shape (K,), or a whole
grid of seeds, shape (K, G, S), without ``vmap``, with runs contiguous in
memory. On CPU that is several times faster than ``vmap`` over runs, whose
batching puts the run axis first and turns every arm reduction into a strided
one. Algorithms not written that way run through the ``vmap`` path.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PRNGKey = jax.Array


class BanditSpec(struct.PyTreeNode):
  """What a learner is told about its problem (fields may be traced).

  Per run (a batch adds trailing axes to every field):

  Attributes:
    arm_mask: (K_max,) bool, which arm slots exist (K = arm_mask.sum(0)); grids
      over K pad to the largest K and mask the rest.
    horizon: () int32, the number of rounds T.
    eps: () or (M,) float32, the erasure probability(ies); algorithms that
      assume it known (the papers' L-SAE, the repetition wrapper) read it.
  """
  arm_mask: jax.Array
  horizon: jax.Array
  eps: jax.Array

  @property
  def n_arms(self) -> jax.Array:
    return jnp.sum(self.arm_mask.astype(jnp.int32), axis=0)


def _unchanged(state):
  return state


class Algorithm(NamedTuple):
  """A bandit algorithm as pure functions (see module docstring).

  ``export`` maps the final state to the layout callers read (the simulator applies
  it to the state it returns).
  """
  init: Callable[[PRNGKey, Any], Any]
  act: Callable[..., jax.Array]
  update: Callable[[Any, jax.Array, Any], Any]
  export: Callable[[Any], Any] = _unchanged


class Environment(NamedTuple):
  """A bandit environment as pure functions (gymnax shape).

  ``step(key, state, action, params)`` is ``step_drawn(draw(key, (), params),
  state, action, params)``: the randomness of a round is drawn by ``draw`` and
  consumed by ``step_drawn``, so a simulator can draw many rounds at once
  (``draw(key, (n,), params)`` for one run's params, one vectorized call) and scan
  over them. ``context(state, params)``, if given, is what the learner sees before it
  acts (passed to ``act`` as its third argument). ``totals(state)``, if given, maps
  the final state to named per-run counters (an erasure channel's transmissions),
  which :func:`simulate` returns next to the regret.

  An environment whose randomness is ``n_uniforms`` uniforms on [0, 1) per
  round (and agent) also gives ``from_uniforms`` (array (n_uniforms, *rounds,
  *shape) -> draws); ``draw`` is then ``from_uniforms`` of
  ``jax.random.uniform``, and :func:`simulate` feeds it
  :func:`counter_uniforms` instead, one counter-based stream per run.
  """
  reset: Callable[[PRNGKey, Any], Any]
  step: Callable[[PRNGKey, Any, jax.Array, Any], tuple[Any, Any, jax.Array]]
  draw: Callable[[PRNGKey, tuple, Any], Any]
  step_drawn: Callable[[Any, Any, jax.Array, Any], tuple[Any, Any, jax.Array]]
  n_uniforms: int = 0
  from_uniforms: Callable[[jax.Array], Any] | None = None
  context: Callable[[Any, Any], Any] | None = None
  totals: Callable[[Any], dict] | None = None


class SimResult(NamedTuple):
  """Output of :func:`simulate`; leading axes are the batch axes of the inputs.

  Attributes:
    rounds: (n,) int32, the round count at each point of the curve (the end of
      each chunk, or every round; the last one equals the largest horizon).
    regret: (..., n) float32, cumulative pseudo-regret (summed over agents) at
      each point (constant after a run's own horizon).
    final_regret: (...,) float32, cumulative pseudo-regret at the run's horizon.
    state: the algorithm's final state (``algo.export``-ed; batch axes
      trailing), when asked for.
    totals: dict of named (...,) per-run counters at the run's horizon, from the
      environment's ``totals`` (None when it has none).
  """
  rounds: jax.Array
  regret: jax.Array
  final_regret: jax.Array
  state: Any = None
  totals: dict | None = None


UNROLL_ARMS = 16  # up to this many arms, per-arm lookups are select chains (see take)


def _arm_iota(k: int, ndim: int, dtype) -> jax.Array:
  """arange(k) shaped (k, 1, ..., 1) to broadcast against (k, *batch)."""
  return jnp.arange(k, dtype=dtype).reshape((k,) + (1,) * ndim)


def take(x: jax.Array, i: jax.Array, *, unroll: int = UNROLL_ARMS) -> jax.Array:
  """``x[i]`` along the arm axis 0, for every run of a batch.

  Args:
    x: (K, *batch) per-arm values.
    i: (*lead, *batch) integer arm indices (``lead`` e.g. the agents).

  Returns:
    (*lead, *batch) with ``out[..., b] = x[i[..., b], b]``. For up to
    ``UNROLL_ARMS`` arms a chain of K - 1 elementwise selects, which XLA fuses
    into its consumer (no reduction kernel: on CPU each kernel launch costs
    about as much as the arithmetic on a device's runs); for more arms a
    one-hot masked sum over axis 0. Both are several times faster on CPU than
    a batched gather. Out-of-range indices give ``x[0]`` (chain) or 0 (sum).
    ``unroll`` moves the threshold (e.g. for lookups over a few dozen agents).
  """
  i = jnp.asarray(i)
  lead = i.ndim - (x.ndim - 1)
  xb = x.reshape(x.shape[:1] + (1,) * lead + x.shape[1:])
  if x.shape[0] <= unroll:
    out = jnp.broadcast_to(xb[0], jnp.broadcast_shapes(xb.shape[1:], i.shape))
    for k in range(1, x.shape[0]):
      out = jnp.where(i == k, xb[k], out)
    return out
  hit = _arm_iota(x.shape[0], i.ndim, i.dtype) == i[None]
  if x.dtype == jnp.bool_:
    return jnp.any(hit & xb, axis=0)
  return jnp.sum(jnp.where(hit, xb, jnp.zeros((), x.dtype)), axis=0)


def add_at(x: jax.Array, i: jax.Array, v) -> jax.Array:
  """``x.at[i].add(v)`` along the arm axis 0 for every run: x (K, *b), i and v (*b)."""
  i = jnp.asarray(i)
  hit = _arm_iota(x.shape[0], i.ndim, i.dtype) == i[None]
  return x + jnp.where(hit, jnp.asarray(v, x.dtype)[None], jnp.zeros((), x.dtype))


def first_index(mask: jax.Array) -> jax.Array:
  """The lowest arm index where ``mask`` (K, *b) is set, per run; K where none is.

  A min-reduction, cheaper on CPU than argmax's (value, index) reduction, and
  it answers "is any set?" (``< K``) in the same pass.
  """
  k = mask.shape[0]
  return jnp.min(jnp.where(mask, _arm_iota(k, mask.ndim - 1, jnp.int32), k), axis=0)


def first_true(mask: jax.Array) -> jax.Array:
  """The lowest arm index where ``mask`` (K, *b) is set, per run; 0 where none is."""
  first = first_index(mask)
  return jnp.where(first == mask.shape[0], 0, first).astype(jnp.int32)


def argmax_arms(x: jax.Array) -> jax.Array:
  """The lowest arm index attaining the max of ``x`` (K, *b) over axis 0."""
  return first_true(x == jnp.max(x, axis=0))


def tree_select(pred: jax.Array, on_true, on_false):
  """Leafwise ``where(pred, a, b)`` for two pytrees of the same structure."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array):
  """Threefry-2x32 (20 rounds; Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
  SC 2011) of counters (x0, x1) under keys (k0, k1), all uint32 of one shape.

  The hash of ``jax.random``'s default generator, bit for bit, written out round by
  round: on CPU, JAX lowers its own with the rounds in a loop, which materializes
  every intermediate array; unrolled, XLA fuses the whole hash into one pass (about
  10x faster on a chunk of draws).
  """
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for g in range(5):
    for r in _ROTATIONS[g % 2]:
      x0 = x0 + x1
      x1 = (x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))
      x1 = x1 ^ x0
    x0 = x0 + ks[(g + 1) % 3]
    x1 = x1 + ks[(g + 2) % 3] + jnp.uint32(g + 1)
  return x0, x1


def counter_uniforms(keys: jax.Array, start: jax.Array, n_rounds: int, n_fields: int,
                     lead_shape: tuple = ()) -> jax.Array:
  """Uniforms on [0, 1) for rounds ``start .. start + n_rounds - 1`` of every run.

  A counter-based stream per run (Threefry-2x32 keyed by the run's key, the
  counter being (round, lead index x field pair)), laid out with the runs
  trailing: shape (n_fields, n_rounds, *lead_shape, *keys.shape). Round r of
  run b depends only on (keys[b], r), not on the batch or the chunking, and
  one hash gives two fields. It is the same hash ``jax.random`` uses, applied
  to the whole batch at once: ``vmap`` of ``jax.random.uniform`` over
  per-run keys computes the same kind of stream about 2.5x slower on CPU
  (it builds each run's counters and then transposes runs to the back).

  Args:
    keys: (*batch) typed PRNG keys with the default threefry2x32 impl.
    start: () integer, the first round's index.
    n_rounds: static, rounds to draw.
    n_fields: static, uniforms per round and lead element.
    lead_shape: static, e.g. (M,) for M agents.
  """
  data = jax.random.key_data(keys)
  if data.shape[-1:] != (2,) or data.dtype != jnp.uint32:
    raise ValueError("counter_uniforms needs threefry2x32 keys")
  n_pairs = -(-n_fields // 2)
  n_lead = math.prod(lead_shape)
  shape = (n_rounds, n_lead * n_pairs) + keys.shape
  expand = (None, None) + (slice(None),) * keys.ndim
  k1 = jnp.broadcast_to(data[..., 0][expand], shape)
  k2 = jnp.broadcast_to(data[..., 1][expand], shape)
  rounds = jnp.asarray(start, jnp.uint32) + jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
  slots = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
  w0, w1 = threefry2x32(k1, k2, rounds, slots)
  # Field 2p + h of a lead element is word h of its pair p: (rounds, lead * pairs, *batch)
  # -> (fields, rounds, *lead, *batch), each field read from one word array (a field that
  # mixed both would make XLA compute the hash twice per element).
  by_pair = lambda w: w.reshape((n_rounds, n_lead, n_pairs) + keys.shape)
  words = (by_pair(w0), by_pair(w1))
  fields = [unit_float(words[f % 2][:, :, f // 2]) for f in range(n_fields)]
  return jnp.stack(fields).reshape((n_fields, n_rounds) + tuple(lead_shape) + keys.shape)


def unit_float(bits: jax.Array) -> jax.Array:
  """Uniforms on [0, 1) from uint32 words: the top 23 bits as a mantissa (as ``jax.random``)."""
  one = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
  return one - 1.0


def shard_runs(tree):
  """Places arrays with their last (run) axis split over all local devices.

  Runs are independent, so ``jit`` partitions the whole simulation without
  communication; on a CPU host exposed as several devices (see
  :func:`experiments.main` and ``--xla_force_host_platform_device_count``)
  this uses every core. Arrays whose last axis does not divide evenly, and
  single-device hosts, are left as they are.
  """
  devices = jax.local_devices()
  if len(devices) < 2:
    return tree
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(devices), ("runs",))

  def put(x):
    if jnp.ndim(x) == 0 or jnp.shape(x)[-1] % len(devices):
      return x
    spec = PartitionSpec(*([None] * (jnp.ndim(x) - 1) + ["runs"]))
    return jax.device_put(x, NamedSharding(mesh, spec))

  return jax.tree.map(put, tree)


def on_each_device(fn: Callable, n_runs: int, out_run_axes) -> Callable:
  """``fn`` run by every local device on its share of the runs (``shard_map``).

  Every argument of the returned function carries the runs on its last axis
  (scalars are replicated); ``out_run_axes`` is a pytree matching ``fn``'s
  output with, per leaf, the position of the run axis (None: the same on every
  device). Unlike automatic sharding (:func:`shard_runs`), each device runs
  its own program, so a reduction over the runs inside ``fn`` stays local:
  that is what lets an algorithm skip rare work with ``lax.cond(jnp.any(...))``
  (under automatic sharding that ``any`` is a cross-device reduction every
  round). ``fn`` is returned unchanged on one device, or when ``n_runs`` does
  not divide evenly.
  """
  devices = jax.local_devices()
  if len(devices) < 2 or n_runs % len(devices):
    return fn
  from jax.sharding import Mesh, PartitionSpec  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(devices), ("runs",))

  def spec_at(ndim: int, axis: int | None) -> PartitionSpec:
    if axis is None or ndim == 0:
      return PartitionSpec()
    axis %= ndim
    return PartitionSpec(*(["runs" if a == axis else None for a in range(ndim)]))

  def mapped(*args):
    in_specs = jax.tree.map(lambda x: spec_at(jnp.ndim(x), -1), args)
    out_shapes = jax.eval_shape(fn, *args)
    out_specs = jax.tree.map(lambda sh, ax: spec_at(len(sh.shape), ax), out_shapes,
                             out_run_axes, is_leaf=lambda x: x is None)
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)(*args)

  return mapped


def chunking(horizon: int, n_points: int, *, divisor: bool = False, per_round_floats: int = 0,
             max_floats: int = 8_000_000) -> tuple[int, int]:
  """(number of chunks, rounds per chunk) covering ``horizon`` rounds in about ``n_points``.

  By default ``min(n_points, horizon)`` chunks of ``ceil(horizon / n_chunks)`` rounds
  (the last may overhang; :func:`simulate` masks the rounds past the horizon). With
  ``divisor``, the chunk length is the largest divisor of ``horizon`` not above that,
  and small enough that a chunk's draws (``per_round_floats`` per round) stay within
  ``max_floats``.
  """
  if not divisor:
    n_chunks = max(1, min(n_points, horizon))
    return n_chunks, math.ceil(horizon / n_chunks)
  target = max(1, min(math.ceil(horizon / max(n_points, 1)),
                      max_floats // max(per_round_floats, 1)))
  chunk_len = max(c for c in range(1, target + 1) if horizon % c == 0)
  return horizon // chunk_len, chunk_len


def per_run(fn: Callable, n_batch: int) -> Callable:
  """Maps ``fn`` of one run over the ``n_batch`` trailing batch axes of every argument."""
  for _ in range(n_batch):
    fn = jax.vmap(fn, in_axes=-1, out_axes=-1)
  return fn


def simulate(env: Environment, algo: Algorithm, env_params, spec, keys: jax.Array, *,
             horizon: int, chunks: tuple[int, int], regret_of: Callable | None = None,
             ragged: bool = False, native_batch: bool = False, every_round: bool = False,
             keep_state: bool = False,
             progress: Callable[[int], None] | None = None) -> SimResult:
  """Runs ``algo`` on ``env`` for a batch of runs; jit-compatible.

  Layout: per-arm arrays are (K, *batch), per-agent arrays (M, *batch), per-run
  scalars (*batch); ``batch`` is the shape of ``keys`` (e.g. (grid, seeds)).

  Args:
    env: the environment.
    algo: the algorithm.
    env_params: environment parameters, batch axes trailing.
    spec: the learner's spec, batch axes trailing (``spec.horizon`` per run when
      ``ragged``).
    keys: (*batch) PRNG keys, one per run.
    horizon: static, the largest horizon in the batch.
    chunks: static, (number of chunks, rounds per chunk), e.g. from :func:`chunking`.
    regret_of: maps a round's outcome (what ``step`` returns third) to the
      pseudo-regret it cost, (*agents, *batch); None when the outcome is it.
    ragged: static; True when horizons differ across the batch, so rounds past
      a run's own horizon must be masked out.
    native_batch: static; True when ``algo`` and ``env.step_drawn`` are
      batch-polymorphic (written for (K, *batch) arrays, reducing over axis 0
      only, and ignoring or accepting a batch of keys in ``act``): they are then
      called once on the whole batch. Otherwise each run is ``vmap``-ped. Both give
      the same numbers; the native form is several times faster on CPU.
      ``env.reset`` and ``env.draw`` are always called per run.
    every_round: static; a curve point per round rather than per chunk.
    keep_state: static; return the algorithm's final state.
    progress: optional host callback called with the number of finished chunks.

  Returns:
    A :class:`SimResult` (batch axes leading in its arrays).
  """
  batch_shape = keys.shape
  nb = len(batch_shape)
  n_chunks, chunk_len = chunks
  # Rounds past a run's horizon are masked: when horizons differ, or when the
  # last chunk overhangs the horizon.
  masked = ragged or n_chunks * chunk_len != horizon
  batched = (lambda fn: fn) if native_batch else (lambda fn: per_run(fn, nb))
  regret_of = regret_of or (lambda outcome: outcome)

  def act(key, algo_s, env_s):
    if env.context is None:
      return batched(algo.act)(key, algo_s)
    return batched(algo.act)(key, algo_s, batched(env.context)(env_s, env_params))

  key_env, key_algo = per_run(lambda k: tuple(jax.random.split(k)), nb)(keys)
  env_state = per_run(env.reset, nb)(key_env, env_params)
  algo_state = batched(algo.init)(key_algo, spec)

  def round_fn(inner, xs):
    env_s, algo_s, regret, t = inner
    drawn, key_act = xs
    action = act(key_act, algo_s, env_s)
    new_env_s, obs, outcome = batched(env.step_drawn)(drawn, env_s, action, env_params)
    new_algo_s = batched(algo.update)(algo_s, action, obs)
    inst = regret_of(outcome)
    inst = jnp.sum(inst, axis=tuple(range(inst.ndim - nb)))
    if masked:
      live = t < (spec.horizon if ragged else horizon)
      new_env_s = tree_select(live, new_env_s, env_s)
      new_algo_s = tree_select(live, new_algo_s, algo_s)
      inst = jnp.where(live, inst, 0.0)
    regret = regret + inst
    return (new_env_s, new_algo_s, regret, t + 1), (regret if every_round else None)

  # Environments drawing only uniforms get one counter-based stream per run.
  fast_draws = (env.from_uniforms is not None
                and str(jax.random.key_impl(keys)) == "threefry2x32")
  if fast_draws:
    first = lambda tree: jax.tree.map(lambda x: x[(..., *(0,) * nb)], tree)
    # The shape of one run's action (() for one agent, (M,) for M agents).
    action_shape = jax.eval_shape(lambda k, sp: algo.act(k, algo.init(k, sp)),
                                  jax.random.key(0), first(spec)).shape
    key_stream = per_run(lambda k: jax.random.fold_in(k, 1 << 30), nb)(keys)

  def chunk_keys(key, params, chunk):
    key_act, key_env = jax.random.split(jax.random.fold_in(key, chunk))
    # One act key per round and run (deterministic algorithms ignore them).
    drawn = None if fast_draws else env.draw(key_env, (chunk_len,), params)
    return drawn, jax.random.split(key_act, chunk_len)

  def outer(carry, chunk):
    # (chunk_len, *action_shape, *batch) draws: rounds lead, runs trail.
    drawn, act_keys = per_run(chunk_keys, nb)(keys, env_params,
                                              jnp.broadcast_to(chunk, batch_shape))
    if fast_draws:
      drawn = env.from_uniforms(counter_uniforms(key_stream, chunk * chunk_len, chunk_len,
                                                 env.n_uniforms, action_shape))
    carry, curve = jax.lax.scan(round_fn, carry, (drawn, act_keys))
    if progress is not None:
      jax.debug.callback(progress, chunk + 1)
    return carry, (curve if every_round else carry[2])

  init = (env_state, algo_state, jnp.zeros(batch_shape, jnp.float32),
          jnp.zeros(batch_shape, jnp.int32))
  (env_state, algo_state, final, _), curve = jax.lax.scan(outer, init, jnp.arange(n_chunks))
  if every_round:
    curve = curve.reshape((n_chunks * chunk_len,) + batch_shape)[:horizon]
    rounds = jnp.arange(1, horizon + 1, dtype=jnp.int32)
  else:
    rounds = jnp.minimum((jnp.arange(n_chunks) + 1) * chunk_len, horizon).astype(jnp.int32)
  totals = None if env.totals is None else env.totals(env_state)
  return SimResult(rounds=rounds, regret=jnp.moveaxis(curve, 0, -1), final_regret=final,
                   state=algo.export(algo_state) if keep_state else None, totals=totals)


@functools.partial(jax.jit, static_argnames=(
    "system", "how", "batch_shape", "horizon", "chunks", "ragged", "native_batch",
    "every_round", "keep_state", "progress"))
def _run(key, data, *, system, how, batch_shape, horizon, chunks, ragged, native_batch,
         every_round, keep_state, progress):
  keys = jax.random.split(key, math.prod(batch_shape)).reshape(batch_shape)

  def local(keys, data):
    env, algo, params, spec, regret_of = system(data, how)
    res = simulate(env, algo, params, spec, keys, horizon=horizon, chunks=chunks,
                   regret_of=regret_of, ragged=ragged, native_batch=native_batch,
                   every_round=every_round, keep_state=keep_state, progress=progress)
    res = res if keep_state else res._replace(state=())   # () has no leaves to map
    return res._replace(totals={} if res.totals is None else res.totals)

  run_axis = len(batch_shape) - 1
  shapes = jax.eval_shape(local, keys, data)
  out_run_axes = SimResult(rounds=None, regret=run_axis, final_regret=run_axis,
                           state=jax.tree.map(lambda x: -1 if x.ndim else None, shapes.state),
                           totals=jax.tree.map(lambda x: run_axis, shapes.totals))
  res = on_each_device(local, batch_shape[-1], out_run_axes)(keys, data)
  res = res._replace(totals=res.totals or None)
  return res if keep_state else res._replace(state=None)


def run(system: Callable, how, data, key: jax.Array, *, batch_shape: tuple[int, ...],
        horizon: int, chunks: tuple[int, int], ragged: bool = False,
        native_batch: bool = True, every_round: bool = False, keep_state: bool = False,
        progress: Callable[[int], None] | None = None) -> SimResult:
  """Simulates a batch of runs in one jitted call, each local device on its share.

  Run b of the batch uses key ``split(key, n_runs)[b]`` (flat index). Each device
  simulates its share of the last batch axis as its own program
  (:func:`on_each_device`), so that an algorithm's reductions over runs stay local.

  Args:
    system: ``system(data, how) -> (env, algo, env_params, spec, regret_of)``, a
      module-level function (it is a static argument: the same function and ``how``
      reuse the compiled call) building the run's pieces from ``data``.
    how: hashable static settings for ``system`` (algorithm name, hyperparameters).
    data: pytree of arrays with the runs on their trailing axes (scalars are shared).
    key: the root PRNG key.
    batch_shape, horizon, chunks, ragged, native_batch, every_round, keep_state,
      progress: as for :func:`simulate` (``batch_shape`` is the keys' shape).

  Returns:
    :class:`SimResult` of numpy arrays (``state`` as jax arrays, when kept).
  """
  res = _run(key, shard_runs(data), system=system, how=how, batch_shape=tuple(batch_shape),
             horizon=horizon, chunks=tuple(chunks), ragged=ragged, native_batch=native_batch,
             every_round=every_round, keep_state=keep_state, progress=progress)
  totals = None if res.totals is None else {k: np.asarray(v) for k, v in res.totals.items()}
  return SimResult(rounds=np.asarray(res.rounds), regret=np.asarray(res.regret),
                   final_regret=np.asarray(res.final_regret), state=res.state, totals=totals)
