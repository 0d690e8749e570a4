"""Optional Weights & Biases logging that never waits on a network.

``mode=disabled`` (the default) does not even import wandb. ``offline`` writes
a local run under the run directory, to sync later with ``wandb sync``.
``online`` tries to connect for at most ``init_timeout_s`` seconds and falls
back to offline with a warning if it cannot.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from experiments.schema import gt, one_of, param


@dataclasses.dataclass(frozen=True)
class LoggerConfig:
  mode: str = param("disabled", "wandb mode", check=one_of("disabled", "offline", "online"))
  project: str = param("jax-theory-lab", "wandb project")
  entity: str | None = param(None, "wandb entity (team or user); null for the default")
  tags: tuple[str, ...] = param((), "wandb tags")
  init_timeout_s: float = param(15.0, "seconds to wait for wandb.init online", check=gt(0))


class Logger:
  """A thin wandb wrapper; every method is a no-op when disabled."""

  def __init__(self, cfg: LoggerConfig, run_dir: Path, name: str, config: Mapping[str, Any]):
    self._run = None
    if cfg.mode == "disabled":
      return
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb  # pylint: disable=import-outside-toplevel
    kwargs = dict(project=cfg.project, entity=cfg.entity, name=name, tags=list(cfg.tags),
                  dir=str(run_dir), config=dict(config))
    try:
      self._run = wandb.init(mode=cfg.mode,
                             settings=wandb.Settings(init_timeout=cfg.init_timeout_s), **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      if cfg.mode != "online":
        raise
      print(f"wandb online init failed ({type(e).__name__}: {e}); logging offline instead",
            file=sys.stderr)
      self._run = wandb.init(mode="offline", **kwargs)

  @property
  def active(self) -> bool:
    return self._run is not None

  def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
    if self._run is not None:
      self._run.log(dict(metrics), step=step)

  def log_image(self, name: str, path: Path) -> None:
    if self._run is not None:
      import wandb  # pylint: disable=import-outside-toplevel
      self._run.log({name: wandb.Image(str(path))})

  def finish(self, headline: Mapping[str, Any] | None = None) -> None:
    if self._run is None:
      return
    if headline:
      self._run.summary.update(dict(headline))
    self._run.finish()
    self._run = None
