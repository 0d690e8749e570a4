"""The compressed 2:4 checkpoint of a pruned model, and its loader.

A directory with

* ``model.safetensors`` (or, written block by block by :func:`save_streamed`,
  one shard per block and one for the embedding, norm and head, listed in
  ``model.safetensors.index.json``): every tensor of the parameter tree under its path
  (``layers_3/mlp/gate/values``). A pruned linear is stored as ``values``
  (d_out, d_in/2) kept values, ``meta`` (d_out, d_in/8) uint8 2-bit in-group
  positions, ``row_scale`` / ``col_scale`` and, for ARMOR, the block-diagonal
  wrappers ``a`` (d_out/b, b, b) and ``b`` (d_in/b, b, b). Floating tensors
  are written in one dtype (bfloat16 by default), ``meta`` as uint8;
* ``config.json``: the architecture (Hugging Face keys) plus an ``armor_jax``
  entry (format version, method, value dtype);
* ``tokenizer.json`` and ``tokenizer_config.json`` (its special tokens) when the model has
  a tokenizer.

:func:`load` restores the parameter tree exactly (bit for bit, in the saved
dtype); the model runs from it directly (compressed linears go through
:func:`armor_jax.kernels.armor_linear`) or after :func:`densify`.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from armor_jax.model import llama
from armor_jax.model.llama import LINEARS, LlamaConfig
from armor_jax.model.loaders import CheckpointError, Model, Tokenizer, load_tokenizer_json

FORMAT = "armor_jax.compressed24/1"
INDEX = "model.safetensors.index.json"
DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, jax.Array]:
  """A nested mapping of arrays -> {"a/b/c": array}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def unflatten(flat: Mapping[str, jax.Array]) -> dict:
  """Inverse of :func:`flatten`."""
  out: dict = {}
  for k, v in flat.items():
    node = out
    *head, last = k.split("/")
    for h in head:
      node = node.setdefault(h, {})
    node[last] = v
  return out


def cast(params: Mapping, dtype: str) -> dict:
  """Floating leaves in ``dtype`` (bfloat16, float16, float32); integer leaves unchanged."""
  dt = DTYPES[dtype]
  return jax.tree_util.tree_map(
      lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def save(path: str | os.PathLike, cfg: LlamaConfig, params: Mapping,
         tokenizer: Tokenizer | None = None, dtype: str = "bfloat16", method: str = "") -> int:
  """Writes the compressed checkpoint; returns the bytes of its weights file (the tokenizer and
  config files, which a dense checkpoint has too, are not counted)."""
  from safetensors.flax import save_file
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  flat = {k: jnp.asarray(v) for k, v in flatten(cast(params, dtype)).items()}
  atomic_write(path / "model.safetensors", lambda t: save_file(flat, str(t)))
  (path / INDEX).unlink(missing_ok=True)                    # a sharded save before
  _write_config(path, cfg, tokenizer, dtype, method)
  return (path / "model.safetensors").stat().st_size


def save_streamed(path: str | os.PathLike, cfg: LlamaConfig, block: Callable[[int], Mapping],
                  outer: Mapping, tokenizer: Tokenizer | None = None, dtype: str = "bfloat16",
                  method: str = "") -> int:
  """Writes the compressed checkpoint one block at a time: ``block(i)`` (compressed or dense
  linears) to its own shard, the embedding, norm and head to another, then the index and
  config.json; returns the bytes of the weight files. Only one block is held at a time."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  weight_map, total = {}, 0
  parts = [(f"model-block-{i:05d}.safetensors", lambda i=i: {f"layers_{i}": block(i)})
           for i in range(cfg.num_layers)] + [("model-outer.safetensors", lambda: dict(outer))]
  for name, tree in parts:
    flat = {k: np.asarray(v) for k, v in flatten(cast(tree(), dtype)).items()}
    total += write_safetensors(path / name, flat)
    weight_map.update({k: name for k in flat})
  index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
  atomic_write(path / INDEX, lambda t: t.write_text(json.dumps(index, indent=1)))
  (path / "model.safetensors").unlink(missing_ok=True)      # a single-file save before
  _write_config(path, cfg, tokenizer, dtype, method)
  return total


def _write_config(path: Path, cfg: LlamaConfig, tokenizer, dtype: str, method: str) -> None:
  conf = cfg.to_hf()
  conf["armor_jax"] = {"format": FORMAT, "method": method, "dtype": dtype}
  if tokenizer is not None:
    atomic_write(path / "tokenizer.json", tokenizer.save)
    atomic_write(path / "tokenizer_config.json", tokenizer.save_config)
  atomic_write(path / "config.json", lambda t: t.write_text(json.dumps(conf, indent=1)))


def atomic_write(path: Path, write) -> None:
  """``write(tmp)``, fsync, then an atomic rename onto ``path``: a kill leaves the old file or
  the new one, never a torn one. The temporary ``.<name>.<host>-<pid>.tmp`` beside it is this
  process's own, so processes sharing a directory never write the same temporary."""
  tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
  write(tmp)
  with open(tmp, "rb+") as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)


def clear_temporaries(path: Path) -> None:
  """Removes the temporaries :func:`atomic_write` left in ``path`` when a process of this host
  was killed mid-write (those of live processes, or of other hosts, stay)."""
  host = socket.gethostname()
  for tmp in path.glob(".*.tmp"):
    who = tmp.name.rsplit(".", 2)[-2]
    h, _, pid = who.rpartition("-")
    if h == host and pid.isdigit() and not _alive(int(pid)):
      tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def write_safetensors(path: Path, flat: Mapping[str, np.ndarray]) -> int:
  """Writes arrays (any float dtype, bfloat16 included, or integer) as a safetensors file,
  atomically; returns its size in bytes."""
  from safetensors.flax import save_file
  atomic_write(path, lambda t: save_file({k: jnp.asarray(v) for k, v in flat.items()}, str(t)))
  return path.stat().st_size


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """Every tensor of a safetensors file as a numpy array in its stored dtype."""
  from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
  header = loaders.safetensors_header(path)
  get = loaders.tensor_reader({k: (path, shape, dt) for k, (shape, dt) in header.items()})
  return {k: get(k) for k in header}


def dense_bytes(cfg: LlamaConfig, dtype: str = "bfloat16") -> int:
  """Bytes of the dense model's tensors in ``dtype`` (what a dense safetensors file holds,
  less its header)."""
  n = (cfg.block_params() + cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
       + cfg.hidden_size * (2 * cfg.num_layers + 1))
  if cfg.attention_bias:
    n += cfg.num_layers * (cfg.linear_shape("q")[0] + 2 * cfg.linear_shape("k")[0])
  return n * jnp.dtype(DTYPES[dtype]).itemsize


def load(path: str | os.PathLike) -> Model:
  """The model saved by :func:`save`, its compressed linears as saved."""
  from safetensors.flax import load_file
  path = Path(path)
  conf_path = path / "config.json"
  if not conf_path.exists():
    raise CheckpointError(f"{conf_path}: file not found")
  try:
    conf = json.loads(conf_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{conf_path}: not valid JSON ({e})") from None
  if conf.get("armor_jax", {}).get("format") != FORMAT:
    raise CheckpointError(f"{conf_path}: not a compressed armor_jax checkpoint "
                          f"(format {conf.get('armor_jax', {}).get('format')!r}, "
                          f"expected {FORMAT!r})")
  cfg = LlamaConfig.from_hf(conf)
  st = path / "model.safetensors"
  files = [st]
  if (path / INDEX).exists():
    try:
      files = [path / f for f in sorted(set(json.loads((path / INDEX).read_text())["weight_map"]
                                            .values()))]
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
      raise CheckpointError(f"{path / INDEX}: not a valid index ({e})") from None
  flat = {}
  for st in files:
    try:
      flat.update(load_file(str(st)))
    except FileNotFoundError:
      raise CheckpointError(f"{st}: file not found") from None
    except Exception as e:
      raise CheckpointError(f"{st}: corrupt or truncated ({e})") from None
  params = unflatten(flat)
  for i in range(cfg.num_layers):
    for name in LINEARS:
      try:
        p = llama.get_linear(params, i, name)
      except KeyError:
        raise CheckpointError(f"{st}: block {i} linear {name!r} is missing") from None
      d_out, d_in = cfg.linear_shape(name)
      if "values" in p:
        ok = p["values"].shape == (d_out, d_in // 2) and p["meta"].shape == (d_out, -(-d_in // 8))
      else:
        ok = "kernel" in p and p["kernel"].shape == (d_out, d_in)
      if not ok:
        raise CheckpointError(f"{st}: block {i} linear {name!r} does not match the config's "
                              f"shape ({d_out}, {d_in})")
  tok_path = path / "tokenizer.json"
  tok = load_tokenizer_json(tok_path) if tok_path.exists() else None
  return Model(cfg, params, tok, str(path))


class Reader:
  """A compressed checkpoint read a block at a time (numpy arrays in the saved dtype), for
  evaluation that holds one block: ``block(i)``, ``outer()``; ``cfg`` and ``tokenizer``."""

  def __init__(self, path: str | os.PathLike):
    from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
    self.path = Path(path)
    conf = json.loads((self.path / "config.json").read_text())
    self.cfg = LlamaConfig.from_hf(conf)
    tok = self.path / "tokenizer.json"
    self.tokenizer = load_tokenizer_json(tok) if tok.exists() else None
    files = ([self.path / f for f in set(json.loads((self.path / INDEX).read_text())
                                          ["weight_map"].values())]
             if (self.path / INDEX).exists() else [self.path / "model.safetensors"])
    where = {}
    for f in files:
      where.update({k: (f, shape, dt) for k, (shape, dt) in loaders.safetensors_header(f).items()})
    self._where, self._get = where, loaders.tensor_reader(where)

  def _tree(self, keep) -> dict:
    return unflatten({k: self._get(k) for k in self._where if keep(k.split("/", 1)[0])})

  def block(self, i: int) -> dict:
    return self._tree(lambda top: top == f"layers_{i}")[f"layers_{i}"]

  def outer(self) -> Mapping:
    from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
    tops = tuple(sorted({k.split("/", 1)[0] for k in self._where if not k.startswith("layers_")}))
    return loaders.LazyParts(tops, lambda top: self._tree(lambda t: t == top)[top])


def is_compressed(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a directory whose config.json names this format."""
  try:
    conf = json.loads((Path(path) / "config.json").read_text())
    return conf.get("armor_jax", {}).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def open_source(path: str | os.PathLike):
  """A compressed checkpoint as a :class:`~armor_jax.model.loaders.Source` of a dense model:
  each compressed linear is reconstructed to a float32 ``kernel`` when its block is read,
  everything else is read as saved. Any experiment that reads a model reads this one."""
  from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
  reader = Reader(path)
  cfg, names = reader.cfg, loaders._hf_names(reader.cfg)   # pylint: disable=protected-access
  stored = {}
  for name, (tree_path, _) in names.items():
    key = "/".join(tree_path)
    if key in reader._where:                                  # pylint: disable=protected-access
      stored[name] = np.dtype(loaders._ST_DTYPES[reader._where[key][2]])  # pylint: disable=protected-access
    elif tree_path[-1] == "kernel" and "/".join(tree_path[:-1]) + "/values" in reader._where:
      stored[name] = np.dtype(np.float32)
    else:
      raise CheckpointError(f"{path}: tensor {key!r} is missing")

  def get(name):
    tree_path = names[name][0]
    key = "/".join(tree_path)
    if key in reader._where:                                  # pylint: disable=protected-access
      return reader._get(key)                                 # pylint: disable=protected-access
    prefix = "/".join(tree_path[:-1]) + "/"
    sub = {k[len(prefix):]: reader._get(k) for k in reader._where  # pylint: disable=protected-access
           if k.startswith(prefix)}
    sub = {k: (jnp.asarray(v, jnp.float32) if np.issubdtype(v.dtype, np.floating) else v)
           for k, v in sub.items()}
    return np.asarray(llama.dense_weight(sub, names[name][1][1]), np.float32)

  return loaders.Source(cfg, reader.tokenizer, str(path), get, stored)


def densify(params: Mapping, cfg: LlamaConfig, dtype=jnp.float32) -> dict:
  """Every compressed linear reconstructed as a dense ``kernel`` in ``dtype`` (biases kept)."""
  out = jax.tree_util.tree_map(lambda x: x, dict(params))
  for i in range(cfg.num_layers):
    for name in LINEARS:
      p = llama.get_linear(out, i, name)
      if "values" in p:
        w = llama.pruned_from_params(
            jax.tree_util.tree_map(lambda x: x.astype(jnp.float32)
                                   if jnp.issubdtype(x.dtype, jnp.floating) else x, p),
            cfg.linear_shape(name)[1]).dense().astype(dtype)
        out = llama.set_linear(out, i, name, {"kernel": w})
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, out)


def trees_equal(a: Mapping, b: Mapping) -> bool:
  """Same structure, shapes, dtypes and bits."""
  fa, fb = flatten(a), flatten(b)
  if fa.keys() != fb.keys():
    return False
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
      return False
  return True
