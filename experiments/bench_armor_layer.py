"""ARMOR's two schemes on one layer: proxy loss versus wall time, in one process.

For each layer shape: a layer and calibration inputs with the statistics of
trained LLM layers (:mod:`armor_jax.solver.synthetic`; a real checkpoint is not
needed for a timing), NoWag-P's loss, then

* ``official``: the authors' scheme (joint Adam at lr ``official.lr``, one
  sampled 6-way group update per block pair per iteration, early stop after
  ``official.patience`` flat iterations) for ``official.iters`` iterations
  (authors' config: 3000 at block size 32), timed in chunks of ``chunk``
  iterations;
* ``exact``: our monotone block minimization for ``exact.iters`` iterations,
  timed per iteration.

Each scheme's settings are a node with the keys of
:class:`armor_jax.solver.armor.ArmorConfig` (``official.block_size``,
``exact.core_steps``, ...).

Every call is compiled before the clock starts. The target is the official
scheme's best loss after its whole budget; ``speedup_to_target_<shape>`` is
the official scheme's time to reach it over the exact scheme's (if the exact
scheme never reaches it within its budget the key is 0 and the log says so).

Headline, per shape (e.g. ``576x1536``): ``speedup_to_target_<shape>``,
``loss_nowag_p_<shape>``, ``loss_armor_official_<shape>``,
``loss_armor_exact_<shape>`` (normalized proxy losses at the end of each
budget), ``seconds_official_<shape>``, ``seconds_exact_to_target_<shape>``;
and ``speedup_to_target_min`` over the shapes.

    python -m experiments.main experiment=bench_armor_layer            # ~15 min on 2 cores
    python -m experiments.main experiment=bench_armor_layer shapes=[576x1536] official.iters=500
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import numpy as np

from armor_jax.solver.armor import ArmorConfig
from experiments import io
from experiments.schema import Check, ConfigError, ge, param

_AUTHORS_BLOCK = 32   # the block size of the authors' configs
_SHAPE = re.compile(r"^(\d+)x(\d+)$")


def _shape(s: str) -> tuple[int, int]:
  d_out, d_in = (int(v) for v in _SHAPE.match(s).groups())
  return d_out, d_in


@dataclasses.dataclass(frozen=True)
class Config:
  shapes: tuple[str, ...] = param(
      ("576x1536", "2048x2048"), "layer shapes d_outxd_in (d_in a multiple of 4)",
      check=Check(lambda v: len(v) > 0 and all(
          isinstance(s, str) and _SHAPE.match(s) and int(s.split("x")[1]) % 4 == 0 and
          min(_shape(s)) >= 4 for s in v),
                  "a non-empty list of 'DOUTxDIN' strings with d_in a multiple of 4"))
  n_tokens: int = param(4096, "calibration tokens (synthetic inputs)", check=ge(16))
  official: ArmorConfig = param(
      ArmorConfig(block_size=_AUTHORS_BLOCK, scheme="official", iters=3000),
      "the authors' scheme and budget (their config: block 32, 3000 iterations, Adam lr 1e-4, "
      "patience 100)")
  exact: ArmorConfig = param(ArmorConfig(block_size=_AUTHORS_BLOCK, iters=200),
                             "our exact scheme and its budget")
  chunk: int = param(100, "official iterations per timed call (time resolution)", check=ge(1))

  def check(self):
    for name in ("official", "exact"):
      if getattr(self, name).scheme != name:
        raise ConfigError(f"{name}.scheme", f"must be {name} (the node is that scheme's run)")
      if getattr(self, name).iters < 1:
        raise ConfigError(f"{name}.iters", "must be an integer >= 1")


def _timed_run(prob, cfg, state, n_total, chunk, say):
  """Runs ``n_total`` iterations in calls of ``chunk``; returns (seconds, best_loss) per call."""
  from armor_jax.solver import armor  # pylint: disable=import-outside-toplevel
  # compile every call shape first (the clock measures the work, not XLA)
  for n in {min(chunk, n_total), n_total % chunk or chunk}:
    jax.block_until_ready(armor.run_iterations(prob, cfg, jax.tree.map(jax.numpy.copy, state), n))
  times, best, iters = [0.0], [float(state.best_loss)], [0]
  elapsed, done = 0.0, 0
  while done < n_total and not bool(state.done):
    n = min(chunk, n_total - done)
    t0 = time.perf_counter()
    state, losses = armor.run_iterations(prob, cfg, state, n)
    jax.block_until_ready(state)
    elapsed += time.perf_counter() - t0
    done += n
    times.append(elapsed)
    best.append(float(state.best_loss))
    iters.append(done)
    say(done, elapsed, best[-1])
  return np.asarray(times), np.asarray(best), np.asarray(iters), state


def _time_to(times, best, target):
  hit = np.nonzero(best <= target * (1 + 1e-7))[0]
  return float(times[hit[0]]) if hit.size else float("nan")


def run(cfg: Config, ctx) -> dict:
  from armor_jax.solver import armor, calibration, synthetic  # pylint: disable=import-outside-toplevel
  plt = io.pyplot()
  key = jax.random.PRNGKey(ctx.seed)
  headline: dict[str, float] = {}
  rows = {k: [] for k in ("shape", "scheme", "iteration", "seconds", "best_loss")}
  fig, axes = plt.subplots(1, len(cfg.shapes), figsize=(5.5 * len(cfg.shapes), 4), squeeze=False)
  for ax, shape in zip(axes[0], cfg.shapes):
    d_out, d_in = _shape(shape)
    key, k_layer, k_run = jax.random.split(key, 3)
    w, x = synthetic.layer_and_inputs(k_layer, d_out, d_in, cfg.n_tokens)
    stats = calibration.from_activations(x)
    curves = {}
    for scheme in ("official", "exact"):
      acfg = getattr(cfg, scheme)
      prob = armor.make_problem(w, stats.h, acfg.block_size)
      ctx.say(f"[bench_armor_layer] {shape} {scheme}: blocks A {prob.b_a}, B {prob.b_b}")
      n_total, chunk = acfg.iters, (cfg.chunk if scheme == "official" else 1)
      # distinct buffers: the state is donated to each call, and x, best and values share them
      state = jax.tree.map(jax.numpy.copy, armor.init_state(prob, acfg, k_run))

      def say(done, elapsed, best, scheme=scheme, n_total=n_total):
        ctx.say(f"  {shape} {scheme}: {done}/{n_total} iterations, {elapsed:.1f} s, "
                f"loss {best:.6f}")

      times, best, iters, _ = _timed_run(prob, acfg, state, n_total, chunk, say)
      curves[scheme] = (times, best)
      rows["shape"] += [shape] * len(times)
      rows["scheme"] += [scheme] * len(times)
      rows["iteration"] += iters.tolist()
      rows["seconds"] += times.tolist()
      rows["best_loss"] += best.tolist()
    nowag = float(curves["exact"][1][0])
    target = float(curves["official"][1][-1])
    t_off = _time_to(*curves["official"], target)
    t_exact = _time_to(*curves["exact"], target)
    if np.isnan(t_exact):
      ctx.say(f"  {shape}: the exact scheme did not reach the official loss {target:.6f} "
              f"within {cfg.exact.iters} iterations")
    headline.update({
        f"speedup_to_target_{shape}": 0.0 if np.isnan(t_exact) else t_off / max(t_exact, 1e-9),
        f"loss_nowag_p_{shape}": nowag,
        f"loss_armor_official_{shape}": target,
        f"loss_armor_exact_{shape}": float(curves["exact"][1][-1]),
        f"seconds_official_{shape}": t_off,
        f"seconds_exact_to_target_{shape}": t_exact,
    })
    for scheme, (times, best) in curves.items():
      ax.plot(np.maximum(times, 1e-3), best, label=f"ARMOR {scheme}", marker="." if
              scheme == "exact" else None)
    ax.axhline(nowag, color="gray", ls="--", label="NoWag-P")
    ax.axhline(target, color="C0", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s, 2 CPU cores)")
    ax.set_ylabel("normalized proxy loss (best so far)")
    blocks = sorted({cfg.official.block_size, cfg.exact.block_size})
    ax.set_title(f"{shape}, block {' / '.join(map(str, blocks))}")
    ax.legend()
  headline["speedup_to_target_min"] = min(v for k, v in headline.items()
                                          if k.startswith("speedup_to_target_"))
  ctx.write_csv("loss_vs_time.csv", rows)
  ctx.save_figure(fig, "loss_vs_time.png")
  ctx.info["devices"] = [str(d) for d in jax.devices()]
  return headline
