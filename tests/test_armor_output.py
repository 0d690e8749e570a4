"""ARMOR with the full input covariance (objective=output) against float64 numpy references.

Each exact step is checked as the minimizer of its block of variables by an independent
least-squares solve (the Kronecker form written out with np.kron), the mask step as never
increasing the objective, and the whole solver as the diagonal variant's when X^T X is
diagonal.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from armor_jax.errors import SettingError
from armor_jax.solver import armor, armor_output as ao, baselines, blockdiag, calibration, layer
from armor_jax.solver import sparsity, synthetic

D_OUT, D_IN, BLOCK = 16, 32, 8


def np_output_loss(y, hm, approx):
  r = y - approx
  return np.sum(r * (r @ hm)) / np.sum(y * (y @ hm))


@pytest.fixture(scope="module")
def case():
  """A small layer, its statistics and a generic point (A, B away from identity, 2:4 core)."""
  w, x = synthetic.layer_and_inputs(jax.random.PRNGKey(4), D_OUT, D_IN, 256)
  w, x = np.asarray(w, np.float64), np.asarray(x, np.float64)
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    # float64 sums (calibration.accumulate sums in float32)
    stats = calibration.Stats(jnp.asarray(float(len(x))), jnp.asarray(np.sum(x * x, 0)),
                              jnp.asarray(x.T @ x))
    prob = ao.make_problem(jnp.asarray(w), stats.second_moment, 0.01, BLOCK)
    y = np.asarray(prob.y)
    core = y + 0.1 * rng.normal(size=y.shape)
    mask = np.asarray(sparsity.mask_from_scores(jnp.asarray(np.abs(core))))
    a = np.eye(BLOCK) + 0.2 * rng.normal(size=(D_OUT // BLOCK, BLOCK, BLOCK))
    b = np.eye(BLOCK) + 0.2 * rng.normal(size=(D_IN // BLOCK, BLOCK, BLOCK))
    pt = armor.Factors(jnp.asarray(a), jnp.asarray(b), jnp.asarray(core * mask), jnp.asarray(mask))
  xtx = x.T @ x / x.shape[0]
  hm = xtx / np.mean(np.diag(xtx)) + 0.01 * np.eye(D_IN)
  return dict(w=w, x=x, stats=stats, prob=prob, pt=pt, y=y, hm=hm)


def dense(pt):
  """(A, S, B) as float64 numpy matrices."""
  return (scipy.linalg.block_diag(*np.asarray(pt.a)), np.asarray(pt.core),
          scipy.linalg.block_diag(*np.asarray(pt.b)))


def test_problem_is_the_damped_covariance(case):
  np.testing.assert_allclose(np.asarray(case["prob"].hm), case["hm"], rtol=1e-10)
  w = case["w"]
  w1 = w / np.linalg.norm(w, axis=0)
  np.testing.assert_allclose(case["y"], w1 / np.linalg.norm(w1, axis=1)[:, None], rtol=1e-12)


def test_a_step_is_the_blockwise_least_squares_optimum(case):
  with jax.enable_x64(True):
    got = ao.step_a(case["prob"], case["pt"])
  a, core, b = dense(case["pt"])
  z, y, hm = core @ b, case["y"], case["hm"]
  chol = np.linalg.cholesky(hm)
  for blk in range(D_OUT // BLOCK):
    rows = slice(BLOCK * blk, BLOCK * blk + BLOCK)
    # min_a ||(y - a z) L||_F: an ordinary least squares per row
    sol = np.linalg.lstsq((z[rows] @ chol).T, (y[rows] @ chol).T, rcond=None)[0].T
    np.testing.assert_allclose(np.asarray(got.a[blk]), sol, rtol=1e-7, atol=1e-9)


def test_b_block_is_the_kronecker_least_squares_optimum(case):
  prob, pt = case["prob"], case["pt"]
  a, core, b = dense(pt)
  y, hm = case["y"], case["hm"]
  chol = np.linalg.cholesky(hm)
  g = a @ core
  for c in range(D_IN // BLOCK):
    with jax.enable_x64(True):
      gj = blockdiag.left(pt.a, pt.core)
      b_new, rh = ao.b_block_update(prob, gj, pt.b, ao.residual_h(prob, gj, pt.b), c)
    cols = slice(BLOCK * c, BLOCK * c + BLOCK)
    # R - G_c Delta P_c with P_c the rows c of the identity: vec(G_c Delta P_c L) =
    # ((P_c L)^T kron G_c) vec(Delta), column-major vec
    resid = (y - g @ b) @ chol
    pc = np.eye(D_IN)[cols]
    design = np.kron((pc @ chol).T, g[:, cols])
    delta = np.linalg.lstsq(design, resid.ravel(order="F"), rcond=None)[0]
    want = np.asarray(pt.b[c]) + delta.reshape(BLOCK, BLOCK, order="F")
    np.testing.assert_allclose(np.asarray(b_new[c]), want, rtol=1e-7, atol=1e-9)
    b_dense = scipy.linalg.block_diag(*np.asarray(b_new))
    np.testing.assert_allclose(np.asarray(rh), (y - g @ b_dense) @ hm, rtol=1e-8, atol=1e-10)
  with jax.enable_x64(True):
    swept = ao.step_b(prob, pt)
    assert float(ao.loss(prob, swept)) < float(ao.loss(prob, pt))


def test_values_are_the_exact_minimizer_given_the_mask(case):
  prob, pt = case["prob"], case["pt"]
  a, core, b = dense(pt)
  y, hm = case["y"], case["hm"]
  chol = np.linalg.cholesky(hm)
  keep = np.flatnonzero(np.asarray(pt.mask).ravel(order="F"))
  # vec(A S B L) = ((B L)^T kron A) vec(S), over the kept entries of S
  design = np.kron((b @ chol).T, a)[:, keep]
  s = np.linalg.lstsq(design, (y @ chol).ravel(order="F"), rcond=None)[0]
  want = np.zeros(D_OUT * D_IN)
  want[keep] = s
  want = want.reshape(D_OUT, D_IN, order="F")
  with jax.enable_x64(True):
    # CG is exact in len(keep) steps in exact arithmetic; rounding costs conjugacy, so more
    got, p = ao.values_cg_and_gradient(prob, pt, 4 * len(keep))
    np.testing.assert_allclose(np.asarray(p), np.asarray(ao.gradient(prob, got)), rtol=1e-6,
                               atol=1e-9)
  np.testing.assert_allclose(np.asarray(got.core), want, rtol=1e-6, atol=1e-8)
  with jax.enable_x64(True):
    one = ao.values_cg(prob, pt, 1)
    assert float(ao.loss(prob, one)) < float(ao.loss(prob, pt))


@pytest.mark.slow
@pytest.mark.parametrize("update", ["rows", pytest.param("single", marks=pytest.mark.slow)])
def test_mask_steps_never_increase_the_objective(case, update):
  prob, pt = case["prob"], case["pt"]
  y, hm = case["y"], case["hm"]
  with jax.enable_x64(True):
    x = ao.values_cg(prob, pt, 4)
    losses = [np_output_loss(y, hm, np.linalg.multi_dot(dense(x)))]
    for _ in range(6):
      x = ao.core_steps(prob, x, 1, update)
      sparsity.validate_24(np.asarray(x.mask))
      assert np.all(np.asarray(x.core)[~np.asarray(x.mask)] == 0)
      losses.append(np_output_loss(y, hm, np.linalg.multi_dot(dense(x))))
  assert np.all(np.diff(losses) <= 1e-13), losses
  assert losses[-1] < losses[0]


def test_a_group_step_takes_at_least_the_best_single_group(case):
  # brute force over every group and its 6 patterns: the best single replacement's decrease
  prob, y, hm = case["prob"], case["y"], case["hm"]
  with jax.enable_x64(True):
    x = ao.values_cg(prob, case["pt"], 4)
    after = ao.core_steps(prob, x, 1, "rows")
  a, core, b = dense(x)
  base = np_output_loss(y, hm, a @ core @ b)
  chol = np.linalg.cholesky(hm)
  best = 0.0
  for row, grp in itertools.product(range(D_OUT), range(D_IN // 4)):
    for pair in itertools.combinations(range(4), 2):
      cols = 4 * grp + np.array(pair)
      cand = core.copy()
      cand[row, 4 * grp:4 * grp + 4] = 0
      resid = ((y - a @ cand @ b) @ chol).ravel()
      design = np.stack([(np.outer(a[:, row], b[cc]) @ chol).ravel() for cc in cols], 1)
      v = np.linalg.lstsq(design, resid, rcond=None)[0]
      cand[row, cols] = v
      best = max(best, base - np_output_loss(y, hm, a @ cand @ b))
  got = base - np_output_loss(y, hm, np.linalg.multi_dot(dense(after)))
  assert got >= best * (1 - 1e-6)


@pytest.mark.slow
def test_equals_the_diagonal_variant_when_xtx_is_diagonal(case):
  with jax.enable_x64(True):
    st = case["stats"]
    diag = calibration.Stats(st.count, st.sum_sq, jnp.diag(st.sum_sq))
    w = jnp.asarray(case["w"])
    out_o, curve_o = armor.armor(w, diag, armor.ArmorConfig(block_size=BLOCK, iters=6,
                                                           objective="output", damp=0.0))
    out_d, curve_d = armor.armor(w, diag, armor.ArmorConfig(block_size=BLOCK, iters=6))
  np.testing.assert_allclose(curve_o, curve_d, rtol=1e-9)
  np.testing.assert_allclose(np.asarray(out_o.dense()), np.asarray(out_d.dense()), rtol=1e-7,
                             atol=1e-10)


@pytest.mark.slow
def test_starts_at_the_better_of_sparsegpt_and_nowag_and_never_ends_above_it(case):
  w, stats, hm = case["w"], case["stats"], case["hm"]
  with jax.enable_x64(True):
    wj = jnp.asarray(w)
    out, curve = armor.armor(wj, stats, armor.ArmorConfig(block_size=BLOCK, iters=10,
                                                         objective="output"))
    y, r2, r1 = (np.asarray(v) for v in layer.normalize(wj))
    starts = {}
    for name in ("sparsegpt", "nowag_p"):
      pl = baselines.METHODS[name](wj, stats)
      starts[name] = np_output_loss(y, hm, np.asarray(pl.dense()) / r2[:, None] / r1[None, :])
  assert curve[0] == pytest.approx(min(starts.values()), rel=1e-9)
  assert np.all(np.diff(curve) <= 1e-12 * curve[0])
  got = np_output_loss(y, hm, np.asarray(out.dense()) / r2[:, None] / r1[None, :])
  assert got == pytest.approx(curve[-1], rel=1e-7)
  assert got < 0.8 * min(starts.values())


def test_settings_and_statistics_it_needs():
  with pytest.raises(SettingError, match="objective"):
    armor.ArmorConfig(objective="output", scheme="official")
  with pytest.raises(SettingError, match="objective"):
    armor.ArmorConfig(objective="hessian")
  with pytest.raises(SettingError, match="damp"):
    armor.ArmorConfig(objective="output", damp=-1.0)
  w, x = synthetic.layer_and_inputs(jax.random.PRNGKey(1), 8, 16, 64)
  with pytest.raises(ValueError, match="full X\\^T X"):
    armor.armor(w, calibration.from_activations(x), armor.ArmorConfig(objective="output",
                                                                        block_size=4))


@pytest.mark.slow
def test_float32_on_a_wider_layer_is_monotone_and_beats_sparsegpt():
  w, x = synthetic.layer_and_inputs(jax.random.PRNGKey(7), 64, 128, 2048)
  stats = calibration.from_activations(x[:1024], full=True)
  out, curve = armor.armor(w, stats, armor.ArmorConfig(block_size=32, iters=8,
                                                       objective="output"))
  assert np.all(np.diff(curve) <= 0)
  held = x[1024:]
  err = lambda pl: layer.report(pl, w, stats.h, x_eval=held)["output_error_eval"]
  assert err(out) < err(baselines.sparsegpt(w, stats))
