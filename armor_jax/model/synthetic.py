"""Random Llama-architecture checkpoints for memory and time benchmarks at the 1B scale.

:func:`write_llama` writes a Hugging Face checkpoint directory (``config.json``, sharded
``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``, a byte-level
``tokenizer.json``) holding random weights for any :class:`~armor_jax.model.llama.LlamaConfig`,
so the loaders, pruning and serving paths can be measured on a model of realistic size without
downloading one. The safetensors files are written by hand and streamed: every tensor is
generated and written in row chunks of at most ``_CHUNK_BYTES`` of float32, so peak memory
stays at a few chunks whatever the model size. Each tensor draws from its own generator
(``numpy.random.default_rng([seed, index])``, its rows in order), so the bytes depend on the
seed and the config only, never on the chunk size.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import ml_dtypes
import numpy as np

from armor_jax.model.llama import LlamaConfig
from armor_jax.model.loaders import _hf_names

# dtype name -> (safetensors dtype, numpy dtype)
DTYPES = {"bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16)),
          "float16": ("F16", np.dtype("<f2")), "float32": ("F32", np.dtype("<f4"))}
_CHUNK_BYTES = 64 * 2**20   # float32 bytes of one generated chunk of rows


def _fill(name: str) -> str:
  """How tensor ``name`` is initialised: normal (linears, embedding, head), ones (RMSNorm
  weights), zeros (biases)."""
  if name.endswith("norm.weight"):
    return "ones"
  return "zeros" if name.endswith(".bias") else "normal"


def _chunks(name: str, shape: tuple[int, ...], index: int, seed: int, std: float):
  """The float32 values of tensor ``name`` as consecutive row chunks."""
  rows, cols = shape[0], math.prod(shape[1:])
  fill = _fill(name)
  rng = np.random.default_rng([seed, index])
  step = max(1, _CHUNK_BYTES // (4 * cols))
  for r in range(0, rows, step):
    n = min(step, rows - r)
    if fill == "normal":
      x = rng.standard_normal((n, cols), np.float32)
      x *= np.float32(std)
      yield x
    else:
      yield np.full((n, cols), 1.0 if fill == "ones" else 0.0, np.float32)


def _shards(specs: list[tuple[str, tuple[int, ...]]], itemsize: int,
            shard_bytes: int) -> list[list[tuple[int, str, tuple[int, ...]]]]:
  """Consecutive tensors grouped into shards of at most ``shard_bytes`` (a tensor larger than
  that gets a shard of its own); each entry is (tensor index, name, shape)."""
  out: list[list] = [[]]
  size = 0
  for i, (name, shape) in enumerate(specs):
    nbytes = math.prod(shape) * itemsize
    if out[-1] and size + nbytes > shard_bytes:
      out.append([])
      size = 0
    out[-1].append((i, name, shape))
    size += nbytes
  return out


def _header(tensors, st_dtype: str, itemsize: int) -> bytes:
  """The safetensors prefix: 8-byte little-endian length, then the JSON header padded with
  spaces to a multiple of 8 bytes."""
  head, offset = {}, 0
  for _, name, shape in tensors:
    end = offset + math.prod(shape) * itemsize
    head[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, end]}
    offset = end
  head["__metadata__"] = {"format": "pt"}
  text = json.dumps(head, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  return len(text).to_bytes(8, "little") + text


def _write_atomic(path: Path, write) -> None:
  """``write(tmp)`` to ``.<name>.tmp`` beside ``path``, then rename it onto ``path``."""
  tmp = path.with_name(f".{path.name}.tmp")
  write(tmp)
  os.replace(tmp, path)


def byte_tokenizer():
  """A byte-level BPE ``tokenizers.Tokenizer`` without merges: token ``b`` is byte ``b``."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  # GPT-2's byte -> printable character map, which the ByteLevel pre-tokenizer applies
  printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
  rest = [b for b in range(256) if b not in printable]
  chars = dict(zip(printable + rest, printable + [256 + i for i in range(len(rest))]))
  tok = Tokenizer(models.BPE(vocab={chr(chars[b]): b for b in range(256)}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return tok


def write_llama(path: str | os.PathLike, cfg: LlamaConfig, seed: int = 0,
                dtype: str = "bfloat16", shard_bytes: int = 2 * 2**30,
                std: float = 0.02) -> Path:
  """Writes a random model of architecture ``cfg`` as a Hugging Face checkpoint directory.

  Linear weights, the embedding and the head are i.i.d. normal(0, ``std``); RMSNorm weights
  are ones, q/k/v biases (``cfg.attention_bias``) zeros. Tensor names, shapes and order are
  those :func:`armor_jax.model.loaders.load_hf` expects. Every file is written under a
  temporary name and renamed when complete.

  Args:
    path: the directory (created if needed; files of the same names are replaced).
    cfg: the architecture; its ``vocab_size`` must be at least 256 (the byte tokenizer's).
    seed: the same seed, config and dtype always give the same bytes.
    dtype: ``bfloat16``, ``float16`` or ``float32``.
    shard_bytes: the most tensor bytes in one safetensors file (a tensor is never split,
      so one larger than this gets a file of its own).
    std: standard deviation of the normal weights.

  Returns:
    The directory.

  Raises:
    ValueError: an unknown ``dtype``, a vocabulary under 256 or a non-positive ``shard_bytes``.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
  if cfg.vocab_size < 256:
    raise ValueError(f"vocab_size={cfg.vocab_size}: the byte tokenizer needs at least 256")
  if shard_bytes <= 0:
    raise ValueError(f"shard_bytes={shard_bytes} must be positive")
  st_dtype, np_dtype = DTYPES[dtype]
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  specs = [(name, shape) for name, (_, shape) in _hf_names(cfg).items()]
  shards = _shards(specs, np_dtype.itemsize, shard_bytes)
  weight_map = {}
  for k, tensors in enumerate(shards):
    fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"

    def write(tmp, tensors=tensors):
      with open(tmp, "wb") as f:
        f.write(_header(tensors, st_dtype, np_dtype.itemsize))
        for i, name, shape in tensors:
          for chunk in _chunks(name, shape, i, seed, std):
            f.write(chunk.astype(np_dtype).view(np.uint8).data)

    _write_atomic(path / fname, write)
    weight_map.update({name: fname for _, name, _ in tensors})
  total = sum(math.prod(shape) for _, shape in specs) * np_dtype.itemsize
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  conf = dict(cfg.to_hf(), torch_dtype=dtype)
  _write_atomic(path / "tokenizer.json", lambda t: byte_tokenizer().save(str(t)))
  _write_atomic(path / "config.json", lambda t: t.write_text(json.dumps(conf, indent=1)))
  _write_atomic(path / "model.safetensors.index.json",
                lambda t: t.write_text(json.dumps(index, indent=1)))
  return path
