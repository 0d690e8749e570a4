"""ARMOR's layer solver and the 2:4 baselines against float64 numpy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from armor_jax.solver import armor, baselines, blockdiag, calibration, layer, sparsity, synthetic

# ---------------------------------------------------------------------------------------------
# numpy float64 references (written independently of the JAX code)


def np_topk_mask(score):
  """Keep the 2 largest of every group of 4 (stable: lower column wins ties)."""
  g = score.reshape(score.shape[0], -1, 4)
  order = np.argsort(-g, axis=-1, kind="stable")
  mask = np.zeros(g.shape, bool)
  np.put_along_axis(mask, order[..., :2], True, axis=-1)
  return mask.reshape(score.shape)


def np_normalize(w):
  r1 = np.linalg.norm(w, axis=0)
  r1[r1 == 0] = 1
  w1 = w / r1
  r2 = np.linalg.norm(w1, axis=1)
  r2[r2 == 0] = 1
  return w1 / r2[:, None], r2, r1


def np_sparsegpt(w, xtx_mean, damp=0.01):
  """Column-by-column SparseGPT 2:4 (no lazy blocks), float64."""
  w = w.astype(np.float64).copy()
  hess = 2 * xtx_mean.astype(np.float64)
  dead = np.diag(hess) == 0
  hess[dead, dead] = 1
  w[:, dead] = 0
  hess += damp * np.mean(np.diag(hess)) * np.eye(len(hess))
  u = np.linalg.cholesky(np.linalg.inv(hess)).T
  d_out, d_in = w.shape
  mask = np.zeros_like(w, bool)
  for c in range(d_in):
    if c % 4 == 0:
      tmp = w[:, c:c + 4] ** 2 / np.diag(u)[c:c + 4] ** 2
      mask[:, c:c + 4] = np_topk_mask(tmp)
    q = np.where(mask[:, c], w[:, c], 0)
    err = (w[:, c] - q) / u[c, c]
    w[:, c:] -= np.outer(err, u[c, c:])
    w[:, c] = q
  return w, mask


def np_proxy(w_bar, h, approx):
  return np.sum((w_bar - approx) ** 2 * h) / np.sum(w_bar ** 2 * h)


@pytest.fixture(scope="module")
def small():
  w, x = synthetic.layer_and_inputs(jax.random.PRNGKey(1), 48, 64, 2048)
  stats = calibration.from_activations(x[:1024], full=True)
  return np.asarray(w), np.asarray(x), stats


# ---------------------------------------------------------------------------------------------
# statistics, masks, storage


def test_streaming_stats_match_numpy_and_reject_nan():
  x = np.random.default_rng(0).normal(size=(3, 300, 24)).astype(np.float32) * 3
  stats = calibration.init(24, full=True)
  for batch in x:                                      # streamed, uneven with from_activations
    stats = calibration.accumulate(stats, jnp.asarray(batch, jnp.bfloat16).astype(jnp.float32))
  ref = x.reshape(-1, 24).astype(np.float64)
  ref = np.asarray(jnp.asarray(ref, jnp.bfloat16).astype(jnp.float32), np.float64)
  np.testing.assert_allclose(stats.h, np.mean(ref ** 2, 0), rtol=1e-5)
  np.testing.assert_allclose(stats.second_moment, ref.T @ ref / len(ref), rtol=1e-4, atol=1e-4)
  again = calibration.from_activations(x.reshape(-1, 24), full=False, batch=128)
  np.testing.assert_allclose(again.h, np.mean(x.reshape(-1, 24).astype(np.float64) ** 2, 0),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="without the full"):
    _ = again.second_moment
  bad = x.reshape(-1, 24).copy()
  bad[17, 3] = np.nan
  bad[20, 1] = np.inf
  with pytest.raises(ValueError, match=r"2 NaN/Inf value\(s\) \(first at index \(17, 3\)\)"):
    calibration.from_activations(bad)


@pytest.mark.parametrize("jit", [False, True])
def test_mask_from_scores_matches_stable_topk_with_ties(jit):
  rng = np.random.default_rng(1)
  score = rng.integers(0, 3, size=(40, 64)).astype(np.float32)    # many ties
  f = jax.jit(sparsity.mask_from_scores) if jit else sparsity.mask_from_scores
  mask = np.asarray(f(jnp.asarray(score)))
  np.testing.assert_array_equal(mask, np_topk_mask(score))
  assert sparsity.is_24(mask)


def test_validate_24_names_the_bad_group():
  mask = np_topk_mask(np.random.default_rng(2).normal(size=(4, 16)))
  sparsity.validate_24(mask)
  mask[2, 9] = ~mask[2, 9]
  with pytest.raises(ValueError, match=r"group \(2, 2\) \(columns 8\.\.11 of row \(2,\)\)"):
    sparsity.validate_24(mask)
  with pytest.raises(ValueError, match="multiple of 4"):
    sparsity.check_groupable(10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("d_in", [8, 12, 64])
def test_pack_unpack_round_trip_is_exact(dtype, d_in):
  rng = np.random.default_rng(d_in)
  dense = jnp.asarray(rng.normal(size=(7, d_in)), dtype)
  mask = np_topk_mask(rng.normal(size=(7, d_in)))
  packed = sparsity.pack(dense, jnp.asarray(mask))
  out, out_mask = sparsity.unpack(packed)
  np.testing.assert_array_equal(np.asarray(out_mask), mask)
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.where(mask, np.asarray(dense, np.float32), 0))
  assert packed.meta.dtype == jnp.uint8 and packed.meta.shape == (7, -(-d_in // 8))
  if d_in % 8 == 0:   # 1 bit of metadata per original weight
    assert packed.nbytes() == 7 * d_in * (jnp.dtype(dtype).itemsize / 2 + 1 / 8)


# ---------------------------------------------------------------------------------------------
# baselines


def test_magnitude_wanda_nowag_match_numpy(small):
  w, _, stats = small
  h = np.asarray(stats.h, np.float64)
  np.testing.assert_array_equal(baselines.magnitude(w).mask(), np_topk_mask(np.abs(w)))
  np.testing.assert_array_equal(baselines.wanda(w, stats).mask(),
                                np_topk_mask(np.abs(w) * np.sqrt(h)))
  w_bar, r2, r1 = np_normalize(w.astype(np.float64))
  nowag = baselines.nowag_p(w, stats)
  np.testing.assert_array_equal(nowag.mask(), np_topk_mask(w_bar ** 2 * h))
  np.testing.assert_allclose(nowag.dense(), np.where(nowag.mask(), w, 0), rtol=1e-5, atol=1e-8)


def test_sparsegpt_matches_column_by_column_numpy_in_float64(small):
  w, _, stats = small
  ref_w, ref_mask = np_sparsegpt(w, np.asarray(stats.second_moment))
  with jax.enable_x64(True):
    st64 = calibration.Stats(jnp.asarray(stats.count, jnp.float64),
                             jnp.asarray(stats.sum_sq, jnp.float64),
                             jnp.asarray(stats.xtx, jnp.float64))
    out = baselines.sparsegpt(jnp.asarray(w, jnp.float64), st64, blocksize=16)
    np.testing.assert_array_equal(np.asarray(out.mask()), ref_mask)
    np.testing.assert_allclose(np.asarray(out.dense()), ref_w, rtol=1e-9, atol=1e-12)
  out32 = baselines.sparsegpt(w, stats, blocksize=32)
  assert np.mean(np.asarray(out32.mask()) == ref_mask) > 0.99
  # the OBS updates pay off: lower output error than keeping W on the same mask
  plain = layer.from_mask(jnp.asarray(w), out32.mask(), "plain")
  assert layer.report(out32, w, stats.h, stats.second_moment)["output_error"] < layer.report(
      plain, w, stats.h, stats.second_moment)["output_error"]


def test_nowag_p_is_the_brute_force_proxy_optimum_at_identity_wrappers():
  rng = np.random.default_rng(3)
  w = rng.normal(size=(2, 8)) * rng.lognormal(size=(1, 8))
  h = rng.lognormal(size=8)
  w_bar, _, _ = np_normalize(w)
  # A = B = I: for a given mask the best values are W_bar's own, so enumerate the masks
  patterns = [np.isin(np.arange(4), p) for p in itertools.combinations(range(4), 2)]
  losses = []
  for combo in itertools.product(patterns, repeat=4):         # 2 rows x 2 groups
    mask = np.concatenate(combo).reshape(2, 8)
    losses.append(np_proxy(w_bar, h, w_bar * mask))
  best = min(losses)
  stats = calibration.Stats(jnp.ones(()), jnp.asarray(h, jnp.float32))
  nowag = baselines.nowag_p(jnp.asarray(w, jnp.float32), stats)
  got = layer.report(nowag, jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32))
  assert got["proxy_loss"] == pytest.approx(best, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# ARMOR


def _armor64(w, h, **kw):
  with jax.enable_x64(True):
    stats = calibration.Stats(jnp.ones((), jnp.float64), jnp.asarray(h, jnp.float64))
    out, curve = armor.armor(jnp.asarray(w, jnp.float64), stats, armor.ArmorConfig(**kw))
    rep = layer.report(out, jnp.asarray(w, jnp.float64), jnp.asarray(h, jnp.float64))
    return out, curve, rep


@pytest.mark.slow
def test_exact_steps_are_block_minimizations(small):
  w, _, stats = small
  h = np.asarray(stats.h, np.float64)
  with jax.enable_x64(True):
    prob = armor.make_problem(jnp.asarray(w, jnp.float64), jnp.asarray(h), 16)
    x = armor.nowag_start(prob)
    x = armor.greedy_core_steps(prob, armor.step_b(prob, armor.step_a(prob, x)), 3)
    y, core, b = np.asarray(prob.y), np.asarray(x.core), blockdiag.to_dense(x.b)
    a_dense = np.asarray(blockdiag.to_dense(armor.step_a(prob, x).a))
    # numpy: each A block by weighted least squares given S, B
    z = core @ np.asarray(b)
    for blk in range(3):
      rows = slice(16 * blk, 16 * blk + 16)
      sol = np.linalg.lstsq((z[rows] * np.sqrt(h)).T, (y[rows] * np.sqrt(h)).T, rcond=None)[0].T
      np.testing.assert_allclose(a_dense[rows, rows], sol, rtol=1e-6, atol=1e-8)
    # a core step's decrease equals the brute-force best single-group replacement per block pair
    l_before = float(armor.loss(prob, x))
    x1 = armor.greedy_core_steps(prob, x, 1)
    changed = np.argwhere(np.any(np.asarray(x1.core != x.core).reshape(48, 16, 4), -1))
    a_np, b_np = np.asarray(blockdiag.to_dense(x.a)), np.asarray(b)

    def loss_np(core_):
      return np_proxy(y, h, a_np @ core_ @ b_np)

    for (row, grp) in changed[:2]:
      best = np.inf
      for pair in itertools.combinations(range(4), 2):   # all 6 masks, least squares for the pair
        cols = 4 * grp + np.array(pair)
        base = np.array(core)
        base[row, 4 * grp:4 * grp + 4] = 0
        resid = (y - a_np @ base @ b_np) * np.sqrt(h)
        design = [(np.outer(a_np[:, row], b_np[c]) * np.sqrt(h)).ravel() for c in cols]
        v = np.linalg.lstsq(np.stack(design, 1), resid.ravel(), rcond=None)[0]
        cand = base.copy()
        cand[row, cols] = v
        best = min(best, loss_np(cand))
      one = np.array(core)
      one[row, 4 * grp:4 * grp + 4] = np.asarray(x1.core)[row, 4 * grp:4 * grp + 4]
      assert loss_np(one) == pytest.approx(best, rel=1e-7)
    assert float(armor.loss(prob, x1)) < l_before


def test_exact_scheme_is_monotone_and_beats_nowag(small):
  w, _, stats = small
  out, curve, rep = _armor64(w, stats.h, block_size=16, iters=12, core_steps=8)
  assert np.all(np.diff(curve) <= 1e-12 * curve[0])
  assert curve[-1] < 0.6 * curve[0]
  assert rep["proxy_loss"] == pytest.approx(curve[-1], rel=1e-9)
  sparsity.validate_24(np.asarray(out.mask()))
  assert out.overhead() == pytest.approx(16 * (48 + 64) / (48 * 64))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_returned_loss_never_above_nowag_even_when_adam_diverges(seed):
  w, x = synthetic.layer_and_inputs(jax.random.PRNGKey(10 + seed), 32, 32, 256)
  stats = calibration.from_activations(x)
  nowag = layer.report(baselines.nowag_p(w, stats), w, stats.h)["proxy_loss"]
  cfg = armor.ArmorConfig(block_size=8, scheme="official", iters=20, lr=0.3, patience=0)
  out, curve = armor.armor(w, stats, cfg, key=jax.random.PRNGKey(seed))
  assert curve[0] == pytest.approx(nowag, rel=1e-5)
  assert np.max(curve) > nowag                              # Adam at lr 0.3 does rise ...
  got = layer.report(out, w, stats.h)["proxy_loss"]
  assert got <= nowag * (1 + 1e-6) and got == pytest.approx(np.min(curve), rel=1e-4)  # ... kept


@pytest.mark.slow
def test_block_size_one_returns_nowag(small):
  w, _, stats = small
  nowag = layer.report(baselines.nowag_p(w, stats), w, stats.h)["proxy_loss"]
  out, curve, rep = _armor64(w, stats.h, block_size=1, iters=3, core_steps=4)
  assert rep["proxy_loss"] == pytest.approx(nowag, rel=1e-6)
  np.testing.assert_array_equal(np.asarray(out.mask()), np.asarray(baselines.nowag_p(w, stats)
                                                                    .mask()))


@pytest.mark.slow
def test_armor_beats_every_baseline_on_held_out_inputs():
  w, x = synthetic.layer_and_inputs(jax.random.PRNGKey(7), 128, 256, 4096)
  stats = calibration.from_activations(x[:2048], full=True)
  held_out = x[2048:]
  errs = {name: layer.report(f(w, stats), w, stats.h, x_eval=held_out)
          for name, f in baselines.METHODS.items()}
  out, curve = armor.armor(w, stats, armor.ArmorConfig(block_size=32, iters=15, core_steps=16))
  rep = layer.report(out, w, stats.h, stats.second_moment, held_out)
  assert rep["proxy_loss"] < 0.5 * errs["nowag_p"]["proxy_loss"]
  for name, e in errs.items():
    assert rep["output_error_eval"] < e["output_error_eval"], name
  # apply() agrees with the dense reconstruction
  np.testing.assert_allclose(out.apply(held_out[:64]), held_out[:64] @ out.dense().T,
                             rtol=2e-3, atol=1e-6 * float(jnp.max(jnp.abs(held_out[:64] @ w.T))))


def test_block_sizes_for_model_dimensions():
  assert blockdiag.block_size_for(576, 128) == 96
  assert blockdiag.block_size_for(1536, 128, multiple_of=4) == 128
  assert blockdiag.block_size_for(576, 128, multiple_of=4) == 96
  assert blockdiag.block_size_for(4 * 37, 128, multiple_of=4) == 4       # 148 = 4 * 37
  prob = armor.make_problem(jnp.ones((576, 1536)), jnp.ones(1536), 128)
  assert (prob.b_a, prob.b_b) == (96, 128)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["zero_columns", "dead_channels", "tiny", "huge", "bf16"])
@pytest.mark.parametrize("scheme", ["exact", "official"])
def test_robust_to_degenerate_layers(case, scheme):
  w, x = synthetic.layer_and_inputs(jax.random.PRNGKey(3), 32, 48, 512)
  if case == "zero_columns":
    w = w.at[:, 4:12].set(0)
  if case == "tiny":
    w, x = w * 1e-30, x * 1e-10
  if case == "huge":
    w, x = w * 1e30, x * 1e10
  if case == "bf16":
    w, x = w.astype(jnp.bfloat16), x.astype(jnp.bfloat16)
  stats = calibration.from_activations(x, full=True)
  if case == "dead_channels":
    stats = stats.replace(sum_sq=stats.sum_sq.at[:10].set(0))
  cfg = armor.ArmorConfig(block_size=16, scheme=scheme, iters=4, core_steps=4)
  out, curve = armor.armor(w, stats, cfg)
  assert np.all(np.isfinite(curve)) and np.all(np.isfinite(np.asarray(out.dense(), np.float32)))
  sparsity.validate_24(np.asarray(out.mask()))
  assert curve.min() <= curve[0]
  for name, f in baselines.METHODS.items():
    base = f(w, stats)
    sparsity.validate_24(np.asarray(base.mask()))
    assert np.all(np.isfinite(np.asarray(base.dense(), np.float32))), name


@pytest.mark.parametrize("scheme,objective,d_out,d_in,block", [
    ("exact", "diagonal", 256, 256, 256)] + [
        pytest.param(*case, marks=pytest.mark.slow) for case in (
            ("official", "diagonal", 256, 256, 256), ("exact", "output", 256, 256, 256),
            ("exact", "diagonal", 512, 256, 32), ("official", "diagonal", 512, 256, 32),
            ("exact", "output", 512, 256, 32))])
def test_working_bytes_bound_what_xla_allocates(scheme, objective, d_out, d_in, block):
  # XLA's buffer assignment of the compiled iterations (problem and state in, the new state
  # aliased onto the donated one, scratch) is the independent reference for the memory plan
  cfg = armor.ArmorConfig(scheme=scheme, objective=objective, block_size=block, iters=2)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  if objective == "output":
    stats = calibration.Stats(f32(), f32(d_in), f32(d_in, d_in))
    start = lambda w, st: armor._start_output(w, st, cfg, jax.random.PRNGKey(0))
  else:
    stats = f32(d_in)
    start = lambda w, h: armor._start(w, h, cfg, jax.random.PRNGKey(0))
  prob, state = jax.eval_shape(start, f32(d_out, d_in), stats)
  m = armor.run_iterations.lower(prob, cfg, state, 2).compile().memory_analysis()
  xla = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
         + m.temp_size_in_bytes)
  assert m.alias_size_in_bytes > 0            # the state is donated
  assert xla <= armor.working_bytes(d_out, d_in, cfg) <= 1.25 * xla


@pytest.mark.parametrize("objective", ["diagonal",
                                       pytest.param("output", marks=pytest.mark.slow)])
def test_armor_many_gives_each_layer_what_armor_gives_it(objective):
  """Three same-shape layers solved as one vmapped program against armor() on each, in
  float64 (in float32 the two programs' roundings steer a few group choices apart): the
  same curves, each stopping on its own, and the same layers."""
  with jax.enable_x64(True):
    ws, stats = [], []
    for i in range(3):
      w, x = synthetic.layer_and_inputs(jax.random.PRNGKey(10 + i), 32, 48, 512)
      ws.append(jnp.asarray(w, jnp.float64))
      stats.append(calibration.from_activations(jnp.asarray(x, jnp.float64), full=True))
    stats[2] = stats[1]                     # a statistics shared by two linears, as k and v
    cfg = armor.ArmorConfig(block_size=16, iters=30, rtol=0.05, patience=1,
                            objective=objective)
    keys = [jax.random.PRNGKey(i) for i in range(3)]
    many = armor.armor_many(ws, stats, cfg, keys)
    lengths = set()
    for w, st, k, (got, curve) in zip(ws, stats, keys, many):
      want, want_curve = armor.armor(w, st, cfg, key=k)
      lengths.add(len(curve))
      assert len(curve) == len(want_curve)
      np.testing.assert_allclose(curve, want_curve, rtol=1e-9)
      for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(r, np.float64),
                                   rtol=1e-7, atol=1e-9)
    assert len(lengths) > 1, "the stop rule should fire at different iterations here"
    with pytest.raises(ValueError, match="one shape"):
      armor.armor_many([ws[0], ws[0][:16]], stats[:2], cfg)
