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
or ``rho_c >= b`` (strict, exact to 1e-9).

Relaxed setting: the reported N of a sweep point (``n_star``) is the smallest
grid N from which on (at it and every larger grid N) the success rate is
>= 1 - delta; ``n_star_interp`` interpolates log N linearly between the last
failing grid point and it, where the success rate crosses 1 - delta (the
relaxed slopes are fitted to it).

Strict setting: the reported N is one at which no seed violates the constraint
(:func:`experiments.stats.feasible_n`). Selection: the smallest grid N from
which on the success rate is >= 1 - delta and none of the ``n_seeds`` seeds
violates (the "success N", ``n_star_success``). Verification: each point is
re-run on ``n_check_seeds`` fresh seeds at that N; a point with a violating
fresh seed steps up to the next grid N and is re-checked on new seeds until a
batch is clean. ``n_star`` is the N it settles on (nan if the grid runs out),
and the strict slopes are fitted to it (grid values, so quantized to a factor
2^(1/n_per_octave)). ``strict_violations`` counts fresh violations at the
reported N: 0 by construction wherever a point settled (a point that does not
settle keeps its last count), so the information is in the number of clean runs
at the reported N (``strict_violation_rate_ub95``, the 95% upper bound on a
point's violation probability they give), in ``strict_check_runs`` (fresh runs,
all rounds), ``strict_check_steps`` (grid steps past the success N) and in
``strict_violations_at_success_n`` (fresh violations at the success N, the
smallest N that meets the success rate).

Smooth strict estimator (``strict_smooth_*``), as in ``linear_cmdp_sample_complexity``.
The verified N steps up the grid by whole steps on the evidence of one batch of
fresh seeds, so its slopes are noisy (a point that steps up once moves by a factor
2^(1/n_per_octave)). The smooth estimator uses all the strict evidence of a sweep
point: the per-seed strict failure indicator (violation, or not eps-optimal) of
the selection seeds at every grid N and of every fresh seed of every check round,
pooled, with a probit model in log N, ``P(fail | N) = Phi(a - b log N)``, fitted
by maximum likelihood (:func:`experiments.stats.failure_probit_n`). Its N is
where the fitted failure probability equals ``strict_smooth_level`` (0.05: half
the delta of the success criterion). It estimates the N at which one run fails
the strict criterion with probability 0.05, continuous in the data rather than
quantized to the grid; it is not a certificate (at that N about 1 run in 20 still
fails, where the verified N has 0 violations in ``n_seeds + n_check_seeds``
runs), it leans on the probit shape where the evidence is thin, and it is nan
where the crossing falls outside the N observed. The likelihood does not depend
on the rule that chose where the fresh batches ran, so it carries no stopping-rule
bias. Slopes ``strict_smooth_slope_{eps,span,zeta}`` (with ``_lo``/``_hi``),
``strict_smooth_n_base``, ``strict_smooth_level``, the ``n_star_smooth`` column
of ``n_star.csv``; figure ``strict_failure_curves.png`` (pooled failure rates,
fitted curves, smooth N and verified N per point) and a dash-dot curve in
``n_star.png``. The strict setting's other keys keep their meaning.

Sweeps (one key varied around the base point): eps over ``eps_grid``, the core
time scale over ``H_grid`` (x axis: the computed B + H of each instance) and
zeta over ``zeta_grid``. The span axis is the computed H for the weakly-communicating
instance (whose bound is SAH/eps^2) and B + H for the multichain one. Slopes of
log N* against log eps, log (B+H) and log
zeta with t confidence intervals; theory: -2, +1, and -2 (strict) / 0 (relaxed).
``success_slope_*`` are the strict slopes fitted, as before, to the interpolated
success N (a diagnostic: the N at which the success rate reaches 1 - delta,
not one at which no seed violates).

    python -m experiments.main experiment=camdp_sample_complexity
    python -m experiments.main experiment=camdp_sample_complexity n_seeds=32 transient_B=10

Headline: ``slope_eps``, ``slope_span``, ``slope_zeta`` (strict setting, each
with ``_lo``/``_hi``), ``relaxed_slope_*`` likewise, ``strict_violations`` (with
``strict_check_runs``, ``strict_violations_at_success_n``, ``strict_check_steps``,
``strict_unsettled``, ``strict_violation_rate_ub95``), the base point's N* per
setting (strict also ``n_star_success_base``), ``success_slope_*``,
``strict_smooth_slope_*`` likewise (with ``strict_smooth_n_base``,
``strict_smooth_level``; the smooth estimator above), and the
number of runs on the N grid (the fresh check runs are ``strict_check_runs``).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments import io
from experiments.stats import (failure_curves_figure, feasible_n, finite_loglog_slope,
                               grid_failure_evidence, one_at_a_time, smooth_strict_n)
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
  n_check_seeds: int = param(64, "fresh seeds per strict point and check round (stepping "
                             "up the N grid until a batch is clean; 0 skips)", check=ge(0))
  n_grid: int = param(128, "dual grid points (best responses planned per run)",
                      check=ge(2))
  n_iters: int = param(2 ** 19, "dual subgradient steps T (the dual residual ~ 1/(16 sqrt T) "
                       "must stay well below the strict tightening eps zeta / 4)", check=ge(1))
  strict_smooth_level: float = param(0.05, "strict failure probability at which the smooth "
                                     "(pooled probit in log N) estimator reads N",
                                     check=in_range(0, 1, lo_open=True, hi_open=True))
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
                                "n_star_interp", "n_star_success", "check_runs",
                                "n_star_smooth")}
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
    n_success, check_runs = n_star.copy(), np.zeros(n_pts, int)
    n_fit = n_interp                    # what the slopes are fitted to
    n_smooth, smooth = np.full(n_pts, np.nan), {}
    if strict:
      # Evidence for the smooth estimator: (N, strict failures, runs) per point, from the
      # selection seeds at every grid N and from every fresh check batch.
      evidence = grid_failure_evidence(ns_grid, success)

      def check(ps, ii, rnd, evidence=evidence):
        bad, fail = _check_strict(cfg, ctx, models, sols, points, inst_of_point, span_of_point,
                                  ps, ns_grid[ii], key, rnd)
        for j, p in enumerate(ps):
          evidence[p].append((float(ns_grid[ii[j]]), int(fail[j]), cfg.n_check_seeds))
        return bad

      fn = feasible_n(success.mean(2), (~feasible).sum(2), target, check, cfg.n_seeds,
                      cfg.n_check_seeds)
      n_star = np.where(fn.index >= 0, ns_grid[np.maximum(fn.index, 0)], np.nan)
      n_fit, check_runs = n_star, fn.fresh_runs
      headline.update(fn.headline("strict_"))
      headline["n_star_success_base"] = float(n_success[where["base"][0]])
      n_smooth, fits = smooth_strict_n(evidence, cfg.strict_smooth_level)
      smooth = dict(smooth_fits=fits, smooth_evidence=evidence)
      headline["strict_smooth_n_base"] = float(n_smooth[where["base"][0]])
      headline["strict_smooth_level"] = cfg.strict_smooth_level
    results[setting] = dict(ns=ns_grid, subopt=subopt, violation=violation, success=success,
                            n_star=n_star, n_interp=n_interp, n_fit=n_fit, n_smooth=n_smooth,
                            **smooth)
    prefix = "" if strict else "relaxed_"
    headline[f"{prefix}n_star_base"] = float(n_star[where["base"][0]])
    for sweep, xs_of in (("eps", lambda p: points[p]["eps"]), ("span", lambda p: span_of_point[p]),
                         ("zeta", lambda p: points[p]["zeta"])):
      idx = where[sweep]
      for p in idx:
        for col, v in zip(nstar_rows, (setting, sweep, points[p]["eps"], span_of_point[p],
                                       points[p]["zeta"], n_star[p], n_interp[p], n_success[p],
                                       check_runs[p], n_smooth[p])):
          nstar_rows[col].append(v)
      xs = np.array([xs_of(p) for p in idx])
      slopes = [(prefix, n_fit)] + ([("success_", n_interp), ("strict_smooth_", n_smooth)]
                                    if strict else [])
      for pre, ys in slopes:
        s, s_lo, s_hi = finite_loglog_slope(xs, ys[idx])
        headline[f"{pre}slope_{sweep}"] = s
        headline[f"{pre}slope_{sweep}_lo"] = s_lo
        headline[f"{pre}slope_{sweep}_hi"] = s_hi
  headline["runs"] = total_runs
  ctx.write_csv("metrics.csv", rows)
  ctx.write_csv("n_star.csv", nstar_rows)
  _figures(cfg, ctx, plt, points, where, span_of_point, results, headline)
  return headline


def _check_strict(cfg, ctx, models, sols, points, inst_of_point, span_of_point, idx, ns, key,
                  rnd: int) -> tuple[np.ndarray, np.ndarray]:
  """(violations, strict failures: violation or not eps-optimal) per point among
  ``n_check_seeds`` fresh seeds re-run for strict points ``idx`` at N = ``ns`` (check round
  ``rnd``: new seeds each round)."""
  r = cfg.n_check_seeds
  pi_ = np.repeat(idx, r)
  eps = np.array([points[i]["eps"] for i in pi_])
  zeta = np.array([points[i]["zeta"] for i in pi_])
  rho_r, rho_c = _run_flat(models, inst_of_point[pi_],
                           np.repeat(np.asarray(ns, np.float64), r), eps, zeta,
                           span_of_point[pi_], np.ones(pi_.size, bool),
                           jax.random.fold_in(key, 1000 + rnd), cfg, ctx, f"strict check {rnd + 1}")
  b = np.array([float(models[i].b) for i in inst_of_point[pi_]])
  rstar = np.array([sols[i].value for i in inst_of_point[pi_]])
  bad = rho_c < b - 1e-9
  fail = bad | (rstar - rho_r > eps)
  return bad.reshape(len(idx), r).sum(1), fail.reshape(len(idx), r).sum(1)


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
    idx = where[sweep]
    xs = np.array([points[p][sweep] if sweep != "span" else span_of_point[p] for p in idx])
    theory = lambda setting, sweep=sweep: (THEORY[sweep][setting] if sweep == "zeta"
                                           else THEORY[sweep])
    curves = [(setting, res["n_fit"][idx],
               headline.get(("" if setting == "strict" else "relaxed_") + f"slope_{sweep}",
                            float("nan")), theory(setting), "-")
              for setting, res in results.items()]
    if "strict" in results:
      curves.append((f"strict smooth (P(fail)={cfg.strict_smooth_level:g})",
                     results["strict"]["n_smooth"][idx],
                     headline.get(f"strict_smooth_slope_{sweep}", float("nan")),
                     theory("strict"), "-."))
    for name, ys, s, th, ls in curves:
      line, = ax.plot(xs, ys, "o" + ls, label=f"{name}: slope {s:.2f} (theory {th:g})")
      ok = np.isfinite(ys)
      if ok.any():
        x0, y0 = np.exp(np.log(xs[ok]).mean()), np.exp(np.log(ys[ok]).mean())
        xx = np.array([xs.min(), xs.max()])
        ax.plot(xx, y0 * (xx / x0) ** th, color=line.get_color(), ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel=xlabel,
           ylabel=f"N: success >= {1 - cfg.delta:g} (strict: and no seed violates)")
    ax.legend(fontsize=8)
  fig.suptitle(f"S={cfg.n_states}, A={cfg.n_actions}, {cfg.n_seeds} seeds; dashed: theory slope")
  ctx.save_figure(fig, "n_star.png")

  # The smooth strict estimator: pooled failure rates against N per sweep point, the fitted
  # probit curves, the N they read off (o) and the verified N (x).
  if "strict" not in results or "smooth_fits" not in results["strict"]:
    return
  res = results["strict"]
  label = lambda sweep, p: (f"span={span_of_point[p]:g}" if sweep == "span"
                            else f"{sweep}={points[p][sweep]:g}")
  fig = failure_curves_figure(
      plt, [(f"{sweep} sweep", [(p, label(sweep, p)) for p in where[sweep]])
            for sweep in ("eps", "span", "zeta")],
      res["smooth_evidence"], res["smooth_fits"], res["n_star"], cfg.strict_smooth_level,
      "strict setting: pooled failures (selection and fresh seeds), probit fit in log N; "
      "o: smooth N, x: verified N", xlabel="N (samples per (s, a))")
  ctx.save_figure(fig, "strict_failure_curves.png")
