"""The tour: a small run of every system that has landed, each with its figure.

What ``python -m experiments.main`` runs with no arguments (under 5 minutes
on 2 CPU cores). Each system runs its own experiment at a small scale into a
subdirectory of the tour's run directory; its headline numbers are copied
into the tour's headline as ``<system>/<key>``.

    python -m experiments.main                       # all systems
    python -m experiments.main systems=[erasure_bandit] erasure_bandit.n_seeds=4
"""

from __future__ import annotations

import dataclasses

from experiments import erasure_bandit
from experiments.schema import each, one_of, param

SYSTEMS = ("erasure_bandit",)

_SMALL_ERASURE = erasure_bandit.Config(
    n_arms=5, horizon=5_000, eps=0.9, eps_grid=(0.0, 0.5, 0.9, 0.99), n_arms_grid=(2, 5, 10),
    horizon_grid=(1_000, 2_000, 5_000), n_seeds=16, n_points=100)


@dataclasses.dataclass(frozen=True)
class Config:
  systems: tuple[str, ...] = param(SYSTEMS, "systems to run", check=each(one_of(*SYSTEMS)))
  erasure_bandit: erasure_bandit.Config = param(_SMALL_ERASURE,
                                                "bandits over erasure channels (small scale)")


def run(cfg: Config, ctx) -> dict:
  headline: dict[str, float] = {}
  for system in cfg.systems:
    ctx.say(f"[tour] {system}")
    module = {"erasure_bandit": erasure_bandit}[system]
    sub = ctx.child(system)
    result = module.run(getattr(cfg, system), sub)
    headline.update({f"{system}/{k}": v for k, v in result.items()})
    if sub.info:
      ctx.info[system] = sub.info
  return headline
