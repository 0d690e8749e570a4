"""Speed of the constrained average-reward MDP pipeline, in one process.

(a) The exact LP ground truth (scipy HiGHS) on a random ergodic CMDP with
    ``lp_states`` x ``lp_actions`` (default 200 x 10), both formulations
    (weakly communicating and multichain), plus the Slater LP.
(b) The learning pipeline of :mod:`cmdp.average_reward` (empirical model,
    perturbation, best responses on the dual grid, T dual steps) on the hard
    instance with S = ``n_states``, A = ``n_actions``: ``n_seeds`` runs in one
    jitted call vmapped over seeds (and the dual grid), timed after a warm-up
    compile (best of ``repeats``), against :func:`cmdp.average_reward.run_one_numpy`,
    the same algorithm as a plain numpy loop over ``numpy_seeds`` seeds. The ratio
    of per-run times is ``speedup_vs_numpy_loop``. Both paths are float64.

    python -m experiments.main experiment=bench_camdp
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments import bench, io
from experiments.schema import ge, in_range, one_of, param


@dataclasses.dataclass(frozen=True)
class Config:
  lp_states: int = param(200, "S of the LP timing instance", check=ge(2))
  lp_actions: int = param(10, "A of the LP timing instance", check=ge(1))
  n_states: int = param(20, "S of the pipeline instance (hard instance)", check=ge(4))
  n_actions: int = param(4, "A of the pipeline instance", check=ge(2))
  setting: str = param("strict", "feasibility setting of the timed runs",
                       check=one_of("relaxed", "strict"))
  n_samples: int = param(4096, "N samples per (s, a)", check=ge(1))
  eps: float = param(0.1, "target accuracy", check=in_range(0, 1, lo_open=True))
  zeta: float = param(0.1, "Slater constant of the hard instance",
                      check=in_range(0, 0.25, lo_open=True, hi_open=True))
  H: float = param(10.0, "core time scale of the hard instance", check=ge(2))
  n_seeds: int = param(1024, "runs in the jitted, vmapped call", check=ge(1))
  numpy_seeds: int = param(8, "runs of the numpy loop baseline", check=ge(1))
  n_grid: int = param(128, "dual grid points", check=ge(2))
  n_iters: int = param(2 ** 17, "dual subgradient steps T", check=ge(1))
  repeats: int = param(2, "timed repetitions of the jitted call (best kept)", check=ge(1))


def run(cfg: Config, ctx) -> dict:
  plt = io.pyplot()
  from cmdp import average_reward, instances, lp, primal_dual  # pylint: disable=import-outside-toplevel

  headline: dict[str, float] = {"lp_S": cfg.lp_states, "lp_A": cfg.lp_actions,
                                "S": cfg.n_states, "A": cfg.n_actions, "n_seeds": cfg.n_seeds,
                                "devices": len(jax.local_devices())}
  table = bench.Table("what", "seconds", "runs", "seconds_per_run")
  record = lambda what, seconds, runs=1: table.add(what=what, seconds=seconds, runs=runs,
                                                   seconds_per_run=seconds / runs)

  # (a) LP ground truth at scale.
  rng = np.random.default_rng(ctx.seed)
  ctx.say(f"[bench_camdp] LP: S={cfg.lp_states}, A={cfg.lp_actions}")
  big = instances.random_instance(rng, cfg.lp_states, cfg.lp_actions, "ergodic")
  for name, multichain in (("weakly_communicating", False), ("multichain", True)):
    start = time.perf_counter()
    sol = lp.solve_cmdp(big, multichain=multichain)
    seconds = time.perf_counter() - start
    record(f"lp_{name}", seconds)
    headline[f"lp_{name}_s"] = seconds
    headline[f"lp_{name}_value"] = sol.value
  headline["lp_seconds"] = max(headline["lp_weakly_communicating_s"], headline["lp_multichain_s"])

  # (b) The pipeline: jitted + vmapped vs a numpy loop over seeds.
  m = instances.hard_instance(cfg.n_states, cfg.n_actions, cfg.H, cfg.zeta)
  params = average_reward.instance_parameters(m)
  span = params.H + params.B
  strict = cfg.setting == "strict"
  R = cfg.n_seeds
  args = (jax.tree.map(lambda x: np.broadcast_to(x, (R,) + np.shape(x)),
                      average_reward.instance(m, span)),
          primal_dual.Runs(np.full(R, float(cfg.n_samples)), np.full(R, cfg.eps),
                           np.full(R, cfg.zeta), np.full(R, strict)))
  opts = dict(n_grid=cfg.n_grid, variant="fractions", n_iters=cfg.n_iters)
  ctx.say(f"[bench_camdp] jax: {R} runs (compile + run)")
  first, best, out = bench.timed(
      lambda i: average_reward.run_batch(jax.random.key(ctx.seed + i), *args, **opts),
      cfg.repeats)
  record("jax_vmapped", best, R)
  headline["jax_compile_s"] = first - best
  headline["jax_s_per_run"] = best / R

  ctx.say(f"[bench_camdp] numpy loop: {cfg.numpy_seeds} runs")
  np_rng = np.random.default_rng(ctx.seed)
  start = time.perf_counter()
  np_outs = [average_reward.run_one_numpy(np_rng, m, cfg.n_samples, cfg.eps, cfg.zeta, span,
                                          strict, **opts) for _ in range(cfg.numpy_seeds)]
  numpy_s = time.perf_counter() - start
  record("numpy_loop", numpy_s, cfg.numpy_seeds)
  headline["numpy_s_per_run"] = numpy_s / cfg.numpy_seeds
  headline["speedup_vs_numpy_loop"] = headline["numpy_s_per_run"] / headline["jax_s_per_run"]

  # Same algorithm, same law: compare the exact outcomes of both paths.
  n_cmp = min(R, 64)
  rr, rc = average_reward.evaluate_outputs([m], np.zeros(n_cmp, int),
                                           jax.tree.map(lambda x: x[:n_cmp], out))
  np_out = primal_dual.Mixture(np.stack([o[0] for o in np_outs]),
                               np.stack([o[1] for o in np_outs]), None, None)
  nr, nc = average_reward.evaluate_outputs([m], np.zeros(cfg.numpy_seeds, int), np_out)
  headline["jax_mean_subopt"] = float(params.rho_star - rr.mean())
  headline["numpy_mean_subopt"] = float(params.rho_star - nr.mean())
  headline["jax_mean_violation"] = float(float(m.b) - rc.mean())
  headline["numpy_mean_violation"] = float(float(m.b) - nc.mean())
  ctx.write_csv("metrics.csv", table.columns)

  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  ax.bar(["numpy loop", "jax jit+vmap"], [headline["numpy_s_per_run"], headline["jax_s_per_run"]])
  ax.set(yscale="log", ylabel="seconds per (N, seed) run",
         title=f"S={cfg.n_states}, A={cfg.n_actions}, M={cfg.n_grid}, T={cfg.n_iters}: "
               f"{headline['speedup_vs_numpy_loop']:.1f}x")
  ctx.save_figure(fig, "throughput.png")
  return headline
