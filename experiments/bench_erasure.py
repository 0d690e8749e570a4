"""Speed of the jitted erasure-bandit simulator against numpy, in one process.

For L-SAE and the feedback SAE: ``n_seeds`` runs x ``horizon`` rounds x
``n_arms`` arms in one jitted call (runs sharded over the CPU cores; a regret
curve of ``n_points`` points kept), timed after a warm-up compile. Baselines,
same algorithm and instance distribution:

(a) ``loop``: the straightforward per-round loop over numpy arrays with one
    generator call per random number (:func:`phased_loop_numpy`), on
    ``loop_seeds`` runs of ``loop_horizon`` rounds, scaled to rounds/s;
(a') ``python_list_loop``: a leaner pure-Python loop with pre-drawn randomness
    (:func:`phased_loop`), reported for transparency;
(b) ``numpy_vectorized``: numpy arrays across all seeds, a loop over rounds
    (:func:`phased_vectorized`), on ``vectorized_horizon`` rounds.

Speedups are throughput ratios (rounds per second, a round being one seed's
round); every timing, the jitted call's and each baseline's, is the best of several. Headline: ``speedup_vs_loop`` and ``speedup_vs_numpy_vectorized``
(the smaller over the algorithms), and per-algorithm throughputs and ratios.

Multi-agent case (``ma_schedulers``, e.g. TPG and SP2-Feedback): ``ma_agents``
agents behind channels eps_m ~ U[0.1, 0.5] (the authors' mild profile), K =
``n_arms``, ``ma_seeds`` runs x ``ma_horizon`` rounds in one jitted call, against
the float64 per-round port (:func:`bandits.erasure.numpy_ma.run_port`, pre-drawn
randomness, ``ma_loop_seeds`` runs of ``ma_loop_horizon`` rounds, scaled) and the
hand-vectorized numpy version across seeds
(:func:`bandits.erasure.numpy_ma_vectorized.run_vectorized_rng`, ``ma_vectorized_horizon``
rounds). Throughput in agent-rounds per second. Headline:
``speedup_vs_loop_multi_agent`` and ``speedup_vs_numpy_vectorized_multi_agent`` (the
smaller over the schedulers), ``<scheduler>_agent_rounds_per_s``.

    python -m experiments.main experiment=bench_erasure
    python -m experiments.main experiment=bench_erasure algorithms=[] ma_horizon=5000   # quick
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from experiments import bench, io
from experiments.schema import Check, ConfigError, ge, gt, one_of, param, in_range


def each_or_none(check: Check) -> Check:
  """``check`` on every element of a list that may be empty."""
  return Check(lambda vs: all(check(v) for v in vs), f"a list (may be empty), each {check.allowed}")


@dataclasses.dataclass(frozen=True)
class Config:
  algorithms: tuple[str, ...] = param(("lsae", "fb_sae"), "single-agent algorithms to time",
                                      check=each_or_none(one_of("lsae", "fb_sae")))
  n_seeds: int = param(1000, "runs in the jitted call (and the vectorized baseline)", check=ge(1))
  horizon: int = param(100_000, "rounds per run in the jitted call", check=gt(0))
  n_arms: int = param(10, "arms K", check=ge(2))
  eps: float = param(0.9, "erasure probability", check=in_range(0, 1, hi_open=True))
  n_points: int = param(1000, "regret curve points kept by the jitted call",
                        check=in_range(1, 1000))
  loop_seeds: int = param(3, "runs of the per-round loop baselines", check=ge(1))
  loop_horizon: int = param(100_000, "rounds per run of the loop baselines", check=gt(0))
  vectorized_horizon: int = param(100_000, "rounds of the vectorized numpy baseline",
                                  check=gt(0))
  repeats: int = param(5, "timed repetitions of the jitted call (best is kept)", check=ge(1))
  baseline_repeats: int = param(3, "timed repetitions of each numpy baseline (best is kept)",
                                check=ge(1))
  ma_schedulers: tuple[str, ...] = param(("tpg", "sp2_fb"), "multi-agent schedulers to time "
                                         "([] skips the multi-agent case)",
                                         check=each_or_none(one_of("tpg", "tpg_guarded",
                                                                   "sp2_fb")))
  ma_agents: int = param(20, "agents M of the multi-agent case", check=ge(1))
  ma_seeds: int = param(1000, "runs of the multi-agent jitted call and vectorized baseline",
                        check=ge(1))
  ma_horizon: int = param(50_000, "rounds per run of the multi-agent jitted call", check=gt(1))
  ma_loop_seeds: int = param(2, "runs of the multi-agent per-round port", check=ge(1))
  ma_loop_horizon: int = param(5_000, "rounds per run of the multi-agent per-round port",
                               check=gt(1))
  ma_vectorized_horizon: int = param(50_000, "rounds of the multi-agent vectorized numpy "
                                     "baseline (as many as the jitted call's: batch ends are "
                                     "rarer per round in longer runs)", check=gt(1))
  ma_repeats: int = param(1, "timed repetitions of each multi-agent jitted call (after the "
                          "compiling one)", check=ge(1))

  def check(self) -> None:
    if not self.algorithms and not self.ma_schedulers:
      raise ConfigError("algorithms", "and ma_schedulers are both empty: nothing to time")


def run(cfg: Config, ctx) -> dict:
  plt = io.pyplot()
  from bandits.erasure import numpy_ref, sim  # pylint: disable=import-outside-toplevel

  inst = sim.make_instances([dict(n_arms=cfg.n_arms, eps=cfg.eps, horizon=cfg.horizon)],
                            cfg.n_seeds, ctx.seed, means_kind="random_gap")
  means = inst.means[0]
  table = bench.Table("algorithm", "method", "runs", "rounds", "seconds", "rounds_per_s",
                      "mean_regret_per_round")
  headline: dict[str, float] = {"n_seeds": cfg.n_seeds, "T": cfg.horizon, "K": cfg.n_arms,
                                "eps": cfg.eps, "devices": len(jax.local_devices())}

  def record(name, method, runs, rounds, seconds, regret):
    table.add(algorithm=name, method=method, runs=runs, rounds=rounds, seconds=seconds,
              rounds_per_s=runs * rounds / seconds,
              mean_regret_per_round=float(np.mean(regret)) / rounds)
    return runs * rounds / seconds

  ratios_loop, ratios_vec = [], []
  for name in cfg.algorithms:
    feedback = name == "fb_sae"
    ctx.say(f"[bench_erasure] {name}: jax, {cfg.n_seeds} runs x {cfg.horizon} rounds")
    compile_and_run, best, res = bench.timed(
        lambda i, name=name, feedback=feedback: sim.run(
            name, inst, jax.random.key(ctx.seed + i), feedback=feedback, n_points=cfg.n_points),
        cfg.repeats)
    jax_rate = record(name, "jax", cfg.n_seeds, cfg.horizon, best, np.asarray(res.final_regret))
    headline[f"{name}_jax_compile_s"] = compile_and_run - best
    best_of = lambda fn: bench.best_of(fn, cfg.baseline_repeats)

    ctx.say(f"[bench_erasure] {name}: numpy per-round loop, {cfg.loop_seeds} x {cfg.loop_horizon}")
    rng = np.random.default_rng(ctx.seed)
    seconds, reg = best_of(lambda: [
        numpy_ref.phased_loop_numpy(name, means[i % cfg.n_seeds], cfg.eps, cfg.loop_horizon, rng)
        for i in range(cfg.loop_seeds)])
    loop_rate = record(name, "loop", cfg.loop_seeds, cfg.loop_horizon, seconds, reg)

    def list_loop():
      reg = []
      for i in range(cfg.loop_seeds):
        erase_u, noise = rng.random(cfg.loop_horizon), rng.standard_normal(cfg.loop_horizon)
        reg.append(numpy_ref.phased_loop(name, means[i % cfg.n_seeds], cfg.eps, cfg.loop_horizon,
                                         erase_u=erase_u, noise=noise)[0])
      return reg
    seconds, reg = best_of(list_loop)
    list_rate = record(name, "python_list_loop", cfg.loop_seeds, cfg.loop_horizon, seconds, reg)

    ctx.say(f"[bench_erasure] {name}: numpy vectorized, {cfg.n_seeds} x {cfg.vectorized_horizon}")
    seconds, reg = best_of(lambda: numpy_ref.phased_vectorized(name, means, cfg.eps,
                                                               cfg.vectorized_horizon, rng))
    vec_rate = record(name, "numpy_vectorized", cfg.n_seeds, cfg.vectorized_horizon, seconds, reg)

    headline[f"{name}_rounds_per_s"] = jax_rate
    headline[f"{name}_speedup_vs_loop"] = jax_rate / loop_rate
    headline[f"{name}_speedup_vs_python_list_loop"] = jax_rate / list_rate
    headline[f"{name}_speedup_vs_numpy_vectorized"] = jax_rate / vec_rate
    ratios_loop.append(jax_rate / loop_rate)
    ratios_vec.append(jax_rate / vec_rate)
    ctx.log({f"{name}/rounds_per_s": jax_rate})

  if ratios_loop:
    headline["speedup_vs_loop"] = min(ratios_loop)
    headline["speedup_vs_numpy_vectorized"] = min(ratios_vec)
  if cfg.ma_schedulers:
    headline.update(multi_agent(cfg, ctx, record))
  ctx.write_csv("metrics.csv", table.columns)
  rows = table.columns

  if not cfg.algorithms:
    return headline
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  methods = ("loop", "python_list_loop", "numpy_vectorized", "jax")
  width = 0.8 / len(cfg.algorithms)
  for j, name in enumerate(cfg.algorithms):
    rates = [next(r for a, m, r in zip(rows["algorithm"], rows["method"], rows["rounds_per_s"])
                  if a == name and m == method) for method in methods]
    ax.bar(np.arange(len(methods)) + j * width, rates, width, label=name)
  ax.set_xticks(np.arange(len(methods)) + width * (len(cfg.algorithms) - 1) / 2, methods)
  ax.set(yscale="log", ylabel="rounds per second (one seed's round)",
         title=f"K={cfg.n_arms}, eps={cfg.eps}, {cfg.n_seeds} seeds x T={cfg.horizon}, "
               f"{len(jax.local_devices())} CPU device(s)")
  ax.legend()
  ctx.save_figure(fig, "throughput.png")
  return headline


def multi_agent(cfg: Config, ctx, record) -> dict[str, float]:
  """The multi-agent case (see the module docstring); ``record`` adds a row to the table
  (rounds counted as agent-rounds) and returns the throughput."""
  from bandits.erasure import numpy_ma, numpy_ma_vectorized, sim  # pylint: disable=import-outside-toplevel
  m, k = cfg.ma_agents, cfg.n_arms
  rng = np.random.default_rng(ctx.seed)
  eps = np.sort(rng.uniform(0.1, 0.5, m))
  inst = sim.make_instances([dict(n_arms=k, eps=list(eps), horizon=cfg.ma_horizon)],
                            cfg.ma_seeds, ctx.seed, means_kind="random_gap", initial_arm="random")
  means, initial = inst.means[0], inst.initial_arm[0]
  out: dict[str, float] = {"ma_agents": m, "ma_seeds": cfg.ma_seeds, "ma_T": cfg.ma_horizon}
  ratios_loop, ratios_vec = [], []
  for name in cfg.ma_schedulers:
    ctx.say(f"[bench_erasure] {name}: jax, {cfg.ma_seeds} runs x {cfg.ma_horizon} rounds x {m} "
            "agents")
    compile_and_run, best, res = bench.timed(
        lambda i, name=name: sim.run(name, inst, jax.random.key(ctx.seed + i), feedback=True,
                                     n_points=min(cfg.n_points, cfg.ma_horizon)), cfg.ma_repeats)
    jax_rate = record(name, "jax", cfg.ma_seeds, cfg.ma_horizon * m, best,
                      np.asarray(res.final_regret))
    out[f"{name}_jax_compile_s"] = compile_and_run - best

    ctx.say(f"[bench_erasure] {name}: per-round port, {cfg.ma_loop_seeds} x {cfg.ma_loop_horizon}")
    t = cfg.ma_loop_horizon

    def loop():
      reg = []
      for i in range(cfg.ma_loop_seeds):
        draws = dict(erase_u=rng.random((t, m)),
                     reward_v=np.maximum(2 * rng.random((t, m)) - 1, np.nextafter(-1.0, 0.0)),
                     algo_u=rng.random((t, max(k, m), 3)))
        reg.append(numpy_ma.run_port(name, means[i % cfg.ma_seeds], eps, t,
                                     initial_arm=initial[i % cfg.ma_seeds], **draws).regret[-1])
      return reg
    seconds, reg = bench.best_of(loop, cfg.baseline_repeats)
    loop_rate = record(name, "loop", cfg.ma_loop_seeds, t * m, seconds, reg)

    ctx.say(f"[bench_erasure] {name}: numpy vectorized, {cfg.ma_seeds} x "
            f"{cfg.ma_vectorized_horizon}")
    seconds, reg = bench.best_of(lambda name=name: numpy_ma_vectorized.run_vectorized_rng(
        name, means, eps, cfg.ma_vectorized_horizon, rng, initial_arm=initial),
        cfg.baseline_repeats)
    vec_rate = record(name, "numpy_vectorized", cfg.ma_seeds, cfg.ma_vectorized_horizon * m,
                      seconds, reg)
    out[f"{name}_agent_rounds_per_s"] = jax_rate
    out[f"{name}_speedup_vs_loop"] = jax_rate / loop_rate
    out[f"{name}_speedup_vs_numpy_vectorized"] = jax_rate / vec_rate
    out[f"regret_{name}"] = float(np.mean(res.final_regret))
    ratios_loop.append(jax_rate / loop_rate)
    ratios_vec.append(jax_rate / vec_rate)
  out["speedup_vs_loop_multi_agent"] = min(ratios_loop)
  out["speedup_vs_numpy_vectorized_multi_agent"] = min(ratios_vec)
  return out
