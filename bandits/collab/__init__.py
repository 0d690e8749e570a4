"""Collaborative personalized linear bandits (arXiv 2506.15943): environment, algorithms,
batched simulation, numpy references, theory curves."""
