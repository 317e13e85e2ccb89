"""sample(): the ArviZ result, reproducibility, options, interruption and argument checks."""

import importlib
import json

import numpy as np
import pytest
import xarray as xr

import bayeshlm as bh

sample_module = importlib.import_module("bayeshlm.sample")  # bayeshlm.sample is the function


@pytest.fixture(scope="module")
def sleep_model():
    return bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))


@pytest.fixture(scope="module")
def sleep_post(sleep_model):
    return bh.sample(sleep_model, draws=200, warmup=200, chains=3, seed=5, progress=False)


def test_groups_dims_and_coords(sleep_post, sleep_model):
    dt = sleep_post
    assert isinstance(dt, xr.DataTree)
    assert set(dt.children) == {"posterior", "sample_stats", "log_likelihood", "log_prior", "observed_data",
                                "constant_data"}
    post = dt.posterior
    assert post.sizes["chain"] == 3 and post.sizes["draw"] == 200
    assert post["fixed"].dims == ("chain", "draw", "fixed_term")
    assert list(post["fixed_term"].values) == ["Intercept", "days"]
    assert post["sigma"].dims == ("chain", "draw")
    assert post["subject_sd"].dims == ("chain", "draw", "subject_coef")
    assert list(post["subject_coef"].values) == ["Intercept", "days"]
    assert post["subject_corr"].dims == ("chain", "draw", "subject_corr_pair")
    assert list(post["subject_corr_pair"].values) == ["Intercept,days"]
    assert post["subject_effect"].dims == ("chain", "draw", "subject", "subject_coef")
    labels = list(post["subject"].values)
    assert labels[:3] == ["308", "309", "310"] and len(labels) == 18
    assert set(dt.sample_stats.data_vars) == {"lp", "accept_rate", "theta"}
    assert dt.sample_stats["theta"].dims == ("chain", "draw", "theta_index")
    assert list(dt.sample_stats["theta_index"].values) == [
        "log_sigma", "tau[Intercept]", "tau[days]", "z[Intercept,days]"]
    assert dt.log_likelihood["reaction"].dims == ("chain", "draw", "obs")
    assert dt.observed_data["reaction"].shape == (180,)
    cd = dt.constant_data
    assert cd["subject"].values[cd["subject_index"].values[0]] == "308"
    assert not cd["subject_index"].values.flags.writeable  # the model's own codes, shared read-only
    assert dt.attrs["log_likelihood"] == "pointwise"
    settings = json.loads(dt.attrs["sampler"])
    assert settings["seed"] == 5 and settings["chains"] == 3 and settings["method"] == "mh"
    versions = json.loads(dt.attrs["versions"])
    assert {"bayeshlm", "numpy", "numba", "arviz"} <= set(versions)
    assert "sd[days]" in json.loads(dt.attrs["priors"])
    assert dt.attrs["formula"] == sleep_model.formula


def test_correlations_and_sds_are_valid(sleep_post):
    corr = sleep_post.posterior["subject_corr"].values
    sd = sleep_post.posterior["subject_sd"].values
    assert np.all(np.abs(corr) <= 1) and np.all(sd >= 0)


def test_pointwise_log_likelihood_is_the_normal_density(sleep_post, sleep_model):
    from scipy.stats import norm

    post = sleep_post.posterior.isel(chain=1, draw=17)
    d = sleep_model.design
    mu = d.F @ post["fixed"].values + np.einsum("ik,ik->i", d.X, post["subject_effect"].values[d.group_idx])
    expected = norm.logpdf(d.y, mu, float(post["sigma"]))
    got = sleep_post.log_likelihood["reaction"].isel(chain=1, draw=17).values
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_group_log_likelihood_sums_the_pointwise_one(sleep_model, sleep_post):
    by_group = bh.sample(sleep_model, draws=200, warmup=200, chains=3, seed=5, progress=False,
                         log_likelihood="group")
    assert by_group.attrs["log_likelihood"] == "group"
    ll = by_group.log_likelihood["reaction"]
    assert ll.dims == ("chain", "draw", "subject")
    point = sleep_post.log_likelihood["reaction"].values
    summed = np.zeros(ll.shape)
    np.add.at(summed, (slice(None), slice(None), sleep_model.design.group_idx), point)
    np.testing.assert_allclose(ll.values, summed, rtol=1e-10)


def test_same_seed_same_draws_serial_equals_threaded(sleep_model):
    kw = dict(draws=100, warmup=100, chains=3, seed=42, progress=False, log_likelihood=False)
    serial = bh.sample(sleep_model, n_threads=1, **kw)
    threaded = bh.sample(sleep_model, n_threads=3, **kw)
    again = bh.sample(sleep_model, n_threads=2, **kw)
    for name in serial.posterior.data_vars:
        np.testing.assert_array_equal(serial.posterior[name].values, threaded.posterior[name].values)
        np.testing.assert_array_equal(serial.posterior[name].values, again.posterior[name].values)
    other = bh.sample(sleep_model, n_threads=1, **{**kw, "seed": 43})
    assert not np.array_equal(serial.posterior["fixed"].values, other.posterior["fixed"].values)


def test_chains_are_prefixes_of_longer_runs_with_more_chains(sleep_model):
    # chain c uses the c-th child of SeedSequence(seed): adding chains leaves the first ones alone
    kw = dict(draws=50, warmup=50, seed=3, progress=False, log_likelihood=False)
    two = bh.sample(sleep_model, chains=2, **kw)
    three = bh.sample(sleep_model, chains=3, **kw)
    np.testing.assert_array_equal(two.posterior["fixed"].values, three.posterior["fixed"].values[:2])


def test_gibbs_method_and_thinning(sleep_model):
    post = bh.sample(sleep_model, draws=60, warmup=100, chains=2, thin=3, seed=1, method="gibbs",
                     progress=False)
    assert post.posterior.sizes["draw"] == 60
    assert json.loads(post.attrs["sampler"])["method"] == "gibbs"
    assert np.all(np.isfinite(post.posterior["sigma"].values))


def test_without_group_draws(sleep_model):
    post = bh.sample(sleep_model, draws=50, warmup=50, chains=2, seed=1, progress=False,
                     keep_group_draws=False, log_likelihood=False)
    assert "subject_effect" not in post.posterior
    assert "log_likelihood" not in post.children
    assert post.attrs["log_likelihood"] == "none"


def test_group_draw_subset_and_moments(sleep_model):
    """A subset of groups at full length plus running moments of all groups: the same chains
    as keeping everything (same seed), so the subset equals the full draws' first groups and
    the moments equal the mean and SD of the full draws (up to rounding)."""
    full = bh.sample(sleep_model, draws=80, warmup=50, chains=2, seed=3, progress=False)
    part = bh.sample(sleep_model, draws=80, warmup=50, chains=2, seed=3, progress=False,
                     keep_group_draws=4, group_moments=True)
    assert "log_likelihood" not in part.children  # "auto" stores none without all groups
    eff = full.posterior["subject_effect"]
    np.testing.assert_array_equal(part.posterior["subject_effect"].values, eff.values[:, :, :4])
    assert list(part.posterior["subject"].values) == list(eff["subject"].values[:4])
    np.testing.assert_array_equal(part.posterior["fixed"].values, full.posterior["fixed"].values)
    mom = part["group_moments"]
    assert list(mom["n_draws"].values) == [80, 80]
    np.testing.assert_allclose(mom["subject_effect_mean"].values,
                               eff.mean("draw").transpose("chain", "subject", "subject_coef").values,
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mom["subject_effect_sd"].values,
                               eff.std("draw", ddof=1).transpose("chain", "subject", "subject_coef").values,
                               rtol=1e-8)
    assert list(mom["subject"].values) == list(eff["subject"].values)


def test_group_moments_on_three_levels():
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))
    post = bh.sample(model, draws=60, warmup=60, chains=2, seed=2, progress=False,
                     keep_group_draws=2, group_moments=True)
    mom = post["group_moments"]
    for g, n in (("batch_cask", 30), ("batch", 10)):
        assert mom[f"{g}_effect_mean"].sizes[g] == n
        assert post.posterior[f"{g}_effect"].sizes[g] == 2
        np.testing.assert_allclose(
            mom[f"{g}_effect_mean"].values[:, :2],
            post.posterior[f"{g}_effect"].mean("draw").transpose("chain", g, f"{g}_coef").values,
            rtol=1e-10, atol=1e-10)


def test_known_variances_have_no_sigma():
    model = bh.hlm("y ~ 1 + (1 | school)", bh.load_dataset("eight_schools"), known_sd="sigma")
    post = bh.sample(model, draws=100, warmup=100, chains=2, seed=1, progress=False)
    assert "sigma" not in post.posterior
    np.testing.assert_allclose(post.constant_data["known_sd"].values,
                               bh.load_dataset("eight_schools")["sigma"].values)


def test_interrupt_returns_draws_so_far(sleep_model, monkeypatch):
    calls = {"n": 0}
    original = sample_module._Progress.__call__

    def interrupting(self, chain, n):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C after chain 0's third chunk (at least 10 sweeps each)
            raise KeyboardInterrupt
        return original(self, chain, n)

    monkeypatch.setattr(sample_module._Progress, "__call__", interrupting)
    post = bh.sample(sleep_model, draws=100000, warmup=5, chains=2, seed=1, progress=False, n_threads=1)
    assert post.attrs["interrupted"] == 1
    # run one after the other, chain 1 had not started: the result is chain 0's draws so far
    assert post.posterior.sizes["chain"] == 1
    assert 25 <= post.posterior.sizes["draw"] < 100000
    assert np.all(np.isfinite(post.posterior["fixed"].values))
    # the draws are those of an uninterrupted run with the same seed, up to that point
    full = bh.sample(sleep_model, draws=post.posterior.sizes["draw"], warmup=5, chains=1, seed=1,
                     progress=False, log_likelihood=False)
    np.testing.assert_array_equal(post.posterior["fixed"].values, full.posterior["fixed"].values)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"draws": 0}, ValueError, "draws must be >= 1"),
        ({"chains": 0}, ValueError, "chains must be >= 1"),
        ({"warmup": -1}, ValueError, "warmup must be >= 0"),
        ({"thin": 0}, ValueError, "thin must be >= 1"),
        ({"draws": 10.5}, TypeError, "draws must be an integer"),
        ({"seed": 1.5}, TypeError, "seed must be a non-negative integer"),
        ({"seed": "7"}, TypeError, "seed must be a non-negative integer"),
        ({"seed": True}, TypeError, "seed must be a non-negative integer"),
        ({"method": "nuts"}, ValueError, "method must be one of"),
        ({"mh_steps": 0}, ValueError, "mh_steps must be >= 1"),
        ({"log_likelihood": "yes"}, ValueError, "log_likelihood must be"),
        ({"keep_group_draws": False, "log_likelihood": "pointwise"}, ValueError, "needs the draws of all groups"),
        ({"keep_group_draws": 3, "log_likelihood": "group"}, ValueError, "needs the draws of all groups"),
        ({"keep_group_draws": 0}, ValueError, "keep_group_draws must be >= 1"),
        ({"keep_group_draws": "some"}, TypeError, "keep_group_draws must be True, False or a number"),
    ],
)
def test_bad_arguments(sleep_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        bh.sample(sleep_model, progress=False, **kwargs)


def test_gibbs_needs_enough_groups():
    rng = np.random.default_rng(0)
    data = {"y": rng.normal(size=12), "x": rng.normal(size=12), "z": rng.normal(size=12),
            "g": np.repeat(["a", "b"], 6)}
    model = bh.hlm("y ~ x + z + (x + z | g)", data)
    with pytest.raises(ValueError, match="at least as many groups"):
        bh.sample(model, method="gibbs", progress=False)


def test_fresh_seed_is_recorded(sleep_model, tmp_path):
    post = bh.sample(sleep_model, draws=20, warmup=20, chains=1, progress=False, log_likelihood=False)
    seed = post.attrs["seed"]
    assert 0 <= seed < 2**63
    bh.save(post, tmp_path / "fit.nc")  # netCDF attributes hold 64-bit integers
    assert bh.load(tmp_path / "fit.nc").attrs["seed"] == seed
    again = bh.sample(sleep_model, draws=20, warmup=20, chains=1, seed=seed, progress=False,
                      log_likelihood=False)
    np.testing.assert_array_equal(post.posterior["fixed"].values, again.posterior["fixed"].values)


def test_progress_bar_goes_to_stderr(sleep_model, capsys):
    bh.sample(sleep_model, draws=20, warmup=20, chains=2, seed=1, progress=True, log_likelihood=False)
    captured = capsys.readouterr()
    assert "sampling" in captured.err and captured.out == ""


def test_netcdf_round_trip(sleep_post, tmp_path):
    path = tmp_path / "fit.nc"
    sleep_post.to_netcdf(path)
    back = xr.open_datatree(path)
    for group in sleep_post.children:
        xr.testing.assert_identical(back[group].to_dataset(), sleep_post[group].to_dataset())
    assert back.attrs == sleep_post.attrs


def test_stored_theta_is_the_variance_components(sleep_post, sleep_model):
    """``sample_stats.theta`` holds the sampler's own coordinates: brought to the canonical half, they are
    the posterior's sigma, SDs and correlations encoded again (what evidence used to rebuild)."""
    from bayeshlm.evidence import _theta_draws

    stored = _theta_draws(sleep_post, sleep_model)
    rebuilt = _theta_draws(sleep_post.copy().drop_nodes("sample_stats"), sleep_model)
    np.testing.assert_allclose(stored, rebuilt, rtol=1e-9, atol=1e-9)
