"""Data simulated from a hierarchical linear model with known parameters.

The classic example: teaching evaluations of instructors within departments. Level 1
(instructor ``i`` in department ``j``): the evaluation depends on years of experience,

    evaluation_ij = b_0j + b_1j experience_ij + e_ij,          e_ij ~ N(0, sigma^2)

level 2 (department): the intercept depends on the department's class size and research
output, the experience slope on class size,

    b_0j = g_00 + g_01 class_size_j + g_02 research_j + u_0j
    b_1j = g_10 + g_11 class_size_j + u_1j,                    (u_0j, u_1j) ~ N(0, T)

which in mixed form is ``evaluation ~ experience * class_size + research + (experience | department)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_INSTRUCTOR_PARAMS = {
    "g00": 3.5,  # evaluation of a new instructor in an average department (1-5 scale)
    "g01": -0.02,  # per student of average class size
    "g02": 0.05,  # per unit of research output
    "g10": 0.04,  # per year of experience
    "g11": -0.001,  # change of the experience slope per student of class size
    "sd_intercept": 0.3,
    "sd_slope": 0.02,
    "corr": -0.3,
    "sigma": 0.4,
}


def simulate_instructors(n_departments=40, instructors=(4, 20), *, params=None, seed=None):
    """Teaching evaluations of instructors within departments, from known parameters.

    Parameters
    ----------
    n_departments : int
        Number of departments (level-2 units).
    instructors : (int, int)
        Smallest and largest number of instructors per department (uniform between them).
    params : dict, optional
        Overrides of :data:`DEFAULT_INSTRUCTOR_PARAMS` (``g00`` ... ``g11``, ``sd_intercept``,
        ``sd_slope``, ``corr``, ``sigma``).
    seed : int, optional
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    pandas.DataFrame
        Columns ``department``, ``instructor``, ``evaluation``, ``experience`` (years, level 1),
        ``class_size`` (students, centred at its mean) and ``research`` (publications per
        faculty member, centred), both level 2. ``df.attrs["truth"]`` holds the parameters
        and ``df.attrs["group_effects"]`` the drawn ``(u_0j, u_1j)``.

    Examples
    --------
    >>> import bayeshlm as bh
    >>> data = bh.simulate_instructors(n_departments=10, seed=1)
    >>> sorted(data.columns)
    ['class_size', 'department', 'evaluation', 'experience', 'instructor', 'research']
    """
    truth = {**DEFAULT_INSTRUCTOR_PARAMS, **(params or {})}
    unknown = set(truth) - set(DEFAULT_INSTRUCTOR_PARAMS)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; known: {sorted(DEFAULT_INSTRUCTOR_PARAMS)}")
    lo, hi = instructors
    if n_departments < 2 or lo < 1 or hi < lo:
        raise ValueError("need at least 2 departments and 1 <= instructors[0] <= instructors[1]")
    rng = np.random.default_rng(seed)
    sizes = rng.integers(lo, hi + 1, size=n_departments)
    class_size = rng.normal(0.0, 10.0, size=n_departments)
    research = rng.normal(0.0, 1.5, size=n_departments)
    sd = np.array([truth["sd_intercept"], truth["sd_slope"]])
    R = np.array([[1.0, truth["corr"]], [truth["corr"], 1.0]])
    u = rng.multivariate_normal(np.zeros(2), R * np.outer(sd, sd), size=n_departments)
    dept = np.repeat(np.arange(n_departments), sizes)
    experience = rng.uniform(0.0, 30.0, size=dept.size)
    b0 = truth["g00"] + truth["g01"] * class_size + truth["g02"] * research + u[:, 0]
    b1 = truth["g10"] + truth["g11"] * class_size + u[:, 1]
    evaluation = b0[dept] + b1[dept] * experience + rng.normal(0.0, truth["sigma"], size=dept.size)
    labels = np.array([f"D{j + 1:03d}" for j in range(n_departments)])
    frame = pd.DataFrame({
        "department": labels[dept],
        "instructor": [f"I{i + 1:05d}" for i in range(dept.size)],
        "evaluation": evaluation,
        "experience": experience,
        "class_size": class_size[dept],
        "research": research[dept],
    })
    frame.attrs["truth"] = truth
    frame.attrs["group_effects"] = u
    return frame
