"""hlm_stats: models compiled from statistics by chunks or Dask partitions equal the in-memory ones."""

import warnings

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.data import DataError


def _assert_same_model(a, b, rtol=1e-11):
    for name, x, y in zip(a.stats._fields, a.stats, b.stats, strict=True):
        np.testing.assert_allclose(y, x, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(x)))),
                                   err_msg=name)
    assert {k: str(v) for k, v in a.prior_spec.items()} == {k: str(v) for k, v in b.prior_spec.items()}
    for name, x, y in zip(a.priors._fields, a.priors, b.priors, strict=True):
        if name == "fixed":
            for x2, y2 in zip(x, y, strict=True):
                np.testing.assert_allclose(y2, x2, rtol=1e-10, atol=1e-10 * max(1.0, float(np.max(np.abs(x2)))))
        else:
            np.testing.assert_allclose(y, x, rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(b.basis.scale, a.basis.scale, rtol=1e-12)
    np.testing.assert_allclose(b.basis.shift, a.basis.shift, rtol=1e-12, atol=1e-12 * np.max(a.basis.scale))
    for x, y in zip(a.structure, b.structure, strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-10)
    assert a.fixed_names == b.fixed_names and a.coef_names == b.coef_names
    assert a.factors == b.factors
    for la, lb in zip(a.design.factor_labels, b.design.factor_labels, strict=True):
        assert list(la) == list(lb)
    assert a.n_obs == b.n_obs and a.design.n_dropped == b.design.n_dropped


@pytest.fixture(scope="module")
def hsb():
    return bh.load_dataset("hsb")


FORMULA = "mathach ~ ses * sector + meanses + (ses | school)"


def test_chunks_equal_in_memory_model_draws_and_fit(hsb):
    full = bh.hlm(FORMULA, hsb)
    part = bh.hlm_stats(FORMULA, hsb, chunk_rows=997)  # chunks cut through schools
    assert full.rows_held and not part.rows_held
    _assert_same_model(full, part)
    opts = {"draws": 200, "warmup": 200, "chains": 2, "seed": 11, "progress": False}
    p_full = bh.sample(full, log_likelihood="group", **opts)
    p_part = bh.sample(part, **opts)  # by default, the group log-likelihood from the statistics
    # same seed, statistics equal to rounding: the same chains to ~1e-8 (rounding, amplified)
    for name in ("fixed", "sigma", "school_sd", "school_corr", "school_effect"):
        np.testing.assert_allclose(p_part.posterior[name].values, p_full.posterior[name].values,
                                   rtol=1e-6, atol=1e-8, err_msg=name)
    assert "observed_data" not in p_part.children and p_part.attrs["log_likelihood"] == "group"
    # the chunks' statistics give each school's log-likelihood as the rows do (the draws agree to ~1e-8)
    np.testing.assert_allclose(p_part.log_likelihood["mathach"].values, p_full.log_likelihood["mathach"].values,
                               rtol=1e-6)
    e_full, e_part = bh.fit_em(full), bh.fit_em(part)
    for k in e_full.fixed:
        assert e_part.fixed[k] == pytest.approx(e_full.fixed[k], rel=1e-8)
        assert e_part.fixed_se[k] == pytest.approx(e_full.fixed_se[k], rel=1e-6)
        assert np.isnan(e_part.robust_se[k])  # needs the rows
    assert e_part.sigma == pytest.approx(e_full.sigma, rel=1e-8)
    with pytest.raises(ValueError, match="needs the rows"):
        bh.sample(part, log_likelihood="pointwise", **opts)


def test_three_levels_in_chunks():
    pastes = bh.load_dataset("pastes")
    formula = "strength ~ 1 + (1 | batch/cask)"
    _assert_same_model(bh.hlm(formula, pastes), bh.hlm_stats(formula, pastes, chunk_rows=7))


def test_categorical_levels_missing_from_first_chunk():
    rng = np.random.default_rng(4)
    n = 600
    df = pd.DataFrame({
        "y": rng.normal(size=n),
        "x": rng.normal(size=n),
        "arm": np.where(np.arange(n) < 200, "a", rng.choice(["a", "b", "c"], size=n)),
        "g": np.repeat([f"g{i}" for i in range(30)], 20),
    })
    formula = "y ~ x + arm + (x | g)"
    full = bh.hlm(formula, df)
    part = bh.hlm_stats(formula, df, chunk_rows=150)  # "b" and "c" first appear in chunk 2
    assert part.fixed_names == ("Intercept", "x", "arm[T.b]", "arm[T.c]")
    _assert_same_model(full, part)


def test_missing_values_raise_with_row_positions_or_drop():
    df = bh.load_dataset("sleepstudy").copy()
    df.loc[[3, 100, 150], "reaction"] = np.nan
    with pytest.raises(DataError, match=r"column 'reaction' has 3 missing .*row positions 3, 100, 150"):
        bh.hlm_stats("reaction ~ days + (days | subject)", df, chunk_rows=50)
    full = bh.hlm("reaction ~ days + (days | subject)", df, missing="drop")
    part = bh.hlm_stats("reaction ~ days + (days | subject)", df, chunk_rows=50, missing="drop")
    assert part.design.n_dropped == 3
    _assert_same_model(full, part)


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("reaction ~ center(days) + (1 | subject)", "stateful transforms"),
        ("reaction ~ Days + (1 | subject)", "column 'Days'.*did you mean 'days'"),
        ("reaction ~ days + (1 | days)", None),
    ],
)
def test_bad_input(formula, match):
    sleep = bh.load_dataset("sleepstudy")
    if match is None:  # a valid but unusual model: both paths agree
        _assert_same_model(bh.hlm(formula, sleep), bh.hlm_stats(formula, sleep, chunk_rows=40))
        return
    with pytest.raises(DataError, match=match):
        bh.hlm_stats(formula, sleep, chunk_rows=40)


def test_crossed_factors_and_single_level_errors():
    df = pd.DataFrame({"y": np.arange(8.0) ** 2, "school": list("aabbaabb"), "cls": list("xyxyxyxy")})
    # every class label in every school, two rows each: crossed, with the nesting suggested, as hlm does
    with pytest.warns(bh.NestingWarning, match=r"\(1 \| school/cls\)"):
        part = bh.hlm_stats("y ~ 1 + (1 | school) + (1 | cls)", df, chunk_rows=3)
    with pytest.warns(bh.NestingWarning):
        _assert_same_model(bh.hlm("y ~ 1 + (1 | school) + (1 | cls)", df), part)
    assert part.crossed
    with pytest.raises(DataError, match="single level"):
        bh.hlm_stats("y ~ 1 + (1 | k)", df.assign(k="one"), chunk_rows=3)


def test_identification_warning_from_statistics():
    df = pd.DataFrame({"y": np.arange(12.0) ** 1.5, "x": np.repeat([1.0, 2.0, 3.0], 4),
                       "g": np.repeat(list("abc"), 4)})
    with pytest.warns(bh.IdentificationWarning, match="constant within every group"):
        bh.hlm_stats("y ~ x + (x | g)", df, chunk_rows=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bh.hlm_stats("y ~ x + (1 | g)", df, chunk_rows=5)
    # a coarser factor: z is constant within each district, x is not
    nested = bh.simulate_nested(levels=(("district", 6), ("school", 3)), rows=(4, 8), seed=5)
    with pytest.warns(bh.IdentificationWarning, match="'z' is constant within every group of 'district'"):
        bh.hlm_stats("y ~ x + z + (z | district) + (1 | district:school)", nested, chunk_rows=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bh.hlm_stats("y ~ x + (x | district) + (1 | district:school)", nested, chunk_rows=7)


def test_known_variances_in_chunks():
    schools = bh.load_dataset("eight_schools")
    full = bh.hlm("y ~ 1 + (1 | school)", schools, known_sd="sigma")
    part = bh.hlm_stats("y ~ 1 + (1 | school)", schools, known_sd="sigma", chunk_rows=3)
    _assert_same_model(full, part)
    assert part.sigma_known and part.moments.obs_var_mean == pytest.approx(full.moments.obs_var_mean)
    opts = {"draws": 100, "warmup": 100, "chains": 2, "seed": 3, "progress": False, "log_likelihood": False}
    want = bh.sample(full, **opts).posterior["school_sd"].values
    # the same chain: the statistics differ by rounding only (the sums are added in another order)
    np.testing.assert_allclose(bh.sample(part, **opts).posterior["school_sd"].values, want, rtol=1e-6,
                               atol=1e-6 * np.max(want))
    # weighted rows, nested groups, chunks cutting through them, variances given as variances
    rng = np.random.default_rng(4)
    df = bh.simulate_nested(levels=(("district", 5), ("school", (2, 4))), rows=(3, 9), seed=6)
    df["v"] = rng.uniform(0.2, 3.0, len(df))
    formula = "y ~ x + (1 | district) + (x | district:school)"
    full = bh.hlm(formula, df, known_var="v")
    _assert_same_model(full, bh.hlm_stats(formula, df, known_var="v", chunk_rows=17), rtol=1e-10)
    assert bh.fit_em(bh.hlm_stats(formula, df, known_var="v", chunk_rows=17)).fixed["x"] == pytest.approx(
        bh.fit_em(full).fixed["x"], rel=1e-8)


def test_known_variances_bad_input():
    schools = bh.load_dataset("eight_schools")
    with pytest.raises(DataError, match="known_sd"):
        bh.hlm_stats("y ~ 1 + (1 | school)", schools.assign(sigma=schools["sigma"] * 0), known_sd="sigma")
    with pytest.raises(DataError, match="'sd'"):
        bh.hlm_stats("y ~ 1 + (1 | school)", schools, known_sd="sd")
    with pytest.raises(ValueError, match="not both"):
        bh.hlm_stats("y ~ 1 + (1 | school)", schools, known_sd="sigma", known_var="sigma")
    with pytest.raises(TypeError, match="must name a column"):
        bh.hlm_stats("y ~ 1 + (1 | school)", schools, known_sd=schools["sigma"].to_numpy())


# --- Dask: Parquet partitions, map-reduce on a LocalCluster ------------------------------------

dd = pytest.importorskip("dask.dataframe", reason="the Dask path needs the 'dask' extra")


@pytest.fixture(scope="module")
def hsb_parquet(tmp_path_factory, hsb):
    folder = tmp_path_factory.mktemp("hsb_parquet")
    bounds = np.linspace(0, len(hsb), 6).astype(int)  # 5 files, cutting through schools
    for k in range(5):
        hsb.iloc[bounds[k]:bounds[k + 1]].to_parquet(folder / f"part-{k}.parquet")
    return folder


def test_parquet_partitions_equal_in_memory(hsb, hsb_parquet):
    full = bh.hlm(FORMULA, hsb)
    part = bh.hlm_stats(FORMULA, str(hsb_parquet))
    _assert_same_model(full, part)
    ddf = dd.read_parquet(str(hsb_parquet))
    assert ddf.npartitions == 5
    _assert_same_model(full, bh.hlm_stats(FORMULA, ddf))
    # a known-variance column read from the files with the others
    weighted = hsb.assign(v=1.0 + hsb["ses"] ** 2)
    folder = hsb_parquet.parent / "hsb_weighted"
    folder.mkdir(exist_ok=True)
    cuts = np.linspace(0, len(weighted), 4).astype(int)
    for k in range(3):
        weighted.iloc[cuts[k]:cuts[k + 1]].to_parquet(folder / f"part-{k}.parquet")
    _assert_same_model(bh.hlm(FORMULA, weighted, known_var="v"), bh.hlm_stats(FORMULA, str(folder), known_var="v"),
                       rtol=1e-10)


def test_local_cluster(hsb, hsb_parquet):
    distributed = pytest.importorskip("distributed", reason="the LocalCluster test needs 'distributed'")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        part = bh.hlm_stats(FORMULA, str(hsb_parquet))
    _assert_same_model(bh.hlm(FORMULA, hsb), part)
    post = bh.sample(part, draws=100, warmup=100, chains=2, seed=5, progress=False)
    assert np.isfinite(post.posterior["school_sd"].values).all()
