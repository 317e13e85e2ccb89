"""The command line: ``python -m bayeshlm demo``."""

import subprocess
import sys

from bayeshlm.__main__ import main


def test_demo_prints_a_summary(capsys):
    assert main(["demo", "--draws", "100", "--warmup", "100", "--chains", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    for text in ("fixed[ses_centered:sector]", "school_sd[Intercept]", "school_corr", "r_hat", "ess_bulk",
                 "ess_tail", "eti95_lb", "sampling time", "min-ESS per second", "sigma: HalfStudentT",
                 "by REML (empirical Bayes)", "difference_in_sd"):
        assert text in out, text


def test_module_entry_point_rejects_unknown_commands():
    proc = subprocess.run([sys.executable, "-m", "bayeshlm", "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
