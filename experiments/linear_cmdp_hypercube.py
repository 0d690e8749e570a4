"""Linear-CMDP sample complexity on the hypercube family, where d enters as d^2 (arXiv 2507.02089).

The hard family of :func:`cmdp.linear.hypercube_instance` (recon: the hypercube linear MDP
of the linear-mixture lower bounds with a constraint gadget at its goal; d = q + 3 with
A = 2^q corner actions) runs the learner of :mod:`cmdp.linear` through the
sample-complexity protocol of :mod:`experiments.sample_complexity`, exactly as
``linear_cmdp_sample_complexity`` runs the gadget family (same learner, same N axis: total
samples at the core set). The learner takes the corner whose estimated reach is best and
so overestimates its constraint value by the winner's curse over 2^q corners, ``~ q
sigma``, where the spread is only ``sqrt(q) sigma``: N* grows like q^2 (module docstring
of :mod:`cmdp.linear.instances`).

Exponents against the bounds (relaxed d^2 H^4 / eps^2, strict d^2 H^6 / (eps^2 zeta^2);
strict lower bound d^2 H^5 / (eps^2 zeta^2)) and against the instance's own closed form
(:func:`closed_form_n_star`: the winner's-curse model of the learner's constraint error in
float64 numpy, independent of the learner's code), whose exponents are H^3 / eps^2
relaxed and H^5 / (eps^2 zeta^2) strict, and in q a local slope that rises to 2 as the
spread term fades (its slope over the grid is ``instance_slope_hard_<sweep>``).
The d sweep is fitted twice: against d (``hard_d``) and against the hypercube dimension
q = d - 3 (``hard_q``), which the bound's d^2 becomes as d grows.

    python -m experiments.main experiment=linear_cmdp_hypercube
    python -m experiments.main experiment=linear_cmdp_hypercube delta=0.5 strict_smooth_level=0.5

The second command is the ablation that removes the spread term (the median run has
no quantile of the spread to pay): its q slopes should follow the closed form's, q^2 times
the corners' share (u - 2)/u of the design's u = 2^q + 2 points. LS-PE runs K = 12 H steps
(``k_factor`` 12, not the gadget experiment's 6): its truncation adds ~e^-k_factor V_c to
the strict margin, which the closed form leaves out.

Headline: the protocol's keys (:func:`experiments.sample_complexity.headline` and
:func:`experiments.sample_complexity.run_checks`) over the sweeps ``hard_d``,
``hard_q``, ``hard_horizon``, ``hard_eps``, ``hard_zeta``: ``slope_hard_<sweep>``
(strict, verified N, with ``_lo``/``_hi``), ``relaxed_slope_hard_*``,
``success_slope_hard_*``, ``strict_smooth_slope_hard_*``, ``scaled_slope_hard_*``,
``predicted_slope_hard_*`` (each with its ``relaxed_`` twin), the rate check's
``rate_slope_*``, the base point's ``n_star_base`` per setting and the strict check
totals; ``instance_slope_hard_<sweep>`` and ``relaxed_instance_slope_hard_<sweep>`` (the
closed form's slopes), ``closed_form_ratio_base`` and ``relaxed_closed_form_ratio_base``
(measured N* over the closed form's at the base point: strict smooth N, relaxed N*);
``d``, ``horizon``, ``eps``, ``zeta``, ``gap``, ``A``, ``n_seeds``, ``delta``, ``runs``.
Files: ``metrics.csv``, ``n_star.csv`` (with the closed form's N*), ``slopes.csv``,
``scaled.csv``, ``rate.csv`` and the protocol's figures.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from experiments import io
from experiments import linear_cmdp_sample_complexity as lc
from experiments import sample_complexity as sc
from experiments.schema import ConfigError, each, field_of, ge, gt, in_range, param
from experiments.stats import finite_loglog_slope, one_at_a_time

SWEEPS = ("hard_d", "hard_q", "hard_horizon", "hard_eps", "hard_zeta")
PARAM = {"hard_d": "d", "hard_q": "d", "hard_horizon": "horizon", "hard_eps": "eps",
         "hard_zeta": "zeta"}
# The paper's upper-bound exponents (q <= d: the same d^2).
THEORY = {"relaxed": dict(hard_d=2.0, hard_q=2.0, hard_horizon=4.0, hard_eps=-2.0,
                          hard_zeta=0.0),
          "strict": dict(hard_d=2.0, hard_q=2.0, hard_horizon=6.0, hard_eps=-2.0,
                         hard_zeta=-2.0)}
LOWER = dict(hard_d=2.0, hard_q=2.0, hard_horizon=5.0, hard_eps=-2.0, hard_zeta=-2.0)
MAX_D = 14          # A = 2^(d - 3) corner actions: 2048 at d = 14
CURSE_DRAWS = 400_000   # Monte Carlo draws of the closed form's quantile


def _reach_limit(H: float, kappa: float, gap: float, eps: float) -> float:
  """kappa W* of the instance at H: the largest Slater constant it admits."""
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  gamma = 1.0 - 1.0 / H
  return kappa * linear.hypercube_reach(
      gamma, 1.0 / H + gap * eps / linear.hypercube_reach_slope(gamma))


@dataclasses.dataclass(frozen=True)
class Config(sc.Protocol):
  relaxed_n_range: tuple[int, ...] = field_of(sc.Protocol, "relaxed_n_range", (2 ** 8, 2 ** 22))
  strict_n_range: tuple[int, ...] = field_of(sc.Protocol, "strict_n_range", (2 ** 18, 2 ** 34))
  n_per_octave: int = field_of(sc.Protocol, "n_per_octave", 3)
  n_seeds: int = field_of(sc.Protocol, "n_seeds", 32)
  d: int = param(7, f"feature dimension at the base point (d = q + 3: 2^q corner actions; "
                 f"4 <= d <= {MAX_D})", check=in_range(4, MAX_D))
  horizon: float = param(10.0, "H = 1/(1-gamma) at the base point", check=gt(2))
  eps: float = param(0.5, "target accuracy at the base point (unnormalized value scale)",
                     check=gt(0))
  zeta: float = param(0.5, "Slater constant at the base point (unnormalized, <= kappa W* "
                      "~ kappa H / 2)", check=gt(0))
  gap: float = param(0.0, "the best corner's extra discounted time at the goal, in units of "
                     "eps (0: all corners equal, only the winner's curse)", check=ge(0))
  kappa: float = param(0.5, "constraint cost of the goal's reward action (lambda* = 1/kappa)",
                       check=in_range(0, 1, lo_open=True))
  d_grid: tuple[int, ...] = param((5, 7, 9, 11), "d sweep (q = d - 3 = 2, 4, 6, 8)",
                                  check=each(in_range(4, MAX_D)))
  horizon_grid: tuple[float, ...] = param((5.0, 7.0, 10.0, 14.0, 20.0), "H sweep",
                                          check=each(gt(2)))
  eps_grid: tuple[float, ...] = param((1.0, 0.7, 0.5, 0.35), "eps sweep", check=each(gt(0)))
  zeta_grid: tuple[float, ...] = param((0.25, 0.35, 0.5, 0.7, 1.0), "Slater-constant sweep",
                                       check=each(gt(0)))
  n_grid: int = field_of(lc.Config, "n_grid")
  n_dual: int = field_of(lc.Config, "n_dual")
  k_factor: float = field_of(lc.Config, "k_factor", 12.0)
  c_beta: float = field_of(lc.Config, "c_beta")
  c_omega: float = field_of(lc.Config, "c_omega")
  batch_size: int = field_of(lc.Config, "batch_size")

  def check(self) -> None:
    super().check()
    from cmdp import linear  # pylint: disable=import-outside-toplevel
    for H in (self.horizon, *self.horizon_grid):
      for e in (self.eps, *self.eps_grid):
        if self.gap * e / linear.hypercube_reach_slope(1.0 - 1.0 / H) > 1.0 / H:
          raise ConfigError("gap", f"gap eps = {self.gap * e:g} at H = {H:g} moves the "
                            "corners' reach probabilities delta +- Delta below 0; lower gap")
      top = _reach_limit(H, self.kappa, self.gap, min((self.eps, *self.eps_grid)))
      for z in (self.zeta, *self.zeta_grid):
        if z > top:
          raise ConfigError("zeta_grid" if z != self.zeta else "zeta",
                            f"zeta = {z:g} exceeds kappa W* = {top:g} at H = {H:g}")


def sweep_points(cfg: Config) -> tuple[list[dict], dict[str, list[int]]]:
  """Unique (d, horizon, eps, zeta) points and, per sweep, the indices of its points."""
  base = dict(d=cfg.d, horizon=cfg.horizon, eps=cfg.eps, zeta=cfg.zeta)
  points, where = one_at_a_time(base, {s: (PARAM[s], getattr(cfg, f"{PARAM[s]}_grid"))
                                       for s in SWEEPS if s != "hard_q"})
  where["hard_q"] = list(where["hard_d"])
  return points, where


def truth(cfg: Config) -> lc.Truth:
  """The :class:`experiments.linear_cmdp_sample_complexity.Truth` of the hypercube family."""
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  fields = ("d", "horizon", "zeta") + (("eps",) if cfg.gap else ())
  return lc.Truth(lambda pt: linear.hypercube_instance(
      pt["d"], 1.0 - 1.0 / pt["horizon"], pt["zeta"], pt["eps"], cfg.gap, cfg.kappa), fields)


def curse_quantile(q: int, rho: float, level: float, draws: int = CURSE_DRAWS,
                   seed: int = 0) -> float:
  """The (1 - level) quantile of ``e_0 + sum_j sign(rho + e_j) e_j``, e iid N(0, 1), j < q.

  The chosen corner's reach error in units of sigma (Monte Carlo, float64 numpy):
  ``e_0`` the base coordinate's error, ``rho`` each coordinate's signal over sigma.
  """
  rng = np.random.default_rng(seed)
  e0 = rng.standard_normal(draws)
  total = e0.copy()
  for _ in range(q):
    e = rng.standard_normal(draws)
    total += np.sign(rho + e) * e
  return float(np.quantile(total, 1.0 - level))


def closed_form_n_star(point: dict, cfg: Config, setting: str, level: float) -> float:
  """The instance's N* in the winner's-curse model (total samples; see the module docstring).

  A run fails when its constraint error ``W' c1 sigma X`` exceeds the setting's margin,
  X the chosen corner's reach error in units of ``sigma = sqrt(v / N0)`` (``v = delta
  (1 - delta)``, N0 the corners' samples, ``(u - 2) / u`` of N at the G-optimal design's
  u = 2^q + 2 core points), ``c1 = b' / W*`` the output's share of time in which the goal
  pays c, margins ``eps - eps RELAX`` (relaxed: b' = b - RELAX eps, failure at b - eps) and
  ``TIGHTEN eps zeta / H`` (strict). N* is where ``P(fail) = level`` (fixed point in N
  when the corners carry a signal, ``gap > 0``). Reward failures and the dual's residual
  are left out.
  """
  from cmdp import linear  # pylint: disable=import-outside-toplevel
  q, H, eps, zeta = point["d"] - 3, point["horizon"], point["eps"], point["zeta"]
  gamma = 1.0 - 1.0 / H
  delta = 1.0 - gamma
  slope = linear.hypercube_reach_slope(gamma)
  Delta = cfg.gap * eps / slope
  w_star = linear.hypercube_reach(gamma, delta + Delta)
  b = w_star - zeta
  if setting == "strict":
    margin = linear.TIGHTEN * eps * zeta / H
    b_prime = b + margin
  else:
    margin = eps - linear.RELAX * eps
    b_prime = b - linear.RELAX * eps
  v = delta * (1.0 - delta)
  u = 2 ** q + 2
  scale = slope * (b_prime / w_star) / margin          # failure: scale sigma X > 1
  n0 = v * (scale * curse_quantile(q, 0.0, level)) ** 2
  for _ in range(30 if Delta > 0 else 0):
    rho = (Delta / q) / np.sqrt(v / n0)
    n0 = v * (scale * curse_quantile(q, rho, level)) ** 2
  return float(n0 * u / (u - 2))


def run(cfg: Config, ctx) -> dict:
  points, where = sweep_points(cfg)
  tr = truth(cfg)
  key = jax.random.key(ctx.seed)
  fam = lc.family(cfg, ctx, tr, points)
  result = sc.measure(fam, cfg, key, success_fit="probit", check_2x=True, say=ctx.say,
                      progress=ctx.progress)
  xs = {s: [points[p][PARAM[s]] - (3 if s == "hard_q" else 0) for p in where[s]]
        for s in SWEEPS}
  base = where["base"][0]
  m_base = tr.get(points[base])[0]
  headline: dict[str, float] = {"d": cfg.d, "horizon": cfg.horizon, "eps": cfg.eps,
                                "zeta": cfg.zeta, "gap": cfg.gap, "A": m_base.n_actions,
                                "n_seeds": cfg.n_seeds, "delta": cfg.delta}
  headline.update(sc.headline(result, xs, where, base))
  # The instance's closed form at every point, and its slopes over the same sweeps.
  closed = {s: np.array([closed_form_n_star(pt, cfg, s, cfg.strict_smooth_level
                                            if s == "strict" else cfg.delta)
                         for pt in points]) for s in result}
  for setting, res in result.items():
    pre = "" if res.strict else "relaxed_"
    for sweep in SWEEPS:
      s, _, _ = finite_loglog_slope(xs[sweep], closed[setting][where[sweep]])
      headline[f"{pre}instance_slope_{sweep}"] = s
    measured = res.n_smooth[base] if res.strict else res.n_star[base]
    headline[f"{pre}closed_form_ratio_base"] = float(measured / closed[setting][base])
  headline["runs"] = sum(res.runs + res.fresh_runs for res in result.values())
  ctx.info["instances"] = tr.info()

  columns = lambda p: {k: points[p][k] for k in ("d", "horizon", "eps", "zeta")}
  sweeps = {s: where[s] for s in SWEEPS if s != "hard_q"}
  ctx.write_csv("metrics.csv", sc.metrics_rows(result, columns, "N_total"))
  rows = sc.n_star_rows(result, sweeps, columns)
  rows["n_star_closed_form"] = [closed[setting][p] for setting in result
                                for idx in sweeps.values() for p in idx]
  ctx.write_csv("n_star.csv", rows)
  theory = {"paper_upper_bound": lambda s, w: THEORY[s][w],
            "strict_lower_bound": lambda s, w: LOWER[w] if s == "strict" else float("nan"),
            "closed_form": lambda s, w: headline[("" if s == "strict" else "relaxed_")
                                                 + f"instance_slope_{w}"]}
  ctx.write_csv("slopes.csv", sc.slope_rows(result, headline, SWEEPS, theory))

  labels = {"hard_d": "feature dimension d", "hard_q": "hypercube dimension q = d - 3",
            "hard_horizon": "H = 1/(1-gamma)", "hard_eps": "eps",
            "hard_zeta": "Slater constant zeta"}
  theory_of = lambda s, w: THEORY[s][w]
  lc.figures(ctx, cfg, result, headline, points, xs, where, labels, theory_of, LOWER,
             f"hypercube linear CMDP (gap={cfg.gap:g}), {cfg.n_seeds} seeds; dashed: the upper "
             "bound's exponent through the data", param_of=PARAM, members=list(sweeps))
  x_base = {s: points[base][PARAM[s]] - (3 if s == "hard_q" else 0) for s in SWEEPS}
  headline.update(sc.run_checks(
      ctx, io.pyplot(), fam, cfg, key, result, xs, where, x_base, theory_of, labels=labels,
      n_label="N (total generative samples)",
      title=f"d={cfg.d}, H={cfg.horizon:g}, eps={cfg.eps:g}, zeta={cfg.zeta:g}"))
  return headline
