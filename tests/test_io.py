"""save / load: exact round trip, atomic replacement, no pickle; issue 18 part 5 (nothing lost, nothing
corrupted unseen): permissions, leftovers of killed saves, interrupted runs, checksums, full disks."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import xarray as xr

import bayeshlm as bh
from bayeshlm import io as bio


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


# --- issue 18, part 5 -------------------------------------------------------------------------


def _modes(root):
    """Permission bits of a file, or of a directory and everything in it."""
    root = os.fspath(root)
    if os.path.isfile(root):
        return {stat.S_IMODE(os.stat(root).st_mode)}
    modes = {stat.S_IMODE(os.stat(root).st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        modes |= {stat.S_IMODE(os.stat(os.path.join(dirpath, n)).st_mode) for n in dirnames + filenames}
    return modes


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                         (0o002, 0o664, 0o775)])
@pytest.mark.parametrize("name", ["fit.nc", "fit.zarr"])
def test_saved_files_get_the_permissions_of_the_umask(post, tmp_path, umask, file_mode, dir_mode, name):
    old = os.umask(umask)
    try:
        path = bh.save(post, tmp_path / name)
    finally:
        os.umask(old)
    expected = {file_mode} if name.endswith(".nc") else {file_mode, dir_mode}
    assert _modes(path) == expected


def test_a_replaced_file_keeps_its_permissions(post, tmp_path):
    path = bh.save(post, tmp_path / "fit.nc")
    path.chmod(0o640)
    bh.save(post, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("name", ["fit.ZARR", "fit.Zarr", "fit.zarr"])
def test_a_zarr_suffix_in_any_case_is_zarr(post, tmp_path, name):
    path = bh.save(post, tmp_path / name)
    assert path.is_dir() and (path / "zarr.json").is_file()
    xr.testing.assert_identical(bh.load(path).posterior.to_dataset(), post.posterior.to_dataset())


def _dead_pid():
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _leftover(target, pid, kind, *, directory=False, token="0123abcd"):
    path = target.with_name(f".{target.name}.{bio._HOST}.{pid}.{token}.{kind}")
    if directory:
        path.mkdir()
        (path / "zarr.json").write_text("{}")
    else:
        path.write_bytes(b"half a file")
    return path


@pytest.mark.parametrize("name", ["fit.nc", "fit.zarr"])
def test_leftovers_of_a_killed_save_are_removed(post, tmp_path, name):
    target = tmp_path / name
    dead = _dead_pid()
    directory = name.endswith("zarr")
    stale = [_leftover(target, dead, "part", directory=directory),
             _leftover(target, dead, "old", directory=directory, token="4567cdef")]
    other_host = target.with_name(f".{name}.some-other-host.{dead}.89abcdef.part")
    other_host.write_bytes(b"another machine's save on a shared disk")
    live = _leftover(target, os.getpid(), "part")  # a save in progress in this process: not touched
    bh.save(post, target)
    assert not any(p.exists() for p in stale)
    assert other_host.exists() and live.exists()
    xr.testing.assert_identical(bh.load(target).posterior.to_dataset(), post.posterior.to_dataset())


def test_a_reused_process_id_does_not_keep_a_leftover(post, tmp_path):
    """A leftover named after this process's id but older than this process is from a killed run."""
    if bio._process_start(os.getpid()) is None:
        pytest.skip("the start time of a process is read from /proc (Linux only)")
    target = tmp_path / "fit.nc"
    old = _leftover(target, os.getpid(), "part")
    long_ago = time.time() - 10 * 365 * 86400
    os.utime(old, (long_ago, long_ago))
    bh.save(post, target)
    assert not old.exists()


_KILL_DURING_SWAP = textwrap.dedent("""
    import os, signal, sys
    import bayeshlm as bh
    from bayeshlm import io as bio

    post = bh.load(sys.argv[1])
    calls = []
    real_rename, real_swap = os.replace, bio._replace

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == int(sys.argv[3]):  # killed just before this rename
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(src, dst)

    def swap(tmp, target):  # the renames that put the written result in place
        os.replace = rename
        return real_swap(tmp, target)

    bio._replace = swap
    bh.save(post, sys.argv[2])
""")


@pytest.mark.parametrize("name, kill_at", [("fit.zarr", 1), ("fit.zarr", 2), ("fit.nc", 1)])
def test_a_save_killed_during_the_swap_loses_nothing(post, tmp_path, name, kill_at):
    """SIGKILL before the first or the second rename: the next save finds and restores or removes what is left."""
    source = bh.save(post, tmp_path / "source.nc")
    target = bh.save(post.isel(draw=slice(0, 10)), tmp_path / name)  # the complete earlier result
    script = tmp_path / "kill.py"
    script.write_text(_KILL_DURING_SWAP)
    proc = subprocess.run([sys.executable, str(script), str(source), str(target), str(kill_at)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}."))
    assert left and all(n.endswith((".part", ".old")) for n in left)
    if kill_at == 2:  # killed between moving the old store aside and moving the new one in
        assert not target.exists()
        with pytest.raises(FileNotFoundError, match=r"an interrupted save left the previous result in .*\.old"):
            bh.load(target)
    else:
        assert bh.load(target).posterior.sizes["draw"] == 10
    bio._clean_leftovers(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.")]
    assert bh.load(target).posterior.sizes["draw"] == 10  # the earlier result, whole
    bh.save(post, target)
    assert bh.load(target).posterior.sizes["draw"] == 50


def _interrupted(post):
    stopped = post.isel(draw=slice(0, 20))
    stopped.attrs = {**post.attrs, "interrupted": 1}
    return stopped


@pytest.mark.parametrize("name, beside", [("fit.nc", "fit.interrupted.nc"), ("fit.zarr", "fit.interrupted.zarr")])
def test_an_interrupted_run_never_replaces_a_complete_result(post, tmp_path, name, beside):
    path = bh.save(post, tmp_path / name)
    with pytest.warns(bio.InterruptedRunWarning, match=rf"{name} holds another result, which is kept; the draws "
                                                       rf"of the interrupted run are saved to .*{beside}"):
        written = bh.save(_interrupted(post), path)
    assert written == tmp_path / beside
    assert bh.load(path).posterior.sizes["draw"] == 50 and not bh.load(path).attrs["interrupted"]
    assert bh.load(written).posterior.sizes["draw"] == 20 and bh.load(written).attrs["interrupted"]
    # a second interrupted run replaces the first one beside, still not the complete result
    with pytest.warns(bio.InterruptedRunWarning):
        assert bh.save(_interrupted(post).isel(draw=slice(0, 5)), path) == tmp_path / beside
    assert bh.load(tmp_path / beside).posterior.sizes["draw"] == 5
    assert bh.load(path).posterior.sizes["draw"] == 50


def test_an_interrupted_run_replaces_an_interrupted_one_and_fills_an_empty_name(post, tmp_path):
    path = tmp_path / "fit.nc"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bh.save(_interrupted(post), path) == path  # nothing there: written under its name
        assert bh.save(_interrupted(post).isel(draw=slice(0, 3)), path) == path
    assert bh.load(path).posterior.sizes["draw"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.nc"]


def test_an_interrupted_run_keeps_an_em_fit_of_the_same_name(post, tmp_path):
    fit = bh.fit_em(bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy")))
    path = bh.save(fit, tmp_path / "result.nc")
    with pytest.warns(bio.InterruptedRunWarning):
        assert bh.save(_interrupted(post), path).name == "result.interrupted.nc"
    assert isinstance(bh.load(path), bh.EMResult)


def _flip_one_value(path, values):
    """Change one float of ``values`` where its bytes sit in the file (netCDF stores them as they are)."""
    data = bytearray(path.read_bytes())
    raw = np.ascontiguousarray(values).tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0
    data[at + 3] ^= 0x10  # one bit of the first value
    path.write_bytes(bytes(data))


def test_a_damaged_netcdf_file_is_detected(post, tmp_path):
    path = bh.save(post, tmp_path / "fit.nc")
    _flip_one_value(path, post.posterior["fixed"].values)
    with pytest.raises(bio.DamagedResultError,
                       match=r"fit.nc is damaged: /posterior/fixed no longer match the checksums stored when it "
                             r"was saved"):
        bh.load(path)


def test_a_damaged_zarr_store_is_detected(post, tmp_path):
    import zarr

    path = bh.save(post, tmp_path / "fit.zarr")
    arr = zarr.open_array(path / "posterior" / "sigma", mode="r+")
    arr[0, 0] = arr[0, 0] + 1.0
    with pytest.raises(bio.DamagedResultError, match=r"is damaged: /posterior/sigma no longer match"):
        bh.load(path)


def test_changed_attributes_and_missing_variables_are_detected(tmp_path):
    import h5py
    import zarr

    fit = bh.fit_em(bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy")))
    path = bh.save(fit, tmp_path / "em.nc")
    with h5py.File(path, "r+") as f:
        f.attrs["loglik"] = json.dumps(0.0)
    with pytest.raises(bio.DamagedResultError, match=r"em.nc is damaged: /@attrs no longer match"):
        bh.load(path)
    store = bh.save(fit, tmp_path / "em.zarr")
    group = zarr.open_group(store, mode="r+")
    del group["group_means"]
    with pytest.raises(bio.DamagedResultError, match=r"em.zarr is damaged: /group_means no longer match"):
        bh.load(store)


def test_checksums_are_not_part_of_the_loaded_result(post, tmp_path):
    back = bh.load(bh.save(post, tmp_path / "fit.nc"))
    assert bio._CHECKSUMS not in back.attrs
    assert bio._CHECKSUMS not in post.attrs  # save did not touch the caller's tree


def test_a_file_without_checksums_is_read(post, tmp_path):
    path = tmp_path / "arviz.nc"
    post.to_netcdf(path, engine="h5netcdf")  # as ArviZ or an earlier version writes it
    xr.testing.assert_identical(bh.load(path).posterior.to_dataset(), post.posterior.to_dataset())


def test_write_errors_name_the_users_path(post, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(args[0]) if args else None)

    monkeypatch.setattr(xr.DataTree, "to_zarr", broken)
    with pytest.raises(OSError) as info:
        bh.save(post, tmp_path / "fit.zarr")
    message = str(info.value)
    assert message.startswith(f"cannot write {tmp_path / 'fit.zarr'}: No space left on device (the disk is full")
    assert ".part" not in message
    assert info.value.errno == 28
    assert list(tmp_path.iterdir()) == []


_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    import bayeshlm as bh

    post = bh.load(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
    try:
        bh.save(post, sys.argv[2])
    except OSError as err:
        print(err)
        sys.exit(3)
""")


@pytest.mark.parametrize("name", ["fit.nc", "fit.zarr"])
@pytest.mark.parametrize("limit", [100, 20_000])
def test_a_full_disk_is_an_error_not_a_crash(post, tmp_path, name, limit):
    """A file-size limit stands in for a full disk: the same failing write(2), without root."""
    source = bh.save(post, tmp_path / "source.nc")
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(source), str(out / name), str(limit)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])  # never -SIGSEGV
    assert proc.stdout.startswith(f"cannot write {out / name}: File too large (the disk is full")
    assert ".part" not in proc.stdout
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"not a netCDF file at all"), "cannot read {p}: not a netCDF-4 (HDF5) file or Zarr store"),
    (lambda p: p.write_bytes(b"CDF\x01" + bytes(28)), "cannot read {p}: a netCDF-3 file"),
    (lambda p: p.write_bytes(b""), "cannot read {p}: not a netCDF-4"),
    (lambda p: p.mkdir(), "cannot read {p} as a Zarr store of results"),
])
def test_foreign_files_are_refused_with_their_name(tmp_path, make, message):
    path = tmp_path / "thing.nc"
    make(path)
    with pytest.raises(bio.ResultFileError) as info:
        bh.load(path)
    assert str(info.value).startswith(message.format(p=path))
    assert "\n" not in str(info.value)


def test_a_zarr_array_or_a_v2_group_is_refused_with_its_name(tmp_path):
    import zarr

    arr = zarr.open_array(tmp_path / "array.zarr", mode="w", shape=(3,), dtype="f8")
    arr[:] = 1.0
    group = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    group.create_array("a", shape=(3,), dtype="f8")
    with pytest.raises(bio.ResultFileError, match=rf"cannot read {tmp_path / 'array.zarr'}: a single Zarr array, "
                                                  r"not a Zarr store of results \(a group\)$"):
        bh.load(tmp_path / "array.zarr")
    with pytest.raises(bio.ResultFileError, match=rf"cannot read {tmp_path / 'v2.zarr'} as a Zarr store of results"):
        bh.load(tmp_path / "v2.zarr")


@pytest.mark.parametrize("name, make, message", [
    ("fit.nc", lambda p: p.mkdir(), "fit.nc is a directory; a netCDF result is a file"),
    ("fit.zarr", lambda p: p.mkdir(), "fit.zarr is a directory that is not a Zarr store; it is not replaced"),
    ("fit.zarr", lambda p: p.write_text("notes"), "fit.zarr is a file, not a Zarr store; it is not replaced"),
])
def test_a_save_never_replaces_something_of_another_kind(post, tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    if path.is_dir():
        (path / "my_notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match=message):
        bh.save(post, path)
    assert (path / "my_notes.txt").read_text() == "precious" if path.is_dir() else path.read_text() == "notes"


def test_a_missing_directory_is_named(post, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"output directory does not exist: {tmp_path / 'absent'}"):
        bh.save(post, tmp_path / "absent" / "fit.nc")


def test_a_netcdf_file_with_a_user_block_is_read(tmp_path):
    """HDF5 allows a user block before its signature (at 512, 1024, ... bytes): still a netCDF-4 file."""
    import h5py

    with h5py.File(tmp_path / "block.nc", "w", userblock_size=512) as f:
        f["a"] = np.arange(3.0)
    np.testing.assert_array_equal(bh.load(tmp_path / "block.nc").to_dataset()["a"].values, np.arange(3.0))
