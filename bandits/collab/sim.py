"""Batched simulation of collaborative linear bandits: (m, sigma) grid x seeds, one jit.

All m agents of a run advance together in one ``lax.scan`` step, and every run
of a grid of (m, sigma) points x seeds advances in the same step: the
algorithms are batch-polymorphic (runs on trailing axes), so nothing is
``vmap``-ped but the per-run random draws. Grids over m pad the agent axis to
the largest m and mask the rest. Chunking and progress follow
:func:`bandits.core.simulate`; the loop is separate because a linear bandit's
learner needs the round's action set (contexts) and the environment returns
regret directly rather than a played arm index. Each CPU device simulates its
share of the seeds as its own program (:func:`bandits.core.on_each_device`),
so that the algorithms can merge agents and local runs into one long batch
axis (:func:`bandits.collab.ridge.flat_batch`) for the per-round work.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bandits.collab import algorithms, env
from bandits.collab.algorithms import LinearAlgorithm, LinSpec
from bandits.collab.env import EnvParams, LinearEnvironment
from bandits.core import on_each_device, shard_runs


class SimResult(NamedTuple):
  """Output of :func:`simulate` (batch axes leading).

  Attributes:
    rounds: (n,) int32, 1..n.
    regret: (..., n) float32, cumulative pseudo-regret summed over the agents
      after each round (the algorithms are anytime, so column t-1 is the
      regret of a run of horizon t).
    final_regret: (...,) float32, regret after n rounds.
    state: the algorithm's final state (``algo.export``-ed; batch axes trailing).
  """
  rounds: jax.Array
  regret: jax.Array
  final_regret: jax.Array
  state: Any


def per_run(fn):
  """Maps ``fn`` of one run over the trailing batch axes of every argument (keys set the rank)."""
  def mapped(keys, *args):
    f = fn
    for _ in range(keys.ndim):
      f = jax.vmap(f, in_axes=-1, out_axes=-1)
    return f(keys, *args)
  return mapped


def scan_rounds(environment: LinearEnvironment, algo: LinearAlgorithm, params: EnvParams,
                carry, xs):
  """Runs the rounds of ``xs`` = (draws, act keys), leading axis = rounds.

  Args:
    carry: (env state, algorithm state, cumulative regret (*batch)).
    xs: (:class:`env.Draws` with leading rounds, act keys (rounds, *batch)).

  Returns:
    (carry, cumulative regret after each round (rounds, *batch)).
  """
  def round_fn(c, x):
    env_s, algo_s, cum = c
    drawn, key_act = x
    action = algo.act(key_act, algo_s, env.action_set(env_s, params))
    env_s, obs, regret = environment.step_drawn(drawn, env_s, action, params)
    algo_s = algo.update(algo_s, action, obs)
    cum = cum + jnp.sum(regret, axis=0)
    return (env_s, algo_s, cum), cum
  return jax.lax.scan(round_fn, carry, xs)


def chunk_length(horizon: int, n_points: int, per_round_floats: int,
                 max_floats: int = 8_000_000) -> int:
  """The largest divisor of ``horizon`` <= ceil(horizon / n_points) whose draws fit memory."""
  target = max(1, min(math.ceil(horizon / max(n_points, 1)), max_floats // max(per_round_floats, 1)))
  return max(c for c in range(1, target + 1) if horizon % c == 0)


def simulate(environment: LinearEnvironment, algo: LinearAlgorithm, params: EnvParams,
             spec: LinSpec, keys: jax.Array, *, horizon: int, chunk_len: int,
             progress: Callable[[int], None] | None = None) -> SimResult:
  """Runs ``algo`` on ``environment`` for a batch of runs; jit-compatible.

  Args:
    params, spec: batch axes trailing (e.g. theta (d, m, G, S)).
    keys: (*batch) one PRNG key per run.
    horizon: static, rounds n.
    chunk_len: static, rounds per chunk (divides ``horizon``); the random
      draws of a chunk are made in one vectorized call, and ``progress`` is
      called with the number of finished chunks.
  """
  n_chunks = horizon // chunk_len
  assert n_chunks * chunk_len == horizon, (horizon, chunk_len)
  key_env, key_algo = per_run(lambda k: tuple(jax.random.split(k)))(keys)
  env_state = per_run(environment.reset)(key_env, params)
  algo_state = algo.init(key_algo, spec)

  def chunk_draws(key, p, chunk):
    key_act, key_draw = jax.random.split(jax.random.fold_in(key, chunk))
    return environment.draw(key_draw, (chunk_len,), p), jax.random.split(key_act, chunk_len)

  def outer(carry, chunk):
    xs = per_run(chunk_draws)(keys, params, jnp.broadcast_to(chunk, keys.shape))
    carry, cum = scan_rounds(environment, algo, params, carry, xs)
    if progress is not None:
      jax.debug.callback(progress, chunk + 1)
    return carry, cum

  init = (env_state, algo_state, jnp.zeros(keys.shape, jnp.float32))
  (_, algo_state, final), curve = jax.lax.scan(outer, init, jnp.arange(n_chunks))
  curve = jnp.moveaxis(curve.reshape((horizon,) + keys.shape), 0, -1)
  return SimResult(rounds=jnp.arange(1, horizon + 1, dtype=jnp.int32), regret=curve,
                   final_regret=final, state=algo.export(algo_state))


class Instances(NamedTuple):
  """A batch of instances, numpy arrays with axes (G, S, ...).

  Attributes:
    theta: (G, S, d, m_max) agent parameters (padded agents: 0).
    agent_mask: (G, S, m_max) bool.
    mu: (G, S, d) population means.
    sigma: (G, S) heterogeneity.
    arms: (G, S, K, d) a finite action set, or None.
    action_set: 'ball' | 'finite' | 'contexts'.
    n_arms: K (0 for the ball).
  """
  theta: np.ndarray
  agent_mask: np.ndarray
  mu: np.ndarray
  sigma: np.ndarray
  arms: np.ndarray | None
  action_set: str
  n_arms: int


def make_instances(grid: list[dict], n_seeds: int, seed: int, *, d: int, mean_norm: float = 1.0,
                   population: str = env.GAUSSIAN, action_set: str = env.BALL,
                   n_arms: int = 0) -> Instances:
  """Instances for grid points ``{"m": m, "sigma": sigma}``, ``n_seeds`` runs each.

  Common random numbers: run s of every grid point has the same mu, the same
  z_i for its agents (theta_i = mu + sigma z_i) and the same finite action
  set, all drawn from ``fold_in(key(seed), s)``; sweeps over m and sigma
  compare like with like.

  Raises:
    ValueError: on an invalid grid or setting.
  """
  if d < 1:
    raise ValueError(f"d must be >= 1; got {d}")
  if not grid:
    raise ValueError("grid must have at least one point")
  if action_set not in env.ACTION_SETS:
    raise ValueError(f"action_set must be one of {env.ACTION_SETS}; got {action_set!r}")
  if population not in env.POPULATIONS:
    raise ValueError(f"population must be one of {env.POPULATIONS}; got {population!r}")
  if action_set != env.BALL and n_arms < 2:
    raise ValueError(f"action_set={action_set!r} needs n_arms >= 2; got {n_arms}")
  for g in grid:
    if int(g["m"]) < 1:
      raise ValueError(f"m must be >= 1; got {g['m']}")
    if not g["sigma"] >= 0:
      raise ValueError(f"sigma must be >= 0; got {g['sigma']}")
  if mean_norm < 0:
    raise ValueError(f"mean_norm must be >= 0; got {mean_norm}")
  m_max = max(int(g["m"]) for g in grid)
  g_n = len(grid)

  @jax.jit
  def per_seed(key):
    k_mu, k_z, k_arms = jax.random.split(key, 3)
    mu = env.sample_mean(k_mu, d, mean_norm)
    z = env.sample_thetas(k_z, jnp.zeros(d), 1.0, m_max, population)
    arms = env.unit_vectors(k_arms, (max(n_arms, 1), d), 1)
    return mu, z, arms

  root = jax.random.key(seed)
  mu, z, arms = jax.vmap(per_seed)(jax.vmap(lambda s: jax.random.fold_in(root, s))(
      jnp.arange(n_seeds)))
  mu, z, arms = np.asarray(mu, np.float64), np.asarray(z, np.float64), np.asarray(arms, np.float64)
  sigma = np.array([[float(g["sigma"])] * n_seeds for g in grid])
  mask = np.zeros((g_n, n_seeds, m_max), bool)
  for i, g in enumerate(grid):
    mask[i, :, :int(g["m"])] = True
  theta = (mu[None, :, :, None] + sigma[:, :, None, None] * z[None]) * mask[:, :, None, :]
  return Instances(theta=theta, agent_mask=mask, mu=np.broadcast_to(mu, (g_n,) + mu.shape).copy(),
                   sigma=sigma,
                   arms=np.broadcast_to(arms, (g_n,) + arms.shape).copy()
                   if action_set == env.FINITE else None,
                   action_set=action_set, n_arms=int(n_arms) if action_set != env.BALL else 0)


def build(inst: Instances, *, noise_std: float = 1.0, delta: float = 0.01):
  """(EnvParams, LinSpec) with batch axes trailing (d, m, G, S), float32 jax arrays."""
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  trail = lambda x, k: np.moveaxis(np.asarray(x), (0, 1), (-2, -1)) if k else np.asarray(x)
  batch = inst.sigma.shape
  theta = trail(inst.theta, 1)                                         # (d, m, G, S)
  mask = trail(inst.agent_mask, 1)                                     # (m, G, S)
  s_bound = np.max(np.linalg.norm(inst.theta, axis=2), axis=-1)        # (G, S) max_i ||theta_i||
  params = EnvParams(theta=f32(theta), noise_std=f32(np.full(batch, noise_std)),
                     agent_mask=jnp.asarray(mask),
                     arms=None if inst.arms is None else f32(trail(inst.arms, 1)),
                     action_set=inst.action_set, n_arms=inst.n_arms)
  spec = LinSpec(agent_mask=jnp.asarray(mask), noise_std=f32(np.full(batch, noise_std)),
                 s_bound=f32(s_bound), delta=f32(np.full(batch, delta)),
                 pop_mean=f32(trail(inst.mu, 1)), pop_sigma=f32(inst.sigma))
  return params, spec


@functools.partial(jax.jit, static_argnames=("name", "hyper", "horizon", "chunk_len", "progress",
                                             "keep_state"))
def _run(key, params, spec, *, name, hyper, horizon, chunk_len, progress, keep_state):
  """One jitted call; each local device simulates its share of the runs (the last axis).

  Per device (:func:`bandits.core.on_each_device`, a ``shard_map``) rather than
  by automatic sharding: inside, the algorithms merge the agents and the
  device's runs into one contiguous batch axis (:func:`ridge.flat_batch`),
  a free reshape of a local array but a resharding of a distributed one.
  """
  algo = algorithms.make(name, **dict(hyper))
  keys = jax.random.split(key, spec.noise_std.size).reshape(spec.noise_std.shape)

  def local(keys, params, spec):
    res = simulate(env.ENV, algo, params, spec, keys, horizon=horizon, chunk_len=chunk_len,
                   progress=progress)
    return res if keep_state else res._replace(state=())  # () has no leaves to map

  run_axis = keys.ndim - 1
  shapes = jax.eval_shape(local, keys, params, spec)
  out_run_axes = SimResult(rounds=None, regret=run_axis, final_regret=run_axis,
                           state=jax.tree.map(lambda x: -1 if x.ndim else None, shapes.state))
  res = on_each_device(local, keys.shape[-1], out_run_axes)(keys, params, spec)
  return res if keep_state else res._replace(state=None)


def run(name: str, inst: Instances, key: jax.Array, *, horizon: int, noise_std: float = 1.0,
        delta: float = 0.01, n_points: int = 200, explore_per_dim: int = 2,
        keep_state: bool = False, progress: Callable[[int], None] | None = None,
        **hyper) -> SimResult:
  """Simulates algorithm ``name`` on every instance of ``inst`` (axes G, S) for ``horizon`` rounds.

  Returns a :class:`SimResult` with numpy ``regret`` (G, S, horizon) and
  ``final_regret`` (G, S); ``state`` only with ``keep_state``.
  ``chunk_len`` is chosen so the regret curve is reported in about
  ``n_points`` chunks (progress granularity); every round's regret is kept.
  """
  if name not in algorithms.ALGORITHMS:
    raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(algorithms.ALGORITHMS)}")
  if horizon < 1:
    raise ValueError(f"horizon must be >= 1; got {horizon}")
  if not noise_std > 0:
    raise ValueError(f"noise_std must be > 0; got {noise_std}")
  if not 0 < delta < 1:
    raise ValueError(f"delta must lie in (0, 1); got {delta}")
  d, m_max = inst.theta.shape[2:]
  if name == "collab":
    hyper["n1"] = algorithms.explore_rounds(d, inst.action_set, inst.n_arms, explore_per_dim)
  params, spec = build(inst, noise_std=noise_std, delta=delta)
  per_round = inst.sigma.size * m_max * (1 + (inst.n_arms * d if inst.action_set == env.CONTEXTS
                                              else 0))
  chunk = chunk_length(horizon, n_points, per_round)
  params, spec = shard_runs((params, spec))
  res = _run(key, params, spec, name=name, hyper=tuple(sorted(hyper.items())), horizon=horizon,
             chunk_len=chunk, progress=progress, keep_state=keep_state)
  return SimResult(rounds=np.asarray(res.rounds), regret=np.asarray(res.regret),
                   final_regret=np.asarray(res.final_regret),
                   state=res.state if keep_state else None)
