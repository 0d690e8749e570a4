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
resolution; progress is reported once per chunk, outside ``vmap``), and inside
each chunk a vmapped inner ``lax.scan`` over rounds. Memory is O(grid x seeds x
arms) plus the curve.
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

  Attributes:
    arm_mask: (K_max,) bool, which arm slots exist (K = arm_mask.sum()); grids
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
    return jnp.sum(self.arm_mask.astype(jnp.int32))


class Algorithm(NamedTuple):
  """A bandit algorithm as pure functions (see module docstring)."""
  init: Callable[[PRNGKey, BanditSpec], Any]
  act: Callable[[PRNGKey, Any], jax.Array]
  update: Callable[[Any, jax.Array, Any], Any]


class Environment(NamedTuple):
  """A bandit environment as pure functions (gymnax shape)."""
  reset: Callable[[PRNGKey, Any], Any]
  step: Callable[[PRNGKey, Any, jax.Array, Any], tuple[Any, Any, jax.Array]]


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


def tree_select(pred: jax.Array, on_true, on_false):
  """Leafwise ``where(pred, a, b)`` for two pytrees of the same structure."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def chunking(horizon: int, n_points: int) -> tuple[int, int]:
  """(number of chunks, rounds per chunk) covering ``horizon`` rounds."""
  n_chunks = max(1, min(n_points, horizon))
  return n_chunks, math.ceil(horizon / n_chunks)


def simulate(env: Environment, algo: Algorithm, env_params, spec: BanditSpec, gaps: jax.Array,
             keys: jax.Array, *, horizon: int, n_points: int = 1000, ragged: bool = False,
             progress: Callable[[int], None] | None = None) -> SimResult:
  """Runs ``algo`` on ``env`` for a batch of runs; jit-compatible.

  Args:
    env: the environment.
    algo: the algorithm.
    env_params: environment parameters with batch axes ``B`` (any leading shape,
      the same for every leaf, e.g. (grid, seeds)).
    spec: the learner's spec with the same batch axes ``B``.
    gaps: (B..., K_max) per-arm gap to the best arm (0 for the best; padded arms
      are never played by a correct algorithm).
    keys: (B...) PRNG keys, one per run.
    horizon: static, the largest horizon in the batch (scan length).
    n_points: static, the regret curve's resolution (at most this many points).
    ragged: static; True when horizons differ across the batch, so rounds past
      a run's own horizon must be masked out.
    progress: optional host callback called with the number of finished chunks.

  Returns:
    A :class:`SimResult`.
  """
  batch_shape = keys.shape
  n_chunks, chunk_len = chunking(horizon, n_points)
  # Rounds past a run's horizon are masked: when horizons differ, or when the
  # last chunk overhangs the horizon.
  masked = ragged or n_chunks * chunk_len != horizon

  def batched(fn):
    for _ in batch_shape:
      fn = jax.vmap(fn)
    return fn

  def init_one(key, params, sp):
    key_env, key_algo = jax.random.split(key)
    return env.reset(key_env, params), algo.init(key_algo, sp)

  env_state, algo_state = batched(init_one)(keys, env_params, spec)

  def chunk_one(carry, key, params, sp, gap, chunk):
    env_s, algo_s, regret, t = carry
    round_keys = jax.random.split(jax.random.fold_in(key, chunk), (chunk_len, 2))

    def round_fn(inner, ks):
      env_s, algo_s, regret, t = inner
      action = algo.act(ks[0], algo_s)
      new_env_s, obs, played = env.step(ks[1], env_s, action, params)
      new_algo_s = algo.update(algo_s, action, obs)
      inst = jnp.sum(gap[played])
      if masked:
        live = t < (sp.horizon if ragged else horizon)
        new_env_s = tree_select(live, new_env_s, env_s)
        new_algo_s = tree_select(live, new_algo_s, algo_s)
        inst = jnp.where(live, inst, 0.0)
      return (new_env_s, new_algo_s, regret + inst, t + 1), None

    carry, _ = jax.lax.scan(round_fn, (env_s, algo_s, regret, t), round_keys)
    return carry

  chunk_batched = batched(chunk_one)
  zeros = jnp.zeros(batch_shape, jnp.float32)
  t0 = jnp.zeros(batch_shape, jnp.int32)

  def outer(carry, chunk):
    carry = chunk_batched(carry, keys, env_params, spec, gaps, jnp.broadcast_to(chunk, batch_shape))
    if progress is not None:
      jax.debug.callback(progress, chunk + 1)
    return carry, carry[2]

  (_, _, final, _), curve = jax.lax.scan(outer, (env_state, algo_state, zeros, t0),
                                         jnp.arange(n_chunks))
  rounds = jnp.minimum((jnp.arange(n_chunks) + 1) * chunk_len, horizon).astype(jnp.int32)
  return SimResult(rounds=rounds, regret=jnp.moveaxis(curve, 0, -1), final_regret=final)
