"""The ``armor_jax`` model of lm-evaluation-harness, against independent references.

* Token splits: lm-eval's own ``TemplateLM.loglikelihood`` / ``_encode_pair`` (the code its
  Hugging Face backend runs), driven by a ``tokenizers`` encode with the Hugging Face
  backend's special-token rule, on 100+ (context, continuation) pairs of real text with
  trailing whitespace, newlines and empty contexts.
* Log-likelihoods: a float64 numpy decoder on the same tokens; rolling log-likelihoods:
  the project's forward pass over lm-eval's own rolling windows; accuracies: a hand
  computation from the per-request log-likelihoods; generation: a greedy loop written here.
* The compressed 2:4 checkpoint: the same requests as its densified twin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from armor_jax.evaluation import lm_backend  # noqa: E402
from armor_jax.model import checkpoint, llama, loaders, text  # noqa: E402
from test_armor_model import needs_assets, np_forward, np_weights  # noqa: E402

TASK_DIR = Path(__file__).parent / "data" / "tiny_mc"
REPO = Path(__file__).parent.parent


class _Reference(TemplateLM):
  """lm-eval's TemplateLM with the Hugging Face backend's ``tok_encode`` rule over a
  ``tokenizers.Tokenizer``: records the token requests instead of scoring them."""

  def __init__(self, tok, bos, eos, add_bos_token=None):
    super().__init__()
    self.tok, self.bos_id, self.eos_id, self.add_bos_token = tok, bos, eos, add_bos_token

  @property
  def eot_token_id(self):
    return self.eos_id

  @property
  def prefix_token_id(self):
    return self.bos_id if self.bos_id is not None else self.eos_id

  def tok_encode(self, string, add_special_tokens=None, **kwargs):
    kw = _add_special_kwargs(add_special_tokens, self.add_bos_token)
    if add_special_tokens is None and has_bos_prefix(
        string, self.tok.decode([self.prefix_token_id], skip_special_tokens=False)):
      kw["add_special_tokens"] = False
    add = kw.get("add_special_tokens", True)
    ids = self.tok.encode(string, add_special_tokens=add).ids
    if add and self.add_bos_token and (not ids or ids[0] != self.bos_id):
      ids = [self.bos_id] + ids          # a tokenizer loaded with add_bos_token=True
    return ids

  def _loglikelihood_tokens(self, requests, **kwargs):
    return [(ctx, cont) for _, ctx, cont in requests]

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    raise NotImplementedError

  def generate_until(self, requests, disable_tqdm=False):
    raise NotImplementedError


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
  """(context, continuation) pairs cut from Shakespeare at random characters (inside words,
  before and after spaces and newlines), some with extra trailing whitespace, some with an
  empty context, plus the tiny task's prompts and choices."""
  rng = np.random.default_rng(seed)
  _, ev = text.shakespeare_split()
  out = []
  for i in range(n):
    start = int(rng.integers(0, len(ev) - 400))
    cut = start + int(rng.integers(1, 200))
    end = cut + int(rng.integers(1, 60))
    ctx, cont = ev[start:cut], ev[cut:end]
    if i % 7 == 3:
      ctx += [" ", "  ", "\n", " \n "][i % 4]
    if i % 11 == 5:
      ctx = ""
    out.append((ctx, cont))
  for line in (TASK_DIR / "tiny_mc.jsonl").read_text().splitlines()[:6]:
    doc = json.loads(line)
    out += [(f"Question: {doc['question']}\nAnswer:", " " + c) for c in doc["choices"]]
  return out


@pytest.fixture(scope="module")
def smol_tokenizer_and_pairs():
  return loaders.inspect("smollm2").tokenizer, _pairs(120)


@needs_assets
@pytest.mark.parametrize("variant", ["as_is", "bos_processor", "add_bos", "no_bos"])
def test_token_splits_match_lm_eval_template(variant, smol_tokenizer_and_pairs):
  from tokenizers import Tokenizer, processors
  smol, pairs = smol_tokenizer_and_pairs
  tok = loaders.Tokenizer(Tokenizer.from_str(smol.tok.to_str()), smol.bos, smol.eos)
  add = {"add_bos": True, "no_bos": False}.get(variant)
  if variant == "bos_processor":           # a Llama-style tokenizer that adds BOS itself
    tok.tok.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos} $A", special_tokens=[(tok.bos, tok.bos_id)])
  ref = _Reference(tok.tok, tok.bos_id, tok.eos_id, add)
  enc = lm_backend.Encoding(tok, add)
  want = ref.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)],
                           disable_tqdm=True)
  got = [enc.request(*p) for p in pairs]
  assert sum(c == "" for c, _ in pairs) >= 10 and sum(c != c.rstrip() for c, _ in pairs) >= 15
  for p, w, g in zip(pairs, want, got):
    assert (list(w[0]), list(w[1])) == g, p
  if variant == "bos_processor":
    assert all(g[0][0] == tok.bos_id for g in got)
  if variant == "as_is":
    assert not any(g[0][0] == tok.bos_id for (c, _), g in zip(pairs, got) if c)


@pytest.fixture(scope="module")
def smol_lm():
  return lm_backend.ArmorLM(pretrained="smollm2", batch_size=4, max_length=64,
                            length_bucket=32)


def _np_loglikelihood(w, cfg, ctx, cont):
  """(sum of log p(continuation | context), greedy) in float64, truncated as lm-eval does."""
  full = (ctx + cont)[-65:]
  logits = np_forward(w, cfg, np.asarray(full[:-1]))
  lp = logits - logits.max(-1, keepdims=True)
  lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  rows = np.arange(len(full) - 1 - len(cont), len(full) - 1)
  targets = np.asarray(full[1:])[rows]
  return float(lp[rows, targets].sum()), bool((logits[rows].argmax(-1) == targets).all())


@needs_assets
@pytest.mark.slow
def test_tiny_task_through_simple_evaluate(smol_lm, monkeypatch):
  monkeypatch.chdir(REPO)                    # the task's data path is relative to the repo
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  from lm_eval.tasks import TaskManager
  res = lm_eval.simple_evaluate(model=smol_lm, tasks=["armor_tiny_mc"], log_samples=True,
                                task_manager=TaskManager(include_path=str(TASK_DIR)))
  samples = res["samples"]["armor_tiny_mc"]
  assert len(samples) == 22
  # accuracies by hand from the per-request log-likelihoods: argmax of the sum (acc) and of
  # the sum over the choice's length in characters (acc_norm)
  acc, acc_norm = [], []
  for s in samples:
    lls = np.array([r[0][0] for r in s["resps"]])
    lens = np.array([len(a[1]) for a in s["arguments"]], float)
    acc.append(float(lls.argmax() == s["target"]))
    acc_norm.append(float((lls / lens).argmax() == s["target"]))
  got = res["results"]["armor_tiny_mc"]
  assert got["acc,none"] == pytest.approx(np.mean(acc), abs=1e-12)
  assert got["acc_norm,none"] == pytest.approx(np.mean(acc_norm), abs=1e-12)
  assert got["acc_stderr,none"] == pytest.approx(np.std(acc, ddof=1) / np.sqrt(len(acc)))
  assert np.mean(acc) > 0.5                   # a 135M model knows most of these
  # the first three documents' requests against the float64 numpy decoder
  model = smol_lm.model
  w = np_weights(model.params, model.cfg)
  for s in samples[:3]:
    for (ctx, cont), r in zip(s["arguments"], s["resps"]):
      c, k = smol_lm.encoding.request(ctx, cont)
      ll, greedy = _np_loglikelihood(w, model.cfg, c, k)
      assert r[0][0] == pytest.approx(ll, abs=2e-3 * max(1.0, abs(ll)))
      assert r[0][1] == greedy


@pytest.fixture(scope="module")
def padded_forward(smol_lm):
  """The project's forward pass on one sequence (<= 64 tokens): its logits (t, vocab), the
  input padded with zeros to 64 so one compiled program serves every length (attention is
  causal: what follows a position does not change it)."""
  fwd = jax.jit(lambda p, x: llama.forward(p, x, smol_lm.cfg))

  def run(ids):
    x = np.zeros((1, 64), np.int32)
    x[0, :len(ids)] = ids
    return fwd(smol_lm.params, jnp.asarray(x))[0, :len(ids)]

  return run


@needs_assets
@pytest.mark.slow
def test_rolling_loglikelihood_over_lm_eval_windows(smol_lm, padded_forward):
  _, ev = text.shakespeare_split()
  docs = [ev[1000:1800], ev[5000:5100], "Hello"]
  got = smol_lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (d,), i)
                                       for i, d in enumerate(docs)])
  fwd = padded_forward
  for d, g in zip(docs, got):
    ids = smol_lm.encoding.encode(d)
    windows = [make_disjoint_window(win) for win in get_rolling_token_windows(
        ids, smol_lm.prefix_token_id, 64, 1)]
    assert len(windows) == -(-len(ids) // 64)
    total = 0.0
    for ctx, pred in windows:
      full = ctx + pred
      lp = np.asarray(jax.nn.log_softmax(fwd(full[:-1]), -1), np.float64)
      rows = np.arange(len(full) - 1 - len(pred), len(full) - 1)
      total += lp[rows, np.asarray(full[1:])[rows]].sum()
    assert g == pytest.approx(total, rel=1e-5, abs=1e-3)


@needs_assets
@pytest.mark.slow
def test_generate_until_is_greedy_and_stops(smol_lm, padded_forward):
  reqs = [("The capital of France is", {"until": ["."], "max_gen_toks": 8, "do_sample": False}),
          ("One, two, three,", {"until": ["five"], "max_gen_toks": 6}),
          ("Once upon a time", {"until": ["\n"], "max_gen_toks": 5})]
  got = smol_lm.generate_until([Instance("generate_until", {}, r, i)
                                for i, r in enumerate(reqs)])
  fwd = padded_forward
  tok = smol_lm.tokenizer
  for (ctx, kw), g in zip(reqs, got):
    ids = smol_lm.encoding.encode(ctx)
    new = []
    for _ in range(kw["max_gen_toks"]):
      nxt = int(np.argmax(np.asarray(fwd(ids + new)[-1])))
      if nxt == tok.eos_id:
        break
      new.append(nxt)
    want = tok.tok.decode(new, skip_special_tokens=True)
    for stop in kw["until"] + [tok.decode([tok.eos_id])]:
      want = want.split(stop)[0]
    assert g == want
  assert "Paris" in got[0] and "." not in got[0]


@needs_assets
@pytest.mark.slow
def test_compressed_checkpoint_scores_as_its_dense_twin(smol_lm, tmp_path):
  from armor_jax.solver import baselines, calibration
  model = smol_lm.model
  params = model.params
  for i in range(1):                           # 2:4 in the first block (Wanda, unit h)
    for name in llama.LINEARS:
      w = llama.get_linear(params, i, name)["kernel"]
      stats = calibration.Stats(count=jnp.float32(1), sum_sq=jnp.ones(w.shape[1]))
      params = llama.set_linear(params, i, name,
                                llama.linear_params(baselines.wanda(w, stats)))
  ck = tmp_path / "ck"
  checkpoint.save(ck, model.cfg, params, model.tokenizer, dtype="float32", method="wanda")
  dense = loaders.save_hf(loaders.Model(model.cfg, checkpoint.densify(params, model.cfg),
                                        model.tokenizer, "dense"), tmp_path / "dense")
  assert loaders.inspect(str(ck)).cfg == model.cfg      # every experiment's model= reads it
  src = loaders.open_model(str(ck))
  np.testing.assert_allclose(src.block(0)["attn"]["q"]["kernel"],
                             np.asarray(llama.get_linear(checkpoint.densify(params, model.cfg),
                                                         0, "q")["kernel"]), rtol=0, atol=1e-6)
  a = lm_backend.ArmorLM(pretrained=str(ck), batch_size=4, max_length=64, length_bucket=32)
  b = lm_backend.ArmorLM(pretrained=str(dense), batch_size=4, max_length=64, length_bucket=32)
  assert "values" in a.params["layers_0"]["attn"]["q"]      # run compressed, not densified
  assert a.tokenizer.bos == model.tokenizer.bos and a.tokenizer.eos == model.tokenizer.eos
  reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(_pairs(12, seed=1))]
  la, lb = a.loglikelihood(reqs), b.loglikelihood(reqs)
  np.testing.assert_allclose([x[0] for x in la], [x[0] for x in lb], rtol=1e-4, atol=1e-3)
  full = smol_lm.loglikelihood(reqs)
  assert np.mean([x[0] for x in la]) < np.mean([x[0] for x in full]) + 1e-3   # pruning costs


@needs_assets
@pytest.mark.slow
def test_zero_shot_rejects_bad_input(precheck_cli, tmp_path):
  # one include directory (lm-eval indexes its whole task tree once per directory): the
  # shipped task and one whose data file is missing
  inc_dir = tmp_path / "tasks"
  inc_dir.mkdir()
  yaml = (TASK_DIR / "tiny_mc.yaml").read_text().replace("tests/data/tiny_mc/tiny_mc.jsonl",
                                                         str(TASK_DIR / "tiny_mc.jsonl"))
  (inc_dir / "tiny_mc.yaml").write_text(yaml)
  (inc_dir / "bad.yaml").write_text(yaml.replace("armor_tiny_mc", "bad_mc").replace(
      str(TASK_DIR / "tiny_mc.jsonl"), str(tmp_path / "missing.jsonl")))
  inc = f"include_path={inc_dir}"
  code, err = precheck_cli(["experiment=zero_shot", "tasks=[no_such_task]", inc])
  assert code == 2 and len(err) == 1 and "no_such_task" in err[0]
  code, err = precheck_cli(["experiment=zero_shot", "tasks=[bad_mc]", inc])
  assert code == 2 and len(err) == 1 and "missing.jsonl" in err[0]
  code, err = precheck_cli(["experiment=zero_shot", f"model={inc_dir}", inc])
  assert code == 2 and len(err) == 1 and str(inc_dir) in err[0]
  code, err = precheck_cli(["experiment=armor_prune", "zero_shot_tasks=[no_such_task]",
                            f"zero_shot_include={inc_dir}"])
  assert code == 2 and len(err) == 1 and "no_such_task" in err[0]
  assert sorted(os.listdir(tmp_path)) == ["tasks"]             # nothing written
