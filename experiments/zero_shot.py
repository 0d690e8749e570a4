"""Zero-shot (or few-shot) task accuracy of a model through lm-evaluation-harness.

Runs ``lm_eval.simple_evaluate`` with the project's ``armor_jax`` model
(:class:`armor_jax.evaluation.lm_backend.ArmorLM`) on ``tasks``: lm-eval's own tasks
(``arc_easy``, ``hellaswag``, ...; their data comes from the Hugging Face hub through
``datasets``, so they need a network or a filled cache) and any task YAML under
``include_path``. ``model`` is anything the loaders read, the compressed 2:4 checkpoint
included. The default runs offline: SmolLM2-135M on the 22-item task shipped with the
tests (``tests/data/tiny_mc``; run from the repository root).

Before any work the model's headers are checked, every task name is looked up, and each
task is built (its data read): an unknown task, a missing data file or a path that is not
a model is one line, exit code 2.

Headline: ``acc_<task>`` and ``acc_norm_<task>`` where the task reports them, with
``acc_stderr_<task>`` / ``acc_norm_stderr_<task>`` (lm-eval's standard errors), and
``seconds`` (the evaluation's wall time, loading excluded). ``tasks.csv`` holds every
metric lm-eval reports; ``accuracy.png`` the accuracies with two standard errors.

    python -m experiments.main experiment=zero_shot
    python -m experiments.main experiment=zero_shot model=DIR tasks=[arc_easy,piqa] include_path=
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

from experiments.schema import Check, ConfigError, InputError, each, ge, one_of, param

DEFAULT_INCLUDE = "tests/data/tiny_mc"


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = param("smollm2", "smollm2, a .gguf file, a Hugging Face directory or hub id, or "
                     "a compressed armor_jax checkpoint directory")
  tasks: tuple[str, ...] = param(("armor_tiny_mc",), "lm-eval task or group names",
                                 check=each(Check(lambda v: isinstance(v, str) and len(v) > 0,
                                                  "a task name")))
  include_path: str = param(DEFAULT_INCLUDE, "a directory of extra task YAMLs ('' for none)")
  num_fewshot: int = param(0, "examples in each prompt", check=ge(0))
  limit: int = param(0, "documents per task (0: all)", check=ge(0))
  batch_size: int = param(8, "requests per forward pass", check=ge(1))
  max_length: int = param(0, "longest sequence (0: the model's context)", check=ge(0))
  precision: str = param("highest", "float32 matmul precision of the log-likelihoods",
                         check=one_of("highest", "high", "default"))
  length_bucket: int = param(64, "batches are padded to a multiple of this many tokens",
                             check=ge(1))


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str):
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  if include_path and not os.path.isdir(include_path):
    raise InputError(f"include_path={include_path}: no such directory")
  return TaskManager(include_path=include_path or None)


_LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def _local_data(entry) -> bool:
  """Whether a task reads local data files (a file builder or an existing path), which can be
  checked without a network."""
  cfg = getattr(entry, "cfg", None) or {}
  path = cfg.get("dataset_path")
  return isinstance(path, str) and (path in _LOCAL_BUILDERS or os.path.exists(path))


def check_tasks(tasks, include_path: str) -> None:
  """Each task name is known to lm-eval (with ``include_path``), and the data files of a task
  that reads local files can be read (a hub dataset is fetched when the run starts)."""
  tm = task_manager(include_path)
  known = set(tm.all_tasks)
  for name in tasks:
    if name not in known:
      raise ConfigError("tasks", f"unknown task {name!r}: not one of lm-eval's tasks or groups"
                        + (f" nor under include_path={include_path}" if include_path else "")
                        + " (`armor-lm-eval ls tasks` lists them)")
  for name in tasks:
    if not _local_data(tm.task_index.get(name)):
      continue
    try:
      tm.load([name])
    except (FileNotFoundError, OSError, ValueError) as e:
      raise InputError(f"task {name!r}: its data cannot be read ({str(e).splitlines()[0]})") \
          from None


def preflight(cfg: Config) -> None:
  """The model's headers (a path that is not a model is refused), the task names and their
  data, before any work."""
  from armor_jax.errors import InputError as LibInputError  # pylint: disable=import-outside-toplevel
  from armor_jax.model import loaders  # pylint: disable=import-outside-toplevel
  try:
    header = loaders.inspect(cfg.model)
  except (LibInputError, FileNotFoundError) as e:
    raise InputError(str(e)) from None
  if header.tokenizer is None:
    raise InputError(f"{header.source}: the model has no tokenizer (tokenizer.json)")
  check_tasks(cfg.tasks, cfg.include_path)


def headline_of(results: dict) -> dict[str, float]:
  """``acc_<task>``, ``acc_norm_<task>`` and their ``_stderr`` from simple_evaluate's
  results (lm-eval keys its metrics ``<metric>,<filter>``)."""
  out = {}
  for task, metrics in results["results"].items():
    for key, value in metrics.items():
      metric, _, _ = key.partition(",")
      if metric in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr") and \
          isinstance(value, (int, float)):
        out[f"{metric}_{task}"] = float(value)
  return out


def evaluate(lm, tasks, include_path: str, num_fewshot: int, limit: int, seed: int,
             ) -> tuple[dict[str, float], dict[str, list], dict]:
  """``simple_evaluate`` of ``lm`` on ``tasks``: (headline of :func:`headline_of` plus
  ``seconds``, every numeric metric as CSV columns, lm-eval's results)."""
  import lm_eval  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  try:
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=num_fewshot or None, limit=limit or None,
        task_manager=task_manager(include_path), random_seed=seed, numpy_random_seed=seed,
        fewshot_random_seed=seed, log_samples=False, verbosity="WARNING")
  except OSError as e:       # a hub dataset without a network (datasets' ConnectionError), ...
    raise InputError(f"tasks {', '.join(tasks)}: a dataset could not be read "
                     f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); hub "
                     "datasets need a network or a filled datasets cache") from None
  headline = headline_of(results)
  headline["seconds"] = time.perf_counter() - t0
  rows: dict[str, list] = {"task": [], "metric": [], "value": []}
  for task, metrics in results["results"].items():
    for key, value in metrics.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        rows["task"].append(task)
        rows["metric"].append(key)
        rows["value"].append(float(value))
  return headline, rows, results


def accuracies(headline: dict[str, float]) -> dict[str, float]:
  """task -> acc of a :func:`headline_of` dict."""
  return {k[len("acc_"):]: v for k, v in headline.items()
          if k.startswith("acc_") and not k.startswith(("acc_norm", "acc_stderr"))}


def run(cfg: Config, ctx) -> dict:
  from armor_jax.evaluation import lm_backend  # pylint: disable=import-outside-toplevel
  from experiments import io  # pylint: disable=import-outside-toplevel
  lm_backend.register()
  t0 = time.perf_counter()
  lm = lm_backend.ArmorLM(pretrained=cfg.model, batch_size=cfg.batch_size,
                          max_length=cfg.max_length or None, precision=cfg.precision,
                          length_bucket=cfg.length_bucket)
  ctx.say(f"[zero_shot] {cfg.model}: loaded in {time.perf_counter() - t0:.1f} s; tasks "
          + ", ".join(cfg.tasks))
  headline, rows, results = evaluate(lm, cfg.tasks, cfg.include_path, cfg.num_fewshot,
                                     cfg.limit, ctx.seed)
  ctx.write_csv("tasks.csv", rows)
  ctx.info["n_samples"] = results.get("n-samples", {})
  ctx.info["lm_eval_versions"] = results.get("versions", {})
  for task, acc in accuracies(headline).items():
    ctx.say(f"[zero_shot] {task}: acc {acc:.4f} +- {headline.get(f'acc_stderr_{task}', 0):.4f}"
            + (f", acc_norm {headline[f'acc_norm_{task}']:.4f}"
               if f"acc_norm_{task}" in headline else ""))
  _figure(ctx, io.pyplot(), headline)
  return headline


def _figure(ctx, plt, headline) -> None:
  names = list(accuracies(headline))
  fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.5))
  x = range(len(names))
  for j, metric in enumerate(("acc", "acc_norm")):
    vals = [headline.get(f"{metric}_{n}", float("nan")) for n in names]
    err = [2 * headline.get(f"{metric}_stderr_{n}", 0.0) for n in names]
    ax.bar([i + 0.4 * j for i in x], vals, 0.4, yerr=err, label=metric, color=f"C{j}")
  ax.set_xticks([i + 0.2 for i in x], names, rotation=20)
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy (bars: 2 standard errors)")
  ax.legend()
  ctx.save_figure(fig, "accuracy.png")
