"""Batched simulation of collaborative linear bandits: (m, sigma) grid x seeds, one jit.

All m agents of a run advance together in one ``lax.scan`` step, and every run
of a grid of (m, sigma) points x seeds advances in the same step: the
algorithms are batch-polymorphic (runs on trailing axes), so nothing is
``vmap``-ped but the per-run random draws. Grids over m pad the agent axis to
the largest m and mask the rest. The loop is the shared one
(:func:`bandits.core.run`): the learner sees the round's action set (the
environment's context), the environment reports each agent's regret, and every
round's cumulative regret is kept. Each CPU device simulates its share of the
seeds as its own program (:func:`bandits.core.on_each_device`), so that the
algorithms can merge agents and local runs into one long batch axis
(:func:`bandits.collab.ridge.flat_batch`) for the per-round work.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bandits import core
from bandits.collab import algorithms, env
from bandits.collab.algorithms import LinSpec
from bandits.collab.env import EnvParams
from bandits.core import SimResult


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


def _system(data, how):
  """The run's pieces for :func:`bandits.core.run`; the environment reports each agent's
  pseudo-regret itself."""
  name, hyper = how
  params, spec = data
  return env.ENV, algorithms.make(name, **dict(hyper)), params, spec, None


def run(name: str, inst: Instances, key: jax.Array, *, horizon: int, noise_std: float = 1.0,
        delta: float = 0.01, n_points: int = 200, explore_per_dim: int = 2,
        keep_state: bool = False, progress: Callable[[int], None] | None = None,
        **hyper) -> SimResult:
  """Simulates algorithm ``name`` on every instance of ``inst`` (axes G, S) for ``horizon`` rounds.

  Returns a :class:`bandits.core.SimResult` with numpy ``regret`` (G, S, horizon) (the
  algorithms are anytime, so column t-1 is the regret of a run of horizon t) and
  ``final_regret`` (G, S); ``state`` only with ``keep_state``. The chunk length (a
  divisor of ``horizon``) is chosen so that there are about ``n_points`` chunks
  (progress granularity) and a chunk's draws fit memory; every round's regret is kept.
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
  return core.run(_system, (name, tuple(sorted(hyper.items()))), (params, spec), key,
                  batch_shape=inst.sigma.shape, horizon=horizon,
                  chunks=core.chunking(horizon, n_points, divisor=True,
                                       per_round_floats=per_round),
                  every_round=True, keep_state=keep_state, progress=progress)
