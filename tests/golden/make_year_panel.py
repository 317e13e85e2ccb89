"""Write ``year_panel.csv``: a simulated panel whose predictor is a calendar year.

30 units observed in some of the years 2008-2019 (each year kept with probability 0.8),
``y = 3 + 0.4 (year - 2013.5) + u0 + u1 (year - 2013.5) + e`` with ``sd(u0) = 1``,
``sd(u1) = 0.25``, ``corr(u0, u1) = 0.3`` and ``sd(e) = 1``. The numbers are fixed by the
seed; the file is committed, so this script documents it and need not be run again.
Run from the repository root: ``python tests/golden/make_year_panel.py``.
"""

from pathlib import Path

import numpy as np
import pandas as pd

rng = np.random.default_rng(20261204)
rows = []
cov = np.array([[1.0, 0.3 * 0.25], [0.3 * 0.25, 0.25**2]])
for unit in range(30):
    u0, u1 = rng.multivariate_normal(np.zeros(2), cov)
    for year in range(2008, 2020):
        if rng.random() < 0.8:
            t = year - 2013.5
            y = 3.0 + 0.4 * t + u0 + u1 * t + rng.normal()
            rows.append({"unit": f"u{unit + 1:02d}", "year": year, "y": round(y, 4)})
pd.DataFrame(rows).to_csv(Path(__file__).with_name("year_panel.csv"), index=False)
