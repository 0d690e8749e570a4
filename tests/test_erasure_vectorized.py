"""The hand-vectorized numpy TPG and SP2-Feedback (bandits.erasure.numpy_ma_vectorized) against the
per-run float64 ports of bandits.erasure.numpy_ma fed the same draws, and its Generator variant."""

import numpy as np
import pytest

from bandits.erasure import numpy_ma as P
from bandits.erasure import numpy_ma_vectorized as V

CASES = [("tpg", "descending"), ("tpg_guarded", "descending"), ("sp2_fb", "descending"),
         ("sp2_fb", "ascending")]


def _draws(rng, s, k, m, horizon):
  erase_u = rng.random((s, horizon, m))
  reward_v = rng.uniform(-1.0, 1.0, (s, horizon, m))
  algo_u = rng.random((s, horizon, max(k, m), 3))
  return erase_u, reward_v, algo_u


def _assert_matches_port(name, order, means, eps, horizon, erase_u, reward_v, algo_u, initial_arm,
                         feedback_mode="beacon"):
  res = V.run_vectorized(name, means, eps, horizon, erase_u=erase_u, reward_v=reward_v,
                         algo_u=algo_u, initial_arm=initial_arm, feedback_mode=feedback_mode,
                         order=order)
  s, m = initial_arm.shape
  assert res.played.shape == (s, horizon, m)
  for r in range(s):
    ref = P.run_port(name, means[r], eps[r] if eps.ndim == 2 else eps, horizon,
                     erase_u=erase_u[r], reward_v=reward_v[r], algo_u=algo_u[r],
                     initial_arm=initial_arm[r], feedback_mode=feedback_mode, order=order)
    np.testing.assert_array_equal(res.played[r], ref.played, err_msg=f"run {r}")
    assert res.tx[r] == ref.tx[-1] and res.fb[r] == ref.fb[-1], f"run {r}"
    np.testing.assert_allclose(res.regret[r], ref.regret[-1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name, order", CASES)
def test_matches_the_port_run_by_run(name, order):
  # three instances, one eps per agent shared by the runs; T = 2000 spans two chunks of draws
  s, k, m, horizon = 3, 8, 5, 2000
  rng = np.random.default_rng(11)
  means = rng.uniform(0.0, 1.0, (s, k))
  eps = rng.uniform(0.1, 0.6, m)
  initial_arm = rng.integers(0, k, (s, m))
  _assert_matches_port(name, order, means, eps, horizon, *_draws(rng, s, k, m, horizon), initial_arm)


@pytest.mark.parametrize("name", ["tpg", "tpg_guarded"])
def test_tpg_phase1_takeovers_match_the_port(name, monkeypatch):
  # Channels blacked out from the start make agents give up arms (alpha_m + M_i failed
  # attempts), so the unassigned arms run out before phase 1 ends and the agents that need an
  # arm take over the slowest one: a path that ordinary channels almost never reach. eps per run.
  k, horizon = 6, 400
  eps = np.array([[0.6, 0.01, 0.01], [0.9, 0.01, 0.01], [0.3, 0.9, 0.3]])
  blackout = np.array([[135, 25, 112], [22, 25, 87], [30, 0, 0]])
  initial_arm = np.array([[0, 5, 5], [1, 5, 5], [1, 3, 4]])
  s, m = eps.shape
  rng = np.random.default_rng(3)
  means = rng.uniform(0.0, 1.0, (s, k))
  erase_u, reward_v, algo_u = _draws(rng, s, k, m, horizon)
  erase_u[np.arange(horizon)[None, :, None] < blackout[:, None, :]] = 0.0
  seen = {False: 0, True: 0}
  takeovers = V._TPG._takeovers

  def counted(self, runs, cand, desc):
    before = self.taken.sum()
    takeovers(self, runs, cand, desc)
    seen[desc] += int(self.taken.sum() - before)

  monkeypatch.setattr(V._TPG, "_takeovers", counted)
  _assert_matches_port(name, "descending", means, eps, horizon, erase_u, reward_v, algo_u,
                       initial_arm, feedback_mode="ack_success")
  assert seen[False] > 0 and seen[True] > 0  # takeovers in phase 1 and in phase 2


@pytest.mark.parametrize("name, order", CASES)
def test_rng_variant_regret_is_sane(name, order):
  s, k, m, horizon = 4, 8, 5, 3000
  rng = np.random.default_rng(5)
  means = rng.uniform(0.0, 1.0, (s, k))
  eps = rng.uniform(0.1, 0.6, m)
  regret = V.run_vectorized_rng(name, means, eps, horizon, rng, initial_arm=np.zeros(m, int),
                                chunk=700, order=order)
  gaps = means.max(axis=1, keepdims=True) - means
  assert regret.shape == (s,)
  assert np.all(regret > 0)
  assert np.all(regret < horizon * m * gaps.mean(axis=1))  # below uniform play, so below the worst arm
