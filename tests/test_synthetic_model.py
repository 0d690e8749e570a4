"""Random Llama checkpoints written by armor_jax.model.synthetic: layout, values, determinism."""
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from armor_jax.model import llama, loaders, synthetic
from armor_jax.model.llama import LlamaConfig

CFG = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=3,
                  num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=False)
TEXT = "To be, or not to be"
_forward = jax.jit(llama.forward, static_argnums=2)   # one compile, not one per eager op


def _files(path):
  return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _expected(name, seed=0, std=0.02, dtype=ml_dtypes.bfloat16):
  """The tensor drawn in one go from its own generator (no chunks)."""
  names = list(loaders._hf_names(CFG))
  shape = loaders._hf_names(CFG)[name][1]
  rng = np.random.default_rng([seed, names.index(name)])
  return (rng.standard_normal(shape, np.float32) * np.float32(std)).astype(dtype)


def test_layout_loads_and_runs(tmp_path):
  path = synthetic.write_llama(tmp_path / "m", CFG, shard_bytes=40_000)
  index = json.loads((path / "model.safetensors.index.json").read_text())
  shards = sorted(p.name for p in path.glob("*.safetensors"))
  assert len(shards) >= 3 and shards == sorted(set(index["weight_map"].values()))
  assert shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
  assert not list(path.glob(".*.tmp"))
  total, seen = 0, {}
  for shard in shards:
    header = loaders.safetensors_header(path / shard)
    for name, (shape, dtype) in header.items():
      assert dtype == "BF16" and index["weight_map"][name] == shard
      seen[name] = shape
      total += 2 * int(np.prod(shape))
  expected = {k: shape for k, (_, shape) in loaders._hf_names(CFG).items()}
  assert list(seen) == list(expected) and seen == expected   # names, shapes and order
  assert index["metadata"]["total_size"] == total
  assert json.loads((path / "config.json").read_text())["torch_dtype"] == "bfloat16"

  assert loaders.inspect(str(path)).cfg == CFG
  model = loaders.load_hf(path)
  assert model.cfg == CFG
  tokens = model.tokenizer.encode(TEXT)
  assert tokens.tolist() == list(TEXT.encode())
  logits = _forward(model.params, jnp.asarray(tokens)[None], CFG)
  assert logits.shape == (1, len(tokens), CFG.vocab_size)
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_array_equal(model.params["layers_1"]["post_norm"]["weight"], 1.0)


def test_values_match_unchunked_generation(tmp_path, monkeypatch):
  monkeypatch.setattr(synthetic, "_CHUNK_BYTES", 1000)   # 3 rows of 64, 1 row of 128 at a time
  path = synthetic.write_llama(tmp_path / "m", CFG, seed=3, shard_bytes=40_000)
  index = json.loads((path / "model.safetensors.index.json").read_text())
  for name in ("model.embed_tokens.weight", "model.layers.2.mlp.down_proj.weight",
               "model.layers.0.self_attn.k_proj.weight", "lm_head.weight"):
    with safe_open(str(path / index["weight_map"][name]), framework="flax") as f:
      got = np.asarray(f.get_tensor(name))
    want = _expected(name, seed=3)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes(), name
  assert abs(float(np.std(want.astype(np.float32))) - 0.02) < 0.002


def test_bytes_independent_of_chunk_size_and_depend_on_seed(tmp_path, monkeypatch):
  a = _files(synthetic.write_llama(tmp_path / "a", CFG, shard_bytes=40_000))
  monkeypatch.setattr(synthetic, "_CHUNK_BYTES", 700)
  b = _files(synthetic.write_llama(tmp_path / "b", CFG, shard_bytes=40_000))
  c = _files(synthetic.write_llama(tmp_path / "c", CFG, seed=1, shard_bytes=40_000))
  assert a == b
  assert a.keys() == c.keys()
  assert all(a[k] != c[k] for k in a if k.endswith(".safetensors"))


@pytest.mark.parametrize("dtype,st_dtype,np_dtype", [("float32", "F32", np.float32),
                                                     ("float16", "F16", np.float16)])
def test_float32_and_float16(tmp_path, dtype, st_dtype, np_dtype):
  path = synthetic.write_llama(tmp_path / "m", CFG, dtype=dtype, shard_bytes=60_000)
  assert json.loads((path / "config.json").read_text())["torch_dtype"] == dtype
  name = "model.layers.1.self_attn.q_proj.weight"
  shard = path / json.loads((path / "model.safetensors.index.json").read_text())[
      "weight_map"][name]
  assert {d for _, d in loaders.safetensors_header(shard).values()} == {st_dtype}
  with safe_open(str(shard), framework="numpy") as f:
    got = f.get_tensor(name)
  assert got.dtype == np_dtype and got.tobytes() == _expected(name, dtype=np_dtype).tobytes()
  model = loaders.load_hf(path)
  logits = _forward(model.params, jnp.asarray(model.tokenizer.encode(TEXT))[None], CFG)
  assert np.isfinite(np.asarray(logits)).all()


def test_bias_tied_and_rejections(tmp_path):
  cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=16, tie_embeddings=True,
                    attention_bias=True)
  model = loaders.load_hf(synthetic.write_llama(tmp_path / "q", cfg))
  assert model.cfg == cfg and "lm_head" not in model.params
  np.testing.assert_array_equal(model.params["layers_0"]["attn"]["k"]["bias"], 0.0)
  with pytest.raises(ValueError, match="256"):
    synthetic.write_llama(tmp_path / "x", LlamaConfig(
        vocab_size=255, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
        num_kv_heads=1, head_dim=16))
  with pytest.raises(ValueError, match="dtype"):
    synthetic.write_llama(tmp_path / "x", CFG, dtype="int8")
