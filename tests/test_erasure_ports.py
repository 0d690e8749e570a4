"""The float64 ports of the multi-agent erasure schedulers (bandits.erasure.numpy_ma) against
hand-computed traces, closed forms of the counters and the random-choice conventions."""

import math

import numpy as np
import pytest

from bandits.erasure import numpy_ma as P

T = 30
MEANS = np.array([0.5, 0.2, 0.8])   # gaps 0.3, 0.6, 0
GAPS = MEANS.max() - MEANS


def _run(name, means=MEANS, eps=(0.0,), horizon=T, algo=0.5, erase=0.5, init=None, **kw):
  m, k = len(eps), len(means)
  algo_u = np.full((horizon, max(k, m), 3), algo) if np.isscalar(algo) else algo
  return P.run_port(name, means, np.asarray(eps), horizon,
                    erase_u=np.full((horizon, m), erase), reward_v=np.zeros((horizon, m)),
                    algo_u=algo_u, initial_arm=[0] * m if init is None else init,
                    noise_std=0.0, **kw)


# One agent, eps = 0 (alpha = 1), T = 30: M_1 = 4 int(ceil(2 ln 30) / 4) = 4, then 16; nothing is
# eliminated after the first batch (radius 2 sqrt(ln 30 / 8) = 1.30 > 0.6) and the second batch
# (48 pulls) outlasts the horizon.
TRACES = {
    # phase 1 pops the highest unassigned arm; arm 0 is finished in phase 2
    "tpg": [2] * 4 + [1] * 4 + [0] * 4 + [2] * 16 + [1] * 2,
    "tpg_guarded": [2] * 4 + [1] * 4 + [0] * 4 + [2] * 16 + [1] * 2,
    # one stack holding all arms (T_i = 3 M_i), requested from the highest arm down
    "sp2_fb": [2] * 4 + [1] * 4 + [0] * 4 + [2] * 16 + [1] * 2,
    # the schedule lists an agent's arms in ascending order, whatever the shuffle
    "sp2": [0] * 4 + [1] * 4 + [2] * 4 + [0] * 16 + [1] * 2,
    # the loop runs while an arm is left to assign: arm 2 is requested (and credited) a 5th time
    # in the round the agent finds it done; the L-SAE radius 2 sqrt(ln 90 / 8) = 1.5 keeps all
    "lsae_hor": [0] * 4 + [1] * 4 + [2] * 5 + [0] * 16 + [1],
    "lsae_ver": [0] * 4 + [1] * 4 + [2] * 4 + [0] * 16 + [1] * 2,
    # n_m = ceil(2 ln 30) = 7 pulls per arm (radius sqrt(2 ln 30 / 7) = 0.99 keeps all), then
    # n_m = ceil(8 ln 7.5) = 17
    "vanilla_sae": [0] * 7 + [1] * 7 + [2] * 7 + [0] * 9,
}


@pytest.mark.parametrize("name", sorted(TRACES))
def test_one_agent_trace(name):
  res = _run(name)
  trace = np.array(TRACES[name])
  np.testing.assert_array_equal(res.played[:, 0], trace)
  np.testing.assert_allclose(res.regret, np.cumsum(GAPS[trace]), rtol=0, atol=1e-12)


def test_sp2_fb_ascending_pops_the_other_end():
  res = _run("sp2_fb", order="ascending")
  np.testing.assert_array_equal(res.played[:, 0], [0] * 4 + [1] * 4 + [2] * 4 + [0] * 16 + [1] * 2)


@pytest.mark.parametrize("u, first", [(0.0, [0, 1, 2]), (0.999, [2, 1, 0])])
def test_rrr_choice_follows_algo_u(u, first):
  # u = 0 picks the lowest arm still needing pulls, u -> 1 the highest
  res = _run("rrr", algo=u)
  want = [first[0]] * 4 + [first[1]] * 4 + [first[2]] * 4 + [first[0]] * 16 + [first[1]] * 2
  np.testing.assert_array_equal(res.played[:, 0], want)


def test_sgreedy_breaks_ties_by_algo_u():
  # more arms than agents: the least-pulled arm, ties to the smaller algo_u[t, arm, 1]
  algo = np.zeros((T, 3, 3))
  algo[:, :, 1] = [0.3, 0.2, 0.1]
  res = _run("sgreedy", algo=algo)
  np.testing.assert_array_equal(res.played[:, 0], [2, 1, 0] * 10)


def test_sgreedy_spreads_arms_over_agents_by_permutation():
  # 2 arms, 3 agents: chosen = [0, 1]; agent perm[i] requests chosen[i % 2]
  algo = np.zeros((T, 3, 3))
  algo[:, :, 2] = [0.9, 0.1, 0.5]   # perm = [1, 2, 0]
  res = _run("sgreedy", means=np.array([0.3, 0.7]), eps=(0.0, 0.0, 0.0), algo=algo)
  np.testing.assert_array_equal(res.played[0], [0, 0, 1])


def test_tpg_phase2_extra_agents_draw_choice():
  # 2 arms, 3 agents: no phase 1; replicate_list = [(0, 0), (1, 0)]; agent 2 draws
  # choice([0, 1], algo_u[0, 2, 0])
  for u, arm in ((0.2, 0), (0.7, 1)):
    algo = np.full((T, 3, 3), 0.5)
    algo[0, 2, 0] = u
    res = _run("tpg", means=np.array([0.3, 0.7]), eps=(0.0, 0.0, 0.0), algo=algo)
    np.testing.assert_array_equal(res.played[0], [0, 1, arm])


def test_lsae_ver_idle_agent_draws_choice():
  # 2 arms, 3 agents: agent 2 has no arm left and requests choice(active, algo_u[t, 2, 0])
  algo = np.full((T, 3, 3), 0.5)
  algo[:, 2, 0] = np.where(np.arange(T) % 2 == 0, 0.1, 0.9)
  res = _run("lsae_ver", means=np.array([0.3, 0.7]), eps=(0.0, 0.0, 0.0), algo=algo)
  np.testing.assert_array_equal(res.played[:4, 2], [0, 1, 0, 1])
  np.testing.assert_array_equal(res.played[:4, :2], [[0, 1]] * 4)


@pytest.mark.parametrize("name", P.NO_FEEDBACK)
def test_no_feedback_transmits_every_round(name):
  res = _run(name, eps=(0.3, 0.6), erase=0.4)
  np.testing.assert_array_equal(res.tx, 2 * np.arange(1, T + 1))
  np.testing.assert_array_equal(res.fb, 0)


@pytest.mark.parametrize("name", P.FEEDBACK)
def test_beacon_without_erasures_counts_changes(name):
  # eps = 0: every agent is sent its first request, then a request only when its arm changes
  res = _run(name, eps=(0.0, 0.0), feedback_mode="beacon", algo=0.3)
  changes = np.concatenate([[2], (res.played[1:] != res.played[:-1]).sum(axis=1)])
  np.testing.assert_array_equal(res.tx, np.cumsum(changes))
  np.testing.assert_array_equal(res.fb, res.tx)
  ack = _run(name, eps=(0.0, 0.0), feedback_mode="ack_success", algo=0.3)
  np.testing.assert_array_equal(ack.fb, res.tx)


@pytest.mark.parametrize("name", P.FEEDBACK)
def test_ack_success_counts_deliveries(name):
  # the learner requests until delivered: with erasures a played arm changes only on a
  # delivery, so changes <= acknowledged deliveries <= transmissions
  rng = np.random.default_rng(0)
  m, k = 3, 3
  eps = np.array([0.2, 0.5, 0.7])
  res = P.run_port(name, MEANS, eps, 200, erase_u=rng.random((200, m)),
                   reward_v=rng.uniform(-0.9, 0.9, (200, m)), algo_u=rng.random((200, k, 3)),
                   initial_arm=[0, 1, 2], feedback_mode="ack_success")
  changes = (res.played[1:] != res.played[:-1]).sum()
  assert changes <= res.fb[-1] <= res.tx[-1]


def test_channel_eps_interpolates_knots():
  knots = (np.array([10, 20]), np.array([[0.0, 0.5], [0.8, 0.1]]))
  eps = P.channel_eps([0.3, 0.3], 25, knots)
  np.testing.assert_allclose(eps[0], [0.0, 0.5])
  np.testing.assert_allclose(eps[10], [0.0, 0.5])
  np.testing.assert_allclose(eps[15], [0.4, 0.3])
  np.testing.assert_allclose(eps[24], [0.8, 0.1])
  np.testing.assert_allclose(P.channel_eps([0.3, 0.6], 3), [[0.3, 0.6]] * 3)


def test_knots_change_the_channel_not_the_learner():
  # nominal eps 0 (alpha = 1, the trace above) but the channel erases everything from t = 10:
  # the agent keeps playing arm 2, the arm it had at t = 9
  knots = (np.array([0, 9, 10]), np.array([[0.0], [0.0], [0.9]]))
  res = _run("lsae_hor", eps_knots=knots)
  np.testing.assert_array_equal(res.played[:10, 0], TRACES["lsae_hor"][:10])
  np.testing.assert_array_equal(res.played[10:, 0], 2)


def test_erased_agent_replays_initial_arm():
  # every request erased: each agent plays its initial arm throughout
  res = _run("sp2", eps=(0.5, 0.5), erase=0.1, init=[1, 2])
  np.testing.assert_array_equal(res.played, [[1, 2]] * T)
  np.testing.assert_allclose(res.regret[-1], T * (GAPS[1] + GAPS[2]))


def test_choice_and_permutation_conventions():
  arms = [3, 5, 7]
  assert [P.choice(arms, u) for u in (0.0, 0.3333, 1 / 3, 0.6667, 0.999999, 1.0)] == \
      [3, 3, 5, 7, 7, 7]
  np.testing.assert_array_equal(P.permutation([0.3, 0.1, 0.2]), [1, 2, 0])
  np.testing.assert_array_equal(P.permutation([0.5, 0.5, 0.1]), [2, 0, 1])  # stable on ties


def test_repetitions_and_rewards():
  np.testing.assert_array_equal(P.repetitions([0.0, 0.5, 0.9], 100),
                                [1, math.ceil(2 * math.log(100) / math.log(2)),
                                 math.ceil(2 * math.log(100) / math.log(1 / 0.9))])
  np.testing.assert_allclose(P.gaussian_noise([0.0, 0.6826894921370859]), [0.0, 1.0], atol=1e-12)
  # Bernoulli: reward 1 iff (v + 1) / 2 < mean; the pseudo-regret does not depend on it
  g = _run("sp2", reward_kind="bernoulli")
  np.testing.assert_array_equal(g.played[:, 0], TRACES["sp2"])


def test_rejects_bad_arguments():
  with pytest.raises(ValueError):
    _run("nope")
  with pytest.raises(ValueError):
    _run("tpg", feedback_mode="none")
  with pytest.raises(ValueError):
    _run("sp2_fb", order="sideways")
  with pytest.raises(ValueError):
    P.run_port("sp2", MEANS, [0.1], T, erase_u=np.zeros((T, 1)), reward_v=np.zeros((T, 1)),
               algo_u=np.zeros((T, 2, 3)), initial_arm=[0])
