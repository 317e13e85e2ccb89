"""The large SBC run behind REPORT.md, as a test (``pytest -m statistical``; about 15 minutes).

Every family of ``sbc_report.py`` with 1000 simulations each, at the same per-family
false-alarm rate (1e-3) as the CI-sized run in ``test_sbc.py``; the report files are written
to a temporary folder (``python tests/statistical/sbc_report.py`` writes the committed ones).
"""

import pytest

from tests.statistical import sbc_report


@pytest.mark.statistical
def test_large_sbc_run(tmp_path):
    assert sbc_report.main(["--n-sims", "1000", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").exists()
