"""The report's rough edges, each fixed: what a user reads and types on the second day of an analysis."""

import warnings

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.evidence import Evidence, bayes_factor, model_sd_priors
from bayeshlm.summary import warn_if_unconverged


@pytest.fixture(scope="module")
def sleep():
    return bh.load_dataset("sleepstudy")


def test_priors_given_as_text_in_python_as_on_the_command_line(sleep):
    text = bh.hlm("reaction ~ days + (1 | subject)", sleep,
                  priors={"sd": "HalfNormal(1)", "fixed[days]": "Normal(0, 5)"})
    objects = bh.hlm("reaction ~ days + (1 | subject)", sleep,
                     priors={"sd": bh.HalfNormal(1), "fixed[days]": bh.Normal(0, 5)})
    assert text.prior_spec == objects.prior_spec
    with pytest.raises(bh.PriorError, match=r"priors\['sd'\].*must be one of"):
        bh.hlm("reaction ~ days + (1 | subject)", sleep, priors={"sd": "__import__('os')"})
    with pytest.raises(bh.PriorError, match=r"priors\['sd'\]: arguments must be numbers"):
        bh.hlm("reaction ~ days + (1 | subject)", sleep, priors={"sd": "HalfNormal(x)"})


def test_the_correlation_prior_is_listed_only_where_there_are_correlations(sleep):
    intercepts = bh.hlm("reaction ~ days + (1 | subject)", sleep).prior_descriptions()
    slopes = bh.hlm("reaction ~ days + (days | subject)", sleep).prior_descriptions()
    assert not any(line.startswith("corr") for line in intercepts)
    assert any(line.startswith("corr: LKJ") for line in slopes)
    # a model's identity, recorded in saved results, still lists every prior: old files stay comparable
    model = bh.hlm("reaction ~ days + (1 | subject)", sleep)
    assert any(line.startswith("corr: LKJ") for line in model.identity()["priors"])


def test_em_summary_counts_rows_and_groups_and_prints_p_values_readably(sleep, tmp_path):
    fit = bh.fit_em(bh.hlm("reaction ~ days + (days | subject)", sleep))
    text = fit.summary()
    assert "observations: 180; groups: subject 18" in text
    assert "e-297" not in text and "< 1e-16" in text  # the intercept's z of 36.8
    assert "1.27e-11" in text  # the slope's p to three digits
    assert fit.fixed_table()["p_value"].dtype == float  # the table keeps the numbers
    pastes = bh.load_dataset("pastes")
    nested = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes))
    assert "observations: 60; groups: batch:cask 30, batch 10" in nested.summary()
    # saved and read back, the counts stay
    assert nested.n_groups == {"batch:cask": 30, "batch": 10}
    assert bh.load(bh.save(nested, tmp_path / "fit.nc")).n_groups == nested.n_groups


def test_lrt_hierarchy_names_each_factor_s_coefficients(sleep):
    model = bh.hlm("reaction ~ days + (days | subject)", sleep)
    test = bh.lrt_hierarchy(model, bh.fit_em(model))
    assert "(random Intercept and days by subject)" in str(test)
    pastes = bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))
    text = str(bh.lrt_hierarchy(pastes, bh.fit_em(pastes)))
    assert "(random Intercept by batch:cask, Intercept by batch)" in text
    assert "|" not in text


def test_bayes_factor_is_a_result_with_a_note_on_the_tested_component_s_prior(sleep):
    small = bh.hlm("reaction ~ days + (1 | subject)", sleep)
    large = bh.hlm("reaction ~ days + (days | subject)", sleep)
    chosen_small = bh.hlm("reaction ~ days + (1 | subject)", sleep, priors={"sd": "HalfNormal(50)"})
    chosen_large = bh.hlm("reaction ~ days + (days | subject)", sleep, priors={"sd": "HalfNormal(50)"})
    vague_large = bh.hlm("reaction ~ days + (days | subject)", sleep, priors={"sd": bh.HalfCauchy(10)})

    def ev(model, value):
        return Evidence(value, 0.03, 10, model_sd_priors(model))

    result = bayes_factor(ev(large, -870.0), ev(small, -872.5))
    log_bf, se = result  # unpacks as the pair it used to be
    assert log_bf == pytest.approx(2.5) and se == pytest.approx(0.03 * np.sqrt(2))
    assert result.bf == pytest.approx(np.exp(2.5))
    # the default prior of the tested SD (days) is named, the shared one (Intercept) is not
    assert "sd[days] ~ HalfStudentT" in result.note and "sd[Intercept]" not in result.note
    assert "moves with that prior" in str(result)
    # chosen, proper priors: no note; a vague one chosen by the user: a note
    assert bayes_factor(ev(chosen_large, -870.0), ev(chosen_small, -872.5)).note == ""
    assert "sd[days] ~ HalfCauchy" in bayes_factor(ev(vague_large, -870.0), ev(chosen_small, -872.5)).note
    # the hierarchy against the pooled model tests every SD
    pooled = bayes_factor(ev(large, -870.0), Evidence(-900.0, 0.0, 0, {}))
    assert "sd[Intercept]" in pooled.note and "sd[days]" in pooled.note


def test_sample_warns_when_the_chains_disagree(sleep):
    model = bh.hlm("reaction ~ days + (days | subject)", sleep)
    with pytest.warns(bh.ConvergenceWarning, match=r"R-hat .* for "):
        bh.sample(model, chains=4, draws=8, warmup=0, seed=2, progress=False)
    post = bh.sample(model, chains=4, draws=1000, warmup=500, seed=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", bh.ConvergenceWarning)
        warn_if_unconverged(post)  # a converged run: silent
    # one chain of the slope moved by ten posterior SDs: named, with its R-hat
    fixed = post.posterior["fixed"]
    shifted = fixed.copy(data=fixed.values.copy())
    sd = float(fixed.sel(fixed_term="days").std())
    shifted.values[0, :, 1] += 10 * sd
    post.posterior["fixed"] = shifted
    with pytest.warns(bh.ConvergenceWarning, match=r"fixed\[days\]"):
        warn_if_unconverged(post)
