"""Multi-agent erasure schedulers (TPG, SP2-Feedback) and the time-varying, counted channel."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bandits.erasure import algorithms, env, numpy_ma, schedulers, sim

SCHEDULERS = ("tpg", "tpg_guarded", "sp2_fb", "rrr", "sgreedy", "sp2", "lsae_ver", "lsae_hor",
              "vanilla_sae")


def _spec(means, eps, horizon, initial_arm):
  return schedulers.ErasureSpec(arm_mask=jnp.ones(len(means), bool),
                                horizon=jnp.asarray(horizon, jnp.int32),
                                eps=jnp.asarray(eps, jnp.float32),
                                initial_arm=jnp.asarray(initial_arm, jnp.int32))


def rollout(algo, params, spec, key, horizon):
  """One run through env.step; returns the draws it used, the played arms and the final env state."""
  k_algo, k_run = jax.random.split(key)
  n_agents = spec.eps.shape[0]

  def body(carry, k):
    env_s, algo_s = carry
    drawn = env.draw(k, (), params, (n_agents,))
    action = algo.act(None, algo_s)
    env_s, obs, played = env.step_drawn(drawn, env_s, action, params)
    return (env_s, algo.update(algo_s, action, obs)), (drawn.erase_u, drawn.reward_v, played)

  init = (env.reset(None, params), algo.init(k_algo, spec))
  (env_s, _), (erase_u, reward_v, played) = jax.jit(
      lambda i, ks: jax.lax.scan(body, i, ks))(init, jax.random.split(k_run, horizon))
  k, m = len(params.means), n_agents
  algo_u = jax.vmap(lambda t: schedulers.algo_uniforms(k_algo, t, k, m))(jnp.arange(horizon))
  return (np.asarray(erase_u), np.asarray(reward_v), np.asarray(algo_u), np.asarray(played),
          env_s)


def test_algo_uniforms_are_jax_random_uniform_of_the_folded_key():
  """The unrolled scheduler draws equal jax.random.uniform(fold_in(key, t), (max(K, M), 3))."""
  for seed, t, k, m in [(0, 0, 10, 20), (1, 7, 12, 5), (2, 12_345, 3, 3), (3, 2 ** 31 - 1, 2, 9)]:
    key = jax.random.key(seed)
    want = jax.random.uniform(jax.random.fold_in(key, t), (max(k, m), 3))
    got = jax.jit(schedulers.algo_uniforms, static_argnums=(2, 3))(key, jnp.int32(t), k, m)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# --- channel -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "abrupt"])
def test_time_varying_eps_follows_the_authors_schedules(kind):
  """eps_at equals np.interp of the knots, and the authors' linspace-based schedules."""
  horizon = 1000
  kt, ke = env.eps_schedule(kind, horizon, [0.1, 0.3], [0.9, 0.5], breakpoint_frac=0.2)
  params = env.make_params([0.2, 0.8], [0.1, 0.3], knots_t=kt, knots_eps=ke)
  t = np.arange(horizon)
  got = np.asarray(jax.vmap(lambda s: env.eps_at(params, s))(jnp.asarray(t)))
  for m, (start, end) in enumerate([(0.1, 0.9), (0.3, 0.5)]):
    if kind == "linear":
      want = np.linspace(start, end, horizon)
    else:  # utils.generate_varying_erasure_sequence(mode='abrupt')
      brk = int(horizon * 0.2)
      want = np.concatenate([np.linspace(start, end, brk), np.full(horizon - brk, end)])
    np.testing.assert_allclose(got[:, m], want, atol=1e-6)
    np.testing.assert_allclose(got[:, m], np.interp(t, kt, ke[:, m]), atol=1e-6)


def test_erasure_frequency_follows_the_drift():
  """4000 agents at arm 0 asked for arm 1 at round t: the share still at 0 is eps(t)."""
  horizon, agents = 2000, 4000
  kt, ke = env.eps_schedule("linear", horizon, 0.1, 0.9)
  params = env.make_params([0.2, 0.8], np.full(agents, 0.1), knots_t=kt, knots_eps=ke)
  for t in (0, 700, 1999):
    state = env.reset(None, params).replace(time=jnp.int32(t))
    _, _, played = env.step(jax.random.key(t), state, jnp.ones(agents, jnp.int32), params)
    want = 0.1 + 0.8 * t / (horizon - 1)
    got = 1 - np.asarray(played).mean()
    assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / agents)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(knots_t=[0, 10]), "go together"),
    (dict(knots_t=[5, 5], knots_eps=[0.1, 0.2]), "strictly increasing"),
    (dict(knots_t=[0, 10], knots_eps=[0.1, 1.0]), "knots_eps must lie"),
    (dict(knots_t=[0, 10], knots_eps=[0.1]), "one row per knot"),
    (dict(feedback=True, feedback_mode="always"), "feedback_mode"),
])
def test_make_params_rejects_bad_channels(kwargs, fragment):
  with pytest.raises(ValueError, match=fragment):
    env.make_params([0.2, 0.8], 0.1, **kwargs)


def test_feedback_counts_in_the_authors_two_modes():
  """beacon: a bit per transmission; ack_success: a bit per delivery; no feedback: M per round."""
  means, eps, horizon = [0.2, 0.5, 0.8], [0.4, 0.6], 400
  counts = {}
  for mode in ("beacon", "ack_success", None):
    params = env.make_params(means, eps, initial_arm=[0, 0], feedback=mode is not None,
                             feedback_mode=mode or "beacon")
    actions = jnp.asarray(np.random.default_rng(0).integers(3, size=(horizon, 2)), jnp.int32)
    keys = jax.random.split(jax.random.key(1), horizon)

    def body(s, xs):
      k, a = xs
      s2, obs, _ = env.step(k, s, a, params)
      return s2, (s.pending | (a != s.delivered), obs.ack)
    final, (sent, ack) = jax.lax.scan(body, env.reset(None, params), (keys, actions))
    counts[mode] = (int(final.tx), int(final.fb), np.asarray(sent), ack)
  tx, fb, sent, _ = counts["beacon"]
  assert tx == fb == sent.sum() < 2 * horizon
  tx, fb, sent, ack = counts["ack_success"]
  assert tx == sent.sum() and fb == np.asarray(ack).sum() < tx
  tx, fb, _, ack = counts[None]
  assert tx == 2 * horizon and fb == 0 and ack is None


# --- schedulers ----------------------------------------------------------------------------


def _authors_stacks(active, alpha, m_i, n_agents):
  """BatchSP2Erasure._offline_chunk_assignments written out as in the authors' loop."""
  arms = [a for a, on in enumerate(active) if on]
  t_i = math.ceil(m_i * len(arms) / sum(m_i / (al - 1 + m_i) for al in alpha))
  stacks = [[] for _ in range(n_agents)]
  ind = 0
  for i in range(n_agents):
    t_end, p = 0, alpha[i] - 1 + m_i
    while t_end + p <= t_i and ind < len(arms):
      stacks[i].append((arms[ind], p))
      t_end += p
      ind += 1
  k_hat = len(arms) - ind
  if k_hat > 0:
    per_arm = max(1, n_agents // (2 * k_hat))
    size = math.ceil(m_i / per_arm)
    half = max(1, n_agents // 2)
    per_agent = math.ceil(k_hat * per_arm / half)
    agent, chk = 0, 0
    for a in arms[ind:]:
      eff = 0
      while eff < m_i and agent < n_agents:
        chks = min(per_agent - chk, per_arm)
        pulls = min(m_i - eff, chks * size)
        stacks[agent].append((a, alpha[agent] - 1 + pulls))
        eff += pulls
        chk += chks
        if chk >= per_agent:
          agent, chk = agent + 1, 0
  return stacks


@pytest.mark.parametrize("k, alpha, m_i, active", [
    (10, [3, 5, 8, 2], 16, None),
    (10, [3, 5, 8, 2, 4, 6, 9, 2], 64, [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]),
    (6, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 16, None),
    (12, [12, 2, 30], 4, None),
])
def test_sp2_feedback_stacks_are_the_authors_assignment(k, alpha, m_i, active):
  active = np.ones(k, bool) if active is None else np.asarray(active, bool)
  b = schedulers.Batch(active=jnp.asarray(active), sums=jnp.zeros(k), counts=jnp.zeros(k),
                       qhat=jnp.zeros(k), m=jnp.int32(m_i), log_term=jnp.float32(1.0),
                       pull_count=jnp.zeros(k, jnp.int32), pull_sums=jnp.zeros(k))
  arm, left = schedulers._stacks(b, jnp.asarray(alpha, jnp.int32))  # pylint: disable=protected-access
  arm, left = np.asarray(arm), np.asarray(left)
  want = _authors_stacks(active, alpha, m_i, len(alpha))
  for i, stack in enumerate(want):
    got = [(int(a), int(c)) for a, c in zip(arm[i], left[i]) if a >= 0]
    assert got == stack, f"agent {i}"


@pytest.mark.parametrize("n_agents", [pytest.param(n, marks=() if n == 3 else pytest.mark.slow)
                                      for n in (1, 3, 8, 20)])
def test_sp2_feedback_requests_by_arm_are_the_stacks(n_agents):
  """The batch-polymorphic table of requests by (agent, arm) holds exactly the entries of
  :func:`_stacks` (each arm at most once per agent), for one run and for a batch of runs."""
  rng = np.random.default_rng(n_agents)
  runs = []
  for _ in range(8):
    k = int(rng.integers(2, 12))
    active = rng.random(k) < 0.6
    active[rng.integers(k)] = True
    runs.append((k, active, int(rng.choice([4, 7, 16, 28, 64, 448])),
                 rng.integers(1, 30, n_agents)))
  for k, active, m_i, alpha in runs:
    b = schedulers.Batch(active=jnp.asarray(active), sums=jnp.zeros(k), counts=jnp.zeros(k),
                         qhat=jnp.zeros(k), m=jnp.int32(m_i), log_term=jnp.float32(1.0),
                         pull_count=jnp.zeros(k, jnp.int32), pull_sums=jnp.zeros(k))
    arm, left = schedulers._stacks(b, jnp.asarray(alpha, jnp.int32))  # pylint: disable=protected-access
    want = np.zeros((n_agents, k), np.int64)
    for g in range(n_agents):
      for a, c in zip(np.asarray(arm[g]), np.asarray(left[g])):
        if a >= 0:
          assert want[g, a] == 0 and c > 0
          want[g, a] = c
    got = schedulers._stack_requests(b, jnp.asarray(alpha, jnp.int32))  # pylint: disable=protected-access
    np.testing.assert_array_equal(np.asarray(got), want)
  # a batch of runs (runs trailing) with K = 10, against the one-run answers
  k = 10
  active = np.stack([rng.random(k) < 0.7 for _ in range(6)], -1)
  active[0] = True
  m_i = np.array([4, 28, 112, 448, 7, 1792], np.int32)
  alpha = rng.integers(1, 20, (n_agents, 6)).astype(np.int32)
  b = schedulers.Batch(active=jnp.asarray(active), sums=jnp.zeros((k, 6)),
                       counts=jnp.zeros((k, 6)), qhat=jnp.zeros((k, 6)), m=jnp.asarray(m_i),
                       log_term=jnp.ones(6), pull_count=jnp.zeros((k, 6), jnp.int32),
                       pull_sums=jnp.zeros((k, 6)))
  got = np.asarray(schedulers._stack_requests(b, jnp.asarray(alpha)))  # pylint: disable=protected-access
  for r in range(6):
    one = jax.tree.map(lambda x, r=r: x[..., r], b)
    want = schedulers._stack_requests(one, jnp.asarray(alpha[:, r]))  # pylint: disable=protected-access
    np.testing.assert_array_equal(got[..., r], np.asarray(want))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tpg", "sp2_fb"])
def test_multi_agent_native_batch_equals_vmap_over_runs(name):
  """TPG's and SP2-Feedback's batch-polymorphic rounds give the numbers of the one-run code
  mapped over the runs (a ragged grid of two channel profiles)."""
  grid = [dict(n_arms=8, eps=[0.1, 0.4, 0.3, 0.2, 0.5], horizon=1500),
          dict(n_arms=8, eps=[0.6, 0.1, 0.1, 0.3, 0.2], horizon=1100)]
  inst = sim.make_instances(grid, 4, 0, means_kind="random_gap", initial_arm="random")
  a = sim.run(name, inst, jax.random.key(1), feedback=True, n_points=25, native_batch=True)
  b = sim.run(name, inst, jax.random.key(1), feedback=True, n_points=25, native_batch=False)
  np.testing.assert_allclose(np.asarray(a.regret), np.asarray(b.regret), rtol=1e-6)
  np.testing.assert_array_equal(a.totals["tx"], b.totals["tx"])


def test_choice_picks_the_rank_of_u():
  mask = jnp.asarray([False, True, True, False, True])
  for u, want in [(0.0, 1), (0.33, 1), (0.34, 2), (0.67, 4), (0.999, 4)]:
    assert int(schedulers.choice(mask, jnp.float32(u))) == want


FAST = ("tpg", "sp2_fb", "lsae_ver")  # the rest of the cross-checks run in the slow tier


def _plays_like_port(name: str, seed: int, k: int, m: int, horizon: int = 3000):
  """Runs scheduler ``name`` on a random instance with K = ``k`` arms (gaps 0.1) and M = ``m``
  agents, and checks the arms played and the transmissions and feedback bits against the
  float64 port fed the same draws."""
  rng = np.random.default_rng(seed)
  means = rng.permutation(np.linspace(0.1, 0.1 * k, k))
  eps = rng.uniform(0.1, 0.6, m)
  initial = rng.integers(k, size=m)
  feedback = algorithms.ALGORITHMS[name].needs_feedback
  params = env.make_params(means, eps, initial_arm=initial, feedback=feedback)
  erase_u, reward_v, algo_u, played, env_s = rollout(
      algorithms.make(name), params, _spec(means, eps, horizon, initial), jax.random.key(seed),
      horizon)
  ref = numpy_ma.run_port(name, np.asarray(params.means, np.float64),
                          np.asarray(params.eps, np.float64), horizon, erase_u=erase_u,
                          reward_v=reward_v, algo_u=algo_u, initial_arm=initial,
                          feedback_mode="beacon" if feedback else "none")
  np.testing.assert_array_equal(played, ref.played)
  assert int(env_s.tx) == int(ref.tx[-1]) and int(env_s.fb) == int(ref.fb[-1])


@pytest.mark.parametrize("name, seed", [
    pytest.param(n, s, marks=() if (n in FAST and s == 0) else pytest.mark.slow)
    for n in SCHEDULERS for s in (0, 1)])
def test_jax_matches_float64_port_on_the_same_draws(name, seed):
  """Same draws in, the same arms played: the JAX scheduler is the float64 numpy one."""
  _plays_like_port(name, seed, k=8, m=5)


@pytest.mark.parametrize("name", ["tpg", pytest.param("tpg_guarded", marks=pytest.mark.slow)])
def test_tpg_matches_port_with_more_agents_than_arms(name):
  """K <= M: every batch skips phase 1 (TPG's code for this case has no phase 1 at all), and
  the arms played are still the port's."""
  _plays_like_port(name, 3, k=5, m=8)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedulers_learn(name):
  """Over seeds: the last fifth of the run costs far less than the first (arms get eliminated)."""
  inst = sim.make_instances([dict(n_arms=10, eps=[0.2, 0.5, 0.3, 0.1], horizon=20_000)], 8, 0,
                            means_kind="random_gap", initial_arm="random")
  feedback = algorithms.ALGORITHMS[name].needs_feedback
  res = sim.run(name, inst, jax.random.key(0), feedback=feedback, n_points=5)
  first, last = res.regret[..., 0], res.regret[..., -1] - res.regret[..., -2]
  assert np.all(last < 0.5 * first)
  if feedback:
    assert np.all(res.totals["tx"] < 4 * 20_000) and np.all(res.totals["fb"] == res.totals["tx"])
  else:
    assert np.all(res.totals["tx"] == 4 * 20_000) and np.all(res.totals["fb"] == 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_single_agent_feedback_sae_is_the_authors_sp2_feedback_with_one_agent(seed):
  """fb_sae (default order) plays the arms of the float64 SP2-Feedback port with M = 1."""
  rng = np.random.default_rng(seed)
  k, horizon = 6, 4000
  means = rng.permutation(np.linspace(0.1, 0.6, k))
  eps, initial = 0.7, int(rng.integers(k))
  params = env.make_params(means, eps, initial_arm=initial, feedback=True)
  spec = schedulers.ErasureSpec(arm_mask=jnp.ones(k, bool), horizon=jnp.int32(horizon),
                                eps=jnp.float32(eps), initial_arm=jnp.int32(initial))
  algo = algorithms.make("fb_sae")

  def body(carry, key):
    env_s, algo_s = carry
    drawn = env.draw(key, (), params)
    action = algo.act(None, algo_s)
    env_s, obs, played = env.step_drawn(drawn, env_s, action, params)
    return (env_s, algo.update(algo_s, action, obs)), (drawn.erase_u, drawn.reward_v, played)

  init = (env.reset(None, params), algo.init(jax.random.key(0), spec))
  _, (erase_u, reward_v, played) = jax.jit(lambda i, ks: jax.lax.scan(body, i, ks))(
      init, jax.random.split(jax.random.key(seed), horizon))
  ref = numpy_ma.run_port("sp2_fb", np.asarray(params.means, np.float64), [float(params.eps)],
                          horizon, erase_u=np.asarray(erase_u)[:, None],
                          reward_v=np.asarray(reward_v)[:, None], algo_u=np.zeros((horizon, k, 3)),
                          initial_arm=[initial])
  np.testing.assert_array_equal(np.asarray(played), ref.played[:, 0])
  assert len(set(np.asarray(played)[:200].tolist())) > 1  # it explores: not a trivial match


# --- the experiment ------------------------------------------------------------------------


@pytest.mark.parametrize("args, key", [
    (["agents=[4,7]"], "agents"),
    (["main_agents=20", "agents=[4]"], "main_agents"),
    (["schedulers=[tpg,ucb]"], "schedulers"),
    (["eps_profile=fixed", "agents=[2]", "eps_fixed=[0.1]"], "eps_fixed"),
    (["feedback_mode=nack"], "feedback_mode"),
    (["drift=sine"], "drift"),
])
def test_multi_agent_config_errors(precheck_cli, tmp_path, args, key):
  code, lines = precheck_cli(["experiment=erasure_multi_agent", *args])
  assert code == 2 and len(lines) == 1 and f"key '{key}'" in lines[0], lines
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_multi_agent_experiment_writes_its_headline(tmp_path):
  """A tiny run: results.json with the headline keys, the CSVs and one figure per M and vs M."""
  from tests.test_entrypoint import cli  # pylint: disable=import-outside-toplevel
  out = tmp_path / "run"
  proc = cli(["experiment=erasure_multi_agent", "schedulers=[sp2,tpg]", "agents=[4,20]",
              "horizon=600", "n_seeds=2", "n_points=10", "progress=false", "drift=abrupt",
              f"hydra.run.dir={out}"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  head = json.loads((out / "results.json").read_text())["headline"]
  for name in ("sp2", "tpg"):
    assert head[f"regret_{name}"] == head[f"regret_{name}_M20"] > 0
    assert head[f"tx_{name}_M4"] > 0
  assert head["tx_sp2_M4"] == 4 * 600 and head["fb_sp2_M4"] == 0  # no feedback: every round
  assert 0 < head["fb_tpg_M4"] <= head["tx_tpg_M4"] < 4 * 600     # feedback: changes only
  for f in ("metrics.csv", "curves.csv", "regret_vs_t_M4.png", "regret_vs_t_M20.png",
            "regret_vs_M.png", "comm_vs_M.png"):
    assert (out / f).is_file(), f


def test_eps_profiles_are_the_authors_draws():
  """The K=100 nominal vectors: quarters in the four ranges, sorted, and reproducible."""
  from experiments.erasure_multi_agent import Config, channels  # pylint: disable=import-outside-toplevel
  chans = channels(Config(n_arms=100, eps_profile="nominal"))
  for m, (eps, init) in chans.items():
    q = m // 4
    assert np.all(np.diff(eps) >= 0) and init.shape == (m,) and np.all((0 <= init) & (init < 100))
    assert np.all((eps[:q] >= 0.1) & (eps[:q] < 0.5)) and np.all(eps[3 * q:] >= 0.95)
  hard = channels(Config(n_arms=100, eps_profile="hard", agents=(40,)))[40][0]
  # the best quarter redrawn in [0.5, 0.8]; the channels above 0.8 are the nominal ones
  assert np.all(hard >= 0.5) and np.array_equal(hard[20:], chans[40][0][20:])
