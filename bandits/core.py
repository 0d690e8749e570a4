"""What every bandit system here shares: the algorithm interface and the run loop.

An algorithm is a triple of pure functions, in the shape of an optax
transformation::

    state = algo.init(key, spec)            # spec: what the learner may know
    action = algo.act(key, state)           # the arm it requests this round
    state = algo.update(state, action, obs)  # obs: what it observed

An environment follows gymnax: ``reset(key, params) -> state`` and
``step(key, state, action, params) -> (state, obs, played)``, where ``played``
is the arm the environment actually pulled (hidden from the learner) and
regret is charged on it.

:func:`simulate` runs a batch of (grid point, seed) pairs in one jitted call:
an outer ``lax.scan`` over at most ``n_points`` chunks (the regret curve's
resolution; progress is reported once per chunk; each chunk's randomness is
drawn in one vectorized call) and inside each chunk a ``lax.scan`` over rounds.
Memory is O(grid x seeds x arms) plus the curve.

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

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
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


class Algorithm(NamedTuple):
  """A bandit algorithm as pure functions (see module docstring)."""
  init: Callable[[PRNGKey, BanditSpec], Any]
  act: Callable[[PRNGKey, Any], jax.Array]
  update: Callable[[Any, jax.Array, Any], Any]


class Environment(NamedTuple):
  """A bandit environment as pure functions (gymnax shape).

  ``step(key, state, action, params)`` is ``step_drawn(draw(key, (), shape),
  state, action, params)``: the randomness of a round is drawn by ``draw`` and
  consumed by ``step_drawn``, so a simulator can draw many rounds at once
  (``draw(key, (n,), shape)``, one vectorized call) and scan over them.

  An environment whose randomness is ``n_uniforms`` uniforms on [0, 1) per
  round (and agent) also gives ``from_uniforms`` (array (n_uniforms, *rounds,
  *shape) -> draws); ``draw`` is then ``from_uniforms`` of
  ``jax.random.uniform``, and :func:`simulate` feeds it
  :func:`counter_uniforms` instead, one counter-based stream per run.
  """
  reset: Callable[[PRNGKey, Any], Any]
  step: Callable[[PRNGKey, Any, jax.Array, Any], tuple[Any, Any, jax.Array]]
  draw: Callable[[PRNGKey, tuple, tuple], Any]
  step_drawn: Callable[[Any, Any, jax.Array, Any], tuple[Any, Any, jax.Array]]
  n_uniforms: int = 0
  from_uniforms: Callable[[jax.Array], Any] | None = None


class SimResult(NamedTuple):
  """Output of :func:`simulate`; leading axes are the batch axes of the inputs.

  Attributes:
    rounds: (n_points,) int32, the round count at each checkpoint (the last
      one equals the largest horizon).
    regret: (..., n_points) float32, cumulative pseudo-regret at each
      checkpoint (constant after a run's own horizon).
    final_regret: (...,) float32, cumulative pseudo-regret at the run's horizon.
  """
  rounds: jax.Array
  regret: jax.Array
  final_regret: jax.Array


UNROLL_ARMS = 16  # up to this many arms, per-arm lookups are select chains (see take)


def _arm_iota(k: int, ndim: int, dtype) -> jax.Array:
  """arange(k) shaped (k, 1, ..., 1) to broadcast against (k, *batch)."""
  return jnp.arange(k, dtype=dtype).reshape((k,) + (1,) * ndim)


def take(x: jax.Array, i: jax.Array) -> jax.Array:
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
  """
  i = jnp.asarray(i)
  lead = i.ndim - (x.ndim - 1)
  xb = x.reshape(x.shape[:1] + (1,) * lead + x.shape[1:])
  if x.shape[0] <= UNROLL_ARMS:
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
  from jax.extend.random import threefry2x32_p  # pylint: disable=import-outside-toplevel
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
  w0, w1 = threefry2x32_p.bind(k1, k2, rounds, slots)
  # (rounds, lead * pairs, 2, *batch) -> (fields, rounds, *lead, *batch)
  words = jnp.stack([w0, w1], axis=2).reshape((n_rounds, n_lead, 2 * n_pairs) + keys.shape)
  words = jnp.moveaxis(words[:, :, :n_fields], 2, 0)
  words = words.reshape((n_fields, n_rounds) + tuple(lead_shape) + keys.shape)
  one = jax.lax.bitcast_convert_type((words >> 9) | jnp.uint32(0x3F800000), jnp.float32)
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
  import numpy as np  # pylint: disable=import-outside-toplevel
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
  import numpy as np  # pylint: disable=import-outside-toplevel
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


def chunking(horizon: int, n_points: int) -> tuple[int, int]:
  """(number of chunks, rounds per chunk) covering ``horizon`` rounds."""
  n_chunks = max(1, min(n_points, horizon))
  return n_chunks, math.ceil(horizon / n_chunks)


def simulate(env: Environment, algo: Algorithm, env_params, spec: BanditSpec, gaps: jax.Array,
             keys: jax.Array, *, horizon: int, n_points: int = 1000, ragged: bool = False,
             native_batch: bool = False,
             progress: Callable[[int], None] | None = None) -> SimResult:
  """Runs ``algo`` on ``env`` for a batch of runs; jit-compatible.

  Layout: per-arm arrays are (K, *batch), per-agent arrays (M, *batch), per-run
  scalars (*batch); ``batch`` is the shape of ``keys`` (e.g. (grid, seeds)).

  Args:
    env: the environment.
    algo: the algorithm.
    env_params: environment parameters, batch axes trailing.
    spec: the learner's spec, batch axes trailing.
    gaps: (K, *batch) gap of each arm to the best (padded arms: 0).
    keys: (*batch) PRNG keys, one per run.
    horizon: static, the largest horizon in the batch (scan length).
    n_points: static, the regret curve's resolution (at most this many points).
    ragged: static; True when horizons differ across the batch, so rounds past
      a run's own horizon must be masked out.
    native_batch: static; True when ``algo`` and ``env`` are batch-polymorphic
      (written for (K, *batch) arrays, reducing over axis 0 only, and ignoring
      or accepting a batch of keys in ``act``): they are then called once on
      the whole batch. Otherwise each run is ``vmap``-ped. Both give the same
      numbers; the native form is several times faster on CPU.
    progress: optional host callback called with the number of finished chunks.

  Returns:
    A :class:`SimResult` (batch axes leading in its arrays).
  """
  batch_shape = keys.shape
  nb = len(batch_shape)
  n_chunks, chunk_len = chunking(horizon, n_points)
  # Rounds past a run's horizon are masked: when horizons differ, or when the
  # last chunk overhangs the horizon.
  masked = ragged or n_chunks * chunk_len != horizon

  def per_run(fn):
    """Maps ``fn`` of one run over the trailing batch axes of every argument."""
    for _ in batch_shape:
      fn = jax.vmap(fn, in_axes=-1, out_axes=-1)
    return fn

  batched = (lambda fn: fn) if native_batch else per_run
  first_run = lambda tree: jax.tree.map(lambda x: x[(..., *(0,) * nb)], tree)
  # The shape of one run's action (() for one agent, (M,) for M agents).
  action_shape = jax.eval_shape(lambda k, sp: algo.act(k, algo.init(k, sp)), jax.random.key(0),
                                first_run(spec)).shape
  n_lead = len(action_shape)

  key_env, key_algo = per_run(lambda k: tuple(jax.random.split(k)))(keys)
  env_state = batched(env.reset)(key_env, env_params)
  algo_state = batched(algo.init)(key_algo, spec)

  def round_fn(inner, xs):
    env_s, algo_s, regret, t = inner
    drawn, key_act = xs
    action = batched(algo.act)(key_act, algo_s)
    new_env_s, obs, played = batched(env.step_drawn)(drawn, env_s, action, env_params)
    new_algo_s = batched(algo.update)(algo_s, action, obs)
    inst = jnp.sum(take(gaps, played), axis=tuple(range(n_lead)))
    if masked:
      live = t < (spec.horizon if ragged else horizon)
      new_env_s = tree_select(live, new_env_s, env_s)
      new_algo_s = tree_select(live, new_algo_s, algo_s)
      inst = jnp.where(live, inst, 0.0)
    return (new_env_s, new_algo_s, regret + inst, t + 1), None

  # Environments drawing only uniforms get one counter-based stream per run.
  fast_draws = (env.from_uniforms is not None
                and str(jax.random.key_impl(keys)) == "threefry2x32")
  key_stream = per_run(lambda k: jax.random.fold_in(k, 1 << 30))(keys) if fast_draws else None

  def chunk_keys(key, chunk):
    key_act, key_env = jax.random.split(jax.random.fold_in(key, chunk))
    # One act key per round and run (deterministic algorithms ignore them).
    drawn = None if fast_draws else env.draw(key_env, (chunk_len,), action_shape)
    return drawn, jax.random.split(key_act, chunk_len)

  def outer(carry, chunk):
    # (chunk_len, *action_shape, *batch) draws: rounds lead, runs trail.
    drawn, act_keys = per_run(chunk_keys)(keys, jnp.broadcast_to(chunk, batch_shape))
    if fast_draws:
      drawn = env.from_uniforms(counter_uniforms(key_stream, chunk * chunk_len, chunk_len,
                                                 env.n_uniforms, action_shape))
    xs = (drawn, act_keys)
    carry, _ = jax.lax.scan(round_fn, carry, xs)
    if progress is not None:
      jax.debug.callback(progress, chunk + 1)
    return carry, carry[2]

  init = (env_state, algo_state, jnp.zeros(batch_shape, jnp.float32),
          jnp.zeros(batch_shape, jnp.int32))
  (_, _, final, _), curve = jax.lax.scan(outer, init, jnp.arange(n_chunks))
  rounds = jnp.minimum((jnp.arange(n_chunks) + 1) * chunk_len, horizon).astype(jnp.int32)
  return SimResult(rounds=rounds, regret=jnp.moveaxis(curve, 0, -1), final_regret=final)
