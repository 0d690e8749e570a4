"""Model and text inputs of the ARMOR pipeline: every config.json layout, errors before work.

The configs are real ones: written by transformers 4.46, 4.57 and 5.24's own config classes
(tests/data/hf_configs/generate.py), published checkpoints shrunk in dimension. Logits of
checkpoints built on them are checked against a float64 numpy decoder that reads the JSON with
its own code (tests/hf_fixtures.py). Bad inputs are checked through the entry point in-process:
one line naming the file and the problem, exit code 2, nothing written (before any work) or no
results.json (a NaN weight, found when the tensor is read).
"""

from __future__ import annotations

import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

import hf_fixtures as hf
from armor_jax.model import hf_config, llama, loaders
from armor_jax.model.llama import LlamaConfig

# -- config.json layouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", hf.MODELS)
def test_every_layout_reads_the_same(model):
  cfgs = {layout: LlamaConfig.from_hf(hf.config_json(model, layout)) for layout in hf.LAYOUTS}
  assert len(set(cfgs.values())) == 1, cfgs
  cfg = cfgs["tf5"]
  assert LlamaConfig.from_hf(cfg.to_hf()) == cfg          # what we write reads back the same
  # the values the layouts put in different places, against the transformers 5 file itself
  rp = hf.config_json(model, "tf5")["rope_parameters"]
  assert cfg.rope_theta == rp["rope_theta"]
  if rp["rope_type"] == "llama3":
    rs = cfg.rope_scaling
    assert (rs.kind, rs.factor, rs.low_freq_factor, rs.high_freq_factor,
            rs.original_max_position) == ("llama3", rp["factor"], rp["low_freq_factor"],
                                          rp["high_freq_factor"],
                                          rp["original_max_position_embeddings"])
  else:
    assert cfg.rope_scaling is None


def test_known_values_of_the_shrunk_checkpoints():
  c = {m: LlamaConfig.from_hf(hf.config_json(m, "tf446")) for m in hf.MODELS}
  assert c["llama31"].rope_theta == 500000.0 and c["llama31"].num_kv_heads == 2
  assert c["qwen25"].attention_bias and c["qwen25"].tie_embeddings and c["qwen25"].rms_eps == 1e-6
  assert c["qwen25"].sliding_window is None          # shipped switched off
  assert [c["qwen2_swa"].window(i) for i in range(2)] == [None, 5]
  assert [c["mistral"].window(i) for i in range(2)] == [5, 5]
  assert c["llama2"].window(0) is None and not c["llama2"].attention_bias


@pytest.mark.parametrize("layout", hf.LAYOUTS)
@pytest.mark.parametrize("model", hf.MODELS)
def test_logits_match_float64_numpy(tmp_path, model, layout):
  conf = hf.config_json(model, layout)
  weights = hf.random_weights(conf, seed=3)
  m = loaders.load_hf(hf.write_checkpoint(tmp_path / "ck", conf, weights))
  tokens = np.array([5, 17, 3, 88, 41, 41, 9, 60, 2, 71, 33, 12, 50, 7])   # longer than windows
  got = np.asarray(llama.forward(m.params, jnp.asarray(tokens)[None], m.cfg)[0], np.float64)
  ref = hf.np_logits(weights, conf, tokens)
  scale = np.abs(ref).max()
  assert np.abs(got - ref).max() < 2e-4 * scale, np.abs(got - ref).max() / scale


def test_reading_rope_theta_wrong_would_be_caught(tmp_path):
  """The check above is sharp: a transformers 5 file read with the default theta is off."""
  conf = hf.config_json("llama31", "tf5")
  weights = hf.random_weights(conf, seed=3)
  tokens = np.arange(1, 15)
  wrong = dict(conf, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
  a, b = hf.np_logits(weights, conf, tokens), hf.np_logits(weights, wrong, tokens)
  assert np.abs(a - b).max() > 1e-2 * np.abs(a).max()


@pytest.mark.parametrize("change, named", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "'yarn'"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}},
     "'dynamic'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e6}}, "'factor'"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"model_type": "gemma"}, "model_type 'gemma'"),
    ({"architectures": ["Qwen2ForSequenceClassification"]}, "Qwen2ForSequenceClassification"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config (gptq)"),
    ({"layer_types": ["full_attention", "chunked_attention"]}, "'chunked_attention'"),
    ({"layer_types": ["full_attention"]}, "layer_types has 1 entries"),
    ({"rope_parameters": [1, 2]}, "rope_parameters must be a mapping"),
    ({"hidden_size": None}, "'hidden_size'"),
])
def test_unknown_settings_are_named(change, named):
  conf = dict(hf.config_json("qwen25", "tf5"), **change)
  with pytest.raises(ValueError, match=".*") as e:
    LlamaConfig.from_hf(conf)
  assert named in str(e.value) and "\n" not in str(e.value)


def test_llama_biases_and_nested_rope_are_refused():
  conf = hf.config_json("llama2", "tf457")
  for change, named in (({"attention_bias": True}, "attention_bias"),
                        ({"mlp_bias": True}, "mlp_bias")):
    with pytest.raises(ValueError, match=named):
      LlamaConfig.from_hf(dict(conf, **change))
  q = hf.config_json("qwen2_swa", "tf5")
  nested = {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
  with pytest.raises(ValueError, match="differ between layer types"):
    LlamaConfig.from_hf(dict(q, rope_parameters=nested))
  same = {k: {"rope_type": "default", "rope_theta": 1e6} for k in nested}
  assert LlamaConfig.from_hf(dict(q, rope_parameters=same)) == LlamaConfig.from_hf(q)


def test_llama3_original_context_defaults_as_in_transformers_5():
  conf = hf.config_json("llama31", "tf5")
  rp = {k: v for k, v in conf["rope_parameters"].items()
        if k != "original_max_position_embeddings"}
  cfg = LlamaConfig.from_hf(dict(conf, rope_parameters=rp))
  assert cfg.rope_scaling.original_max_position == conf["max_position_embeddings"]
  assert hf_config.ROPE_TYPES == ("default", "linear", "llama3")


# -- checkpoint files, checked from their headers ------------------------------------------------

def _ck(tmp_path, model="qwen25", layout="tf457", **kw):
  return hf.write_checkpoint(tmp_path / "ck", hf.config_json(model, layout), **kw)


def _expect(fn, *needles):
  with pytest.raises(loaders.CheckpointError) as e:
    fn()
  msg = str(e.value)
  assert "\n" not in msg and all(n in msg for n in needles), msg
  return msg


def test_header_checks_name_file_and_tensor(tmp_path):
  conf = hf.config_json("llama2", "tf5")
  w = hf.random_weights(conf)
  name = "model.layers.1.mlp.down_proj.weight"
  ck = hf.write_checkpoint(tmp_path / "a", conf, dict(w, **{name: w[name][:, :-2]}))
  _expect(lambda: loaders.inspect(str(ck)), str(ck), name, "(64, 158)", "(64, 160)")
  ck = hf.write_checkpoint(tmp_path / "b", conf, dict(w, **{name: w[name].astype(np.int32)}))
  _expect(lambda: loaders.inspect(str(ck)), name, "dtype I32")
  extra = "model.layers.0.self_attn.o_proj.bias"
  ck = hf.write_checkpoint(tmp_path / "c", conf, dict(w, **{extra: np.zeros(64, np.float32)}))
  _expect(lambda: loaders.inspect(str(ck)), extra, "not part of the architecture")
  ck = hf.write_checkpoint(tmp_path / "d", conf, {k: v for k, v in w.items() if k != name})
  _expect(lambda: loaders.inspect(str(ck)), name, "missing")
  more = "model.layers.2.mlp.up_proj.weight"    # a layer config.json does not have
  ck = hf.write_checkpoint(tmp_path / "e", conf, dict(w, **{more: w[name]}))
  _expect(lambda: loaders.inspect(str(ck)), more)
  # truncated: the header promises more bytes than the file has
  ck = hf.write_checkpoint(tmp_path / "f", conf, w)
  st = ck / "model.safetensors"
  st.write_bytes(st.read_bytes()[:-100])
  _expect(lambda: loaders.inspect(str(ck)), str(st), "truncated")
  st.write_bytes(struct.pack("<Q", 10**9) + b"{}")
  _expect(lambda: loaders.inspect(str(ck)), str(st), "not a safetensors file")


def test_sharded_index_checks(tmp_path):
  from safetensors.numpy import save_file
  conf = hf.config_json("llama2", "tf446")
  w = hf.random_weights(conf)
  ck = tmp_path / "ck"
  hf.write_checkpoint(ck, conf, w)
  (ck / "model.safetensors").unlink()
  names = sorted(w)
  half = {n: w[n] for n in names[:10]}, {n: w[n] for n in names[10:]}
  save_file(half[0], str(ck / "model-00001-of-00002.safetensors"))
  save_file(half[1], str(ck / "model-00002-of-00002.safetensors"))
  wm = {n: "model-00001-of-00002.safetensors" for n in half[0]}
  wm.update({n: "model-00002-of-00002.safetensors" for n in half[1]})
  (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
  m = loaders.load_hf(str(ck))                             # a good sharded checkpoint loads
  np.testing.assert_array_equal(np.asarray(m.params["norm"]["weight"]), w["model.norm.weight"])
  wm2 = dict(wm, **{names[0]: "model-00003-of-00002.safetensors"})
  (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm2}))
  _expect(lambda: loaders.inspect(str(ck)), "model-00003-of-00002.safetensors", "not found")
  wm3 = dict(wm, **{names[0]: "model-00002-of-00002.safetensors"})
  (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm3}))
  _expect(lambda: loaders.inspect(str(ck)), names[0], "index puts in")


def test_tokenizer_larger_than_embedding(tmp_path):
  conf = dict(hf.config_json("llama2", "tf446"), vocab_size=200)   # the tokenizer has 256
  ck = hf.write_checkpoint(tmp_path / "ck", conf)
  _expect(lambda: loaders.inspect(str(ck)), "tokenizer.json", "256 tokens", "200 rows")
  _expect(lambda: loaders.load_hf(str(ck)), "256 tokens")


def test_nan_weight_is_found_when_read(tmp_path):
  conf = hf.config_json("mistral", "tf5")
  w = hf.random_weights(conf)
  name = "model.layers.1.self_attn.v_proj.weight"
  w[name][3, 7] = np.nan
  ck = hf.write_checkpoint(tmp_path / "ck", conf, w)
  loaders.inspect(str(ck))                                  # headers are fine
  _expect(lambda: loaders.load_hf(str(ck)), name, "1 NaN/Inf", "(3, 7)")


def test_unsupported_model_type_is_named(tmp_path):
  conf = dict(hf.config_json("llama2", "tf5"), model_type="phi3")
  ck = hf.write_checkpoint(tmp_path / "ck", conf)
  _expect(lambda: loaders.inspect(str(ck)), "config.json", "model_type 'phi3'")


# -- through the entry point -------------------------------------------------------------------


def _args(ck, cal, ev, *extra):
  return ["experiment=armor_prune", f"model={ck}", f"calib_text={cal}", f"eval_text={ev}",
          "n_calib=2", "calib_len=16", "eval_len=16", "eval_windows=2", "methods=[magnitude]",
          "gen_tokens=0", "progress=false", "hydra.run.dir=run", *extra]


def test_cli_input_errors_before_any_work(precheck_cli, tmp_path):
  in_tmp = tmp_path
  inputs = in_tmp / "inputs"
  inputs.mkdir()
  good = hf.write_checkpoint(inputs / "good", hf.config_json("llama2", "tf5"))
  cal = hf.write_text(inputs / "cal.txt", 400)
  short = hf.write_text(inputs / "short.txt", 2)
  bad_type = hf.write_checkpoint(inputs / "phi", dict(hf.config_json("llama2", "tf5"),
                                                       model_type="phi3"))
  conf = hf.config_json("llama2", "tf5")
  w = hf.random_weights(conf)
  w["model.layers.0.mlp.up_proj.weight"] = w["model.layers.0.mlp.up_proj.weight"][:-1]
  bad_shape = hf.write_checkpoint(inputs / "shape", conf, w)
  big_tok = hf.write_checkpoint(inputs / "tok", dict(conf, vocab_size=200))
  cases = [
      (_args(bad_type, cal, cal), ["config.json", "model_type 'phi3'"]),
      (_args(bad_shape, cal, cal), ["model.layers.0.mlp.up_proj.weight", "(159, 64)"]),
      (_args(big_tok, cal, cal), ["tokenizer.json", "256 tokens"]),
      (_args(good, cal, short), [str(short), "fewer than one evaluation window"]),
      (_args(good, short, cal), [str(short), "fewer than one calibration window"]),
      (_args(good, cal, cal, "blocks=3"), ["key 'blocks'", "2 blocks"]),
  ]
  before = sorted(p.name for p in in_tmp.iterdir())
  for args, needles in cases:
    code, err = precheck_cli(args)
    assert code == 2 and len(err) == 1 and all(n in err[0] for n in needles), err
    assert sorted(p.name for p in in_tmp.iterdir()) == before       # nothing written


@pytest.mark.slow
def test_cli_nan_weight_exit_2_without_results(tmp_path):
  """Found when the tensor is read, after Hydra made the run directory: a real process."""
  import subprocess
  import sys
  from pathlib import Path
  conf = hf.config_json("qwen25", "tf457")
  w = hf.random_weights(conf)
  w["model.layers.1.mlp.gate_proj.weight"][0, 0] = np.inf
  ck = hf.write_checkpoint(tmp_path / "ck", conf, w)
  cal = hf.write_text(tmp_path / "cal.txt", 400)
  root = Path(__file__).resolve().parent.parent
  r = subprocess.run([sys.executable, "-m", "experiments.main", *_args(ck, cal, cal)],
                     cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(root)),
                     capture_output=True, text=True, timeout=600)
  err = r.stderr.strip().splitlines()
  assert r.returncode == 2, r.stderr[-2000:]
  assert "model.layers.1.mlp.gate_proj.weight" in err[-1] and "NaN/Inf" in err[-1], err[-3:]
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_pipeline_stops_at_a_nan_block_and_keeps_the_finished_ones(tmp_path):
  import jax
  from armor_jax.model import pipeline
  conf = hf.config_json("llama2", "tf446")
  m = loaders.load_hf(hf.write_checkpoint(tmp_path / "ck", conf))
  params = dict(m.params)
  blk = jax.tree_util.tree_map(lambda x: x, params["layers_1"])
  blk["mlp"]["down"]["kernel"] = blk["mlp"]["down"]["kernel"].at[2, 5].set(jnp.nan)
  bad = dict(params, layers_1=blk)
  calib = np.random.default_rng(0).integers(0, 96, (4, 16)).astype(np.int32)
  pc = pipeline.PruneConfig(method="wanda", batch=2)
  key = jax.random.PRNGKey(0)
  with pytest.raises(pipeline.InputError, match=r"model.layers.1.mlp.down_proj.weight.*\(2, 5\)"):
    pipeline.prune_model(bad, m.cfg, calib, pc, key, checkpoint=tmp_path / "p")
  assert (tmp_path / "p" / "block_0.json").exists()                # block 0 kept
  assert not (tmp_path / "p" / "block_1.json").exists()
  seen = []
  _, fixed, _ = pipeline.prune_model(params, m.cfg, calib, pc, key, checkpoint=tmp_path / "p",
                                     on_layer=seen.append)
  assert {r["block"] for r in seen} == {1}                          # resumed after the fix
  _, ref, _ = pipeline.prune_model(params, m.cfg, calib, pc, key)
  from armor_jax.model import checkpoint
  assert checkpoint.trees_equal(fixed, ref)


@pytest.mark.slow
def test_changed_weights_are_not_resumed(tmp_path):
  import jax
  from armor_jax.model import checkpoint, pipeline
  conf = hf.config_json("qwen2_swa", "tf5")
  m = loaders.load_hf(hf.write_checkpoint(tmp_path / "ck", conf))
  calib = np.random.default_rng(0).integers(0, 96, (4, 16)).astype(np.int32)
  pc = pipeline.PruneConfig(method="wanda", batch=2)
  key = jax.random.PRNGKey(0)
  pipeline.prune_model(m.params, m.cfg, calib, pc, key, checkpoint=tmp_path / "p", blocks=1)
  blk = jax.tree_util.tree_map(lambda x: x, m.params["layers_0"])
  blk["attn"]["o"]["kernel"] = blk["attn"]["o"]["kernel"] * 1.01
  other = dict(m.params, layers_0=blk)
  said, seen = [], []
  _, got, _ = pipeline.prune_model(other, m.cfg, calib, pc, key, checkpoint=tmp_path / "p",
                                   on_layer=seen.append, say=said.append)
  assert {r["block"] for r in seen} == {0, 1} and "weights" in said[0]
  assert checkpoint.trees_equal(got, pipeline.prune_model(other, m.cfg, calib, pc, key)[1])


@pytest.mark.slow
def test_missing_states_file_is_recomputed_from_the_finished_blocks(tmp_path):
  import jax
  from armor_jax.model import checkpoint, pipeline
  conf = hf.config_json("llama2", "tf5")
  m = loaders.load_hf(hf.write_checkpoint(tmp_path / "ck", conf))
  calib = np.random.default_rng(0).integers(0, 96, (4, 16)).astype(np.int32)
  pc = pipeline.PruneConfig(method="wanda", batch=2)
  key = jax.random.PRNGKey(0)
  pipeline.prune_model(m.params, m.cfg, calib, pc, key, checkpoint=tmp_path / "p", blocks=1)
  (tmp_path / "p" / "states_1.npy").unlink()
  seen = []
  _, got, _ = pipeline.prune_model(m.params, m.cfg, calib, pc, key, checkpoint=tmp_path / "p",
                                   on_layer=seen.append)
  assert {r["block"] for r in seen} == {1}       # block 0 reused, its output recomputed
  assert checkpoint.trees_equal(got, pipeline.prune_model(m.params, m.cfg, calib, pc, key)[1])
  # with blocks=1 the finished block needs no states: it is reused as it is
  seen.clear()
  pipeline.prune_model(m.params, m.cfg, calib, pc, key, checkpoint=tmp_path / "p", blocks=1,
                       on_layer=seen.append)
  assert seen == []
