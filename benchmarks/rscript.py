"""Run an R script through ``Rscript`` for a benchmark and read its output lines.

The lme4 timings of ``bench_crossed.py`` and ``bench_em_levels.py`` print one line per
result (``REML <seconds> <logLik> ...``, ``VERSION lme4 ...``); this runs such a script and
returns its lines split into words, or None when R, or a package the script loads, is
missing (said on stderr).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def run_r(script, *args):
    """The words of each line ``script`` prints when run with ``args``; None when it cannot run."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        proc = subprocess.run([rscript, path, *map(str, args)], capture_output=True, text=True)
    finally:
        Path(path).unlink()
    if proc.returncode != 0:
        print("lme4 not run:", proc.stderr.strip().splitlines()[-1:] or proc.returncode, file=sys.stderr)
        return None
    return [line.split() for line in proc.stdout.splitlines() if line.strip()]
