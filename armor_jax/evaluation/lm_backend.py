"""The ``armor_jax`` model of lm-evaluation-harness (Gao et al., "A framework for few-shot
language model evaluation", EleutherAI, ``lm-eval`` on PyPI).

:class:`ArmorLM` answers lm-eval's three request types for every model the project loads
(a Hugging Face directory or hub id, a GGUF file, the embedded SmolLM2 default, and the
compressed 2:4 checkpoint, whose linears run through :mod:`armor_jax.kernels`' dispatch):

* ``loglikelihood``: the summed log-probability of a continuation after a context, and
  whether it is the greedy continuation;
* ``loglikelihood_rolling``: the log-likelihood of a whole text over lm-eval's own rolling
  windows (:func:`lm_eval.utils.get_rolling_token_windows`) of the model's maximum length;
* ``generate_until``: greedy generation up to the task's stop sequences.

It follows the conventions of lm-eval's Hugging Face backend (``HFLM``), so its numbers sit
next to ones made there: a context's trailing whitespace moves to the continuation, and the
continuation's ids are the whole pair's past the context's own (:func:`encode_pair`); an empty
context becomes the prefix token (the beginning-of-text token, else the end-of-text one);
the beginning-of-text token is added only where the tokenizer adds one (``add_bos_token``
overrides); sequences longer than the maximum length lose tokens on the left. Requests are
sorted by length and run in batches padded on the right to a multiple of ``length_bucket``
tokens: attention is causal, so padding after a sequence changes none of its logits, and
one compiled program serves every batch of a bucket. Log-likelihoods are summed in float32
from float32 logits, with matmuls at ``precision`` (``highest`` by default: full float32,
where XLA's GPU default is lower).

The model is held whole in memory (float32, or the compressed checkpoint as saved); each
generated token is one forward pass over the padded batch (no key/value cache).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.models.utils import postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from armor_jax.errors import InputError
from armor_jax.model import llama
from armor_jax.model.loaders import CheckpointError, Model

PRECISIONS = ("highest", "high", "default")


def load_for_eval(spec: str) -> Model:
  """The model named by ``spec``: a compressed armor_jax checkpoint as saved (its linears
  compressed), any other model the loaders read in float32."""
  from armor_jax.model import checkpoint, loaders  # pylint: disable=import-outside-toplevel
  if checkpoint.is_compressed(spec):
    return checkpoint.load(spec)
  return loaders.load_model(spec)


def encode_pair(encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """(context ids, continuation ids) of a non-empty ``context``: its trailing whitespace
  moves to the continuation; the context's ids are its own encoding, the continuation's
  are the whole's encoding past the context's length (so the two may not join up where a
  token spans the boundary, as in lm-eval's Hugging Face backend)."""
  stripped = context.rstrip()
  continuation = context[len(stripped):] + continuation
  whole = list(encode(stripped + continuation))
  ctx = list(encode(stripped))
  return ctx, whole[len(ctx):]


@functools.partial(jax.jit, static_argnames=("cfg", "precision", "chunk"))
def _score(params, tokens, targets, weights, cfg, precision, chunk):
  """Per row: the sum over ``weights`` of log p(targets | tokens before) and whether every
  weighted target is the argmax. The head runs ``chunk`` positions at a time, so only
  (batch, chunk, vocab) logits are held."""
  with jax.default_matmul_precision(precision):
    x = llama.states(params, tokens, cfg)
    b, t, h = x.shape

    def one(part):
      xc, tc, wc = part
      logits = llama.head(params, xc, cfg)
      lp = jax.nn.log_softmax(logits, -1)
      tok = jnp.take_along_axis(lp, tc[..., None], -1)[..., 0]
      greedy = jnp.argmax(logits, -1) == tc
      return jnp.sum(jnp.where(wc, tok, 0), -1), jnp.all(greedy | ~wc, -1)

    split = lambda a: jnp.moveaxis(a.reshape(b, t // chunk, chunk, *a.shape[2:]), 1, 0)
    sums, greedy = jax.lax.map(one, (split(x), split(targets), split(weights)))
  return jnp.sum(sums, 0), jnp.all(greedy, 0)


@functools.partial(jax.jit, static_argnames=("cfg", "precision"))
def _next_tokens(params, tokens, lengths, cfg, precision):
  """Greedy next token of each row of ``tokens`` (right-padded) after its first ``lengths``."""
  with jax.default_matmul_precision(precision):
    x = llama.states(params, tokens, cfg)
    last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], 1)
    return jnp.argmax(llama.head(params, last, cfg)[:, 0], -1)


class Encoding:
  """Text to the token ids of lm-eval's requests, by the Hugging Face backend's conventions
  (see the module docstring), for a :class:`armor_jax.model.loaders.Tokenizer`."""

  def __init__(self, tokenizer, add_bos_token: bool | None = None,
               prefix_token_id: int | None = None, source: str = "the model"):
    self.tokenizer, self.add_bos_token = tokenizer, add_bos_token
    self._prefix, self._source = prefix_token_id, source

  @property
  def eot_token_id(self) -> int | None:
    return self.tokenizer.eos_id

  @property
  def prefix_token_id(self) -> int:
    """The token an empty context or a rolling window starts from."""
    for t in (self._prefix, self.tokenizer.bos_id, self.tokenizer.eos_id):
      if t is not None:
        return t
    raise CheckpointError(f"{self._source}: the tokenizer has neither a beginning- nor an "
                          "end-of-text token to start an empty context from; pass "
                          "prefix_token_id")

  def encode(self, text: str) -> list[int]:
    """Ids of ``text``: the beginning-of-text token where the tokenizer (or
    ``add_bos_token``) adds one, and no special token when the text already starts with
    the prefix token's text."""
    add = self.add_bos_token
    try:
      if text.startswith(self.tokenizer.decode([self.prefix_token_id])):
        add = False
    except CheckpointError:                 # no prefix token: nothing to compare with
      pass
    if add is None:
      return self.tokenizer.encode_specials(text)
    ids = [int(i) for i in self.tokenizer.encode(text)]
    if add and self.tokenizer.bos_id is not None:
      ids = [self.tokenizer.bos_id] + ids
    return ids

  def request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The (context, continuation) ids of one loglikelihood request."""
    if context == "":
      cont = [int(i) for i in self.tokenizer.encode(continuation)]
      prefix = self.prefix_token_id
      return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    return encode_pair(self.encode, context, continuation)


class ArmorLM(LM):
  """lm-eval's ``armor_jax`` model (see the module docstring).

  Args:
    pretrained: what the loaders read: ``smollm2``, a ``.gguf`` file, a Hugging Face
      directory or hub id, or a compressed armor_jax checkpoint directory.
    batch_size: requests per forward pass (``auto`` is read as 8).
    max_length: the longest sequence a forward pass sees (default: the model's
      ``max_position_embeddings``).
    max_gen_toks: tokens generated when a task does not say.
    precision: float32 matmul precision: highest, high or default.
    add_bos_token: prepend the beginning-of-text token (None: as the tokenizer does).
    prefix_token_id: the token an empty context or a rolling window starts from (None: the
      beginning-of-text token, else the end-of-text one).
    length_bucket: batches are padded to a multiple of this many tokens.
    model: a model already in memory (``pretrained`` is then only its name).
  """

  def __init__(self, pretrained: str = "smollm2", batch_size: int | str = 8,
               max_length: int | None = None, max_gen_toks: int = 256,
               precision: str = "highest", add_bos_token: bool | None = None,
               prefix_token_id: int | None = None, length_bucket: int = 64,
               model: Model | None = None, **unused: Any):
    super().__init__()
    del unused                     # device, max_batch_size, ...: lm-eval passes them to all
    if precision not in PRECISIONS:
      raise InputError(f"precision={precision!r}; allowed: {', '.join(PRECISIONS)}")
    self.model = model if model is not None else load_for_eval(str(pretrained))
    self.tokenizer = self.model.tokenizer
    if self.tokenizer is None:
      raise CheckpointError(f"{pretrained}: the model has no tokenizer")
    self.cfg = self.model.cfg
    self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
    self.max_length = int(max_length) if max_length else int(self.cfg.max_position)
    self.max_gen_toks = int(max_gen_toks)
    self.precision = precision
    self.length_bucket = int(length_bucket)
    self.encoding = Encoding(self.tokenizer, _as_bool(add_bos_token),
                             None if prefix_token_id in (None, "") else int(prefix_token_id),
                             self.model.source)
    self.params = jax.device_put(self.model.params)

  @property
  def eot_token_id(self) -> int | None:
    return self.encoding.eot_token_id

  @property
  def prefix_token_id(self) -> int:
    return self.encoding.prefix_token_id

  # -- scoring --------------------------------------------------------------------------------

  def _bucket(self, n: int) -> int:
    return min(-(-n // self.length_bucket) * self.length_bucket, max(self.max_length, n))

  def score_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(log-likelihood, is greedy) of each (context ids, continuation ids), truncated on the
    left to the maximum length, longest first in batches."""
    for ctx, cont in pairs:
      if not ctx or not cont:
        raise InputError("a loglikelihood request has an empty context or continuation "
                         "after tokenizing")
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    for start in range(0, len(order), self.batch_size):
      idx = order[start:start + self.batch_size]
      full = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1):] for i in idx]
      t = self._bucket(max(len(f) - 1 for f in full))
      chunk = self.length_bucket if t % self.length_bucket == 0 else t
      tokens = np.zeros((self.batch_size, t), np.int32)
      targets = np.zeros((self.batch_size, t), np.int32)
      weights = np.zeros((self.batch_size, t), bool)
      for r, (i, f) in enumerate(zip(idx, full)):
        n = len(f) - 1
        tokens[r, :n], targets[r, :n] = f[:-1], f[1:]
        weights[r, n - len(pairs[i][1]):n] = True
      sums, greedy = _score(self.params, tokens, targets, weights, self.cfg, self.precision,
                            chunk)
      sums, greedy = np.asarray(sums), np.asarray(greedy)
      for r, i in enumerate(idx):
        out[i] = (float(sums[r]), bool(greedy[r]))
    return out                     # type: ignore[return-value]

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    return self.score_tokens([self.encoding.request(*req.args) for req in requests])

  def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows of ``text`` (context, continuation ids)."""
    return [make_disjoint_window(w) for w in get_rolling_token_windows(
        token_list=self.encoding.encode(text), prefix_token=self.prefix_token_id,
        max_seq_len=self.max_length, context_len=1)]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows = [self.rolling_windows(req.args[0]) for req in requests]
    flat = self.score_tokens([w for ws in windows for w in ws])
    out, k = [], 0
    for ws in windows:
      out.append(float(sum(ll for ll, _ in flat[k:k + len(ws)])))
      k += len(ws)
    return out

  # -- generation -----------------------------------------------------------------------------

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    eos = (self.tokenizer.decode([self.eot_token_id]) if self.eot_token_id is not None
           else None)
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
    out: list[str] = [""] * len(requests)
    for members in groups.values():
      kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
      until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
      n_new = int(kwargs.pop("max_gen_toks"))
      if kwargs.get("do_sample"):
        raise InputError("generate_until: the armor_jax model generates greedily; the task "
                         f"asks for sampling ({requests[members[0]].args[1]})")
      if n_new >= self.max_length:
        raise InputError(f"generate_until: max_gen_toks={n_new} leaves no room for a context "
                         f"within max_length={self.max_length}")
      contexts = [self.encoding.encode(requests[i].args[0])[-(self.max_length - n_new):]
                  for i in members]
      order = sorted(range(len(members)), key=lambda j: -len(contexts[j]))
      for start in range(0, len(order), self.batch_size):
        rows = order[start:start + self.batch_size]
        texts = self._greedy([contexts[j] for j in rows], n_new, until)
        for j, s in zip(rows, texts):
          out[members[j]] = postprocess_generated_text(s, until, None)
    return out

  def _greedy(self, contexts: list[list[int]], n_new: int, until: list[str]) -> list[str]:
    """Greedy continuations of ``contexts`` (one batch), each stopped at the end-of-text
    token, at a stop sequence, or after ``n_new`` tokens; decoded without special tokens."""
    t = self._bucket(max(len(c) for c in contexts) + n_new)
    tokens = np.zeros((self.batch_size, t), np.int32)
    lengths = np.ones((self.batch_size,), np.int32)
    for r, c in enumerate(contexts):
      tokens[r, :len(c)], lengths[r] = c, len(c)
    new: list[list[int]] = [[] for _ in contexts]
    live = [True] * len(contexts)
    for _ in range(n_new):
      nxt = np.asarray(_next_tokens(self.params, tokens, lengths, self.cfg, self.precision))
      for r in range(len(contexts)):
        if not live[r]:
          continue
        tok = int(nxt[r])
        if tok == self.eot_token_id:
          live[r] = False
          continue
        new[r].append(tok)
        tokens[r, lengths[r]] = tok
        lengths[r] += 1
        text = self.tokenizer.decode(new[r])
        if any(s and s in text for s in until):
          live[r] = False
      if not any(live):
        break
    return [self.tokenizer.tok.decode(ids, skip_special_tokens=True) for ids in new]


def _as_bool(v) -> bool | None:
  if v is None or isinstance(v, bool):
    return v
  if str(v).lower() in ("true", "1", "yes"):
    return True
  if str(v).lower() in ("false", "0", "no"):
    return False
  raise InputError(f"add_bos_token={v!r}; allowed: true, false")


def register() -> None:
  """Registers :class:`ArmorLM` with lm-eval under ``armor_jax`` (once per process)."""
  from lm_eval.api import registry  # pylint: disable=import-outside-toplevel
  if "armor_jax" not in registry.MODEL_REGISTRY:
    register_model("armor_jax")(ArmorLM)


