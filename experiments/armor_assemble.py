"""Assembles a model pruned by block ranges on many hosts, then evaluates it as armor_prune does.

``armor_prune block_range=[start,stop] prune_dir=DIR`` prunes one range of
blocks into a shared directory (in ``dense`` mode every block is independent,
so ranges run at once on different hosts). This experiment takes the same
keys, checks that ``DIR`` holds every block, each made with
the same settings (the fingerprint of method, mode, solver settings,
architecture, calibration tokens, embedding and seed), and that every block
was made from the weights the model has now, before it evaluates anything
(the fingerprint depends on the seed, so this is the run's first step rather than a
preflight check); a missing or mismatched block is one line naming it, exit code 2,
and no results.json; nothing in ``DIR`` is written. Then it measures the
dense and pruned perplexities (and for ARMOR writes, reloads and evaluates
the compressed checkpoint) exactly as ``armor_prune`` would have after
pruning the whole model in one process: the numbers are the same, bit for bit.

Headline: as ``armor_prune`` (``ppl_dense``, ``ppl_<method>``, ``seconds_<method>``:
the sum over blocks of the seconds each took where it ran, ...).

    python -m experiments.main experiment=armor_assemble methods=[armor] mode=dense prune_dir=DIR
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from experiments import armor_prune
from experiments.schema import ConfigError, InputError


@dataclasses.dataclass(frozen=True)
class Config(armor_prune.Config):

  def check(self):
    super().check()
    if self.block_range or self.blocks:
      raise ConfigError("block_range" if self.block_range else "blocks",
                        "empty / 0: the assembled model is the whole model")


def preflight(cfg: Config) -> None:
  """armor_prune's checks of the model and texts, and that ``prune_dir`` exists (its blocks
  are checked when the run starts: their fingerprint depends on the seed)."""
  if not cfg.prune_dir:
    raise ConfigError("prune_dir", "the directory the block ranges were pruned into")
  armor_prune.preflight(cfg)
  if not Path(cfg.prune_dir).is_dir():
    raise InputError(f"{cfg.prune_dir}: no such directory of pruned blocks")


def run(cfg: Config, ctx) -> dict:
  from armor_jax.model import pipeline  # pylint: disable=import-outside-toplevel
  work = armor_prune.Workload(cfg, ctx.seed, say=ctx.say)
  fp = pipeline.fingerprint(work.source, work.calib, armor_prune.prune_config(cfg, cfg.methods[0]),
                            jax.random.PRNGKey(ctx.seed))
  store = pipeline.Checkpoint(cfg.prune_dir, fp, create=False)
  try:
    pipeline.assemble_check(store, work.source.cfg, work.source)
  except pipeline.InputError as e:
    raise InputError(str(e)) from None
  ctx.say(f"[armor_assemble] {store.path}: all {work.source.cfg.num_layers} blocks present, "
          "same settings and weights")
  return armor_prune.run(cfg, ctx)
