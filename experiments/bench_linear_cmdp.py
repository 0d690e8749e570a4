"""Speed of the linear constrained discounted MDP pipeline, in one process.

On a random linear CMDP (:func:`cmdp.linear.random_instance`: Dirichlet
features and next-state measures, S = ``n_states``, A = ``n_actions``, d =
``dim``, H = 1/(1-gamma) = ``horizon``, b halfway in the feasible range):

(a) the exact ground truth: the discounted occupancy LP (scipy HiGHS) with
    its Slater LP, and the G-optimal design (Frank-Wolfe, float64);
(b) the learning pipeline of :mod:`cmdp.linear` (core-set sampling, least
    squares, LS-MDVI best responses and LS-PE on the dual grid, T dual steps):
    ``n_seeds`` runs in one jitted call vmapped over seeds (and the dual grid),
    timed after a warm-up compile (best of ``repeats``), against
    :func:`cmdp.linear.run_one_numpy`, the same algorithm as a plain numpy loop,
    over ``numpy_seeds`` seeds. The ratio of per-run times is
    ``speedup_vs_numpy_loop``. Both paths are float64, and the exact values of
    both outputs are compared (same algorithm, same law).

    python -m experiments.main experiment=bench_linear_cmdp
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments import bench, io
from experiments.schema import ge, gt, in_range, one_of, param


@dataclasses.dataclass(frozen=True)
class Config:
  n_states: int = param(50, "S of the random linear CMDP", check=ge(2))
  n_actions: int = param(4, "A", check=ge(2))
  dim: int = param(10, "feature dimension d", check=ge(1))
  horizon: float = param(10.0, "H = 1/(1-gamma)", check=gt(1))
  zeta_frac: float = param(0.5, "b = max V_c - zeta_frac (max V_c - min V_c)",
                           check=in_range(0, 1, lo_open=True, hi_open=True))
  setting: str = param("strict", "feasibility setting of the timed runs",
                       check=one_of("relaxed", "strict"))
  n_samples: float = param(1e6, "total sample budget N", check=ge(1))
  eps: float = param(0.5, "target accuracy (unnormalized values)", check=gt(0))
  n_seeds: int = param(512, "runs in the jitted, vmapped call", check=ge(1))
  numpy_seeds: int = param(4, "runs of the numpy loop baseline", check=ge(1))
  n_grid: int = param(64, "dual grid points", check=ge(2))
  n_dual: int = param(2 ** 17, "dual subgradient steps T", check=ge(1))
  k_factor: float = param(6.0, "LS-MDVI / LS-PE steps K = ceil(k_factor H)", check=gt(0))
  repeats: int = param(2, "timed repetitions of the jitted call (best kept)", check=ge(1))


def run(cfg: Config, ctx) -> dict:
  plt = io.pyplot()
  from cmdp import linear, primal_dual  # pylint: disable=import-outside-toplevel

  gamma = 1.0 - 1.0 / cfg.horizon
  rng = np.random.default_rng(ctx.seed)
  m = linear.random_instance(rng, cfg.n_states, cfg.n_actions, cfg.dim, gamma, cfg.zeta_frac)
  headline: dict[str, float] = {"S": cfg.n_states, "A": cfg.n_actions, "d": cfg.dim,
                                "horizon": cfg.horizon, "n_seeds": cfg.n_seeds,
                                "devices": len(jax.local_devices())}
  table = bench.Table("what", "seconds", "runs", "seconds_per_run")
  record = lambda what, seconds, runs=1: table.add(what=what, seconds=seconds, runs=runs,
                                                   seconds_per_run=seconds / runs)

  # (a) Ground truth and design.
  start = time.perf_counter()
  sol = linear.solve(m)
  headline["lp_s"] = time.perf_counter() - start
  record("lp", headline["lp_s"])
  start = time.perf_counter()
  design = linear.g_optimal_design(m.phi.reshape(-1, m.dim))
  headline["design_s"] = time.perf_counter() - start
  record("design", headline["design_s"])
  headline.update(v_star=sol.value, zeta=sol.zeta, lam_star=sol.dual,
                  core_size=len(design.core), design_max_variance=design.max_variance)

  # (b) The pipeline: jitted + vmapped vs a numpy loop over seeds.
  inst = linear.make_instance(m, design)
  strict = cfg.setting == "strict"
  R = cfg.n_seeds
  args = (primal_dual.Runs(np.full(R, cfg.n_samples), np.full(R, cfg.eps), np.full(R, sol.zeta),
                           np.full(R, strict)),)
  opts = dict(n_grid=cfg.n_grid, n_dual=cfg.n_dual,
              n_iters=linear.default_iters(gamma, cfg.k_factor))
  ctx.say(f"[bench_linear_cmdp] jax: {R} runs (compile + run)")
  first, best, out = bench.timed(
      lambda i: linear.run_batch(jax.random.key(ctx.seed + i), inst, *args, **opts), cfg.repeats)
  record("jax_vmapped", best, R)
  headline["jax_compile_s"] = first - best
  headline["jax_s_per_run"] = best / R
  headline["jax_runs_per_s"] = R / best

  ctx.say(f"[bench_linear_cmdp] numpy loop: {cfg.numpy_seeds} runs")
  np_rng = np.random.default_rng(ctx.seed)
  start = time.perf_counter()
  np_outs = [linear.run_one_numpy(np_rng, m, design, cfg.n_samples, cfg.eps, sol.zeta, strict,
                                  **opts) for _ in range(cfg.numpy_seeds)]
  numpy_s = time.perf_counter() - start
  record("numpy_loop", numpy_s, cfg.numpy_seeds)
  headline["numpy_s_per_run"] = numpy_s / cfg.numpy_seeds
  headline["speedup_vs_numpy_loop"] = headline["numpy_s_per_run"] / headline["jax_s_per_run"]

  # Same algorithm, same law: compare the exact outcomes of both paths.
  jr, jc = linear.evaluate_outputs(m, out)
  np_out = primal_dual.Mixture(np.stack([o[0] for o in np_outs]),
                               np.stack([o[1] for o in np_outs]), None, None)
  nr, nc = linear.evaluate_outputs(m, np_out)
  b = float(m.b)
  headline["jax_mean_subopt"] = float(sol.value - jr.mean())
  headline["numpy_mean_subopt"] = float(sol.value - nr.mean())
  headline["jax_mean_violation"] = float(b - jc.mean())
  headline["numpy_mean_violation"] = float(b - nc.mean())
  ctx.write_csv("metrics.csv", table.columns)

  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  ax.bar(["numpy loop", "jax jit+vmap"], [headline["numpy_s_per_run"], headline["jax_s_per_run"]])
  ax.set(yscale="log", ylabel="seconds per (N, seed) run",
         title=f"S={cfg.n_states}, A={cfg.n_actions}, d={cfg.dim}, H={cfg.horizon:g}, "
               f"M={cfg.n_grid}, T={cfg.n_dual}: {headline['speedup_vs_numpy_loop']:.0f}x")
  ctx.save_figure(fig, "throughput.png")
  return headline
