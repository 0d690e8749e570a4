"""Bandit systems: shared core (bandits.core, bandits.policies) and bandits over erasure channels."""
