"""Bandits over arm-erasure channels: environment, algorithms, batched simulation, numpy references."""
