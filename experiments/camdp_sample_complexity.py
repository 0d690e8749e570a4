"""Sample complexity of constrained average-reward MDPs (arXiv 2509.16586), checked numerically.

The paper has no experiments; this is where its bounds O~(SA(B+H)/eps^2) (relaxed
feasibility) and O~(SA(B+H)/(eps^2 zeta^2)) (strict) meet numbers. On the hard
instances of :mod:`cmdp.instances` (S states, A actions, core time scale H, Slater
constant zeta; ``transient_B >= 1`` makes them multichain with transient time B) the
model-based primal-dual learner of :mod:`cmdp.average_reward` runs through the
sample-complexity protocol of :mod:`experiments.sample_complexity`: a geometric grid of N
(samples per (s, a)) x ``n_seeds`` seeds at every sweep point, the smallest N meeting
the success rate (relaxed: interpolated in log N where the rate crosses 1 - delta,
``n_star_fit``, to which the relaxed slopes are fitted), the strict settle on fresh seeds
(the strict slopes are fitted to the settled N), the smooth strict estimator, slopes. All
(N, seed, instance) runs of a setting go through jitted, vmapped calls; each output
mixture is evaluated exactly (float64) against the LP optimum.

A run succeeds when ``rho_r >= rho* - eps`` and ``rho_c >= b - eps`` (relaxed) or
``rho_c >= b`` (strict, exact to 1e-9).

Sweeps (one key varied around the base point): eps over ``eps_grid``, the core time
scale over ``H_grid`` (x axis: the computed span of each instance: H for the
weakly-communicating instance, whose bound is SAH/eps^2, and B + H for the multichain
one) and zeta over ``zeta_grid``. Slopes of log N* against log eps, log span and log zeta
with t intervals; theory: -2, +1, and -2 (strict) / 0 (relaxed).

    python -m experiments.main experiment=camdp_sample_complexity
    python -m experiments.main experiment=camdp_sample_complexity n_seeds=32 transient_B=10
    python -m experiments.main experiment=camdp_sample_complexity family=communicating \
        n_states=19 n_actions=4

``family`` picks the instances: ``gadget`` (the default, above) or ``communicating``
(recon): :func:`cmdp.instances.communicating_instance`, k = S // 2 copies of the core
joined by a ring of one-step hops (odd S adds a hub; S = 19, A = 4 is the paper's
figure's size), every wrong (copy, action) pair costing exactly 1.5 eps (gaps
proportional to eps zeta), communicating. Its sweeps are ``hard_eps``, ``hard_span`` (over
``H_grid``; x axis: the optimal bias span (1 - 2 zeta)(H + (S - 1) // 2) / 2, also the
algorithm's input), ``hard_zeta``, ``hard_S`` (``S_grid``) and ``hard_A`` (``A_grid``), one
instance per point. N stays samples per (s, a); theory exponents of that N*: eps -2, span
+1, zeta -2 strict / 0 relaxed, S 0, A 0 (total samples S A N*: +1 each for S and A).

Headline: the protocol's keys (:func:`experiments.sample_complexity.headline`) over the
sweeps eps, span, zeta: ``slope_<sweep>`` (strict, with ``_lo``/``_hi``),
``relaxed_slope_*``, ``success_slope_*``, ``strict_smooth_slope_*``, the base point's
``n_star_base`` per setting (strict also ``n_star_success_base``,
``strict_smooth_n_base``), the strict check totals (``strict_violations``,
``strict_check_runs``, ``strict_violations_at_success_n``, ``strict_check_steps``,
``strict_unsettled``, ``strict_violation_rate_ub95``, ``strict_max_violation``,
``strict_max_violation_at_success_n``, ``strict_smooth_level``); ``S``, ``A``,
``n_seeds``, ``delta``, ``transient_B`` and ``runs`` (the runs on the N grid; the fresh
ones are ``strict_check_runs``); the checks' ``scaled_slope_*``, ``predicted_slope_*`` (each
also ``relaxed_``) and ``rate_slope_*``. With ``family=communicating`` every sweep key carries
``hard_`` (``slope_hard_eps``, ``relaxed_slope_hard_span``, ``strict_smooth_slope_hard_S``,
``scaled_slope_hard_A``, ...) and ``span_base`` is added. Files: ``metrics.csv``, ``n_star.csv``,
``slopes.csv``, ``error_vs_n.png``, ``n_star.png``, ``strict_failure_curves.png``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from cmdp.average_reward import VARIANTS
from cmdp.instances import FAMILY_COST, family_gap
from experiments import io
from experiments import sample_complexity as sc
from experiments.schema import Check, ConfigError, each, ge, in_range, one_of, param
from experiments.stats import one_at_a_time

THEORY = {"eps": -2.0, "span": 1.0, "zeta": {"strict": -2.0, "relaxed": 0.0}, "S": 0.0,
          "A": 0.0}   # of N* per (s, a); total samples S A N*: S and A +1
FAMILIES = ("gadget", "communicating")


@dataclasses.dataclass(frozen=True)
class Config(sc.Protocol):
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
  constants: str = param("recovered", "the algorithm's constants: 'recovered' (the paper's, "
                         "as recovered; T from the dual bound), 'recovered_oracle' (T from the "
                         "LP's lambda*, an oracle), 'fractions' (each error a fixed fraction "
                         "of the target, T = n_iters)", check=one_of(*VARIANTS))
  n_grid: int = param(128, "dual grid points (best responses planned per run)",
                      check=ge(2))
  n_iters: int = param(2 ** 19, "dual subgradient steps T of constants=fractions (the dual "
                       "residual ~ 1/(16 sqrt T) must stay well below the strict tightening "
                       "eps zeta / 4)", check=ge(1))
  batch_size: int = param(2048, "runs per jitted call", check=ge(1))
  family: str = param("gadget", "instances: 'gadget' (cmdp.instances.hard_instance, the "
                      "sweeps eps, span, zeta) or 'communicating' (recon: "
                      "cmdp.instances.communicating_instance, k copies with eps-gaps; the "
                      "sweeps hard_eps, hard_span, hard_zeta, hard_S, hard_A)",
                      check=one_of(*FAMILIES))
  S_grid: tuple[int, ...] = param((5, 9, 19, 33), "family=communicating: S sweep (k = S // 2 "
                                  "copies, odd S adds the hub)", check=each(ge(4)))
  A_grid: tuple[int, ...] = param((2, 4, 8), "family=communicating: A sweep", check=each(ge(2)))
  gap_zeta: float = param(0.0, "family=communicating: the zeta the gaps are made for (0: "
                          "each point's own zeta; > 0: this one at every point, an ablation)",
                          check=in_range(0, 0.25, hi_open=True))
  gap_eps: float = param(0.0, "family=communicating: the eps the gaps are made for (0: each "
                         "point's own eps; > 0: this one at every point, an ablation)",
                         check=in_range(0, 1 / (4 * FAMILY_COST), hi_open=True))
  distinct_pairs: bool = param(False, "an ablation with no two pairs equal in truth (the "
                               "distinct of cmdp.instances.communicating_instance, or of "
                               "hard_instance: its off state's returning actions): no "
                               "winner's curse among equal pairs")
  hold_span: bool = param(False, "zeta sweep at the base point's span: the instance's core "
                          "time scale is rescaled per zeta so that its computed B + H does "
                          "not move with zeta (the hard instance's bias span is "
                          "(1 - 2 zeta) H / 2)")
  hold_noise: bool = param(False, "zeta sweep at the base point's constraint noise: the "
                           "core time scale is rescaled per zeta so that "
                           "cmdp.instances.hard_constraint_noise (the optimal output's "
                           "constraint-gain spread, which grows as zeta shrinks) does not "
                           "move with zeta (family=gadget, transient_B=0)")

  def check(self) -> None:
    super().check()
    if self.transient_B >= 1 and self.n_states < 4:
      raise ConfigError("n_states", "must be >= 4 for the multichain instance")
    if self.hold_noise and self.hold_span:
      raise ConfigError("hold_noise", "holds the noise, hold_span the span: set one of them")
    if self.hold_noise and self.transient_B != 0:
      raise ConfigError("hold_noise", "needs transient_B=0 (the noise model is the weakly "
                        f"communicating instance's); got transient_B={self.transient_B:g}")
    for key in ("gap_zeta", "gap_eps"):
      if self.family != "communicating" and getattr(self, key):
        raise ConfigError(key, "is for family=communicating only")
    if self.family == "communicating":
      if self.transient_B != 0:
        raise ConfigError("transient_B", "must be 0 with family=communicating (it is "
                          f"communicating); got {self.transient_B:g}")
      for key in ("hold_span", "hold_noise"):
        if getattr(self, key):
          raise ConfigError(key, "is for family=gadget only")
      for p in sweep_points(self)[0]:   # every point's leave probability (1 + Delta) / H <= 1
        key = next((k for k, v in (("eps_grid", p["eps"] != self.eps),
                                   ("zeta_grid", p["zeta"] != self.zeta),
                                   ("H_grid", p["H"] != self.H)) if v), "eps")
        if not 4 * FAMILY_COST * p["eps"] < 1:
          raise ConfigError(key if key == "eps_grid" else "eps",
                            f"must be < {1 / (4 * FAMILY_COST):g} with family=communicating "
                            f"(the gaps need 4 * {FAMILY_COST:g} eps < 1); got {p['eps']:g}")
        gap = family_gap(self.gap_eps or p["eps"], self.gap_zeta or p["zeta"])
        if (1 + gap) / p["H"] > 1:
          raise ConfigError(key, f"the point eps={p['eps']:g}, zeta={p['zeta']:g}, "
                            f"H={p['H']:g} has leave probability (1 + Delta) / H = "
                            f"{(1 + gap) / p['H']:.3g} > 1 with family=communicating")


def sweep_points(cfg: Config) -> tuple[list[dict], dict[str, list[int]]]:
  """Unique (eps, H, zeta) points (family=communicating: also S and A) and, per sweep, the
  indices of its points."""
  if cfg.family == "communicating":
    return one_at_a_time(dict(eps=cfg.eps, H=cfg.H, zeta=cfg.zeta, S=cfg.n_states,
                              A=cfg.n_actions),
                         {"hard_eps": ("eps", cfg.eps_grid), "hard_span": ("H", cfg.H_grid),
                          "hard_zeta": ("zeta", cfg.zeta_grid), "hard_S": ("S", cfg.S_grid),
                          "hard_A": ("A", cfg.A_grid)})
  return one_at_a_time(dict(eps=cfg.eps, H=cfg.H, zeta=cfg.zeta),
                       {"eps": ("eps", cfg.eps_grid), "span": ("H", cfg.H_grid),
                        "zeta": ("zeta", cfg.zeta_grid)})


class _Problems:
  """The hard instances of the sweep points, their exact solutions, and the batched runner."""

  def __init__(self, cfg: Config, points: list[dict], ctx):
    from cmdp import average_reward, instances, lp  # pylint: disable=import-outside-toplevel
    self.cfg, self.points, self.ctx = cfg, points, ctx
    keys = sorted({(p["H"], p["zeta"]) for p in points})   # one instance per (H, zeta)
    general = cfg.transient_B >= 1
    hard = lambda H, z: instances.hard_instance(cfg.n_states, cfg.n_actions, H, z,
                                                cfg.transient_B, distinct=cfg.distinct_pairs)
    span_of = lambda q: q.H + (q.B if general else 0.0)

    def build(H, z):
      m = hard(H, z)
      sol = lp.solve_cmdp(m)
      return m, sol, average_reward.instance_parameters(m, sol)

    core = [H for H, _ in keys]            # the instances' core time scales
    swept = [i for i, (H, z) in enumerate(keys) if H == cfg.H and z != cfg.zeta]
    if cfg.hold_noise:  # rescale it so the optimal output's constraint spread stays put
      base = instances.hard_constraint_noise(cfg.H, cfg.zeta) ** 2
      for i in swept:                      # noise^2 is linear in core - 1
        core[i] = 1.0 + (cfg.H - 1.0) * base / instances.hard_constraint_noise(*keys[i]) ** 2
    self.models, self.sols, self.params = map(list, zip(*[build(h, z)
                                                          for h, (_, z) in zip(core, keys)]))
    if cfg.hold_span:   # rescale the core time scale of the zeta sweep (span is linear in it)
      target = span_of(self.params[keys.index((cfg.H, cfg.zeta))])
      for i in swept:
        for _ in range(3):
          core[i] *= target / span_of(self.params[i])
          self.models[i], self.sols[i], self.params[i] = build(core[i], keys[i][1])
    self.instance_of_point = np.array([keys.index((p["H"], p["zeta"])) for p in points])
    # The bounds' span term: H for weakly-communicating instances (Zurek & Chen's SAH/eps^2;
    # B is not needed there), B + H for general ones. It is also the algorithm's input.
    span = [span_of(q) for q in self.params]
    self.span_of_point = np.array([span[i] for i in self.instance_of_point])
    self.batch = jax.tree.map(lambda *x: np.stack(x), *[
        average_reward.instance(m, s, sol.dual)
        for m, s, sol in zip(self.models, span, self.sols)])
    self.info = [dict(H_param=H, zeta=z, core_H=h, H=q.H, B=q.B, rho_star=q.rho_star,
                      lam_star=q.lam_star, b=float(m.b))
                 for (H, z), h, q, m in zip(keys, core, self.params, self.models)]

  def run(self, strict: bool, point: np.ndarray, n: np.ndarray, key, label: str):
    """(subopt, violation) of every run: all instances in one flat batch (:func:`_run_chunked`)."""
    inst_idx = self.instance_of_point[point]
    return _run_chunked(self, self.batch, inst_idx, inst_idx, n, _point_values(self, point),
                        strict, key, label)


def _point_values(problems, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(eps, zeta) of every run's sweep point."""
  return (np.array([problems.points[i]["eps"] for i in point]),
          np.array([problems.points[i]["zeta"] for i in point]))


def _run_chunked(problems, batch, local: np.ndarray, model: np.ndarray, n: np.ndarray,
                 eps_zeta: tuple[np.ndarray, np.ndarray], strict: bool, key, label: str):
  """(subopt, violation) of runs on stacked instances: run i on ``batch[local[i]]``, evaluated
  exactly on ``problems.models[model[i]]`` against ``problems.sols[model[i]]``, in chunks of one
  shape (the batch size, or the next power of two for small batches, padded); chunk j is keyed
  ``fold_in(key, j)``."""
  from cmdp import average_reward, primal_dual  # pylint: disable=import-outside-toplevel
  cfg, ctx = problems.cfg, problems.ctx
  eps, zeta = eps_zeta
  R = len(n)
  rho_r, rho_c = np.zeros(R), np.zeros(R)
  bs = min(cfg.batch_size, 1 << max(R - 1, 1).bit_length())
  n_chunks = -(-R // bs)
  for j in range(n_chunks):
    sl = np.arange(j * bs, min((j + 1) * bs, R))
    pad = np.concatenate([sl, np.full(bs - sl.size, sl[-1])])
    start = time.perf_counter()
    out = average_reward.run_batch(
        jax.random.fold_in(key, j), jax.tree.map(lambda x: x[local[pad]], batch),
        primal_dual.Runs(n[pad], eps[pad], zeta[pad], np.full(bs, strict)),
        n_grid=cfg.n_grid, variant=cfg.constants, n_iters=cfg.n_iters)
    t_alg = time.perf_counter() - start
    out = jax.tree.map(lambda x: x[:sl.size], out)
    rho_r[sl], rho_c[sl] = average_reward.evaluate_outputs(problems.models, model[sl], out)
    if ctx.progress:
      ctx.say(f"[camdp] {label}: chunk {j + 1}/{n_chunks} ({bs} runs: algorithm "
              f"{t_alg:.1f}s, exact evaluation {time.perf_counter() - start - t_alg:.1f}s)")
  rstar = np.array([problems.sols[i].value for i in model])
  b = np.array([float(problems.models[i].b) for i in model])
  return rstar - rho_r, b - rho_c


class _FamilyProblems:
  """The communicating family's instances (one per sweep point: the gaps depend on eps), their
  exact solutions, and the batched runner, one batch per (S, A) shape (recon)."""

  def __init__(self, cfg: Config, points: list[dict], ctx):
    from cmdp import average_reward, instances, lp  # pylint: disable=import-outside-toplevel
    self.cfg, self.points, self.ctx = cfg, points, ctx
    gap_zeta = lambda p: cfg.gap_zeta or p["zeta"]
    gap_eps = lambda p: cfg.gap_eps or p["eps"]
    self.models = [instances.communicating_instance(p["S"], p["A"], p["H"], p["zeta"], p["eps"],
                                                    gap_zeta=gap_zeta(p), gap_eps=gap_eps(p),
                                                    distinct=cfg.distinct_pairs)
                   for p in points]
    self.sols = [lp.solve_cmdp(m) for m in self.models]
    # The bounds' span: the bias span of the family's optimal policy (closed form, tested).
    self.span_of_point = np.array([instances.communicating_span(p["S"], p["H"], p["zeta"])
                                   for p in points])
    self.shapes = sorted({(p["S"], p["A"]) for p in points})
    self.group_of_point = np.array([self.shapes.index((p["S"], p["A"])) for p in points])
    self.batches = []
    for shape in self.shapes:
      idx = [i for i, p in enumerate(points) if (p["S"], p["A"]) == shape]
      self.batches.append((np.asarray(idx), jax.tree.map(lambda *x: np.stack(x), *[
          average_reward.instance(self.models[i], self.span_of_point[i], self.sols[i].dual)
          for i in idx])))
    self.info = [dict(S=p["S"], A=p["A"], eps=p["eps"], H=p["H"], zeta=p["zeta"],
                      gap=instances.family_gap(gap_eps(p), gap_zeta(p)), span=float(s),
                      rho_star=sol.value, lam_star=sol.dual, b=float(m.b))
                 for p, s, sol, m in zip(points, self.span_of_point, self.sols, self.models)]

  def run(self, strict: bool, point: np.ndarray, n: np.ndarray, key, label: str):
    """(subopt, violation) of every run: per (S, A) shape one flat batch (:func:`_run_chunked`,
    key ``fold_in(key, shape index)``)."""
    point = np.asarray(point)
    eps, zeta = _point_values(self, point)
    subopt, violation = np.zeros(len(n)), np.zeros(len(n))
    for g, (idx, batch) in enumerate(self.batches):
      runs = np.flatnonzero(self.group_of_point[point] == g)
      if not runs.size:
        continue
      local = np.searchsorted(idx, point[runs])      # index into this shape's batch
      subopt[runs], violation[runs] = _run_chunked(
          self, batch, local, point[runs], n[runs], (eps[runs], zeta[runs]), strict,
          jax.random.fold_in(key, g), f"{label}: S={self.shapes[g][0]}, A={self.shapes[g][1]}")
    return subopt, violation


def run(cfg: Config, ctx) -> dict:
  points, where = sweep_points(cfg)
  hard = cfg.family == "communicating"
  problems = (_FamilyProblems if hard else _Problems)(cfg, points, ctx)
  ctx.info["instances"] = problems.info
  family = sc.Family(points, problems.run, lambda p, n: n, "camdp")
  result = sc.measure(family, cfg, jax.random.key(ctx.seed), say=ctx.say,
                      progress=ctx.progress)

  span = problems.span_of_point
  base = where["base"][0]
  pre = "hard_" if hard else ""
  param_of = {f"{pre}eps": "eps", f"{pre}span": "H", f"{pre}zeta": "zeta",
              **({"hard_S": "S", "hard_A": "A"} if hard else {})}
  xs = {sweep: (span[where[sweep]] if key == "H" else
                [float(points[p][key]) for p in where[sweep]])
        for sweep, key in param_of.items()}
  headline: dict[str, float] = {"S": cfg.n_states, "A": cfg.n_actions, "n_seeds": cfg.n_seeds,
                                "delta": cfg.delta, "transient_B": cfg.transient_B}
  if hard:
    headline["span_base"] = float(span[base])
  headline.update(sc.headline(result, xs, where, base))
  headline["runs"] = sum(res.runs for res in result.values())
  columns = lambda p: dict(**({"S": points[p]["S"], "A": points[p]["A"]} if hard else {}),
                           eps=points[p]["eps"], H_param=points[p]["H"],
                           zeta=points[p]["zeta"], span=span[p])
  sweeps = {k: where[k] for k in xs}
  ctx.write_csv("metrics.csv", sc.metrics_rows(result, columns))
  ctx.write_csv("n_star.csv", sc.n_star_rows(result, sweeps, columns))
  ctx.write_csv("slopes.csv", sc.slope_rows(result, headline, list(xs), {"theory": _theory}))
  labels = {f"{pre}eps": "eps", f"{pre}zeta": "Slater constant zeta",
            f"{pre}span": ("span (1 - 2 zeta)(H + (S - 1) // 2) / 2" if hard
                           else "H (computed; B + H if multichain)"),
            "hard_S": "S (copies S // 2)", "hard_A": "A"}
  sweep_label = lambda sweep, p: (f"span={span[p]:g}" if param_of[sweep] == "H"
                                  else f"{param_of[sweep]}={points[p][param_of[sweep]]:g}")
  shape = lambda p: f"S={points[p]['S']}, A={points[p]['A']}, " if hard else ""
  sc.figures(
      ctx, io.pyplot(), result, points, eps_points=where[f"{pre}eps"],
      panels=[(labels[sweep], sc.curves(result, headline, sweep, np.asarray(xs[sweep], float),
                                        where[sweep], _theory, cfg.strict_smooth_level))
              for sweep in xs],
      sweep_members=[(f"{sweep} sweep", [(p, sweep_label(sweep, p)) for p in where[sweep]])
                     for sweep in xs],
      delta=cfg.delta, level=cfg.strict_smooth_level, n_label="N (samples per (s, a))",
      error_labels=("reward suboptimality rho* - rho_r", "constraint violation b - rho_c"),
      error_title=lambda setting, p: (f"{setting}: {shape(p)}H={points[p]['H']:g}, "
                                      f"zeta={points[p]['zeta']:g}"),
      suptitle=(f"communicating family (base S={cfg.n_states}, A={cfg.n_actions}), "
                f"{cfg.n_seeds} seeds; dashed: theory slope of N* per (s, a)" if hard else
                f"S={cfg.n_states}, A={cfg.n_actions}, {cfg.n_seeds} seeds; dashed: theory "
                "slope"))
  title_family = f"communicating family: S={cfg.n_states}, A={cfg.n_actions}, " if hard else ""
  x_base = {f"{pre}eps": cfg.eps, f"{pre}span": span[base], f"{pre}zeta": cfg.zeta,
            "hard_S": cfg.n_states, "hard_A": cfg.n_actions}
  headline.update(sc.run_checks(
      ctx, io.pyplot(), family, cfg, jax.random.key(ctx.seed), result, xs, where,
      {k: x_base[k] for k in xs}, _theory, labels=labels, n_label="N (samples per (s, a))",
      title=(title_family + f"eps={cfg.eps:g}, H={cfg.H:g}, zeta={cfg.zeta:g}, "
             f"{cfg.constants} constants")))
  return headline


def _theory(setting: str, sweep: str) -> float:
  sweep = sweep.removeprefix("hard_")
  return THEORY[sweep][setting] if sweep == "zeta" else THEORY[sweep]
