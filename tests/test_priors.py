"""Priors: defaults scaled to the data, user overrides, validation, and every kind in use."""

import json

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.basis import Basis
from bayeshlm.priors import PriorError


@pytest.fixture(scope="module")
def sleep():
    return bh.load_dataset("sleepstudy")


def test_defaults_scale_with_the_response(sleep):
    base = bh.hlm("reaction ~ days + (days | subject)", sleep)
    scaled = sleep.assign(reaction=sleep["reaction"] * 1000.0)
    big = bh.hlm("reaction ~ days + (days | subject)", scaled)
    for key in ("sigma", "sd[Intercept]", "sd[days]"):
        assert big.prior_spec[key].sigma == pytest.approx(1000.0 * base.prior_spec[key].sigma)
    assert big.prior_spec["fixed[days]"].sigma == pytest.approx(1000.0 * base.prior_spec["fixed[days]"].sigma)
    assert isinstance(base.prior_spec["corr"], bh.LKJ) and base.prior_spec["corr"].eta == 1.0


def test_user_priors_override_general_then_specific(sleep):
    model = bh.hlm(
        "reaction ~ days + (days | subject)", sleep,
        priors={"fixed": bh.Flat(), "fixed[days]": bh.Normal(10, 5), "sd": bh.HalfNormal(50),
                "sd[days]": bh.HalfCauchy(10), "sigma": bh.Uniform(200), "corr": bh.LKJ(2)},
    )
    spec = model.prior_spec
    assert isinstance(spec["fixed[Intercept]"], bh.Flat)
    assert spec["fixed[days]"] == bh.Normal(10, 5)
    assert spec["sd[Intercept]"] == bh.HalfNormal(50)
    assert spec["sd[days]"] == bh.HalfCauchy(10)
    # in the kernels' basis the flat intercept and Normal(10, 5) slope become a Gaussian of
    # rank one: the slope's coordinate is the user's slope, sy / sx times the kernel's
    basis = model.basis
    fixed = model.priors.fixed
    assert fixed.n_flat == 1
    G, g = basis.fixed_map_to(Basis.identity(2, 2))
    np.testing.assert_allclose(fixed.prec, np.outer(G[1], G[1]) / 25, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fixed.lin, G[1] * (10 - g[1]) / 25, rtol=1e-12)
    assert model.priors.block_eta[0] == 2.0


@pytest.mark.parametrize(
    ("priors", "match"),
    [
        ({"slope": bh.Flat()}, "unknown prior key 'slope'"),
        ({"fixed[age]": bh.Flat()}, "unknown prior key 'fixed\\[age\\]'"),
        ({"sd": bh.Normal(0, 1)}, "must be one of"),
        ({"fixed": bh.HalfNormal(1)}, "must be Normal or Flat"),
        ({"corr": bh.HalfNormal(1)}, "must be LKJ"),
        ({"cov": bh.LKJ(1)}, "must be InverseWishart"),
        ({"cov": bh.InverseWishart(1.0, 1.0)}, "nu must exceed 1"),
        ({"cov": bh.InverseWishart(4.0, np.eye(3))}, "must be 2 x 2"),
    ],
)
def test_bad_priors(sleep, priors, match):
    with pytest.raises(PriorError, match=match):
        bh.hlm("reaction ~ days + (days | subject)", sleep, priors=priors)


@pytest.mark.parametrize(
    "make",
    [
        lambda: bh.Normal(0, -1),
        lambda: bh.HalfNormal(0),
        lambda: bh.HalfStudentT(nu=0, sigma=1),
        lambda: bh.HalfCauchy(float("nan")),
        lambda: bh.Uniform(-3),
        lambda: bh.InverseGamma(1, 0),
        lambda: bh.LKJ(0),
        lambda: bh.InverseWishart(-1),
    ],
)
def test_invalid_parameters(make):
    with pytest.raises(PriorError, match="must be"):
        make()


def test_sigma_prior_with_known_variances_is_an_error():
    with pytest.raises(PriorError, match="level-1 variances are known"):
        bh.hlm("y ~ 1 + (1 | school)", bh.load_dataset("eight_schools"), known_sd="sigma",
               priors={"sigma": bh.HalfNormal(1)})


@pytest.mark.parametrize(
    "priors",
    [
        {"sd": bh.HalfNormal(30), "sigma": bh.HalfNormal(50)},
        {"sd": bh.HalfStudentT(4, 30), "sigma": bh.HalfCauchy(30)},
        {"sd": bh.Uniform(200), "sigma": bh.Uniform(200)},
        {"sd": bh.InverseGamma(1, 10), "sigma": bh.InverseGamma(1, 10)},
        {"sd": bh.Flat(), "sigma": bh.Flat(), "fixed": bh.Flat()},
        {"cov": bh.InverseWishart(3.0, np.diag([100.0, 1.0])), "corr": bh.LKJ(4)},
    ],
    ids=["half-normal", "half-t/cauchy", "uniform", "inverse-gamma", "flat", "inverse-wishart"],
)
@pytest.mark.parametrize("method", ["mh", "gibbs"])
def test_every_prior_kind_samples(sleep, priors, method):
    model = bh.hlm("reaction ~ days + (days | subject)", sleep, priors=priors)
    post = bh.sample(model, draws=150, warmup=150, chains=2, seed=9, method=method, progress=False,
                     log_likelihood=False)
    sd = post.posterior["subject_sd"].values
    assert np.all(np.isfinite(sd)) and np.all(sd > 0)
    assert json.loads(post.attrs["priors"])  # recorded
    if "sd" in priors and isinstance(priors["sd"], bh.Uniform):
        assert np.all(sd < 200) and np.all(post.posterior["sigma"].values < 200)
