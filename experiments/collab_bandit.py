"""Regret of collaborative personalized linear bandits: the three regimes of arXiv 2506.15943.

m agents with theta_i = mu + sigma z_i play linear bandits for n rounds. We
compare the two-stage collaborative algorithm (our reconstruction; see
:mod:`bandits.collab.algorithms`) with independent OFUL and linear Thompson
sampling per agent, fully pooled OFUL, and an oracle that samples from the
exact posterior under the true prior N(mu, sigma^2 I).

The paper's full text (and so its figure setup) was not available; the four
figures are our version of "regret vs n, vs m and vs sigma":

1. ``regret_vs_t.png``: cumulative regret (summed over agents) vs round t at the
   main point (m = n_agents, sigma), every algorithm, 95% CI bands;
2. ``regret_vs_n.png``: the same on log-log axes with the regime boundaries
   n = d/(m sigma^2) and n = d/sigma^2, the rate
   R(n) = min{d m sqrt(n), d sqrt(mn) + sigma sqrt(d) m n} scaled by a constant
   fitted to the collaborative algorithm, and its fitted slope per regime;
3. ``regret_vs_m.png``: final regret at ``sweep_horizon`` vs m (sigma fixed);
4. ``regret_vs_sigma.png``: final regret at ``sweep_horizon`` vs sigma (m fixed).

The rate is a minimax rate up to log factors; a fixed instance shows it only through
local slopes, which near a boundary mix the two sides: ``theory_slope_regime{k}`` is the
slope of R(n) over the same n points as the fit, ``theory_slope_regime{k}_log`` that of
:func:`bandits.collab.theory.rate_log` (R(n) ln n, OFUL's log factor). What the measured
slopes show, and why they differ from R(n) on the unit ball, is in docs/bandits.md.

The algorithms are anytime (no horizon-dependent tuning), so regret at n is
read off one run's cumulative curve. All grid points of one algorithm run in
one jitted call (agents padded to the largest m and masked), vmapped over seeds.

    python -m experiments.main experiment=collab_bandit
    python -m experiments.main experiment=collab_bandit action_set=contexts n_arms=10

Headline: ``regret_<algorithm>`` (mean final regret at the main point, summed
over agents), ``slope_regime{1,2,3}`` with ``slope_regime{k}_lo/_hi`` (the
collaborative algorithm's log-log slope of regret vs n within each regime:
per-seed least-squares slopes, mean and 95% t-interval over seeds),
``slope_regime{k}_<algorithm>`` (with ``_lo/_hi``) the same for every other
algorithm, ``theory_slope_regime{k}`` (the slope of R(n) over the same n),
``theory_slope_regime{k}_log`` (of :func:`bandits.collab.theory.rate_log`), ``regime{k}_points``,
``slope_regime{k}_post_stage1`` (with ``_lo/_hi``: collab's slopes of its regret after stage 1,
the regret at the end of stage 1 subtracted),
the boundaries ``n_boundary_1``, ``n_boundary_2``, ``regret_collab_stage1``
(collab's regret after its stage 1) and ``rate_constant``. The middle-regime check
(:func:`middle_regime`) adds ``middle_slope_{raw,norm}_gamma<1000 gamma>`` (with
``_lo``/``_hi``) and ``middle_theory_{raw,norm}_gamma<...>`` (1 - 2 gamma and 1 - gamma).
``window_edges`` adds slope fits over consecutive windows of n, whatever the regimes (e.g.
how a regime's slope approaches its rate far past the boundary):
``slope_window{j}`` / ``slope_window{j}_<algorithm>`` (with ``_lo/_hi``),
``theory_slope_window{j}`` (and ``_log``) and ``window{j}_n_lo/_n_hi``, j = 1, 2, ...
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from bandits.collab import algorithms, env
from bandits.collab.theory import boundaries, rate, rate_log
from experiments import io
from experiments.schema import ConfigError, each, ge, gt, in_range, one_of, param

ALGORITHM_NAMES = tuple(algorithms.ALGORITHMS)


@dataclasses.dataclass(frozen=True)
class Config:
  algorithms: tuple[str, ...] = param(ALGORITHM_NAMES, "algorithms to run",
                                      check=each(one_of(*ALGORITHM_NAMES)))
  d: int = param(10, "dimension d", check=ge(1))
  n_agents: int = param(20, "agents m at the main point", check=ge(1))
  sigma: float = param(0.07, "heterogeneity sigma at the main point", check=ge(0))
  horizon: int = param(10_000, "rounds n of the main point (regret-vs-n curve)", check=gt(1))
  m_grid: tuple[int, ...] = param((5, 10, 20, 40), "m values of the regret-vs-m figure",
                                  check=each(ge(1)))
  sigma_grid: tuple[float, ...] = param((0.0, 0.03, 0.07, 0.15, 0.3, 0.6),
                                        "sigma values of the regret-vs-sigma figure",
                                        check=each(ge(0)))
  sweep_horizon: int = param(1_000, "rounds n of the m and sigma sweeps", check=gt(0))
  n_seeds: int = param(6, "runs per grid point (run s of every point shares mu, z_i, arms)",
                       check=ge(2))
  action_set: str = param("ball", "ball | finite (K fixed unit vectors) | contexts (K fresh "
                          "per agent and round)", check=one_of(*env.ACTION_SETS))
  n_arms: int = param(20, "K of finite and context action sets", check=ge(2))
  population: str = param("gaussian", "z_i ~ N(0, I) (gaussian) or U[-sqrt3, sqrt3]^d (bounded)",
                          check=one_of(*env.POPULATIONS))
  mean_norm: float = param(1.0, "||mu||; mu's direction is uniform per seed", check=ge(0))
  noise_std: float = param(1.0, "Gaussian reward noise", check=gt(0))
  delta: float = param(0.01, "confidence level of the OFUL ellipsoids",
                       check=in_range(0, 1, lo_open=True, hi_open=True))
  explore_per_dim: int = param(2, "collab's stage 1 lasts explore_per_dim * d rounds (whole "
                               "cycles of its design)", check=ge(1))
  regime_points: int = param(8, "n values per regime in the slope fits", check=ge(3))
  middle_gammas: tuple[float, ...] = param(
      (0.125, 0.25, 0.375), "gamma of the middle-regime check: collab at n = d/(m^(2 gamma) "
      "sigma^2) for every m of middle_m_grid (empty skips it)",
      check=each(in_range(0, 0.5, lo_open=True), empty=True))
  middle_m_grid: tuple[int, ...] = param((4, 8, 16, 32, 64), "m values of the middle-regime "
                                         "check", check=each(ge(2)))
  window_edges: tuple[int, ...] = param(
      (), "increasing rounds e_0 < e_1 < ... <= horizon: extra slope fits over [e_0, e_1], "
      "[e_1, e_2], ... (regime_points n values each; empty: none)", check=each(ge(1), empty=True))

  def check(self) -> None:
    """Checks that involve several keys."""
    n1 = algorithms.explore_rounds(self.d, self.action_set, self.n_arms, self.explore_per_dim)
    if self.middle_gammas and self.sigma <= 0:
      raise ConfigError("sigma", "must be > 0 for the middle-regime check (middle_gammas)")
    if self.middle_gammas and middle_rounds(self, self.middle_gammas).min() <= n1:
      raise ConfigError("middle_m_grid", f"every n = d/(m^(2 gamma) sigma^2) of the "
                        f"middle-regime check must exceed collab's stage 1 ({n1} rounds)")
    if self.horizon <= 2 * n1:
      raise ConfigError("horizon", f"must exceed twice collab's stage 1 ({n1} rounds)")
    if self.sweep_horizon <= n1:
      raise ConfigError("sweep_horizon", f"must exceed collab's stage 1 ({n1} rounds)")
    e = self.window_edges
    if len(e) == 1 or any(b < 1.5 * a for a, b in zip(e, e[1:])) or (e and e[-1] > self.horizon):
      raise ConfigError("window_edges", f"must be empty or 2+ rounds, each at least 1.5x the "
                        f"one before, the last <= horizon ({self.horizon}); got {list(e)}")


def middle_rounds(cfg: "Config", gammas) -> np.ndarray:
  """(len(gammas), len(middle_m_grid)) rounds n = d noise^2 / (m^(2 gamma) sigma^2): the
  left end of the middle regime for each gamma (arXiv 2506.15943's abstract)."""
  m = np.asarray(cfg.middle_m_grid, float)
  g = np.asarray(gammas, float)[:, None]
  return np.round(cfg.d * (cfg.noise_std / cfg.sigma) ** 2 / m ** (2 * g)).astype(int)


def middle_regime(cfg: Config, seed: int, progress: bool = False) -> dict:
  """The abstract's middle regime in its own form: regret ~ d m^(1 - gamma) sqrt(n).

  Collab runs once per m (one jitted call over the grid, to the largest n; the algorithm
  is anytime) and its total regret is read at n = d/(m^(2 gamma) sigma^2) for each gamma.
  There the rate is d^(3/2) m^(1 - 2 gamma) / sigma: the raw log-log slope against m is
  1 - 2 gamma, and that of regret / (d sqrt(n)) is 1 - gamma. Per-seed slopes, mean and
  t interval over seeds.
  """
  from bandits.collab import sim  # pylint: disable=import-outside-toplevel
  from experiments.progress import chunk_bar  # pylint: disable=import-outside-toplevel
  from experiments.stats import loglog_slope, mean_ci  # pylint: disable=import-outside-toplevel
  ns = middle_rounds(cfg, cfg.middle_gammas)
  inst = sim.make_instances([dict(m=m, sigma=cfg.sigma) for m in cfg.middle_m_grid],
                            cfg.n_seeds, seed, d=cfg.d, mean_norm=cfg.mean_norm,
                            population=cfg.population, action_set=cfg.action_set,
                            n_arms=cfg.n_arms)
  with chunk_bar("collab middle regime", int(ns.max()), enabled=progress) as bar:
    res = sim.run("collab", inst, jax.random.fold_in(jax.random.key(seed), 0x4D494444),
                  horizon=int(ns.max()), noise_std=cfg.noise_std, delta=cfg.delta,
                  explore_per_dim=cfg.explore_per_dim, n_points=int(ns.max()), progress=bar)
  rounds = np.asarray(res.rounds)
  at = np.searchsorted(rounds, ns)          # a curve point per round: rounds[at] == ns
  assert np.array_equal(rounds[np.minimum(at, rounds.size - 1)], ns), "curve not per round"
  m = np.asarray(cfg.middle_m_grid, float)
  out = {"rows": {k: [] for k in ("gamma", "m", "n", "regret", "regret_lo", "regret_hi",
                                  "normalized")}}
  for gi, gamma in enumerate(cfg.middle_gammas):
    # (G, S, n) curves: regret of grid point (m) j at its own n.
    reg = np.stack([np.asarray(res.regret[j])[:, at[gi, j]] for j in range(m.size)], 1)  # (S, M)
    norm = reg / (cfg.d * np.sqrt(ns[gi]))[None]
    for name, y in (("raw", reg), ("norm", norm)):
      per_seed = [loglog_slope(m, np.maximum(row, 1e-12))[0] for row in y]
      out[f"{name}_{gi}"] = mean_ci(per_seed)
    for j in range(m.size):
      mu, lo, hi = mean_ci(reg[:, j])
      for col, v in zip(out["rows"], (gamma, m[j], ns[gi, j], mu, lo, hi, norm[:, j].mean())):
        out["rows"][col].append(v)
  return out


def regime_grid(lo: float, hi: float, n_lo: float, n_hi: float, k: int) -> np.ndarray:
  """k log-spaced integer rounds within [lo, hi] clipped to [n_lo, n_hi]; empty if too narrow."""
  a, b = max(lo, n_lo), min(hi, n_hi)
  if not b >= 1.5 * a:
    return np.zeros(0, int)
  return np.unique(np.round(np.geomspace(a, b, k)).astype(int))


def regime_slopes(curves: np.ndarray, cfg: Config, n_lo: float, fn=None, windows=None):
  """Per regime (or per window (lo, hi) of ``windows``): (rounds, per-seed slopes (S,),
  theory slope of ``fn``, default :func:`rate`) of curves (S, n)."""
  fn = rate if fn is None else fn
  from experiments.stats import loglog_slope  # pylint: disable=import-outside-toplevel
  if windows is None:
    b1, b2 = boundaries(cfg.d, cfg.n_agents, cfg.sigma, cfg.noise_std)
    windows = ((0, b1), (b1, b2), (b2, np.inf))
  out = []
  for lo, hi in windows:
    ns = regime_grid(lo, hi, n_lo, cfg.horizon, cfg.regime_points)
    if ns.size < 3:
      out.append((ns, np.full(curves.shape[0], np.nan), float("nan")))
      continue
    per_seed = np.array([loglog_slope(ns, np.maximum(c[ns - 1], 1e-12))[0] for c in curves])
    theory = loglog_slope(ns, fn(ns, cfg.n_agents, cfg.sigma / cfg.noise_std, cfg.d))[0]
    out.append((ns, per_seed, theory))
  return out


def simulate_all(cfg: Config, seed: int, progress: bool = False):
  """Main point (horizon rounds) and the m/sigma sweeps (sweep_horizon) for every algorithm."""
  from bandits.collab import sim  # pylint: disable=import-outside-toplevel
  from experiments.progress import chunk_bar  # pylint: disable=import-outside-toplevel
  opts = dict(d=cfg.d, mean_norm=cfg.mean_norm, population=cfg.population,
              action_set=cfg.action_set, n_arms=cfg.n_arms)
  main = sim.make_instances([dict(m=cfg.n_agents, sigma=cfg.sigma)], cfg.n_seeds, seed, **opts)
  sweep_grid = ([dict(m=m, sigma=cfg.sigma) for m in cfg.m_grid] +
                [dict(m=cfg.n_agents, sigma=s) for s in cfg.sigma_grid])
  sweep = sim.make_instances(sweep_grid, cfg.n_seeds, seed, **opts)
  key = jax.random.key(seed)
  run_opts = dict(noise_std=cfg.noise_std, delta=cfg.delta, explore_per_dim=cfg.explore_per_dim,
                  n_points=100)
  out_main, out_sweep = {}, {}
  for i, name in enumerate(cfg.algorithms):
    with chunk_bar(f"{name} main ({i + 1}/{len(cfg.algorithms)})", 100, enabled=progress) as bar:
      # The same key for every algorithm: common random numbers (noise, contexts).
      out_main[name] = sim.run(name, main, key, horizon=cfg.horizon, progress=bar, **run_opts)
    with chunk_bar(f"{name} sweeps", 100, enabled=progress) as bar:
      res = sim.run(name, sweep, key, horizon=cfg.sweep_horizon, progress=bar, **run_opts)
      out_sweep[name] = res.final_regret
  return main, out_main, sweep_grid, out_sweep


def run(cfg: Config, ctx) -> dict:
  plt = io.pyplot()
  from experiments.stats import mean_ci  # pylint: disable=import-outside-toplevel

  _, res, sweep_grid, sweep = simulate_all(cfg, ctx.seed, ctx.progress)
  label = lambda name: algorithms.ALGORITHMS[name].label
  n1 = algorithms.explore_rounds(cfg.d, cfg.action_set, cfg.n_arms, cfg.explore_per_dim)
  b1, b2 = boundaries(cfg.d, cfg.n_agents, cfg.sigma, cfg.noise_std)
  sig = cfg.sigma / cfg.noise_std
  headline: dict[str, float] = {"d": cfg.d, "m": cfg.n_agents, "sigma": cfg.sigma,
                                "n": cfg.horizon, "n_seeds": cfg.n_seeds, "stage1_rounds": n1,
                                "n_boundary_1": min(b1, 1e300), "n_boundary_2": min(b2, 1e300)}
  for name, r in res.items():
    headline[f"regret_{name}"] = float(r.final_regret[0].mean())

  # The rate's constant, fitted (least squares in log) to the reference algorithm's curve.
  ref = "collab" if "collab" in res else next(iter(res))
  n_lo = max(2 * n1, 10)
  ns_all = np.unique(np.round(np.geomspace(n_lo, cfg.horizon, 200)).astype(int))
  ref_mean = res[ref].regret[0].mean(axis=0)
  theory = rate(ns_all, cfg.n_agents, sig, cfg.d)
  const = float(np.exp(np.mean(np.log(np.maximum(ref_mean[ns_all - 1], 1e-12)) - np.log(theory))))
  headline["rate_constant"] = const
  if "collab" in res:  # regret of stage 1 (the fixed design, about 1 per agent-round)
    headline["regret_collab_stage1"] = float(res["collab"].regret[0][:, n1 - 1].mean())

  slope_rows = {k: [] for k in ("algorithm", "regime", "n_lo", "n_hi", "points", "slope",
                                "ci95_lo", "ci95_hi", "theory_slope", "theory_slope_log")}
  fits_log = regime_slopes(res[ref].regret[0], cfg, n_lo, rate_log)
  for name in [ref] + [a for a in res if a != ref]:
    fits_a = regime_slopes(res[name].regret[0], cfg, n_lo)
    # slope_regime{k}: the reference (collab); slope_regime{k}_<name>: every other algorithm.
    suffix = "" if name == ref else f"_{name}"
    for k, ((ns, per_seed, th), (_, _, th_log)) in enumerate(zip(fits_a, fits_log), start=1):
      if ns.size >= 3:
        m_, lo, hi = mean_ci(per_seed)
      else:
        m_ = lo = hi = float("nan")
      headline[f"slope_regime{k}{suffix}"] = m_
      headline[f"slope_regime{k}{suffix}_lo"] = lo
      headline[f"slope_regime{k}{suffix}_hi"] = hi
      if name == ref:
        headline[f"theory_slope_regime{k}"] = th
        headline[f"theory_slope_regime{k}_log"] = th_log
        headline[f"regime{k}_points"] = ns.size
      for col, v in zip(slope_rows, (name, k, ns[0] if ns.size else 0, ns[-1] if ns.size else 0,
                                     ns.size, m_, lo, hi, th, th_log)):
        slope_rows[col].append(v)
  fits = regime_slopes(res[ref].regret[0], cfg, n_lo)
  if "collab" in res:
    # The same fits without the cost of collab's stage 1 (its regret at n1 taken off every
    # point): where a regime is short and starts near n1, that constant flattens the slope.
    curves_c = res["collab"].regret[0]
    post = regime_slopes(curves_c - curves_c[:, n1 - 1:n1], cfg, n_lo)
    for k, (ns, per_seed, _) in enumerate(post, start=1):
      m_, lo, hi = mean_ci(per_seed) if ns.size >= 3 else (float("nan"),) * 3
      headline.update({f"slope_regime{k}_post_stage1": m_,
                       f"slope_regime{k}_post_stage1_lo": lo,
                       f"slope_regime{k}_post_stage1_hi": hi})
  edges = cfg.window_edges
  windows = list(zip(edges, edges[1:]))
  if windows:
    w_log = regime_slopes(res[ref].regret[0], cfg, n_lo, rate_log, windows)
    for name in [ref] + [a for a in res if a != ref]:
      suffix = "" if name == ref else f"_{name}"
      w_fit = regime_slopes(res[name].regret[0], cfg, n_lo, windows=windows)
      for j, ((ns, per_seed, th), (_, _, th_log)) in enumerate(zip(w_fit, w_log), start=1):
        m_, lo, hi = mean_ci(per_seed) if ns.size >= 3 else (float("nan"),) * 3
        headline.update({f"slope_window{j}{suffix}": m_, f"slope_window{j}{suffix}_lo": lo,
                         f"slope_window{j}{suffix}_hi": hi})
        if name == ref:
          headline.update({f"theory_slope_window{j}": th, f"theory_slope_window{j}_log": th_log,
                           f"window{j}_n_lo": float(ns[0]) if ns.size else float("nan"),
                           f"window{j}_n_hi": float(ns[-1]) if ns.size else float("nan")})
        for col, v in zip(slope_rows, (name, f"window{j}", ns[0] if ns.size else 0,
                                       ns[-1] if ns.size else 0, ns.size, m_, lo, hi, th,
                                       th_log)):
          slope_rows[col].append(v)
  ctx.write_csv("regime_slopes.csv", slope_rows)
  if cfg.middle_gammas:
    mid = middle_regime(cfg, ctx.seed, ctx.progress)
    for gi, gamma in enumerate(cfg.middle_gammas):
      tag = f"gamma{round(1000 * gamma):03d}"
      for name, th_exp in (("raw", 1 - 2 * gamma), ("norm", 1 - gamma)):
        s_, lo, hi = mid[f"{name}_{gi}"]
        headline.update({f"middle_slope_{name}_{tag}": s_, f"middle_slope_{name}_{tag}_lo": lo,
                         f"middle_slope_{name}_{tag}_hi": hi,
                         f"middle_theory_{name}_{tag}": th_exp})
    ctx.write_csv("middle_regime.csv", mid["rows"])
    rows = mid["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for gamma in cfg.middle_gammas:
      sel = np.asarray(rows["gamma"]) == gamma
      ms, reg = np.asarray(rows["m"])[sel], np.asarray(rows["regret"])[sel]
      for ax, y, th in ((axes[0], reg, 1 - 2 * gamma),
                        (axes[1], np.asarray(rows["normalized"])[sel], 1 - gamma)):
        line, = ax.plot(ms, y, "o-", label=f"gamma={gamma:g}")
        ax.plot(ms, y[0] * (ms / ms[0]) ** th, "--", color=line.get_color(), lw=1)
    axes[0].set(xscale="log", yscale="log", xlabel="agents m", title="regret at n = "
                "d/(m^(2 gamma) sigma^2); dashed: m^(1-2 gamma)")
    axes[1].set(xscale="log", yscale="log", xlabel="agents m",
                title="regret / (d sqrt n); dashed: m^(1-gamma)")
    axes[0].legend(fontsize=8)
    ctx.save_figure(fig, "middle_regime.png")

  curves = {"round": ns_all}
  for name, r in res.items():
    curves[name] = r.regret[0].mean(axis=0)[ns_all - 1]
  curves["rate_scaled"] = const * theory
  ctx.write_csv("curves.csv", curves)
  ctx.info["instance"] = {"d": cfg.d, "m": cfg.n_agents, "sigma": cfg.sigma,
                          "action_set": cfg.action_set, "population": cfg.population,
                          "mean_norm": cfg.mean_norm, "noise_std": cfg.noise_std,
                          "algorithm": "two-stage collaborative = reconstruction (paper text "
                                       "unavailable)"}

  def mark_boundaries(ax, lo_n, hi_n):
    for b, txt in ((b1, r"$d/(m\sigma^2)$"), (b2, r"$d/\sigma^2$")):
      if lo_n <= b <= hi_n:
        ax.axvline(b, color="gray", ls=":", lw=1)
        ax.text(b, ax.get_ylim()[1], txt, fontsize=8, ha="center", va="bottom")

  # Figure 1: cumulative regret vs t.
  rounds = res[ref].rounds
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for name, r in res.items():
    c = r.regret[0]
    mean, se = c.mean(axis=0), c.std(axis=0) / np.sqrt(cfg.n_seeds)
    ax.plot(rounds, mean, label=label(name))
    ax.fill_between(rounds, mean - 1.96 * se, mean + 1.96 * se, alpha=0.2)
  ax.set(xlabel="round t", ylabel="cumulative regret (sum over agents)",
         title=f"{cfg.action_set}, d={cfg.d}, m={cfg.n_agents}, sigma={cfg.sigma}, "
               f"{cfg.n_seeds} seeds")
  mark_boundaries(ax, 1, cfg.horizon)
  ax.legend(fontsize=8)
  ctx.save_figure(fig, "regret_vs_t.png")

  # Figure 2: log-log regret vs n with regimes, the scaled rate and the fitted slopes.
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for name in res:
    ax.plot(ns_all, curves[name], label=label(name))
  ax.plot(ns_all, const * theory, "k--", lw=1,
          label=rf"{const:.2g} min$\{{dm\sqrt{{n}}, d\sqrt{{mn}}+\sigma\sqrt{{d}}mn\}}$")
  for k, (ns, per_seed, th) in enumerate(fits, start=1):
    if ns.size >= 3:
      s = np.nanmean(per_seed)
      y0 = ref_mean[ns[0] - 1]
      ax.plot(ns, y0 * (ns / ns[0]) ** s, color="red", lw=2.5, alpha=0.5)
      ax.text(ns[len(ns) // 2], y0 * (ns[len(ns) // 2] / ns[0]) ** s * 0.6,
              f"R{k}: {s:.2f} (th {th:.2f})", fontsize=7, color="red")
  ax.set(xscale="log", yscale="log", xlabel="rounds n", ylabel="regret (sum over agents)",
         title="regret vs n; red: collab's fitted slope per regime")
  mark_boundaries(ax, n_lo, cfg.horizon)
  ax.legend(fontsize=7)
  ctx.save_figure(fig, "regret_vs_n.png")

  # Figures 3 and 4: sweeps over m and sigma.
  n_m = len(cfg.m_grid)
  sweep_rows = {k: [] for k in ("algorithm", "sweep", "m", "sigma", "n", "mean_regret",
                                "ci95_lo", "ci95_hi", "rate")}
  for name, fr in sweep.items():
    for gi, g in enumerate(sweep_grid):
      m_, lo, hi = mean_ci(fr[gi])
      for col, v in zip(sweep_rows, (name, "m" if gi < n_m else "sigma", g["m"], g["sigma"],
                                     cfg.sweep_horizon, m_, lo, hi,
                                     float(rate(cfg.sweep_horizon, g["m"],
                                                g["sigma"] / cfg.noise_std, cfg.d)))):
        sweep_rows[col].append(v)
  ctx.write_csv("sweeps.csv", sweep_rows)

  def sweep_figure(sl, xs, xlabel, fname, rate_xs, xscale):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, fr in sweep.items():
      stats = np.array([mean_ci(fr[gi]) for gi in range(sl.start, sl.stop)])
      lower = np.clip(np.minimum(stats[:, 0] - stats[:, 1], 0.9 * stats[:, 0]), 0, None)  # log axis
      upper = np.clip(stats[:, 2] - stats[:, 0], 0, None)
      ax.errorbar(xs, stats[:, 0], yerr=[lower, upper], marker="o",
                  capsize=3, label=label(name))
    ax.plot(xs, const * rate_xs, "k--", lw=1, label=f"{const:.2g} x rate")
    ax.set(xlabel=xlabel, ylabel=f"regret at n={cfg.sweep_horizon} (mean, 95% CI)",
           yscale="log", xscale=xscale)
    ax.legend(fontsize=7)
    ctx.save_figure(fig, fname)

  if n_m >= 2:
    ms = np.array(cfg.m_grid, float)
    sweep_figure(slice(0, n_m), ms, f"agents m (sigma={cfg.sigma})", "regret_vs_m.png",
                 rate(cfg.sweep_horizon, ms, sig, cfg.d), "log")
  if len(cfg.sigma_grid) >= 2:
    ss = np.array(cfg.sigma_grid, float)
    sweep_figure(slice(n_m, n_m + len(ss)), ss, f"heterogeneity sigma (m={cfg.n_agents})",
                 "regret_vs_sigma.png", rate(cfg.sweep_horizon, cfg.n_agents,
                                             ss / cfg.noise_std, cfg.d), "symlog")
  return headline
