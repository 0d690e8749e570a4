"""Speed of the jitted collaborative-bandit simulator against numpy, in one process.

The two-stage collaborative algorithm (:func:`bandits.collab.algorithms.collab`)
on the unit ball: ``m`` agents x ``horizon`` rounds x dimension ``d`` x
``n_seeds`` seeds in one jitted call (all agents of all seeds advance in one
``lax.scan`` step; seeds sharded over the CPU cores; every round's regret
kept), timed after a warm-up compile. Baselines, same algorithm (same
Sherman-Morrison updates, float64), one seed of the same instances:

(a) ``loop``: the per-round loop, and inside it a loop over the m agents with
    numpy d-vectors (:func:`numpy_ref.collab_loop`), on ``loop_rounds`` rounds;
(b) ``numpy_vectorized``: a loop over rounds with numpy arrays across the
    agents (:func:`numpy_ref.collab_vectorized`), on ``vectorized_rounds``.

The baselines run fewer rounds and one seed; their throughput (agent-rounds per
second, an agent-round being one agent's round in one seed) is extrapolated.
Their first n1 = 2d rounds are the cheaper stage 1, a larger share of a short
run than of the jitted one, which flatters the baselines slightly.
Headline: ``speedup_vs_numpy_loop`` (vs (a)), ``speedup_vs_numpy_vectorized``,
``agent_rounds_per_s`` of the jitted call.

Floor: a stage-2 agent-round is 14 matvecs with A^-1 (3 power steps, two
ascents of 4 + 1 steps, one Sherman-Morrison) plus two rank-one updates
(A^-1, V), ~3.5 kflop, so the default 2e7 agent-rounds are ~7e10 flop. XLA's
fused matvec over one device's 1000 agent-runs takes ~10 us (~10 GFLOP/s,
L2-bound), i.e. ~1.4 s for the 14 x 10^4 of them per device; measured
2.7-2.9 s in all (2 cores; 7e6 agent-rounds/s). The layout and fusion choices
that get there are documented in :mod:`bandits.collab.ridge` and
:func:`bandits.collab.algorithms._ucb_ball`.

    python -m experiments.main experiment=bench_collab
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments import bench, io
from experiments.schema import ge, gt, param


@dataclasses.dataclass(frozen=True)
class Config:
  n_agents: int = param(100, "agents m", check=ge(1))
  horizon: int = param(10_000, "rounds n of the jitted call", check=gt(0))
  d: int = param(10, "dimension d", check=ge(1))
  n_seeds: int = param(20, "seeds in the jitted call", check=ge(1))
  sigma: float = param(0.1, "heterogeneity sigma", check=ge(0))
  loop_rounds: int = param(300, "rounds of the per-round, per-agent numpy loop (one seed)",
                           check=gt(0))
  vectorized_rounds: int = param(3000, "rounds of the agent-vectorized numpy loop (one seed)",
                                 check=gt(0))
  repeats: int = param(2, "timed repetitions of the jitted call (best is kept)", check=ge(1))


def run(cfg: Config, ctx) -> dict:
  plt = io.pyplot()
  from bandits.collab import algorithms, numpy_ref, sim  # pylint: disable=import-outside-toplevel

  inst = sim.make_instances([dict(m=cfg.n_agents, sigma=cfg.sigma)], cfg.n_seeds, ctx.seed,
                            d=cfg.d)
  n1 = algorithms.explore_rounds(cfg.d, "ball", 0)
  agent_rounds = cfg.n_seeds * cfg.n_agents * cfg.horizon
  table = bench.Table("method", "seeds", "agents", "rounds", "seconds", "agent_rounds_per_s",
                      "regret_per_agent_round")

  def record(method, seeds, rounds, seconds, regret):
    rate = seeds * cfg.n_agents * rounds / seconds
    table.add(method=method, seeds=seeds, agents=cfg.n_agents, rounds=rounds, seconds=seconds,
              agent_rounds_per_s=rate,
              regret_per_agent_round=float(np.mean(regret)) / (cfg.n_agents * rounds))
    return rate

  ctx.say(f"[bench_collab] jax: {cfg.n_seeds} seeds x {cfg.n_agents} agents x {cfg.horizon} "
          f"rounds x d={cfg.d}")
  first, best, res = bench.timed(lambda i: sim.run("collab", inst, jax.random.key(ctx.seed + i),
                                                   horizon=cfg.horizon, n_points=100),
                                 cfg.repeats)
  jax_rate = record("jax", cfg.n_seeds, cfg.horizon, best, res.final_regret)

  theta0 = inst.theta[0, 0]
  rng = np.random.default_rng(ctx.seed)
  ctx.say(f"[bench_collab] numpy per-round, per-agent loop: 1 seed x {cfg.loop_rounds} rounds")
  noise = rng.standard_normal((cfg.loop_rounds, cfg.n_agents))
  start = time.perf_counter()
  curve = numpy_ref.collab_loop(theta0, noise, n1=n1)
  loop_rate = record("numpy_loop", 1, cfg.loop_rounds, time.perf_counter() - start, curve[-1])

  ctx.say(f"[bench_collab] numpy agent-vectorized loop: 1 seed x {cfg.vectorized_rounds} rounds")
  noise = rng.standard_normal((cfg.vectorized_rounds, cfg.n_agents))
  start = time.perf_counter()
  curve = numpy_ref.collab_vectorized(theta0, noise, n1=n1)
  vec_rate = record("numpy_vectorized", 1, cfg.vectorized_rounds, time.perf_counter() - start,
                    curve[-1])
  ctx.write_csv("metrics.csv", table.columns)

  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  ax.bar(table.column("method"), table.column("agent_rounds_per_s"))
  ax.set(yscale="log", ylabel="agent-rounds per second",
         title=f"collab, m={cfg.n_agents}, d={cfg.d}, {cfg.n_seeds} seeds x n={cfg.horizon}, "
               f"{len(jax.local_devices())} CPU device(s)")
  ctx.save_figure(fig, "throughput.png")
  ctx.info["baselines"] = ("numpy_loop: 1 seed, per-round loop over agents, float64, "
                           f"{cfg.loop_rounds} rounds; numpy_vectorized: 1 seed, agents "
                           f"vectorized, {cfg.vectorized_rounds} rounds; throughput extrapolated "
                           "per agent-round")
  return {"agent_rounds": agent_rounds, "jax_seconds": best, "jax_compile_s": first - best,
          "agent_rounds_per_s": jax_rate, "numpy_loop_agent_rounds_per_s": loop_rate,
          "numpy_vectorized_agent_rounds_per_s": vec_rate,
          "speedup_vs_numpy_loop": jax_rate / loop_rate,
          "speedup_vs_numpy_vectorized": jax_rate / vec_rate,
          "devices": len(jax.local_devices())}
