"""Bandits over arm-erasure channels: environment, algorithms, references and theory checks."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bandits import core
from bandits.core import BanditSpec, counter_uniforms, threefry2x32
from bandits.erasure import algorithms, env, numpy_ref, sim
from experiments.stats import loglog_slope


def _spec(k, horizon, eps):
  return BanditSpec(arm_mask=jnp.ones(k, bool), horizon=jnp.asarray(horizon, jnp.int32),
                    eps=jnp.asarray(eps, jnp.float32))


def rollout(algo, params, spec, key, horizon):
  """Actions and played arms of one run through the gymnax-shaped env.step."""
  def body(carry, k):
    env_s, algo_s = carry
    k_act, k_env = jax.random.split(k)
    action = algo.act(k_act, algo_s)
    env_s, obs, played = env.step(k_env, env_s, action, params)
    return (env_s, algo.update(algo_s, action, obs)), (action, played)
  k_env, k_algo, k_run = jax.random.split(key, 3)
  init = (env.reset(k_env, params), algo.init(k_algo, spec))
  _, (actions, played) = jax.lax.scan(body, init, jax.random.split(k_run, horizon))
  return actions, played


# --- environment ---------------------------------------------------------------------------

def test_erasure_replays_last_delivered_arm():
  params = env.make_params([0.1, 0.5, 0.9], 0.6, initial_arm=2, feedback=True)
  state = env.reset(jax.random.key(0), params)
  assert int(state.last_arm) == 2
  keys = jax.random.split(jax.random.key(1), 4000)
  actions = jnp.asarray(np.random.default_rng(0).integers(3, size=4000), jnp.int32)
  def body(s, xs):
    k, a = xs
    s2, obs, played = env.step(k, s, a, params)
    sent = s.pending | (a != s.delivered)
    return s2, (obs.ack, played, s.last_arm, sent, s2.tx - s.tx, s2.fb - s.fb)
  _, (ack, played, last, sent, tx, fb) = jax.lax.scan(body, state, (keys, actions))
  ack, played, last, sent, actions = map(np.asarray, (ack, played, last, sent, actions))
  np.testing.assert_array_equal(played[ack], actions[ack])        # delivered: the request
  np.testing.assert_array_equal(played[~ack], last[~ack])         # erased: the last arm
  np.testing.assert_array_equal(played[~sent], actions[~sent])    # not sent: already there
  assert not np.any(ack & ~sent)
  np.testing.assert_array_equal(np.asarray(tx), sent)             # one transmission per send
  np.testing.assert_array_equal(np.asarray(fb), sent)             # beacon: a bit per send
  rate = 1 - ack[sent].mean()
  n = sent.sum()
  assert abs(rate - 0.6) < 4 * math.sqrt(0.24 / n)                # erasure frequency ~ eps


def test_observation_and_rewards():
  no_fb = env.make_params([0.2, 0.7], 0.3, reward_kind="bernoulli", feedback=False)
  s, obs, _ = env.step(jax.random.key(0), env.reset(None, no_fb), jnp.int32(1), no_fb)
  assert obs.ack is None and float(obs.reward) in (0.0, 1.0)
  gauss = env.make_params([0.2, 0.7], 0.0, noise_std=0.5)
  keys = jax.random.split(jax.random.key(2), 20000)
  _, obs, played = jax.vmap(lambda k: env.step(k, env.reset(k, gauss), jnp.int32(1), gauss))(keys)
  assert np.all(np.asarray(played) == 1)                           # eps = 0: always delivered
  r = np.asarray(obs.reward)
  assert abs(r.mean() - 0.7) < 4 * 0.5 / math.sqrt(r.size) and abs(r.std() - 0.5) < 0.02


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(means=[0.5], eps=0.1), "at least 2 arms"),
    (dict(means=[0.5, 0.2], eps=1.0), "eps must lie in [0, 1)"),
    (dict(means=[0.5, 0.2], eps=-0.1), "eps must lie in [0, 1)"),
    (dict(means=[0.5, 1.2], eps=0.1, reward_kind="bernoulli"), "Bernoulli means"),
    (dict(means=[0.5, 0.2], eps=0.1, initial_arm=2), "initial_arm"),
    (dict(means=[0.5, 0.2], eps=0.1, reward_kind="poisson"), "reward_kind"),
])
def test_make_params_rejects_bad_instances(kwargs, fragment):
  with pytest.raises(ValueError, match=re.escape(fragment)):
    env.make_params(**kwargs)


def test_multi_agent_channels_are_independent_with_own_eps():
  eps = jnp.asarray([0.0, 0.5, 0.95], jnp.float32)
  params = env.EnvParams(means=jnp.asarray([0.1, 0.9]), eps=eps, noise_std=jnp.float32(1),
                         initial_arm=jnp.zeros(3, jnp.int32), feedback=True)
  keys = jax.random.split(jax.random.key(3), 20000)
  _, obs, played = jax.vmap(lambda k: env.step(k, env.reset(k, params), jnp.ones(3, jnp.int32),
                                               params))(keys)
  erased = 1 - np.asarray(obs.ack).mean(axis=0)
  np.testing.assert_allclose(erased, [0.0, 0.5, 0.95], atol=0.015)
  assert np.asarray(played).shape == (20000, 3)


def test_reward_draws_are_finite_at_the_extremes():
  """The smallest and largest uniform draws give finite Gaussian noise (no erfinv(+-1))."""
  lo = np.nextafter(np.float32(-1), np.float32(0))
  hi = np.nextafter(np.float32(1), np.float32(0))
  z = np.asarray(env.gaussian_noise(jnp.asarray([lo, hi, 0.0], jnp.float32)))
  assert np.all(np.isfinite(z)) and z[0] < -5 and z[1] > 5 and z[2] == 0
  d = env.draw(jax.random.key(0), (200_000,), env.make_params([0.5, 0.2], 0.5))
  v = np.asarray(d.reward_v)
  assert v.min() > -1 and v.max() < 1
  z = np.asarray(env.gaussian_noise(d.reward_v))
  assert np.all(np.isfinite(z)) and abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


# --- algorithms ----------------------------------------------------------------------------

@pytest.mark.parametrize("eps, horizon, alpha", [(0.0, 50_000, 1), (0.5, 50_000, 32),
                                                 (0.9, 50_000, 206), (0.99, 50_000, 2154),
                                                 (0.5, 5_000, 25)])
def test_repetitions_closed_form(eps, horizon, alpha):
  """alpha = ceil(2 ln T / ln(1/eps)) (values of the authors' calculate_repetitions)."""
  assert int(algorithms.repetitions(eps, horizon)) == alpha


def _draws_of_run(key, horizon):
  """The (erase_u, noise) stream sim.run feeds one run (G = S = 1), rebuilt from its key.

  Each run's draws are a counter-based stream (:func:`bandits.core.counter_uniforms`)
  keyed by fold_in(run key, 2^30), independent of the batch and of the chunking.
  """
  run_key = jax.random.split(key, 1)[0]
  stream = jax.random.fold_in(run_key, 1 << 30)
  u = counter_uniforms(stream, 0, horizon, env.N_UNIFORMS)
  d = env.from_uniforms(u)
  return np.asarray(d.erase_u), np.asarray(env.gaussian_noise(d.reward_v)).astype(np.float64)


def test_counter_stream_matches_threefry_and_ignores_chunking():
  """counter_uniforms is Threefry-2x32 of (round, slot) under the run's key, whatever the
  batch: a batch of keys equals each key alone, and rounds 7.. equal a slice of rounds 0.."""
  keys = jax.random.split(jax.random.key(3), 4)
  batch = np.asarray(counter_uniforms(keys, 0, 12, 3))
  for b in range(4):
    alone = np.asarray(counter_uniforms(keys[b], 0, 12, 3))
    np.testing.assert_array_equal(batch[..., b], alone)
    np.testing.assert_array_equal(np.asarray(counter_uniforms(keys[b], 7, 5, 3)), alone[:, 7:])
  # Independent reference: the hash itself on the counters, mapped to [0, 1) by the top 23 bits.
  from jax.extend.random import threefry2x32_p  # pylint: disable=import-outside-toplevel
  k = np.asarray(jax.random.key_data(keys[0]))
  r = np.arange(12, dtype=np.uint32)[:, None].repeat(2, 1)
  slot = np.arange(2, dtype=np.uint32)[None, :].repeat(12, 0)
  w0, w1 = (np.asarray(w) for w in threefry2x32_p.bind(
      np.full((12, 2), k[0], np.uint32), np.full((12, 2), k[1], np.uint32), r, slot))
  words = np.stack([w0[:, 0], w1[:, 0], w0[:, 1]])  # fields 0, 1 (pair 0) and 2 (pair 1)
  np.testing.assert_array_equal(batch[..., 0], (words >> 9).astype(np.float64) / 2.0 ** 23)
  assert 0.0 <= batch.min() and batch.max() < 1.0


def test_threefry2x32_known_answers_and_jax_hash():
  """The unrolled hash gives Random123's known answers for Threefry-2x32-20 and equals
  JAX's own threefry2x32 primitive on random words."""
  from jax.extend.random import threefry2x32_p  # pylint: disable=import-outside-toplevel
  cases = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
           ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
           ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
  for key, ctr, want in cases:
    got = threefry2x32(*(jnp.uint32(v) for v in key + ctr))
    assert tuple(int(w) for w in got) == want
  words = np.random.default_rng(0).integers(0, 2 ** 32, (4, 257), dtype=np.uint64)
  words = [jnp.asarray(w.astype(np.uint32)) for w in words]
  for mine, theirs in zip(jax.jit(threefry2x32)(*words), threefry2x32_p.bind(*words)):
    np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


@pytest.mark.parametrize("name", ["lsae", "fb_sae"])
@pytest.mark.parametrize("eps, seed", [(0.0, 0), (0.5, 1), (0.9, 2), (0.97, 3)])
def test_jax_matches_float64_numpy_loop_on_the_same_draws(name, eps, seed):
  """Same draws in, the same regret curve out: the JAX algorithm is the numpy one."""
  horizon, n_points = 6000, 60
  rng = np.random.default_rng(seed)
  means = rng.permutation(np.linspace(0.1, 0.6, 6))  # gaps >= 0.1 between any two arms
  inst = sim.make_instances([dict(n_arms=6, eps=eps, horizon=horizon)], 1, 0, means_kind="given",
                            given_means=tuple(means), initial_arm=3)
  key = jax.random.key(seed)
  res = sim.run(name, inst, key, feedback=name == "fb_sae", n_points=n_points)
  erase_u, noise = _draws_of_run(key, horizon)
  ref, curve = numpy_ref.phased_loop(name, means.astype(np.float32), eps, horizon,
                                     erase_u=erase_u, noise=noise, initial_arm=3,
                                     n_points=n_points,
                                     order="descending" if name == "fb_sae" else "ascending")
  jax_curve = np.asarray(res.regret)[0, 0]
  # Per-chunk regret increments: float32 vs float64 rounding only (< 0.01); a
  # single round played differently would shift an increment by a gap >= 0.1.
  np.testing.assert_allclose(np.diff(jax_curve, prepend=0), np.diff(curve, prepend=0), atol=0.01)
  np.testing.assert_allclose(jax_curve[-1], ref, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(n for n, i in algorithms.ALGORITHMS.items()
                                        if not i.multi_agent))
def test_eps_zero_reduces_to_erasure_free_self(name):
  """With eps = 0, an erasure algorithm takes the same actions as its base for the same key."""
  info = algorithms.ALGORITHMS[name]
  params = env.make_params([0.3, 0.5, 0.45, 0.1], 0.0, feedback=True)
  spec = _spec(4, 3000, 0.0)
  key = jax.random.key(7)
  a, played = jax.jit(lambda k: rollout(info.make(), params, spec, k, 3000))(key)
  b, _ = jax.jit(lambda k: rollout(info.erasure_free_self(), params, spec, k, 3000))(key)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(played))
  assert len(np.unique(np.asarray(a))) >= 2  # it explored


@pytest.mark.parametrize("jit", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["with_jit", "without_jit"])
@pytest.mark.parametrize("name", ["rep_ucb", "lsae", "fb_sae"])
def test_same_actions_with_and_without_jit(name, jit):
  params = env.make_params([0.3, 0.6, 0.5], 0.5, feedback=True, initial_arm=1)
  spec = _spec(3, 500, 0.5)
  fn = lambda k: rollout(algorithms.make(name), params, spec, k, 120)
  ref = jax.jit(fn)(jax.random.key(4))
  if jit:
    out = jax.jit(fn)(jax.random.key(4))
  else:
    with jax.disable_jit():
      out = fn(jax.random.key(4))
  np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(ref[0]))


@pytest.mark.parametrize("name", ["ucb", pytest.param("rep_se", marks=pytest.mark.slow), "lsae",
                                  pytest.param("fb_sae", marks=pytest.mark.slow)])
def test_native_batch_equals_vmap_over_runs(name):
  """The batch-polymorphic path and vmap over runs give identical numbers (ragged grid)."""
  grid = [dict(n_arms=k, eps=e, horizon=h) for k, e, h in
          [(6, 0.0, 900), (6, 0.5, 1200), (3, 0.9, 700)]]
  inst = sim.make_instances(grid, 4, 0, means_kind="random_gap", initial_arm="random")
  a = sim.run(name, inst, jax.random.key(1), feedback=True, n_points=30, native_batch=True)
  b = sim.run(name, inst, jax.random.key(1), feedback=True, n_points=30, native_batch=False)
  np.testing.assert_array_equal(np.asarray(a.regret), np.asarray(b.regret))
  # Runs past their own horizon do not accrue regret.
  short = np.asarray(a.regret)[2]
  np.testing.assert_array_equal(short[:, -1], short[:, np.searchsorted(a.rounds, 700)])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lsae", "fb_sae"])
def test_one_program_per_device_equals_one_program(name, monkeypatch):
  """Seeds split over the host devices (shard_map, a local lax.cond per device) give the same
  numbers as one program over all seeds."""
  if len(jax.local_devices()) < 2:
    pytest.skip("needs several host devices")
  inst = sim.make_instances([dict(n_arms=5, eps=0.7, horizon=3000)], 8, 2, means_kind="random_gap")
  a = sim.run(name, inst, jax.random.key(4), feedback=True, n_points=30)
  jax.clear_caches()
  monkeypatch.setattr(core, "on_each_device", lambda fn, n_runs, out_run_axes: fn)
  monkeypatch.setattr(core, "shard_runs", lambda tree: tree)
  b = sim.run(name, inst, jax.random.key(4), feedback=True, n_points=30)
  jax.clear_caches()
  np.testing.assert_array_equal(np.asarray(a.regret), np.asarray(b.regret))
  assert np.all(np.asarray(a.final_regret) > 0)


def test_feedback_algorithm_needs_feedback():
  inst = sim.make_instances([dict(n_arms=3, eps=0.5, horizon=100)], 1, 0, means_kind="random_gap")
  with pytest.raises(ValueError, match="needs feedback"):
    sim.run("fb_sae", inst, jax.random.key(0), feedback=False)


@pytest.mark.slow
def test_vectorized_numpy_agrees_with_jax_in_distribution():
  """The hand-vectorized baseline implements the same algorithm (mean regret within CIs)."""
  inst = sim.make_instances([dict(n_arms=5, eps=0.8, horizon=4000)], 200, 0,
                            means_kind="random_gap")
  for name in ("lsae", "fb_sae"):
    jx = np.asarray(sim.run(name, inst, jax.random.key(0), feedback=True).final_regret)[0]
    npv = numpy_ref.phased_vectorized(name, inst.means[0], 0.8, 4000, np.random.default_rng(1))
    se = math.sqrt(jx.var() / jx.size + npv.var() / npv.size)
    assert abs(jx.mean() - npv.mean()) < 4 * se, (name, jx.mean(), npv.mean())


def test_multi_agent_lsae_with_one_agent_is_lsae():
  grid = [dict(n_arms=6, eps=e, horizon=4000) for e in (0.0, 0.5, 0.9)]
  one = [dict(g, eps=[g["eps"]]) for g in grid]
  a = sim.run("lsae", sim.make_instances(grid, 3, 0, means_kind="random_gap", initial_arm=2),
              jax.random.key(3), n_points=40)
  b = sim.run("ma_lsae", sim.make_instances(one, 3, 0, means_kind="random_gap", initial_arm=2),
              jax.random.key(3), n_points=40)
  np.testing.assert_array_equal(np.asarray(a.regret), np.asarray(b.regret))


def test_multi_agent_lsae_finds_the_best_arm_with_heterogeneous_channels():
  grid = [dict(n_arms=8, eps=[0.1, 0.5, 0.9], horizon=40_000)]
  inst = sim.make_instances(grid, 16, 0, means_kind="random_gap", initial_arm="random")
  res = sim.run("ma_lsae", inst, jax.random.key(0), n_points=40)
  curve = np.asarray(res.regret)[0]
  late = (curve[:, -1] - curve[:, -5]) / (4 * 1000 * 3)  # regret per agent-round, last 10%
  assert np.median(late) == 0.0 and late.mean() < 0.01
  assert curve[:, -1].mean() > 0


def test_multi_agent_lsae_rejects_a_scalar_eps():
  inst = sim.make_instances([dict(n_arms=3, eps=0.5, horizon=100)], 2, 0, means_kind="random_gap")
  with pytest.raises(ValueError, match="one erasure probability per agent"):
    sim.run("ma_lsae", inst, jax.random.key(0))


# --- theory checks -------------------------------------------------------------------------

def test_lsae_regret_grows_like_sqrt_t_on_a_fixed_instance():
  """Fitted log-log slope of L-SAE's regret vs T is near 1/2 (between log T and linear)."""
  ts = [16_000, 32_000, 64_000, 128_000]
  grid = [dict(n_arms=5, eps=0.5, horizon=t) for t in ts]
  inst = sim.make_instances(grid, 48, 0, means_kind="given", given_means=(0.5, 0.45, 0.4, 0.4, 0.3))
  reg = np.asarray(sim.run("lsae", inst, jax.random.key(0), n_points=8).final_regret).mean(1)
  slope, _, _ = loglog_slope(ts, reg)
  assert 0.35 < slope < 0.75, (slope, reg)


@pytest.mark.slow
def test_erasure_ignoring_ucb_suffers_linear_regret_at_high_eps():
  """At eps = 0.99 naive UCB's regret per round stays flat while L-SAE's and fb_sae's fall."""
  ts = [20_000, 80_000]
  grid = [dict(n_arms=5, eps=0.99, horizon=t) for t in ts]
  inst = sim.make_instances(grid, 48, 0, means_kind="given", given_means=(1.0, 0.8, 0, 0, 0),
                            initial_arm=2)
  per_round = {}
  for name in ("ucb", "fb_sae"):
    reg = np.asarray(sim.run(name, inst, jax.random.key(0), feedback=True,
                             n_points=8).final_regret).mean(1)
    per_round[name] = reg / np.array(ts)
  assert per_round["ucb"][1] > 0.05                        # a constant fraction of rounds lost
  assert per_round["ucb"][1] > 0.7 * per_round["ucb"][0]   # not decaying: linear regret
  assert per_round["fb_sae"][1] < 0.3 * per_round["fb_sae"][0]
