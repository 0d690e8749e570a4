"""Layer-wise pruning of a whole Llama-family model, block by block, resumable.

For every decoder block ``i`` in order:

1. run the block on the calibration hidden states ``X_i`` (batch by batch)
   and accumulate the statistics of the inputs of its linears (the mean
   squares ``h`` and the full ``X^T X``; q, k, v share one input, gate and up
   another);
2. prune its seven linears (q, k, v, o, gate, up, down) with the chosen method
   (:data:`METHODS`), each from the statistics of its own input;
3. compute ``X_{i+1}``: in ``sequential`` mode through the *pruned* block (as
   SparseGPT and Wanda do, so later blocks see the errors of earlier ones), in
   ``dense`` mode through the dense block (ARMOR's official code: statistics
   of the dense model only).

Only one block's activations are alive at a time (the hidden states of the
calibration set, plus the inputs of one block's linears batch by batch), so
peak memory does not grow with depth. Embeddings, norms and the head stay
dense.

With a checkpoint directory, every finished block is written there (its
pruned linears, its per-layer records, a digest of its dense weights and the
hidden states after it; see :class:`Checkpoint`) and an interrupted run
resumes after the last finished block whose weights are unchanged. Each
layer's PRNG key is ``fold_in(fold_in(key, block), linear)`` and the saved
states are exact, so a resumed run returns, bit for bit, what an
uninterrupted one would, wherever it was killed. A block whose weights hold a
NaN or Inf stops the run with :class:`~armor_jax.errors.InputError` before
any work on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from armor_jax.errors import InputError, check_settings, nonfinite
from armor_jax.model import checkpoint, llama
from armor_jax.model.llama import INPUT_OF, LINEARS, LlamaConfig
from armor_jax.solver import armor as armor_lib, baselines, calibration, layer as layer_lib

METHODS = ("magnitude", "wanda", "sparsegpt", "nowag_p", "armor")
MODES = ("sequential", "dense")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  """How to prune a model.

  Attributes:
    method: one of :data:`METHODS`.
    mode: ``sequential`` (inputs through the already-pruned blocks) or ``dense``.
    armor: ARMOR's settings (method ``armor`` only).
    sparsegpt_damp: SparseGPT's dampening (fraction of the mean diagonal).
    sparsegpt_block: SparseGPT's lazy-update block width.
    batch: calibration sequences per forward call.
  """
  method: str = "armor"
  mode: str = "sequential"
  armor: armor_lib.ArmorConfig = armor_lib.ArmorConfig()
  sparsegpt_damp: float = 0.01
  sparsegpt_block: int = 128
  batch: int = 8

  def __post_init__(self):
    check_settings(self, (
        ("method", lambda v: v in METHODS, "one of " + ", ".join(METHODS)),
        ("mode", lambda v: v in MODES, "one of " + ", ".join(MODES)),
        ("sparsegpt_damp", lambda v: v > 0, "a number > 0"),
        ("sparsegpt_block", lambda v: v >= 4, "an integer >= 4"),
        ("batch", lambda v: v >= 1, "an integer >= 1"),
    ))

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    if self.method != "armor":
      d.pop("armor")
    if self.method != "sparsegpt":
      d.pop("sparsegpt_damp"), d.pop("sparsegpt_block")
    return d


@jax.jit(static_argnames=("cfg", "window"))
def _block_capture(block_params, x, cfg, window):
  return llama.block_forward(block_params, x, cfg, capture=True, window=window)


@jax.jit(static_argnames=("cfg", "window"))
def _block(block_params, x, cfg, window):
  return llama.block_forward(block_params, x, cfg, window=window)


def block_statistics(block_params: Mapping, states: np.ndarray, cfg: LlamaConfig,
                     batch: int, window: int | None = None) -> dict[str, calibration.Stats]:
  """Statistics ({"qkv", "o", "gate_up", "down"} -> Stats, full X^T X) of a block's inputs."""
  stats = None
  for i in range(0, states.shape[0], batch):
    _, inputs = _block_capture(block_params, jnp.asarray(states[i:i + batch]), cfg, window)
    if stats is None:
      stats = {k: calibration.init(v.shape[-1], full=True) for k, v in inputs.items()}
    for k, v in inputs.items():
      stats[k] = calibration.accumulate(stats[k], v)
  for k, s in stats.items():
    calibration.finite_or_raise(s.sum_sq, f"statistics of the {k} inputs")
  return stats


def run_block(block_params: Mapping, states: np.ndarray, cfg: LlamaConfig,
              batch: int, window: int | None = None) -> np.ndarray:
  """The block applied to hidden states (n, t, hidden), batch by batch."""
  out = [np.asarray(_block(block_params, jnp.asarray(states[i:i + batch]), cfg, window))
         for i in range(0, states.shape[0], batch)]
  return np.concatenate(out, 0)


def prune_linear(w: jax.Array, stats: calibration.Stats, pcfg: PruneConfig,
                 key: jax.Array) -> layer_lib.PrunedLayer:
  if pcfg.method == "armor":
    pl, _ = armor_lib.armor(w, stats, pcfg.armor, key=key)
    return pl
  if pcfg.method == "sparsegpt":
    return baselines.sparsegpt(w, stats, damp=pcfg.sparsegpt_damp, blocksize=pcfg.sparsegpt_block)
  return baselines.METHODS[pcfg.method](w, stats)


def _dense_block(block_params: Mapping, pruned: Mapping[str, layer_lib.PrunedLayer]) -> dict:
  """Block params with the pruned linears reconstructed as dense kernels."""
  for name, pl in pruned.items():
    block_params = llama.set_block_linear(block_params, name,
                                          {"kernel": pl.dense().astype(jnp.float32)})
  return block_params


def digest(tree: Mapping) -> str:
  """A content hash of a parameter (sub)tree: names, dtypes, shapes and bytes of its leaves."""
  h = hashlib.blake2b(digest_size=16)
  for name, x in sorted(checkpoint.flatten(tree).items()):
    a = np.ascontiguousarray(np.asarray(x))
    h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def finite_or_raise(block_params: Mapping, block: int) -> None:
  """Raises :class:`InputError` naming the first tensor of a block that holds NaN or Inf."""
  for name, x in sorted(checkpoint.flatten(block_params).items()):
    bad = nonfinite(x)
    if bad:
      raise InputError(f"block {block}: weight layers_{block}/{name} {bad}; blocks before it "
                       "are kept for a resume once the checkpoint is fixed")


# -- per-block files -------------------------------------------------------------------------------

def _write_with(path: Path, save, *args, **kwargs) -> None:
  with open(path, "wb") as f:    # a file object: numpy would append a suffix to the name
    save(f, *args, **kwargs)


class Checkpoint:
  """A per-block checkpoint directory.

  ``block_<i>.npz`` holds block i's pruned linears (compressed), ``states_<n>.npy`` the
  calibration hidden states after the first n blocks, ``progress.json`` the number of
  finished blocks, their records and a digest of each finished block's dense weights.
  Files are written in that order, each through a temporary name and an atomic rename, and
  ``progress.json`` last, so a run killed at any point leaves a directory that resumes after
  its last finished block; the superseded ``states_<n-1>.npy`` is removed only after.
  """

  def __init__(self, path: str | os.PathLike, fingerprint: Mapping[str, Any]):
    self.path = Path(path)
    self.path.mkdir(parents=True, exist_ok=True)
    for tmp in self.path.glob(".*.tmp"):     # left by a kill during a write
      tmp.unlink()
    self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

  def done(self, digest_of: Callable[[int], str], blocks: int
           ) -> tuple[int, list[dict], list[str], str]:
    """(finished blocks to reuse, at most ``blocks``, whose weights still have the recorded
    digests; their records; their digests; why none are reused: "" when nothing is there)."""
    p = self.path / "progress.json"
    if not p.exists():
      return 0, [], [], ""
    try:
      prog = json.loads(p.read_text())
    except json.JSONDecodeError:
      return 0, [], [], f"{p} is not valid JSON"
    if prog.get("fingerprint") != self.fingerprint:
      return 0, [], [], "it was written for other settings"
    done = int(prog["blocks_done"])
    n = min(done, blocks)
    missing = [f"block_{i}.npz" for i in range(n) if not (self.path / f"block_{i}.npz").exists()]
    if n < blocks and not (self.path / f"states_{n}.npy").exists():
      missing.append(f"states_{n}.npy")
    if missing:
      return 0, [], [], f"{missing[0]} is missing"
    digests = prog["digests"][:n]
    for i, d in enumerate(digests):
      if digest_of(i) != d:
        return 0, [], [], f"the weights of block {i} changed"
    return n, [r for r in prog["records"] if r["block"] < n], digests, ""

  def load_block(self, i: int) -> dict:
    with np.load(self.path / f"block_{i}.npz") as z:
      return checkpoint.unflatten({k: jnp.asarray(z[k]) for k in z.files})

  def load_states(self, n: int) -> np.ndarray:
    return np.load(self.path / f"states_{n}.npy")

  def save(self, i: int, compressed: Mapping, states: np.ndarray, records: list[dict],
           digests: list[str]) -> None:
    flat = {k: np.asarray(v) for k, v in checkpoint.flatten(compressed).items()}
    checkpoint.atomic_write(self.path / f"block_{i}.npz",
                            lambda t: _write_with(t, np.savez, **flat))
    checkpoint.atomic_write(self.path / f"states_{i + 1}.npy",
                            lambda t: _write_with(t, np.save, states))
    prog = {"fingerprint": self.fingerprint, "blocks_done": i + 1, "records": records,
            "digests": digests}
    checkpoint.atomic_write(self.path / "progress.json",
                            lambda t: t.write_text(json.dumps(prog, indent=1)))
    old = self.path / f"states_{i}.npy"
    if old.exists():
      old.unlink()


# -- the whole model -------------------------------------------------------------------------------

def prune_model(params: Mapping, cfg: LlamaConfig, calib: np.ndarray, pcfg: PruneConfig,
                key: jax.Array, checkpoint: str | os.PathLike | None = None,
                on_layer: Callable[[dict], None] | None = None,
                blocks: int | None = None,
                say: Callable[[str], None] | None = None) -> tuple[dict, dict, list[dict]]:
  """Prunes the block linears of ``params``: every block, or the first ``blocks``.

  Args:
    params: the dense model's parameters.
    cfg: its architecture.
    calib: (n, t) int32 calibration token windows.
    pcfg: method, mode and settings.
    key: PRNG key (ARMOR's official scheme samples).
    checkpoint: directory for per-block checkpoints (resume), or None.
    on_layer: called with each layer's record as soon as it is done.
    blocks: prune blocks 0 .. blocks-1 (the rest stay dense); None = all. A checkpoint
      directory serves any ``blocks``: its finished blocks are reused up to ``blocks``.
    say: called with a line when a checkpoint directory cannot be reused, and why.

  Returns:
    (dense-kernel parameters of the pruned model, for evaluation;
     compressed parameters: each block linear as :func:`llama.linear_params`;
     per-layer records: block, linear, d_out, d_in, proxy_loss, output_error, overhead,
     seconds (the solver's), block_seconds (the whole block: statistics, solver, propagation)).

  Raises:
    InputError: a block to prune holds a NaN or Inf weight (blocks finished before it are
      in the checkpoint directory).
  """
  end = cfg.num_layers if blocks is None else min(cfg.num_layers, blocks)
  block_digest = lambda i: digest(params[f"layers_{i}"])
  ck = None
  if checkpoint is not None:
    fp = {"pcfg": pcfg.as_dict(), "model": cfg.to_hf(),
          "calib_digest": digest({"calib": np.asarray(calib)}),
          "embed_digest": digest(params["embed"]),
          "key": np.asarray(jax.random.key_data(key)).tolist()}
    ck = Checkpoint(checkpoint, fp)
  start, records, digests, why = ck.done(block_digest, end) if ck else (0, [], [], "")
  if why and say is not None:
    say(f"[pipeline] {ck.path}: not resumed, {why}; starting from block 0")
  dense_params = dict(params)
  compressed = dict(params)
  for i in range(start):
    blk = ck.load_block(i)
    cblk = dict(params[f"layers_{i}"])
    pruned = {}
    for name in LINEARS:
      sub, lin = llama.linear_path(name)
      p = blk[sub][lin]
      cblk = llama.set_block_linear(cblk, name, p)
      pruned[name] = llama.pruned_from_params(p, cfg.linear_shape(name)[1])
    compressed[f"layers_{i}"] = cblk
    dense_params[f"layers_{i}"] = _dense_block(params[f"layers_{i}"], pruned)
  if start == end:
    return dense_params, compressed, records
  if start > 0:
    states = ck.load_states(start)
  else:
    states = np.concatenate([np.asarray(llama.embed(params, jnp.asarray(calib[j:j + pcfg.batch])))
                             for j in range(0, len(calib), pcfg.batch)], 0)
  for i in range(start, end):
    t_block = time.perf_counter()
    bp = params[f"layers_{i}"]
    finite_or_raise(bp, i)
    window = cfg.window(i)
    stats = block_statistics(bp, states, cfg, pcfg.batch, window)  # magnitude too: for records
    pruned, cblk, block_records = {}, dict(bp), []
    for j, name in enumerate(LINEARS):
      sub, lin = llama.linear_path(name)
      w = bp[sub][lin]["kernel"]
      st = stats[INPUT_OF[name]]
      t0 = time.perf_counter()
      pl = prune_linear(w, st, pcfg, jax.random.fold_in(jax.random.fold_in(key, i), j))
      jax.block_until_ready(pl)
      dt = time.perf_counter() - t0
      rep = layer_lib.report(pl, w, st.h, second_moment=st.second_moment)
      rec = {"block": i, "linear": name, "d_out": int(w.shape[0]), "d_in": int(w.shape[1]),
             "proxy_loss": rep["proxy_loss"], "output_error": rep["output_error"],
             "overhead": rep["overhead"], "seconds": dt}
      block_records.append(rec)
      if on_layer is not None:
        on_layer(rec)
      pruned[name] = pl
      cblk = llama.set_block_linear(cblk, name, llama.linear_params(pl))
    dblk = _dense_block(bp, pruned)
    states = run_block(dblk if pcfg.mode == "sequential" else bp, states, cfg, pcfg.batch, window)
    block_seconds = time.perf_counter() - t_block
    records = records + [dict(r, block_seconds=block_seconds) for r in block_records]
    compressed[f"layers_{i}"] = cblk
    dense_params[f"layers_{i}"] = dblk
    if ck is not None:
      digests.append(block_digest(i))
      ck.save(i, {k: v for k, v in cblk.items() if k in ("attn", "mlp")}, states, records,
              digests)
  return dense_params, compressed, records


def sparsity_check(compressed: Mapping, cfg: LlamaConfig) -> float:
  """Fraction of zeros over every block linear (0.5 for a 2:4 model), from the masks."""
  kept = total = 0
  for i in range(cfg.num_layers):
    for name in LINEARS:
      p = llama.get_linear(compressed, i, name)
      d_out, d_in = cfg.linear_shape(name)
      if "values" in p:
        mask = llama.pruned_from_params(p, d_in).mask()
        kept += int(np.asarray(mask).sum())
      else:
        kept += d_out * d_in
      total += d_out * d_in
  return 1.0 - kept / total
