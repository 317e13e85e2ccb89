"""Saving and loading posterior results (netCDF), safely and without pickle."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import xarray as xr


def save(result, path):
    """Write a posterior ``DataTree`` to a netCDF file, atomically.

    The tree is written to a temporary file in the same folder and moved over ``path`` only
    once complete, so an interrupted write never leaves a half-written file under the final
    name, and an existing file is replaced only by a complete one.

    Parameters
    ----------
    result : xarray.DataTree
        From :func:`bayeshlm.sample`.
    path : str or os.PathLike
        Destination, conventionally ending in ``.nc``.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        result.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path):
    """Read a result written by :func:`save` (or any ArviZ netCDF file) fully into memory."""
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()
