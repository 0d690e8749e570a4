"""Plain numpy (float64) collaborative algorithm (arXiv 2506.15943), for checks and speed baselines.

The same algorithm as :func:`bandits.collab.algorithms.collab` (stage-1
design, empirical-Bayes refresh at n1, 2 n1, 4 n1, ..., Sherman-Morrison
updates, the two-start optimistic action on the ball), in two forms:

* :func:`collab_loop`: the per-round loop a researcher writes first: for
  each round, for each agent, numpy d-vectors and d x d matrices; the
  "per-round numpy loop" baseline of the benchmark, and an independent float64
  reference for the tests, which feed it the exact noise the JAX simulator saw;
* :func:`collab_vectorized`: a loop over rounds with numpy arrays across the m
  agents (einsum), the "hand-vectorized numpy" baseline.

The ball (``arms=None``) and a finite set ``arms`` (K, d) shared by the agents.
Randomness comes in as ``noise`` (n, m) standard normals.
"""

from __future__ import annotations

import math

import numpy as np


def _normalize(v):
  n = math.sqrt(float(v @ v))
  if n > 1e-20:
    return v / n
  e0 = np.zeros_like(v)
  e0[0] = 1.0
  return e0


def ucb_ball(theta, ainv, beta, n_iter=4):
  """One agent's optimistic action on the unit ball (same steps as the JAX version)."""
  def step(x):
    w = ainv @ x
    s = math.sqrt(max(float(x @ w), 1e-30))
    return _normalize(theta + beta / s * w), float(x @ theta) + beta * s
  v = ainv @ (ainv @ np.ones_like(theta))
  w = ainv @ v
  push = beta / math.sqrt(max(float(v @ w), 1e-30)) * w
  best_x, best_val = None, None
  for sign in (1.0, -1.0):
    x = _normalize(theta + sign * push)
    for _ in range(n_iter):
      x, _ = step(x)
    _, val = step(x)
    if best_x is None or val > best_val:
      best_x, best_val = x, val
  return best_x


def ucb_finite(theta, ainv, beta, arms):
  width = np.sqrt(np.maximum(np.einsum("kd,de,ke->k", arms, ainv, arms), 0.0))
  return arms[int(np.argmax(arms @ theta + beta * width))]


def chi2_radius(d, delta):
  big_l = math.log(1.0 / delta)
  return math.sqrt(d + 2.0 * math.sqrt(d * big_l) + 2.0 * big_l)


def is_epoch_start(t, n1):
  k = t // n1
  return t >= n1 and t % n1 == 0 and (k & (k - 1)) == 0


def refresh(gram, b, n_seen_first, *, noise_std, lam0, sigma_min, sigma2_prev,
            estimator="random_effects", n_scoring=4):
  """The empirical-Bayes step: (mu_hat, sigma2, lam, A^-1 per agent, theta per agent, logdet).

  gram (m, d, d), b (m, d); ``n_seen_first``: True at the end of stage 1.
  ``estimator='random_effects'`` (default): generalized least squares for mu
  and ``n_scoring`` REML Fisher-scoring steps for sigma^2 at every refresh,
  from sigma_min^2 at the end of stage 1 and from the previous estimate after;
  ``'pooled_moments'``: the first version (pooled ridge mean; moment estimator
  at the end of stage 1 only). Written with explicit inverses, as the math
  reads; the JAX version uses Gauss-Jordan on stacked matrices.
  """
  m, d = b.shape
  noise2 = noise_std ** 2
  eye = np.eye(d)
  if estimator == "pooled_moments":
    pinv = np.linalg.inv(lam0 * eye + gram.sum(axis=0))
    mu_hat = pinv @ b.sum(axis=0)
    sigma2 = sigma2_prev
    if n_seen_first:
      g = np.linalg.inv(lam0 * eye + gram)
      w = g @ gram
      resid = np.einsum("mde,me->md", g, b) - w @ mu_hat
      noise_tr = np.einsum("mde,med->m", w, g)
      num = np.sum(np.sum(resid ** 2, axis=1) - noise2 * noise_tr)
      den = max(np.sum(w * w), 1e-30)
      sigma2 = max(num / den, sigma_min ** 2)
    tau2 = noise2 * np.trace(pinv) / d + sigma2 / m
  else:
    def gls(s2):
      mi = np.linalg.inv(noise2 * eye + s2 * gram)          # (m, d, d)
      wi = mi @ gram
      finv = np.linalg.inv(wi.sum(axis=0) + lam0 / noise2 * eye)
      return mi, wi, finv, finv @ np.einsum("mde,me->d", mi, b)
    sigma2 = sigma_min ** 2 if n_seen_first else sigma2_prev
    for _ in range(n_scoring):
      mi, wi, finv, mu = gls(sigma2)
      mr = np.einsum("mde,me->md", mi, b - gram @ mu)
      w2 = wi @ wi
      score = np.sum(mr ** 2) - np.trace(wi, axis1=1, axis2=2).sum() + np.trace(finv @ w2.sum(0))
      info = max(np.trace(w2, axis1=1, axis2=2).sum(), 1e-30)
      sigma2 = max(sigma2 + score / info, sigma_min ** 2)
    _, _, finv, mu_hat = gls(sigma2)
    tau2 = np.trace(finv) / d
  lam = noise2 / (sigma2 + tau2)
  a = lam * eye + gram
  ainv = np.linalg.inv(a)
  theta = np.einsum("mde,me->md", ainv, lam * mu_hat + b)
  logdet = np.linalg.slogdet(a)[1] - d * math.log(lam)
  return mu_hat, sigma2, lam, ainv, theta, logdet


def collab_loop(theta_true, noise, *, n1, arms=None, noise_std=1.0, delta=0.01, lam0=1.0,
                sigma_min=1e-3, n_iter=4):
  """One run of the collaborative algorithm; a per-round, per-agent loop.

  Args:
    theta_true: (d, m) agent parameters.
    noise: (n, m) standard normal reward noise.
    n1: stage-1 length.
    arms: None (unit ball) or (K, d) a finite set shared by the agents.

  Returns:
    (n,) cumulative pseudo-regret summed over the agents.
  """
  d, m = theta_true.shape
  n = noise.shape[0]
  th_true = [theta_true[:, i].astype(np.float64) for i in range(m)]
  if arms is None:
    best = [math.sqrt(float(t @ t)) for t in th_true]
  else:
    best = [float(np.max(arms @ t)) for t in th_true]
  gram = np.zeros((m, d, d))
  b = np.zeros((m, d))
  ainv = [np.eye(d) / lam0 for _ in range(m)]
  theta = [np.zeros(d) for _ in range(m)]
  logdet = [0.0] * m
  sigma2 = 0.0
  chi = chi2_radius(d, delta)
  two_l = 2.0 * math.log(1.0 / delta)
  regret, curve = 0.0, np.zeros(n)
  for t in range(n):
    for i in range(m):
      if t < n1:
        if arms is None:
          x = np.zeros(d)
          x[(t + i) % d] = 1.0
        else:
          x = arms[(t + i) % arms.shape[0]]
      else:
        beta = noise_std * (math.sqrt(two_l + logdet[i]) + chi)
        x = ucb_ball(theta[i], ainv[i], beta, n_iter) if arms is None else \
            ucb_finite(theta[i], ainv[i], beta, arms)
      mean = float(x @ th_true[i])
      r = mean + noise_std * noise[t, i]
      regret += best[i] - mean
      if t >= n1:
        u = ainv[i] @ x
        q = float(x @ u)
        ainv[i] = ainv[i] - np.outer(u, u) / (1.0 + q)
        theta[i] = theta[i] + u * (r - float(x @ theta[i])) / (1.0 + q)
        logdet[i] += math.log1p(q)
      gram[i] += np.outer(x, x)
      b[i] += r * x
    if is_epoch_start(t + 1, n1):
      _, sigma2, _, a_all, th_all, ld_all = refresh(
          gram, b, t + 1 == n1, noise_std=noise_std, lam0=lam0, sigma_min=sigma_min,
          sigma2_prev=sigma2)
      ainv, theta, logdet = list(a_all), list(th_all), list(ld_all)
    curve[t] = regret
  return curve


def _ucb_ball_vec(theta, ainv, beta, n_iter=4):
  """The ball's optimistic action for m agents at once: theta (m, d), ainv (m, d, d), beta (m,)."""
  def normalize(v):
    nrm = np.linalg.norm(v, axis=1, keepdims=True)
    e0 = np.zeros_like(v)
    e0[:, 0] = 1.0
    return np.where(nrm > 1e-20, v / np.maximum(nrm, 1e-20), e0)

  def step(x):
    w = np.einsum("mde,me->md", ainv, x)
    s = np.sqrt(np.maximum(np.sum(x * w, axis=1), 1e-30))
    return normalize(theta + (beta / s)[:, None] * w), np.sum(x * theta, axis=1) + beta * s
  v = np.einsum("mde,me->md", ainv, np.einsum("mde,me->md", ainv, np.ones_like(theta)))
  w = np.einsum("mde,me->md", ainv, v)
  push = (beta / np.sqrt(np.maximum(np.sum(v * w, axis=1), 1e-30)))[:, None] * w
  best_x, best_val = None, None
  for sign in (1.0, -1.0):
    x = normalize(theta + sign * push)
    for _ in range(n_iter):
      x, _ = step(x)
    _, val = step(x)
    if best_x is None:
      best_x, best_val = x, val
    else:
      best_x = np.where((val > best_val)[:, None], x, best_x)
  return best_x


def collab_vectorized(theta_true, noise, *, n1, noise_std=1.0, delta=0.01, lam0=1.0,
                      sigma_min=1e-3, n_iter=4):
  """One run on the unit ball; a loop over rounds, numpy arrays across the m agents.

  Returns:
    (n,) cumulative pseudo-regret summed over the agents.
  """
  d, m = theta_true.shape
  n = noise.shape[0]
  th_true = theta_true.T.astype(np.float64)           # (m, d)
  best = np.linalg.norm(th_true, axis=1)
  gram = np.zeros((m, d, d))
  b = np.zeros((m, d))
  ainv = np.broadcast_to(np.eye(d) / lam0, (m, d, d)).copy()
  theta = np.zeros((m, d))
  logdet = np.zeros(m)
  sigma2 = 0.0
  chi = chi2_radius(d, delta)
  two_l = 2.0 * math.log(1.0 / delta)
  agents = np.arange(m)
  regret, curve = 0.0, np.zeros(n)
  for t in range(n):
    if t < n1:
      x = np.zeros((m, d))
      x[agents, (t + agents) % d] = 1.0
    else:
      beta = noise_std * (np.sqrt(two_l + logdet) + chi)
      x = _ucb_ball_vec(theta, ainv, beta, n_iter)
    mean = np.sum(x * th_true, axis=1)
    r = mean + noise_std * noise[t]
    regret += float(np.sum(best - mean))
    if t >= n1:
      u = np.einsum("mde,me->md", ainv, x)
      q = np.sum(x * u, axis=1)
      ainv -= np.einsum("md,me->mde", u, u) / (1.0 + q)[:, None, None]
      theta += u * ((r - np.sum(x * theta, axis=1)) / (1.0 + q))[:, None]
      logdet += np.log1p(q)
    gram += np.einsum("md,me->mde", x, x)
    b += r[:, None] * x
    if is_epoch_start(t + 1, n1):
      _, sigma2, _, ainv, theta, logdet = refresh(
          gram, b, t + 1 == n1, noise_std=noise_std, lam0=lam0, sigma_min=sigma_min,
          sigma2_prev=sigma2)
    curve[t] = regret
  return curve
