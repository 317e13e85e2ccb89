"""Shared test configuration: non-interactive plotting, hypothesis profile, golden values."""

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: no display in CI

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

GOLDEN_DIR = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[1]

# Derandomised, no example database, no per-example deadline (the first call of a
# numba kernel includes its compilation). HYPOTHESIS_PROFILE selects another one.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def lme4_fits():
    """Reference lme4 fits and eight-schools values (see tests/golden/README.md)."""
    with open(GOLDEN_DIR / "lme4_fits.json", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def lme4_tight():
    """lme4 fits with tight optimiser tolerances (tests/golden/lme4_tight.R)."""
    with open(GOLDEN_DIR / "lme4_tight.json", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(autouse=True, scope="session")
def _nothing_is_written_into_the_repository():
    """A test writes into its own folder (``tmp_path``), never beside the package: checked at the end."""
    before = set(os.listdir(ROOT))
    yield
    new = sorted(set(os.listdir(ROOT)) - before - {".pytest_cache", ".hypothesis", "__pycache__", ".ruff_cache"})
    assert not new, f"the tests left {new} in {ROOT}: write into tmp_path"
