"""The pruning papers' perplexity protocols on small local corpora in the hub's layout, against
the papers' data code transcribed here (Python's global ``random`` as GPTQ's ``get_c4`` uses it)
over a Hugging Face style tokenizer that adds a beginning-of-text token."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from armor_jax.errors import InputError  # noqa: E402
from armor_jax.evaluation import corpora  # noqa: E402
from armor_jax.model import loaders, synthetic  # noqa: E402
from test_armor_model import needs_assets  # noqa: E402


@pytest.fixture(scope="module")
def tok():
  """The byte-level test tokenizer with a BOS post-processor (as Llama tokenizers add one)."""
  from tokenizers import AddedToken, processors
  t = synthetic.byte_tokenizer()
  t.add_special_tokens([AddedToken("<s>", special=True)])
  bos = t.token_to_id("<s>")
  t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
  return loaders.Tokenizer(t, "<s>", None)


def _words(rng, n):
  return " ".join("".join(rng.choice(list("abcdefgh"), int(rng.integers(1, 8))))
                  for _ in range(n))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("corpora")
  wiki = [" = Title = \n", "\n"] + [_words(rng, int(rng.integers(0, 60))) + " \n"
                                     for _ in range(40)]
  (root / "wikitext-2-raw-v1").mkdir()
  datasets.Dataset.from_dict({"text": wiki}).to_parquet(
      str(root / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet"))
  c4 = [_words(rng, int(rng.integers(2, 120))) for _ in range(60)]
  (root / "en").mkdir()
  with gzip.open(root / "en" / "c4-validation.00000-of-00008.json.gz", "wt") as f:
    for d in c4:
      f.write(json.dumps({"text": d, "timestamp": "2019", "url": "u"}) + "\n")
  return root, wiki, c4


def _hf(tok, text):
  return tok.tok.encode(text, add_special_tokens=True).ids


def test_wikitext2_joins_rows_and_cuts_consecutive_windows(tok, corpus_dir):
  root, wiki, _ = corpus_dir
  got = corpora.windows("wikitext2", tok.encode_specials, 64, root)
  ids = _hf(tok, "\n\n".join(wiki))
  n = len(ids) // 64
  assert ids[0] == tok.bos_id and got.shape == (n, 64) and n > 3
  np.testing.assert_array_equal(got, np.asarray(ids[:n * 64]).reshape(n, 64))
  # the raw text file's lines are the same rows
  txt = root / "txt" / "wikitext-2-raw-v1"
  txt.mkdir(parents=True)
  (txt / "test.txt").write_text("".join(wiki))
  np.testing.assert_array_equal(corpora.windows("wikitext2", tok.encode_specials, 64,
                                                root / "txt"), got)


def test_c4_draws_as_gptq_get_c4(tok, corpus_dir):
  root, _, c4 = corpus_dir
  seqlen = 96
  random.seed(0)                         # GPTQ / SparseGPT datautils.get_c4, validation part
  want = []
  for _ in range(256):
    while True:
      i = random.randint(0, len(c4) - 1)
      tmp = _hf(tok, c4[i])
      if len(tmp) >= seqlen:
        break
    i = random.randint(0, len(tmp) - seqlen - 1)
    want.append(tmp[i:i + seqlen])
  got = corpora.windows("c4", tok.encode_specials, seqlen, root)
  np.testing.assert_array_equal(got, np.asarray(want))
  assert (got[:, 0] == tok.bos_id).sum() < len(got)      # windows start inside documents


def test_c4_wanda_joins_the_first_1100_documents(tok, corpus_dir):
  root, _, c4 = corpus_dir
  ids = _hf(tok, " ".join(c4[:1100]))[:256 * 32]
  got = corpora.windows("c4_wanda", tok.encode_specials, 32, root)
  n = len(ids) // 32
  np.testing.assert_array_equal(got, np.asarray(ids[:n * 32]).reshape(n, 32))
  long = corpora.windows("c4_wanda", tok.encode_specials, 8, docs=c4 * 40)
  assert long.shape == (256, 8)                             # at most 256 windows


def test_missing_corpus_is_named(tok, tmp_path):
  with pytest.raises(InputError, match="wikitext2"):
    corpora.windows("wikitext2", tok.encode_specials, 64, tmp_path)
  with pytest.raises(InputError, match="no such directory"):
    corpora.windows("c4", tok.encode_specials, 64, tmp_path / "nope")
  with pytest.raises(InputError, match="too few"):
    corpora.windows("c4", tok.encode_specials, 10_000, docs=["short"], )


@pytest.mark.slow
@needs_assets
def test_armor_prune_names_a_missing_corpus(precheck_cli, tmp_path):
  code, err = precheck_cli(["experiment=armor_prune", "eval_text=wikitext2",
                            f"eval_data_dir={tmp_path}"])
  assert code == 2 and len(err) == 1 and "wikitext2" in err[0] and str(tmp_path) in err[0]
  code, err = precheck_cli(["experiment=armor_prune", "eval_text=wikitext3"])
  assert code == 2 and len(err) == 1 and "eval_text" in err[0]


def test_hub_path_asks_datasets_for_the_papers_files(tok, monkeypatch):
  # no network here: the call datasets would make is recorded and answered locally
  calls = []

  def fake(path, name=None, **kw):
    calls.append((path, name, kw))
    return datasets.Dataset.from_dict({"text": ["word " * 400] * 3})

  monkeypatch.setattr(datasets, "load_dataset", fake)
  corpora.documents("wikitext2")
  corpora.documents("c4_wanda")
  assert calls[0] == ("Salesforce/wikitext", "wikitext-2-raw-v1", {"split": "test"})
  assert calls[1] == ("allenai/c4", None, {
      "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
      "split": "validation"})

  def down(*a, **kw):
    raise ConnectionError("no network")

  monkeypatch.setattr(datasets, "load_dataset", down)
  with pytest.raises(InputError, match="local directory"):
    corpora.documents("c4")
