"""Experiments: the Hydra entry point (experiments.main), the harness, one module per experiment."""
