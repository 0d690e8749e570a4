"""Multi-agent bandits over heterogeneous erasure channels: the authors' schedulers and experiments.

M agents behind channels eps_m play one K-armed bandit for a central learner
(Hanna, Karakas, Yang & Fragouli; the journal work "Fundamental Limits of
Learning Under Erasure-Constrained Communication Channels", arXiv 2312.14259
for the no-feedback schedulers). Runs every scheduler of
:mod:`bandits.erasure.schedulers` (TPG, SP2-Feedback, SP2, and the baselines) on
the same instances for each M, and reports regret (summed over agents) and the
communication it cost (requests transmitted, feedback bits), as the authors'
scripts do. The eps profiles are theirs, drawn in the same order from the same
seed, so ``eps_profile=mild`` (K = 10) and ``nominal`` / ``hard`` (K = 100)
reproduce their eps vectors exactly; ready-made configs:

    python -m experiments.main experiment=erasure_multi_agent                 # K=10, mild eps
    python -m experiments.main +sweep=erasure_ma_k10_bernoulli
    python -m experiments.main +sweep=erasure_ma_k100_nominal                 # hours on a CPU
    python -m experiments.main +sweep=erasure_ma_k100_hard
    python -m experiments.main experiment=erasure_multi_agent drift=linear drift_to=0.9

Headline: ``regret_<scheduler>`` (mean final regret at ``main_agents`` agents, by
default the largest M),
``regret_<scheduler>_M<m>``, ``tx_<scheduler>_M<m>`` and ``fb_<scheduler>_M<m>``
(mean transmissions and feedback bits) for every M, and ``lower_bound_M<m>``.
The lower bound drawn is sqrt((K - 1) M T) / 27: the erasure-free minimax bound
for M T sequential pulls (Lattimore & Szepesvari, Bandit Algorithms, Thm 15.2),
which M agents pulling in parallel over erasure channels cannot beat. The
erasure term of the single-agent bound, K / (1 - eps) (arXiv 2504.20894), has
no known constant and no multi-agent form here (the journal's text was not at
hand), so it is left out.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from bandits.erasure import algorithms, env, sim
from experiments import io
from experiments.schema import Check, ConfigError, each, ge, gt, in_range, one_of, param

SCHEDULERS = tuple(n for n, i in algorithms.ALGORITHMS.items() if i.multi_agent)
PROFILES = ("mild", "nominal", "hard", "fixed")
DRIFTS = ("none", "linear", "abrupt")


@dataclasses.dataclass(frozen=True)
class Config:
  schedulers: tuple[str, ...] = param(("sp2", "sp2_fb", "tpg"),
                                      "schedulers to run (the authors' runs: sp2, sp2_fb, tpg)",
                                      check=each(one_of(*SCHEDULERS)))
  n_arms: int = param(10, "K", check=ge(2))
  horizon: int = param(50_000, "T", check=gt(1))
  agents: tuple[int, ...] = param((4, 20, 40), "the numbers of agents M to run",
                                  check=each(ge(1)))
  main_agents: int = param(0, "the M of the headline regret_<scheduler> (one of agents); 0: "
                           "the largest", check=ge(0))
  eps_profile: str = param("mild", "mild: U[0.1,0.5]; nominal: quarters in [0.1,0.5], [0.5,0.8], "
                           "[0.8,0.95], [0.95,0.999]; hard: nominal with its best quarter redrawn "
                           "in [0.5,0.8]; fixed: eps_fixed", check=one_of(*PROFILES))
  eps_draws: tuple[int, ...] = param((4, 20, 40), "the M whose eps vectors are drawn, in this "
                                     "order, from eps_seed (the authors' scripts: 4, 20, 40)",
                                     check=each(ge(1)))
  eps_seed: int = param(12345, "seed of the eps vectors and initial arms (the authors' "
                        "RNG_SEED)", check=ge(0))
  eps_fixed: tuple[float, ...] = param((), "eps_profile=fixed: one eps per agent (its length "
                                       "is the only M)",
                                       check=Check(lambda vs: all(0 <= v < 1 for v in vs),
                                                   "a list of numbers in [0, 1)"))
  drift: str = param("none", "time-varying channels: none | linear (eps_m to drift_to at T) | "
                     "abrupt (the same ramp over the first breakpoint_frac of T)",
                     check=one_of(*DRIFTS))
  drift_to: float = param(0.9, "eps of every channel at the end of the drift",
                          check=in_range(0, 1, hi_open=True))
  breakpoint_frac: float = param(0.2, "abrupt drift: the fraction of T the ramp takes",
                                 check=in_range(0, 1, lo_open=True))
  n_seeds: int = param(100, "runs (episodes) per M; run s of every scheduler shares its "
                       "instance", check=ge(1))
  reward: str = param(env.GAUSSIAN, "reward distribution", check=one_of(*env.REWARD_KINDS))
  noise_std: float = param(1.0, "Gaussian reward noise std", check=ge(0))
  feedback_mode: str = param("ack_success", "what a feedback bit is sent for: ack_success "
                             "(the authors' runs) | beacon", check=one_of(*env.FEEDBACK_MODES))
  order: str = param("descending", "request order of sp2_fb's stacks: descending (the "
                     "authors') | ascending", check=one_of("descending", "ascending"))
  n_points: int = param(200, "points on each regret curve", check=in_range(1, 1000))

  def check(self) -> None:
    """Checks that involve several keys."""
    if self.main_agents and self.main_agents not in self.agents:
      raise ConfigError("main_agents", f"must be one of agents {list(self.agents)}")
    if self.eps_profile == "fixed":
      if len(self.agents) != 1 or len(self.eps_fixed) != self.agents[0]:
        raise ConfigError("eps_fixed", "eps_profile=fixed needs one agents value and that many "
                          "eps values")
    elif any(m not in self.eps_draws for m in self.agents):
      raise ConfigError("agents", f"must be among eps_draws {list(self.eps_draws)} (the M whose "
                        "eps vectors are drawn)")
    if self.reward == "bernoulli" and self.noise_std != 1.0:
      raise ConfigError("noise_std", "is for Gaussian rewards; leave it at 1 with reward=bernoulli")


def _nominal(m: int, rng: np.random.Generator) -> np.ndarray:
  """The authors' ``sample_eps_nominal``: quarters of the agents in four eps ranges, sorted."""
  q = m // 4
  parts = [rng.uniform(0.1, 0.5, q), rng.uniform(0.5, 0.8, q), rng.uniform(0.8, 0.95, q),
           rng.uniform(0.95, 0.999, m - 3 * q)]
  return np.sort(np.concatenate(parts))


def channels(cfg: Config) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{M: (eps (M,), initial arms (M,))}, drawn as the authors' scripts draw them.

  eps: a ``default_rng(eps_seed)`` stream, one vector per M of ``eps_draws`` in
  order (mild: sorted U[0.1, 0.5]; nominal and hard: ``_nominal``; hard then
  redraws, for each M of ``agents``, the best quarter of the nominal vector in
  [0.5, 0.8]). Initial arms: the legacy ``RandomState(eps_seed)`` stream,
  ``randint(K, size=M)`` in the same order (their K = 100 scripts draw them
  before any episode, so these are theirs; their K = 10 scripts draw them
  between episodes).
  """
  if cfg.eps_profile == "fixed":
    m = cfg.agents[0]
    init = np.random.RandomState(cfg.eps_seed).randint(cfg.n_arms, size=m)
    return {m: (np.asarray(cfg.eps_fixed, np.float64), init)}
  rng = np.random.default_rng(cfg.eps_seed)
  legacy = np.random.RandomState(cfg.eps_seed)  # pylint: disable=no-member
  drawn, init = {}, {}
  for m in cfg.eps_draws:
    drawn[m] = (np.sort(rng.uniform(0.1, 0.5, m)) if cfg.eps_profile == "mild"
                else _nominal(m, rng))
    init[m] = legacy.randint(cfg.n_arms, size=m)
  if cfg.eps_profile == "hard":
    for m in cfg.agents:
      q = m // 4
      drawn[m] = np.sort(np.concatenate([rng.uniform(0.5, 0.8, q), np.sort(drawn[m])[q:]]))
      init[m] = legacy.randint(cfg.n_arms, size=m)
  return {m: (drawn[m], init[m]) for m in cfg.agents}


def lower_bound(n_arms: int, horizon, n_agents: int):
  """sqrt((K - 1) M T) / 27, the erasure-free minimax lower bound for M T pulls."""
  return np.sqrt((n_arms - 1) * n_agents * np.asarray(horizon, np.float64)) / 27.0


def simulate(cfg: Config, seed: int, key: jax.Array, progress: bool = False) -> dict:
  """{M: {scheduler: SimResult}} on the same instances per M (and the same key)."""
  from experiments.progress import chunk_bar  # pylint: disable=import-outside-toplevel
  out = {}
  for m, (eps, init) in channels(cfg).items():
    inst = sim.make_instances([dict(n_arms=cfg.n_arms, eps=list(eps), horizon=cfg.horizon)],
                              cfg.n_seeds, seed, means_kind="random_gap")
    inst = inst._replace(initial_arm=np.broadcast_to(init, inst.initial_arm.shape).copy())
    knots = None
    if cfg.drift != "none":
      knots = env.eps_schedule(cfg.drift, cfg.horizon, eps, np.full(m, cfg.drift_to),
                               cfg.breakpoint_frac)
    out[m] = {}
    for i, name in enumerate(cfg.schedulers):
      feedback = algorithms.ALGORITHMS[name].needs_feedback
      with chunk_bar(f"M={m} {name} ({i + 1}/{len(cfg.schedulers)})", cfg.n_points,
                     enabled=progress, horizon=cfg.horizon) as bar:
        res = sim.run(name, inst, key, reward_kind=cfg.reward, noise_std=cfg.noise_std,
                      feedback=feedback, feedback_mode=cfg.feedback_mode, knots=knots,
                      order=cfg.order, n_points=cfg.n_points, progress=bar)
      out[m][name] = jax.tree.map(np.asarray, res)
  return out


def run(cfg: Config, ctx) -> dict:
  from experiments.stats import mean_ci  # pylint: disable=import-outside-toplevel
  plt = io.pyplot()
  chans = channels(cfg)
  res = simulate(cfg, ctx.seed, jax.random.key(ctx.seed), ctx.progress)
  headline: dict[str, float] = {"K": cfg.n_arms, "T": cfg.horizon, "n_seeds": cfg.n_seeds}
  rows = {k: [] for k in ("scheduler", "M", "mean_regret", "ci95_lo", "ci95_hi", "std_regret",
                          "mean_tx", "mean_fb", "lower_bound")}
  curves: dict[str, np.ndarray] = {}
  for m, by_name in res.items():
    lb = float(lower_bound(cfg.n_arms, cfg.horizon, m))
    headline[f"lower_bound_M{m}"] = lb
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, r in by_name.items():
      final = r.final_regret[0]
      mean, lo, hi = mean_ci(final)
      tx, fb = float(r.totals["tx"][0].mean()), float(r.totals["fb"][0].mean())
      for col, v in zip(rows, (name, m, mean, lo, hi, float(np.std(final)), tx, fb, lb)):
        rows[col].append(v)
      headline[f"regret_{name}_M{m}"] = float(mean)
      headline[f"tx_{name}_M{m}"] = tx
      headline[f"fb_{name}_M{m}"] = fb
      if m == (cfg.main_agents or max(cfg.agents)):
        headline[f"regret_{name}"] = float(mean)
      curve = r.regret[0].mean(axis=0)
      se = r.regret[0].std(axis=0) / np.sqrt(cfg.n_seeds)
      curves[f"{name}_M{m}"] = curve
      ax.plot(r.rounds, curve, label=algorithms.ALGORITHMS[name].label)
      ax.fill_between(r.rounds, curve - 1.96 * se, curve + 1.96 * se, alpha=0.2)
    rounds = next(iter(by_name.values())).rounds
    curves["round"] = rounds
    ax.plot(rounds, lower_bound(cfg.n_arms, rounds, m), "k--",
            label=r"lower bound $\sqrt{(K-1)Mt}/27$")
    ax.set(xlabel="round t", ylabel="cumulative regret, summed over agents",
           title=f"K={cfg.n_arms}, M={m}, eps {cfg.eps_profile}, {cfg.n_seeds} runs")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, f"regret_vs_t_M{m}.png")
  ctx.write_csv("metrics.csv", rows)
  ctx.write_csv("curves.csv", curves)
  ctx.info["channels"] = {f"M{m}": {"eps": e.tolist(), "initial_arm": i.tolist()}
                          for m, (e, i) in chans.items()}
  if len(cfg.agents) >= 2:
    ms = sorted(res)
    for fname, col, ylabel, log in (("regret_vs_M.png", "mean_regret", "final regret (mean, 95% CI)",
                                     True),
                                    ("comm_vs_M.png", "mean_tx", "requests transmitted (mean)",
                                     True)):
      fig, ax = plt.subplots(figsize=(6.4, 4.4))
      for name in cfg.schedulers:
        sel = [i for i, n in enumerate(rows["scheduler"]) if n == name]
        order = np.argsort([rows["M"][i] for i in sel])
        xs = np.array([rows["M"][sel[i]] for i in order], float)
        ys = np.array([rows[col][sel[i]] for i in order])
        if col == "mean_regret":
          lo = ys - np.array([rows["ci95_lo"][sel[i]] for i in order])
          hi = np.array([rows["ci95_hi"][sel[i]] for i in order]) - ys
          ax.errorbar(xs, ys, yerr=[np.minimum(lo, 0.9 * ys), hi], marker="o", capsize=3,
                      label=algorithms.ALGORITHMS[name].label)
        else:
          ax.plot(xs, ys, marker="o", label=algorithms.ALGORITHMS[name].label)
      if col == "mean_regret":
        ax.plot(ms, [lower_bound(cfg.n_arms, cfg.horizon, m) for m in ms], "k--",
                label=r"lower bound $\sqrt{(K-1)MT}/27$")
      ax.set(xlabel="agents M", ylabel=ylabel, yscale="log" if log else "linear",
             title=f"K={cfg.n_arms}, T={cfg.horizon}, eps {cfg.eps_profile}")
      ax.legend(fontsize=8)
      ctx.save_figure(fig, fname)
  return headline
