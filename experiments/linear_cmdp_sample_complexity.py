"""Sample complexity of linear constrained discounted MDPs (arXiv 2507.02089), checked numerically.

The paper has no experiments; here its bounds O~(d^2 / ((1-gamma)^4 eps^2))
(relaxed feasibility) and O~(d^2 / ((1-gamma)^6 eps^2 zeta^2)) (strict), and its
strict-setting lower bound Omega(d^2 / ((1-gamma)^5 eps^2 zeta^2)) (PMLR version,
v313 liu26b), meet numbers. On the hard instances of :func:`cmdp.linear.hard_instance`
(feature dimension d, H = 1/(1-gamma), Slater constant zeta; eps and zeta on the
unnormalized value scale) the primal-dual learner of :mod:`cmdp.linear` (G-optimal
design, greedy LS-MDVI best responses as the authors' code, LS-PE, projected dual
descent) runs through the sample-complexity protocol of
:mod:`experiments.sample_complexity`: a geometric grid of N x ``n_seeds`` seeds at every
sweep point, the smallest N meeting the success rate, the strict settle on fresh seeds
(and a fresh batch at twice the settled N, ``strict_violations_2x``), the smooth strict
estimator, slopes. All runs on one instance go through jitted calls vmapped over runs and
the dual grid; each output mixture is evaluated exactly (float64 linear solves) against
the discounted occupancy LP optimum.

N is the total number of generative samples, sum_x ceil(N_grid / u) over the u core
points (= ``ceil(rho_x N)`` on these uniform designs). A run succeeds when ``V_r >= V_r*
- eps`` and ``V_c >= b - eps`` (relaxed) or ``V_c >= b`` (strict, to 1e-9). The success
N of a point is continuous through a probit fit of the success rate in sqrt(N)
(``n_star_fit``; the grid value is noisy with few seeds, the rate rising slowly in log
N); the relaxed slopes are fitted to it, the strict ones to the settled N.

Sweeps (one key varied around the base point): d over ``d_grid``, H over
``horizon_grid``, eps over ``eps_grid``, zeta over ``zeta_grid``. Slopes of log N*
against log d, log H, log eps and log zeta with 95% t intervals, next to the paper's
upper-bound exponents (relaxed 2, 4, -2, 0; strict 2, 6, -2, -2), its strict
lower-bound exponents (2, 5, -2, -2) and what the hard instance's own analysis predicts
(1, 3, -2, 0 and 1, 5, -2, -2: its errors are those of Azar et al.'s tabular
construction, with N spread over d design points and a winner's-curse bias per gadget;
the d exponent 1 is asymptotic: at small d the seed-to-seed fluctuation, which averages
over the k gadgets, adds to the bias and flattens the slope). The d^2 and the extra
powers of H in the bounds come from union bounds that the instance does not exercise.

Tabular instantiation (``tabular=true``): the same hard CMDP with one-hot features
(d = S A), at the base point and over ``horizon_grid``, compared with the near-optimal
tabular CMDP rates SA/((1-gamma)^3 eps^2) (relaxed) and SA/((1-gamma)^5 eps^2 zeta^2)
(strict) of Vaswani, Yang & Szepesvari 2022: N* divided by the rate
(``tabular_*_rate_constant``) and the slope in H; its strict N* is settled as above
(``tabular_strict_violations`` etc.).

    python -m experiments.main experiment=linear_cmdp_sample_complexity
    python -m experiments.main experiment=linear_cmdp_sample_complexity n_seeds=32 d_grid=[5,9]

Headline: the protocol's keys (:func:`experiments.sample_complexity.headline`) over the
sweeps d, horizon, eps, zeta: ``slope_<sweep>`` (strict, with ``_lo``/``_hi``),
``relaxed_slope_*``, ``success_slope_*``, ``strict_smooth_slope_*``, the base point's
``n_star_base`` per setting (strict also ``n_star_success_base``,
``strict_smooth_n_base``), the strict check totals (``strict_violations``,
``strict_check_runs``, ``strict_max_violation``, ``strict_violations_at_success_n``,
``strict_check_steps``, ``strict_unsettled``, ``strict_violation_rate_ub95``, the
``_2x`` check); the same with ``tabular_`` over the H grid, ``tabular_*_rate_constant``,
``tabular_d``; and ``runs`` (fresh check runs included). Files: ``metrics.csv``,
``n_star.csv``, ``slopes.csv``, ``error_vs_n.png``, ``n_star.png``,
``strict_failure_curves.png``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments import io
from experiments import sample_complexity as sc
from experiments.schema import ConfigError, each, field_of, ge, gt, param
from experiments.stats import one_at_a_time

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
class Config(sc.Protocol):
  relaxed_n_range: tuple[int, ...] = field_of(sc.Protocol, "relaxed_n_range", (64, 2 ** 20))
  strict_n_range: tuple[int, ...] = field_of(sc.Protocol, "strict_n_range", (2 ** 14, 2 ** 32))
  n_per_octave: int = field_of(sc.Protocol, "n_per_octave", 3)
  n_seeds: int = field_of(sc.Protocol, "n_seeds", 32)
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
  tabular: bool = param(True, "also run the tabular instantiation (one-hot features)")
  n_grid: int = param(64, "dual grid points (LS-MDVI best responses per run)", check=ge(2))
  n_dual: int = param(2 ** 17, "dual subgradient steps T", check=ge(1))
  k_factor: float = param(6.0, "LS-MDVI and LS-PE steps K = ceil(k_factor H)", check=gt(0))
  c_beta: float = param(float("inf"), "LS-MDVI inverse temperature beta = c_beta ln(A) / eps "
                        "(inf: greedy, as the authors' code; 8: a softmax close to greedy)", check=gt(0))
  c_omega: float = param(8.0, "reward perturbation omega = eps (1 - gamma) / c_omega (its "
                         "random tie-break among equal actions; large: an ablation without "
                         "it)", check=gt(0))
  batch_size: int = param(512, "runs per jitted call (the last chunk is padded)", check=ge(1))

  def check(self) -> None:
    super().check()
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
      {k: (k, getattr(cfg, f"{k}_grid")) for k in SWEEPS})


class Truth:
  """Instances, designs and exact solutions of a family's sweep points, built once each.

  ``build(point)`` makes the linear CMDP of a point (a mapping with ``d``, ``horizon``,
  ``eps``, ``zeta``); ``fields`` are the point's keys the instance depends on (points that
  agree on them share one instance and run in the same batches)."""

  def __init__(self, build, fields=("d", "horizon", "zeta")):
    self.build, self.fields = build, tuple(fields)
    self.cache: dict = {}

  def key(self, point) -> tuple:
    return tuple(point[f] for f in self.fields)

  def get(self, point, tabular: bool = False):
    """(model, learner instance, exact solution, design) of ``point``."""
    from cmdp import linear  # pylint: disable=import-outside-toplevel
    key = (*self.key(point), tabular)
    if key not in self.cache:
      m = self.build(point)
      if tabular:
        m = linear.from_tabular(m.tabular(), float(m.gamma))
      design = linear.g_optimal_design(m.phi.reshape(-1, m.dim))
      self.cache[key] = (m, linear.make_instance(m, design), linear.solve(m), design)
    return self.cache[key]

  def info(self) -> list[dict]:
    """What was built, one entry per instance (for results.json)."""
    return [dict(zip(self.fields, k[:-1]), tabular=k[-1], S=m.n_states, A=m.n_actions,
                 b=float(m.b), v_star=sol.value, lam_star=sol.dual, core_size=len(des.core),
                 design_max_variance=des.max_variance)
            for k, (m, _, sol, des) in self.cache.items()]


def gadget_truth(cfg: Config) -> Truth:
  """The :class:`Truth` of :func:`cmdp.linear.hard_instance` at ``cfg``'s A and twins."""
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  return Truth(lambda pt: linear.hard_instance(pt["d"], 1.0 - 1.0 / pt["horizon"], pt["zeta"],
                                               cfg.n_actions, twins=cfg.twins))


def family(cfg, ctx, truth: Truth, points: list[dict], tabular: bool = False) -> sc.Family:
  """The linear CMDPs of ``points`` as a :class:`experiments.sample_complexity.Family`: runs
  grouped by instance (group g keyed ``fold_in(key, g)``), each group in chunks of
  ``batch_size`` (the last one padded, so that each instance shape compiles once); N is the
  total number of samples at the core set. ``cfg`` needs the learner's keys (``n_grid``,
  ``n_dual``, ``k_factor``, ``c_beta``, ``c_omega``, ``batch_size``)."""
  from cmdp import linear, primal_dual  # pylint: disable=import-outside-toplevel

  def run(strict: bool, point: np.ndarray, n: np.ndarray, key, label: str):
    groups: dict = {}
    for i, p in enumerate(point):
      groups.setdefault(truth.key(points[p]), []).append(i)
    subopt, violation = np.zeros(len(n)), np.zeros(len(n))
    for g, runs in enumerate(groups.values()):
      runs = np.asarray(runs)
      pt = points[point[runs[0]]]
      m, inst, sol, _ = truth.get(pt, tabular)
      vr, vc = run_chunks(m, inst, primal_dual.Runs(
          n[runs], np.array([points[p]["eps"] for p in point[runs]]),
          np.full(runs.size, pt["zeta"]), np.full(runs.size, strict)),
                          jax.random.fold_in(key, g), cfg, ctx,
                          f"{'tabular ' if tabular else ''}{label} "
                          + " ".join(f"{f}={pt[f]:g}" for f in truth.fields))
      subopt[runs], violation[runs] = sol.value - vr, float(m.b) - vc
    return subopt, violation

  def n_axis(p: int, n):
    design = truth.get(points[p], tabular)[3]
    n = np.asarray(n, np.float64)
    return linear.samples_per_core_point(design.weights, n[..., None]).sum(-1)

  return sc.Family(points, run, n_axis, "linear_cmdp")


def run_chunks(m, inst, runs, key, cfg, ctx, label: str):
  """Exact (V_r, V_c) of every run on one instance, in padded chunks of ``batch_size``."""
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  R = len(runs.n)
  vr, vc = np.zeros(R), np.zeros(R)
  bs = cfg.batch_size
  n_iters = linear.default_iters(float(m.gamma), cfg.k_factor)
  n_chunks = -(-R // bs)
  for j in range(n_chunks):
    sl = np.arange(j * bs, min((j + 1) * bs, R))
    pad = np.concatenate([sl, np.full(bs - sl.size, sl[-1])])
    start = time.perf_counter()
    out = linear.run_batch(jax.random.fold_in(key, j), inst,
                           jax.tree.map(lambda x, pad=pad: x[pad], runs), n_iters=n_iters,
                           n_grid=cfg.n_grid, n_dual=cfg.n_dual, c_beta=cfg.c_beta,
                           c_omega=cfg.c_omega)
    t_alg = time.perf_counter() - start
    out = jax.tree.map(lambda x, sl=sl: x[:sl.size], out)
    vr[sl], vc[sl] = linear.evaluate_outputs(m, out)
    if ctx.progress:
      ctx.say(f"[linear_cmdp] {label}: chunk {j + 1}/{n_chunks} ({bs} runs, K={n_iters}: "
              f"algorithm {t_alg:.1f}s, exact evaluation "
              f"{time.perf_counter() - start - t_alg:.1f}s)")
  return vr, vc


def figures(ctx, cfg, result, headline, points, xs, where, labels, theory_of, lower, suptitle,
            *, param_of=None, members=None, extra=lambda sweep: []) -> None:
  """The protocol's figures of a linear-CMDP experiment: one N* panel per sweep of
  ``labels`` (strict curves noting ``lower[sweep]``, plus ``extra(sweep)``), the error-vs-N
  figure at the base point's eps sweep, and the strict failure curves of the sweeps
  ``members`` (default: all), each labelled by its parameter ``param_of[sweep]``."""
  param_of = param_of or {sweep: sweep for sweep in labels}
  panels = []
  for sweep in labels:
    cs = sc.curves(result, headline, sweep, np.asarray(xs[sweep], float), where[sweep],
                   theory_of, cfg.strict_smooth_level)
    cs = [c._replace(note=f", lower bound {lower[sweep]:g}") if c.name.startswith("strict")
          else c for c in cs]
    panels.append((labels[sweep], cs + extra(sweep)))
  eps_sweep = next(sweep for sweep in labels if param_of[sweep] == "eps")
  sc.figures(
      ctx, io.pyplot(), result, points, eps_points=where[eps_sweep], panels=panels,
      sweep_members=[(f"{param_of[s]} sweep", [(p, f"{param_of[s]}={points[p][param_of[s]]:g}")
                                                for p in where[s]])
                     for s in (members or labels)],
      delta=cfg.delta, level=cfg.strict_smooth_level, n_label="N (total generative samples)",
      error_labels=("reward suboptimality V_r* - V_r", "constraint violation b - V_c"),
      error_title=lambda setting, p: (f"{setting}: d={cfg.d}, H={cfg.horizon:g}, "
                                      f"zeta={cfg.zeta:g}"),
      suptitle=suptitle)


def run(cfg: Config, ctx) -> dict:
  points, where = sweep_points(cfg)
  truth = gadget_truth(cfg)
  k_main, k_tabular = jax.random.split(jax.random.key(ctx.seed))
  opts = dict(success_fit="probit", say=ctx.say, progress=ctx.progress)
  fam = family(cfg, ctx, truth, points)
  result = sc.measure(fam, cfg, k_main, check_2x=True, **opts)
  xs = {k: [points[p][k] for p in where[k]] for k in SWEEPS}
  headline: dict[str, float] = {"d": cfg.d, "horizon": cfg.horizon, "eps": cfg.eps,
                                "zeta": cfg.zeta, "A": cfg.n_actions, "n_seeds": cfg.n_seeds,
                                "delta": cfg.delta}
  headline.update(sc.headline(result, xs, where, where["base"][0]))
  runs = sum(res.runs + res.fresh_runs for res in result.values())

  columns = lambda pts: lambda p: {k: pts[p][k] for k in ("d", "horizon", "eps", "zeta")}
  sweeps = {k: where[k] for k in SWEEPS}
  theory = {"paper_upper_bound": lambda s, w: THEORY[s][w],
            "instance_prediction": lambda s, w: INSTANCE[s][w]}
  metrics = [sc.metrics_rows(result, columns(points), "N_total")]
  n_stars = [sc.n_star_rows(result, sweeps, columns(points))]
  slopes = [sc.slope_rows(result, headline, SWEEPS, theory)]
  tab, h_grid = {}, sorted(set(cfg.horizon_grid) | {cfg.horizon})
  hs = np.array(h_grid, float)
  if cfg.tabular:
    # The same instances with one-hot features (d = S A), at the base point over the H grid.
    tab_points = [dict(d=cfg.d, horizon=H, eps=cfg.eps, zeta=cfg.zeta) for H in h_grid]
    tab = sc.measure(family(cfg, ctx, truth, tab_points, True), cfg, k_tabular, **opts)
    base = int(np.flatnonzero(hs == cfg.horizon)[0])
    tab_head = sc.headline(tab, {"horizon": hs}, {"horizon": range(len(hs))}, base,
                           prefix="tabular_")
    headline.update(tab_head)
    m = truth.get(points[where["base"][0]], True)[0]
    SA = m.n_states * m.n_actions
    for setting, res in tab.items():
      rate = SA * hs ** TABULAR[setting] / cfg.eps ** 2 / (cfg.zeta ** 2 if res.strict else 1)
      pre = "tabular_" + ("" if res.strict else "relaxed_")
      headline[f"{pre}rate_constant"] = float(np.nanmedian(res.n_slope / rate))
    headline["tabular_d"] = float(m.dim)
    runs += sum(res.runs + res.fresh_runs for res in tab.values())
    tab_columns = lambda p: dict(d=SA, **{k: tab_points[p][k] for k in ("horizon", "eps",
                                                                         "zeta")})
    n_stars.append(sc.n_star_rows(tab, {"horizon": range(len(hs))}, tab_columns, "tabular_"))
    slopes.append(sc.slope_rows(tab, headline, ["horizon"],
                                {k: lambda s, w: TABULAR[s] for k in theory},
                                prefix="tabular_", label="tabular_"))
  headline["runs"] = runs
  ctx.info["instances"] = truth.info()
  ctx.write_csv("metrics.csv", sc.merge_rows(*metrics))
  ctx.write_csv("n_star.csv", sc.merge_rows(*n_stars))
  ctx.write_csv("slopes.csv", sc.merge_rows(*slopes))

  labels = {"d": "feature dimension d", "horizon": "H = 1/(1-gamma)", "eps": "eps",
            "zeta": "Slater constant zeta"}
  theory_of = lambda s, w: THEORY[s][w]

  def tabular_curves(sweep):
    if sweep != "horizon" or not tab:
      return []
    return [c._replace(style=":") for c in sc.curves(
        tab, headline, "horizon", hs, range(len(hs)), lambda s, w: TABULAR[s],
        cfg.strict_smooth_level, prefix="tabular_", label="tabular ") if "smooth" not in c.name]

  figures(ctx, cfg, result, headline, points, xs, where, labels, theory_of, LOWER,
          f"hard linear CMDP (A={cfg.n_actions}), {cfg.n_seeds} seeds; dashed: the upper "
          "bound's exponent through the data (strict lower bound d^2/((1-gamma)^5 eps^2 "
          "zeta^2))", extra=tabular_curves)
  headline.update(sc.run_checks(
      ctx, io.pyplot(), fam, cfg, k_main, result, xs, where,
      dict(d=cfg.d, horizon=cfg.horizon, eps=cfg.eps, zeta=cfg.zeta),
      lambda s, w: THEORY[s][w], labels=labels, n_label="N (total generative samples)",
      title=f"d={cfg.d}, H={cfg.horizon:g}, eps={cfg.eps:g}, zeta={cfg.zeta:g}"))
  return headline
