"""Small statistics shared by experiments: means with confidence intervals, slopes, and the
sample-size estimators of :mod:`experiments.sample_complexity`: the N grid
(:func:`n_grid_values`), the smallest N meeting a success rate (:func:`smallest_n`,
interpolated, or :func:`probit_crossing`), the strict setting's feasible N
(:func:`feasible_n`) and its smooth counterpart, a probit fit in log N of the pooled strict
failures (:func:`failure_probit_n`, with the glue :func:`grid_failure_evidence`,
:func:`smooth_strict_n` and :func:`failure_curves_figure`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np
from scipy import stats


def mean_ci(x, level: float = 0.95) -> tuple[float, float, float]:
  """(mean, lo, hi): Student-t confidence interval of the mean of ``x``."""
  x = np.asarray(x, np.float64).reshape(-1)
  m = float(x.mean())
  if x.size < 2:
    return m, m, m
  half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
  return m, m - half, m + half


def loglog_slope(x, y, level: float = 0.95) -> tuple[float, float, float]:
  """(slope, lo, hi) of the least-squares fit log y = a + slope log x.

  The interval is the t interval of the OLS slope (nan with fewer than 3 points).
  """
  lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
  fit = stats.linregress(lx, ly)
  if lx.size < 3:
    return float(fit.slope), float("nan"), float("nan")
  half = float(stats.t.ppf(0.5 + level / 2, lx.size - 2) * fit.stderr)
  return float(fit.slope), float(fit.slope) - half, float(fit.slope) + half


def finite_loglog_slope(x, y, level: float = 0.95) -> tuple[float, float, float]:
  """:func:`loglog_slope` over the points with finite y (nan unless two distinct x remain)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(y)
  if ok.sum() >= 2 and len(np.unique(x[ok])) >= 2:
    return loglog_slope(x[ok], y[ok], level)
  return float("nan"), float("nan"), float("nan")


def one_at_a_time(base: dict, sweeps: dict[str, tuple[str, Sequence]]
                  ) -> tuple[list[dict], dict[str, list[int]]]:
  """Unique points of one-at-a-time sweeps around ``base`` and, per sweep, its point indices.

  Args:
    base: the base point, e.g. ``{"eps": 0.1, "H": 10}``.
    sweeps: sweep name -> (the key it varies, its values).

  Returns:
    (points, where): ``where["base"]`` and ``where[name]`` index into ``points``;
    a point shared by several sweeps (the base, typically) appears once.
  """
  points: list[dict] = []

  def add(p):
    if p not in points:
      points.append(p)
    return points.index(p)

  where = {"base": [add(dict(base))]}
  for name, (key, grid) in sweeps.items():
    where[name] = [add(dict(base, **{key: v})) for v in grid]
  return points, where


def n_grid_values(lo: int, hi: int, per_octave: int) -> np.ndarray:
  """Geometric grid of integers from lo to hi with ``per_octave`` points per doubling."""
  k = np.arange(int(np.floor(np.log2(hi / lo) * per_octave)) + 1)
  return np.unique(np.round(lo * 2.0 ** (k / per_octave)).astype(np.int64))


def smallest_n(ns: np.ndarray, rate: np.ndarray, ok_extra: np.ndarray, target: float
               ) -> tuple[float, float, int]:
  """(N*, interpolated N*, index) of the first grid N from which on rate >= target.

  ``ok_extra`` (bool per N) must also hold from there on. The interpolated N* is where
  the rate crosses ``target``, linear in log N between the last failing grid N and N*
  (half-way where the rate does not rise there; N* itself where ``ok_extra`` failed
  there). nan if none.
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
  from scipy import optimize  # pylint: disable=import-outside-toplevel
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


def from_which_on(good) -> np.ndarray:
  """Index of the first True from which on every entry of the last axis is True (-1 if none).

  ``good`` has shape (..., n); the result has shape ``good.shape[:-1]``.
  """
  good = np.asarray(good, bool)
  tail = np.flip(np.cumprod(np.flip(good, -1), -1), -1).astype(bool)  # good here and after
  return np.where(tail.any(-1), np.argmax(tail, -1), -1)


@dataclasses.dataclass(frozen=True)
class FeasibleN:
  """Per sweep point (arrays of length P): the outcome of :func:`feasible_n`.

  Attributes:
    index: grid index of the reported N (-1: none; no success N, or the grid ran out
      before a fresh batch came back clean).
    success_index: grid index of the selection rule's N (-1 if none): the smallest grid N
      from which on the success rate is >= target and no selection seed violates.
    violations: fresh violations at the last N checked (0 where ``index >= 0``).
    violations_at_success: fresh violations in the first batch, at ``success_index``.
    fresh_runs: fresh runs checked, all rounds together.
    runs_at_index: runs at the reported N, selection seeds plus fresh ones (all feasible).
    steps: grid steps taken past ``success_index``.
  """
  index: np.ndarray
  success_index: np.ndarray
  violations: np.ndarray
  violations_at_success: np.ndarray
  fresh_runs: np.ndarray
  runs_at_index: np.ndarray
  steps: np.ndarray

  def headline(self, prefix: str = "strict_") -> dict[str, float]:
    """The totals over points: violations, fresh runs, steps, the 95% bound on the rate."""
    ok = self.index >= 0
    m = int(self.runs_at_index[ok].min()) if ok.any() else 0
    return {f"{prefix}violations": int(self.violations.sum()),
            f"{prefix}check_runs": int(self.fresh_runs.sum()),
            f"{prefix}violations_at_success_n": int(self.violations_at_success.sum()),
            f"{prefix}check_steps": int(self.steps.sum()),
            f"{prefix}unsettled": int(np.sum((self.success_index >= 0) & ~ok)),
            # One-sided 95% upper bound on a point's violation probability from its m clean
            # runs at the reported N (exact binomial: 1 - 0.05^(1/m), about 3/m).
            f"{prefix}violation_rate_ub95": float(1 - 0.05 ** (1 / m)) if m else float("nan")}


def feasible_n(rate, selection_violations, target: float, check: Callable, n_seeds: int,
               n_fresh: int) -> FeasibleN:
  """Strict setting: a grid N per sweep point at which no seed, selection or fresh, violates.

  1. Selection: the smallest grid N from which on (at it and every larger grid N) the
     success rate over the selection seeds is >= ``target`` and none of them violates the
     constraint (a monotone envelope).
  2. Verification: ``check`` re-runs ``n_fresh`` fresh seeds at each point's current N.
     A point whose fresh batch has a violation steps up to the next grid N (where, by 1,
     the selection seeds are all feasible too) and is checked again with new seeds, until
     a batch comes back clean (that N is reported) or the grid runs out (-1).

  The reported N thus has zero violations among all ``n_seeds + n_fresh`` runs there by
  construction; what the clean runs bound is the violation probability (95% upper bound
  about 3 / (n_seeds + n_fresh)), and ``violations_at_success`` keeps what the fresh seeds
  found at the selection rule's N. Stopping at the first clean batch selects on the fresh
  seeds too, so a point whose violation probability is p still passes with probability
  (1-p)^n_fresh (0.04 at p = 0.05, n_fresh = 64).

  Args:
    rate: (P, n) success rate of the selection seeds per grid N (increasing N).
    selection_violations: (P, n) number of selection seeds violating the constraint.
    target: 1 - delta.
    check: ``check(points, index, round) -> violations``: runs ``n_fresh`` new seeds (new
      per ``round``) for each ``points[j]`` at grid index ``index[j]`` and returns the
      number violating per point (int array like ``points``).
    n_seeds: selection seeds per (point, N).
    n_fresh: fresh seeds per point and round (0: no verification, the selection N is
      reported).
  """
  rate = np.asarray(rate, np.float64)
  sel_ok = np.asarray(selection_violations) == 0
  n_pts, n_n = rate.shape
  start = from_which_on((rate >= target) & sel_ok)
  index, cur = np.full(n_pts, -1), start.copy()
  violations, at_success = np.zeros(n_pts, int), np.zeros(n_pts, int)
  fresh_runs, runs_at, steps = np.zeros(n_pts, int), np.zeros(n_pts, int), np.zeros(n_pts, int)
  if n_fresh == 0:
    index = start.copy()
    runs_at[index >= 0] = n_seeds
    return FeasibleN(index, start, violations, at_success, fresh_runs, runs_at, steps)
  active = np.flatnonzero(start >= 0)
  rnd = 0
  while active.size:
    bad = np.asarray(check(active, cur[active], rnd), int).reshape(active.shape)
    if rnd == 0:
      at_success[active] = bad
    violations[active] = bad
    fresh_runs[active] += n_fresh
    clean = bad == 0
    index[active[clean]] = cur[active[clean]]
    runs_at[active[clean]] = n_seeds + n_fresh
    active = active[~clean]
    cur[active] += 1
    steps[active] += 1
    over = cur[active] >= n_n              # the grid ran out: unsettled, keep the last count
    steps[active[over]] -= 1
    active = active[~over]
    rnd += 1
  return FeasibleN(index, start, violations, at_success, fresh_runs, runs_at, steps)


@dataclasses.dataclass(frozen=True)
class FailureCurve:
  """A probit fit of a failure probability that falls with the sample size N.

  Model: ``P(fail | N) = Phi(a - b log N)`` with ``b > 0``, fitted by maximum
  likelihood to binomial counts (see :func:`failure_probit_n`).

  Attributes:
    a, b: intercept and slope (per unit of log N); nan when no fit.
    level: the failure probability whose crossing is reported.
    n_level: N at which the fitted ``P(fail | N)`` equals ``level``,
      ``exp((a - Phi^-1(level)) / b)``; nan when there is no fit or the
      crossing lies outside the range of N observed.
    nll: the negative log-likelihood at the fit.
  """
  a: float
  b: float
  level: float
  n_level: float
  nll: float

  def prob(self, n) -> np.ndarray:
    """The fitted failure probability at ``n``."""
    return stats.norm.cdf(self.a - self.b * np.log(np.asarray(n, np.float64)))


def failure_probit_n(ns, failures, runs, level: float, max_steep: float = 200.0
                     ) -> FailureCurve:
  """Fits ``P(fail | N) = Phi(a - b log N)`` to pooled binomial evidence; N where it is ``level``.

  Every observation (an N, its failures, its runs) enters the likelihood
  ``sum_i k_i log Phi(eta_i) + (m_i - k_i) log Phi(-eta_i)``, ``eta_i = a - b
  log N_i``; the same N may appear several times (batches of different seeds
  pool). The likelihood does not depend on how the N were chosen (it is the
  same for a fixed grid and for an adaptive rule that picks the next N from
  the outcomes so far), so batches that a stopping rule placed may be pooled
  without the selection bias of the stopping rule itself. Fitted in
  standardized log N with ``b > 0``; ``max_steep`` caps the slope in those
  units (with perfectly separated data the likelihood grows without bound as
  the curve tends to a step; the cap puts the crossing at the separation).

  Args:
    ns: (n,) sample sizes (> 0).
    failures: (n,) failures among ``runs``.
    runs: (n,) runs per observation.
    level: the failure probability whose crossing is returned, in (0, 1).

  Returns:
    :class:`FailureCurve`; nan fields when every run failed, none did, or the
    N do not vary.
  """
  from scipy import optimize, special  # pylint: disable=import-outside-toplevel
  x = np.log(np.asarray(ns, np.float64)).reshape(-1)
  k = np.asarray(failures, np.float64).reshape(-1)
  m = np.asarray(runs, np.float64).reshape(-1)
  keep = m > 0
  x, k, m = x[keep], k[keep], m[keep]
  nan = FailureCurve(float("nan"), float("nan"), level, float("nan"), float("nan"))
  if x.size == 0 or k.sum() == 0 or k.sum() == m.sum() or np.ptp(x) == 0:
    return nan
  mu, sd = np.average(x, weights=m), np.ptp(x) / 2
  z = (x - mu) / sd

  def nll(p):
    eta = p[0] - np.exp(p[1]) * z
    lp, lq = special.log_ndtr(eta), special.log_ndtr(-eta)
    val = -np.sum(k * lp + (m - k) * lq)
    # d/d eta of the log-likelihood: k phi/Phi(eta) - (m - k) phi/Phi(-eta)
    logphi = -0.5 * eta ** 2 - 0.5 * np.log(2 * np.pi)
    g_eta = k * np.exp(logphi - lp) - (m - k) * np.exp(logphi - lq)
    grad = -np.array([g_eta.sum(), -(g_eta * z).sum() * np.exp(p[1])])
    return val, grad

  c0 = float(stats.norm.ppf(np.clip(k.sum() / m.sum(), 0.01, 0.99)))
  bounds = [(-60.0, 60.0), (np.log(1e-3), np.log(max_steep))]
  best = min((optimize.minimize(nll, np.array([c0, t0]), jac=True, method="L-BFGS-B",
                                bounds=bounds, options=dict(maxiter=2000, ftol=1e-15,
                                                            gtol=1e-10))
              for t0 in (0.0, 1.5, 3.0)), key=lambda r: r.fun)
  c, s = float(best.x[0]), float(np.exp(best.x[1]))
  b = s / sd
  a = c + s * mu / sd
  log_n = (a - stats.norm.ppf(level)) / b
  inside = x.min() <= log_n <= x.max()
  return FailureCurve(a, b, level, float(np.exp(log_n)) if inside else float("nan"),
                      float(best.fun))


# Evidence for the smooth strict estimator: per sweep point, a list of observations
# (N, failures, runs); several observations may share an N (batches of different seeds).
Evidence = list[list[tuple[float, int, int]]]


def grid_failure_evidence(ns, success) -> Evidence:
  """Per point, one observation per grid N: the selection seeds that failed there.

  Args:
    ns: (P, n) or (n,) the N of each grid index (per point, or shared).
    success: (P, n, seeds) bool.

  Returns:
    ``evidence[p] = [(N, failures, seeds) for each grid N]``; a list per point, to which
    the fresh batches append their observations.
  """
  success = np.asarray(success, bool)
  ns = np.broadcast_to(np.asarray(ns, np.float64), success.shape[:2])
  return [[(ns[p, i], int((~success[p, i]).sum()), success.shape[2])
           for i in range(success.shape[1])] for p in range(success.shape[0])]


def smooth_strict_n(evidence: Evidence, level: float
                    ) -> tuple[np.ndarray, list[FailureCurve]]:
  """(N per point, fits): :func:`failure_probit_n` of each point's pooled evidence at ``level``."""
  fits = [failure_probit_n(*np.array(ev, np.float64).T, level) for ev in evidence]
  return np.array([f.n_level for f in fits]), fits


def pooled_failures(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(N, failures, runs) of one point's evidence, pooled per distinct N (increasing N)."""
  ev = np.array(rows, np.float64)
  ns = np.unique(ev[:, 0])
  k = np.array([ev[ev[:, 0] == n, 1].sum() for n in ns])
  m = np.array([ev[ev[:, 0] == n, 2].sum() for n in ns])
  return ns, k, m


def failure_curves_figure(plt, panels, evidence: Evidence, fits: Sequence[FailureCurve],
                          n_verified, level: float, suptitle: str, xlabel: str = "N"):
  """One panel per sweep: pooled strict failure rates against N per point, the fitted probit
  curves, the N they read off at ``level`` (o) and the verified N (x).

  Args:
    plt: ``matplotlib.pyplot``.
    panels: (title, [(point index, label), ...]) per panel.
    evidence, fits: per point, as from :func:`smooth_strict_n`.
    n_verified: (P,) the verified N per point (nan: none), e.g. :func:`feasible_n`'s.

  Returns:
    The figure (for the caller to save).
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), squeeze=False)
  for ax, (title, members) in zip(axes[0], panels):
    for p, label in members:
      ns, k, m = pooled_failures(evidence[p])
      fit = fits[p]
      line, = ax.plot(ns, np.clip(k / m, 3e-3, 1 - 3e-3), ".", label=label)
      if np.isfinite(fit.a):
        grid = np.geomspace(ns.min(), ns.max(), 200)
        ax.plot(grid, fit.prob(grid), color=line.get_color(), lw=1)
      if np.isfinite(fit.n_level):
        ax.plot([fit.n_level], [level], "o", color=line.get_color())
      if np.isfinite(n_verified[p]):
        ax.plot([n_verified[p]], [level], "x", color=line.get_color())
    ax.axhline(level, color="k", ls=":", lw=1)
    ax.set(xscale="log", yscale="logit", ylim=(2e-3, 1 - 2e-3), xlabel=xlabel,
           ylabel="strict failure rate (violation or not eps-optimal)", title=title)
    ax.legend(fontsize=7)
  fig.suptitle(suptitle)
  return fig


class Exponent(NamedTuple):
  """An exponent fitted jointly from binomial evidence (:func:`probit_exponent`)."""
  slope: float
  lo: float
  hi: float
  b: float        # steepness of the failure curve in log N (> 0 when failures fall with N)


def probit_exponent(ns, xs, failures, runs, level: float = 0.95) -> Exponent:
  """The exponent s of ``N*(x) ~ x^s`` from failures at several (N, x), one probit model.

  Fits ``P(fail | N, x) = Phi(a - b (log N - s log x))`` (a probit GLM in log N and
  log x) by maximum likelihood; ``s`` is the ratio of the two coefficients and its
  interval the delta method's on the inverse Fisher information (normal quantile).
  Every N* read at a fixed failure probability scales as x^s under this model, so s is
  what a slope of log N* against log x estimates, from all runs at once.

  Args:
    ns, xs: (n,) sample sizes and the swept parameter's values (both > 0).
    failures, runs: (n,) failures among the runs of each observation.

  Returns:
    :class:`Exponent`; nan when the evidence cannot identify it (no failures, no
    successes, or N or x constant).
  """
  from scipy import optimize, special  # pylint: disable=import-outside-toplevel
  ln, lx = (np.log(np.asarray(v, np.float64)).reshape(-1) for v in (ns, xs))
  k, m = (np.asarray(v, np.float64).reshape(-1) for v in (failures, runs))
  nan = Exponent(*(4 * (float("nan"),)))
  if k.sum() == 0 or k.sum() == m.sum() or np.ptp(ln) == 0 or np.ptp(lx) == 0:
    return nan
  sn, sx = np.ptp(ln) / 2, np.ptp(lx) / 2
  X = np.stack([np.ones_like(ln), (ln - ln.mean()) / sn, (lx - lx.mean()) / sx], 1)

  def nll(c):
    eta = X @ c
    lp, lq = special.log_ndtr(eta), special.log_ndtr(-eta)
    logphi = -0.5 * eta ** 2 - 0.5 * np.log(2 * np.pi)
    g = k * np.exp(logphi - lp) - (m - k) * np.exp(logphi - lq)
    return -np.sum(k * lp + (m - k) * lq), -(X.T @ g)

  c0 = np.array([float(stats.norm.ppf(np.clip(k.sum() / m.sum(), 0.01, 0.99))), -1.0, 0.0])
  c = optimize.minimize(nll, c0, jac=True, method="BFGS", options=dict(gtol=1e-9)).x
  eta = X @ c
  phi = np.exp(-0.5 * eta ** 2) / np.sqrt(2 * np.pi)
  w = m * phi ** 2 / np.clip(special.ndtr(eta) * special.ndtr(-eta), 1e-300, None)
  cov = np.linalg.pinv((X * w[:, None]).T @ X)
  beta, gamma = c[1] / sn, c[2] / sx
  s = -gamma / beta
  grad = np.array([0.0, gamma / beta ** 2 / sn, -1.0 / beta / sx])
  half = float(stats.norm.ppf(0.5 + level / 2) * np.sqrt(max(grad @ cov @ grad, 0.0)))
  return Exponent(float(s), float(s) - half, float(s) + half, float(-beta))
