"""save / load: exact round trip, atomic replacement, no pickle."""

import numpy as np
import pytest
import xarray as xr

import bayeshlm as bh


@pytest.fixture(scope="module")
def post():
    model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    return bh.sample(model, draws=50, warmup=50, chains=2, seed=8, progress=False)


def test_round_trip_is_exact(post, tmp_path):
    path = bh.save(post, tmp_path / "fit.nc")
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
