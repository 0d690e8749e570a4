"""Multi-armed bandit whose arm requests pass through an erasure channel (arXiv 2406.18072).

Setting of Hanna, Yang & Fragouli, "Learning for Bandits under Action
Erasures" (arXiv 2406.18072) and its feedback sequel (arXiv 2504.20894): each
round the learner requests an arm; the request reaches the agent with
probability 1 - eps and is erased otherwise, in which case the agent plays the
last arm it received (``initial_arm`` before it received any). The learner
observes the reward of the arm that was played, not which arm that was; with
feedback it also learns whether its request arrived (an acknowledgement).

Several agents (the multi-agent version of the same line of work) are the
same environment with a vector of requests: ``action`` of shape (M,), one
erasure probability per agent ``eps`` of shape (M,) (or a scalar for all),
and arm means shared by all agents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special  # pylint: disable=unused-import
from flax import struct

from bandits.core import Environment, take

BERNOULLI = "bernoulli"
GAUSSIAN = "gaussian"
REWARD_KINDS = (BERNOULLI, GAUSSIAN)


class EnvParams(struct.PyTreeNode):
  """Problem instance (array fields may be traced; a batch adds trailing axes).

  Attributes:
    means: (K,) float32 arm means (padded arms: any value, never requested).
    eps: () or (M,) float32 erasure probability in [0, 1).
    noise_std: () float32 Gaussian reward noise (ignored for Bernoulli).
    initial_arm: () or (M,) int32, the arm an agent plays before it has
      received any request.
    reward_kind: static, 'bernoulli' or 'gaussian'.
    feedback: static, whether the learner observes the acknowledgement.
  """
  means: jax.Array
  eps: jax.Array
  noise_std: jax.Array
  initial_arm: jax.Array
  reward_kind: str = struct.field(pytree_node=False, default=GAUSSIAN)
  feedback: bool = struct.field(pytree_node=False, default=False)


class EnvState(struct.PyTreeNode):
  last_arm: jax.Array  # () or (M,) int32: the arm each agent plays when erased
  time: jax.Array      # () int32


class Observation(struct.PyTreeNode):
  """What the learner sees after a round.

  Attributes:
    reward: () or (M,) float32, the reward of the arm played.
    ack: () or (M,) bool, whether the request arrived; None without feedback,
      so an algorithm that needs feedback fails at trace time when it has none.
  """
  reward: jax.Array
  ack: jax.Array | None = None


def reset(key: jax.Array, params: EnvParams) -> EnvState:
  """Agents start with ``initial_arm`` as their last received arm."""
  del key  # The start is deterministic.
  last = jnp.broadcast_to(params.initial_arm, jnp.shape(params.eps)).astype(jnp.int32)
  return EnvState(last_arm=last, time=jnp.zeros(jnp.shape(params.noise_std), jnp.int32))


class Draws(struct.PyTreeNode):
  """The randomness of rounds: leading axes (rounds...) + the action's shape.

  Two uniforms per round and agent: ``erase_u`` on [0, 1) (the request is
  erased when ``erase_u < eps``) and ``reward_v`` on the open interval
  (-1, 1): Gaussian noise is ``sqrt(2) erfinv(reward_v)`` (the transform
  ``jax.random.normal`` uses; drawing on (-1, 1) directly keeps it finite,
  whereas ``erfinv(2u - 1)`` hits erfinv(-1) = -inf when u is tiny), and a
  Bernoulli reward is ``(reward_v + 1) / 2 < mean``.
  """
  erase_u: jax.Array
  reward_v: jax.Array


N_UNIFORMS = 2  # uniforms per round and agent: the erasure and the reward


def from_uniforms(u: jax.Array) -> Draws:
  """Draws from uniforms ``u`` (2, *rounds, *shape) on [0, 1).

  ``erase_u = u[0]``; ``reward_v = 2 u[1] - 1`` moved off -1 to the next float,
  so that it lies in the open interval (-1, 1).
  """
  lo = jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0))
  return Draws(erase_u=u[0], reward_v=jnp.maximum(2.0 * u[1] - 1.0, lo))


def draw(key: jax.Array, rounds: tuple, params: EnvParams, agents: tuple | None = None
         ) -> Draws:
  """Draws the randomness of ``rounds`` rounds of one run (one vectorized call): an
  erasure and a reward uniform per round and agent; ``agents`` is the shape of a
  round's action (default: that of ``params.eps``, () or (M,))."""
  agents = jnp.shape(params.eps) if agents is None else tuple(agents)
  return from_uniforms(jax.random.uniform(key, (N_UNIFORMS,) + tuple(rounds) + agents))


def gaussian_noise(v: jax.Array) -> jax.Array:
  """Standard normal from uniform(-1, 1): sqrt(2) erfinv(v), finite for every draw."""
  return jnp.sqrt(2.0) * jax.scipy.special.erfinv(v)


def step_drawn(drawn: Draws, state: EnvState, action: jax.Array, params: EnvParams):
  """One round given its randomness: erase or deliver each request, play, reward.

  Returns:
    (next state, Observation, played arm(s)).
  """
  received = drawn.erase_u >= params.eps
  played = jnp.where(received, action, state.last_arm).astype(jnp.int32)
  mean = take(params.means, played)
  if params.reward_kind == BERNOULLI:
    reward = ((drawn.reward_v + 1.0) * 0.5 < mean).astype(jnp.float32)
  elif params.reward_kind == GAUSSIAN:
    reward = mean + params.noise_std * gaussian_noise(drawn.reward_v)
  else:
    raise ValueError(f"reward_kind must be one of {REWARD_KINDS}; got {params.reward_kind!r}")
  obs = Observation(reward=reward, ack=received if params.feedback else None)
  return EnvState(last_arm=played, time=state.time + 1), obs, played


def step(key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
  """One round (gymnax shape): :func:`draw` then :func:`step_drawn`.

  Args:
    key: PRNG key for the erasures and the reward noise.
    state: current state.
    action: () or (M,) int32, the requested arm(s).
    params: the instance.

  Returns:
    (next state, Observation, played arm(s)).
  """
  return step_drawn(draw(key, (), params, jnp.shape(action)), state, action, params)


ENV = Environment(reset=reset, step=step, draw=draw, step_drawn=step_drawn,
                  n_uniforms=N_UNIFORMS, from_uniforms=from_uniforms)


def make_params(means, eps, *, noise_std=1.0, initial_arm=0, reward_kind=GAUSSIAN,
                feedback=False) -> EnvParams:
  """Builds validated :class:`EnvParams` from Python / numpy values."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  means_np = np.asarray(means, np.float64)
  eps_np = np.asarray(eps, np.float64)
  if means_np.ndim != 1 or means_np.size < 2:
    raise ValueError(f"means must be a vector of at least 2 arms; got shape {means_np.shape}")
  if np.any(eps_np < 0) or np.any(eps_np >= 1):
    raise ValueError(f"eps must lie in [0, 1); got {eps_np}")
  if reward_kind not in REWARD_KINDS:
    raise ValueError(f"reward_kind must be one of {REWARD_KINDS}; got {reward_kind!r}")
  if reward_kind == BERNOULLI and (np.any(means_np < 0) or np.any(means_np > 1)):
    raise ValueError("Bernoulli means must lie in [0, 1]")
  init_np = np.asarray(initial_arm)
  if np.any(init_np < 0) or np.any(init_np >= means_np.size):
    raise ValueError(f"initial_arm must be in [0, {means_np.size}); got {initial_arm}")
  return EnvParams(means=jnp.asarray(means_np, jnp.float32), eps=jnp.asarray(eps_np, jnp.float32),
                   noise_std=jnp.asarray(noise_std, jnp.float32),
                   initial_arm=jnp.asarray(init_np, jnp.int32), reward_kind=reward_kind,
                   feedback=bool(feedback))
