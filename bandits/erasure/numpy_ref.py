"""Plain numpy L-SAE and feedback SAE (arXiv 2406.18072, 2504.20894), for checks and speed baselines.

Two forms of the same algorithms as :mod:`bandits.erasure.algorithms`:

* :func:`phased_loop_numpy`: one run, the straightforward per-round loop a
  researcher writes first (numpy arrays for the per-arm state, one generator
  call per random number, like the authors' code): the "per-round loop"
  baseline;
* :func:`phased_loop`: one run, a lean pure-Python loop (lists, randomness
  passed in as arrays): an independent float64 reference for the tests, which
  feed it the exact draws the JAX simulator used, and a faster loop baseline;
* :func:`phased_vectorized`: many runs at once, a loop over rounds with numpy
  arrays across seeds, phase bookkeeping only for the runs that need it (the
  "hand-vectorized numpy" baseline).

Randomness comes in as arrays (``erase_u`` uniform, ``noise`` standard normal,
shape (T,) or (S, T)) or is drawn from a numpy Generator chunk by chunk.
"""

from __future__ import annotations

import math

import numpy as np

LSAE = "lsae"
FB_SAE = "fb_sae"


def constants(name: str, n_arms: int, horizon: int, eps: float) -> tuple[int, float, int]:
  """(M_1, log term of the radius, rounds discarded per block) of ``name``."""
  if name == LSAE:
    alpha = 1 if eps == 0 else max(1, math.ceil(2 * math.log(horizon) / -math.log(eps)))
    return 4, math.log(n_arms * horizon), alpha - 1
  if name == FB_SAE:
    log_t = math.log(horizon)
    return max(4, 4 * math.floor(math.ceil(2 * log_t) / 4)), log_t, 0
  raise ValueError(f"no numpy reference for {name!r}")


def phased_loop(name: str, means, eps: float, horizon: int, *, erase_u, noise, noise_std=1.0,
                initial_arm: int = 0, radius_scale: float = 2.0, n_points: int | None = None,
                order: str = "ascending"):
  """One run of ``name`` ('lsae' or 'fb_sae'); a plain per-round Python loop.

  Arms are visited in index order; ``order="descending"`` visits them from the
  highest down (the run on the mirrored instance: the same regret). With
  feedback the learner knows ``initial_arm`` (what is played before any delivery).

  Returns:
    (final pseudo-regret, regret at each multiple of ceil(T / n_points) rounds
    and at T when ``n_points`` is given, else None).
  """
  if order == "descending":
    return phased_loop(name, list(means)[::-1], eps, horizon, erase_u=erase_u, noise=noise,
                       noise_std=noise_std, initial_arm=len(means) - 1 - initial_arm,
                       radius_scale=radius_scale, n_points=n_points)
  means = [float(m) for m in means]
  k = len(means)
  best = max(means)
  first, log_term, linger = constants(name, k, horizon, eps)
  feedback = name == FB_SAE
  active = [True] * k
  cnt, total, qhat = [0.0] * k, [0.0] * k, [0.0] * k
  pulls, m, arm, pos, known = 0.0, first, 0, 0, initial_arm
  last = initial_arm
  regret = 0.0
  every = math.ceil(horizon / n_points) if n_points else 0
  curve = []
  for t in range(horizon):
    requested = arm
    received = erase_u[t] >= eps
    played = requested if received else last
    last = played
    reward = means[played] + noise_std * noise[t]
    regret += best - means[played]
    if feedback:
      if received:
        known = requested
      if known >= 0 and active[known] and cnt[known] < m:
        cnt[known] += 1
        total[known] += reward
    else:
      if pos >= linger:
        cnt[requested] += 1
        total[requested] += reward
    pos += 1
    if cnt[arm] >= m:
      pending = [a for a in range(k) if active[a] and cnt[a] < m]
      if pending:
        arm, pos = pending[0], 0
      else:  # end of phase: update the means, eliminate
        for a in range(k):
          if active[a] and cnt[a] > 0:
            qhat[a] = (qhat[a] * pulls + total[a]) / (pulls + cnt[a])
        radius = radius_scale * math.sqrt(log_term / (2 * m))
        top = max(qhat[a] for a in range(k) if active[a])
        active = [active[a] and (top - qhat[a] <= radius or qhat[a] == top) for a in range(k)]
        pulls += m
        m = 1 << 30 if m >= 1 << 28 else 4 * m
        cnt, total = [0.0] * k, [0.0] * k
        arm, pos = active.index(True), 0
    if every and ((t + 1) % every == 0 or t + 1 == horizon):
      curve.append(regret)
  return regret, (np.array(curve) if every else None)


def phased_loop_numpy(name: str, means, eps: float, horizon: int, rng: np.random.Generator, *,
                      noise_std: float = 1.0, initial_arm: int = 0,
                      radius_scale: float = 2.0) -> float:
  """One run of ``name``; a per-round loop over numpy arrays, drawing as it goes.

  Returns:
    The final pseudo-regret.
  """
  means = np.asarray(means, np.float64)
  k = means.size
  gaps = means.max() - means
  first, log_term, linger = constants(name, k, horizon, eps)
  feedback = name == FB_SAE
  active = np.ones(k, bool)
  cnt, total, qhat = np.zeros(k), np.zeros(k), np.zeros(k)
  pulls, m, arm, pos, known, last, regret = 0.0, first, 0, 0, initial_arm, initial_arm, 0.0
  for _ in range(horizon):
    received = rng.random() >= eps
    played = arm if received else last
    last = played
    reward = means[played] + noise_std * rng.standard_normal()
    regret += gaps[played]
    if feedback:
      known = arm if received else known
      if known >= 0 and active[known] and cnt[known] < m:
        cnt[known] += 1
        total[known] += reward
    elif pos >= linger:
      cnt[arm] += 1
      total[arm] += reward
    pos += 1
    if cnt[arm] >= m:
      needs = active & (cnt < m)
      if needs.any():
        arm, pos = int(np.argmax(needs)), 0
      else:
        upd = active & (cnt > 0)
        qhat[upd] = (qhat[upd] * pulls + total[upd]) / (pulls + cnt[upd])
        radius = radius_scale * np.sqrt(log_term / (2 * m))
        active &= qhat[active].max() - qhat <= radius
        pulls += m
        m = min(4 * m, 1 << 30)
        cnt[:] = 0.0
        total[:] = 0.0
        arm, pos = int(np.argmax(active)), 0
  return float(regret)


def phased_vectorized(name: str, means: np.ndarray, eps: float, horizon: int,
                      rng: np.random.Generator, *, noise_std: float = 1.0, initial_arm: int = 0,
                      radius_scale: float = 2.0, chunk: int = 1000):
  """S runs of ``name`` at once: a loop over rounds, numpy arrays across runs.

  Args:
    means: (S, K) arm means, one instance per run.
    eps: erasure probability (the same for all runs).
    horizon: T.
    rng: numpy Generator; draws are made ``chunk`` rounds at a time.

  Returns:
    (S,) final pseudo-regret.
  """
  means = np.asarray(means, np.float64)
  s, k = means.shape
  rows = np.arange(s)
  gaps = means.max(axis=1, keepdims=True) - means
  first, log_term, linger = constants(name, k, horizon, eps)
  feedback = name == FB_SAE
  active = np.ones((s, k), bool)
  cnt, total, qhat = np.zeros((s, k)), np.zeros((s, k)), np.zeros((s, k))
  pulls = np.zeros(s)
  m = np.full(s, first, np.int64)
  arm = np.zeros(s, np.int64)
  pos = np.zeros(s, np.int64)
  known = np.full(s, initial_arm, np.int64)
  last = np.full(s, initial_arm, np.int64)
  regret = np.zeros(s)
  for start in range(0, horizon, chunk):
    n = min(chunk, horizon - start)
    erase_u = rng.random((n, s))
    noise = rng.standard_normal((n, s))
    for i in range(n):
      received = erase_u[i] >= eps
      played = np.where(received, arm, last)
      last = played
      reward = means[rows, played] + noise_std * noise[i]
      regret += gaps[rows, played]
      if feedback:
        known = np.where(received, arm, known)
        idx = np.maximum(known, 0)
        credit = (known >= 0) & active[rows, idx] & (cnt[rows, idx] < m)
        cnt[rows, idx] += credit
        total[rows, idx] += credit * reward
      else:
        credit = pos >= linger
        cnt[rows, arm] += credit
        total[rows, arm] += credit * reward
      pos += 1
      done = np.flatnonzero(cnt[rows, arm] >= m)
      if done.size:
        needs = active[done] & (cnt[done] < m[done, None])
        has = needs.any(axis=1)
        move = done[has]
        arm[move] = needs[has].argmax(axis=1)
        pos[move] = 0
        end = done[~has]
        if end.size:
          c, tot, q, pl = cnt[end], total[end], qhat[end], pulls[end, None]
          upd = active[end] & (c > 0)
          q = np.where(upd, (q * pl + tot) / np.maximum(pl + c, 1.0), q)
          radius = radius_scale * np.sqrt(log_term / (2.0 * m[end]))
          top = np.where(active[end], q, -np.inf).max(axis=1)
          active[end] &= (top[:, None] - q) <= radius[:, None]
          qhat[end] = q
          pulls[end] += m[end]
          m[end] = np.minimum(4 * m[end], 1 << 30)
          cnt[end] = 0.0
          total[end] = 0.0
          arm[end] = active[end].argmax(axis=1)
          pos[end] = 0
  return regret
