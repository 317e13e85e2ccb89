"""Missing responses: ``hlm(..., missing="impute")`` and :func:`bayeshlm.impute` (docs/design.md, "Missing outcomes").

The identities hold exactly (to rounding): the fit with responses missing is the fit to the
observed rows, the imputed draws are :func:`bayeshlm.predict`'s draws for those rows with
the same seed, an offset is added back, and shifted and scaled data move the draws with
them. The calibration is a simulation-based check (SBC, as in tests/statistical/test_sbc.py):
responses hidden from data simulated from the prior must rank uniformly among their imputed
draws.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.prior_draws import draw_from_prior, simulate_response
from bayeshlm.testing import SBCResult

SLEEP = "reaction ~ days + (days | subject)"
OPTS = {"chains": 2, "draws": 300, "warmup": 300, "progress": False}
ALPHA = 1e-3  # a test's false-alarm rate, spent over its checks by Bonferroni


def _hidden_sleep(subject_out="308", rows=(3, 20, 45, 46, 101, 170)):
    """sleepstudy with every response of one subject and a few others missing, and the positions hidden."""
    data = bh.load_dataset("sleepstudy")
    hidden = np.union1d(np.flatnonzero(data["subject"].astype(str) == subject_out), rows)
    out = data.copy()
    out.loc[hidden, "reaction"] = np.nan
    return data, out, hidden


def _sample(model, seed=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        return bh.sample(model, seed=seed, **OPTS)


def _flat(da):
    return da.transpose("chain", "draw", ...).values.reshape(-1, da.shape[-1])


@pytest.fixture(scope="module")
def sleep_imputed():
    data, holed, hidden = _hidden_sleep()
    model = bh.hlm(SLEEP, holed, missing="impute")
    post = _sample(model)
    return data, holed, hidden, model, post


# ------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("family", ["binomial", "bernoulli", "poisson", "student"])
def test_only_a_gaussian_model_imputes(family):
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"y": rng.integers(0, 2, 40).astype(float), "x": rng.normal(size=40),
                         "g": np.repeat(list("abcdefgh"), 5)})
    data.loc[[3, 17], "y"] = np.nan
    with pytest.raises(ValueError, match=f"missing='impute'.*Gaussian model; family='{family}'"):
        bh.hlm("y ~ x + (1 | g)", data, family=family, missing="impute")


def test_a_missing_predictor_or_group_is_still_an_error():
    _, holed, _ = _hidden_sleep()
    for column, rows in (("days", [7, 60]), ("subject", [12])):
        bad = holed.astype({"subject": object}).copy()
        bad.loc[rows, column] = np.nan
        with pytest.raises(bh.DataError, match=rf"(?s)column '{column}' has {len(rows)} missing.*row positions "
                                               rf"{', '.join(map(str, rows))}\).*imputes missing responses only"):
            bh.hlm(SLEEP, bad, missing="impute")
    # a predictor missing in a row whose response is missing too
    bad = holed.copy()
    bad.loc[20, "days"] = np.nan
    with pytest.raises(bh.DataError, match=r"column 'days' has 1 missing.*row positions 20\)"):
        bh.hlm(SLEEP, bad, missing="impute")
    # missing weights, and an infinite response, are not missing responses either
    with pytest.raises(bh.DataError, match=r"column 'w' has 1 missing"):
        bh.hlm(SLEEP, holed.assign(w=np.where(np.arange(len(holed)) == 5, np.nan, 1.0)), weights="w",
               missing="impute")
    with pytest.raises(bh.DataError, match=r"column 'reaction' has 1 missing or non-finite value \(row positions 9\)"):
        bh.hlm(SLEEP, holed.assign(reaction=holed["reaction"].where(holed.index != 9, np.inf)), missing="impute")


def test_every_response_missing_is_refused():
    data = bh.load_dataset("sleepstudy").assign(reaction=np.nan)
    with pytest.raises(bh.DataError, match="'reaction' is missing in every row"):
        bh.hlm(SLEEP, data, missing="impute")


def test_missing_rows_must_keep_the_nesting():
    data = pd.DataFrame({"y": np.arange(12.0) % 5 + 0.5, "x": np.arange(12.0) % 3,
                         "school": list("aaaaaabbbbbb"), "class": ["c1", "c1", "c2", "c2", "c3", "c3",
                                                                   "c4", "c4", "c5", "c5", "c6", "c6"]})
    model = bh.hlm("y ~ x + (1 | school) + (1 | class)", data.assign(y=data["y"].where(data.index != 0)),
                   missing="impute")
    assert model.design.missing_responses.factor_labels[0].tolist() == ["c1"]
    moved = data.copy()
    moved.loc[0, "school"] = "b"  # class c1 is in school a in the observed rows
    moved.loc[0, "y"] = np.nan
    with pytest.raises(bh.DataError, match="'class' group 'c1' lies in more than one 'school' group.*row position 0"):
        bh.hlm("y ~ x + (1 | school) + (1 | class)", moved, missing="impute")


def test_a_model_without_missing_responses_has_nothing_to_impute(sleep_imputed):
    data, *_ = sleep_imputed
    model = bh.hlm(SLEEP, data, missing="impute")
    assert model.design.missing_responses is None
    post = _sample(model)
    with pytest.raises(ValueError, match="no missing responses to impute: its data has a response in every row"):
        bh.impute(model, post)
    with pytest.raises(ValueError, match="compiled with missing='raise'"):
        bh.impute(bh.hlm(SLEEP, data), post)


# ------------------------------------------------------------------------------ the fit
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_em_with_missing_responses_is_em_on_the_observed_rows(sleep_imputed, method):
    _, holed, hidden, model, _ = sleep_imputed
    observed = bh.hlm(SLEEP, holed.drop(index=hidden).reset_index(drop=True))
    fit, ref = bh.fit_em(model, method), bh.fit_em(observed, method)
    assert fit.n_obs == ref.n_obs == len(holed) - len(hidden)
    for name in ("fixed", "fixed_se", "sd", "corr", "sigma", "loglik", "variance_se"):
        assert getattr(fit, name) == getattr(ref, name), name
    np.testing.assert_array_equal(fit.group_means, ref.group_means)
    assert fit.n_missing == len(hidden) and ref.n_missing == 0
    assert f"missing responses: {len(hidden)} rows, ignored" in fit.summary()
    assert "missing at random" in fit.summary()
    assert "missing responses" not in ref.summary()


def test_the_model_keeps_the_rows_aside(sleep_imputed):
    data, holed, hidden, model, post = sleep_imputed
    missing = model.design.missing_responses
    np.testing.assert_array_equal(missing.rows, hidden)
    np.testing.assert_array_equal(model.design.kept_rows, np.setdiff1d(np.arange(len(data)), hidden))
    np.testing.assert_array_equal(missing.F[:, 1], data["days"].to_numpy()[hidden])
    assert model.design.n_dropped == 0 and model.n_obs == len(data) - len(hidden)
    assert "308" not in set(model.design.group_labels)  # a subject with no observed response
    np.testing.assert_array_equal(missing.factor_labels[0], data["subject"].astype(str).to_numpy()[hidden])
    # identity, record, with_data and model_from: the model of the observed rows
    assert model.identity() == bh.hlm(SLEEP, holed, missing="drop").identity()
    assert model.record()["missing"] == "impute"
    again = model.with_data(holed)
    np.testing.assert_array_equal(again.design.missing_responses.rows, hidden)
    same = bh.model_from(post, holed)
    assert same.options["missing"] == "impute" and same.identity() == model.identity()
    np.testing.assert_array_equal(bh.impute(same, post, seed=4).imputed["reaction"],
                                  bh.impute(model, post, seed=4).imputed["reaction"])


# ------------------------------------------------------------------------------ the draws
def test_imputed_group_layout(sleep_imputed):
    data, _, hidden, model, post = sleep_imputed
    out = bh.impute(model, post, seed=2)
    da = out.imputed["reaction"]
    assert da.dims == ("chain", "draw", "missing_obs")
    np.testing.assert_array_equal(da["missing_obs"], hidden)
    assert da.sizes["chain"] == post.posterior.sizes["chain"] and da.sizes["draw"] == post.posterior.sizes["draw"]
    assert np.all(np.isfinite(da.values))
    # the observed rows and the imputed ones are the data's rows, each once
    rows = np.concatenate([out.observed_data["obs"].values, da["missing_obs"].values])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(data)))
    # bh.sample imputes already; impute returns a copy with the group replaced, and again replaces it
    assert "imputed" in post.children and out is not post
    assert not np.array_equal(post.imputed["reaction"].values, da.values)
    again = bh.impute(model, out, seed=2)
    np.testing.assert_array_equal(again.imputed["reaction"], da)


def test_a_group_whose_responses_are_all_missing_gets_draws(sleep_imputed):
    """Subject 308 has no observed response: its rows get draws with the between-subject spread.

    Given a posterior draw, a new subject's response at day 9 is the fixed part plus a new
    intercept and 9 x a new slope plus noise, so standardised by that draw's SD,
    ``sqrt(sigma^2 + sd0^2 + 81 sd1^2 + 18 rho sd0 sd1)``, it is an exact i.i.d. N(0, 1) sample
    over the draws; a row of an observed subject standardised by sigma around its subject's
    coefficients likewise. Two Kolmogorov-Smirnov tests at ``ALPHA / 2`` each (fixed seeds).
    """
    from scipy import stats

    data, _, hidden, model, post = sleep_imputed
    draws = _flat(bh.impute(model, post, seed=3).imputed["reaction"])
    subject = data["subject"].astype(str).to_numpy()[hidden]
    days = data["days"].to_numpy()[hidden]
    assert np.all(np.isfinite(draws[:, subject == "308"]))
    p = post.posterior
    a, sigma = _flat(p["fixed"]), p["sigma"].values.reshape(-1)
    sd, rho = _flat(p["subject_sd"]), _flat(p["subject_corr"])[:, 0]
    new = np.flatnonzero((subject == "308") & (days == 9))[0]
    sd_new = np.sqrt(sigma**2 + sd[:, 0] ** 2 + 81 * sd[:, 1] ** 2 + 18 * rho * sd[:, 0] * sd[:, 1])
    z_new = (draws[:, new] - (a[:, 0] + 9 * a[:, 1])) / sd_new
    assert stats.kstest(z_new, "norm").pvalue > ALPHA / 2
    known = np.flatnonzero(subject != "308")[0]
    b = _flat(p["subject_effect"].sel(subject=subject[known]))
    z_known = (draws[:, known] - (a[:, 0] + b[:, 0] + days[known] * (a[:, 1] + b[:, 1]))) / sigma
    assert stats.kstest(z_known, "norm").pvalue > ALPHA / 2
    assert np.std(draws[:, new]) > 1.5 * np.std(draws[:, known])


def _nested_data(seed=0):
    """Three levels (school > class > rows), precision weights, an offset column; labels unique within a school."""
    rng = np.random.default_rng(seed)
    rows = [(f"s{s}", f"c{c}") for s in range(6) for c in range(3) for _ in range(4)]
    school, klass = (np.array(col) for col in zip(*rows, strict=True))
    n = school.size
    u_school = dict(zip([f"s{s}" for s in range(6)], rng.normal(0, 1.0, 6), strict=True))
    x = rng.normal(size=n)
    w = rng.uniform(0.5, 3.0, size=n)
    y = 2 + 0.5 * x + np.array([u_school[s] for s in school]) + rng.normal(0, 0.7, n) / np.sqrt(w)
    return pd.DataFrame({"y": y, "x": x, "school": school, "class": klass, "w": w, "o": rng.normal(size=n)})


@pytest.mark.parametrize("formula, weights", [
    ("y ~ x + (1 | school/class)", "w"),
    ("y ~ x + offset(o) + (x | school) + (1 | school:class)", None),
    ("y ~ x + (1 | school) + (1 | class)", "w"),  # labels c0..c2 in every school: crossed
])
def test_draws_are_predictions_for_the_missing_rows(formula, weights):
    """Nested and crossed factors, weights and offsets: impute(seed) is predict(the missing rows, seed).

    Missing: a whole class of a known school (a new class), a whole school (new school and new
    classes) and scattered rows of observed classes.
    """
    data = _nested_data()
    hidden = np.concatenate([np.flatnonzero((data["school"] == "s1") & (data["class"] == "c2")),
                             np.flatnonzero(data["school"] == "s4"), [0, 13, 30, 62]])
    holed = data.assign(y=data["y"].where(~data.index.isin(hidden)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.NestingWarning)
        model = bh.hlm(formula, holed, weights=weights, missing="impute")
    post = _sample(model, seed=5)
    imputed = bh.impute(model, post, seed=9).imputed["y"]
    rows = imputed["missing_obs"].values
    np.testing.assert_array_equal(rows, np.sort(hidden))
    predicted = bh.predict(model, post, data.iloc[rows], seed=9, weights=weights)
    np.testing.assert_array_equal(imputed.values, predicted.values)
    assert np.all(np.isfinite(imputed.values))


def test_the_offset_is_added_back():
    """A model with offset(o) imputes (y - o) as the model of y - o does, plus o."""
    data = _nested_data(1)
    hidden = np.array([2, 9, 40, 41, 42, 43])
    holed = data.assign(y=data["y"].where(~data.index.isin(hidden)))
    with_offset = bh.hlm("y ~ x + offset(o) + (1 | school)", holed, missing="impute")
    minus = bh.hlm("r ~ x + (1 | school)", holed.assign(r=holed["y"] - holed["o"]), missing="impute")
    a = bh.impute(with_offset, _sample(with_offset, seed=3), seed=8).imputed["y"].values
    b = bh.impute(minus, _sample(minus, seed=3), seed=8).imputed["r"].values
    np.testing.assert_allclose(a - data["o"].to_numpy()[hidden], b, rtol=1e-12, atol=1e-12)


def test_shifted_and_scaled_responses_move_the_draws(sleep_imputed):
    """Response x 1000 + 1e6, same seeds: every imputed draw is the base draw x 1000 + 1e6.

    The kernels work in the standardised basis, so both chains are the same up to rounding of
    the shift and scale (found: 3e-13 relative).
    """
    _, holed, _, model, post = sleep_imputed
    moved = bh.hlm(SLEEP, holed.assign(reaction=holed["reaction"] * 1000 + 1e6), missing="impute")
    base = bh.impute(model, post, seed=6).imputed["reaction"].values
    other = bh.impute(moved, _sample(moved), seed=6).imputed["reaction"].values
    np.testing.assert_allclose((other - 1e6) / 1000, base, rtol=1e-9)


# ------------------------------------------------------------------------------ calibration
def test_imputation_is_calibrated():
    """SBC for imputation: hidden responses of data simulated from the prior rank uniformly among their draws.

    Random intercepts on 10 groups of 4 rows with precision weights between 0.25 and 4; 8 of
    the 40 responses (20%) are hidden: every row of one group (a group with no observed
    response) and one row in each of four others. Each of 200 simulations draws the parameters
    from the prior and a response given them, samples the posterior of the observed rows (2
    chains x 300 after 300 warm-up sweeps), imputes, and ranks each hidden true response among
    99 evenly thinned imputed draws. Per hidden row the ranks are i.i.d. across simulations and
    uniform on 0 .. 99 exactly when the imputation draws from the right conditional;
    ``SBCResult.uniformity`` tests them (chi-square on 10 bins and the mean rank, Bonferroni),
    each row at ``ALPHA / 8``: the test fails by chance with probability below ``ALPHA`` = 1e-3.
    The same run with the weights left out of the noise, or with the coefficients of the group
    with no observed response left at zero, fails (smallest p-values 7e-10 and 6e-19).
    """
    rng = np.random.default_rng(20)
    g = np.repeat([f"g{j}" for j in range(10)], 4)
    data = pd.DataFrame({"y": rng.normal(size=40), "x": rng.normal(size=40), "g": g, "w": rng.uniform(0.25, 4, 40)})
    hidden = np.array([0, 5, 14, 23, 36, 37, 38, 39])
    priors = {"fixed": bh.Normal(0, 2), "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1)}
    template = bh.hlm("y ~ x + (1 | g)", data, priors=priors, weights="w")
    n_draws, records = 99, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        for _ in range(200):
            truth = simulate_response(template, draw_from_prior(template, rng), rng)
            holed = data.assign(y=np.where(np.isin(np.arange(40), hidden), np.nan, truth))
            model = bh.hlm("y ~ x + (1 | g)", holed, priors=priors, weights="w", missing="impute")
            post = bh.sample(model, chains=2, warmup=300, draws=300, seed=int(rng.integers(2**31)), progress=False,
                             log_likelihood=False)
            draws = _flat(bh.impute(model, post, seed=int(rng.integers(2**31))).imputed["y"])
            keep = np.linspace(0, draws.shape[0] - 1, n_draws).round().astype(int)
            records.append({f"y[{i}]": int(np.sum(draws[keep, j] < truth[i])) for j, i in enumerate(hidden)})
    table = SBCResult(ranks=pd.DataFrame.from_records(records), n_draws=n_draws).uniformity()
    bad = table[table["p_value"] < ALPHA / len(table)]
    assert bad.empty, f"non-uniform ranks of the hidden responses:\n{table}"
