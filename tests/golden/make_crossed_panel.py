"""Write ``crossed_panel.csv``: simulated subjects x items data with random slopes, and subjects in groups.

60 subjects (``s01`` ...) in 6 groups (``g1`` ... ``g6``, ten subjects each) meet some of 30
items (``i01`` ...): each subject-item cell is observed with probability 0.5, with one to
three rows. A row-level predictor ``x`` (standard normal) has a fixed slope, and

    y = 10 + 2 x + (u0 + u1 x)_subject + (w0 + w1 x)_item + v_group + e

with ``sd(u0) = 1``, ``sd(u1) = 0.5``, ``corr(u0, u1) = 0.4``, ``sd(w0) = 0.8``,
``sd(w1) = 0.3`` (independent), ``sd(v) = 0.7`` and ``sd(e) = 1``: partially crossed
subjects and items, with subjects nested in groups. The numbers are fixed by the seed;
the file is committed, so this script documents it and need not be run again. Run from
the repository root: ``python tests/golden/make_crossed_panel.py``.
"""

from pathlib import Path

import numpy as np
import pandas as pd

rng = np.random.default_rng(20261205)
n_sub, n_item, n_group = 60, 30, 6
cov = np.array([[1.0, 0.4 * 0.5], [0.4 * 0.5, 0.25]])
u = rng.multivariate_normal(np.zeros(2), cov, size=n_sub)
w = np.column_stack([rng.normal(0, 0.8, n_item), rng.normal(0, 0.3, n_item)])
v = rng.normal(0, 0.7, n_group)
rows = []
for s in range(n_sub):
    g = s // (n_sub // n_group)
    for i in range(n_item):
        if rng.random() >= 0.5:
            continue
        for _ in range(rng.integers(1, 4)):
            x = rng.normal()
            y = 10 + 2 * x + u[s, 0] + u[s, 1] * x + w[i, 0] + w[i, 1] * x + v[g] + rng.normal()
            rows.append({"subject": f"s{s + 1:02d}", "item": f"i{i + 1:02d}", "group": f"g{g + 1}",
                         "x": round(x, 4), "y": round(y, 4)})
pd.DataFrame(rows).to_csv(Path(__file__).with_name("crossed_panel.csv"), index=False)
