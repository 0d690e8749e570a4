"""Small Hugging Face checkpoints for tests, and a float64 numpy decoder that reads config.json
itself.

``write_checkpoint`` writes a directory as transformers would: the given config.json verbatim,
random weights under Hugging Face tensor names (derived here from the JSON, not from the
loader), a byte-level tokenizer.json. ``np_logits`` is the reference: it reads the rope
theta and scaling, sliding windows, biases and head tying from the JSON in each of its
layouts (transformers 4 and 5) with its own code, and runs the decoder in float64.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

CONFIGS = Path(__file__).resolve().parent / "data" / "hf_configs"
MODELS = ("llama2", "llama31", "qwen25", "qwen2_swa", "mistral")
LAYOUTS = ("tf446", "tf457", "tf5")


def config_json(model: str, layout: str) -> dict:
  return json.loads((CONFIGS / f"{model}.{layout}.json").read_text())


def _dims(c: dict) -> dict:
  heads = c["num_attention_heads"]
  return dict(h=c["hidden_size"], f=c["intermediate_size"], n=c["num_hidden_layers"],
              heads=heads, kv=c.get("num_key_value_heads") or heads,
              hd=c.get("head_dim") or c["hidden_size"] // heads, vocab=c["vocab_size"])


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
  """Hugging Face tensor name -> shape for a Llama/Qwen2/Mistral config.json dict."""
  d = _dims(c)
  out = {"model.embed_tokens.weight": (d["vocab"], d["h"]), "model.norm.weight": (d["h"],)}
  if not c.get("tie_word_embeddings", False):
    out["lm_head.weight"] = (d["vocab"], d["h"])
  for i in range(d["n"]):
    p = f"model.layers.{i}."
    out[p + "input_layernorm.weight"] = (d["h"],)
    out[p + "post_attention_layernorm.weight"] = (d["h"],)
    for name, rows in (("q", d["heads"] * d["hd"]), ("k", d["kv"] * d["hd"]),
                       ("v", d["kv"] * d["hd"])):
      out[p + f"self_attn.{name}_proj.weight"] = (rows, d["h"])
      if c["model_type"] == "qwen2":
        out[p + f"self_attn.{name}_proj.bias"] = (rows,)
    out[p + "self_attn.o_proj.weight"] = (d["h"], d["heads"] * d["hd"])
    out[p + "mlp.gate_proj.weight"] = (d["f"], d["h"])
    out[p + "mlp.up_proj.weight"] = (d["f"], d["h"])
    out[p + "mlp.down_proj.weight"] = (d["h"], d["f"])
  return out


def random_weights(c: dict, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in tensor_shapes(c).items():
    if name.endswith("norm.weight"):
      out[name] = 1 + 0.2 * rng.standard_normal(shape)
    elif name.endswith(".bias"):
      out[name] = 0.3 * rng.standard_normal(shape)
    else:
      out[name] = rng.standard_normal(shape) / math.sqrt(shape[-1]) * 1.5
  return {k: v.astype(np.float32) for k, v in out.items()}


def byte_tokenizer():
  """A byte-level BPE tokenizer without merges: 256 tokens, one per byte."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return tok


def write_checkpoint(path: Path, c: dict, weights: dict[str, np.ndarray] | None = None,
                     tokenizer: bool = True, seed: int = 0) -> Path:
  from safetensors.numpy import save_file
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(c, indent=2))
  save_file(weights if weights is not None else random_weights(c, seed),
            str(path / "model.safetensors"))
  if tokenizer:
    byte_tokenizer().save(str(path / "tokenizer.json"))
  return path


def write_text(path: Path, n_words: int, seed: int = 0) -> Path:
  words = ("the king and queen of a far land spoke to their court about the sea the "
           "wind the night and what is to come when summer ends").split()
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, len(words), n_words)
  lines = [" ".join(words[j] for j in picks[i:i + 12]) + "." for i in range(0, n_words, 12)]
  path.write_text("\n".join(lines) + "\n")
  return path


# -- the reference decoder -------------------------------------------------------------------------

def _rope_settings(c: dict) -> tuple[float, dict]:
  """(theta, scaling dict) from either layout: transformers 4 keeps rope_theta and
  rope_scaling at the top level, transformers 5 both inside rope_parameters."""
  scaling = c.get("rope_parameters") or c.get("rope_scaling") or {}
  theta = scaling.get("rope_theta", c.get("rope_theta", 10000.0))
  return float(theta), scaling


def _inv_freq(c: dict) -> np.ndarray:
  d = _dims(c)
  theta, sc = _rope_settings(c)
  kind = sc.get("rope_type", sc.get("type", "default"))
  freqs = []
  for i in range(0, d["hd"], 2):
    f = theta ** (-i / d["hd"])
    if kind == "linear":
      f = f / sc["factor"]
    elif kind == "llama3":
      old = sc["original_max_position_embeddings"]
      lo, hi, factor = sc["low_freq_factor"], sc["high_freq_factor"], sc["factor"]
      wavelength = 2 * math.pi / f
      if wavelength > old / lo:          # long wavelengths: interpolated
        f = f / factor
      elif wavelength >= old / hi:       # the band between: a blend
        s = (old / wavelength - lo) / (hi - lo)
        f = (1 - s) * f / factor + s * f
    else:
      assert kind == "default", kind
    freqs.append(f)
  return np.array(freqs)


def _windows(c: dict) -> list[int | None]:
  n = c["num_hidden_layers"]
  if c["model_type"] == "mistral":
    return [c.get("sliding_window")] * n
  if c["model_type"] == "qwen2":
    types = c.get("layer_types") or [
        "sliding_attention" if c.get("use_sliding_window") and i >= c["max_window_layers"]
        else "full_attention" for i in range(n)]
    return [c["sliding_window"] if t == "sliding_attention" else None for t in types]
  return [None] * n


def np_logits(w: dict[str, np.ndarray], c: dict, tokens) -> np.ndarray:
  """(t, vocab) float64 logits of ``tokens`` for Hugging Face weights ``w`` and config ``c``."""
  d = _dims(c)
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  eps = c["rms_norm_eps"]
  rms = lambda x, g: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g
  inv = _inv_freq(c)
  t = len(tokens)
  ang = np.arange(t)[:, None] * inv[None, :]
  cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

  def rope(x):                      # (t, heads, hd), Hugging Face's rotate_half
    a, b = x[..., :d["hd"] // 2], x[..., d["hd"] // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

  x = w["model.embed_tokens.weight"][np.asarray(tokens)]
  for i, window in enumerate(_windows(c)):
    p = f"model.layers.{i}."
    lin = lambda name, z: z @ w[p + name + ".weight"].T + w.get(p + name + ".bias", 0.0)
    h = rms(x, w[p + "input_layernorm.weight"])
    q = rope(lin("self_attn.q_proj", h).reshape(t, d["heads"], d["hd"]))
    k = rope(lin("self_attn.k_proj", h).reshape(t, d["kv"], d["hd"]))
    v = lin("self_attn.v_proj", h).reshape(t, d["kv"], d["hd"])
    out = np.zeros((t, d["heads"], d["hd"]))
    for head in range(d["heads"]):
      kv = head // (d["heads"] // d["kv"])
      for qi in range(t):
        keys = [j for j in range(qi + 1) if window is None or qi - j < window]
        s = np.array([q[qi, head] @ k[j, kv] for j in keys]) / math.sqrt(d["hd"])
        pr = np.exp(s - s.max())
        out[qi, head] = (pr / pr.sum()) @ v[keys, kv]
    x = x + lin("self_attn.o_proj", out.reshape(t, -1))
    h = rms(x, w[p + "post_attention_layernorm.weight"])
    g, u = lin("mlp.gate_proj", h), lin("mlp.up_proj", h)
    x = x + lin("mlp.down_proj", g / (1 + np.exp(-g)) * u)
  x = rms(x, w["model.norm.weight"])
  head_w = w["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else w["lm_head.weight"]
  return x @ head_w.T


def armor_prune_workspace(d: Path) -> tuple[list[str], dict]:
  """A 3-block Llama-3.1-shaped checkpoint and two texts written into ``d``: (``armor_prune``
  arguments naming them, with small windows, batch and ARMOR blocks; an environment for its
  subprocesses, run from the repository, with a persistent compilation cache in ``d``)."""
  conf = dict(config_json("llama31", "tf5"), num_hidden_layers=3, intermediate_size=128)
  write_checkpoint(d / "ck", conf, seed=1)
  write_text(d / "cal.txt", 3000, seed=1)
  write_text(d / "ev.txt", 1500, seed=2)
  args = [f"model={d / 'ck'}", f"calib_text={d / 'cal.txt'}", f"eval_text={d / 'ev.txt'}",
          "n_calib=4", "calib_len=32", "eval_len=32", "eval_windows=4", "batch=2",
          "armor.block_size=16", "save_dtype=float32", "progress=false"]
  env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
             HYDRA_FULL_ERROR="0", JAX_COMPILATION_CACHE_DIR=str(d / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return args, env
