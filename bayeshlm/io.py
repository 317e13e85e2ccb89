"""Saving and loading results (posteriors and EB/ML fits) as netCDF or Zarr, safely and without pickle.

A posterior is the ``DataTree`` of :func:`bayeshlm.sample`; an EB/ML fit
(:class:`bayeshlm.EMResult`) is stored as a small ``DataTree`` of its arrays, with its scalars
and tables as JSON attributes (``json`` writes floats with ``repr``, so they read back as the
same IEEE values). The format follows the file name: a path ending in ``.zarr`` (in any case)
is a Zarr store, any other a netCDF-4 file; ``fmt`` overrides it.

How a save protects what is on disk:

* Every write goes to a temporary file (or directory) beside the destination, named
  ``.<name>.<host>.<pid>.<token>.part``, and is moved into place only when complete: an
  interrupted write never leaves a half-written file under the final name, and an existing
  result is replaced only by a complete one. A Zarr store (a directory) cannot be replaced
  in one step; the old one is moved aside to ``.<name>...old`` for the moment of the swap.
* A temporary file left by a run that was killed (its process no longer exists) is removed
  by the next save to the same name; a ``.old`` store left by a swap that was killed, with
  no result under the final name, is put back.
* The netCDF file is built in memory and written with ordinary file writes, so that a full
  disk or a file-size limit is an ``OSError`` naming the destination, and never reaches
  the HDF5 library in the middle of a write (where it can crash the interpreter).
* Files get the permissions of any new file (``0o666`` less the umask); a file that is
  replaced keeps its permissions.
* A posterior of an interrupted run (``attrs["interrupted"]``) never replaces a complete
  result: it is written beside it (``fit.interrupted.nc``), with a warning saying so.
* A checksum (SHA-256) of every array, coordinate and attribute set is stored in the file;
  :func:`load` recomputes them and refuses a file whose contents changed since it was saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["DamagedResultError", "InterruptedRunWarning", "ResultFileError", "check_destination", "load", "save"]

_KIND = "bayeshlm_object"
_CHECKSUMS = "bayeshlm_checksums"
_ALGORITHM = "sha256"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ResultFileError(ValueError):
    """A file that cannot be read as a saved result; the message names the file and the cause."""


class DamagedResultError(ResultFileError):
    """A saved result whose contents no longer match the checksums stored when it was written."""


class InterruptedRunWarning(UserWarning):
    """An interrupted run was saved beside a complete result of the same name, not over it."""


def _format(path, fmt):
    if fmt is None:
        fmt = "zarr" if Path(path).suffix.lower() == ".zarr" else "netcdf"
    if fmt not in ("netcdf", "zarr"):
        raise ValueError(f"fmt must be 'netcdf' or 'zarr', got {fmt!r}")
    return fmt


def _em_to_tree(fit):
    """An :class:`EMResult` as a DataTree: arrays as variables, everything else as JSON attributes."""
    arrays, attrs = {}, {}
    for f in dataclasses.fields(fit):
        value = getattr(fit, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = xr.Variable([f"{f.name}_dim{i}" for i in range(value.ndim)], value)
        elif value is None:
            attrs[f.name] = json.dumps(None)
        else:
            attrs[f.name] = json.dumps(list(value) if isinstance(value, tuple) else value)
    attrs[_KIND] = "EMResult"
    tree = xr.DataTree(xr.Dataset(arrays))
    tree.attrs.update(attrs)
    return tree


def _em_from_tree(tree):
    from bayeshlm.em import EMResult

    ds = tree.to_dataset()
    values = {}
    for f in dataclasses.fields(EMResult):
        if f.name in ds:
            values[f.name] = ds[f.name].values
        elif f.name in tree.attrs:
            value = json.loads(tree.attrs[f.name])
            values[f.name] = tuple(value) if f.name == "boundary" else value
    return EMResult(**values)


# --- checksums ---------------------------------------------------------------------------


def _plain(value):
    """A JSON-able form of an attribute value, the same before saving and after loading."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _array_digest(values):
    """SHA-256 of an array's dtype, shape and values (text arrays by their strings, whatever their dtype)."""
    arr = np.asarray(values)
    h = hashlib.new(_ALGORITHM)
    h.update(repr(arr.shape).encode())
    if arr.dtype.kind in "OUS":  # text comes back as object or fixed-width strings: hash the strings
        h.update(b"text")
        for x in arr.reshape(-1):
            h.update((x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)).encode("utf-8", "replace"))
            h.update(b"\0")
    else:
        h.update(arr.dtype.str.encode())
        if arr.flags.c_contiguous:
            h.update(memoryview(arr).cast("B"))
        else:  # one row at a time, not a copy of a large view
            for row in arr:
                h.update(memoryview(np.ascontiguousarray(row)).cast("B"))
    return h.hexdigest()


def _attrs_digest(attrs):
    text = json.dumps({k: v for k, v in attrs.items() if k != _CHECKSUMS}, sort_keys=True, default=_plain)
    return hashlib.new(_ALGORITHM, text.encode()).hexdigest()


def _digests(tree):
    """``{"<group>/<variable>": digest, "<group>/@attrs": digest}`` over every group of the tree."""
    out = {}
    for node in tree.subtree:
        group = node.path.rstrip("/")
        for name, var in node.to_dataset(inherit=False).variables.items():
            out[f"{group}/{name}"] = _array_digest(var.values)
        out[f"{group}/@attrs"] = _attrs_digest(node.attrs)
    return out


def _with_checksums(tree):
    """A shallow copy of ``tree`` whose root attributes carry the checksums of its contents."""
    stamped = tree.copy(deep=False)
    stamped.attrs[_CHECKSUMS] = json.dumps({"algorithm": _ALGORITHM, "values": _digests(tree)})
    return stamped


def _verify(tree, path):
    """Check the stored checksums (when there are any) and remove them from the attributes."""
    stored = tree.attrs.pop(_CHECKSUMS, None)
    if stored is None:  # written by ArviZ, another tool, or an earlier bayeshlm: nothing to check
        return
    try:
        record = json.loads(stored)
        expected = record["values"]
        if record["algorithm"] != _ALGORITHM:
            raise ValueError(record["algorithm"])
    except (ValueError, KeyError, TypeError) as err:
        raise DamagedResultError(f"{path} is damaged: its checksum record cannot be read") from err
    found = _digests(tree)
    bad = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DamagedResultError(
            f"{path} is damaged: {shown} no longer match the checksums stored when it was saved "
            "(the file changed on disk or in transfer); restore a copy or run the fit again"
        )


# --- temporary names, stale leftovers --------------------------------------------------------

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")


def _temporary(target, kind):
    """A fresh name beside ``target``: ``.<name>.<host>.<pid>.<token>.<kind>``."""
    return target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def _leftovers(target):
    """Temporary files and directories of earlier saves to ``target``: ``(path, host, pid, kind)``."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.([A-Za-z0-9-]+)\.(\d+)\.[0-9a-f]{{8}}\.(part|old)")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m:
            found.append((entry, m.group(1), int(m.group(2)), m.group(3)))
    return found


def _process_start(pid):
    """When process ``pid`` started (seconds since the epoch), or None when that cannot be told (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _is_stale(path, host, pid):
    """True when the save that made ``path`` is certainly over: its process (on this host) is gone.

    A process id in use again by a process started after the file was last changed also
    counts as gone. Files of other hosts (a shared disk) are never considered stale.
    """
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return False
    started = _process_start(pid)
    try:
        changed = path.lstat().st_mtime
    except OSError:
        return False
    return started is not None and started > changed + 1.0


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clean_leftovers(target):
    """Remove what killed saves to ``target`` left behind; put back a store moved aside by a killed swap.

    Returns the paths removed or restored (for tests and messages).
    """
    done = []
    stale = [(p, kind) for p, host, pid, kind in _leftovers(target) if _is_stale(p, host, pid)]
    if not target.exists():
        old = sorted((p for p, kind in stale if kind == "old"), key=lambda p: p.stat().st_mtime)
        if old:  # the complete result of before the killed swap
            os.replace(old[-1], target)
            done.append(old[-1])
            stale = [(p, kind) for p, kind in stale if p != old[-1]]
    for p, _ in stale:
        _remove(p)
        done.append(p)
    return done


# --- writing ----------------------------------------------------------------------------------


def _write_error(target, err):
    """``err`` (raised while writing a temporary file) as an OSError naming the user's path."""
    reason = err.strerror or str(err)
    if err.errno is not None and err.errno in (28, 27, 122):  # ENOSPC, EFBIG, EDQUOT
        reason += " (the disk is full, a quota or a file-size limit was reached)"
    new = OSError(f"cannot write {target}: {reason}; nothing was written to {target}")
    new.errno = err.errno
    return new


def _write_image(tmp, image, like):
    """Write the bytes of a netCDF file to ``tmp`` (new; mode 0o666 less the umask, or that of ``like``)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        if like.is_file():
            os.chmod(fd, like.stat().st_mode & 0o7777)
        f.write(image)
        f.flush()
        os.fsync(fd)


def _replace(tmp, target):
    """Move the complete ``tmp`` over ``target`` (a file, or a Zarr directory)."""
    if target.exists() and (tmp.is_dir() or target.is_dir()):
        # a directory cannot replace (or be replaced) in one step: move the old one aside first
        old = _temporary(target, "old")
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)
    try:  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _interrupted(tree):
    try:
        return bool(int(tree.attrs.get("interrupted", 0)))
    except (TypeError, ValueError):
        return False


def _holds_interrupted_run(path):
    """True when ``path`` holds a result of an interrupted run (False when complete, foreign or unreadable)."""
    try:
        engine = "zarr" if path.is_dir() else "h5netcdf"
        kwargs = {"consolidated": False} if engine == "zarr" else {"phony_dims": "access"}
        with xr.open_datatree(path, engine=engine, **kwargs) as tree:
            return _interrupted(tree)
    except Exception:  # noqa: BLE001 - whatever it is, it is not an interrupted run to replace
        return False


def _destination(tree, path):
    """Where to write: ``path``, or beside it when an interrupted run would replace another result."""
    if not (_interrupted(tree) and path.exists()) or _holds_interrupted_run(path):
        return path
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    for k in range(1, 1000):
        beside = path.with_name(f"{stem}.interrupted{'' if k == 1 else f'-{k}'}{suffix}")
        if not beside.exists() or _holds_interrupted_run(beside):
            break
    else:
        raise FileExistsError(f"cannot save the interrupted run beside {path}: too many files of that name")
    warnings.warn(
        f"the run was interrupted and {path} holds another result, which is kept; "
        f"the draws of the interrupted run are saved to {beside}",
        InterruptedRunWarning,
        stacklevel=3,
    )
    return beside


def _is_zarr_array(path):
    """True when the directory ``path`` is one Zarr array (version 2 or 3) rather than a group."""
    if (path / ".zarray").is_file():
        return True
    try:
        return json.loads((path / "zarr.json").read_text()).get("node_type") == "array"
    except (OSError, ValueError, AttributeError):
        return False


def _is_zarr_store(path):
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def check_destination(path, *, fmt=None):
    """Raise now the error that a save to ``path`` would raise because of where it is.

    Call it before a long computation whose result is to be saved: the directory must exist
    and be writable, and what is already at ``path`` must be of the kind written there (a
    file for netCDF, a Zarr store for Zarr), so that a save never deletes a directory, or a
    file, of something else.

    Parameters
    ----------
    path : str or os.PathLike
    fmt : {"netcdf", "zarr"}, optional
        As for :func:`save`.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        When the directory does not exist.
    PermissionError
        When it is not writable.
    FileExistsError
        When ``path`` is a directory (for netCDF), a directory that is not a Zarr store, or a
        file (for Zarr).
    """
    path = Path(path)
    fmt = _format(path, fmt)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory is not writable: {parent}")
    if fmt == "netcdf" and path.is_dir():
        raise FileExistsError(f"{path} is a directory; a netCDF result is a file: choose another name "
                              "(or a name ending in .zarr for a Zarr store)")
    if fmt == "zarr" and path.exists() and not (path.is_dir() and _is_zarr_store(path)):
        what = "a directory that is not a Zarr store" if path.is_dir() else "a file, not a Zarr store"
        raise FileExistsError(f"{path} is {what}; it is not replaced: choose another name")
    return path


def save(result, path, *, fmt=None):
    """Write a posterior ``DataTree`` or an EB/ML fit to a netCDF file or a Zarr store, atomically.

    Parameters
    ----------
    result : xarray.DataTree or EMResult
        From :func:`bayeshlm.sample` or :func:`bayeshlm.fit_em`.
    path : str or os.PathLike
        Destination: a name ending in ``.zarr`` (any case) for a Zarr store, otherwise netCDF
        (conventionally ``.nc``).
    fmt : {"netcdf", "zarr"}, optional
        Overrides the choice by file name.

    Returns
    -------
    pathlib.Path
        Where the result was written: ``path``, except for the posterior of an interrupted
        run when ``path`` holds another result (see Warns).

    Raises
    ------
    OSError
        When the file cannot be written (a full disk, a file-size limit, no permission); the
        message names ``path``, and a result already there is left as it was. Before writing,
        the errors of :func:`check_destination` (a missing or read-only directory; a file or
        directory of another kind at ``path``, which is never replaced).

    Warns
    -----
    InterruptedRunWarning
        When ``result`` is the posterior of an interrupted run and ``path`` holds a result
        that is not (a complete posterior, an EB/ML fit, any other file): that file is kept,
        and the interrupted run is written beside it, to ``<stem>.interrupted<suffix>``.

    Notes
    -----
    See the module's description for what a save guarantees: the write goes to a temporary
    name and is renamed into place when complete, temporary files of killed saves are
    removed, files get the umask's permissions, and checksums are stored for :func:`load`.
    """
    from bayeshlm.em import EMResult

    path = Path(path)
    fmt = _format(path, fmt)
    tree = _em_to_tree(result) if isinstance(result, EMResult) else result
    if not isinstance(tree, xr.DataTree):
        raise TypeError(f"save takes a posterior (xarray.DataTree) or an EMResult, got {type(result).__name__}")
    check_destination(path, fmt=fmt)
    target = _destination(tree, path)
    _clean_leftovers(target)
    stamped = _with_checksums(tree)
    tmp = _temporary(target, "part")
    try:
        if fmt == "zarr":
            stamped.to_zarr(tmp, mode="w-", consolidated=False)
        else:
            _write_image(tmp, stamped.to_netcdf(engine="h5netcdf"), target)
        _replace(tmp, target)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError):
            raise _write_error(target, err) from err
        raise
    return target


# --- reading ----------------------------------------------------------------------------------


def _hdf5_head(path):
    """The HDF5 signature when the file has one (at 0, or after a user block of 512, 1024, ... bytes), else the head."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = os.fstat(f.fileno()).st_size
        offset = 512
        while head != _HDF5_SIGNATURE and offset + 8 <= min(size, 2**24):
            f.seek(offset)
            if f.read(8) == _HDF5_SIGNATURE:
                return _HDF5_SIGNATURE
            offset *= 2
    return head


def _reason(err):
    """The first line of an error's text (HDF5 errors run over several)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load(path, *, fmt=None):
    """Read a result written by :func:`save` (or any ArviZ netCDF or Zarr file) fully into memory.

    Parameters
    ----------
    path : str or os.PathLike
        A netCDF-4 file or a Zarr store.
    fmt : {"netcdf", "zarr"}, optional
        The format; by default a directory is read as a Zarr store and a file as netCDF.

    Returns
    -------
    xarray.DataTree or EMResult
        The ``DataTree`` of a posterior, or the :class:`bayeshlm.EMResult` of an EB/ML fit.

    Raises
    ------
    FileNotFoundError
        When there is nothing at ``path`` (the message names a result left aside by a killed
        save, when there is one).
    ResultFileError
        When the file is not a netCDF-4 file or Zarr store that xarray can read.
    DamagedResultError
        When the file carries checksums (every file written by :func:`save` does) and its
        contents no longer match them.
    """
    path = Path(path)
    if not path.exists():
        old = [p for p, _, _, kind in _leftovers(path) if kind == "old"]
        hint = f"; an interrupted save left the previous result in {old[0]}: rename it to {path}" if old else ""
        raise FileNotFoundError(f"result file not found: {path}{hint}")
    if fmt is None:
        fmt = "zarr" if path.is_dir() else "netcdf"
    else:
        fmt = _format(path, fmt)
    if fmt == "netcdf":
        if path.is_dir():
            raise ResultFileError(f"cannot read {path}: it is a directory, not a netCDF file (a Zarr store?)")
        head = _hdf5_head(path)
        if head[:3] == b"CDF":
            raise ResultFileError(f"cannot read {path}: a netCDF-3 file; results are netCDF-4 (HDF5) files")
        if head != _HDF5_SIGNATURE:
            raise ResultFileError(f"cannot read {path}: not a netCDF-4 (HDF5) file or Zarr store")
    if fmt == "zarr" and _is_zarr_array(path):
        raise ResultFileError(f"cannot read {path}: a single Zarr array, not a Zarr store of results (a group)")
    try:
        if fmt == "zarr":
            with xr.open_datatree(path, engine="zarr", consolidated=False) as tree:
                tree = tree.load()
        else:
            with xr.open_datatree(path, engine="h5netcdf", phony_dims="access") as tree:
                tree = tree.load()
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - foreign or damaged files fail in many ways; say which file
        kind = "Zarr store" if fmt == "zarr" else "netCDF file"
        raise ResultFileError(f"cannot read {path} as a {kind} of results: {_reason(err)}") from err
    _verify(tree, path)
    if tree.attrs.get(_KIND) == "EMResult":
        return _em_from_tree(tree)
    return tree
