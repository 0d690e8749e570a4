"""The one entry point: ``python -m experiments.main experiment=NAME key=value ...``.

Kept short on purpose; the work lives in the experiment modules and in
:mod:`experiments.harness`. The configs are the experiments' schemas,
registered with Hydra's ConfigStore (:func:`experiments.harness.register_configs`);
``--help`` lists an experiment's keys with their values and what they allow.
Before Hydra creates any directory, every run the command line asks for (each
value of a ``-m`` sweep) is composed and checked against its schema and by its
experiment's ``preflight`` (the files it names); a bad key, value or file
prints one line and exits with code 2.

Without Hydra installed (a bare GPU image), the same command runs a single run
(``key=value`` overrides, no sweeps or launchers) through the same harness
(:func:`plain_compose`), into the run directory Hydra would have used.

Examples::

    python -m experiments.main                                  # the tour
    python -m experiments.main experiment=armor_prune --help    # its keys, values, docs
    python -m experiments.main experiment=erasure_bandit eps=0.95 horizon=20000
    python -m experiments.main -m experiment=erasure_bandit eps=0.5,0.9,0.99
    python -m experiments.main -m +sweep=erasure_eps launcher=joblib
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path

# Expose each CPU core as an XLA host device (before jax is imported), so that
# independent runs can be sharded over the cores (bandits.core.shard_runs).
# Accelerator backends are unaffected. Set XLA_FLAGS yourself to override.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={os.cpu_count() or 1}")


def _amd_avx512() -> bool:
  """Whether this is an AMD CPU with AVX-512 (Zen 4 and later), where 512-bit vectors run at
  full clock; XLA's CPU code prefers 256-bit ones, a default made for Intel's downclocking."""
  try:
    info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")[:20000]
  except OSError:
    return False
  return "AuthenticAMD" in info and re.search(r"\bavx512f\b", info) is not None


# The erasure simulators' rounds (many small fused loops over the runs) run faster with 512-bit
# vectors on such a CPU (bench_erasure, same hour: TPG 13-21%, SP2-Feedback 7-27%;
# docs/bandits.md); collab's benchmark and the dense products (Eigen) are unchanged.
if "xla_cpu_prefer_vector_width" not in os.environ.get("XLA_FLAGS", "") and _amd_avx512():
  os.environ["XLA_FLAGS"] += " --xla_cpu_prefer_vector_width=512"

try:
  import hydra
  from hydra.core.hydra_config import HydraConfig
  from hydra.types import RunMode
  from omegaconf import OmegaConf, open_dict
except ImportError:  # an image without Hydra (a bare GPU machine): single runs, no sweeps
  hydra = None

from experiments import cluster, io
from experiments.harness import (EXPERIMENTS, LOGGER_MODES, RunConfig, RunError, execute, get_experiment,
                                 register_configs, split_and_validate)
from experiments.logger import LoggerConfig
from experiments.schema import ConfigError, InputError, as_container, describe

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("experiment", "logger", "launcher", "sweep")
_HELP_FLAGS = ("--help", "-h")
_INFO_FLAGS = ("--hydra-help", "--info", "-i", "--shell-completion", "-sc",
               "--cfg", "-c", "--resolve", "-p", "--package")
_LAUNCHER_PLUGINS = {"joblib": "hydra-joblib-launcher",
                     "submitit_slurm": "hydra-submitit-launcher",
                     "submitit_local": "hydra-submitit-launcher"}
_MAX_PRODUCT = 64  # sweeps with more runs are checked one varied key at a time


def _run_name(override_dirname: str) -> str:
  """A directory name for a run from its overrides ('default' when none)."""
  name = override_dirname.replace("/", "_") or "default"
  if len(name) > 120:
    name = name[:100] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]
  return name


if hydra is not None:
  OmegaConf.register_new_resolver("run_name", _run_name, replace=True)
  register_configs()


def _group_options(group: str) -> list[str]:
  """The choices of a config group: conf/GROUP/*.yaml and the ConfigStore's entries."""
  from hydra.core.config_store import ConfigStore  # pylint: disable=g-import-not-at-top
  try:
    stored = ConfigStore.instance().list(group)
  except OSError:
    stored = []
  return sorted({p.stem for p in (CONF_DIR / group).glob("*.yaml")} |
                {n.removesuffix(".yaml") for n in stored})


def _expand(args: list[str]) -> list[list[str]]:
  """The override lists of the runs a (possibly sweeping) command line asks for."""
  from hydra.core.override_parser.overrides_parser import OverridesParser  # pylint: disable=g-import-not-at-top
  from hydra.core.override_parser.types import ValueType  # pylint: disable=g-import-not-at-top
  from hydra.errors import OverrideParseException  # pylint: disable=g-import-not-at-top
  overrides = [a for a in args if not a.startswith("-")]
  try:
    parsed = OverridesParser.create().parse_overrides(overrides)
  except OverrideParseException as e:
    raise ConfigError("command line", str(e).splitlines()[0]) from e
  choices = []
  for o in parsed:
    key = o.get_key_element()
    if o.value_type == ValueType.GLOB_CHOICE_SWEEP:
      choices.append([f"{key}={v}" for v in o.value().filter(_group_options(o.key_or_group))])
    elif o.is_choice_sweep() or o.is_range_sweep():
      choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
    else:
      choices.append([o.input_line])
  total = 1
  for c in choices:
    total *= len(c)
  if total <= _MAX_PRODUCT:
    return [list(combo) for combo in itertools.product(*choices)]
  base = [c[0] for c in choices]
  runs = [base]
  for i, c in enumerate(choices):
    runs += [base[:i] + [v] + base[i + 1:] for v in c[1:]]
  return runs


def _explain(e: Exception, overrides: list[str]) -> ConfigError:
  """Turns a Hydra composition error into a one-line ConfigError."""
  text = str(e)
  m = re.search(r"Could not override '([^']+)'", text) or re.search(
      r"Key '([^']+)' is not in struct", text)
  if m:
    return ConfigError(m.group(1), "unknown key for this experiment (its keys: "
                       "experiment=NAME --help; prefix with + only to add a key on purpose)")
  m = re.search(r"Could not find 'hydra/launcher/([^']+)'", text)
  if m:   # a launcher config whose Hydra plugin is not installed
    chosen = next((o.split("=", 1)[1] for o in overrides
                   if o.split("=")[0].lstrip("+~") == "launcher"), m.group(1))
    plugin = _LAUNCHER_PLUGINS.get(m.group(1), f"the Hydra launcher plugin '{m.group(1)}'")
    return ConfigError("launcher", f"'{chosen}' needs {plugin}, which is not installed: "
                       "pip install -e '.[cluster]'")
  m = re.search(r"Could not find '([^/']+)/([^']+)'", text) or re.search(
      r"In '[^']*': Could not find '([^/']+)/([^']+)'", text)
  if m and m.group(1) in GROUPS:
    return ConfigError(m.group(1), f"unknown choice '{m.group(2)}'; allowed: "
                       + ", ".join(_group_options(m.group(1))))
  for group in GROUPS:
    for o in overrides:
      if o.split("=")[0].lstrip("+~") == group:
        return ConfigError(group, f"{text.splitlines()[0]} (allowed: "
                           + ", ".join(_group_options(group)) + ")")
  return ConfigError("command line", " ".join(text.split()))


def _compose(overrides: list[str]):
  from hydra import compose  # pylint: disable=g-import-not-at-top
  try:
    return compose(config_name="config", overrides=overrides, return_hydra_config=True)
  except Exception as e:  # pylint: disable=broad-except
    raise _explain(e, overrides) from e


def precheck(args: list[str]) -> tuple[int, Path | None]:
  """Validates every run of the command line; returns how many there are and, with ``-m``,
  the sweep's directory (``hydra.sweep.dir``; None if it cannot be known before the sweep).

  With ``-m``, the sweep's own parameters (``hydra.sweeper.params`` of a
  config such as ``+sweep=erasure_eps``) are expanded too; a key also given
  on the command line takes the command line's values, as in Hydra.
  """
  from hydra import initialize_config_dir  # pylint: disable=g-import-not-at-top
  runs = _expand(args)
  sweep_dir = None
  with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
    if any(a in ("-m", "--multirun") for a in args):
      first = _compose(runs[0])
      try:
        sweep_dir = Path(first.hydra.sweep.dir)
      except Exception:  # pylint: disable=broad-except
        sweep_dir = None   # e.g. a ${now:...} directory, known only when the sweep starts
      params = first.hydra.sweeper.get("params") or {}
      given = {o.split("=")[0].lstrip("+~") for o in runs[0]}
      extra = [f"{k}={v}" for k, v in params.items() if k not in given]
      if extra:
        runs = _expand(args + extra)
    for overrides in runs:
      cfg = _compose(overrides)
      name = cfg.hydra.runtime.choices["experiment"]
      with open_dict(cfg):
        del cfg["hydra"]
      try:
        values = OmegaConf.to_container(cfg, resolve=True)
      except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(str(getattr(e, "full_key", "command line")),
                          " ".join(str(e).split())) from e
      split_and_validate(name, values, preflight=True)
  return len(runs), sweep_dir


def _cli_value(v) -> str:
  """A value as it is written on the command line."""
  if isinstance(v, bool):
    return str(v).lower()
  if v is None:
    return "null"
  if isinstance(v, (tuple, list)):
    return "[" + ",".join(map(_cli_value, v)) + "]"
  if isinstance(v, str) and (not v or re.search(r"[\s,=\[\]'\"]", v)):
    return repr(v)
  return str(v)


def help_text(args: list[str]) -> str:
  """What ``--help`` prints: the experiment's docstring and every key with the value this
  command line gives it (the first run of a sweep), its type and what it allows."""
  if hydra is None:
    name, values, _ = plain_compose(args)
  else:
    from hydra import initialize_config_dir  # pylint: disable=g-import-not-at-top
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
      cfg = _compose(_expand(args)[0])
    name = cfg.hydra.runtime.choices["experiment"]
    with open_dict(cfg):
      del cfg["hydra"]
    values = OmegaConf.to_container(cfg, resolve=True)
  run_cfg, exp_cfg = split_and_validate(name, values)

  def table(rows, width=34):
    lines = []
    for key, _, value, doc in rows:
      entry = f"  {key}={_cli_value(value)}"
      lines.append(entry.ljust(width) + f"  {doc}" if len(entry) < width else
                   f"{entry}\n{'':{width}}  {doc}")
    return "\n".join(lines)

  if hydra is None:
    choices = "experiment: " + ", ".join(EXPERIMENTS) + "; logger: " + ", ".join(LOGGER_MODES)
  else:
    choices = "; ".join(f"{g}: " + ", ".join(_group_options(g)) for g in GROUPS)
  return (f"experiment={name}: {get_experiment(name).doc}\n\n"
          f"Keys of {name} (override with key=value; -m key=a,b sweeps):\n"
          f"{table(describe(exp_cfg))}\n\n"
          f"Keys of every run:\n{table(describe(run_cfg))}\n\n"
          f"Config groups ({choices.replace('sweep:', '+sweep:')}).\n"
          "Hydra's own options: --hydra-help.")


# Keys that do not change results stay out of a run directory's name (as in conf/config.yaml).
_UNNAMED = ("experiment", "resume", "progress", "logger", "launcher", "hydra.run.dir")


def _parse_value(text: str):
  """A command-line value without Hydra: a number, true/false, null, a string or a flat list."""
  text = text.strip()
  if text.startswith("[") and text.endswith("]"):
    inner = text[1:-1].strip()
    return [_parse_value(v) for v in inner.split(",")] if inner else []
  lowered = text.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("null", "~"):
    return None
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  if lowered in (".inf", "+.inf", "-.inf"):
    return float(lowered.replace(".", ""))
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    return text[1:-1]
  return text


def plain_compose(args: list[str]) -> tuple[str, dict, Path]:
  """(experiment, resolved config, run directory) of a single run's command line, without
  Hydra: the schemas' defaults (as registered with Hydra) with ``key=value`` overrides
  (dotted keys into nested nodes; ``logger=offline|online``; ``hydra.run.dir=DIR``)."""
  overrides: dict[str, str] = {}
  for arg in args:
    if arg.startswith("-") or "=" not in arg or arg.startswith(("+", "~")):
      raise ConfigError("command line", f"{arg!r}: without Hydra only key=value overrides of "
                        "a single run are understood (pip install hydra-core for sweeps, "
                        "launchers and +sweep=)")
    key, value = arg.split("=", 1)
    overrides[key] = value
  name = overrides.get("experiment", "tour")
  values = {**as_container(RunConfig()), **as_container(get_experiment(name).schema())}
  logger = overrides.get("logger", "disabled")
  if logger not in LOGGER_MODES:
    raise ConfigError("logger", f"unknown choice '{logger}'; allowed: " + ", ".join(LOGGER_MODES))
  values["logger"] = as_container(LoggerConfig(mode=logger))
  for key, text in overrides.items():
    if key in ("experiment", "logger", "hydra.run.dir"):
      continue
    *path, leaf = key.split(".")
    node = values
    for part in path:
      if not isinstance(node.get(part), dict):
        raise ConfigError(key, "unknown key for this experiment (its keys: "
                          "experiment=NAME --help)")
      node = node[part]
    if leaf not in node:
      raise ConfigError(key, "unknown key for this experiment (its keys: experiment=NAME --help)")
    node[leaf] = _parse_value(text)
  named = ",".join(sorted(f"{k}={v}" for k, v in overrides.items()
                          if k not in _UNNAMED and not k.startswith("logger.")))
  out_dir = Path(overrides.get("hydra.run.dir") or Path("outputs") / name / _run_name(named))
  return name, values, out_dir


def _plain_main(args: list[str]) -> None:
  """One run without Hydra: checked, then executed by the same harness."""
  try:
    name, values, out_dir = plain_compose(args)
    split_and_validate(name, values, preflight=True)
    execute(name, values, out_dir)
  except (ConfigError, InputError) as e:
    print(e, file=sys.stderr)
    sys.exit(2)
  except RunError as e:
    print(e, file=sys.stderr)
    sys.exit(1)


def _one_line(e: BaseException) -> str:
  first = (str(e).strip().splitlines() or [""])[0]
  return first if isinstance(e, (ConfigError, InputError, RunError)) else (
      f"{type(e).__name__}: {first}")


if hydra is not None:
  @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
  def _hydra_main(cfg) -> None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    hc = HydraConfig.get()
    name = hc.runtime.choices["experiment"]
    out_dir = Path(hc.runtime.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    sweep = hc.mode == RunMode.MULTIRUN
    (out_dir / io.FAILED).unlink(missing_ok=True)
    try:
      execute(name, resolved, out_dir)
    except Exception as e:  # pylint: disable=broad-except
      if sweep:
        # one point of a sweep: record the failure where the sweep's launcher finds it and
        # let the other points run (the traceback stays in this job's log)
        traceback.print_exc()
        io.write_json(out_dir / io.FAILED, {"error": _one_line(e), "experiment": name})
        print(f"[{name}] {out_dir}: failed: {_one_line(e)}", file=sys.stderr)
        return
      if isinstance(e, (ConfigError, InputError)):  # checked before Hydra starts where they can be
        print(e, file=sys.stderr)
        sys.exit(2)
      if isinstance(e, RunError):
        print(e, file=sys.stderr)
        sys.exit(1)
      raise


def _sweep_outcome(sweep_dir: Path, since: float) -> tuple[int, list[str]]:
  """How many runs under ``sweep_dir`` wrote results after ``since``, and one line for each
  that failed after ``since`` (the runs of a sweep may run in other processes or on other
  machines: their files are what the launching process can see)."""
  if not sweep_dir.is_dir():
    return 0, []

  def recent(p: Path) -> bool:
    try:
      return p.stat().st_mtime >= since
    except OSError:
      return False

  # a run's own results.json sits beside Hydra's .hydra/ (an experiment may write more inside)
  ran = sum(recent(p) and (p.parent / ".hydra").is_dir() for p in sweep_dir.rglob(io.RESULTS))
  lines = []
  for marker in sorted(sweep_dir.rglob(io.FAILED)):
    try:
      if recent(marker):
        lines.append(f"run failed: {marker.parent}: {json.loads(marker.read_text())['error']}")
    except (OSError, ValueError, KeyError):
      continue
  return ran, lines


def main(argv: list[str] | None = None) -> None:
  args = list(sys.argv[1:] if argv is None else argv)
  if any(a in _HELP_FLAGS for a in args):
    try:
      print(help_text([a for a in args if a not in _HELP_FLAGS]))
    except (ConfigError, InputError) as e:
      print(e, file=sys.stderr)
      sys.exit(2)
    sys.exit(0)
  if hydra is None:
    _plain_main(args)
    return
  n_runs, sweep_dir = 1, None
  if not any(a in _INFO_FLAGS for a in args):
    try:
      n_runs, sweep_dir = precheck(args)
    except (ConfigError, InputError) as e:
      print(e, file=sys.stderr)
      sys.exit(2)
  sys.argv = [sys.argv[0]] + args
  if sweep_dir is None:
    _hydra_main()  # pylint: disable=no-value-for-parameter
    return
  cluster.watch_without_accounting()
  started = time.time() - 1.0      # file times may be coarser than the clock
  code = 0
  try:
    _hydra_main()  # pylint: disable=no-value-for-parameter
  except SystemExit as e:     # Hydra's report of a launcher error (a job that left no result)
    code = e.code if isinstance(e.code, int) else 1
  ran, failed = _sweep_outcome(sweep_dir, started)
  for line in failed:
    print(line, file=sys.stderr)
  rest = max(n_runs - ran - len(failed), 0)
  print(f"sweep: {n_runs} runs: {ran} ran, {len(failed)} failed, {rest} "
        + ("did not finish (see the launcher's error above)" if code else
           "skipped (complete results kept)")
        + ("; re-launching the sweep redoes only the runs without complete results"
           if failed or code else ""), file=sys.stderr)
  sys.exit(code or (1 if failed else 0))


if __name__ == "__main__":
  main()
