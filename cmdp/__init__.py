"""Constrained MDPs under a generative model (planned: average-reward and linear CMDPs). Empty for now."""
