"""What the theory of bandits over erasure channels predicts (arXiv 2406.18072, 2504.20894).

Hanna, Yang & Fragouli show that over an erasure channel with probability eps no algorithm
has regret below the order of ``sqrt(K T) + K / (1 - eps)``: the first term is the
erasure-free minimax regret, the second the rounds it takes until every one of the K arms
has been delivered once. Their Lingering SAE (and SAE with feedback) match it up to log
factors. Constants are not stated; the curve is drawn with constants 1.
"""

import numpy as np


def lower_bound(n_arms, horizon, eps):
  """The order of the lower bound, ``sqrt(K T) + K / (1 - eps)`` (constants 1)."""
  return np.sqrt(np.asarray(n_arms) * horizon) + np.asarray(n_arms) / (1.0 - np.asarray(eps))
