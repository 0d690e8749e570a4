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

Communication is counted as in the authors' code (``CommMixin`` of
github mervekarakas/mamab_erasures): without feedback every agent is sent a
request every round; with feedback the learner knows what was delivered, so it
transmits only to an agent whose last request was erased (``pending``) or whose
arm changes. An agent that is not transmitted to plays its last delivered arm,
which is then the requested one. Feedback bits are one per transmission
(``beacon``) or one per successful delivery (``ack_success``). The channel may
vary in time: ``eps`` then follows a piecewise-linear schedule through knots
(linear drift and abrupt breakpoints, as the authors' ``utils.py`` draws them).
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
FEEDBACK_MODES = ("beacon", "ack_success")  # what a feedback bit is sent for (counting only)


class EnvParams(struct.PyTreeNode):
  """Problem instance (array fields may be traced; a batch adds trailing axes).

  Attributes:
    means: (K,) float32 arm means (padded arms: any value, never requested).
    eps: () or (M,) float32 erasure probability in [0, 1).
    noise_std: () float32 Gaussian reward noise (ignored for Bernoulli).
    initial_arm: () or (M,) int32, the arm an agent plays before it has
      received any request.
    reward_kind: static, 'bernoulli' or 'gaussian'.
    feedback: static, whether the learner observes the acknowledgement (and
      so transmits only what changed; see the module docstring).
    feedback_mode: static, 'beacon' (a feedback bit per transmission) or
      'ack_success' (a bit per delivery); it changes only the count of bits.
    knots_t: None, or (n,) float32 strictly increasing rounds (0-based) of a
      time-varying channel; the channel's eps at round t is then the
      piecewise-linear interpolation of ``knots_eps`` (constant outside), and
      ``eps`` is only what the learner is told.
    knots_eps: None, or (n,) + the shape of ``eps``: eps at each knot.
  """
  means: jax.Array
  eps: jax.Array
  noise_std: jax.Array
  initial_arm: jax.Array
  knots_t: jax.Array | None = None
  knots_eps: jax.Array | None = None
  reward_kind: str = struct.field(pytree_node=False, default=GAUSSIAN)
  feedback: bool = struct.field(pytree_node=False, default=False)
  feedback_mode: str = struct.field(pytree_node=False, default="beacon")


class EnvState(struct.PyTreeNode):
  last_arm: jax.Array   # () or (M,) int32: the arm each agent plays when erased
  time: jax.Array       # () int32
  delivered: jax.Array  # () or (M,) int32: the last arm delivered to each agent, -1 before any
  pending: jax.Array    # () or (M,) bool: whether the last request sent to the agent was erased
  tx: jax.Array         # () int32: requests transmitted so far, all agents
  fb: jax.Array         # () int32: feedback bits sent so far, all agents


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
  zero = jnp.zeros(jnp.shape(params.noise_std), jnp.int32)
  return EnvState(last_arm=last, time=zero, delivered=jnp.full_like(last, -1),
                  pending=jnp.ones(last.shape, bool), tx=zero, fb=zero)


def eps_at(params: EnvParams, time: jax.Array) -> jax.Array:
  """The channel's erasure probability at round ``time`` (0-based), per agent.

  ``params.eps`` when the channel is constant; else the piecewise-linear
  interpolation through ``(knots_t, knots_eps)``, written as a sum of clipped
  ramps (the same value as ``np.interp``), constant before the first knot and
  after the last.
  """
  if params.knots_t is None:
    return params.eps
  t = jnp.asarray(time, jnp.float32)
  eps = params.knots_eps[0]
  for i in range(1, params.knots_t.shape[0]):
    t0, t1 = params.knots_t[i - 1], params.knots_t[i]
    frac = jnp.clip((t - t0) / (t1 - t0), 0.0, 1.0)
    eps = eps + (params.knots_eps[i] - params.knots_eps[i - 1]) * frac
  return eps


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
  action = jnp.asarray(action, jnp.int32)
  received = drawn.erase_u >= eps_at(params, state.time)
  if params.feedback:
    sent = state.pending | (action != state.delivered)
  else:
    sent = jnp.ones(action.shape, bool)
  success = sent & received
  # An agent not sent to has its request delivered already: its last arm is the request.
  played = jnp.where(success, action, state.last_arm)
  mean = take(params.means, played)
  if params.reward_kind == BERNOULLI:
    reward = ((drawn.reward_v + 1.0) * 0.5 < mean).astype(jnp.float32)
  elif params.reward_kind == GAUSSIAN:
    reward = mean + params.noise_std * gaussian_noise(drawn.reward_v)
  else:
    raise ValueError(f"reward_kind must be one of {REWARD_KINDS}; got {params.reward_kind!r}")
  obs = Observation(reward=reward, ack=success if params.feedback else None)
  agents = tuple(range(action.ndim - state.time.ndim))  # the agent axis, if any
  count = lambda flags: jnp.sum(flags.astype(jnp.int32), axis=agents)
  if not params.feedback:
    bits = jnp.zeros_like(state.fb)
  elif params.feedback_mode == "beacon":
    bits = count(sent)
  elif params.feedback_mode == "ack_success":
    bits = count(success)
  else:
    raise ValueError(f"feedback_mode must be one of {FEEDBACK_MODES}; got {params.feedback_mode!r}")
  nxt = EnvState(last_arm=played, time=state.time + 1,
                 delivered=jnp.where(success, action, state.delivered),
                 pending=jnp.where(sent, ~received, state.pending),
                 tx=state.tx + count(sent), fb=state.fb + bits)
  return nxt, obs, played


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


def totals(state: EnvState) -> dict:
  """The run's communication counters: transmissions and feedback bits, all agents."""
  return {"tx": state.tx, "fb": state.fb}


ENV = Environment(reset=reset, step=step, draw=draw, step_drawn=step_drawn,
                  n_uniforms=N_UNIFORMS, from_uniforms=from_uniforms, totals=totals)


def make_params(means, eps, *, noise_std=1.0, initial_arm=0, reward_kind=GAUSSIAN,
                feedback=False, feedback_mode="beacon", knots_t=None, knots_eps=None
                ) -> EnvParams:
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
  if feedback_mode not in FEEDBACK_MODES:
    raise ValueError(f"feedback_mode must be one of {FEEDBACK_MODES}; got {feedback_mode!r}")
  kt, ke = check_knots(knots_t, knots_eps, eps_np.shape)
  return EnvParams(means=jnp.asarray(means_np, jnp.float32), eps=jnp.asarray(eps_np, jnp.float32),
                   noise_std=jnp.asarray(noise_std, jnp.float32),
                   initial_arm=jnp.asarray(init_np, jnp.int32),
                   knots_t=None if kt is None else jnp.asarray(kt, jnp.float32),
                   knots_eps=None if ke is None else jnp.asarray(ke, jnp.float32),
                   reward_kind=reward_kind, feedback=bool(feedback), feedback_mode=feedback_mode)


def check_knots(knots_t, knots_eps, eps_shape: tuple):
  """Validated numpy (knots_t (n,), knots_eps (n, *eps_shape)) of a time-varying channel.

  Both None: a constant channel. Rounds strictly increasing, at least one knot,
  every eps in [0, 1); a knot eps of shape (n,) is shared by all agents.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  if knots_t is None and knots_eps is None:
    return None, None
  if knots_t is None or knots_eps is None:
    raise ValueError("knots_t and knots_eps go together")
  kt = np.asarray(knots_t, np.float64)
  ke = np.asarray(knots_eps, np.float64)
  if kt.ndim != 1 or kt.size < 1 or np.any(np.diff(kt) <= 0):
    raise ValueError(f"knots_t must be a strictly increasing vector; got {kt}")
  if ke.shape[:1] != kt.shape:
    raise ValueError(f"knots_eps needs one row per knot ({kt.size}); got shape {ke.shape}")
  ke = np.broadcast_to(ke.reshape(ke.shape + (1,) * (1 + len(eps_shape) - ke.ndim)),
                       kt.shape + tuple(eps_shape))
  if np.any(ke < 0) or np.any(ke >= 1):
    raise ValueError(f"knots_eps must lie in [0, 1); got {ke}")
  return kt, ke


def eps_schedule(kind: str, horizon: int, start, end, breakpoint_frac: float = 0.2):
  """Knots (knots_t, knots_eps) of the authors' time-varying channels (``utils.py``).

  ``linear``: eps moves linearly from ``start`` at round 0 to ``end`` at round
  T - 1 (``np.linspace(start, end, T)``). ``abrupt``: the same ramp over the first
  ``max(1, int(T breakpoint_frac))`` rounds, then ``end`` to the horizon.
  ``start`` and ``end`` are scalars or one value per agent.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
  if kind == "linear":
    last = horizon - 1
  elif kind == "abrupt":
    last = max(1, int(horizon * breakpoint_frac)) - 1
  else:
    raise ValueError(f"eps schedule must be 'linear' or 'abrupt'; got {kind!r}")
  if last <= 0:
    return np.zeros(1), np.broadcast_to(end, (1,) + np.shape(end)).copy()
  return np.array([0.0, float(last)]), np.stack(np.broadcast_arrays(start, end))
