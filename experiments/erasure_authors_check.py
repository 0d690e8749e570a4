"""Once-off check of the float64 scheduler ports against the authors' own code.

``python -m experiments.erasure_authors_check --authors DIR [--episodes N] [--horizon T] [--out DIR]``

DIR is a checkout of github mervekarakas/mamab_erasures (its ``models``
package is imported from there; nothing of it is copied). Two checks of each
scheduler of :mod:`bandits.erasure.numpy_ma` against the class it ports:

(a) exactness: the class and the port get the same randomness. The erasures
    reach the class as its ``erasure_seq`` (bits ``erase_u < eps``) or, for the
    classes that draw erasures themselves (L-SAE, Vanilla SAE), through a
    scripted generator passed as its ``rng``; that generator also hands the
    class the port's reward noise and the port's random choices (the agent and
    round of each call are read from the caller's frame), so every scheduler,
    random ones included, must give the identical per-round regret of every
    agent, with noise variance 0 and 1. Vanilla SAE is run both as the port
    (credits the requested arm) and with ``credit_played`` (as the class).
(b) distribution: on fixed instances, N episodes of the class with its own
    numpy generator and N of the port with numpy draws; Welch t-test of the
    final regret per (scheduler, instance) at a Bonferroni-corrected 5% level,
    N from a pilot's variance so that a 10% difference in mean regret is
    detected with power 0.8, sized again on all episodes so far (and topped up)
    while the variance was underestimated (capped by ``--episodes``).

Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time

import numpy as np
from scipy import stats

from bandits.erasure import numpy_ma as port

# registry name -> (module, class, feedback mode, name of the class's round counter,
#                   name of the agent index where the class draws a choice)
CLASSES = {
    "tpg": ("models.batch_tpg", "BatchTPG", "beacon", "t", "iA"),
    "tpg_guarded": ("models.batch_tpg_new", "BatchTPGNew", "beacon", "t", "iA"),
    "sp2": ("models.batch_sp2", "BatchSP2", "none", "counter", "agent_idx"),
    "sp2_fb": ("models.batch_sp2_erasure", "BatchSP2Erasure", "beacon", "t", "m"),
    "rrr": ("models.batch_sp2_rrr", "BatchSP2RRR", "beacon", "t", "m"),
    "sgreedy": ("models.batch_sgreedy", "BatchSGreedy", "beacon", "t", None),
    "lsae_hor": ("models.lsae_horizontal", "LSAE_ma_hor", "none", "counter", "j"),
    "lsae_ver": ("models.lsae_vertical", "LSAE_ma_ver", "none", "counter", "j"),
    "vanilla_sae": ("models.vanilla_sae", "Vanilla_SAE_ma", "none", "counter", "i"),
}
SEQ_FREE = ("lsae_hor", "lsae_ver", "vanilla_sae")  # classes that ignore erasure_seq

MEANS_UP = np.array([0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.9])
INSTANCES = {
    "K10_M4_best_last": (MEANS_UP, np.array([0.1, 0.3, 0.5, 0.7]), np.array([0, 3, 6, 9])),
    "K10_M4_best_first": (MEANS_UP[::-1].copy(), np.array([0.1, 0.3, 0.5, 0.7]),
                          np.array([0, 3, 6, 9])),
    "K10_M20_best_last": (MEANS_UP, np.round(np.linspace(0.0, 0.8, 20), 3),
                          (np.arange(20) * 3) % 10),
}


def load_authors(path: str) -> dict:
  """The authors' classes by registry name, imported from the checkout at ``path``."""
  if not os.path.isfile(os.path.join(path, "models", "base.py")):
    raise SystemExit(f"no mamab_erasures checkout at {path!r} (models/base.py missing)")
  sys.path.insert(0, os.path.abspath(path))
  base = importlib.import_module("models.base")
  out = {name: getattr(importlib.import_module(mod), cls)
         for name, (mod, cls, *_rest) in CLASSES.items()}
  out["_repetitions"] = base.calculate_repetitions
  return out


class ScriptedRng:
  """A stand-in for the class's numpy Generator that returns the port's draws.

  Each call reads the round (and the agent, where the class draws per agent)
  from the calling frame's locals, so the class sees exactly the noise, the
  erasures and the random choices that the port sees at that round.
  """

  def __init__(self, name, noise, erase_u, algo_u):
    self.name = name
    self.clock, self.agent = CLASSES[name][3], CLASSES[name][4]
    self.noise, self.erase_u, self.algo_u = noise, erase_u, algo_u
    self.horizon = noise.shape[0]
    self.tie_mismatch = 0  # sgreedy rounds whose argpartition chose another set than the port

  def _row(self, t):
    return min(t, self.horizon - 1)

  def normal(self, loc=0.0, scale=1.0, size=None):
    f = sys._getframe(1).f_locals
    t = f[self.clock]
    z = self.noise[t, f["j"]:f["j"] + 1] if self.name in ("lsae_hor", "lsae_ver") else self.noise[t]
    z = np.array(z)
    return z if (loc == 0.0 and scale == 1.0) else loc + scale * z

  def random(self, size=None):
    f = sys._getframe(1).f_locals
    t = f[self.clock]
    if size is None:
      return float(self.erase_u[t, f["j"]])
    return np.array(self.erase_u[t])

  def choice(self, a, size=None):
    f = sys._getframe(1).f_locals
    arms = [int(x) for x in a]
    if size is None:
      return port.choice(arms, self.algo_u[f[self.clock], f[self.agent], 0])
    # the idle tail of an offline schedule (SP2, Vanilla SAE), called from schedule()/pull()
    t0 = sys._getframe(2).f_locals["counter"]
    ctr = f["ctr"] if "ctr" in f else f["ctr_"]
    agent = f[self.agent]
    return np.array([port.choice(arms, self.algo_u[self._row(t0 + ctr + r), agent, 0])
                     for r in range(size)])

  def shuffle(self, x):
    if self.name == "sp2":
      t0 = sys._getframe(2).f_locals["counter"]
      x[:] = x[port.permutation(self.algo_u[self._row(t0), x, 1])]
      return
    f = sys._getframe(1).f_locals  # sgreedy: x is the list of agents
    t, m = f["t"], len(x)
    need, counts, chosen = f["arms_needed"], f["pull_counts_batch"], list(f["chosen_arms"])
    u = self.algo_u[t]
    mine = (sorted(need, key=lambda a: (counts[a], u[a, 1]))[:m] if len(need) > m else list(need))
    if sorted(mine) != sorted(chosen):
      self.tie_mismatch += 1
      chosen = mine
    perm = port.permutation(u[:m, 2])
    if len(chosen) < m:
      x[:] = [int(a) for a in perm]
      return
    arm_of = {int(agent): mine[i] for i, agent in enumerate(perm)}
    agent_of = {arm: agent for agent, arm in arm_of.items()}
    x[:] = [agent_of[int(a)] for a in chosen]

  def permutation(self, n):
    f = sys._getframe(1).f_locals  # sgreedy
    need, counts, u = f["arms_needed"], f["pull_counts_batch"], self.algo_u[f["t"]]
    return np.array(sorted(range(n), key=lambda i: (counts[need[i]], u[need[i], 1])))

  def integers(self, *args, **kwargs):
    raise AssertionError("the class drew an integer (an erased agent with no arm?)")


def draws(seed, horizon, m, k):
  """(erase_u, reward_v, algo_u) of one port episode from numpy."""
  rng = np.random.default_rng(seed)
  erase_u = rng.random((horizon, m))
  reward_v = np.maximum(2.0 * rng.random((horizon, m)) - 1.0, np.nextafter(-1.0, 0.0))
  algo_u = rng.random((horizon, max(k, m), 3))
  return erase_u, reward_v, algo_u


def run_class(cls, name, means, eps, horizon, initial, var, rng, alphas, erasure_seq=None):
  bandit = cls(len(means), len(eps), horizon, alphas, var=var, c=1, mu=list(means),
               epsilon=list(eps), base=list(initial), feedback_mode=CLASSES[name][2], rng=rng)
  bandit.reset(mu=list(means), base_actions=np.array(initial), erasure_seq=erasure_seq)
  bandit.run()
  return bandit


def run_port(name, means, eps, horizon, initial, erase_u, reward_v, algo_u, noise_std,
             eps_knots=None, credit_played=False):
  kw = dict(erase_u=erase_u, reward_v=reward_v, algo_u=algo_u, initial_arm=initial,
            noise_std=noise_std, eps_knots=eps_knots)
  if credit_played:
    ch = port.make_channel(name, means, eps, horizon, **kw)
    port.vanilla_sae(ch, credit_played=True)
    return port.result(ch)
  return port.run_port(name, means, eps, horizon, **kw)


def exact_episode(classes, name, inst, horizon, seed, var, credit_played=False, drift=False):
  """Whether class and port give the identical per-round regret (and tx/fb counters) of one
  episode on the same draws; returns (identical, first differing round or -1, note)."""
  means, eps, initial = inst
  k, m = len(means), len(eps)
  erase_u, reward_v, algo_u = draws(seed, horizon, m, k)
  knots = None
  eps_t = np.broadcast_to(eps, (horizon, m))
  if drift:  # the channel drifts from eps to 0.9 eps + 0.05 (the learner knows only eps)
    knots = (np.array([0.0, horizon - 1.0]), np.stack([eps, 0.9 * eps + 0.05]))
    eps_t = port.channel_eps(eps, horizon, knots)
  bits = (erase_u < eps_t).astype(int)
  noise = port.gaussian_noise(reward_v)
  rng = ScriptedRng(name, noise, erase_u, algo_u)
  alphas = classes["_repetitions"](list(eps), horizon, m=m)
  bandit = run_class(classes[name], name, means, eps, horizon, initial, var, rng, alphas,
                     erasure_seq=None if name in SEQ_FREE else bits)
  res = run_port(name, means, eps, horizon, initial, erase_u, reward_v, algo_u, math.sqrt(var),
                 eps_knots=knots, credit_played=credit_played)
  gaps = means.max() - means
  ours = gaps[res.played]
  same = ours == bandit.regrets
  if CLASSES[name][2] != "none":
    same &= (res.tx == bandit.tx_over_time)[:, None] & (res.fb == bandit.fb_over_time)[:, None]
  bad = np.flatnonzero(~same.all(axis=1))
  note = f"sgreedy tie mismatches {rng.tie_mismatch}" if rng.tie_mismatch else ""
  return bad.size == 0, int(bad[0]) if bad.size else -1, note


def final_regrets(classes, name, inst, horizon, n, seed0, which, var):
  means, eps, initial = inst
  k, m = len(means), len(eps)
  gaps = means.max() - means
  out = []
  for e in range(n):
    seed = seed0 + e
    if which == "authors":
      alphas = classes["_repetitions"](list(eps), horizon, m=m)
      b = run_class(classes[name], name, means, eps, horizon, initial, var,
                    np.random.default_rng([seed, 1]), alphas)
      out.append(float(b.regrets.sum()))
    else:
      erase_u, reward_v, algo_u = draws([seed, 2], horizon, m, k)
      res = port.run_port(name, means, eps, horizon, erase_u=erase_u, reward_v=reward_v,
                          algo_u=algo_u, initial_arm=initial, noise_std=math.sqrt(var))
      out.append(float(gaps[res.played].sum()))
  return np.array(out)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--authors", required=True, help="checkout of mervekarakas/mamab_erasures")
  ap.add_argument("--episodes", type=int, default=150, help="cap on N per side in (b)")
  ap.add_argument("--pilot", type=int, default=15, help="pilot episodes per side in (b)")
  ap.add_argument("--horizon", type=int, default=5000)
  ap.add_argument("--exact-seeds", type=int, default=3)
  ap.add_argument("--var", type=float, default=0.09,
                  help="reward noise variance in (b) (0.09: regret CV ~0.1, so N stays small)")
  ap.add_argument("--instances", default="K10_M4_best_last,K10_M4_best_first,K10_M20_best_last")
  ap.add_argument("--out", default="results/erasure_authors_check")
  args = ap.parse_args(argv)
  classes = load_authors(args.authors)
  os.makedirs(args.out, exist_ok=True)
  insts = {k: INSTANCES[k] for k in args.instances.split(",")}
  started = time.time()

  exact = {}
  for name in CLASSES:
    variants = [("", False)] + ([("credit_played", True)] if name == "vanilla_sae" else [])
    for tag, cp in variants:
      key = name + (f"[{tag}]" if tag else "")
      rows = []
      for iname, inst in insts.items():
        for var in (0.0, 1.0):
          for s in range(args.exact_seeds):
            ok, first, note = exact_episode(classes, name, inst, args.horizon, 1000 + s, var, cp)
            rows.append({"instance": iname, "var": var, "seed": 1000 + s, "identical": ok,
                         "first_diff_round": first, "note": note})
        if name not in SEQ_FREE:
          ok, first, note = exact_episode(classes, name, inst, args.horizon, 2000, 1.0, cp,
                                          drift=True)
          rows.append({"instance": iname + "+drift", "var": 1.0, "seed": 2000, "identical": ok,
                       "first_diff_round": first, "note": note})
      exact[key] = rows
      n_ok = sum(r["identical"] for r in rows)
      print(f"(a) {key:24s} identical {n_ok}/{len(rows)}  [{time.time() - started:.0f}s]",
            flush=True)

  # (b)
  n_tests = len(CLASSES) * len(insts)
  alpha = 0.05 / n_tests
  z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(0.8)
  dist = []
  for iname, inst in insts.items():
    for name in CLASSES:
      pa = final_regrets(classes, name, inst, args.horizon, args.pilot, 10_000, "authors", args.var)
      pp = final_regrets(classes, name, inst, args.horizon, args.pilot, 10_000, "port", args.var)
      sd = math.sqrt((pa.var(ddof=1) + pp.var(ddof=1)) / 2)
      delta = 0.1 * (pa.mean() + pp.mean()) / 2
      n_need = math.ceil(2 * (z * sd / delta) ** 2) if delta > 0 else args.pilot
      n = int(min(max(n_need, args.pilot), args.episodes))
      while True:
        if n > len(pa):  # top up both sides to n episodes
          extra = n - len(pa)
          pa = np.concatenate([pa, final_regrets(classes, name, inst, args.horizon, extra,
                                                 10_000 + len(pa), "authors", args.var)])
          pp = np.concatenate([pp, final_regrets(classes, name, inst, args.horizon, extra,
                                                 10_000 + len(pp), "port", args.var)])
        se = math.sqrt(pa.var(ddof=1) / n + pp.var(ddof=1) / n)
        # a second stage when the pilot underestimated the variance: size N again on all
        # the episodes so far, until a 10% difference is detectable or the cap is reached
        if z * se <= delta or n >= args.episodes:
          break
        sd = math.sqrt((pa.var(ddof=1) + pp.var(ddof=1)) / 2)
        n = int(min(max(math.ceil(2 * (z * sd / delta) ** 2), n + 10), args.episodes))
      test = stats.ttest_ind(pa, pp, equal_var=False)
      row = {"scheduler": name, "instance": iname, "n_needed": n_need, "n": n,
             "authors_mean": float(pa.mean()), "authors_sd": float(pa.std(ddof=1)),
             "port_mean": float(pp.mean()), "port_sd": float(pp.std(ddof=1)),
             "rel_diff": float((pp.mean() - pa.mean()) / pa.mean()),
             "detectable_rel_diff": float(z * se / ((pa.mean() + pp.mean()) / 2)),
             "p_value": float(test.pvalue), "pass": bool(test.pvalue >= alpha)}
      dist.append(row)
      print(f"(b) {iname:18s} {name:12s} N={n:4d} (needed {n_need}) authors {pa.mean():9.1f} "
            f"port {pp.mean():9.1f} diff {100 * row['rel_diff']:+6.2f}% p={test.pvalue:.3g} "
            f"[{time.time() - started:.0f}s]", flush=True)

  out = {"horizon": args.horizon, "var_b": args.var, "instances": {k: {"means": v[0].tolist(), "eps": v[1].tolist(),
                                                     "initial_arm": v[2].tolist()}
                                                 for k, v in insts.items()},
         "exact": exact, "distribution": dist, "bonferroni_alpha": alpha,
         "seconds": time.time() - started}
  with open(os.path.join(args.out, "results.json"), "w") as fh:
    json.dump(out, fh, indent=1)
  lines = [f"T = {args.horizon}; (a) identical episodes (per-round regret of every agent, and "
           "tx/fb for the feedback schedulers) / episodes; (b) Welch t-test, Bonferroni "
           f"alpha = {alpha:.2g}, noise variance {args.var}; N per side, 'detectable' = the relative "
           "difference detected with power 0.8 at that N", "",
           "| scheduler | (a) identical | instance | N | authors mean (sd) | port mean (sd) "
           "| diff | detectable | p | (b) |", "|---|---|---|---|---|---|---|---|---|---|"]
  for key, rows in exact.items():
    base = key.split("[")[0]
    cell = f"{sum(r['identical'] for r in rows)}/{len(rows)}"
    for row in [d for d in dist if d["scheduler"] == base and "[" not in key]:
      lines.append(f"| {key} | {cell} | {row['instance']} | {row['n']} | "
                   f"{row['authors_mean']:.1f} ({row['authors_sd']:.1f}) | "
                   f"{row['port_mean']:.1f} ({row['port_sd']:.1f}) | {100 * row['rel_diff']:+.2f}% | "
                   f"{100 * row['detectable_rel_diff']:.1f}% | {row['p_value']:.3g} | "
                   f"{'pass' if row['pass'] else 'FAIL'} |")
    if "[" in key:
      lines.append(f"| {key} | {cell} | | | | | | | | |")
  with open(os.path.join(args.out, "results.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
