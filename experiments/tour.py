"""The tour: a small run of every system, each with its figures.

What ``python -m experiments.main`` runs with no arguments (under 5 minutes
on 2 CPU cores). Each system runs its own experiment at a small scale into a
subdirectory of the tour's run directory; its headline numbers are copied
into the tour's headline as ``<system>/<key>``.

    python -m experiments.main                       # all systems
    python -m experiments.main systems=[erasure_bandit] erasure_bandit.n_seeds=4
    python -m experiments.main systems=[camdp_sample_complexity]
    python -m experiments.main systems=[armor_prune] armor_prune.blocks=4 armor_prune.armor.iters=4

Its config is the other experiments' configs, each with the overrides that make it small
(below); ``python -m experiments.main --help`` lists every key with its value.
"""

from __future__ import annotations

import dataclasses

from armor_jax.solver.armor import ArmorConfig
from experiments import (armor_prune, camdp_sample_complexity, collab_bandit, erasure_bandit,
                         linear_cmdp_sample_complexity)
from experiments.schema import each, one_of, param

MODULES = {"erasure_bandit": erasure_bandit, "collab_bandit": collab_bandit,
           "camdp_sample_complexity": camdp_sample_complexity,
           "linear_cmdp_sample_complexity": linear_cmdp_sample_complexity,
           "armor_prune": armor_prune}
SYSTEMS = tuple(MODULES)

# Each system's own config, with the overrides that make it small; every other value is the
# system's default.
_SMALL_ERASURE = erasure_bandit.Config(
    n_arms=5, horizon=5_000, eps=0.9, eps_grid=(0.0, 0.5, 0.9, 0.99), n_arms_grid=(2, 5, 10),
    horizon_grid=(1_000, 2_000, 5_000), n_seeds=16, n_points=100)

_SMALL_COLLAB = collab_bandit.Config(
    algorithms=("collab", "ind_oful", "pooled_oful", "oracle"), d=5, n_agents=10, sigma=0.1,
    horizon=2000, m_grid=(2, 5, 10), sigma_grid=(0.0, 0.1, 0.5), sweep_horizon=400, n_seeds=4,
    regime_points=5)

# Few seeds: the smooth fit of the strict setting is read at 10% failure.
_SMALL_CAMDP = camdp_sample_complexity.Config(
    n_states=10, n_actions=3, eps=0.07, eps_grid=(0.1, 0.07, 0.05), H_grid=(5.0, 10.0, 20.0),
    zeta=0.1, zeta_grid=(0.07, 0.1, 0.14), relaxed_n_range=(64, 65536),
    strict_n_range=(16384, 2**25), n_per_octave=1, n_seeds=8, n_check_seeds=16, n_grid=64,
    n_iters=2**16, batch_size=512, strict_smooth_level=0.1, rate_seeds=8,
    rate_n_range=(64, 65536), scaled_seeds=16, predict_seeds=16)

_SMALL_LINEAR = linear_cmdp_sample_complexity.Config(
    d=5, d_grid=(5, 9), horizon=5.0, horizon_grid=(4.0, 5.0, 7.0), eps_grid=(1.0, 0.5),
    zeta_grid=(0.5, 1.0), relaxed_n_range=(64, 65536), strict_n_range=(16384, 268435456),
    n_per_octave=2, n_seeds=8, n_check_seeds=8, n_grid=32, n_dual=32768, batch_size=256,
    tabular=False, strict_smooth_level=0.1, rate_seeds=8, rate_n_range=(64, 65536),
    scaled_seeds=16, predict_seeds=16)

_SMALL_ARMOR = armor_prune.Config(
    n_calib=8, calib_len=256, eval_len=256, eval_windows=6, blocks=2, gen_tokens=8,
    armor=ArmorConfig(iters=8))


@dataclasses.dataclass(frozen=True)
class Config:
  systems: tuple[str, ...] = param(SYSTEMS, "systems to run", check=each(one_of(*SYSTEMS)))
  erasure_bandit: erasure_bandit.Config = param(_SMALL_ERASURE,
                                                "bandits over erasure channels (small scale)")
  collab_bandit: collab_bandit.Config = param(
      _SMALL_COLLAB, "collaborative personalized linear bandits (small scale)")
  camdp_sample_complexity: camdp_sample_complexity.Config = param(
      _SMALL_CAMDP, "constrained average-reward MDPs, sample complexity (small scale)")
  linear_cmdp_sample_complexity: linear_cmdp_sample_complexity.Config = param(
      _SMALL_LINEAR, "linear constrained MDPs, sample complexity (small scale)")
  armor_prune: armor_prune.Config = param(
      _SMALL_ARMOR, "2:4 pruning of SmolLM2-135M, first blocks only (small scale)")


def preflight(cfg: Config) -> None:
  """Each selected system's own checks of the files its config names."""
  for system in cfg.systems:
    check = getattr(MODULES[system], "preflight", None)
    if check is not None:
      check(getattr(cfg, system))


def run(cfg: Config, ctx) -> dict:
  headline: dict[str, float] = {}
  for system in cfg.systems:
    ctx.say(f"[tour] {system}")
    module = MODULES[system]
    sub = ctx.child(system)
    result = module.run(getattr(cfg, system), sub)
    headline.update({f"{system}/{k}": v for k, v in result.items()})
    if sub.info:
      ctx.info[system] = sub.info
  return headline
