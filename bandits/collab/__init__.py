"""Collaborative personalized linear bandits: environment, algorithms, batched simulation, numpy references."""
