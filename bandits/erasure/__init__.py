"""Bandits over arm-erasure channels (arXiv 2406.18072, 2504.20894): environment, the
erasure-free policies and the algorithms built on them, batched simulation, numpy references,
theory curves."""
