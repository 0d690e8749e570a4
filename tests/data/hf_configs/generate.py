"""Writes the config.json files of this folder with transformers' own config classes.

Each model is a published checkpoint's config.json with its dimensions shrunk (hidden 64,
4 heads, 2 layers, vocabulary 256 (a byte-level tokenizer), sliding windows of a few tokens), everything else as
published: rope theta and scaling, biases, tied head, norm epsilon, dtype. Each is written
three times with ``save_pretrained``: by transformers 4.46 (``rope_theta`` + ``rope_scaling``,
``torch_dtype``: the layout of most published checkpoints), 4.57 (``dtype``, Qwen2's
``layer_types``) and 5 (``rope_parameters``):

    python -m venv v446 && v446/bin/pip install "transformers==4.46.3"   # *.tf446.json
    python -m venv v457 && v457/bin/pip install "transformers==4.57.6"   # *.tf457.json
    python -m venv v5 && v5/bin/pip install "transformers==5.24.0"       # *.tf5.json
    v446/bin/python generate.py && v457/bin/python generate.py && v5/bin/python generate.py

transformers needs no torch for its config classes.
"""

import json
import tempfile
from pathlib import Path

import transformers
from transformers import LlamaConfig, MistralConfig, Qwen2Config

SHRUNK = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
              num_attention_heads=4)

MODELS = {
    # meta-llama/Llama-2-7b-hf: MHA, theta 1e4, eps 1e-5, untied, float16
    "llama2": (LlamaConfig, dict(num_key_value_heads=4, rope_theta=10000.0, rms_norm_eps=1e-5,
                                 max_position_embeddings=4096, tie_word_embeddings=False), "float16"),
    # meta-llama/Llama-3.1-8B: GQA, theta 5e5, llama3 rope scaling, untied, bfloat16
    "llama31": (LlamaConfig, dict(num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5,
                                  max_position_embeddings=131072, tie_word_embeddings=False,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 8192}), "bfloat16"),
    # Qwen/Qwen2.5-0.5B: q/k/v biases (always, in Qwen2), tied head, theta 1e6, eps 1e-6
    "qwen25": (Qwen2Config, dict(num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
                                 max_position_embeddings=32768, tie_word_embeddings=True,
                                 use_sliding_window=False, sliding_window=32768,
                                 max_window_layers=24), "bfloat16"),
    # Qwen/Qwen2-1.5B with its sliding window switched on from layer 1 and shrunk to 5 tokens
    # (the published checkpoint ships it off): the per-layer attention pattern (layer_types)
    "qwen2_swa": (Qwen2Config, dict(num_key_value_heads=2, rope_theta=1000000.0,
                                    rms_norm_eps=1e-6, max_position_embeddings=32768,
                                    tie_word_embeddings=True, use_sliding_window=True,
                                    sliding_window=5, max_window_layers=1), "bfloat16"),
    # mistralai/Mistral-7B-v0.1: GQA, sliding window 4096 (shrunk to 5), theta 1e4, eps 1e-5
    "mistral": (MistralConfig, dict(num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
                                    max_position_embeddings=32768, tie_word_embeddings=False,
                                    sliding_window=5),
                "bfloat16"),
}


def main() -> None:
  out = Path(__file__).resolve().parent
  major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
  tag = f"tf{major}{minor}" if major == 4 else f"tf{major}"
  for name, (cls, kwargs, dtype) in MODELS.items():
    kw = dict(SHRUNK, **kwargs)
    kw["torch_dtype" if (major, minor) < (4, 56) else "dtype"] = dtype
    cfg = cls(**kw)
    with tempfile.TemporaryDirectory() as d:
      cfg.save_pretrained(d)
      text = (Path(d) / "config.json").read_text()
    json.loads(text)
    (out / f"{name}.{tag}.json").write_text(text)
    print(name, tag, transformers.__version__)


if __name__ == "__main__":
  main()
