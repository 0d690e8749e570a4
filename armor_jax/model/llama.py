"""A Llama-architecture decoder in Flax linen: Llama-2/3/3.1, Qwen2/2.5, Mistral, SmolLM2.

Pre-norm blocks of RMSNorm -> grouped-query attention with rotary embeddings
-> residual, RMSNorm -> SwiGLU MLP -> residual; a final RMSNorm and a head
tied to the token embedding or separate. Qwen2 adds biases to q, k and v.

Weights keep the Hugging Face layout: every linear is ``kernel`` of shape
(d_out, d_in) and computes ``x @ kernel.T`` (so 2:4 groups run along the
input dimension, the last axis, as the pruning code expects). The parameter
tree::

    embed/embedding (vocab, hidden)
    layers_<i>/input_norm/weight, layers_<i>/post_norm/weight
    layers_<i>/attn/{q,k,v,o}/kernel (+ {q,k,v}/bias for Qwen2)
    layers_<i>/mlp/{gate,up,down}/kernel
    norm/weight
    lm_head/kernel (only when the head is not tied)

A linear whose subtree holds a compressed pruned layer (the arrays of
:func:`linear_params`) instead of ``kernel`` runs through
:func:`armor_jax.kernels.armor_linear` (the Pallas kernels on GPU, the plain
JAX path on CPU), so a pruned model loaded from its compressed checkpoint
runs without ever forming the dense weights.

Rotary embeddings use the half-split convention of Hugging Face (``rotate_half``)
with the checkpoint's theta and, when present, its scaling (``linear`` or
Llama-3's ``llama3``). Mistral and Qwen2 blocks may attend within a sliding
window (:meth:`LlamaConfig.window`). :mod:`armor_jax.model.hf_config` reads every
transformers layout of ``config.json``. Everything computes in float32 unless ``dtype`` says
otherwise; softmax and norms always in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from armor_jax.model import hf_config
from armor_jax.solver import layer as layer_lib, sparsity

LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
_ATTN = ("q", "k", "v", "o")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary scaling of a checkpoint (``rope_scaling`` in its config.json)."""
  kind: str = "llama3"                 # "linear" | "llama3"
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture of a Llama-family checkpoint."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_eps: float = 1e-5
  tie_embeddings: bool = False
  attention_bias: bool = False
  max_position: int = 4096
  name: str = "llama"
  model_type: str | None = None        # llama | qwen2 | mistral; None: qwen2 iff attention_bias
  sliding_window: int | None = None
  layer_types: tuple[str, ...] | None = None   # per block: full_attention | sliding_attention

  def __post_init__(self):
    if self.model_type is None:
      object.__setattr__(self, "model_type", "qwen2" if self.attention_bias else "llama")
    if self.model_type not in hf_config.ARCHITECTURES:
      raise ValueError(f"model_type {self.model_type!r}; allowed: "
                       f"{', '.join(hf_config.ARCHITECTURES)}")
    if self.attention_bias != (self.model_type == "qwen2"):
      raise ValueError("q/k/v biases (attention_bias) go with model_type qwen2, and only there")
    if self.layer_types is not None:
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
      if len(self.layer_types) != self.num_layers or self.sliding_window is None:
        raise ValueError("layer_types needs one entry per layer and a sliding_window")
    elif self.sliding_window is not None:
      raise ValueError("sliding_window needs layer_types")
    if self.sliding_window is not None and self.model_type == "llama":
      raise ValueError("model_type llama has no sliding window (mistral, qwen2 do)")
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
              "num_kv_heads", "head_dim"):
      if int(getattr(self, f)) <= 0:
        raise ValueError(f"LlamaConfig.{f} must be positive, got {getattr(self, f)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

  def linear_shape(self, name: str) -> tuple[int, int]:
    """(d_out, d_in) of the block linear ``name``."""
    h, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
    return {"q": (self.num_heads * hd, h), "k": (self.num_kv_heads * hd, h),
            "v": (self.num_kv_heads * hd, h), "o": (h, self.num_heads * hd),
            "gate": (f, h), "up": (f, h), "down": (h, f)}[name]

  def block_params(self) -> int:
    return sum(math.prod(self.linear_shape(n)) for n in LINEARS) * self.num_layers

  def window(self, layer: int) -> int | None:
    """The sliding attention window of block ``layer`` (None: full causal attention)."""
    if self.layer_types is None or self.layer_types[layer] != "sliding_attention":
      return None
    return self.sliding_window

  # -- Hugging Face config.json (armor_jax.model.hf_config) ----------------------------------------
  @classmethod
  def from_hf(cls, d: Mapping[str, Any]) -> "LlamaConfig":
    """From a Hugging Face ``config.json`` dict, any transformers layout (see
    :mod:`armor_jax.model.hf_config`); a setting the decoder lacks raises ValueError naming it."""
    kw = hf_config.parse(d)
    if kw["rope_scaling"] is not None:
      kw["rope_scaling"] = RopeScaling(**kw["rope_scaling"])
    return cls(**kw)

  def to_hf(self) -> dict:
    """A Hugging Face ``config.json`` dict that :meth:`from_hf` maps back to this config."""
    return hf_config.dump(self)


def rope_frequencies(cfg: LlamaConfig) -> np.ndarray:
  """(head_dim / 2,) float64 inverse frequencies, scaled as the checkpoint says."""
  hd = cfg.head_dim
  inv = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
  rs = cfg.rope_scaling
  if rs is None:
    return inv
  if rs.kind == "linear":
    return inv / rs.factor
  low_wl = rs.original_max_position / rs.low_freq_factor
  high_wl = rs.original_max_position / rs.high_freq_factor
  wl = 2 * np.pi / inv
  smooth = (rs.original_max_position / wl - rs.low_freq_factor) / (
      rs.high_freq_factor - rs.low_freq_factor)
  mid = (1 - smooth) * inv / rs.factor + smooth * inv
  return np.where(wl > low_wl, inv / rs.factor, np.where(wl < high_wl, inv, mid))


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates (..., seq, heads, head_dim) by ``positions`` (seq,), half-split convention."""
  ang = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq, jnp.float32)[None, :]
  cos, sin = jnp.cos(ang)[:, None, :], jnp.sin(ang)[:, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


# -- compressed linears ----------------------------------------------------------------------

def linear_params(pl: layer_lib.PrunedLayer) -> dict:
  """The parameter subtree of a compressed pruned linear (replaces ``{"kernel": W}``)."""
  p = {"values": pl.core.values, "meta": pl.core.meta, "row_scale": pl.row_scale,
       "col_scale": pl.col_scale}
  if pl.a is not None:
    p["a"] = pl.a
  if pl.b is not None:
    p["b"] = pl.b
  return p


def pruned_from_params(p: Mapping[str, jax.Array], d_in: int) -> layer_lib.PrunedLayer:
  """Inverse of :func:`linear_params`."""
  return layer_lib.PrunedLayer(sparsity.Packed24(p["values"], p["meta"], d_in), p["row_scale"],
                               p["col_scale"], a=p.get("a"), b=p.get("b"))


def _compressed_apply(p, x, d_in, impl):
  from armor_jax import kernels  # pylint: disable=import-outside-toplevel  (kernels import layer)
  return kernels.armor_linear(x, pruned_from_params(p, d_in), impl=impl)


class Linear(nn.Module):
  """``y = x @ kernel.T (+ bias)``; kernel (d_out, d_in), or a compressed pruned layer
  (run by :func:`armor_jax.kernels.armor_linear` with ``impl``)."""
  d_out: int
  d_in: int
  use_bias: bool = False
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    if self.has_variable("params", "values"):      # compressed 2:4 (+ wrappers)
      p = self.variables["params"]
      y = _compressed_apply({k: v for k, v in p.items() if k != "bias"}, x, self.d_in, self.impl)
      y = y.astype(self.dtype)
    else:
      w = self.param("kernel", nn.initializers.normal(0.02), (self.d_out, self.d_in))
      y = jnp.einsum("...i,oi->...o", x.astype(self.dtype), w.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.d_out,)).astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.initializers.ones, (x.shape[-1],))
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * w.astype(jnp.float32)).astype(x.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array,
           window: int | None = None, q_chunk: int | None = None) -> jax.Array:
  """Causal grouped-query attention in float32: q (..., t, kv_heads, group, head_dim), k and
  v (..., t, kv_heads, head_dim) -> (..., t, kv_heads, group, head_dim). With ``q_chunk``,
  queries go ``q_chunk`` at a time (one ``lax.map`` step each), so the scores held at once
  are (..., heads, q_chunk, t) instead of (..., heads, t, t); each query's row is the same
  computation either way."""
  t, hd = q.shape[-4], q.shape[-1]
  k, v = k.astype(jnp.float32), v.astype(jnp.float32)

  def rows(qc, pos_q):
    s = jnp.einsum("...qkgd,...skd->...kgqs", qc.astype(jnp.float32), k) / np.sqrt(hd)
    causal = pos_q[:, None] >= positions[None, :]
    if window is not None:
      causal = causal & (pos_q[:, None] - positions[None, :] < window)
    pr = jax.nn.softmax(jnp.where(causal, s, -jnp.inf), axis=-1)
    return jnp.einsum("...kgqs,...skd->...qkgd", pr, v)

  if q_chunk is None or t <= q_chunk:
    return rows(q, positions)
  n = -(-t // q_chunk)
  pad = n * q_chunk - t                 # padded queries (position t, t+1, ...) are dropped
  qp = jnp.pad(q, [(0, 0)] * (q.ndim - 4) + [(0, pad), (0, 0), (0, 0), (0, 0)])
  pos = jnp.concatenate([positions, positions[-1] + 1 + jnp.arange(pad, dtype=positions.dtype)])
  qp = jnp.moveaxis(qp.reshape(*q.shape[:-4], n, q_chunk, *q.shape[-3:]), -5, 0)
  out = jax.lax.map(lambda a: rows(*a), (qp, pos.reshape(n, q_chunk)))
  out = jnp.moveaxis(out, 0, -5).reshape(*q.shape[:-4], n * q_chunk, *q.shape[-3:])
  return out[..., :t, :, :, :]


class Attention(nn.Module):
  """Grouped-query causal attention; with a ``window``, each position sees itself and the
  ``window - 1`` before it (transformers' sliding window). ``q_chunk`` bounds the scores
  held at once (see :func:`attend`)."""
  cfg: LlamaConfig
  dtype: Any = jnp.float32
  impl: str = "auto"
  q_chunk: int | None = None

  @nn.compact
  def __call__(self, x, positions, window: int | None = None):
    c = self.cfg
    hd, nh, nkv = c.head_dim, c.num_heads, c.num_kv_heads
    lin = lambda n, bias: Linear(*c.linear_shape(n), use_bias=bias, dtype=self.dtype,
                                 impl=self.impl, name=n)
    *lead, t, _ = x.shape
    q = lin("q", c.attention_bias)(x).reshape(*lead, t, nh, hd)
    k = lin("k", c.attention_bias)(x).reshape(*lead, t, nkv, hd)
    v = lin("v", c.attention_bias)(x).reshape(*lead, t, nkv, hd)
    inv = rope_frequencies(c)
    q, k = apply_rope(q, positions, inv), apply_rope(k, positions, inv)
    q = q.reshape(*lead, t, nkv, nh // nkv, hd)
    o = attend(q, k, v, positions, window, self.q_chunk).astype(self.dtype)
    o = o.reshape(*lead, t, nh * hd)
    self.sow("inputs", "o_input", o)
    return lin("o", False)(o)


class MLP(nn.Module):
  cfg: LlamaConfig
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    lin = lambda n: Linear(*self.cfg.linear_shape(n), dtype=self.dtype, impl=self.impl, name=n)
    z = jax.nn.silu(lin("gate")(x)) * lin("up")(x)
    self.sow("inputs", "down_input", z)
    return lin("down")(z)


class Block(nn.Module):
  """One decoder block. Sows the inputs of its linears into the ``inputs`` collection:
  ``qkv`` (shared by q, k, v), ``o``, ``gate_up`` (shared by gate, up) and ``down``."""
  cfg: LlamaConfig
  dtype: Any = jnp.float32
  impl: str = "auto"
  window: int | None = None
  q_chunk: int | None = None

  @nn.compact
  def __call__(self, x, positions):
    h = RMSNorm(self.cfg.rms_eps, name="input_norm")(x)
    self.sow("inputs", "qkv", h)
    x = x + Attention(self.cfg, self.dtype, self.impl, self.q_chunk, name="attn")(
        h, positions, self.window)
    h = RMSNorm(self.cfg.rms_eps, name="post_norm")(x)
    self.sow("inputs", "gate_up", h)
    return x + MLP(self.cfg, self.dtype, self.impl, name="mlp")(h)


# which sown input feeds which linear
INPUT_OF = {"q": "qkv", "k": "qkv", "v": "qkv", "o": "o", "gate": "gate_up", "up": "gate_up",
            "down": "down"}


def linear_path(name: str) -> tuple[str, str]:
  """(submodule, linear) of a block linear inside a block's parameter tree."""
  return ("attn" if name in _ATTN else "mlp", name)


class Llama(nn.Module):
  """The decoder; ``impl`` says how compressed linears run (see :mod:`armor_jax.kernels`)."""
  cfg: LlamaConfig
  dtype: Any = jnp.float32
  impl: str = "auto"

  def setup(self):
    c = self.cfg
    self.embed = nn.Embed(c.vocab_size, c.hidden_size, name="embed")
    self.layers = [Block(c, self.dtype, self.impl, c.window(i), name=f"layers_{i}")
                   for i in range(c.num_layers)]
    self.norm = RMSNorm(c.rms_eps, name="norm")
    if not c.tie_embeddings:
      self.lm_head = Linear(c.vocab_size, c.hidden_size, dtype=self.dtype, name="lm_head")

  def states(self, tokens):
    """tokens (..., seq) int -> the last block's output (..., seq, hidden), before the norm."""
    positions = jnp.arange(tokens.shape[-1])
    x = self.embed(tokens).astype(self.dtype)
    for blk in self.layers:
      x = blk(x, positions)
    return x

  def __call__(self, tokens):
    """tokens (..., seq) int -> logits (..., seq, vocab) float32."""
    x = self.norm(self.states(tokens))
    if self.cfg.tie_embeddings:
      return self.embed.attend(x.astype(jnp.float32))
    return self.lm_head(x).astype(jnp.float32)


# -- pure functions over the parameter tree ---------------------------------------------------

def init_params(cfg: LlamaConfig, key: jax.Array) -> dict:
  """Random parameters (tests and synthetic models)."""
  return Llama(cfg).init(key, jnp.zeros((1, 4), jnp.int32))["params"]


def forward(params: Mapping, tokens: jax.Array, cfg: LlamaConfig, impl: str = "auto") -> jax.Array:
  """Logits (..., seq, vocab) of ``tokens`` (..., seq); compressed linears run with ``impl``
  (``auto``: the Pallas kernels on GPU, the plain-JAX path elsewhere)."""
  return Llama(cfg, impl=impl).apply({"params": params}, tokens)


def states(params: Mapping, tokens: jax.Array, cfg: LlamaConfig, impl: str = "auto") -> jax.Array:
  """The last block's output (..., seq, hidden) for ``tokens`` (..., seq), before the final
  norm: :func:`head` of it is :func:`forward`'s logits, a slice of positions at a time."""
  return Llama(cfg, impl=impl).apply({"params": params}, tokens, method=Llama.states)


def embed(params: Mapping, tokens: jax.Array) -> jax.Array:
  """Token embeddings (..., seq, hidden) float32."""
  return jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(jnp.float32)


def block_forward(block_params: Mapping, x: jax.Array, cfg: LlamaConfig,
                  capture: bool = False, window: int | None = None, dtype: Any = jnp.float32,
                  q_chunk: int | None = None):
  """One block on hidden states x (..., seq, hidden), attending within ``window``
  (``cfg.window(i)`` for block i) with queries ``q_chunk`` at a time, its linears in
  ``dtype``; with ``capture`` also the inputs of its linears ({"qkv", "o", "gate_up",
  "down"} -> arrays)."""
  positions = jnp.arange(x.shape[-2])
  blk = Block(cfg, dtype=dtype, window=window, q_chunk=q_chunk)
  if not capture:
    return blk.apply({"params": block_params}, x, positions)
  y, col = blk.apply({"params": block_params}, x, positions, mutable=["inputs"])
  flat = {}
  for path, v in jax.tree_util.tree_flatten_with_path(col["inputs"])[0]:
    flat[path[-2].key.removesuffix("_input")] = v
  return y, flat


def head(params: Mapping, x: jax.Array, cfg: LlamaConfig) -> jax.Array:
  """Final norm and head: hidden states (..., seq, hidden) -> logits float32."""
  x = RMSNorm(cfg.rms_eps).apply({"params": params["norm"]}, x)
  if cfg.tie_embeddings:
    return jnp.einsum("...h,vh->...v", x.astype(jnp.float32),
                      params["embed"]["embedding"].astype(jnp.float32))
  return jnp.einsum("...h,vh->...v", x.astype(jnp.float32),
                    params["lm_head"]["kernel"].astype(jnp.float32))


def get_linear(params: Mapping, i: int, name: str):
  sub, lin = linear_path(name)
  return params[f"layers_{i}"][sub][lin]


def set_block_linear(block_params: Mapping, name: str, value: Mapping) -> dict:
  """A copy of one block's parameters with linear ``name``'s subtree replaced (bias kept)."""
  sub, lin = linear_path(name)
  blk = dict(block_params)
  blk[sub] = dict(blk[sub])
  new = dict(value)
  if "bias" in blk[sub][lin]:
    new["bias"] = blk[sub][lin]["bias"]
  blk[sub][lin] = new
  return blk


def set_linear(params: Mapping, i: int, name: str, value: Mapping) -> dict:
  """A copy of ``params`` with block ``i``'s linear ``name`` subtree replaced (bias kept)."""
  params = dict(params)
  params[f"layers_{i}"] = set_block_linear(params[f"layers_{i}"], name, value)
  return params


def dense_weight(p: Mapping, d_in: int) -> jax.Array:
  """The (d_out, d_in) weight of a linear subtree, dense or compressed."""
  if "kernel" in p:
    return p["kernel"]
  return pruned_from_params(p, d_in).dense()


def n_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


__all__ = ["LlamaConfig", "RopeScaling", "Llama", "Block", "LINEARS", "INPUT_OF", "forward",
           "embed", "block_forward", "head", "init_params", "linear_params",
           "pruned_from_params", "get_linear", "set_linear", "set_block_linear", "dense_weight"]
