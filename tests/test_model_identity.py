"""A result knows its model: every function taking a model and a result refuses a mismatch.

Posteriors (``attrs["model"]``) and EM fits (``EMResult.model``) record the identity of the
model they were computed from (formula, terms, groups, priors, rows) and how to compile it
again (``model_record``); ``bayeshlm.model_from`` turns a saved result back into its model.
"""

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.model import ModelMismatchError

FORMULA = "reaction ~ days + (days | subject)"
OPTS = {"draws": 100, "warmup": 100, "chains": 2, "seed": 4, "progress": False}


@pytest.fixture(scope="module")
def sleep():
    return bh.load_dataset("sleepstudy")


@pytest.fixture(scope="module")
def fitted(sleep):
    model = bh.hlm(FORMULA, sleep, priors={"fixed": bh.Normal(250, 100)})
    return model, bh.sample(model, **OPTS), bh.fit_em(model)


def _others(sleep):
    """Models that differ from the fitted one in one respect each, with the words naming it."""
    return {
        "formula": (bh.hlm("reaction ~ days + (1 | subject)", sleep, priors={"fixed": bh.Normal(250, 100)}),
                    "formula"),
        "rows": (bh.hlm(FORMULA, sleep.iloc[:170], priors={"fixed": bh.Normal(250, 100)}), "number of observations"),
        "priors": (bh.hlm(FORMULA, sleep, priors={"fixed": bh.Normal(250, 100), "sd": bh.HalfNormal(30)}), "priors"),
        "groups": (bh.hlm(FORMULA, sleep.assign(subject="s" + sleep["subject"].astype(str)),
                          priors={"fixed": bh.Normal(250, 100)}), "group labels"),
    }


def test_results_record_their_model(fitted):
    model, post, fit = fitted
    assert bh.model.result_identity(post) == model.identity()
    assert fit.model == model.identity()
    assert model.fingerprint == bh.hlm(FORMULA, bh.load_dataset("sleepstudy"),
                                       priors={"fixed": bh.Normal(250, 100)}).fingerprint


@pytest.mark.parametrize("which", ["formula", "rows", "priors", "groups"])
def test_every_function_refuses_another_model(sleep, fitted, which):
    model, post, fit = fitted
    other, words = _others(sleep)[which]
    calls = {
        "predict": lambda: bh.predict(other, post, sleep.iloc[:3]),
        "posterior_predictive": lambda: bh.posterior_predictive(other, post),
        "group_log_likelihood": lambda: bh.group_log_likelihood(other, post),
        "marginal_group_log_likelihood": lambda: bh.marginal_group_log_likelihood(other, post),
        "loo": lambda: bh.loo(other, post, by="subject"),
        "marginal_likelihood": lambda: bh.marginal_likelihood(other, post),
        "lrt_hierarchy": lambda: bh.lrt_hierarchy(other, fit),
        "shrinkage_table": lambda: bh.shrinkage_table(post, fit, model=other),
    }
    for name, call in calls.items():
        with pytest.raises(ModelMismatchError, match=f"not computed from this model: they differ in .*{words}"):
            call()
        assert name  # each call raised


def test_posterior_and_fit_of_different_models_are_refused(sleep, fitted):
    _, post, _ = fitted
    other = bh.fit_em(_others(sleep)["priors"][0])
    with pytest.raises(ModelMismatchError, match="the posterior and the EM fit are of different models"):
        bh.compare(post, other)
    with pytest.raises(ModelMismatchError, match="different models"):
        bh.plot_compare(post, other)
    with pytest.raises(ModelMismatchError, match="different models"):
        bh.shrinkage_table(post, other)


def test_the_right_model_is_accepted(sleep, fitted):
    model, post, fit = fitted
    assert bh.predict(model, post, sleep.iloc[:3]).sizes["obs"] == 3
    assert bh.compare(post, fit).shape[0] > 0
    assert np.isfinite(bh.marginal_likelihood(model, post).log_marginal_likelihood)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_saved_result_compiles_its_model_again(tmp_path, sleep, fitted, suffix):
    model, post, fit = fitted
    loaded = bh.load(bh.save(post, tmp_path / f"post{suffix}"))
    again = bh.model_from(loaded, sleep)
    assert again.identity() == model.identity()
    np.testing.assert_allclose(again.stats.Xty, model.stats.Xty)
    pred = bh.predict(again, loaded, sleep.iloc[:4], kind="mean")
    np.testing.assert_allclose(pred.values, bh.predict(model, post, sleep.iloc[:4], kind="mean").values)
    loaded_fit = bh.load(bh.save(fit, tmp_path / f"fit{suffix}"))
    assert bh.model_from(loaded_fit, sleep).identity() == model.identity()
    # with other data: the same specification there (and, as a different model, refused with the old result)
    other = bh.model_from(loaded, sleep.iloc[:100])
    assert other.formula == model.formula and other.n_obs == 100
    with pytest.raises(ModelMismatchError, match="number of observations"):
        bh.predict(other, loaded, sleep.iloc[:3])


def test_default_priors_come_back_where_they_were_set(sleep):
    """The defaults sit at the predictors' means of the data first fitted; model_from keeps them there."""
    model = bh.hlm(FORMULA, sleep)
    fit = bh.fit_em(model)
    again = bh.model_from(fit, sleep)
    assert again.prior_descriptions() == model.prior_descriptions()
    np.testing.assert_allclose(again.priors.fixed.prec, model.priors.fixed.prec)
    shifted = bh.model_from(fit, sleep.assign(days=sleep["days"] + 100))
    # on other data the priors keep their values, and the centring at the first data's means
    assert shifted.prior_descriptions() == model.prior_descriptions()


def test_known_variances_as_a_column_or_an_array():
    schools = bh.load_dataset("eight_schools")
    by_column = bh.fit_em(bh.hlm("y ~ 1 + (1 | school)", schools, known_sd="sigma"))
    assert bh.model_from(by_column, schools).sigma_known
    by_array = bh.fit_em(bh.hlm("y ~ 1 + (1 | school)", schools, known_sd=schools["sigma"].to_numpy()))
    with pytest.raises(ValueError, match="known level-1 SDs or variances given as an array"):
        bh.model_from(by_array, schools)
    again = bh.model_from(by_array, schools, known_sd=schools["sigma"].to_numpy())
    assert again.identity() == by_array.model


def test_builder_models_come_back(sleep):
    model = (bh.Hierarchy("reaction", ["days"]).level("subject", {"Intercept": bh.Equation(), "days": bh.Equation()})
             .compile(sleep))
    fit = bh.fit_em(model)
    again = bh.model_from(fit, sleep)
    assert again.identity() == model.identity()
    assert again.equations == model.equations
