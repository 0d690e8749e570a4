"""Reading and writing Hugging Face ``config.json`` files of Llama-family checkpoints.

Three layouts are in use and read the same: transformers up to 4.55 (``rope_theta``
and ``rope_scaling`` at the top level, ``torch_dtype``; most published
checkpoints), 4.56 to 4.57 (``dtype``; Qwen2 adds ``layer_types``) and 5
(``rope_parameters`` holding the theta and the scaling). Supported architectures
are ``llama`` (Llama-2/3/3.1, SmolLM2), ``qwen2`` (Qwen2/2.5: q/k/v biases) and
``mistral`` (sliding-window attention). Where a key is absent, the default of
transformers' own config class for that ``model_type`` applies, as when
transformers reads the file; a setting this decoder does not implement (an
unknown rope type, partial rotary, an MLP or output-projection bias, an
activation other than SiLU, a quantized checkpoint, another architecture) is a
:class:`ValueError` naming the key and what is supported, never a silent default.

Sliding windows follow transformers 4.57 and later: Mistral's applies to every
layer; Qwen2's to the layers ``layer_types`` marks ``sliding_attention`` (written
from 4.57 on), else, for older files, to layers ``>= max_window_layers`` when
``use_sliding_window`` is true. (4.46's eager attention applied a Qwen2 window to
every layer; published Qwen2/2.5 checkpoints ship it switched off.)
"""

from __future__ import annotations

from typing import Any, Mapping

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "mistral": "MistralForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")

# defaults of transformers' config classes (LlamaConfig, Qwen2Config, MistralConfig) for the
# keys a published config.json may leave out
_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768,
              "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28},
    "mistral": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 131072,
                "sliding_window": 4096, "num_key_value_heads": 8},
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")


def _rope(d: Mapping[str, Any], layer_types) -> tuple[float, dict | None]:
  """(theta, scaling dict or None) from either layout."""
  params = d.get("rope_scaling") or d.get("rope_parameters") or {}
  if not isinstance(params, Mapping):
    raise ValueError(f"rope_parameters must be a mapping, got {params!r}")
  nested = [k for k in params if layer_types and k in layer_types]
  if nested:   # transformers 5: one rope dict per layer type
    first = dict(params[nested[0]] or {})
    if any(dict(params[k] or {}) != first for k in nested[1:]):
      raise ValueError(f"rope_parameters differ between layer types {nested}: per-layer-type "
                       "rotary embeddings are not supported")
    params = first
  prf = params.get("partial_rotary_factor", d.get("partial_rotary_factor"))
  if prf not in (None, 1, 1.0):
    raise ValueError(f"partial_rotary_factor {prf!r} is not supported (rotary on the whole head)")
  theta = float(params.get("rope_theta", d.get("rope_theta", _DEFAULTS[d["model_type"]][
      "rope_theta"])))
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise ValueError(f"rope type {kind!r} is not supported ({', '.join(ROPE_TYPES)})")
  if kind == "default":
    return theta, None
  if "factor" not in params:
    raise ValueError(f"rope type {kind!r} needs a 'factor'")
  scaling = {"kind": kind, "factor": float(params["factor"])}
  if kind == "llama3":
    for k in ("low_freq_factor", "high_freq_factor"):
      if k not in params:
        raise ValueError(f"rope type 'llama3' needs {k!r}")
    scaling.update(low_freq_factor=float(params["low_freq_factor"]),
                   high_freq_factor=float(params["high_freq_factor"]),
                   original_max_position=int(params.get(
                       "original_max_position_embeddings",
                       d.get("max_position_embeddings",
                             _DEFAULTS[d["model_type"]]["max_position_embeddings"]))))
  return theta, scaling


def _layer_types(d: Mapping[str, Any], mt: str, n_layers: int) -> tuple[tuple[str, ...] | None,
                                                                       int | None]:
  """(per-layer attention types, or None when every layer is full; the window)."""
  defaults = _DEFAULTS[mt]
  if mt == "llama":
    return None, None
  window = d.get("sliding_window", defaults["sliding_window"])
  types = d.get("layer_types") if mt == "qwen2" else None   # transformers' Mistral ignores it
  if types is not None:
    types = tuple(types)
    bad = [t for t in types if t not in LAYER_TYPES]
    if bad:
      raise ValueError(f"layer_types entry {bad[0]!r} is not supported ({', '.join(LAYER_TYPES)})")
    if len(types) != n_layers:
      raise ValueError(f"layer_types has {len(types)} entries for {n_layers} layers")
  elif mt == "mistral":
    types = None if window is None else ("sliding_attention",) * n_layers
  elif d.get("use_sliding_window", defaults["use_sliding_window"]):
    first = int(d.get("max_window_layers", defaults["max_window_layers"]))
    types = tuple("sliding_attention" if i >= first else "full_attention"
                  for i in range(n_layers))
  if types is None or "sliding_attention" not in types:
    return None, None
  if window is None or int(window) <= 0:
    raise ValueError(f"layer_types asks for sliding attention but sliding_window is {window!r}")
  return types, int(window)


def parse(d: Mapping[str, Any]) -> dict[str, Any]:
  """The keyword arguments of :class:`armor_jax.model.llama.LlamaConfig` for a config.json dict."""
  mt = d.get("model_type")
  if mt not in ARCHITECTURES:
    raise ValueError(f"model_type {mt!r} is not supported ({', '.join(ARCHITECTURES)})")
  archs = d.get("architectures") or [ARCHITECTURES[mt]]
  other = [a for a in archs if a != ARCHITECTURES[mt]]
  if other:
    raise ValueError(f"architectures {other} are not supported for model_type {mt!r} "
                     f"(only {ARCHITECTURES[mt]})")
  missing = [k for k in _REQUIRED if d.get(k) is None]
  if missing:
    raise ValueError(f"config.json lacks the key {missing[0]!r}")
  if d.get("quantization_config"):
    method = d["quantization_config"].get("quant_method", "?")
    raise ValueError(f"quantization_config ({method}): quantized checkpoints are not supported")
  act = d.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise ValueError(f"hidden_act {act!r} is not supported (silu)")
  if mt == "llama" and d.get("mlp_bias"):
    raise ValueError("mlp_bias true is not supported (MLP without biases)")
  if mt == "llama" and d.get("attention_bias"):
    raise ValueError("attention_bias true is not supported for llama (it adds an o_proj bias); "
                     "q/k/v biases alone are model_type qwen2")
  defaults = _DEFAULTS[mt]
  heads = int(d["num_attention_heads"])
  n_layers = int(d["num_hidden_layers"])
  layer_types, window = _layer_types(d, mt, n_layers)
  theta, scaling = _rope(d, layer_types or d.get("layer_types"))
  kv = d.get("num_key_value_heads", defaults.get("num_key_value_heads"))
  return dict(
      vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
      intermediate_size=int(d["intermediate_size"]), num_layers=n_layers, num_heads=heads,
      num_kv_heads=int(kv or heads), head_dim=int(d.get("head_dim") or
                                                   int(d["hidden_size"]) // heads),
      rope_theta=theta, rope_scaling=scaling,
      rms_eps=float(d.get("rms_norm_eps", defaults["rms_norm_eps"])),
      tie_embeddings=bool(d.get("tie_word_embeddings", False)),
      attention_bias=mt == "qwen2",
      max_position=int(d.get("max_position_embeddings", defaults["max_position_embeddings"])),
      model_type=mt, sliding_window=window, layer_types=layer_types,
      name=str(d.get("_name_or_path") or mt))


def dump(cfg) -> dict[str, Any]:
  """A config.json dict in transformers 4.46's layout (which every later version reads) that
  :func:`parse` maps back to ``cfg``."""
  d = {"architectures": [ARCHITECTURES[cfg.model_type]], "model_type": cfg.model_type,
       "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
       "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
       "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
       "head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta, "rope_scaling": None,
       "rms_norm_eps": cfg.rms_eps, "tie_word_embeddings": cfg.tie_embeddings,
       "max_position_embeddings": cfg.max_position, "hidden_act": "silu",
       "_name_or_path": cfg.name}
  if cfg.model_type == "llama":
    d.update(attention_bias=False, mlp_bias=False)
  if cfg.rope_scaling is not None:
    rs = cfg.rope_scaling
    d["rope_scaling"] = {"rope_type": rs.kind, "factor": rs.factor}
    if rs.kind == "llama3":
      d["rope_scaling"].update(low_freq_factor=rs.low_freq_factor,
                               high_freq_factor=rs.high_freq_factor,
                               original_max_position_embeddings=rs.original_max_position)
  if cfg.model_type == "mistral":
    d["sliding_window"] = cfg.sliding_window
  elif cfg.model_type == "qwen2":
    types = cfg.layer_types or ("full_attention",) * cfg.num_layers
    n_full = types.index("sliding_attention") if "sliding_attention" in types else len(types)
    d.update(use_sliding_window=cfg.sliding_window is not None,
             sliding_window=cfg.sliding_window, max_window_layers=n_full,
             layer_types=list(types))
  return d
