"""The regret rate of collaborative personalized linear bandits (arXiv 2506.15943).

Huang, Zhou, Yang & Diggavi give the optimal regret of m agents with parameters
``theta_i = mu + sigma z_i`` in d dimensions over n rounds (summed over agents), up to log
factors, as ``min{d m sqrt(n), d sqrt(m n) + sigma sqrt(d) m n}``: three regimes with
boundaries at ``n = d / (m sigma^2)`` (below it the agents act as one, ``d sqrt(m n)``)
and ``n = d / sigma^2`` (above it each learns alone, ``d m sqrt(n)``), the heterogeneity
term ``sigma sqrt(d) m n`` in between. Reconstructed from the abstract and the notes in
``shared/research/theory-papers.md`` (the full text was not reachable); sigma is in units
of the reward noise.
"""

import numpy as np


def rate(n, m, sigma, d):
  """min{d m sqrt(n), d sqrt(mn) + sigma sqrt(d) m n}: the three regimes in one formula."""
  n, m, sigma = np.asarray(n, float), np.asarray(m, float), np.asarray(sigma, float)
  return np.minimum(d * m * np.sqrt(n), d * np.sqrt(m * n) + sigma * np.sqrt(d) * m * n)


def rate_log(n, m, sigma, d):
  """:func:`rate` times ln n: OFUL's log factor (its regret is d sqrt(n) log n, local log-log
  slope 1/2 + 1/ln n, 0.62 at n = 4000). It adds about 1/ln n to every local slope; putting
  the log on the sqrt terms only would move the crossings by log^2 factors instead."""
  return rate(n, m, sigma, d) * np.log(np.asarray(n, float))


def boundaries(d, m, sigma, noise_std=1.0):
  """The regime boundaries (d/(m sigma^2), d/sigma^2) in units of the noise variance; inf
  when sigma = 0."""
  if sigma == 0:
    return float("inf"), float("inf")
  s2 = (sigma / noise_std) ** 2
  return d / (m * s2), d / s2
