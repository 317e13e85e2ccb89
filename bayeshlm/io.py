"""Saving and loading results (posteriors and EB/ML fits) as netCDF or Zarr, safely and without pickle.

A posterior is the ``DataTree`` of :func:`bayeshlm.sample`; an EB/ML fit
(:class:`bayeshlm.EMResult`) is stored as a small ``DataTree`` of its arrays, with its scalars
and tables as JSON attributes (``json`` writes floats with ``repr``, so they read back as the
same IEEE values). The format follows the file name: a ``.zarr`` path is a Zarr store, any
other a netCDF-4 file; ``fmt`` overrides it.

Every write goes to a temporary file (or directory) beside the destination and is moved into
place only when complete: an interrupted write never leaves a half-written file under the
final name, and an existing result is replaced only by a complete one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

_KIND = "bayeshlm_object"


def _format(path, fmt):
    if fmt is None:
        fmt = "zarr" if Path(path).suffix == ".zarr" else "netcdf"
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


def _replace(tmp, path):
    """Move the complete ``tmp`` over ``path`` (a file, or a Zarr directory)."""
    if Path(tmp).is_dir() and path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        old.rmdir()
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def save(result, path, *, fmt=None):
    """Write a posterior ``DataTree`` or an EB/ML fit to a netCDF file or a Zarr store, atomically.

    Parameters
    ----------
    result : xarray.DataTree or EMResult
        From :func:`bayeshlm.sample` or :func:`bayeshlm.fit_em`.
    path : str or os.PathLike
        Destination: ``.zarr`` for a Zarr store, otherwise netCDF (conventionally ``.nc``).
    fmt : {"netcdf", "zarr"}, optional
        Overrides the choice by file name.

    Returns
    -------
    pathlib.Path
    """
    from bayeshlm.em import EMResult

    path = Path(path)
    fmt = _format(path, fmt)
    tree = _em_to_tree(result) if isinstance(result, EMResult) else result
    if fmt == "zarr":
        tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.rmdir(tmp)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
    try:
        if fmt == "zarr":
            tree.to_zarr(tmp, mode="w", consolidated=False)
        else:
            tree.to_netcdf(tmp, engine="h5netcdf")
        _replace(tmp, path)
    except BaseException:
        if Path(tmp).is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path, *, fmt=None):
    """Read a result written by :func:`save` (or any ArviZ netCDF or Zarr file) fully into memory.

    Returns the ``DataTree`` of a posterior, or the :class:`bayeshlm.EMResult` of an EB/ML fit.
    """
    fmt = _format(path, fmt)
    if fmt == "zarr":
        with xr.open_datatree(path, engine="zarr", consolidated=False) as tree:
            tree = tree.load()
    else:
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            tree = tree.load()
    if tree.attrs.get(_KIND) == "EMResult":
        return _em_from_tree(tree)
    return tree
