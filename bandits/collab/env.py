"""m agents, each a linear bandit with its own parameter drawn from a population (arXiv 2506.15943).

Setting of Huang, Zhou, Yang & Diggavi, "On the optimal regret of
collaborative personalized linear bandits" (arXiv 2506.15943): every round
each of m agents picks x_i in an action set X subset R^d and observes
<x_i, theta_i> + noise; the theta_i are drawn from a hierarchical model with
population mean mu and heterogeneity sigma,

    theta_i = mu + sigma z_i,  z_i ~ N(0, I_d)             ('gaussian')
                               z_i ~ U[-sqrt 3, sqrt 3]^d  ('bounded', same covariance)

so E||theta_i - mu||^2 = d sigma^2, the scale at which the paper's regime
boundaries n = d / (m sigma^2) and n = d / sigma^2 are stated.

Action sets: the unit ball ('ball'); a finite set of K unit vectors fixed for
the run and shared by the agents ('finite'); K fresh uniformly random unit
vectors per agent and round ('contexts', changing contexts).

Gymnax shape: ``reset(key, params) -> state`` and ``step(key, state, action,
params) -> (state, obs, regret)`` where ``regret`` (m,) is each agent's
pseudo-regret for the round, max_{x in X} <x, theta_i> - <x_i, theta_i> (0 for
padded agents), the linear analogue of the ``played`` arm that the erasure
bandits turn into regret through the gaps. As there (:class:`bandits.core.Environment`),
``step`` is :func:`step_drawn` of :func:`draw`, so a simulator can draw a
chunk of rounds at once and scan over them, and the learner sees the round's
action set (:func:`action_set`, the environment's ``context``) before it acts.

Layout (see :mod:`bandits.collab.ridge`): feature axes lead, agents follow,
runs trail: theta (d, m, *batch), actions (d, m, *batch), rewards (m, *batch),
a finite set (K, d, *batch), contexts (K, d, m, *batch). ``step_drawn`` is
batch-polymorphic; ``draw`` and ``reset`` are written for one run (the
simulator maps them over runs, one key per run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bandits.collab.ridge import dot, sum_axis
from bandits.core import Environment

BALL = "ball"
FINITE = "finite"
CONTEXTS = "contexts"
ACTION_SETS = (BALL, FINITE, CONTEXTS)
GAUSSIAN = "gaussian"
BOUNDED = "bounded"
POPULATIONS = (GAUSSIAN, BOUNDED)


class EnvParams(struct.PyTreeNode):
  """A problem instance (array fields may be traced; runs add trailing axes).

  Attributes:
    theta: (d, m) float32, the agents' parameters.
    noise_std: () float32, Gaussian reward noise.
    agent_mask: (m,) bool, which agent slots exist (grids over m pad to the
      largest m; padded agents play 0 and are charged no regret).
    arms: (K, d) float32 unit vectors of a 'finite' set; None otherwise.
    action_set: static, 'ball' | 'finite' | 'contexts'.
    n_arms: static, K of 'finite' and 'contexts' (0 for the ball).
  """
  theta: jax.Array
  noise_std: jax.Array
  agent_mask: jax.Array
  arms: jax.Array | None = None
  action_set: str = struct.field(pytree_node=False, default=BALL)
  n_arms: int = struct.field(pytree_node=False, default=0)


class EnvState(struct.PyTreeNode):
  contexts: jax.Array | None  # (K, d, m): this round's action sets ('contexts'), else None
  time: jax.Array             # () int32


class Observation(struct.PyTreeNode):
  reward: jax.Array  # (m,) float32, <x_i, theta_i> + noise


class Draws(struct.PyTreeNode):
  """The randomness of rounds, leading axes = rounds: noise (..., m); contexts (..., K, d, m)."""
  noise: jax.Array
  contexts: jax.Array | None


def unit_vectors(key: jax.Array, shape: tuple, axis: int) -> jax.Array:
  """Uniform draws from the unit sphere; ``axis`` of ``shape`` is the dimension d."""
  g = jax.random.normal(key, shape)
  return g / jnp.linalg.norm(g, axis=axis, keepdims=True)


def sample_mean(key: jax.Array, d: int, norm: float) -> jax.Array:
  """A population mean: a uniform direction of length ``norm``; (d,)."""
  return norm * unit_vectors(key, (d,), 0)


def sample_thetas(key: jax.Array, mu: jax.Array, sigma, m: int, kind: str = GAUSSIAN) -> jax.Array:
  """theta_i = mu + sigma z_i for i < m, with z_i of zero mean and identity covariance.

  Args:
    key: PRNG key.
    mu: (d,) population mean.
    sigma: heterogeneity (>= 0).
    m: number of agents.
    kind: 'gaussian' (z ~ N(0, I)) or 'bounded' (z ~ U[-sqrt 3, sqrt 3]^d).

  Returns:
    (d, m) parameters. Agent i's z_i does not depend on m or sigma, so
    sweeps over them share instances (common random numbers).
  """
  d = mu.shape[0]
  if kind == GAUSSIAN:
    z = jax.random.normal(key, (d, m))
  elif kind == BOUNDED:
    z = jax.random.uniform(key, (d, m), minval=-jnp.sqrt(3.0), maxval=jnp.sqrt(3.0))
  else:
    raise ValueError(f"population kind must be one of {POPULATIONS}; got {kind!r}")
  return mu[:, None] + sigma * z


def action_set(state: EnvState, params: EnvParams) -> jax.Array | None:
  """This round's actions per agent, (K, d, m or 1, *batch); None for the ball."""
  if params.action_set == BALL:
    return None
  if params.action_set == FINITE:
    return params.arms[:, :, None]
  return state.contexts


def best_value(theta: jax.Array, arms: jax.Array | None) -> jax.Array:
  """max_{x in X} <x, theta_i> per agent: ||theta_i|| on the ball; (m, *batch)."""
  if arms is None:
    return jnp.sqrt(dot(theta, theta))
  return jnp.max(sum_axis(arms * theta[None], 1), axis=0)


def draw(key: jax.Array, rounds: tuple, params: EnvParams) -> Draws:
  """The randomness of ``rounds`` rounds of one run (one vectorized call per field)."""
  key_noise, key_ctx = jax.random.split(key)
  d, m = params.theta.shape[:2]
  noise = jax.random.normal(key_noise, tuple(rounds) + (m,))
  contexts = None
  if params.action_set == CONTEXTS:
    contexts = unit_vectors(key_ctx, tuple(rounds) + (params.n_arms, d, m), len(rounds) + 1)
  return Draws(noise=noise, contexts=contexts)


def reset(key: jax.Array, params: EnvParams) -> EnvState:
  """One run's start: the first round's contexts (if any) drawn from ``key``."""
  contexts = None
  if params.action_set == CONTEXTS:
    d, m = params.theta.shape[:2]
    contexts = unit_vectors(key, (params.n_arms, d, m), 1)
  return EnvState(contexts=contexts, time=jnp.zeros((), jnp.int32))


def step_drawn(drawn: Draws, state: EnvState, action: jax.Array, params: EnvParams):
  """One round given its randomness; batch-polymorphic.

  Args:
    drawn: this round's :class:`Draws` (noise (m, *b), contexts (K, d, m, *b)).
    state: current state.
    action: (d, m, *b) each agent's action (in its action set).
    params: the instance.

  Returns:
    (next state, Observation, per-agent pseudo-regret (m, *b)).
  """
  mean = dot(action, params.theta)
  reward = mean + params.noise_std[None] * drawn.noise
  best = best_value(params.theta, action_set(state, params))
  regret = jnp.where(params.agent_mask, best - mean, 0.0)
  nxt = EnvState(contexts=drawn.contexts, time=state.time + 1)
  return nxt, Observation(reward=jnp.where(params.agent_mask, reward, 0.0)), regret


def step(key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
  """One round of one run (gymnax shape): :func:`draw` then :func:`step_drawn`."""
  return step_drawn(draw(key, (), params), state, action, params)


# The learner sees the round's action set before it acts (``context``).
ENV = Environment(reset=reset, step=step, draw=draw, step_drawn=step_drawn, context=action_set)


def make_params(theta, *, action_set: str = BALL, arms=None, n_arms: int = 0,
                noise_std: float = 1.0, agent_mask=None) -> EnvParams:
  """Validated :class:`EnvParams` of one run from numpy values.

  Args:
    theta: (d, m) agent parameters.
    action_set: 'ball', 'finite' (give ``arms`` (K, d), unit vectors) or
      'contexts' (give ``n_arms`` = K >= 2 fresh random actions per round).
    arms: the finite action set.
    n_arms: K for 'contexts'.
    noise_std: reward noise (>= 0).
    agent_mask: (m,) bool, default all agents.

  Raises:
    ValueError: naming the inconsistent argument.
  """
  theta = np.asarray(theta, np.float64)
  if theta.ndim != 2 or theta.shape[0] < 1 or theta.shape[1] < 1:
    raise ValueError(f"theta must have shape (d, m) with d, m >= 1; got {theta.shape}")
  if not np.all(np.isfinite(theta)):
    raise ValueError("theta must be finite")
  d, m = theta.shape
  if action_set not in ACTION_SETS:
    raise ValueError(f"action_set must be one of {ACTION_SETS}; got {action_set!r}")
  if not np.isfinite(noise_std) or noise_std < 0:
    raise ValueError(f"noise_std must be a finite number >= 0; got {noise_std}")
  mask = np.ones(m, bool) if agent_mask is None else np.asarray(agent_mask, bool)
  if mask.shape != (m,):
    raise ValueError(f"agent_mask must have shape ({m},); got {mask.shape}")
  arms_j = None
  if action_set == FINITE:
    if arms is None:
      raise ValueError("action_set='finite' needs arms of shape (K, d)")
    arms = np.asarray(arms, np.float64)
    if arms.ndim != 2 or arms.shape[1] != d or arms.shape[0] < 2:
      raise ValueError(f"arms must have shape (K, {d}) with K >= 2; got {arms.shape}")
    if np.any(np.linalg.norm(arms, axis=1) > 1 + 1e-6):
      raise ValueError("arms must lie in the unit ball (||x|| <= 1)")
    n_arms = arms.shape[0]
    arms_j = jnp.asarray(arms, jnp.float32)
  elif action_set == CONTEXTS:
    if n_arms < 2:
      raise ValueError(f"action_set='contexts' needs n_arms >= 2; got {n_arms}")
  elif arms is not None:
    raise ValueError("arms is only used with action_set='finite'")
  else:
    n_arms = 0
  return EnvParams(theta=jnp.asarray(theta, jnp.float32),
                   noise_std=jnp.asarray(noise_std, jnp.float32),
                   agent_mask=jnp.asarray(mask), arms=arms_j, action_set=action_set,
                   n_arms=int(n_arms))
