"""The sample-complexity protocol: the smallest N at which a learner meets its target, per sweep.

One protocol for the experiments that check a sample-complexity bound numerically
(``camdp_sample_complexity``, arXiv 2509.16586; ``linear_cmdp_sample_complexity``, arXiv
2507.02089). A problem family (:class:`Family`) says what a sweep point is and runs a
batch of (point, N, key) runs, returning each run's reward suboptimality and constraint
violation; the protocol does the rest and returns a frozen :class:`Result`:

1. Grid: a geometric N grid per setting (``relaxed_n_range`` / ``strict_n_range``,
   ``n_per_octave`` points per doubling), ``n_seeds`` runs at every (point, N).
2. Success: a run succeeds when its suboptimality is <= eps and it is feasible:
   violation <= eps (relaxed) or <= 1e-9 (strict, exact to rounding). The ablation
   ``relaxed_success="feasible"`` asks a relaxed run for feasibility alone.
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

Beside it, the most direct rate check (:func:`rate`): at one point, every run's output
against the output of the same run (same key, so the same reward perturbation) given a
practically exact model (``RATE_N_REF`` samples), over a geometric N grid. If the analysis
holds, the mean deviations of the output's reward and constraint gains fall like N^-1/2
(:func:`rate_headline`: ``rate_slope_reward_<setting>``, ``rate_slope_constraint_<setting>``).
It also reports the tail that sets N* (:func:`violation_tail`: the (1 - delta) quantile of
the excess violation), which at small N can be held by the instance's range instead.

And the theory-scaled check (:func:`scaled`): every point of a sweep is run at
``N0 * level * (x / x_base)^theory`` for a few levels around the base point's N*; if the
exponent holds, the failure rate is the same at every point of a level. One probit model
in log N and log x over all those runs (:func:`experiments.stats.probit_exponent`) gives
the exponent with an interval from every run at once (``scaled_slope_<sweep>``), free of
the grid and of the smallest-N rule's selection.

What the exponent should be on the instance itself (:func:`predicted`): every point is run
at N0 and at ``RATE_N_REF`` with the same keys; assuming only that each run's deviation from
its exact-model output shrinks like N^-1/2 (what the rate check measures), the failure rate
at any N follows from those pairs, and so does the N where it crosses the level the
estimators read. Its slope against log x (``predicted_slope_<sweep>``) is the exponent the
instance implies; where it differs from the bound's, the instance (its variances and
margins as functions of x) explains the difference.

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
                               probit_exponent, smallest_n, smooth_strict_n)

SETTINGS = ("relaxed", "strict")
STRICT_TOL = 1e-9      # strict feasibility: violation <= STRICT_TOL
RATE_N_REF = 1e15      # the rate check's reference budget: a practically exact model
RATE_STREAM = 0x52415445   # the rate check's key: fold_in(key, RATE_STREAM) ("RATE")
SCALED_STREAM = 0x5343414C  # the theory-scaled check's key ("SCAL")
PREDICT_STREAM = 0x50524544  # the instance prediction's key ("PRED")


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
  rate_n_range: tuple[int, ...] = param((64, 2 ** 20), "[min, max] of the rate check's N "
                                        "grid (output deviation against N at the base point)",
                                        check=each(ge(1)))
  rate_seeds: int = param(32, "seeds per N of the rate check (0 skips it)", check=ge(0))
  scaled_seeds: int = param(128, "seeds per (point, level) of the theory-scaled check (0 "
                            "skips it)", check=ge(0))
  predict_seeds: int = param(128, "seeds per point of the instance prediction (0 skips it)",
                             check=ge(0))
  scaled_levels: tuple[float, ...] = param(
      (0.125, 0.25, 0.5, 1.0), "multiples of the base point's N* at which the theory-scaled "
      "check runs (below it, where failures are frequent enough to fit)",
      check=each(in_range(0, 1e6, lo_open=True)))
  relaxed_success: str = param("both", "what a relaxed run must meet: 'both' (eps-optimal "
                               "and violation <= eps) or 'feasible' (violation <= eps alone; "
                               "an ablation that leaves reward failures out)",
                               check=one_of("both", "feasible"))

  def check(self) -> None:
    for key in ("relaxed_n_range", "strict_n_range", "rate_n_range"):
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


def _outcome(family: Family, proto: Protocol, strict: bool, subopt, violation, point):
  """(feasible, success) of runs of ``point``."""
  eps = np.array([family.points[p]["eps"] for p in np.ravel(point)]).reshape(np.shape(point))
  feasible = violation <= (STRICT_TOL if strict else eps)
  if not strict and proto.relaxed_success == "feasible":
    return feasible, feasible
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
  feasible, success = _outcome(family, proto, strict, subopt, violation, point)
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
  feasible, success = _outcome(family, proto, True, subopt, violation, point)
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


class RateResult(NamedTuple):
  """The rate check of one setting at one point (:func:`rate`).

  Attributes:
    setting: ``relaxed`` or ``strict``.
    ns: (K,) the sample budgets; axis: (K,) the same on the family's N axis.
    reward: (K, seeds) |rho_r(N) - rho_r(ref)| of the output's reward gain (from subopt:
      the optimum cancels).
    subopt, violation: (K, seeds) the runs' own errors at N.
    excess: (K, seeds) violation(N) - violation(ref), signed: how much more the output
      violates than its exact-model limit (b cancels). Its upper (1 - delta) quantile, the
      tail that sets the relaxed N*, is ``rate.csv``'s ``violation_tail``.
  """
  setting: str
  ns: np.ndarray
  axis: np.ndarray
  reward: np.ndarray
  subopt: np.ndarray
  violation: np.ndarray
  excess: np.ndarray

  @property
  def constraint(self) -> np.ndarray:
    """(K, seeds) |rho_c(N) - rho_c(ref)|: the size of :attr:`excess`."""
    return np.abs(self.excess)


def rate(family: Family, proto: Protocol, key: jax.Array, point: int, *, say=print,
         progress: bool = True) -> Mapping[str, RateResult]:
  """The output's deviation from its exact-model limit against N, per setting.

  Every run is made twice with the same key: with its budget N and with
  ``RATE_N_REF``; the deviation of the gains between the two is the statistical
  error alone (the bias of the targets, the perturbation and the surrogate cancel).
  Setting i is keyed ``fold_in(fold_in(key, RATE_STREAM), i)``.
  """
  ns = n_grid_values(int(proto.rate_n_range[0]), int(proto.rate_n_range[1]),
                     proto.n_per_octave).astype(np.float64)
  seeds = proto.rate_seeds
  base = jax.random.fold_in(key, RATE_STREAM)
  pts = np.full(ns.size * seeds, point)
  out = {}
  for si, setting in enumerate(proto.settings):
    strict = setting == "strict"
    if progress:
      say(f"[{family.name}] {setting} rate check: {2 * pts.size} runs ({ns.size} N x "
          f"{seeds} seeds, each also at N = {RATE_N_REF:g})")
    k = jax.random.fold_in(base, si)
    sub, vio = family.run(strict, pts, np.repeat(ns, seeds), k, f"{setting} rate")
    sub0, vio0 = family.run(strict, pts, np.full(pts.size, RATE_N_REF), k,
                            f"{setting} rate reference")
    shape = (ns.size, seeds)
    out[setting] = RateResult(setting, ns, np.asarray(family.n_axis(point, ns), np.float64),
                              np.abs(sub - sub0).reshape(shape),
                              sub.reshape(shape), vio.reshape(shape),
                              (vio - vio0).reshape(shape))
  return types.MappingProxyType(out)


def rate_headline(rates: Mapping[str, RateResult]) -> dict[str, float]:
  """``rate_slope_{reward,constraint}_<setting>`` (with ``_lo``/``_hi``): the slope of the
  log mean deviation against log N (theory: -1/2)."""
  head: dict[str, float] = {}
  for setting, r in rates.items():
    for name, dev in (("reward", r.reward), ("constraint", r.constraint)):
      s, lo, hi = finite_loglog_slope(r.axis, np.where(dev.mean(1) > 0, dev.mean(1), np.nan))
      head.update({f"rate_slope_{name}_{setting}": s, f"rate_slope_{name}_{setting}_lo": lo,
                   f"rate_slope_{name}_{setting}_hi": hi})
  return head


def violation_tail(r: RateResult, delta: float) -> np.ndarray:
  """(K,) the upper (1 - delta) quantile of ``r.excess`` per N: how far above its
  exact-model limit the violation of all but a delta fraction of runs stays. Where the
  output's errors are in their N^-1/2 regime it falls like N^-1/2 too; where it is held by
  the instance's range (more than delta of the outputs at the worst policy's violation) it
  falls slower."""
  return np.quantile(r.excess, 1 - delta, axis=1)


def rate_rows(rates: Mapping[str, RateResult], delta: float = 0.1) -> dict[str, list]:
  """rate.csv: one row per (setting, N): mean deviations, mean errors and the violation's
  tail (:func:`violation_tail` at ``delta``)."""
  rows: dict[str, list] = {}
  for setting, r in rates.items():
    tail = violation_tail(r, delta)
    for k in range(r.ns.size):
      row = dict(setting=setting, n=r.ns[k], N=r.axis[k], seeds=r.reward.shape[1],
                 reward_deviation=r.reward[k].mean(), constraint_deviation=r.constraint[k].mean(),
                 violation_tail=tail[k], subopt=r.subopt[k].mean(),
                 violation=r.violation[k].mean(), violating=(r.violation[k] > STRICT_TOL).mean())
      for key, val in row.items():
        rows.setdefault(key, []).append(val)
  return rows


def rate_figure(ctx, plt, rates: Mapping[str, RateResult], head: Mapping[str, float], *,
                n_label: str, title: str, delta: float = 0.1) -> None:
  """rate_vs_n.png: mean deviations and the violation's tail (:func:`violation_tail`)
  against N, log-log, each with an N^-1/2 reference through its last quarter."""
  fig, axes = plt.subplots(1, len(rates), figsize=(5.5 * len(rates), 4.2), squeeze=False)
  for ax, (setting, r) in zip(axes[0], rates.items()):
    for name, m, fmt in (
        ("reward", r.reward.mean(1), "o-"), ("constraint", r.constraint.mean(1), "o-"),
        (f"excess violation, q{1 - delta:g}", violation_tail(r, delta), "s:")):
      slope = head.get(f"rate_slope_{name}_{setting}")
      line, = ax.plot(r.axis, np.where(m > 0, m, np.nan), fmt, ms=3,
                      label=name if slope is None else f"{name}, mean |dev|: slope {slope:.2f}")
      ok = np.flatnonzero(m > 0)
      ok = ok[ok >= r.axis.size * 3 // 4]
      if ok.size:
        x0, y0 = np.exp(np.log(r.axis[ok]).mean()), np.exp(np.log(m[ok]).mean())
        ax.plot(r.axis, y0 * (r.axis / x0) ** -0.5, color=line.get_color(), ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel=n_label,
           ylabel="gain(N) - gain(exact model)", title=f"{setting} (dashed: N^-1/2)")
    ax.legend(fontsize=8)
  fig.suptitle(title)
  ctx.save_figure(fig, "rate_vs_n.png")


class ScaledResult(NamedTuple):
  """The theory-scaled check of one setting and sweep (:func:`scaled`).

  Attributes:
    setting, sweep: names.
    points: (P,) sweep points; x: (P,) their swept values; theory: the exponent used.
    levels: (L,) multiples of the base N*; n: (P, L) the budgets run; axis: the same on
      the family's N axis.
    failures: (P, L) failed runs among ``runs`` at each.
    exponent: :class:`experiments.stats.Exponent` fitted to all of them.
  """
  setting: str
  sweep: str
  points: np.ndarray
  x: np.ndarray
  theory: float
  levels: np.ndarray
  n: np.ndarray
  axis: np.ndarray
  failures: np.ndarray
  runs: int
  exponent: Any


def scaled(family: Family, proto: Protocol, key: jax.Array, result: Result,
           xs: Mapping[str, Sequence[float]], where: Mapping[str, Sequence[int]], base: int,
           x_base: Mapping[str, float], theory: Callable[[str, str], float], *, say=print,
           progress: bool = True) -> list[ScaledResult]:
  """Runs every sweep's points at the theory-scaled N and fits the exponent (see the module
  docstring). N0 is the base point's smooth strict N (its verified N if the smooth fit
  failed) or the relaxed N*; ``x_base[sweep]`` is the base point's value of the swept
  parameter. Setting i, sweep j is keyed ``fold_in(fold_in(fold_in(key, SCALED_STREAM),
  i), j)``."""
  out = []
  levels = np.asarray(proto.scaled_levels, np.float64)
  root = jax.random.fold_in(key, SCALED_STREAM)
  for si, (setting, res) in enumerate(result.items()):
    n0 = _base_n(family, res, base)
    if not np.isfinite(n0):
      continue
    for wi, sweep in enumerate(xs):
      pts = np.asarray(where[sweep])
      x = np.asarray(xs[sweep], np.float64)
      x0 = float(x_base[sweep])
      th = float(theory(setting, sweep))
      n = np.maximum(np.round(n0 * levels[None, :] * (x[:, None] / x0) ** th), 1.0)
      r = proto.scaled_seeds
      point = np.repeat(pts, levels.size * r)
      if progress:
        say(f"[{family.name}] {setting} theory-scaled check, {sweep}: {point.size} runs "
            f"({pts.size} points x {levels.size} levels x {r} seeds)")
      subopt, violation = family.run(res.strict, point, np.repeat(n.ravel(), r),
                                     jax.random.fold_in(jax.random.fold_in(root, si), wi),
                                     f"{setting} scaled {sweep}")
      _, success = _outcome(family, proto, res.strict, subopt, violation, point)
      failures = (~success).reshape(pts.size, levels.size, r).sum(2)
      axis = np.stack([np.asarray(family.n_axis(int(p), n[i]), np.float64)
                       for i, p in enumerate(pts)])
      exp = probit_exponent(axis.ravel(), np.repeat(x, levels.size), failures.ravel(),
                            np.full(failures.size, r))
      out.append(ScaledResult(setting, sweep, pts, x, th, levels, n, axis, failures, r, exp))
  return out


def _base_n(family: Family, res: SettingResult, base: int) -> float:
  """N0 in budget units: the smooth strict N (else the verified one) or the relaxed N*, on
  the family's axis, mapped back through ``n_axis`` (monotone; a few fixed-point steps of
  n <- n N / n_axis(n), exact for an axis proportional to n)."""
  target = res.n_smooth[base] if res.strict and np.isfinite(res.n_smooth[base]) else res.n_star[base]
  if not np.isfinite(target):
    return float("nan")
  n = float(target)
  for _ in range(8):
    n *= float(target) / float(np.asarray(family.n_axis(base, np.array([n])))[0])
  return n


class Prediction(NamedTuple):
  """The instance-implied N* of every point of one setting (:func:`predicted`).

  Attributes:
    setting: name; level: the failure probability read; n0: the budget run.
    points: (P,) the points; n_pred: (P,) the implied N* on the family's axis.
  """
  setting: str
  level: float
  n0: float
  points: np.ndarray
  n_pred: np.ndarray


def predicted(family: Family, proto: Protocol, key: jax.Array, result: Result,
              points: Sequence[int], base: int, *, say=print, progress: bool = True
              ) -> list[Prediction]:
  """The N* each point's deviations imply under the N^-1/2 law (see the module docstring).

  Each point runs ``predict_seeds`` seeds at N0 and again at ``RATE_N_REF`` (same keys); a
  run's outcome at N is taken as its exact-model outcome plus its deviation times
  sqrt(N0 / N). The N where the failure fraction crosses the level (strict:
  ``strict_smooth_level``, relaxed: ``delta``) is found by bisection in log N. Setting i
  is keyed ``fold_in(fold_in(key, PREDICT_STREAM), i)``.
  """
  from scipy import optimize  # pylint: disable=import-outside-toplevel
  pts = np.asarray(sorted(set(int(p) for p in points)))
  r = proto.predict_seeds
  point = np.repeat(pts, r)
  out = []
  for si, (setting, res) in enumerate(result.items()):
    n0 = _base_n(family, res, base)
    if not np.isfinite(n0):
      continue
    n0 = float(np.round(n0))
    level = proto.strict_smooth_level if res.strict else proto.delta
    if progress:
      say(f"[{family.name}] {setting} instance prediction: {2 * point.size} runs "
          f"({pts.size} points x {r} seeds, at N0 = {n0:g} and at {RATE_N_REF:g})")
    k = jax.random.fold_in(jax.random.fold_in(key, PREDICT_STREAM), si)
    sub, vio = family.run(res.strict, point, np.full(point.size, n0), k, f"{setting} predict")
    sub0, vio0 = family.run(res.strict, point, np.full(point.size, RATE_N_REF), k,
                            f"{setting} predict reference")
    n_pred = np.full(pts.size, np.nan)
    for i, p in enumerate(pts):
      sl = slice(i * r, (i + 1) * r)

      def fail(log_n, sl=sl, p=p):
        f = np.sqrt(n0 / np.exp(log_n))
        _, ok = _outcome(family, proto, res.strict, sub0[sl] + (sub[sl] - sub0[sl]) * f,
                         vio0[sl] + (vio[sl] - vio0[sl]) * f, np.full(r, p))
        return np.mean(~ok)

      # The failure fraction is a step function of N: where it sits exactly at the level,
      # the crossing is the geometric middle of that step.
      lo, hi = np.log(n0) - 12.0, np.log(n0) + 12.0
      if fail(lo) > level >= fail(hi):
        ends = [optimize.brentq(lambda x, op=op: float(op(fail(x), level)) - 0.5, lo, hi,
                                xtol=1e-9)
                for op in (np.greater, np.greater_equal)] if fail(hi) < level else None
        if ends is None:
          ends = [optimize.brentq(lambda x: float(fail(x) > level) - 0.5, lo, hi, xtol=1e-9)]
        n_cross = np.exp(np.mean(ends))
        n_pred[i] = float(np.asarray(family.n_axis(int(p), np.array([n_cross])))[0])
    out.append(Prediction(setting, level, n0, pts, n_pred))
  return out


def predicted_headline(preds: Sequence[Prediction], xs: Mapping[str, Sequence[float]],
                       where: Mapping[str, Sequence[int]], prefix: str = "") -> dict[str, float]:
  """``predicted_slope_<sweep>`` (strict; ``relaxed_predicted_slope_<sweep>``) with
  ``_lo``/``_hi``: slopes of the instance-implied log N* against log x."""
  head: dict[str, float] = {}
  for pr in preds:
    pre = prefix + ("relaxed_" if pr.setting == "relaxed" else "")
    at = {int(p): n for p, n in zip(pr.points, pr.n_pred)}
    for sweep, x in xs.items():
      s, lo, hi = finite_loglog_slope(x, [at.get(int(p), np.nan) for p in where[sweep]])
      head.update({f"{pre}predicted_slope_{sweep}": s, f"{pre}predicted_slope_{sweep}_lo": lo,
                   f"{pre}predicted_slope_{sweep}_hi": hi})
  return head


def scaled_headline(checks: Sequence[ScaledResult], prefix: str = "") -> dict[str, float]:
  """``scaled_slope_<sweep>`` (strict; ``relaxed_scaled_slope_<sweep>``) with ``_lo``/``_hi``."""
  head: dict[str, float] = {}
  for c in checks:
    pre = prefix + ("relaxed_" if c.setting == "relaxed" else "")
    head.update({f"{pre}scaled_slope_{c.sweep}": c.exponent.slope,
                 f"{pre}scaled_slope_{c.sweep}_lo": c.exponent.lo,
                 f"{pre}scaled_slope_{c.sweep}_hi": c.exponent.hi})
  return head


def scaled_rows(checks: Sequence[ScaledResult]) -> dict[str, list]:
  """scaled.csv: one row per (setting, sweep, point, level)."""
  rows: dict[str, list] = {}
  for c in checks:
    for i, p in enumerate(c.points):
      for j, lev in enumerate(c.levels):
        row = dict(setting=c.setting, sweep=c.sweep, point=int(p), x=c.x[i], theory=c.theory,
                   level=lev, n=c.n[i, j], N=c.axis[i, j], runs=c.runs,
                   failures=int(c.failures[i, j]), fail_rate=c.failures[i, j] / c.runs)
        for key, val in row.items():
          rows.setdefault(key, []).append(val)
  return rows


def scaled_figure(ctx, plt, checks: Sequence[ScaledResult], *, labels: Mapping[str, str],
                  title: str) -> None:
  """scaled_check.png: failure rate against x at each level (flat if the exponent holds)."""
  if not checks:
    return
  settings = sorted({c.setting for c in checks}, key=SETTINGS.index)
  sweeps = list(dict.fromkeys(c.sweep for c in checks))
  fig, axes = plt.subplots(len(settings), len(sweeps), figsize=(4.6 * len(sweeps),
                                                                3.8 * len(settings)),
                           squeeze=False)
  for c in checks:
    ax = axes[settings.index(c.setting), sweeps.index(c.sweep)]
    for j, lev in enumerate(c.levels):
      ax.plot(c.x, c.failures[:, j] / c.runs, "o-", ms=3, label=f"{lev:g} N0")
    ax.set(xscale="log", xlabel=labels.get(c.sweep, c.sweep), ylim=(-0.02, 1.02),
           ylabel="failure rate at N0 (x/x0)^theory",
           title=(f"{c.setting}, theory {c.theory:g}: fitted {c.exponent.slope:.2f} "
                  f"[{c.exponent.lo:.2f}, {c.exponent.hi:.2f}]"))
    ax.legend(fontsize=7)
  fig.suptitle(title)
  ctx.save_figure(fig, "scaled_check.png")


def run_checks(ctx, plt, family: Family, proto: Protocol, key: jax.Array, result: Result,
               xs: Mapping[str, Sequence[float]], where: Mapping[str, Sequence[int]],
               x_base: Mapping[str, float], theory: Callable[[str, str], float], *,
               labels: Mapping[str, str], n_label: str, title: str) -> dict[str, float]:
  """The three exponent checks at the base point ``where["base"][0]``, as an experiment runs
  them: the theory-scaled check (``scaled_seeds``), the instance prediction
  (``predict_seeds``), the rate check (``rate_seeds``); their headline keys, scaled.csv,
  rate.csv and figures."""
  base = where["base"][0]
  head: dict[str, float] = {}
  opts = dict(say=ctx.say, progress=ctx.progress)
  if proto.scaled_seeds:
    checks = scaled(family, proto, key, result, xs, where, base, x_base, theory, **opts)
    head.update(scaled_headline(checks))
    ctx.write_csv("scaled.csv", scaled_rows(checks))
    scaled_figure(ctx, plt, checks, labels=labels,
                  title=f"failure rate at the theory-scaled N ({title})")
  if proto.predict_seeds:
    preds = predicted(family, proto, key, result, [p for w in xs for p in where[w]], base,
                      **opts)
    head.update(predicted_headline(preds, xs, where))
  if proto.rate_seeds:
    rates = rate(family, proto, key, base, **opts)
    head.update(rate_headline(rates))
    ctx.write_csv("rate.csv", rate_rows(rates, proto.delta))
    rate_figure(ctx, plt, rates, head, n_label=n_label, delta=proto.delta,
                title=f"output deviation from the exact-model output ({title})")
  return head


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
