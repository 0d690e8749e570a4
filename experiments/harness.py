"""What every run shares: the common config, the registry, and the run context.

An experiment is a module with a frozen ``Config`` schema and a function
``run(cfg, ctx) -> headline`` that returns a flat mapping of named numbers.
It may define ``preflight(cfg)``, run by the entry point before any directory
is made, to check the files its config names (raising ``ConfigError`` or
``InputError``; both print one line and exit with code 2).
A piece of a run that must have a process of its own (a peak-memory measurement)
runs through :func:`in_child`. It writes its curves and figures through ``ctx``
(atomically, into the run directory) and may put non-numeric facts in ``ctx.info`` (the instance it ran
on, for example). :func:`execute` does the rest: validation, resume, timing,
wandb, and the final ``results.json``.

The schemas are the configs: :func:`register_configs` stores each schema's
defaults in Hydra's ConfigStore (group ``experiment``, one entry per
experiment; group ``logger``; the common keys as ``run_keys``), so that
``conf/`` holds only Hydra's own settings, launchers and ready-made sweeps.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from experiments import io
from experiments.logger import Logger, LoggerConfig
from experiments.schema import ConfigError, as_container, ge, param, validate

# name -> module; each module defines `Config`, `run` and a docstring.
EXPERIMENTS: dict[str, str] = {
    "tour": "experiments.tour",
    "erasure_bandit": "experiments.erasure_bandit",
    "erasure_multi_agent": "experiments.erasure_multi_agent",
    "bench_erasure": "experiments.bench_erasure",
    "collab_bandit": "experiments.collab_bandit",
    "bench_collab": "experiments.bench_collab",
    "camdp_sample_complexity": "experiments.camdp_sample_complexity",
    "bench_camdp": "experiments.bench_camdp",
    "bench_armor_layer": "experiments.bench_armor_layer",
    "linear_cmdp_sample_complexity": "experiments.linear_cmdp_sample_complexity",
    "linear_cmdp_hypercube": "experiments.linear_cmdp_hypercube",
    "bench_linear_cmdp": "experiments.bench_linear_cmdp",
    "armor_prune": "experiments.armor_prune",
    "armor_assemble": "experiments.armor_assemble",
    "bench_armor_model": "experiments.bench_armor_model",
    "bench_armor_scale": "experiments.bench_armor_scale",
    "bench_kernels": "experiments.bench_kernels",
    "bench_mgpu_tiles": "experiments.bench_mgpu_tiles",
    "zero_shot": "experiments.zero_shot",
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Keys every experiment has, at the top level of the config."""
  seed: int = param(0, "root PRNG seed; every random draw of the run derives from it",
                    check=ge(0))
  resume: bool = param(True, "skip the run if its results.json is complete for the same config")
  progress: bool = param(True, "show progress bars on stderr")
  logger: LoggerConfig = param(LoggerConfig(), "wandb settings (config group `logger`)")


class Experiment(NamedTuple):
  name: str
  schema: type
  run: Callable[[Any, "RunContext"], Mapping[str, float]]
  doc: str
  preflight: Callable[[Any], None] | None = None


class RunError(RuntimeError):
  """A run cannot give a result to trust (e.g. a NaN where a number is due): one line,
  exit code 1, no results.json."""


def get_experiment(name: str) -> Experiment:
  if name not in EXPERIMENTS:
    raise ConfigError("experiment", "unknown experiment; allowed: " + ", ".join(EXPERIMENTS))
  module = importlib.import_module(EXPERIMENTS[name])
  return Experiment(name, module.Config, module.run, (module.__doc__ or "").strip(),
                    getattr(module, "preflight", None))


LOGGER_MODES = ("disabled", "offline", "online")


def register_configs() -> None:
  """Stores every schema's defaults in Hydra's ConfigStore: each experiment in group
  ``experiment`` (keys at the top level), the wandb presets in group ``logger``, and
  ``run_keys`` (seed, resume, progress), which the root config's defaults list names."""
  from hydra.core.config_store import ConfigStore  # pylint: disable=import-outside-toplevel
  store = ConfigStore.instance()
  run_keys = as_container(RunConfig())
  logger = run_keys.pop("logger")
  store.store(name="run_keys", node=run_keys)
  for mode in LOGGER_MODES:
    store.store(group="logger", name=mode, node={**logger, "mode": mode})
  for name in EXPERIMENTS:
    store.store(group="experiment", name=name, package="_global_",
                node=as_container(get_experiment(name).schema()))


_validated: dict[tuple[str, str], tuple[RunConfig, Any, bool]] = {}


def split_and_validate(name: str, values: Mapping[str, Any],
                       preflight: bool = False) -> tuple[RunConfig, Any]:
  """Validates a resolved config (without its `hydra` node) for experiment ``name``; with
  ``preflight``, also runs the experiment's checks of the files its config names.

  A config is validated (and preflighted) once per process: the entry point checks every
  run of a command line before Hydra starts, and the run itself reuses that result.
  """
  memo = (name, json.dumps(values, sort_keys=True, default=repr))
  if memo in _validated and (_validated[memo][2] or not preflight):
    return _validated[memo][:2]
  exp = get_experiment(name)
  common = {f.name for f in dataclasses.fields(RunConfig)}
  run_cfg = validate(RunConfig, {k: v for k, v in values.items() if k in common})
  exp_cfg = validate(exp.schema, {k: v for k, v in values.items() if k not in common})
  if preflight and exp.preflight is not None:
    exp.preflight(exp_cfg)
  _validated[memo] = (run_cfg, exp_cfg, preflight)
  return run_cfg, exp_cfg


@dataclasses.dataclass
class RunContext:
  """Where an experiment writes, and how it reports progress."""
  out_dir: Path
  seed: int
  progress: bool = False
  logger: Logger | None = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  files: list[str] = dataclasses.field(default_factory=list)
  root_dir: Path | None = None  # the run directory, when this context is a child of it

  def path(self, name: str) -> Path:
    return self.out_dir / name

  def write_csv(self, name: str, columns: Mapping[str, Any]) -> Path:
    path = self.path(name)
    io.write_csv(path, columns)
    self.files.append(str(path.relative_to(self._root())))
    return path

  def save_figure(self, fig, name: str) -> Path:
    path = self.path(name)
    io.save_figure(fig, path)
    self.files.append(str(path.relative_to(self._root())))
    if self.logger is not None:
      self.logger.log_image(path.stem, path)
    return path

  def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
    if self.logger is not None:
      self.logger.log(metrics, step)

  def child(self, name: str) -> "RunContext":
    """A context writing into a subdirectory (used by the tour)."""
    sub = RunContext(self.out_dir / name, self.seed, self.progress, self.logger,
                     info={}, files=self.files, root_dir=self._root())
    sub.out_dir.mkdir(parents=True, exist_ok=True)
    return sub

  def _root(self) -> Path:
    return self.root_dir or self.out_dir

  def say(self, msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def execute(name: str, resolved: Mapping[str, Any], out_dir: Path) -> dict | None:
  """Runs experiment ``name`` with the resolved config into ``out_dir``.

  Returns the results dict, or None if the run was skipped because a complete
  results.json for the same config already exists (``resume=true``).
  """
  values = {k: v for k, v in resolved.items() if k != "hydra"}
  run_cfg, exp_cfg = split_and_validate(name, values)
  exp = get_experiment(name)
  digest = io.config_hash(values)
  previous = io.read_complete_results(out_dir)
  if run_cfg.resume and previous is not None and previous.get("config_hash") == digest:
    print(f"[{name}] {out_dir}: complete results.json for this config; skipped "
          "(resume=false to redo)", file=sys.stderr)
    return None
  out_dir.mkdir(parents=True, exist_ok=True)
  io.clear_temporaries(out_dir)   # torn files of a killed run; the run writes each anew
  # A stale results.json (other config, or a redo) must not survive a crash of this run.
  (out_dir / io.RESULTS).unlink(missing_ok=True)
  logger = Logger(run_cfg.logger, out_dir, name, values)
  ctx = RunContext(out_dir, run_cfg.seed, run_cfg.progress, logger)
  started = time.time()
  headline = dict(exp.run(exp_cfg, ctx))
  wall = time.time() - started
  bad = [k for k, v in headline.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
  if bad:
    raise TypeError(f"headline values must be numbers; not: {bad}")
  results = {
      "experiment": name,
      "headline": headline,
      **({"info": ctx.info} if ctx.info else {}),
      "config": values,
      "config_hash": digest,
      "seed": run_cfg.seed,
      "versions": io.versions(),
      "wall_time_s": wall,
      "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
      "files": sorted(set(ctx.files)),
      "complete": True,
  }
  io.write_json(out_dir / io.RESULTS, results)
  logger.finish(headline)
  width = max((len(k) for k in headline), default=0)
  lines = [f"  {k:<{width}}  {v:.6g}" for k, v in headline.items()]
  print(f"[{name}] done in {wall:.1f}s -> {out_dir / io.RESULTS}\n" + "\n".join(lines),
        file=sys.stderr)
  return results


def in_child(fn: Callable[..., Mapping[str, Any]], kwargs: Mapping[str, Any], *,
             timeout_s: float | None = None) -> dict:
  """``fn(**kwargs)`` run in a fresh Python process; its result.

  The one supported way to run a piece of an experiment in a process of its own (for
  measurements that must be the process's: peak resident memory, a cold start). ``fn``
  is a module-level function of an importable module; ``kwargs`` and its result are
  JSON. The child inherits the environment (XLA flags included); its stderr (progress)
  passes through. A child that fails or runs past ``timeout_s`` raises :class:`RunError`.
  """
  target = f"{fn.__module__}:{fn.__qualname__}"
  with tempfile.TemporaryDirectory() as tmp:
    args, out = Path(tmp) / "args.json", Path(tmp) / "result.json"
    args.write_text(json.dumps(dict(kwargs)))
    try:
      proc = subprocess.run([sys.executable, "-m", "experiments.harness", "--child", target,
                             str(args), str(out)], timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
      raise RunError(f"{target} in a child process ran past {timeout_s:g} s") from None
    if proc.returncode != 0 or not out.exists():
      raise RunError(f"{target} in a child process exited with code {proc.returncode}")
    return json.loads(out.read_text())


def _child_main(target: str, args: str, out: str) -> None:
  module, name = target.split(":")
  result = getattr(importlib.import_module(module), name)(**json.loads(Path(args).read_text()))
  io.write_json(Path(out), dict(result))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"] and len(sys.argv) == 5:
  _child_main(*sys.argv[2:])
