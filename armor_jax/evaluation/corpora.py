"""The perplexity protocols of the pruning papers: WikiText-2 and the two C4 protocols.

Each protocol turns a corpus into evaluation windows of ``seqlen`` tokens; perplexity is the
exponential of the mean next-token loss over every window (each window starts fresh). Text is
tokenized as a Hugging Face tokenizer's ``tokenizer(text)`` does, with the special tokens it
adds (the beginning-of-text token of Llama tokenizers), as the papers' code does.

* ``wikitext2`` (GPTQ, SparseGPT, Wanda, ARMOR): the raw WikiText-2 test split
  (``wikitext-2-raw-v1``), its rows joined by blank lines (``"\\n\\n".join``), tokenized
  whole, cut into consecutive non-overlapping windows (the remainder dropped).
* ``c4`` (GPTQ and SparseGPT, ``get_c4`` of their ``datautils.py``): the first validation
  shard of C4 (``en/c4-validation.00000-of-00008.json.gz``); Python's ``random.seed(0)``, then
  256 times: draw documents (``random.randint(0, n - 1)``) until one has at least ``seqlen``
  tokens, and take the window at ``random.randint(0, len - seqlen - 1)``.
* ``c4_wanda`` (Wanda's ``lib/data.py``; GPTQ's ``c4_new``): the first 1100 documents of the
  same shard joined by single spaces, tokenized whole, its first 256 windows.

The corpora come from the Hugging Face hub through ``datasets`` (``Salesforce/wikitext``,
``allenai/c4``; a network or a filled cache), or offline from a local directory in the hub
repository's layout: ``wikitext-2-raw-v1/test-*.parquet`` and
``en/c4-validation.00000-of-00008.json.gz`` (json, jsonl, parquet or txt files: rows with a
``text`` field; a txt file's lines are WikiText rows, and a whole txt file is one C4 document).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from armor_jax.errors import InputError

PROTOCOLS = ("wikitext2", "c4", "c4_wanda")
N_WINDOWS = 256                 # the C4 protocols' window count
C4_DOCS = 1100                  # documents the Wanda protocol joins
_HUB = {"wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", None, "test"),
        "c4": ("allenai/c4", None, "en/c4-validation.00000-of-00008.json.gz", "validation")}
_LOCAL = {"wikitext2": ("wikitext-2-raw-v1/test-*", "wikitext-2-raw-v1/*test*", "*test*"),
          "c4": ("en/c4-validation.00000-of-00008.*", "en/c4-validation*", "*validation*")}
_SUFFIXES = (".parquet", ".json", ".jsonl", ".json.gz", ".jsonl.gz", ".txt")


def _corpus(name: str) -> str:
  return "wikitext2" if name == "wikitext2" else "c4"


def local_files(name: str, data_dir: str | Path) -> list[Path]:
  """The files of protocol ``name``'s corpus under ``data_dir`` (hub layout first, then any
  file whose name says test / validation); raises InputError naming what was looked for."""
  root = Path(data_dir)
  if not root.is_dir():
    raise InputError(f"{root}: no such directory of evaluation corpora")
  for pattern in _LOCAL[_corpus(name)]:
    files = sorted(f for f in root.glob(pattern)
                   if f.is_file() and any(f.name.endswith(s) for s in _SUFFIXES))
    if files:
      return files
  raise InputError(f"{root}: no {_corpus(name)} file ({_LOCAL[_corpus(name)][0]} with one of "
                   f"{', '.join(_SUFFIXES)})")


def documents(name: str, data_dir: str | Path | None = None) -> list[str]:
  """The rows of protocol ``name``'s corpus, in the hub's order: from ``data_dir`` (local
  files) or, when it is None, from the hub through ``datasets``."""
  import datasets  # pylint: disable=import-outside-toplevel
  corpus = _corpus(name)
  if data_dir is None:
    repo, config, files, split = _HUB[corpus]
    try:
      ds = (datasets.load_dataset(repo, config, split=split) if files is None else
            datasets.load_dataset(repo, data_files={split: files}, split=split))
    except Exception as e:  # datasets raises many types for a missing network or repository
      raise InputError(f"{repo}: could not load the {corpus} corpus from the hub "
                       f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); pass a "
                       "local directory") from None
    return list(ds["text"])
  rows: list[str] = []
  for f in local_files(name, data_dir):
    if f.name.endswith(".txt"):
      content = f.read_text(encoding="utf-8")
      rows += content.splitlines(keepends=True) if corpus == "wikitext2" else [content]
      continue
    kind = "parquet" if f.name.endswith(".parquet") else "json"
    try:
      ds = datasets.load_dataset(kind, data_files=str(f), split="train")
    except Exception as e:
      raise InputError(f"{f}: not a readable {kind} file ({str(e).splitlines()[0]})") from None
    if "text" not in ds.column_names:
      raise InputError(f"{f}: no 'text' column (columns: {', '.join(ds.column_names)})")
    rows += list(ds["text"])
  return rows


def windows(name: str, encode, seqlen: int, data_dir: str | Path | None = None,
            docs: list[str] | None = None) -> np.ndarray:
  """(w, seqlen) int32 evaluation windows of protocol ``name`` (see the module docstring);
  ``encode(text)`` is the tokenizer with its special tokens (``Tokenizer.encode_specials``);
  ``docs`` overrides the corpus (its rows)."""
  if name not in PROTOCOLS:
    raise InputError(f"{name!r}: not a perplexity protocol; allowed: {', '.join(PROTOCOLS)}")
  docs = documents(name, data_dir) if docs is None else docs
  if name == "c4":
    return _sampled(docs, encode, seqlen)
  joined = "\n\n".join(docs) if name == "wikitext2" else " ".join(docs[:C4_DOCS])
  ids = np.asarray(encode(joined), np.int32)
  if name == "c4_wanda":
    ids = ids[:N_WINDOWS * seqlen]
  n = len(ids) // seqlen
  if n == 0:
    raise InputError(f"{name}: {len(ids)} tokens, fewer than one window of {seqlen}")
  return ids[:n * seqlen].reshape(n, seqlen)


def _sampled(docs: list[str], encode, seqlen: int, max_draws: int = 100_000) -> np.ndarray:
  """GPTQ / SparseGPT's C4 windows: seeded draws of documents of >= seqlen tokens."""
  rng = random.Random(0)                    # the state random.seed(0) sets
  out, draws = [], 0
  for _ in range(N_WINDOWS):
    while True:
      draws += 1
      if draws > max_draws:
        raise InputError(f"c4: {max_draws} documents drawn and too few have {seqlen} tokens")
      ids = encode(docs[rng.randint(0, len(docs) - 1)])
      if len(ids) >= seqlen:
        break
    if len(ids) == seqlen:      # Python's randint(0, -1) raises here in the reference code
      raise InputError(f"c4: a drawn document has exactly seqlen={seqlen} tokens, where the "
                       "reference code has no window to draw")
    start = rng.randint(0, len(ids) - seqlen - 1)
    out.append(np.asarray(ids[start:start + seqlen], np.int32))
  return np.stack(out)
