"""Batched simulation of erasure bandits: a grid of instances x seeds, one jit.

:func:`run` takes instances as numpy arrays with a grid axis G and a seed axis
S (arms padded to the largest K and masked), builds the environment params and
the learner's spec, and runs them through the shared loop
(:func:`bandits.core.run`, one jitted call; a regret point per chunk of about
``horizon / n_points`` rounds). Horizons may differ across the grid (masked rounds).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bandits import core
from bandits.core import SimResult, take
from bandits.erasure import algorithms, env, schedulers


MEANS_KINDS = ("random_gap", "two_level", "given")


class Instances(NamedTuple):
  """A batch of erasure-bandit instances, numpy arrays with axes (G, S, ...).

  Attributes:
    means: (G, S, K_max) arm means (padded arms: 0).
    arm_mask: (G, S, K_max) bool, which arms exist.
    eps: (G, S) or (G, S, M) erasure probabilities.
    horizon: (G, S) int horizons.
    initial_arm: (G, S) or (G, S, M) the arm played before any delivery.
  """
  means: np.ndarray
  arm_mask: np.ndarray
  eps: np.ndarray
  horizon: np.ndarray
  initial_arm: np.ndarray


def gap_constrained_means(rng: np.random.Generator, n_arms: int, horizon: int,
                          max_tries: int = 10_000) -> np.ndarray:
  """Uniform(0, 1)^K means redrawn until the top-two gap is >= 10 sqrt(K/T).

  The instance distribution of the authors' experiment runners (gap 0.9 when
  10 sqrt(K/T) >= 1); after ``max_tries`` the last draw is kept.
  """
  gap = 10.0 * np.sqrt(n_arms / horizon)
  gap = 0.9 if gap >= 1 else gap
  for _ in range(max_tries):
    mu = rng.uniform(size=n_arms)
    top = np.sort(mu)[-2:]
    if top[1] - top[0] >= gap:
      break
  return mu


def make_instances(grid: list[dict], n_seeds: int, seed: int, *, means_kind: str,
                   given_means: tuple[float, ...] = (), initial_arm: str | int = 0,
                   gap_horizon: int | None = None) -> Instances:
  """Instances for a list of grid points, each a dict with n_arms, eps, horizon.

  Common random numbers: run s of every grid point with the same K gets the
  same means and initial arm (drawn from a generator seeded by (seed, K, s)),
  so sweeps over eps or T compare algorithms on the same instances.

  Args:
    grid: per grid point ``{"n_arms": K, "eps": eps or [eps_m], "horizon": T}``.
    n_seeds: runs per grid point.
    seed: numpy seed for the instance draws (means, initial arms).
    means_kind: 'random_gap' (fresh :func:`gap_constrained_means` per run),
      'two_level' (best 1.0, second 0.8, rest 0, shuffled per run, as in the
      authors' earlier notebooks) or 'given' (``given_means``, truncated to K).
    given_means: the means when ``means_kind == 'given'``.
    initial_arm: an arm index, or 'random' for a uniform arm per run.
    gap_horizon: the T of the 'random_gap' constraint (default: each grid
      point's own horizon; pass one T to share instances across a T sweep).
  """
  k_max = max(int(g["n_arms"]) for g in grid)
  n_agents = max(np.size(g["eps"]) for g in grid)
  g_n = len(grid)
  means = np.zeros((g_n, n_seeds, k_max))
  mask = np.zeros((g_n, n_seeds, k_max), bool)
  eps_shape = (g_n, n_seeds) if n_agents == 1 and all(np.ndim(g["eps"]) == 0 for g in grid) \
      else (g_n, n_seeds, n_agents)
  eps = np.zeros(eps_shape)
  init = np.zeros(eps_shape, np.int64)
  horizon = np.zeros((g_n, n_seeds), np.int64)
  for i, g in enumerate(grid):
    k, t = int(g["n_arms"]), int(g["horizon"])
    mask[i, :, :k] = True
    horizon[i] = t
    eps[i] = np.broadcast_to(np.asarray(g["eps"], np.float64), eps.shape[2:])
    for s in range(n_seeds):
      rng = np.random.default_rng([seed, k, s])
      if means_kind == "random_gap":
        mu = gap_constrained_means(rng, k, gap_horizon or t)
      elif means_kind == "two_level":
        mu = np.zeros(k)
        mu[:2] = (1.0, 0.8)
        rng.shuffle(mu)
      elif means_kind == "given":
        if len(given_means) < k:
          raise ValueError(f"given means has {len(given_means)} arms; grid point needs {k}")
        mu = np.asarray(given_means[:k], np.float64)
      else:
        raise ValueError(f"unknown means_kind {means_kind!r}")
      means[i, s, :k] = mu
      if initial_arm == "random":
        init[i, s] = rng.integers(k, size=init.shape[2:])
      else:
        init[i, s] = min(int(initial_arm), k - 1)
  return Instances(means, mask, eps, horizon, init)


def _system(data, how):
  """The run's pieces for :func:`bandits.core.run`: batch axes trailing, means and mask
  (K, G, S), eps (G, S) or (M, G, S); regret is the gap of the arm played."""
  name, reward_kind, feedback, feedback_mode, order = how
  means, mask, eps, horizon_arr, initial_arm, noise_std, knots = data
  knots_t, knots_eps = (None, None) if knots is None else knots
  params = env.EnvParams(means=means, eps=eps,
                         noise_std=jnp.broadcast_to(noise_std, horizon_arr.shape),
                         initial_arm=initial_arm, knots_t=knots_t, knots_eps=knots_eps,
                         reward_kind=reward_kind, feedback=feedback, feedback_mode=feedback_mode)
  spec = schedulers.ErasureSpec(arm_mask=mask, horizon=horizon_arr, eps=eps,
                                initial_arm=jnp.broadcast_to(initial_arm, eps.shape))
  best = jnp.max(jnp.where(mask, means, -jnp.inf), axis=0)
  gaps = jnp.where(mask, best - means, 0.0)
  return env.ENV, algorithms.make(name, order), params, spec, lambda played: take(gaps, played)


def run(name: str, inst: Instances, key: jax.Array, *, reward_kind: str = env.GAUSSIAN,
        noise_std: float = 1.0, feedback: bool = False, feedback_mode: str = "beacon",
        knots: tuple | None = None, order: str | None = None, n_points: int = 1000,
        native_batch: bool = True,
        progress: Callable[[int], None] | None = None) -> SimResult:
  """Simulates algorithm ``name`` on every instance of ``inst`` (axes G, S).

  Returns a :class:`bandits.core.SimResult` with ``regret`` (G, S, n_points) and
  ``final_regret`` (G, S). ``native_batch=False`` runs each (G, S) instance
  through ``vmap`` instead (same numbers, slower; kept as a cross-check).
  ``feedback_mode`` sets what the feedback bits count (:mod:`bandits.erasure.env`);
  ``knots`` = (knots_t (n,), knots_eps (n,) or (n, M)), shared by every run, makes
  the channel time-varying (``inst.eps`` is then what the learner is told); the
  result's ``totals`` holds the transmissions (``tx``) and feedback bits (``fb``).
  ``order`` sets the request order of ``fb_sae`` and ``sp2_fb`` (default the authors').
  """
  info = algorithms.ALGORITHMS[name]
  if info.needs_feedback and not feedback:
    raise ValueError(f"algorithm {name} needs feedback=True")
  if np.any(inst.eps < 0) or np.any(inst.eps >= 1):
    raise ValueError("eps must lie in [0, 1)")
  horizon = int(inst.horizon.max())
  # Batch axes trailing: (G, S, K) -> (K, G, S); (G, S, M) -> (M, G, S).
  lead = lambda x: np.moveaxis(np.asarray(x), -1, 0) if np.ndim(x) == 3 else np.asarray(x)
  f32 = lambda x: jnp.asarray(lead(x), jnp.float32)
  i32 = lambda x: jnp.asarray(lead(x), jnp.int32)
  batch = inst.horizon.shape
  if knots is not None:
    kt, ke = env.check_knots(knots[0], knots[1], inst.eps.shape[2:])
    knots = (jnp.asarray(np.broadcast_to(kt.reshape(kt.shape + (1, 1)), kt.shape + batch),
                         jnp.float32),
             jnp.asarray(np.broadcast_to(ke.reshape(ke.shape + (1, 1)), ke.shape + batch),
                         jnp.float32))
  data = (f32(inst.means), jnp.asarray(lead(inst.arm_mask)), f32(inst.eps), i32(inst.horizon),
          i32(inst.initial_arm), f32(noise_std), knots)
  how = (name, reward_kind, bool(feedback), feedback_mode, order)
  return core.run(_system, how, data, key,
                  batch_shape=batch, horizon=horizon, chunks=core.chunking(horizon, n_points),
                  ragged=bool(np.any(inst.horizon != horizon)),
                  native_batch=native_batch and info.native, progress=progress)
