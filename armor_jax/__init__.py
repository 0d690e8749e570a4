"""ARMOR 2:4 pruning of LLMs (planned: layer solver, real models, Pallas kernels). Empty for now."""
