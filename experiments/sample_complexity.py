"""The sample-complexity protocol: the smallest N at which a learner meets its target, per sweep.

One protocol for the experiments that check a sample-complexity bound numerically
(``camdp_sample_complexity``, arXiv 2509.16586; ``linear_cmdp_sample_complexity``, arXiv
2507.02089). A problem family (:class:`Family`) says what a sweep point is and runs a
batch of (point, N, key) runs, returning each run's reward suboptimality and constraint
violation; the protocol does the rest and returns a frozen :class:`Result`:

1. Grid: a geometric N grid per setting (``relaxed_n_range`` / ``strict_n_range``,
   ``n_per_octave`` points per doubling), ``n_seeds`` runs at every (point, N).
2. Success: a run succeeds when its suboptimality is <= eps and it is feasible:
   violation <= eps (relaxed) or <= 1e-9 (strict, exact to rounding).
3. Smallest N (``n_success``): the first grid N from which on (at it and every larger grid
   N) the success rate is >= 1 - delta, in the strict setting also with no seed violating
   (:func:`experiments.stats.smallest_n`). Its continuous estimate (``n_success_fit``) is
   the log-linear interpolation of the crossing (``success_fit="interp"``) or a probit fit
   of the success rate in sqrt(N) (``"probit"``, :func:`experiments.stats.probit_crossing`),
   as the experiment chooses (:func:`measure`).
   The relaxed setting reports it (``n_star``) and fits its slopes to the estimate.
4. Strict settle (:func:`experiments.stats.feasible_n`): each point is re-run on
   ``n_check_seeds`` fresh seeds at its success N; a point with a violating fresh seed
   steps up the grid and is checked on new seeds until a batch is clean. The N it settles
   on is the strict ``n_star`` (slopes are fitted to it). Optionally (``check_2x``) every
   settled point is checked once more at twice its N.
5. Smooth strict estimator (``n_smooth``): a probit fit in log N of all the strict evidence
   of a point (selection seeds at every grid N, every fresh batch), read where the failure
   probability is ``strict_smooth_level`` (:func:`experiments.stats.smooth_strict_n`).
6. Slopes of log N against log x per sweep, with t intervals (:func:`headline`), the CSVs
   and figures (:func:`write_tables`, :func:`figures`).

N is counted on the family's axis (:attr:`Family.n_axis`): samples per (s, a) for the
tabular average-reward learner, total samples at the core set for the linear one. The
protocol's config keys are :class:`Protocol`'s, which each experiment's ``Config``
inherits.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from experiments.schema import ConfigError, each, ge, in_range, one_of, param
from experiments.stats import (failure_curves_figure, feasible_n, finite_loglog_slope,
                               grid_failure_evidence, n_grid_values, probit_crossing,
                               smallest_n, smooth_strict_n)

SETTINGS = ("relaxed", "strict")
STRICT_TOL = 1e-9      # strict feasibility: violation <= STRICT_TOL


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The protocol's config keys: a sample-complexity experiment's ``Config`` inherits them
  (and may give some another default with :func:`experiments.schema.field_of`)."""
  settings: tuple[str, ...] = param(SETTINGS, "feasibility settings to run",
                                    check=each(one_of(*SETTINGS)))
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
  strict_smooth_level: float = param(0.05, "strict failure probability at which the smooth "
                                     "(pooled probit in log N) estimator reads N",
                                     check=in_range(0, 1, lo_open=True, hi_open=True))

  def check(self) -> None:
    for key in ("relaxed_n_range", "strict_n_range"):
      rng = getattr(self, key)
      if len(rng) != 2 or rng[0] >= rng[1]:
        raise ConfigError(key, f"must be [min, max] with min < max; got {list(rng)}")

  def grid(self, setting: str) -> np.ndarray:
    """The setting's grid of sample budgets (float64)."""
    lo, hi = self.strict_n_range if setting == "strict" else self.relaxed_n_range
    return n_grid_values(int(lo), int(hi), self.n_per_octave).astype(np.float64)


class Keys(NamedTuple):
  """Where each batch's randomness comes from, split from one key by purpose.

  Attributes:
    grid: the grid runs; setting i uses ``fold_in(grid, i)``.
    check: the fresh strict checks; round r uses ``fold_in(check, r)``.
    check_2x: the fresh runs at twice the settled N.
  """
  grid: jax.Array
  check: jax.Array
  check_2x: jax.Array

  @classmethod
  def of(cls, key: jax.Array) -> "Keys":
    return cls(*jax.random.split(key, 3))


@dataclasses.dataclass(frozen=True)
class Family:
  """A problem family, as the protocol sees it.

  Attributes:
    points: the sweep points (each a mapping with at least ``eps``).
    run: ``run(strict, point, n, key, label) -> (subopt, violation)``: runs ``point[i]``
      (index into ``points``) with sample budget ``n[i]`` for every i, all keyed by
      ``key`` (however the family splits it), and returns each run's exact reward
      suboptimality and constraint violation (float64, like ``n``).
    n_axis: ``n_axis(p, n) -> N``: the N reported for point ``p`` at sample budgets ``n``.
    name: prefix of progress messages.
  """
  points: Sequence[Mapping[str, Any]]
  run: Callable[..., tuple[np.ndarray, np.ndarray]]
  n_axis: Callable[[int, np.ndarray], np.ndarray]
  name: str


@dataclasses.dataclass(frozen=True)
class SettingResult:
  """One setting's outcome. Per-point arrays have length P, grids n, seeds s.

  Attributes:
    setting: ``relaxed`` or ``strict``.
    ns: (n,) the grid of sample budgets.
    axis: (P, n) the N reported for each point at each grid budget.
    subopt, violation, success, feasible: (P, n, s) per run.
    n_star: (P,) the reported N (relaxed: ``n_success``; strict: the settled N).
    n_success: (P,) the smallest grid N meeting the success rate (see the module doc).
    n_success_fit: (P,) its continuous estimate (interpolated or probit).
    n_smooth: (P,) the smooth strict estimator (nan in the relaxed setting).
    check_runs: (P,) fresh runs of the strict check.
    checks: the strict check's totals (``strict_*`` headline numbers; empty when relaxed).
    fits, evidence: the smooth estimator's fits and pooled evidence per point (strict).
    runs: runs on the grid; fresh_runs: runs of the strict checks (2x check included).
  """
  setting: str
  ns: np.ndarray
  axis: np.ndarray
  subopt: np.ndarray
  violation: np.ndarray
  success: np.ndarray
  feasible: np.ndarray
  n_star: np.ndarray
  n_success: np.ndarray
  n_success_fit: np.ndarray
  n_smooth: np.ndarray
  check_runs: np.ndarray
  checks: Mapping[str, float]
  fits: Sequence[Any]
  evidence: Sequence[Any]
  runs: int
  fresh_runs: int

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if isinstance(value, np.ndarray):
        value.setflags(write=False)

  @property
  def strict(self) -> bool:
    return self.setting == "strict"

  @property
  def n_slope(self) -> np.ndarray:
    """What the setting's slopes are fitted to: the settled N (strict) or the success fit."""
    return self.n_star if self.strict else self.n_success_fit


Result = Mapping[str, SettingResult]


class _Options(NamedTuple):
  success_fit: str
  check_2x: bool
  say: Callable[[str], None]
  progress: bool


def measure(family: Family, proto: Protocol, key: jax.Array, *, success_fit: str = "interp",
            check_2x: bool = False, say=print, progress: bool = True) -> Result:
  """Runs the protocol for every setting of ``proto`` (an experiment's config).

  Args:
    family: the problem family.
    proto: the protocol's settings (any :class:`Protocol`, e.g. an experiment's Config).
    key: the PRNG key of all the runs (split by purpose, :class:`Keys`).
    success_fit: ``interp`` or ``probit``: the continuous estimate of the success N.
    check_2x: check every settled strict point once more at twice its N.
    say, progress: where and whether to report progress.

  Returns:
    {setting: SettingResult}, read-only, as are the results' arrays.
  """
  opts = _Options(success_fit, check_2x, say, progress)
  keys = Keys.of(key)
  return types.MappingProxyType({setting: _setting(family, proto, keys, si, setting, opts)
                                 for si, setting in enumerate(proto.settings)})


def _outcome(family: Family, strict: bool, subopt, violation, point):
  """(feasible, success) of runs of ``point``."""
  eps = np.array([family.points[p]["eps"] for p in np.ravel(point)]).reshape(np.shape(point))
  feasible = violation <= (STRICT_TOL if strict else eps)
  return feasible, (subopt <= eps) & feasible


def _setting(family: Family, proto: Protocol, keys: Keys, si: int, setting: str,
             opts: _Options) -> SettingResult:
  strict = setting == "strict"
  ns = proto.grid(setting)
  n_pts, n_n, n_s = len(family.points), len(ns), proto.n_seeds
  shape = (n_pts, n_n, n_s)
  point, ni, _ = np.meshgrid(np.arange(n_pts), np.arange(n_n), np.arange(n_s), indexing="ij")
  if opts.progress:
    opts.say(f"[{family.name}] {setting}: {point.size} runs ({n_pts} points x {n_n} N x {n_s} seeds)")
  subopt, violation = family.run(strict, point.ravel(), ns[ni.ravel()],
                                 jax.random.fold_in(keys.grid, si), setting)
  subopt, violation = subopt.reshape(shape), violation.reshape(shape)
  feasible, success = _outcome(family, strict, subopt, violation, point)
  axis = np.stack([np.asarray(family.n_axis(p, ns), np.float64) for p in range(n_pts)])
  target = 1.0 - proto.delta
  n_success, n_interp = np.full(n_pts, np.nan), np.full(n_pts, np.nan)
  n_fit = np.full(n_pts, np.nan)
  for p in range(n_pts):
    extra = feasible[p].all(1) if strict else np.ones(n_n, bool)
    n_success[p], n_interp[p], _ = smallest_n(axis[p], success[p].mean(1), extra, target)
    if opts.success_fit == "probit":
      n_fit[p] = probit_crossing(axis[p], success[p], target)
  if opts.success_fit != "probit":
    n_fit = n_interp
  common = dict(setting=setting, ns=ns, axis=axis, subopt=subopt, violation=violation,
                success=success, feasible=feasible, n_success=n_success, n_success_fit=n_fit,
                runs=int(point.size))
  if not strict:
    return SettingResult(**common, n_star=n_success.copy(), n_smooth=np.full(n_pts, np.nan),
                         check_runs=np.zeros(n_pts, int), checks={}, fits=(), evidence=(),
                         fresh_runs=0)
  return SettingResult(**common, **_settle(family, proto, keys, axis, ns, success, feasible,
                                           opts))


def _fresh(family: Family, proto: Protocol, pts: np.ndarray, n: np.ndarray, key, label: str):
  """Violations, largest violation and strict failures per point among ``n_check_seeds``
  fresh strict runs of each ``pts[j]`` at budget ``n[j]``."""
  r = proto.n_check_seeds
  point = np.repeat(pts, r)
  subopt, violation = family.run(True, point, np.repeat(np.asarray(n, np.float64), r), key,
                                 label)
  feasible, success = _outcome(family, True, subopt, violation, point)
  shape = (len(pts), r)
  return ((~feasible).reshape(shape).sum(1), violation.reshape(shape).max(1),
          (~success).reshape(shape).sum(1))


def _settle(family, proto, keys, axis, ns, success, feasible, opts: _Options) -> dict:
  """The strict setting's settled N, its checks and the smooth estimator."""
  n_pts = axis.shape[0]
  r = proto.n_check_seeds
  worst_first, worst_last = np.full(n_pts, np.nan), np.full(n_pts, np.nan)
  evidence = grid_failure_evidence(axis, success)

  def check(ps, ii, rnd):
    if opts.progress:
      opts.say(f"[{family.name}] strict check {rnd + 1}: {len(ps)} points x {r} fresh seeds")
    bad, worst, fail = _fresh(family, proto, ps, ns[ii], jax.random.fold_in(keys.check, rnd),
                              f"strict check {rnd + 1}")
    if rnd == 0:
      worst_first[ps] = worst
    worst_last[ps] = worst
    for j, p in enumerate(ps):
      evidence[p].append((axis[p, ii[j]], int(fail[j]), r))
    return bad

  fn = feasible_n(success.mean(2), (~feasible).sum(2), 1.0 - proto.delta, check,
                  proto.n_seeds, r)
  n_star = np.array([axis[p, i] if i >= 0 else np.nan for p, i in enumerate(fn.index)])
  checks = fn.headline("strict_")
  # the largest b - V among the fresh runs (0 if all are feasible; nan if none ran)
  nanmax = lambda x: max(float(np.nanmax(x)), 0.0) if np.isfinite(x).any() else float("nan")
  checks["strict_max_violation"] = nanmax(worst_last)
  checks["strict_max_violation_at_success_n"] = nanmax(worst_first)
  fresh = int(fn.fresh_runs.sum())
  if opts.check_2x:
    settled = np.flatnonzero(fn.index >= 0)
    if r and settled.size:
      n2 = 2 * ns[fn.index[settled]]
      bad, worst, fail = _fresh(family, proto, settled, n2, keys.check_2x,
                                "strict check (2 N*)")
      checks.update(strict_violations_2x=int(bad.sum()),
                    strict_max_violation_2x=max(float(worst.max()), 0.0))
      for j, p in enumerate(settled):
        evidence[p].append((float(family.n_axis(p, n2[j])), int(fail[j]), r))
    else:
      checks.update(strict_violations_2x=0, strict_max_violation_2x=float("nan"))
    checks["strict_check_runs_2x"] = int(settled.size * r)
    fresh += checks["strict_check_runs_2x"]
  n_smooth, fits = smooth_strict_n(evidence, proto.strict_smooth_level)
  checks["strict_smooth_level"] = proto.strict_smooth_level
  return dict(n_star=n_star, n_smooth=n_smooth, check_runs=fn.fresh_runs, checks=checks,
              fits=fits, evidence=evidence, fresh_runs=fresh)


def headline(result: Result, xs: Mapping[str, Sequence[float]],
             where: Mapping[str, Sequence[int]], base: int, prefix: str = "") -> dict:
  """The protocol's headline numbers.

  Per setting (``relaxed_`` before the relaxed keys): ``n_star_base`` (the reported N at
  point ``base``) and ``slope_<sweep>`` with ``_lo``/``_hi`` (log N against log x over the
  sweep's points ``where[sweep]`` at ``xs[sweep]``). The strict setting adds its check
  totals (``strict_violations``, ...), ``n_star_success_base``, ``strict_smooth_n_base``,
  ``success_slope_<sweep>`` (slopes of the success fit) and ``strict_smooth_slope_<sweep>``.
  Every key gets ``prefix``.
  """
  head: dict[str, float] = {}

  def slopes(pre, sweep, ys):
    s, lo, hi = finite_loglog_slope(xs[sweep], ys[list(where[sweep])])
    head.update({f"{pre}slope_{sweep}": s, f"{pre}slope_{sweep}_lo": lo,
                 f"{pre}slope_{sweep}_hi": hi})

  for setting, res in result.items():
    pre = prefix + ("" if res.strict else "relaxed_")
    head[f"{pre}n_star_base"] = float(res.n_star[base])
    for sweep in xs:
      slopes(pre, sweep, res.n_slope)
    if res.strict:
      head.update({prefix + k: v for k, v in res.checks.items()})
      head[f"{prefix}n_star_success_base"] = float(res.n_success[base])
      head[f"{prefix}strict_smooth_n_base"] = float(res.n_smooth[base])
      for sweep in xs:
        slopes(prefix + "success_", sweep, res.n_success_fit)
        slopes(prefix + "strict_smooth_", sweep, res.n_smooth)
  return head


def metrics_rows(result: Result, columns: Callable[[int], Mapping[str, Any]],
                 axis_name: str | None = None) -> dict[str, list]:
  """metrics.csv: one row per (setting, point, grid N): the point's ``columns(p)``, N (and
  the axis N as ``axis_name``), success and violation rates, mean and 90% quantile of the
  suboptimality and of the violation."""
  rows: dict[str, list] = {}
  for setting, res in result.items():
    for p in range(res.axis.shape[0]):
      for k, n in enumerate(res.ns):
        s, v = res.subopt[p, k], res.violation[p, k]
        row = {"setting": setting, **columns(p), "N": n,
               **({axis_name: res.axis[p, k]} if axis_name else {}),
               "success_rate": res.success[p, k].mean(),
               "violation_rate": 1 - res.feasible[p, k].mean(), "mean_subopt": s.mean(),
               "q90_subopt": np.quantile(s, 0.9), "mean_violation": v.mean(),
               "q90_violation": np.quantile(v, 0.9)}
        for key, val in row.items():
          rows.setdefault(key, []).append(val)
  return rows


def n_star_rows(result: Result, sweeps: Mapping[str, Sequence[int]],
                columns: Callable[[int], Mapping[str, Any]], label: str = "") -> dict[str, list]:
  """n_star.csv: one row per (setting, sweep, point): the point's ``columns(p)`` and its
  reported, fitted, success and smooth N and fresh check runs."""
  rows: dict[str, list] = {}
  for setting, res in result.items():
    for sweep, idx in sweeps.items():
      for p in idx:
        row = {"setting": label + setting, "sweep": sweep, **columns(p),
               "n_star": res.n_star[p], "n_star_fit": res.n_success_fit[p],
               "n_star_success": res.n_success[p], "check_runs": res.check_runs[p],
               "n_star_smooth": res.n_smooth[p]}
        for key, val in row.items():
          rows.setdefault(key, []).append(val)
  return rows


def merge_rows(*tables: Mapping[str, list]) -> dict[str, list]:
  """Concatenates tables with the same columns."""
  out: dict[str, list] = {}
  for t in tables:
    for k, v in t.items():
      out.setdefault(k, []).extend(v)
  return out


class Curve(NamedTuple):
  """One line of an N* panel: its x and N values, fitted slope, theory exponent, style."""
  name: str
  x: np.ndarray
  n: np.ndarray
  slope: float
  theory: float
  style: str = "-"
  note: str = ""


def curves(result: Result, head: Mapping[str, float], sweep: str, x: np.ndarray,
           idx: Sequence[int], theory: Callable[[str, str], float], level: float,
           prefix: str = "", label: str = "") -> list[Curve]:
  """The N* curves of one sweep panel: each setting's reported N and the smooth strict N."""
  out = []
  for setting, res in result.items():
    pre = prefix + ("" if res.strict else "relaxed_")
    out.append(Curve(label + setting, x, res.n_slope[list(idx)],
                     head.get(f"{pre}slope_{sweep}", np.nan), theory(setting, sweep)))
    if res.strict:
      out.append(Curve(f"{label}strict smooth (P(fail)={level:g})", x,
                       res.n_smooth[list(idx)],
                       head.get(f"{prefix}strict_smooth_slope_{sweep}", np.nan),
                       theory(setting, sweep), "-."))
  return out


def figures(ctx, plt, result: Result, points: Sequence[Mapping[str, Any]], *,
            eps_points: Sequence[int],
            panels: Sequence[tuple[str, list[Curve]]], sweep_members, delta: float,
            level: float, n_label: str, error_labels: tuple[str, str],
            error_title: Callable[[str, int], str], suptitle: str) -> None:
  """error_vs_n.png, n_star.png and (strict) strict_failure_curves.png.

  Args:
    points: the sweep points (with ``eps``).
    eps_points: the points of the error-vs-N figure (the base point's eps sweep).
    panels: (x label, curves) per N* panel; a dashed line through each curve's data has
      its theory exponent.
    sweep_members: (title, [(point, label), ...]) per panel of the failure-curve figure.
    n_label: the N axis label; error_labels: the suboptimality and violation labels.
    error_title: (setting, point) -> the error-vs-N panel title.
  """
  fig, axes = plt.subplots(len(result), 2, figsize=(11, 4 * len(result)), squeeze=False)
  for row, (setting, res) in enumerate(result.items()):
    for p in eps_points:
      e = points[p]["eps"]
      for col, (err, name) in enumerate(((res.subopt, error_labels[0]),
                                         (res.violation, error_labels[1]))):
        ax = axes[row, col]
        line, = ax.plot(res.axis[p], err[p].mean(1), marker=".", label=f"eps={e:g}")
        ax.fill_between(res.axis[p], np.quantile(err[p], 0.1, axis=1),
                        np.quantile(err[p], 0.9, axis=1), color=line.get_color(), alpha=0.15)
        ax.axhline(e if (col == 0 or not res.strict) else 0.0, color=line.get_color(), ls=":",
                   lw=1)
        ax.set(xscale="log", xlabel=n_label, ylabel=name, title=error_title(setting, p))
    axes[row, 0].legend(fontsize=8)
  ctx.save_figure(fig, "error_vs_n.png")

  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), squeeze=False)
  for ax, (xlabel, cs) in zip(axes[0], panels):
    for c in cs:
      line, = ax.plot(c.x, c.n, "o" + c.style,
                      label=f"{c.name}: slope {c.slope:.2f} (bound {c.theory:g}{c.note})")
      ok = np.isfinite(c.n)
      if ok.any():
        x0, y0 = np.exp(np.log(c.x[ok]).mean()), np.exp(np.log(c.n[ok]).mean())
        xx = np.array([c.x.min(), c.x.max()])
        ax.plot(xx, y0 * (xx / x0) ** c.theory, color=line.get_color(), ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel=xlabel,
           ylabel=f"N: success >= {1 - delta:g} (strict: and no seed violates)")
    ax.legend(fontsize=7)
  fig.suptitle(suptitle)
  ctx.save_figure(fig, "n_star.png")

  res = result.get("strict")
  if res is None:
    return
  fig = failure_curves_figure(
      plt, sweep_members, res.evidence, res.fits, res.n_star, level,
      "strict setting: pooled failures (selection and fresh seeds), probit fit in log N; "
      "o: smooth N, x: verified N", xlabel=n_label)
  ctx.save_figure(fig, "strict_failure_curves.png")


def slope_rows(result: Result, head: Mapping[str, float], sweeps: Sequence[str],
               theory: Mapping[str, Callable[[str, str], float]], prefix: str = "",
               label: str = "") -> dict[str, list]:
  """slopes.csv: one row per (setting, sweep): the fitted slope with its interval and each
  ``theory[column](setting, sweep)`` exponent."""
  rows: dict[str, list] = {}
  for setting, res in result.items():
    pre = prefix + ("" if res.strict else "relaxed_")
    for sweep in sweeps:
      row = {"setting": label + setting, "sweep": sweep,
             **{k: head[f"{pre}slope_{sweep}{e}"] for k, e in (("slope", ""), ("lo", "_lo"),
                                                                ("hi", "_hi"))},
             **{col: fn(setting, sweep) for col, fn in theory.items()}}
      for key, val in row.items():
        rows.setdefault(key, []).append(val)
  return rows
