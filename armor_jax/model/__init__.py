"""The model stack: a Llama-family model in, every linear of every block pruned, a checkpoint out.

:mod:`~armor_jax.model.llama` (the decoder), :mod:`~armor_jax.model.hf_config` (Hugging
Face config layouts), :mod:`~armor_jax.model.loaders` (HF directories, hub ids, GGUF),
:mod:`~armor_jax.model.text` (texts, calibration and evaluation windows, perplexity),
:mod:`~armor_jax.model.pipeline` (block-by-block pruning with exact resume),
:mod:`~armor_jax.model.checkpoint` (the compressed 2:4 checkpoint).
"""
