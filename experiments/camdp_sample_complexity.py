"""Sample complexity of constrained average-reward MDPs (arXiv 2509.16586), checked numerically.

The paper has no experiments; this is where its bounds O~(SA(B+H)/eps^2)
(relaxed feasibility) and O~(SA(B+H)/(eps^2 zeta^2)) (strict) first meet
numbers. On the hard instances of :mod:`cmdp.instances` (S states, A actions,
core time scale H, Slater constant zeta; ``transient_B >= 1`` makes them
multichain with transient time B) the model-based primal-dual algorithm of
:mod:`cmdp.average_reward` runs for a geometric grid of N (samples per (s, a))
x ``n_seeds`` seeds at every sweep point, all (N, seed, instance) runs of a
setting in jitted, vmapped calls. Each output mixture is evaluated exactly
(float64) against the LP optimum.

A run succeeds when ``rho_r >= rho* - eps`` and ``rho_c >= b - eps`` (relaxed)
or ``rho_c >= b`` (strict, exact to 1e-9). The reported N of a sweep point is
the smallest grid N from which on (at it and every larger grid N) the success
rate is >= 1 - delta; in the strict setting no seed may violate the constraint
there either. ``n_star`` is that grid value; ``n_star_interp`` interpolates
log N linearly between the last failing grid point and it, at the point where
the success rate crosses 1 - delta (the slopes are fitted to it). The strict
setting is then re-run at its reported N on ``n_check_seeds`` fresh seeds and
the violations counted (``strict_violations``).

Sweeps (one key varied around the base point): eps over ``eps_grid``, the core
time scale over ``H_grid`` (x axis: the computed B + H of each instance) and
zeta over ``zeta_grid``. The span axis is the computed H for the weakly-communicating
instance (whose bound is SAH/eps^2) and B + H for the multichain one. Slopes of
log N* against log eps, log (B+H) and log
zeta with t confidence intervals; theory: -2, +1, and -2 (strict) / 0 (relaxed).

    python -m experiments.main experiment=camdp_sample_complexity
    python -m experiments.main experiment=camdp_sample_complexity n_seeds=32 transient_B=10

Headline: ``slope_eps``, ``slope_span``, ``slope_zeta`` (strict setting, each
with ``_lo``/``_hi``), ``relaxed_slope_*`` likewise, ``strict_violations``, the
base point's N* per setting, and the number of runs.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments import io
from experiments.stats import one_at_a_time
from experiments.schema import Check, ConfigError, each, ge, gt, in_range, one_of, param

SETTINGS = ("relaxed", "strict")
THEORY = {"eps": -2.0, "span": 1.0, "zeta": {"strict": -2.0, "relaxed": 0.0}}


@dataclasses.dataclass(frozen=True)
class Config:
  settings: tuple[str, ...] = param(SETTINGS, "feasibility settings to run",
                                    check=each(one_of(*SETTINGS)))
  n_states: int = param(20, "S of the hard instances", check=ge(4))
  n_actions: int = param(4, "A of the hard instances", check=ge(2))
  transient_B: float = param(0.0, "0: weakly-communicating hard instance; >= 1: multichain, "
                             "entry state with transient time B",
                             check=Check(lambda v: v == 0 or v >= 1, "0 or a number >= 1"))
  eps: float = param(0.05, "target accuracy at the base point", check=in_range(0, 1, lo_open=True))
  H: float = param(10.0, "core time scale (leave probability 1/H) at the base point",
                   check=ge(2))
  zeta: float = param(0.1, "Slater constant at the base point",
                      check=in_range(0, 0.25, lo_open=True, hi_open=True))
  eps_grid: tuple[float, ...] = param((0.1, 0.07, 0.05, 0.035), "eps sweep",
                                      check=each(in_range(0, 1, lo_open=True)))
  H_grid: tuple[float, ...] = param((5.0, 10.0, 20.0, 40.0), "core time-scale sweep (B+H axis)",
                                    check=each(ge(2)))
  zeta_grid: tuple[float, ...] = param((0.05, 0.07, 0.1, 0.14, 0.2), "Slater-constant sweep",
                                       check=each(in_range(0, 0.25, lo_open=True, hi_open=True)))
  relaxed_n_range: tuple[int, ...] = param((16, 2 ** 18), "[min, max] of the relaxed N grid",
                                           check=each(ge(1)))
  strict_n_range: tuple[int, ...] = param((4096, 2 ** 27), "[min, max] of the strict N grid",
                                          check=each(ge(1)))
  n_per_octave: int = param(2, "N grid points per doubling (geometric grid)",
                            check=in_range(1, 8))
  n_seeds: int = param(16, "seeds per (sweep point, N)", check=ge(2))
  delta: float = param(0.1, "failure probability: success rate must be >= 1 - delta",
                       check=in_range(0, 1, lo_open=True, hi_open=True))
  n_check_seeds: int = param(64, "fresh seeds re-run at the strict setting's reported N "
                             "(0 skips)", check=ge(0))
  n_grid: int = param(128, "dual grid points (best responses planned per run)",
                      check=ge(2))
  n_iters: int = param(2 ** 19, "dual subgradient steps T (the dual residual ~ 1/(16 sqrt T) "
                       "must stay well below the strict tightening eps zeta / 4)", check=ge(1))
  batch_size: int = param(2048, "runs per jitted call", check=ge(1))

  def check(self) -> None:
    for key in ("relaxed_n_range", "strict_n_range"):
      rng = getattr(self, key)
      if len(rng) != 2 or rng[0] >= rng[1]:
        raise ConfigError(key, f"must be [min, max] with min < max; got {list(rng)}")
    if self.transient_B >= 1 and self.n_states < 4:
      raise ConfigError("n_states", "must be >= 4 for the multichain instance")


def n_grid_values(lo: int, hi: int, per_octave: int) -> np.ndarray:
  """Geometric grid of integers from lo to hi with ``per_octave`` points per doubling."""
  k = np.arange(int(np.floor(np.log2(hi / lo) * per_octave)) + 1)
  return np.unique(np.round(lo * 2.0 ** (k / per_octave)).astype(np.int64))


def sweep_points(cfg: Config) -> tuple[list[dict], dict[str, list[int]]]:
  """Unique (eps, H, zeta) points and, per sweep, the indices of its points."""
  return one_at_a_time(dict(eps=cfg.eps, H=cfg.H, zeta=cfg.zeta),
                       {"eps": ("eps", cfg.eps_grid), "span": ("H", cfg.H_grid),
                        "zeta": ("zeta", cfg.zeta_grid)})


def smallest_n(ns: np.ndarray, rate: np.ndarray, ok_extra: np.ndarray, target: float
               ) -> tuple[float, float, int]:
  """(N*, interpolated N*, index) of the first grid N from which on rate >= target.

  ``ok_extra`` (bool per N) must also hold from there on. nan if none.
  """
  good = (rate >= target) & ok_extra
  tail = np.flip(np.cumprod(np.flip(good)).astype(bool))  # good at i and all after
  if not tail.any():
    return float("nan"), float("nan"), -1
  i = int(np.argmax(tail))
  if i == 0:
    return float(ns[0]), float(ns[0]), 0
  r0, r1 = rate[i - 1], rate[i]
  if not ok_extra[i - 1] or r1 <= r0:
    frac = 1.0 if not ok_extra[i - 1] else 0.5
  else:
    frac = float(np.clip((target - r0) / (r1 - r0), 0, 1))
  lo, hi = np.log(ns[i - 1]), np.log(ns[i])
  return float(ns[i]), float(np.exp(lo + frac * (hi - lo))), i


def _run_flat(models, inst_idx, ns, eps, zeta, span, strict, key, cfg: Config, ctx, label: str):
  """All runs of a flat batch (chunked, padded to one shape); exact gains per run."""
  from cmdp import average_reward  # pylint: disable=import-outside-toplevel
  R = len(ns)
  stack = lambda f: np.stack([f(m) for m in models])
  P, r, c, mu0 = (stack(lambda m, a=a: getattr(m, a)) for a in ("P", "r", "c", "mu0"))
  b = np.array([float(m.b) for m in models])
  rho_r, rho_c = np.zeros(R), np.zeros(R)
  # One shape per call (padded): the batch size, or the next power of two for small batches,
  # so that few distinct shapes are compiled.
  bs = min(cfg.batch_size, 1 << max(R - 1, 1).bit_length())
  n_chunks = -(-R // bs)
  for j in range(n_chunks):
    sl = np.arange(j * bs, min((j + 1) * bs, R))
    pad = np.concatenate([sl, np.full(bs - sl.size, sl[-1])])
    ii = inst_idx[pad]
    start = time.perf_counter()
    out = average_reward.run_batch(
        jax.random.fold_in(key, j), P[ii], r[ii], c[ii], mu0[ii], b[ii], ns[pad], eps[pad],
        zeta[pad], span[pad], strict[pad], n_grid=cfg.n_grid, n_iters=cfg.n_iters)
    t_alg = time.perf_counter() - start
    out = jax.tree.map(lambda x: x[:sl.size], out)
    rr, rc = average_reward.evaluate_outputs(models, inst_idx[sl], out)
    rho_r[sl], rho_c[sl] = rr, rc
    if ctx.progress:
      ctx.say(f"[camdp] {label}: chunk {j + 1}/{n_chunks} ({bs} runs: algorithm {t_alg:.1f}s, "
              f"exact evaluation {time.perf_counter() - start - t_alg:.1f}s)")
  return rho_r, rho_c


def run(cfg: Config, ctx) -> dict:
  plt = io.pyplot()
  from cmdp import average_reward, instances, lp  # pylint: disable=import-outside-toplevel
  from experiments.stats import loglog_slope  # pylint: disable=import-outside-toplevel

  points, where = sweep_points(cfg)
  # Instances: one per distinct (H, zeta); exact solution and parameters.
  inst_keys = sorted({(p["H"], p["zeta"]) for p in points})
  models, sols, params = [], [], []
  for H, z in inst_keys:
    m = instances.hard_instance(cfg.n_states, cfg.n_actions, H, z, cfg.transient_B)
    sol = lp.solve_cmdp(m)
    models.append(m)
    sols.append(sol)
    params.append(average_reward.instance_parameters(m, sol))
  inst_of_point = np.array([inst_keys.index((p["H"], p["zeta"])) for p in points])
  # The bounds' span term: H for weakly-communicating instances (Zurek & Chen's SAH/eps^2;
  # B is not needed there), B + H for general ones. It is also the algorithm's input.
  general = cfg.transient_B >= 1
  span_of_point = np.array([params[i].H + (params[i].B if general else 0.0)
                            for i in inst_of_point])
  ctx.info["instances"] = [dict(H_param=H, zeta=z, H=p.H, B=p.B, rho_star=p.rho_star,
                                lam_star=p.lam_star, b=float(m.b))
                           for (H, z), p, m in zip(inst_keys, params, models)]

  key = jax.random.key(ctx.seed)
  target = 1.0 - cfg.delta
  headline: dict[str, float] = {"S": cfg.n_states, "A": cfg.n_actions, "n_seeds": cfg.n_seeds,
                                "delta": cfg.delta, "transient_B": cfg.transient_B}
  rows = {k: [] for k in ("setting", "eps", "H_param", "zeta", "span", "N", "success_rate",
                          "violation_rate", "mean_subopt", "q90_subopt", "mean_violation",
                          "q90_violation")}
  nstar_rows = {k: [] for k in ("setting", "sweep", "eps", "span", "zeta", "n_star",
                                "n_star_interp")}
  total_runs = 0
  results = {}
  for si, setting in enumerate(cfg.settings):
    strict = setting == "strict"
    lo, hi = cfg.strict_n_range if strict else cfg.relaxed_n_range
    ns_grid = n_grid_values(lo, hi, cfg.n_per_octave)
    n_pts, n_n = len(points), len(ns_grid)
    # Flat run index: (point, N, seed).
    pi_, ni_, _ = np.meshgrid(np.arange(n_pts), np.arange(n_n), np.arange(cfg.n_seeds),
                              indexing="ij")
    pi_, ni_ = pi_.ravel(), ni_.ravel()
    eps = np.array([points[i]["eps"] for i in pi_])
    zeta = np.array([points[i]["zeta"] for i in pi_])
    rho_r, rho_c = _run_flat(models, inst_of_point[pi_], ns_grid[ni_].astype(np.float64), eps,
                             zeta, span_of_point[pi_], np.full(pi_.size, strict),
                             jax.random.fold_in(key, si), cfg, ctx, setting)
    total_runs += pi_.size
    rstar = np.array([sols[i].value for i in inst_of_point[pi_]])
    b = np.array([float(models[i].b) for i in inst_of_point[pi_]])
    subopt = rstar - rho_r
    violation = b - rho_c
    feasible = violation <= (1e-9 if strict else eps)
    success = (subopt <= eps) & feasible
    shape = (n_pts, n_n, cfg.n_seeds)
    subopt, violation, success, feasible = (x.reshape(shape)
                                            for x in (subopt, violation, success, feasible))
    n_star = np.full(n_pts, np.nan)
    n_interp = np.full(n_pts, np.nan)
    for p in range(n_pts):
      extra = feasible[p].all(1) if strict else np.ones(n_n, bool)
      n_star[p], n_interp[p], _ = smallest_n(ns_grid, success[p].mean(1), extra, target)
      for k in range(n_n):
        for col, v in zip(rows, (setting, points[p]["eps"], points[p]["H"], points[p]["zeta"],
                                 span_of_point[p], ns_grid[k], success[p, k].mean(),
                                 1 - feasible[p, k].mean(), subopt[p, k].mean(),
                                 np.quantile(subopt[p, k], 0.9), violation[p, k].mean(),
                                 np.quantile(violation[p, k], 0.9))):
          rows[col].append(v)
    results[setting] = dict(ns=ns_grid, subopt=subopt, violation=violation, success=success,
                            n_star=n_star, n_interp=n_interp)
    prefix = "" if strict else "relaxed_"
    headline[f"{prefix}n_star_base"] = float(n_star[where["base"][0]])
    for sweep, xs_of in (("eps", lambda p: points[p]["eps"]), ("span", lambda p: span_of_point[p]),
                         ("zeta", lambda p: points[p]["zeta"])):
      idx = where[sweep]
      for p in idx:
        for col, v in zip(nstar_rows, (setting, sweep, points[p]["eps"], span_of_point[p],
                                       points[p]["zeta"], n_star[p], n_interp[p])):
          nstar_rows[col].append(v)
      xs, ys = np.array([xs_of(p) for p in idx]), n_interp[idx]
      ok = np.isfinite(ys)
      if ok.sum() >= 2 and len(np.unique(xs[ok])) >= 2:
        s, s_lo, s_hi = loglog_slope(xs[ok], ys[ok])
      else:
        s = s_lo = s_hi = float("nan")
      headline[f"{prefix}slope_{sweep}"] = s
      headline[f"{prefix}slope_{sweep}_lo"] = s_lo
      headline[f"{prefix}slope_{sweep}_hi"] = s_hi
    if strict:
      headline["strict_violations"] = _check_strict(cfg, ctx, models, points, inst_of_point,
                                                    span_of_point, n_star, key)
      headline["strict_check_runs"] = int(np.isfinite(n_star).sum() * cfg.n_check_seeds)
  headline["runs"] = total_runs
  ctx.write_csv("metrics.csv", rows)
  ctx.write_csv("n_star.csv", nstar_rows)
  _figures(cfg, ctx, plt, points, where, span_of_point, results, headline)
  return headline


def _check_strict(cfg, ctx, models, points, inst_of_point, span_of_point, n_star, key) -> int:
  """Violations among fresh seeds re-run at each strict point's reported N."""
  idx = np.flatnonzero(np.isfinite(n_star))
  if cfg.n_check_seeds == 0 or idx.size == 0:
    return 0
  pi_ = np.repeat(idx, cfg.n_check_seeds)
  eps = np.array([points[i]["eps"] for i in pi_])
  zeta = np.array([points[i]["zeta"] for i in pi_])
  _, rho_c = _run_flat(models, inst_of_point[pi_], n_star[pi_], eps, zeta, span_of_point[pi_],
                       np.ones(pi_.size, bool), jax.random.fold_in(key, 1000), cfg, ctx,
                       "strict check")
  b = np.array([float(models[i].b) for i in inst_of_point[pi_]])
  return int(np.sum(rho_c < b - 1e-9))


def _figures(cfg, ctx, plt, points, where, span_of_point, results, headline) -> None:
  # Error vs N at the base point (and its eps sweep), both settings.
  fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
  for row, (setting, res) in enumerate(results.items()):
    for p in where["eps"]:
      e = points[p]["eps"]
      for col, (err, name) in enumerate(((res["subopt"], "reward suboptimality rho* - rho_r"),
                                         (res["violation"], "constraint violation b - rho_c"))):
        ax = axes[row, col]
        mean = err[p].mean(1)
        line, = ax.plot(res["ns"], mean, marker=".", label=f"eps={e:g}")
        ax.fill_between(res["ns"], np.quantile(err[p], 0.1, axis=1),
                        np.quantile(err[p], 0.9, axis=1), color=line.get_color(), alpha=0.15)
        ax.axhline(e if (col == 0 or setting == "relaxed") else 0.0, color=line.get_color(),
                   ls=":", lw=1)
        ax.set(xscale="log", xlabel="N (samples per (s, a))", ylabel=name,
               title=f"{setting}: H={points[p]['H']:g}, zeta={points[p]['zeta']:g}")
    axes[row, 0].legend(fontsize=8)
  ctx.save_figure(fig, "error_vs_n.png")

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, (sweep, xlabel) in zip(axes, (("eps", "eps"), ("span", "H (computed; B + H if multichain)"),
                                        ("zeta", "Slater constant zeta"))):
    for setting, res in results.items():
      idx = where[sweep]
      xs = np.array([points[p][sweep] if sweep != "span" else span_of_point[p] for p in idx])
      ys = res["n_interp"][idx]
      prefix = "" if setting == "strict" else "relaxed_"
      s = headline.get(f"{prefix}slope_{sweep}", float("nan"))
      th = THEORY[sweep][setting] if sweep == "zeta" else THEORY[sweep]
      line, = ax.plot(xs, ys, "o-", label=f"{setting}: slope {s:.2f} (theory {th:g})")
      ok = np.isfinite(ys)
      if ok.any():
        x0, y0 = np.exp(np.log(xs[ok]).mean()), np.exp(np.log(ys[ok]).mean())
        xx = np.array([xs.min(), xs.max()])
        ax.plot(xx, y0 * (xx / x0) ** th, color=line.get_color(), ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel=xlabel,
           ylabel=f"smallest N with success >= {1 - cfg.delta:g}")
    ax.legend(fontsize=8)
  fig.suptitle(f"S={cfg.n_states}, A={cfg.n_actions}, {cfg.n_seeds} seeds; dashed: theory slope")
  ctx.save_figure(fig, "n_star.png")
