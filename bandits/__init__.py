"""Bandit systems: the shared core (bandits.core: interfaces, the batched run loop, layout
helpers), bandits over erasure channels (bandits.erasure) and collaborative personalized
linear bandits (bandits.collab); each system holds its environment, algorithms, simulator,
numpy reference and theory curves."""
