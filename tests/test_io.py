"""save / load: exact round trip, atomic replacement, no pickle."""

import numpy as np
import pytest
import xarray as xr

import bayeshlm as bh


@pytest.fixture(scope="module")
def post():
    model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    return bh.sample(model, draws=50, warmup=50, chains=2, seed=8, progress=False)


@pytest.mark.parametrize("name", ["fit.nc", "fit.zarr"])
def test_round_trip_is_exact(post, tmp_path, name):
    path = bh.save(post, tmp_path / name)
    back = bh.load(path)
    assert set(back.children) == set(post.children)
    for group in post.children:
        xr.testing.assert_identical(back[group].to_dataset(), post[group].to_dataset())
    assert back.attrs == post.attrs
    assert list(back.posterior["subject"].values) == list(post.posterior["subject"].values)


def test_failed_write_keeps_the_old_file(post, tmp_path, monkeypatch):
    path = bh.save(post, tmp_path / "fit.nc")
    before = path.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(xr.DataTree, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        bh.save(post, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fit.nc"]  # no partial file left behind


def test_loaded_values_are_in_memory(post, tmp_path):
    path = bh.save(post, tmp_path / "fit.nc")
    back = bh.load(path)
    path.unlink()  # the data no longer depend on the file
    np.testing.assert_array_equal(back.posterior["fixed"].values, post.posterior["fixed"].values)


def _assert_same_em(a, b):
    import dataclasses

    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
            assert x.dtype == y.dtype, f.name
        else:
            assert x == y or (x != x and y != y), f.name  # nan == nan for the missing ones


@pytest.mark.parametrize("name", ["eb.nc", "eb.zarr"])
@pytest.mark.parametrize("formula", ["reaction ~ days + (days | subject)", "reaction ~ days + (1 | subject)"])
def test_em_result_round_trip_is_exact(tmp_path, name, formula):
    fit = bh.fit_em(bh.hlm(formula, bh.load_dataset("sleepstudy")))
    back = bh.load(bh.save(fit, tmp_path / name))
    assert isinstance(back, bh.EMResult)
    _assert_same_em(fit, back)
    assert back.summary() == fit.summary()


def test_nested_em_result_round_trip(tmp_path):
    fit = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes")), "ml")
    _assert_same_em(fit, bh.load(bh.save(fit, tmp_path / "pastes.zarr")))


def test_zarr_replacement_is_complete_or_nothing(post, tmp_path, monkeypatch):
    path = bh.save(post, tmp_path / "fit.zarr")
    bh.save(post, path)  # replacing an existing store
    xr.testing.assert_identical(bh.load(path).posterior.to_dataset(), post.posterior.to_dataset())

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(xr.DataTree, "to_zarr", broken)
    with pytest.raises(OSError, match="disk full"):
        bh.save(post, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.zarr"]
    xr.testing.assert_identical(bh.load(path).posterior.to_dataset(), post.posterior.to_dataset())


def test_interrupted_run_keeps_its_draws_through_save(tmp_path, monkeypatch):
    """A run stopped by Ctrl-C keeps the draws it made, marked as interrupted, and saves them."""
    import importlib

    sample_module = importlib.import_module("bayeshlm.sample")  # bayeshlm.sample is the function

    model = bh.hlm("reaction ~ days + (1 | subject)", bh.load_dataset("sleepstudy"))
    calls = {"n": 0}
    original = sample_module._Progress.__call__

    def interrupting(self, chain, n):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, chain, n)

    monkeypatch.setattr(sample_module._Progress, "__call__", interrupting)
    post = bh.sample(model, draws=100000, warmup=5, chains=2, seed=3, progress=False, n_threads=1)
    assert post.attrs["interrupted"]
    back = bh.load(bh.save(post, tmp_path / "stopped.nc"))
    assert back.attrs["interrupted"]
    xr.testing.assert_identical(back.posterior.to_dataset(), post.posterior.to_dataset())


def test_bad_format_is_refused(post, tmp_path):
    with pytest.raises(ValueError, match="fmt must be"):
        bh.save(post, tmp_path / "x.nc", fmt="pickle")
