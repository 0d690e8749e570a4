"""Sample complexity of linear constrained discounted MDPs (arXiv 2507.02089), checked numerically.

The paper has no experiments; here its bounds O~(d^2 / ((1-gamma)^4 eps^2))
(relaxed feasibility) and O~(d^2 / ((1-gamma)^6 eps^2 zeta^2)) (strict), and its
strict-setting lower bound Omega(d^2 / ((1-gamma)^5 eps^2 zeta^2)) (PMLR
version, v313 liu26b), meet numbers. On the hard instances of :func:`cmdp.linear.hard_instance` (feature
dimension d, H = 1/(1-gamma), Slater constant zeta; eps and zeta on the
unnormalized value scale) the primal-dual algorithm of :mod:`cmdp.linear`
(G-optimal design, greedy LS-MDVI best responses as the authors' code, LS-PE,
projected dual descent) runs for a geometric grid of N (total generative
samples, ``ceil(N / u)`` at each of the u core points, = ``ceil(rho_x N)`` on
these uniform designs) x ``n_seeds`` seeds at every sweep point; all runs on one
instance go through jitted calls vmapped over runs and the dual grid. Each
output mixture is evaluated exactly (float64 linear solves) against the
discounted occupancy LP optimum.

A run succeeds when ``V_r >= V_r* - eps`` and ``V_c >= b - eps`` (relaxed) or
``V_c >= b`` (strict, to 1e-9). The N axis is the actual total sum_x
ceil(rho_x N) of a grid value N.

Relaxed setting: the reported N* of a sweep point is the smallest grid N from
which on the success rate is >= 1 - delta, as in ``camdp_sample_complexity``.
That grid value is noisy with a few seeds (the success rate rises slowly in
log N), so the relaxed slopes are fitted to ``n_star_fit``, where a probit fit
of the success rate in sqrt(N) over all seeds crosses 1 - delta
(:func:`probit_crossing`).

Strict setting: the reported N* is one at which no seed violates the
constraint, chosen as in ``camdp_sample_complexity``
(:func:`experiments.stats.feasible_n`): the smallest grid N from which on the
success rate is >= 1 - delta and no selection seed violates (the success N,
``n_star_success``), then re-checked on ``n_check_seeds`` fresh seeds, stepping
up the grid with new seeds until a fresh batch is clean. The strict slopes (and
the tabular strict rate constant and slope) are fitted to that reported N
(grid values, quantized to a factor 2^(1/n_per_octave)); ``success_slope_*``
keep the probit fit of the success rate as a diagnostic. ``strict_violations``
counts fresh violations at the reported N: 0 by construction wherever a point
settled (a point that does not settle keeps its last count); the information is
in ``strict_violation_rate_ub95`` (95% upper bound on a point's violation
probability from its clean runs there), ``strict_check_runs`` (fresh runs, all
rounds), ``strict_check_steps`` (grid steps past the success N),
``strict_violations_at_success_n`` / ``strict_max_violation_at_success_n``
(fresh violations at the success N, the smallest N that meets the success rate) and
``strict_violations_2x`` (a further fresh batch at twice the reported N).

Smooth strict estimator (``strict_smooth_*``). The verified N steps up the grid
by whole steps on the evidence of one batch of fresh seeds, so its slopes are
noisy (a point that steps up twice moves by a factor 2^(2/n_per_octave)). The
smooth estimator uses all the strict evidence of a sweep point: the per-seed
strict failure indicator (violation, or not eps-optimal) of the selection seeds
at every grid N and of every fresh seed (each check round, and the batch at
2 N), pooled, with a probit model in log N, ``P(fail | N) = Phi(a - b log N)``
fitted by maximum likelihood (:func:`experiments.stats.failure_probit_n`). Its N
is where the fitted failure probability equals ``strict_smooth_level`` (0.05:
half the delta of the success criterion, the rate that fresh batches of 64
resolve). What it means: an estimate of the sample size at which one run of the
algorithm fails the strict criterion with probability 0.05, a quantile of the
per-point sample-complexity distribution, continuous in the data rather than
quantized to the grid; it is not a certificate (at that N about 1 run in 20
still fails, where the verified N has 0 violations in ``n_seeds +
n_check_seeds`` runs), and it leans on the probit shape where the evidence is
thin. The likelihood does not depend on the rule that chose where the fresh
batches ran, so, unlike the verified N, it carries no stopping-rule bias. If
the failure curves of a sweep are shifts of one another in log N, its slopes
do not depend on the level. Slopes ``strict_smooth_slope_{d,horizon,eps,zeta}``
(with ``_lo``/``_hi``), ``strict_smooth_n_base``, the tabular
``tabular_strict_smooth_slope_horizon``; figure ``strict_failure_curves.png``
(pooled rates, fitted curves, smooth N and verified N per point) and a dash-dot
curve in ``n_star.png``. The strict setting's existing keys keep their meaning.

Sweeps (one key varied around the base point): d over ``d_grid``, H over
``horizon_grid``, eps over ``eps_grid``, zeta over ``zeta_grid``. Slopes of
log N* against log d, log H, log eps and log zeta with 95% t intervals, next
to the paper's upper-bound exponents (relaxed 2, 4, -2, 0; strict 2, 6, -2,
-2), its strict lower-bound exponents (2, 5, -2, -2) and to what the hard instance's own analysis predicts (1, 3, -2, 0 and
1, 5, -2, -2: its errors are those of Azar et al.'s tabular construction,
with N spread over d design points and a winner's-curse bias per gadget; the
d exponent 1 is asymptotic: at small d the seed-to-seed fluctuation, which
averages over the k gadgets, adds to the bias and flattens the slope). The
d^2 and the extra powers of H in the bounds come from union bounds that the
instance does not exercise.

Tabular instantiation (``tabular=true``): the same hard CMDP with one-hot
features (d = S A), at the base point and over ``horizon_grid``, compared
with the near-optimal tabular CMDP rates SA/((1-gamma)^3 eps^2) (relaxed) and
SA/((1-gamma)^5 eps^2 zeta^2) (strict) of Vaswani, Yang & Szepesvari 2022:
N* divided by the rate (``tabular_*_rate_constant``) and the slope in H; its
strict N* is settled as above (``tabular_strict_violations`` etc.).

    python -m experiments.main experiment=linear_cmdp_sample_complexity
    python -m experiments.main experiment=linear_cmdp_sample_complexity n_seeds=32 d_grid=[5,9]

Headline: ``slope_d``, ``slope_horizon``, ``slope_eps``, ``slope_zeta`` (strict
setting, each with ``_lo``/``_hi``), ``relaxed_slope_*`` likewise,
``strict_smooth_slope_*`` likewise (the smooth estimator above),
``strict_violations`` (with ``strict_check_runs``, ``strict_max_violation``,
``strict_violations_at_success_n``, ``strict_check_steps``, ``strict_unsettled``,
``strict_violation_rate_ub95`` and the ``_2x`` check), ``success_slope_*``, the
base point's N* per setting (strict also ``n_star_success_base``), the tabular
instantiation's numbers, and the number of runs (fresh check runs included).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments import io
from experiments.stats import (failure_curves_figure, feasible_n, finite_loglog_slope,
                               grid_failure_evidence, one_at_a_time, smooth_strict_n)
from experiments.camdp_sample_complexity import n_grid_values, smallest_n
from experiments.schema import ConfigError, each, ge, gt, in_range, one_of, param

SETTINGS = ("relaxed", "strict")
SWEEPS = ("d", "horizon", "eps", "zeta")
# The paper's upper-bound exponents, and those the hard instance's analysis predicts.
THEORY = {"relaxed": dict(d=2.0, horizon=4.0, eps=-2.0, zeta=0.0),
          "strict": dict(d=2.0, horizon=6.0, eps=-2.0, zeta=-2.0)}
INSTANCE = {"relaxed": dict(d=1.0, horizon=3.0, eps=-2.0, zeta=0.0),
            "strict": dict(d=1.0, horizon=5.0, eps=-2.0, zeta=-2.0)}
TABULAR = {"relaxed": 3.0, "strict": 5.0}   # exponent of H in the tabular CMDP rates
# The strict-setting lower bound Omega(d^2 / ((1-gamma)^5 eps^2 zeta^2)) (PMLR abstract).
LOWER = dict(d=2.0, horizon=5.0, eps=-2.0, zeta=-2.0)


def _valid_d(v, twins: int) -> bool:
  return v >= 2 * twins + 1 and (v - 1) % (2 * twins) == 0


@dataclasses.dataclass(frozen=True)
class Config:
  settings: tuple[str, ...] = param(SETTINGS, "feasibility settings to run",
                                    check=each(one_of(*SETTINGS)))
  d: int = param(9, "feature dimension at the base point (d = 2 twins k + 1, k gadgets)",
                 check=ge(3))
  horizon: float = param(10.0, "H = 1/(1-gamma) at the base point", check=gt(4 / 3))
  eps: float = param(0.5, "target accuracy at the base point (unnormalized value scale)",
                     check=gt(0))
  zeta: float = param(0.5, "Slater constant at the base point (unnormalized, <= 3H/8)",
                      check=gt(0))
  n_actions: int = param(5, "A of the hard instances (actions >= 2 twins are decoys)",
                         check=ge(2))
  twins: int = param(2, "copies of each basis action per gadget (1: no winner's curse)",
                     check=ge(1))
  d_grid: tuple[int, ...] = param((5, 9, 13, 17), "d sweep (each 2 twins k + 1)",
                                  check=each(ge(3)))
  horizon_grid: tuple[float, ...] = param((5.0, 7.0, 10.0, 14.0, 20.0), "H sweep",
                                          check=each(gt(4 / 3)))
  eps_grid: tuple[float, ...] = param((1.0, 0.7, 0.5, 0.35), "eps sweep", check=each(gt(0)))
  zeta_grid: tuple[float, ...] = param((0.25, 0.35, 0.5, 0.7, 1.0), "Slater-constant sweep",
                                       check=each(gt(0)))
  relaxed_n_range: tuple[float, ...] = param((64, 2 ** 20), "[min, max] of the relaxed N grid",
                                             check=each(ge(1)))
  strict_n_range: tuple[float, ...] = param((2 ** 14, 2 ** 32), "[min, max] of the strict N grid",
                                            check=each(ge(1)))
  n_per_octave: int = param(3, "N grid points per doubling (geometric grid)", check=in_range(1, 8))
  n_seeds: int = param(32, "seeds per (sweep point, N)", check=ge(2))
  delta: float = param(0.1, "failure probability: success rate must be >= 1 - delta",
                       check=in_range(0, 1, lo_open=True, hi_open=True))
  n_check_seeds: int = param(64, "fresh seeds per strict point and check round (stepping "
                             "up the N grid until a batch is clean; 0 skips)", check=ge(0))
  tabular: bool = param(True, "also run the tabular instantiation (one-hot features)")
  n_grid: int = param(64, "dual grid points (LS-MDVI best responses per run)", check=ge(2))
  n_dual: int = param(2 ** 17, "dual subgradient steps T", check=ge(1))
  k_factor: float = param(6.0, "LS-MDVI and LS-PE steps K = ceil(k_factor H)", check=gt(0))
  c_beta: float = param(float("inf"), "LS-MDVI inverse temperature beta = c_beta ln(A) / eps "
                        "(inf: greedy, as the authors' code; 8: the earlier softmax)", check=gt(0))
  strict_smooth_level: float = param(0.05, "strict failure probability at which the smooth "
                                     "(pooled probit in log N) estimator reads N",
                                     check=in_range(0, 1, lo_open=True, hi_open=True))
  batch_size: int = param(512, "runs per jitted call (the last chunk is padded)", check=ge(1))

  def check(self) -> None:
    for key in ("relaxed_n_range", "strict_n_range"):
      rng = getattr(self, key)
      if len(rng) != 2 or rng[0] >= rng[1]:
        raise ConfigError(key, f"must be [min, max] with min < max; got {list(rng)}")
    for key in ("d", "d_grid"):
      vals = getattr(self, key)
      if not all(_valid_d(v, self.twins) for v in np.atleast_1d(vals)):
        raise ConfigError(key, f"the hard instance needs d = {2 * self.twins} k + 1 (k >= 1); "
                          f"got {vals}")
    if self.n_actions < 2 * self.twins:
      raise ConfigError("n_actions", f"must be >= 2 twins = {2 * self.twins}")
    for H in (self.horizon, *self.horizon_grid):
      for z in (self.zeta, *self.zeta_grid):
        if z > 3 * H / 8:
          raise ConfigError("zeta_grid" if z != self.zeta else "zeta",
                            f"zeta = {z} exceeds 3H/8 = {3 * H / 8:g} at H = {H}")


def sweep_points(cfg: Config) -> tuple[list[dict], dict[str, list[int]]]:
  """Unique (d, horizon, eps, zeta) points and, per sweep, the indices of its points."""
  return one_at_a_time(
      dict(d=cfg.d, horizon=cfg.horizon, eps=cfg.eps, zeta=cfg.zeta),
      {k: (k, getattr(cfg, f"{k}_grid")) for k in ("d", "horizon", "eps", "zeta")})


def _instance(cfg: Config, d: int, H: float, zeta: float, tabular: bool):
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  m = linear.hard_instance(d, 1.0 - 1.0 / H, zeta, cfg.n_actions, twins=cfg.twins)
  if tabular:
    m = linear.from_tabular(m.tabular(), float(m.gamma))
  return m


def _run_runs(m, inst, ns, eps, zeta, strict, key, cfg: Config, ctx, label: str):
  """All runs on one instance, in chunks of ``batch_size`` (the last one padded, so that
  each instance shape compiles once); exact values per run."""
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  R = len(ns)
  vr, vc = np.zeros(R), np.zeros(R)
  bs = cfg.batch_size
  n_iters = linear.default_iters(float(m.gamma), cfg.k_factor)
  n_chunks = -(-R // bs)
  for j in range(n_chunks):
    sl = np.arange(j * bs, min((j + 1) * bs, R))
    pad = np.concatenate([sl, np.full(bs - sl.size, sl[-1])])
    start = time.perf_counter()
    out = linear.run_batch(jax.random.fold_in(key, j), inst, ns[pad], eps[pad], zeta[pad],
                           strict[pad], n_iters=n_iters, n_grid=cfg.n_grid, n_dual=cfg.n_dual,
                           c_beta=cfg.c_beta)
    t_alg = time.perf_counter() - start
    out = jax.tree.map(lambda x: x[:sl.size], out)
    vr[sl], vc[sl] = linear.evaluate_outputs(m, out)
    if ctx.progress:
      ctx.say(f"[linear_cmdp] {label}: chunk {j + 1}/{n_chunks} ({bs} runs, K={n_iters}: "
              f"algorithm {t_alg:.1f}s, exact evaluation "
              f"{time.perf_counter() - start - t_alg:.1f}s)")
  return vr, vc


class _Truth:
  """Instances, designs and exact solutions, built once per (d, H, zeta, tabular)."""

  def __init__(self, cfg: Config):
    self.cfg = cfg
    self.cache: dict = {}

  def get(self, d, H, zeta, tabular=False):
    from cmdp import linear  # pylint: disable=import-outside-toplevel
    key = (d, H, zeta, tabular)
    if key not in self.cache:
      m = _instance(self.cfg, d, H, zeta, tabular)
      design = linear.g_optimal_design(m.phi.reshape(-1, m.dim))
      self.cache[key] = (m, linear.make_instance(m, design), linear.solve(m), design)
    return self.cache[key]


def _sample_complexity(cfg, ctx, truth: _Truth, points, setting, key, *, tabular=False):
  """Success/error arrays and N* per point for one setting (runs grouped by instance)."""
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  strict = setting == "strict"
  lo, hi = cfg.strict_n_range if strict else cfg.relaxed_n_range
  ns_grid = n_grid_values(int(lo), int(hi), cfg.n_per_octave).astype(np.float64)
  n_pts, n_n, n_s = len(points), len(ns_grid), cfg.n_seeds
  shape = (n_pts, n_n, n_s)
  subopt, violation = np.zeros(shape), np.zeros(shape)
  totals = np.zeros((n_pts, n_n))
  groups: dict = {}
  for p, pt in enumerate(points):
    groups.setdefault((pt["d"], pt["horizon"], pt["zeta"]), []).append(p)
  runs = 0
  for g, ((d, H, z), idx) in enumerate(groups.items()):
    m, inst, sol, design = truth.get(d, H, z, tabular)
    pi_, ni_, _ = np.meshgrid(np.array(idx), np.arange(n_n), np.arange(n_s), indexing="ij")
    pi_, ni_ = pi_.ravel(), ni_.ravel()
    eps = np.array([points[i]["eps"] for i in pi_])
    vr, vc = _run_runs(m, inst, ns_grid[ni_], eps, np.full(pi_.size, z),
                       np.full(pi_.size, strict), jax.random.fold_in(key, g), cfg, ctx,
                       f"{'tabular ' if tabular else ''}{setting} d={m.dim} H={H:g} zeta={z:g}")
    runs += pi_.size
    sub = (sol.value - vr).reshape(len(idx), n_n, n_s)
    vio = (float(m.b) - vc).reshape(len(idx), n_n, n_s)
    n_tot = linear.samples_per_core_point(design.weights[None, :], ns_grid[:, None]).sum(1)
    for j, p in enumerate(idx):
      subopt[p], violation[p], totals[p] = sub[j], vio[j], n_tot
  eps_pt = np.array([pt["eps"] for pt in points])[:, None, None]
  feasible = violation <= (1e-9 if strict else eps_pt)
  success = (subopt <= eps_pt) & feasible
  n_star, n_interp, i_star = np.full(n_pts, np.nan), np.full(n_pts, np.nan), np.full(n_pts, -1)
  n_fit = np.full(n_pts, np.nan)
  for p in range(n_pts):
    extra = feasible[p].all(1) if strict else np.ones(n_n, bool)
    _, n_interp[p], i_star[p] = smallest_n(totals[p], success[p].mean(1), extra,
                                           1.0 - cfg.delta)
    if i_star[p] >= 0:
      n_star[p] = totals[p, i_star[p]]
    n_fit[p] = probit_crossing(totals[p], success[p], 1.0 - cfg.delta)
  # n_slope: what the slopes are fitted to (strict: the reported N, set by _settle_strict).
  return dict(ns=ns_grid, totals=totals, subopt=subopt, violation=violation, success=success,
              feasible=feasible, n_star=n_star, n_interp=n_interp, n_fit=n_fit, i_star=i_star,
              runs=runs, n_slope=n_fit, n_success=n_star.copy(), check_runs=np.zeros(n_pts, int),
              n_smooth=np.full(n_pts, np.nan))


def probit_crossing(ns, success, target: float) -> float:
  """N at which a probit fit of the success rate in sqrt(N) crosses ``target``.

  Model (the asymptotic law of an estimate with bias and spread ~ 1/sqrt(N)
  compared with a fixed margin): ``P(success | N) = Phi(beta sqrt(N) - alpha)``,
  fitted by maximum likelihood to every run from the last grid N whose success
  rate is <= 1/2 on (below it small-sample effects dominate). Returns nan when
  the rate never reaches ``target``.

  Args:
    ns: (n,) sample sizes (increasing).
    success: (n, seeds) bool.
  """
  from scipy import optimize, stats  # pylint: disable=import-outside-toplevel
  ns = np.asarray(ns, np.float64)
  k, m = success.sum(1).astype(np.float64), np.full(len(ns), float(success.shape[1]))
  rate = k / m
  if not (rate >= target).any():
    return float("nan")
  below = np.flatnonzero(rate <= 0.5)
  lo = int(below.max()) if below.size else 0
  ns, k, m = ns[lo:], k[lo:], m[lo:]
  scale = np.sqrt(ns[0] * ns[-1])
  x = np.sqrt(ns / scale)

  def nll(p):
    z = np.exp(p[1]) * x - p[0]
    return -np.sum(k * stats.norm.logcdf(z) + (m - k) * stats.norm.logsf(z))

  best = min((optimize.minimize(nll, x0, method="Nelder-Mead",
                                options=dict(xatol=1e-9, fatol=1e-12, maxiter=5000))
              for x0 in ([0.0, 0.0], [2.0, 1.0], [5.0, 2.0])), key=lambda r: r.fun)
  alpha, beta = best.x[0], np.exp(best.x[1])
  return float(scale * max((alpha + stats.norm.ppf(target)) / beta, 0.0) ** 2)


def _check_strict(cfg, ctx, truth, points, idx, ns, key, label: str, tabular: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(violations, largest violation b - V_c, strict failures: violation or not eps-optimal)
  per point among ``n_check_seeds`` fresh seeds re-run for strict points ``idx`` at grid
  values ``ns`` (one call per instance)."""
  groups: dict = {}
  for j, p in enumerate(idx):
    groups.setdefault((points[p]["d"], points[p]["horizon"], points[p]["zeta"]), []).append(j)
  r = cfg.n_check_seeds
  bad, worst, fail = np.zeros(len(idx), int), np.zeros(len(idx)), np.zeros(len(idx), int)
  for g, ((d, H, z), js) in enumerate(groups.items()):
    m, inst, sol, _ = truth.get(d, H, z, tabular)
    n = np.repeat(np.asarray(ns, np.float64)[js], r)
    eps = np.repeat([points[idx[j]]["eps"] for j in js], r)
    vr, vc = _run_runs(m, inst, n, eps, np.full(n.size, z), np.ones(n.size, bool),
                       jax.random.fold_in(key, g), cfg, ctx, label)
    vio = (float(m.b) - vc).reshape(len(js), r)
    sub = (sol.value - vr).reshape(len(js), r)
    bad[js], worst[js] = (vio > 1e-9).sum(1), vio.max(1)
    fail[js] = ((vio > 1e-9) | (sub > eps.reshape(len(js), r))).sum(1)
  return bad, worst, fail


def _settle_strict(cfg, ctx, truth, points, res, key, tabular: bool = False) -> dict:
  """The strict setting's reported N (:func:`experiments.stats.feasible_n`): updates ``res``
  (``n_star``, ``i_star``; the success N kept as ``n_success``, ``i_success``) and returns
  the headline numbers of its fresh checks (prefix ``strict_``)."""
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  n_pts = len(points)
  worst_first, worst_last = np.full(n_pts, np.nan), np.full(n_pts, np.nan)
  # Evidence for the smooth estimator: (total N, strict failures, runs) per point, from the
  # selection seeds at every grid N and from every fresh batch below.
  evidence = grid_failure_evidence(res["totals"], res["success"])

  def check(ps, ii, rnd):
    k = jax.random.fold_in(key, 1001)     # round 0: the first fresh batch at the success N
    bad, worst, fail = _check_strict(cfg, ctx, truth, points, ps, res["ns"][ii],
                                     k if rnd == 0 else jax.random.fold_in(k, rnd),
                                     f"{'tabular ' if tabular else ''}strict check {rnd + 1}",
                                     tabular)
    if rnd == 0:
      worst_first[ps] = worst
    worst_last[ps] = worst
    for j, p in enumerate(ps):
      evidence[p].append((res["totals"][p, ii[j]], int(fail[j]), cfg.n_check_seeds))
    return bad

  fn = feasible_n(res["success"].mean(2), (~res["feasible"]).sum(2), 1.0 - cfg.delta, check,
                  cfg.n_seeds, cfg.n_check_seeds)
  res["n_success"], res["i_success"] = res["n_star"].copy(), res["i_star"].copy()
  res["i_star"] = fn.index
  res["n_star"] = np.array([res["totals"][p, i] if i >= 0 else np.nan
                            for p, i in enumerate(fn.index)])
  res["check_runs"] = fn.fresh_runs
  res["n_slope"] = res["n_star"]
  head = fn.headline("strict_")
  # largest b - V_c among the fresh runs (0 if all are feasible; nan if none ran)
  nanmax = lambda x: max(float(np.nanmax(x)), 0.0) if np.isfinite(x).any() else float("nan")
  head["strict_max_violation"] = nanmax(worst_last)
  head["strict_max_violation_at_success_n"] = nanmax(worst_first)
  if not tabular:
    settled = np.flatnonzero(fn.index >= 0)
    if cfg.n_check_seeds and settled.size:
      n2 = 2 * res["ns"][fn.index[settled]]
      bad, worst, fail = _check_strict(cfg, ctx, truth, points, settled, n2,
                                       jax.random.fold_in(key, 1002), "strict check (2 N*)")
      head.update(strict_violations_2x=int(bad.sum()), strict_max_violation_2x=max(float(worst.max()), 0.0))
      for j, p in enumerate(settled):
        pt = points[p]
        design = truth.get(pt["d"], pt["horizon"], pt["zeta"], tabular)[3]
        total = float(linear.samples_per_core_point(design.weights, n2[j]).sum())
        evidence[p].append((total, int(fail[j]), cfg.n_check_seeds))
    else:
      head.update(strict_violations_2x=0, strict_max_violation_2x=float("nan"))
    head["strict_check_runs_2x"] = int(settled.size * cfg.n_check_seeds)
  # The smooth estimator: a probit fit in log N of the pooled strict failures per point.
  res["n_smooth"], fits = smooth_strict_n(evidence, cfg.strict_smooth_level)
  res["smooth_fits"], res["smooth_evidence"] = fits, evidence
  head["strict_smooth_level"] = cfg.strict_smooth_level
  return head


def run(cfg: Config, ctx) -> dict:
  plt = io.pyplot()
  points, where = sweep_points(cfg)
  truth = _Truth(cfg)
  key = jax.random.key(ctx.seed)
  headline: dict[str, float] = {"d": cfg.d, "horizon": cfg.horizon, "eps": cfg.eps,
                                "zeta": cfg.zeta, "A": cfg.n_actions, "n_seeds": cfg.n_seeds,
                                "delta": cfg.delta}
  rows = {k: [] for k in ("setting", "d", "horizon", "eps", "zeta", "N", "N_total",
                          "success_rate", "violation_rate", "mean_subopt", "q90_subopt",
                          "mean_violation", "q90_violation")}
  nstar_rows = {k: [] for k in ("setting", "sweep", "d", "horizon", "eps", "zeta", "n_star",
                                "n_star_fit", "n_star_success", "check_runs", "n_star_smooth")}
  slope_rows = {k: [] for k in ("setting", "sweep", "slope", "lo", "hi", "paper_upper_bound",
                                "instance_prediction")}
  results, runs = {}, 0
  for si, setting in enumerate(cfg.settings):
    res = _sample_complexity(cfg, ctx, truth, points, setting, jax.random.fold_in(key, si))
    runs += res["runs"]
    results[setting] = res
    if setting == "strict":
      check = _settle_strict(cfg, ctx, truth, points, res, key)
      headline.update(check)
      headline["n_star_success_base"] = float(res["n_success"][where["base"][0]])
      headline["strict_smooth_n_base"] = float(res["n_smooth"][where["base"][0]])
      runs += check["strict_check_runs"] + check["strict_check_runs_2x"]
    for p, pt in enumerate(points):
      for k in range(len(res["ns"])):
        s, v = res["subopt"][p, k], res["violation"][p, k]
        for col, val in zip(rows, (setting, pt["d"], pt["horizon"], pt["eps"], pt["zeta"],
                                   res["ns"][k], res["totals"][p, k], res["success"][p, k].mean(),
                                   1 - res["feasible"][p, k].mean(), s.mean(),
                                   np.quantile(s, 0.9), v.mean(), np.quantile(v, 0.9))):
          rows[col].append(val)
    prefix = "" if setting == "strict" else "relaxed_"
    headline[f"{prefix}n_star_base"] = float(res["n_star"][where["base"][0]])
    for sweep in SWEEPS:
      idx = where[sweep]
      for p in idx:
        for col, val in zip(nstar_rows, (setting, sweep, *(points[p][k] for k in
                                                           ("d", "horizon", "eps", "zeta")),
                                         res["n_star"][p], res["n_fit"][p],
                                         res["n_success"][p], res["check_runs"][p],
                                         res["n_smooth"][p])):
          nstar_rows[col].append(val)
      xs = [points[p][sweep] for p in idx]
      s, lo, hi = finite_loglog_slope(xs, res["n_slope"][idx])
      headline[f"{prefix}slope_{sweep}"] = s
      headline[f"{prefix}slope_{sweep}_lo"] = lo
      headline[f"{prefix}slope_{sweep}_hi"] = hi
      if setting == "strict":
        headline.update(zip((f"success_slope_{sweep}", f"success_slope_{sweep}_lo",
                             f"success_slope_{sweep}_hi"),
                            finite_loglog_slope(xs, res["n_fit"][idx])))
        headline.update(zip((f"strict_smooth_slope_{sweep}", f"strict_smooth_slope_{sweep}_lo",
                             f"strict_smooth_slope_{sweep}_hi"),
                            finite_loglog_slope(xs, res["n_smooth"][idx])))
      for col, val in zip(slope_rows, (setting, sweep, s, lo, hi, THEORY[setting][sweep],
                                       INSTANCE[setting][sweep])):
        slope_rows[col].append(val)

  tab = {}
  if cfg.tabular:
    tab_points = [dict(d=cfg.d, horizon=H, eps=cfg.eps, zeta=cfg.zeta)
                  for H in sorted(set(cfg.horizon_grid) | {cfg.horizon})]
    for si, setting in enumerate(cfg.settings):
      res = _sample_complexity(cfg, ctx, truth, tab_points, setting,
                               jax.random.fold_in(key, 2000 + si), tabular=True)
      runs += res["runs"]
      tab[setting] = res
      if setting == "strict":
        check = _settle_strict(cfg, ctx, truth, tab_points, res,
                               jax.random.fold_in(key, 3000), tabular=True)
        headline.update({"tabular_" + k: v for k, v in check.items()})
        runs += check["strict_check_runs"]
      prefix = "tabular_" + ("" if setting == "strict" else "relaxed_")
      hs = np.array([p["horizon"] for p in tab_points])
      base = int(np.flatnonzero(hs == cfg.horizon)[0])
      m = truth.get(cfg.d, cfg.horizon, cfg.zeta, True)[0]
      SA = m.n_states * m.n_actions
      rate = SA * hs ** TABULAR[setting] / cfg.eps ** 2
      if setting == "strict":
        rate = rate / cfg.zeta ** 2
      headline[f"{prefix}n_star_base"] = float(res["n_star"][base])
      headline[f"{prefix}rate_constant"] = float(np.nanmedian(res["n_slope"] / rate))
      s, lo, hi = finite_loglog_slope(hs, res["n_slope"])
      headline[f"{prefix}slope_horizon"] = s
      headline[f"{prefix}slope_horizon_lo"] = lo
      headline[f"{prefix}slope_horizon_hi"] = hi
      if setting == "strict":
        headline.update(zip(("tabular_strict_smooth_slope_horizon",
                             "tabular_strict_smooth_slope_horizon_lo",
                             "tabular_strict_smooth_slope_horizon_hi"),
                            finite_loglog_slope(hs, res["n_smooth"])))
      for p, pt in enumerate(tab_points):
        for col, val in zip(nstar_rows, (f"tabular_{setting}", "horizon", SA, pt["horizon"],
                                         pt["eps"], pt["zeta"], res["n_star"][p],
                                         res["n_fit"][p], res["n_success"][p],
                                         res["check_runs"][p], res["n_smooth"][p])):
          nstar_rows[col].append(val)
      for col, val in zip(slope_rows, (f"tabular_{setting}", "horizon", s, lo, hi,
                                       TABULAR[setting], TABULAR[setting])):
        slope_rows[col].append(val)
    headline["tabular_d"] = float(truth.get(cfg.d, cfg.horizon, cfg.zeta, True)[0].dim)
  headline["runs"] = runs
  ctx.info["instances"] = [dict(d=k[0], horizon=k[1], zeta=k[2], tabular=k[3],
                                S=m.n_states, A=m.n_actions, b=float(m.b), v_star=sol.value,
                                lam_star=sol.dual, core_size=len(des.core),
                                design_max_variance=des.max_variance)
                           for k, (m, _, sol, des) in truth.cache.items()]
  ctx.write_csv("metrics.csv", rows)
  ctx.write_csv("n_star.csv", nstar_rows)
  ctx.write_csv("slopes.csv", slope_rows)
  _figures(cfg, ctx, plt, points, where, results, tab, headline)
  return headline


def _figures(cfg, ctx, plt, points, where, results, tab, headline) -> None:
  # Error vs N at the base point and its eps sweep, both settings.
  fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
  for row, (setting, res) in enumerate(results.items()):
    for p in where["eps"]:
      e = points[p]["eps"]
      for col, (err, name) in enumerate(((res["subopt"], "reward suboptimality V_r* - V_r"),
                                         (res["violation"], "constraint violation b - V_c"))):
        ax = axes[row, col]
        line, = ax.plot(res["totals"][p], err[p].mean(1), marker=".", label=f"eps={e:g}")
        ax.fill_between(res["totals"][p], np.quantile(err[p], 0.1, axis=1),
                        np.quantile(err[p], 0.9, axis=1), color=line.get_color(), alpha=0.15)
        ax.axhline(e if (col == 0 or setting == "relaxed") else 0.0, color=line.get_color(),
                   ls=":", lw=1)
        ax.set(xscale="log", xlabel="N (total generative samples)", ylabel=name,
               title=f"{setting}: d={cfg.d}, H={cfg.horizon:g}, zeta={cfg.zeta:g}")
    axes[row, 0].legend(fontsize=8)
  ctx.save_figure(fig, "error_vs_n.png")

  # N* against each swept quantity, with fitted and theory slopes.
  labels = {"d": "feature dimension d", "horizon": "H = 1/(1-gamma)", "eps": "eps",
            "zeta": "Slater constant zeta"}
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
  for ax, sweep in zip(axes, SWEEPS):
    idx = where[sweep]
    xs = np.array([points[p][sweep] for p in idx], float)
    curves = [(s, res["n_slope"][idx], headline.get(("" if s == "strict" else "relaxed_")
                                                     + f"slope_{sweep}", np.nan),
               THEORY[s][sweep], "-") for s, res in results.items()]
    if "strict" in results:
      curves.append((f"strict smooth (P(fail)={cfg.strict_smooth_level:g})",
                     results["strict"]["n_smooth"][idx],
                     headline.get(f"strict_smooth_slope_{sweep}", np.nan),
                     THEORY["strict"][sweep], "-."))
    if sweep == "horizon":
      for s, res in tab.items():
        hs = np.array([pt for pt in sorted(set(cfg.horizon_grid) | {cfg.horizon})], float)
        curves.append((f"tabular {s}", res["n_slope"], headline.get(
            "tabular_" + ("" if s == "strict" else "relaxed_") + "slope_horizon", np.nan),
                       TABULAR[s], ":"))
    for name, ys, s, th, ls in curves:
      x = xs if not name.startswith("tabular") else hs
      bound = f"bound {th:g}" + (f", lower bound {LOWER[sweep]:g}" if name.startswith("strict")
                                 else "")
      line, = ax.plot(x, ys, "o" + ls, label=f"{name}: slope {s:.2f} ({bound})")
      ok = np.isfinite(ys)
      if ok.any():
        x0, y0 = np.exp(np.log(x[ok]).mean()), np.exp(np.log(ys[ok]).mean())
        xx = np.array([x.min(), x.max()])
        ax.plot(xx, y0 * (xx / x0) ** th, color=line.get_color(), ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel=labels[sweep],
           ylabel=f"N: success >= {1 - cfg.delta:g} (strict: and no seed violates)")
    ax.legend(fontsize=7)
  fig.suptitle(f"hard linear CMDP (A={cfg.n_actions}), {cfg.n_seeds} seeds; dashed: the "
               "upper bound's exponent through the data (strict lower bound "
               "d^2/((1-gamma)^5 eps^2 zeta^2))")
  ctx.save_figure(fig, "n_star.png")

  # The smooth strict estimator: pooled failure rates against N per sweep point, the fitted
  # probit curves, the N they read off (o) and the verified N (x).
  if "strict" not in results or "smooth_fits" not in results["strict"]:
    return
  res = results["strict"]
  fig = failure_curves_figure(
      plt, [(f"{sweep} sweep", [(p, f"{sweep}={points[p][sweep]:g}") for p in where[sweep]])
            for sweep in SWEEPS],
      res["smooth_evidence"], res["smooth_fits"], res["n_star"], cfg.strict_smooth_level,
      "strict setting: pooled failures (selection and fresh seeds), probit fit in "
      "log N; o: smooth N, x: verified N", xlabel="N (total samples)")
  ctx.save_figure(fig, "strict_failure_curves.png")
