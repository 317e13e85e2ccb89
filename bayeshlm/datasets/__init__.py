"""Real multilevel data sets shipped with bayeshlm.

Ten small published data sets, stored as CSV files next to this module and
described in its README.md: ``sleepstudy``, ``dyestuff``, ``pastes``, ``hsb``,
``radon``, ``eight_schools``, ``scotssec`` (pupils cross-classified by primary and
secondary school), and three with a non-Gaussian response: ``cbpp`` (binomial),
``contraception`` (0/1) and ``grouseticks`` (counts). They serve the examples, the tests (the
reference fits in ``tests/golden/`` were computed from these very files) and
the benchmarks.

Group identifiers are returned as strings, never as numbers, even where they
look numeric (school ``"1224"``, subject ``"308"``), so that they act as labels.
"""

from importlib.resources import files

import pandas as pd

__all__ = ["list_datasets", "load_dataset"]

# Columns holding group labels, per data set; they are read as strings.
_ID_COLUMNS: dict[str, tuple[str, ...]] = {
    "sleepstudy": ("subject",),
    "dyestuff": ("batch",),
    "pastes": ("batch", "cask", "sample"),
    "hsb": ("school",),
    "radon": ("county",),
    "eight_schools": ("school",),
    "scotssec": ("primary", "second"),
    "cbpp": ("herd",),
    "contraception": ("woman", "district"),
    "grouseticks": ("index", "brood", "location"),
}
# Columns holding the categories of a predictor (labels that look like numbers), read as
# pandas categoricals in the order given.
_CATEGORY_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "contraception": {"livch": ("0", "1", "2", "3+")},
}


def list_datasets() -> list[str]:
    """Return the names of the bundled data sets.

    Returns
    -------
    list of str
        Names accepted by :func:`load_dataset`, in alphabetical order.

    Examples
    --------
    >>> from bayeshlm.datasets import list_datasets
    >>> list_datasets()
    ['cbpp', 'contraception', 'dyestuff', 'eight_schools', 'grouseticks', 'hsb', 'pastes', 'radon', 'scotssec',
     'sleepstudy']
    """
    return sorted(_ID_COLUMNS)


def load_dataset(name: str) -> pd.DataFrame:
    """Read one bundled data set into a new DataFrame.

    Parameters
    ----------
    name : str
        One of the names returned by :func:`list_datasets`.

    Returns
    -------
    pandas.DataFrame
        The rows of the CSV file in file order. Grouping columns (for example
        ``school`` in ``hsb`` or ``county`` in ``radon``) hold strings, the
        categories of a predictor (``livch`` in ``contraception``) are categorical,
        and all other columns are numeric. Each call returns a fresh copy.

    Raises
    ------
    ValueError
        If `name` is not a bundled data set; the message lists the valid names.

    Notes
    -----
    The files have no missing values, so no text is turned into NaN while
    reading: a label such as ``"NA"`` would stay a label.

    Examples
    --------
    >>> from bayeshlm.datasets import load_dataset
    >>> hsb = load_dataset("hsb")
    >>> hsb.shape
    (7185, 13)
    >>> hsb["school"].iloc[0]
    '1224'
    """
    if name not in _ID_COLUMNS:
        available = ", ".join(list_datasets())
        raise ValueError(f"unknown data set {name!r}; available data sets: {available}")
    categories = _CATEGORY_COLUMNS.get(name, {})
    dtype = dict.fromkeys((*_ID_COLUMNS[name], *categories), str)
    with files(__name__).joinpath(f"{name}.csv").open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype=dtype, na_filter=False)
    for column, levels in categories.items():
        frame[column] = pd.Categorical(frame[column], categories=list(levels))
    return frame
