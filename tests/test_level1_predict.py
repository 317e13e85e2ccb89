"""Predictive draws of new rows of a model with ``sigma=`` or a Student-t level 1, and the level-1 priors listed.

docs/design.md, "Heterogeneous level-1 variance" and "Student-t level 1".

The statistical checks hold the posterior draws fixed: given them, the level-1 noise of every
row and draw is independent, so each statistic is an average of independent terms whose
standard error is known or estimated from the same terms, and each tolerance is a number of
those standard errors. The false-alarm rate (the chance that a correct implementation fails
for a seed) is given at each check; the seeds are fixed, so the tests are deterministic.
The measured values quoted are those of these seeds.
"""

import json

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.level1 import new_row_sd
from bayeshlm.priors import HalfNormal, Normal
from samplers.scale import DELTA_PRIOR_SD, NU_PRIOR_RATE, NU_PRIOR_SHAPE, OMEGA_PRIOR_SCALE

RUN = dict(draws=300, warmup=300, chains=2, progress=False)
S = 600  # draws kept: 2 chains x 300
HSB = "mathach ~ ses + (1 | school)"


def _flat(x):
    x = np.asarray(x)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _post(post, name):
    return _flat(post.posterior[name].values)


@pytest.fixture(scope="module")
def hsb():
    d = bh.load_dataset("hsb")
    d["w"] = np.random.default_rng(0).uniform(0.5, 2.0, len(d))  # precision weights
    return d


@pytest.fixture(scope="module")
def sector_fit(hsb):
    """HSB with a categorical variance predictor, a row-level one and a per-school SD."""
    model = bh.hlm(HSB, hsb, sigma="~ C(sector) + ses + (1 | school)")
    return model, bh.sample(model, seed=11, **RUN)


@pytest.fixture(scope="module")
def student_fit(hsb):
    """HSB with Student-t errors (nu estimated), precision weights and a row-level variance predictor."""
    model = bh.hlm(HSB, hsb, family="student", weights="w", sigma="~ ses")
    return model, bh.sample(model, seed=12, **RUN)


@pytest.fixture(scope="module")
def student_plain_fit(hsb):
    """HSB with Student-t errors and precision weights, one scale."""
    model = bh.hlm(HSB, hsb, family="student", weights="w")
    return model, bh.sample(model, seed=13, **RUN)


@pytest.fixture(scope="module")
def raters():
    """Rows of 30 groups ``g`` (the mean's) rated by 40 raters ``h`` (the variance's, crossed with ``g``).

    ``log sd = 0.4 x + e_h``, ``e_h ~ Normal(0, 0.35^2)``: a spread of the raters' SDs large
    enough that a new rater's lognormal factor ``exp(2 omega^2)`` (about 1.3) is far from 1,
    and small enough that averages of ``exp(2e)`` over a few thousand raters are near normal
    (their excess kurtosis grows as ``exp(16 omega^2)``). ``x2`` is ``x`` shifted and scaled.
    """
    rng = np.random.default_rng(20240)
    n = 1200
    g = rng.integers(0, 30, n)
    h = rng.integers(0, 40, n)
    x = rng.normal(size=n)
    e = rng.normal(0.0, 0.35, 40)
    y = 1.0 + 0.5 * x + rng.normal(0.0, 1.0, 30)[g] + np.exp(0.4 * x + e[h]) * rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "x2": 100.0 + 7.0 * x, "g": [f"g{j}" for j in g],
                         "h": [f"h{j}" for j in h]})


@pytest.fixture(scope="module")
def rater_fit(raters):
    model = bh.hlm("y ~ x + (1 | g)", raters, sigma="~ x + (1 | h)")
    return model, bh.sample(model, seed=14, **RUN)


def _noise(model, post, rows, seed, **kwargs):
    """The predictive draws' level-1 noise (S, n): predictive minus mean draws with one seed.

    The mean draws take the random numbers of new groups' coefficients first, the same with
    either kind, so the difference is the noise alone.
    """
    pred = _flat(bh.predict(model, post, rows, seed=seed, **kwargs).values)
    kwargs.pop("weights", None)
    mean = _flat(bh.predict(model, post, rows, kind="mean", seed=seed, **kwargs).values)
    return pred - mean


# ---------------------------------------------------------------- the fitted rows as new rows


@pytest.mark.parametrize("fit", ["sector_fit", "student_fit", "student_plain_fit"])
def test_predict_on_the_fitted_rows_matches_posterior_predictive(fit, hsb, request):
    """predict on the fitted rows' own data draws what posterior_predictive draws: per-row means and SDs agree.

    Both draw from the same posterior draws, so per row the difference of the two draws
    ``d_s`` and of their squared deviations ``t_s = c1_s^2 - c2_s^2`` (``c`` the deviation from
    the row's mean over draws) have mean zero and are independent across draws given the
    posterior: ``z = mean / (sd / sqrt(S))`` is about N(0, 1), for every row independently.
    Every row's ``|z| < 6`` (7185 rows x 2: false alarm about 3e-5), and the mean of ``z^2``
    over the rows is 1 within 0.12 (7 SE of the mean of 7185 chi^2_1, false alarm < 1e-6).
    A model of the wrong SDs fails the second: predicting with the sector's ``delta`` set to
    0 (the Catholic schools' rows' variances 19% too large) gives a mean ``z^2`` of 3.1 for
    the SDs.
    """
    model, post = request.getfixturevalue(fit)
    weights = {"weights": "w"} if model.weighted else {}
    y1 = _flat(bh.predict(model, post, hsb, seed=1, **weights).values)
    y2 = _flat(bh.posterior_predictive(model, post, seed=2).posterior_predictive["mathach"].values)
    assert y1.shape == y2.shape == (S, len(hsb))
    diff = y1 - y2
    z_mean = diff.mean(0) / (diff.std(0, ddof=1) / np.sqrt(S))
    del diff
    t = (y1 - y1.mean(0)) ** 2 - (y2 - y2.mean(0)) ** 2
    z_sd = t.mean(0) / (t.std(0, ddof=1) / np.sqrt(S))
    for z in (z_mean, z_sd):
        assert np.abs(z).max() < 6.0
        assert abs(np.mean(z**2) - 1.0) < 0.12  # measured: within 0.02


# ---------------------------------------------------------------- each row's SD on new rows


def test_a_categorical_predictor_and_a_known_school(sector_fit, hsb):
    """A row of a fitted school has SD ``sigma_school exp(z' delta / 2)``, ``z`` coded as for the fitted rows.

    Rows of a public school (sector 0) and of a Catholic one (sector 1), each 100 times:
    the noise over its SD, squared, has mean 1 over the 600 x 100 terms (chi^2_1, SE 0.0058);
    within 0.04 (7 SE, false alarm < 1e-11 for the two). Leaving out the sector's ``delta``
    (about -0.17) gives 0.84 for the Catholic school; the ses's (about -0.02) is too small for
    this check to see, and the next test checks a row-level predictor.
    """
    model, post = sector_fit
    public, catholic = "1224", "1308"
    assert hsb.loc[hsb["school"] == public, "sector"].iloc[0] == 0
    assert hsb.loc[hsb["school"] == catholic, "sector"].iloc[0] == 1
    rows = pd.DataFrame({"school": [public] * 100 + [catholic] * 100, "sector": [0] * 100 + [1] * 100,
                         "ses": [-1.0] * 100 + [1.5] * 100})
    noise = _noise(model, post, rows, seed=4)
    school_sd = post.posterior["sigma_group"]
    delta = _post(post, "sigma_delta")  # columns: C(sector)[T.1], ses
    assert list(post.posterior["sigma_term"].values) == ["C(sector)[T.1]", "ses"]
    for school, sector, ses, sl in ((public, 0, -1.0, slice(0, 100)), (catholic, 1, 1.5, slice(100, 200))):
        sd = _flat(school_sd.sel(school_sigma=school).values) * np.exp(0.5 * (delta[:, 0] * sector + delta[:, 1] * ses))
        u2 = (noise[:, sl] / sd[:, None]) ** 2
        assert abs(u2.mean() - 1.0) < 0.04  # measured: within 0.01


def test_a_row_level_predictor_and_a_known_rater(rater_fit):
    """Rows of a fitted rater at x = -1.5, 0, 1.5: SD ``sigma_h exp(delta x / 2)``.

    As above: the mean of 60000 squared standardised noises is 1 within 0.04 (7 SE) for
    each x, false alarm < 1e-11; ``delta`` (about 0.8) left out gives 3.4 at x = 1.5 and 0.29
    at x = -1.5.
    """
    model, post = rater_fit
    xs = (-1.5, 0.0, 1.5)
    rows = pd.DataFrame({"x": np.repeat(xs, 100), "g": "g0", "h": "h0"})
    noise = _noise(model, post, rows, seed=5)
    sd_h0 = _flat(post.posterior["sigma_group"].sel(h_sigma="h0").values)
    delta = _post(post, "sigma_delta")[:, 0]
    for i, x in enumerate(xs):
        u2 = (noise[:, 100 * i:100 * (i + 1)] / (sd_h0 * np.exp(0.5 * delta * x))[:, None]) ** 2
        assert abs(u2.mean() - 1.0) < 0.04  # measured: within 0.01


def test_a_new_rater_has_the_lognormal_spread(rater_fit):
    """A new rater's SD is ``sigma exp(e)``, ``e ~ Normal(0, omega^2)`` per draw (new_groups='sample').

    3000 rows, each of its own new rater, at x = 0.5: per draw ``s`` the squared noise over
    the reference SD ``sigma_s exp(delta_s x / 2)``, ``v = exp(2e) eps^2``, has mean
    ``exp(2 omega_s^2)`` and variance ``3 exp(8 omega_s^2) - exp(4 omega_s^2)``. The sum over draws
    of the per-draw errors of the mean is within 4.5 of its SE (false alarm 7e-6), and the
    per-draw z-scores' mean square is 1 within 0.35 (6 SE of a mean of 600 chi^2_1, whose
    variance their excess kurtosis, about 0.07 per draw at omega = 0.4, raises by a few
    percent; false alarm < 1e-6): E[exp(2e)] = exp(2 omega^2) draw by draw (over ten seeds
    the mean square measured 0.89 to 1.04). With omega near 0.4 the
    factor is about 1.37, and e = 0 gives a sum about 160 SE off.
    """
    model, post = rater_fit
    M = 3000
    rows = pd.DataFrame({"x": 0.5, "g": "g0", "h": [f"new{j}" for j in range(M)]})
    noise = _noise(model, post, rows, seed=6)
    ref = _post(post, "sigma") * np.exp(0.5 * _post(post, "sigma_delta")[:, 0] * 0.5)
    omega = _post(post, "sigma_group_sd")
    assert 0.25 < omega.mean() < 0.6
    v = (noise / ref[:, None]) ** 2
    expected = np.exp(2 * omega**2)
    var = 3 * np.exp(8 * omega**2) - np.exp(4 * omega**2)
    err = v.mean(1) - expected
    assert abs(err.sum() / np.sqrt(var.sum() / M)) < 4.5
    z = err / np.sqrt(var / M)
    assert abs(np.mean(z**2) - 1.0) < 0.35
    # 'population': the SD of a typical rater, e = 0 (mean of 1.8e6 chi^2_1 within 4.5 SE of 1)
    v0 = (_noise(model, post, rows, seed=6, new_groups="population") / ref[:, None]) ** 2
    assert abs(v0.mean() - 1.0) < 4.5 * np.sqrt(2.0 / v0.size)
    # and the rater column may then be left out
    out = bh.predict(model, post, rows.drop(columns="h"), seed=6, new_groups="population")
    assert out.shape == (2, 300, M) and np.isfinite(out.values).all()


def test_a_new_group_shares_its_deviation_across_its_rows(rater_fit):
    """One ``e`` per new group and draw: two rows of one new rater have one SD, another rater its own."""
    model, post = rater_fit
    rows = pd.DataFrame({"x": [0.3, 0.3, 0.3], "g": "g0", "h": ["a new one", "a new one", "another"]})
    sd = new_row_sd(model, post, rows, None, "sample", np.random.default_rng(0))
    np.testing.assert_array_equal(sd[:, 0], sd[:, 1])
    assert np.all(sd[:, 0] != sd[:, 2])
    fitted = new_row_sd(model, post, rows.assign(h="h3"), np.array([1.0, 4.0, 1.0]), "sample",
                        np.random.default_rng(0))
    np.testing.assert_allclose(fitted[:, 1], fitted[:, 0] / 2.0, rtol=1e-14)  # weight 4: half the SD


def test_a_shifted_and_scaled_variance_predictor_gives_the_same_predictions(rater_fit, raters):
    """sigma='~ x2' with x2 = 100 + 7x: the same predictive draws, new rater and new group included.

    The sampler works on the standardised columns, the same for x and x2 up to rounding, so
    the same seed gives the same chains; the new rows' SDs, evaluated in each fit's units,
    then agree to rounding (an identity, no tolerance for chance).
    """
    model, post = rater_fit
    model2 = bh.hlm("y ~ x + (1 | g)", raters, sigma="~ x2 + (1 | h)")
    post2 = bh.sample(model2, seed=14, **RUN)
    rows = pd.DataFrame({"x": [-2.0, 0.0, 2.0, 1.0], "g": ["g1", "g1", "new g", "new g"],
                         "h": ["h1", "new h", "h1", "new h"]})
    rows["x2"] = 100.0 + 7.0 * rows["x"]
    a = bh.predict(model, post, rows, seed=9).values
    b = bh.predict(model2, post2, rows, seed=9).values
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_noise(model, post, rows, seed=9), _noise(model2, post2, rows, seed=9),
                               rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- errors


def test_errors_name_the_column_or_group(sector_fit, rater_fit, hsb):
    model, post = sector_fit
    rows = hsb.head(3).copy()
    with pytest.raises(ValueError, match=r"column 'sector' .* level\(s\) 2 .*not fitted on"):
        bh.predict(model, post, rows.assign(sector=[0, 2, 1]))
    with pytest.raises(ValueError, match=r"column 'sector' .*missing"):
        bh.predict(model, post, rows.assign(sector=[0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"column 'sector' .*not in the data"):
        bh.predict(model, post, rows.drop(columns="sector"))
    # the mean does not need the sigma formula's columns
    assert bh.predict(model, post, rows.drop(columns="sector"), kind="mean").shape == (2, 300, 3)
    model, post = rater_fit
    rows = pd.DataFrame({"x": [0.0, 1.0], "g": ["g0", "g0"], "h": ["h0", "rater 77"]})
    with pytest.raises(ValueError, match=r"'h' group 'rater 77' .* not in the fitted data"):
        bh.predict(model, post, rows, new_groups="raise")
    with pytest.raises(ValueError, match=r"column 'h' .*not in the new data"):
        bh.predict(model, post, rows.drop(columns="h"))
    with pytest.raises(ValueError, match=r"column 'h' .*missing"):
        bh.predict(model, post, rows.assign(h=["h0", None]))


# ---------------------------------------------------------------- priors


def test_the_level1_priors_are_listed(sector_fit, student_fit, hsb):
    """prior_descriptions, the posterior's attrs and the report list delta's, omega's and nu's priors."""
    model, post = sector_fit
    lines = model.prior_descriptions()
    delta = f"{Normal(0.0, DELTA_PRIOR_SD)} on the standardised column's delta"
    for name in ("C(sector)[T.1]", "ses"):
        assert any(line.startswith(f"sigma_delta[{name}]: {delta}") for line in lines), lines
    assert f"sigma_group_sd: {HalfNormal(OMEGA_PRIOR_SCALE)} (the SD of the log level-1 SDs of the groups of " \
           "'school')" in lines
    assert not any(line.startswith("nu:") for line in lines)
    sigma = next(line for line in lines if line.startswith("sigma: "))
    assert "at the means of the sigma formula's columns" in sigma
    attrs = json.loads(post.attrs["priors"])
    assert attrs["sigma_group_sd"].startswith("HalfNormal(sigma=1)")
    assert attrs["sigma_delta[ses]"].startswith("Normal(mu=0, sigma=2.5)")
    assert "sigma_group_sd: HalfNormal" in str(bh.report(post))

    model, post = student_fit
    nu = f"nu: Gamma(shape={NU_PRIOR_SHAPE:g}, rate={NU_PRIOR_RATE:g}) restricted to nu >= 1"
    lines = model.prior_descriptions()
    assert nu in lines and nu == "nu: Gamma(shape=2, rate=0.1) restricted to nu >= 1"
    assert [line.split(":")[0] for line in lines if line.startswith("sigma_")] == ["sigma_delta[ses]"]
    assert json.loads(post.attrs["priors"])["nu"] == nu.split(": ", 1)[1]
    fixed = bh.hlm(HSB, hsb, family="student", nu=4).prior_descriptions()
    assert "nu: fixed at 4" in fixed and not any(line.startswith("sigma_") for line in fixed)
    plain = bh.hlm(HSB, hsb).prior_descriptions()
    assert not any(line.startswith(("sigma_", "nu:")) for line in plain)
    assert "sigma: HalfStudentT" in "\n".join(plain) and "means of the sigma formula" not in "\n".join(plain)
