"""Regret over an arm-erasure channel, with and without feedback (arXiv 2406.18072, 2504.20894).

Reproduces the kind of figures of arXiv 2406.18072 / 2504.20894: cumulative
regret vs rounds, final regret vs horizon T, vs erasure probability eps and vs
the number of arms K, each with the lower bound sqrt(K T) + K / (1 - eps)
drawn. All grid points of one algorithm run in one jitted call (arms padded,
horizons masked), vmapped over seeds.

    python -m experiments.main experiment=erasure_bandit
    python -m experiments.main experiment=erasure_bandit eps=0.99 horizon=100000 n_seeds=50
    python -m experiments.main -m experiment=erasure_bandit eps=0.5,0.9,0.99

With ``agent_eps`` = [eps_1, ..., eps_M] it also runs M agents behind those
channels: multi-agent L-SAE (one learner, whole arm blocks per agent) against
M independent single-agent L-SAEs, one per channel, on the same instances.

Headline: ``regret_<algorithm>`` (mean final regret on the main instance K =
n_arms, T = horizon, eps = eps), the instance (``K``, ``T``, ``eps``), the lower
bound there, ``slope_<algorithm>_vs_T`` (log-log slope of final regret vs T
over horizon_grid; L-SAE's theory: 1/2 for large T) and, with agents,
``regret_ma_lsae`` and ``regret_lsae_independent_agents`` (summed over agents).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from bandits.erasure import algorithms, env, sim
from bandits.erasure.theory import lower_bound
from experiments import io
from experiments.schema import Check, ConfigError, each, ge, gt, in_range, one_of, param

ALGORITHM_NAMES = algorithms.SINGLE_AGENT


@dataclasses.dataclass(frozen=True)
class Config:
  algorithms: tuple[str, ...] = param(ALGORITHM_NAMES, "algorithms to run",
                                      check=each(one_of(*ALGORITHM_NAMES)))
  n_arms: int = param(10, "K of the main instance", check=ge(2))
  horizon: int = param(50_000, "T of the main instance", check=gt(0))
  eps: float = param(0.9, "erasure probability of the main instance",
                     check=in_range(0, 1, hi_open=True))
  eps_grid: tuple[float, ...] = param((0.0, 0.5, 0.8, 0.9, 0.95, 0.99),
                                      "erasure probabilities of the regret-vs-eps figure",
                                      check=each(in_range(0, 1, hi_open=True)))
  n_arms_grid: tuple[int, ...] = param((2, 5, 10, 20), "K values of the regret-vs-K figure",
                                       check=each(ge(2)))
  horizon_grid: tuple[int, ...] = param((5_000, 10_000, 20_000, 50_000),
                                        "T values of the regret-vs-T figure", check=each(gt(1)))
  n_seeds: int = param(100, "runs per grid point (run s of every point with the same K shares "
                       "its instance)", check=ge(1))
  means: str = param("random_gap", "instance means: random_gap | two_level | given",
                     check=one_of(*sim.MEANS_KINDS))
  given_means: tuple[float, ...] = param((), "arm means when means=given (at least max K)")
  reward: str = param(env.GAUSSIAN, "reward distribution", check=one_of(*env.REWARD_KINDS))
  noise_std: float = param(1.0, "Gaussian reward noise std", check=ge(0))
  initial_arm: int = param(0, "arm played before any delivery; -1 for a random arm",
                           check=ge(-1))
  n_points: int = param(200, "points on each regret curve", check=in_range(1, 1000))
  agent_eps: tuple[float, ...] = param(
      (0.1, 0.5, 0.9), "per-agent erasure probabilities of the multi-agent comparison "
      "(multi-agent L-SAE vs independent L-SAE per agent, K=n_arms, T=horizon); [] skips it",
      check=Check(lambda vs: all(0 <= v < 1 for v in vs), "a list of numbers in [0, 1)"))

  def check(self) -> None:
    """Checks that involve several keys (single keys are checked by their field)."""
    k_max = max((self.n_arms,) + self.n_arms_grid)
    if self.means == "given" and len(self.given_means) < k_max:
      raise ConfigError("given_means", f"must list at least {k_max} means when means=given")
    if self.reward == "bernoulli" and any(not 0 <= m <= 1 for m in self.given_means):
      raise ConfigError("given_means", "must lie in [0, 1] for Bernoulli rewards")
    k_min = min((self.n_arms,) + self.n_arms_grid)
    if self.initial_arm >= k_min:
      raise ConfigError("initial_arm", f"must be -1 or < the smallest K ({k_min})")



def _grid(cfg: Config) -> tuple[list[dict], dict[str, slice]]:
  """All grid points (main, eps sweep, K sweep, T sweep) and where each sweep lies."""
  main = dict(n_arms=cfg.n_arms, eps=cfg.eps, horizon=cfg.horizon)
  parts = {
      "main": [main],
      "eps": [dict(main, eps=e) for e in cfg.eps_grid],
      "n_arms": [dict(main, n_arms=k) for k in cfg.n_arms_grid],
      "horizon": [dict(main, horizon=t) for t in cfg.horizon_grid],
  }
  grid, where = [], {}
  for name, points in parts.items():
    where[name] = slice(len(grid), len(grid) + len(points))
    grid += points
  return grid, where


def _instance_options(cfg: Config) -> dict:
  """Keyword arguments of sim.make_instances shared by every part of the experiment."""
  return dict(means_kind=cfg.means, given_means=cfg.given_means, gap_horizon=cfg.horizon,
              initial_arm="random" if cfg.initial_arm < 0 else cfg.initial_arm)


def simulate_all(cfg: Config, seed: int, key: jax.Array, progress: bool = False):
  """Runs every algorithm on every grid point (instances drawn from ``seed``, runs keyed
  by ``key``); returns per-algorithm results."""
  from experiments.progress import chunk_bar  # pylint: disable=import-outside-toplevel
  grid, where = _grid(cfg)
  inst = sim.make_instances(grid, cfg.n_seeds, seed, **_instance_options(cfg))
  out = {}
  for i, name in enumerate(cfg.algorithms):
    feedback = algorithms.ALGORITHMS[name].needs_feedback
    with chunk_bar(f"{name} ({i + 1}/{len(cfg.algorithms)})", cfg.n_points, enabled=progress,
                   horizon=int(inst.horizon.max())) as bar:
      # The same key for every algorithm: common random numbers across algorithms.
      res = sim.run(name, inst, key, reward_kind=cfg.reward, noise_std=cfg.noise_std,
                    feedback=feedback, n_points=cfg.n_points, progress=bar)
      res = jax.tree.map(np.asarray, res)
    out[name] = res
  return grid, where, inst, out


def run(cfg: Config, ctx) -> dict:
  plt = io.pyplot()
  from experiments.stats import loglog_slope, mean_ci  # pylint: disable=import-outside-toplevel

  k_grid, k_agents = jax.random.split(jax.random.key(ctx.seed))
  grid, where, inst, res = simulate_all(cfg, ctx.seed, k_grid, ctx.progress)
  headline: dict[str, float] = {"K": cfg.n_arms, "T": cfg.horizon, "eps": cfg.eps,
                                "n_seeds": cfg.n_seeds,
                                "lower_bound": float(lower_bound(cfg.n_arms, cfg.horizon, cfg.eps))}
  rows = {k: [] for k in ("algorithm", "sweep", "K", "T", "eps", "mean_regret", "ci95_lo",
                          "ci95_hi", "std_regret")}
  for name, r in res.items():
    for sweep, sl in where.items():
      for gi in range(sl.start, sl.stop):
        m, lo, hi = mean_ci(r.final_regret[gi])
        g = grid[gi]
        for col, v in zip(rows, (name, sweep, g["n_arms"], g["horizon"], g["eps"], m, lo, hi,
                                 float(np.std(r.final_regret[gi])))):
          rows[col].append(v)
    headline[f"regret_{name}"] = float(np.mean(r.final_regret[where["main"].start]))
    ts = np.array(cfg.horizon_grid, float)
    if len(ts) >= 2:
      reg = r.final_regret[where["horizon"]].mean(axis=1)
      headline[f"slope_{name}_vs_T"] = loglog_slope(ts, reg)[0]
  ctx.write_csv("metrics.csv", rows)
  ctx.info["instance"] = {"K": cfg.n_arms, "T": cfg.horizon, "eps": cfg.eps, "means": cfg.means,
                          "reward": cfg.reward, "noise_std": cfg.noise_std,
                          "initial_arm": cfg.initial_arm}

  # Regret curves on the main instance.
  main = where["main"].start
  first = next(iter(res.values()))
  rounds = first.rounds
  curves = {"round": rounds}
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for name, r in res.items():
    mean = r.regret[main].mean(axis=0)
    se = r.regret[main].std(axis=0) / np.sqrt(cfg.n_seeds)
    curves[name] = mean
    ax.plot(rounds, mean, label=algorithms.ALGORITHMS[name].label)
    ax.fill_between(rounds, mean - 1.96 * se, mean + 1.96 * se, alpha=0.2)
  ax.plot(rounds, lower_bound(cfg.n_arms, rounds, cfg.eps), "k--", label=r"$\sqrt{Kt}+K/(1-\epsilon)$")
  ax.set(xlabel="round t", ylabel="cumulative regret",
         title=f"K={cfg.n_arms}, T={cfg.horizon}, eps={cfg.eps}, {cfg.n_seeds} seeds")
  ax.legend(fontsize=8)
  ctx.write_csv("curves.csv", curves)
  ctx.save_figure(fig, "regret_vs_t.png")

  def sweep_figure(sweep: str, xkey: str, xlabel: str, fname: str, logx: bool = False):
    sl = where[sweep]
    xs = np.array([grid[i][xkey] for i in range(sl.start, sl.stop)], float)
    order = np.argsort(xs)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, r in res.items():
      stats = np.array([mean_ci(r.final_regret[i]) for i in range(sl.start, sl.stop)])
      lower = np.minimum(stats[order, 0] - stats[order, 1], 0.9 * stats[order, 0])  # log axis
      ax.errorbar(xs[order], stats[order, 0], yerr=[lower, stats[order, 2] - stats[order, 0]],
                  marker="o", capsize=3, label=algorithms.ALGORITHMS[name].label)
    lb = [lower_bound(grid[i]["n_arms"], grid[i]["horizon"], grid[i]["eps"])
          for i in range(sl.start, sl.stop)]
    ax.plot(xs[order], np.array(lb)[order], "k--", label=r"$\sqrt{KT}+K/(1-\epsilon)$")
    ax.set(xlabel=xlabel, ylabel="final regret (mean, 95% CI)", yscale="log")
    if logx:
      ax.set_xscale("log")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, fname)

  if len(cfg.eps_grid) >= 2:
    sweep_figure("eps", "eps", f"erasure probability eps (K={cfg.n_arms}, T={cfg.horizon})",
                 "regret_vs_eps.png")
  if len(cfg.n_arms_grid) >= 2:
    sweep_figure("n_arms", "n_arms", f"arms K (T={cfg.horizon}, eps={cfg.eps})", "regret_vs_K.png")
  if len(cfg.horizon_grid) >= 2:
    sweep_figure("horizon", "horizon", f"horizon T (K={cfg.n_arms}, eps={cfg.eps})",
                 "regret_vs_T.png", logx=True)
  if cfg.agent_eps:
    headline.update(multi_agent(cfg, ctx, plt, k_agents))
  return headline


def multi_agent(cfg: Config, ctx, plt, key: jax.Array) -> dict[str, float]:
  """Multi-agent L-SAE vs independent single-agent L-SAE per channel (same instances, and the
  same ``key`` for both)."""
  kind = _instance_options(cfg)
  joint = sim.make_instances([dict(n_arms=cfg.n_arms, eps=list(cfg.agent_eps), horizon=cfg.horizon)],
                             cfg.n_seeds, ctx.seed, **kind)
  alone = sim.make_instances([dict(n_arms=cfg.n_arms, eps=e, horizon=cfg.horizon)
                              for e in cfg.agent_eps], cfg.n_seeds, ctx.seed, **kind)
  opts = dict(reward_kind=cfg.reward, noise_std=cfg.noise_std, n_points=cfg.n_points)
  r_joint = jax.tree.map(np.asarray, sim.run("ma_lsae", joint, key, **opts))
  r_alone = jax.tree.map(np.asarray, sim.run("lsae", alone, key, **opts))
  joint_curve = r_joint.regret[0]                 # (S, P), summed over agents
  alone_curve = r_alone.regret.sum(axis=0)        # (S, P), one L-SAE per agent, summed
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for curve, label in ((joint_curve, "multi-agent L-SAE"),
                       (alone_curve, "independent L-SAE per agent")):
    mean = curve.mean(axis=0)
    se = curve.std(axis=0) / np.sqrt(cfg.n_seeds)
    ax.plot(r_joint.rounds, mean, label=label)
    ax.fill_between(r_joint.rounds, mean - 1.96 * se, mean + 1.96 * se, alpha=0.2)
  ax.set(xlabel="round t", ylabel="cumulative regret, summed over agents",
         title=f"M={len(cfg.agent_eps)} agents, eps_m={list(cfg.agent_eps)}, K={cfg.n_arms}")
  ax.legend(fontsize=8)
  ctx.save_figure(fig, "regret_vs_t_multi_agent.png")
  ctx.write_csv("multi_agent_curves.csv", {"round": r_joint.rounds,
                                           "ma_lsae": joint_curve.mean(axis=0),
                                           "lsae_independent_agents": alone_curve.mean(axis=0)})
  return {"n_agents": len(cfg.agent_eps),
          "regret_ma_lsae": float(joint_curve[:, -1].mean()),
          "regret_lsae_independent_agents": float(alone_curve[:, -1].mean())}

