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


def _count(spec, rng, size):
    if isinstance(spec, (int, np.integer)):
        return np.full(size, int(spec))
    lo, hi = spec
    return rng.integers(lo, hi + 1, size=size)


def simulate_nested(levels=(("district", 10), ("school", (2, 5)), ("class", (2, 4))), rows=(2, 8), *,
                    fixed=None, sd=None, sigma=1.0, seed=None):
    """Data from a hierarchy of nested groups of any depth, with known parameters.

    Level 1 is a row (a student) with predictor ``x``; every grouping level above has random
    coefficients with the SDs in ``sd``; the coarsest level has a context variable ``z``,
    so that ``x:z`` is a cross-level interaction. With levels ``district > school > class``:

        y = g0 + g1 x + g2 z + g3 x z + u_district + u_school + u_class + v_class x + e

    Parameters
    ----------
    levels : sequence of (str, int or (int, int))
        From the coarsest level down: the factor's column name, then the number of groups
        (coarsest level) or of groups within each parent (an int, or uniform between two
        bounds). Labels are unique only within their parent ("s1" in every district), as in
        most real data: write the model with ``/`` or ``a:b``.
    rows : int or (int, int)
        Rows in each finest group.
    fixed : dict, optional
        Fixed effects among ``Intercept``, ``x``, ``z``, ``x:z``; default
        ``{"Intercept": 10, "x": 2, "z": 1, "x:z": 0.5}``.
    sd : dict, optional
        ``{level name: {"Intercept": sd, "x": sd}}``, independent random coefficients; default
        an intercept SD of 1 at every level and a slope SD of 0.5 on ``x`` at the finest.
    sigma : float
        Level-1 residual SD.
    seed : int, optional

    Returns
    -------
    pandas.DataFrame
        Columns ``y``, ``x``, ``z`` and one per level. ``attrs["formula"]`` is the matching
        model, ``attrs["truth"]`` the parameters under the names that
        :func:`bayeshlm.fit_em` and :func:`bayeshlm.sample` use (``"Intercept|district:school"``).

    Examples
    --------
    >>> import bayeshlm as bh
    >>> df = bh.simulate_nested(seed=1)
    >>> df.attrs["formula"]
    'y ~ x * z + (1 | district) + (1 | district:school) + (x || district:school:class)'
    """
    rng = np.random.default_rng(seed)
    names = [name for name, _ in levels]
    if len(names) < 1 or len(set(names)) != len(names):
        raise ValueError("levels must name one or more distinct grouping columns")
    fixed = {"Intercept": 10.0, "x": 2.0, "z": 1.0, "x:z": 0.5} if fixed is None else dict(fixed)
    unknown = set(fixed) - {"Intercept", "x", "z", "x:z"}
    if unknown:
        raise ValueError(f"unknown fixed effects {sorted(unknown)}; use Intercept, x, z, x:z")
    if sd is None:
        sd = {name: {"Intercept": 1.0} for name in names}
        sd[names[-1]] = {"Intercept": 1.0, "x": 0.5}
    for name, coefs in sd.items():
        if name not in names or set(coefs) - {"Intercept", "x"}:
            raise ValueError(f"sd must map level names {names} to {{'Intercept': sd, 'x': sd}}, got {name!r}: {coefs}")
    # the tree, from the top: parent of each group of each level
    counts = [int(_count(levels[0][1], rng, 1)[0])]
    parents = [np.full(counts[0], -1)]
    local = [np.arange(counts[0])]
    for _, spec in levels[1:]:
        kids = _count(spec, rng, counts[-1])
        parents.append(np.repeat(np.arange(counts[-1]), kids))
        local.append(np.concatenate([np.arange(k) for k in kids]))
        counts.append(int(kids.sum()))
    n_rows = _count(rows, rng, counts[-1])
    finest = np.repeat(np.arange(counts[-1]), n_rows)
    n = finest.size
    # each row's group at every level, from the finest up
    idx = [finest]
    for k in range(len(levels) - 1, 0, -1):
        idx.insert(0, parents[k][idx[0]])
    x = rng.normal(size=n)
    z_top = rng.normal(size=counts[0])
    z = z_top[idx[0]]
    y = (fixed.get("Intercept", 0.0) + fixed.get("x", 0.0) * x + fixed.get("z", 0.0) * z
         + fixed.get("x:z", 0.0) * x * z + rng.normal(0.0, sigma, size=n))
    truth = {"fixed": fixed, "sigma": sigma, "sd": {}}
    effects = {}
    bars = []
    for k, name in enumerate(names):
        factor = ":".join(names[: k + 1])
        coefs = sd.get(name, {})
        for coef, s in coefs.items():
            u = rng.normal(0.0, s, size=counts[k])
            effects[f"{coef}|{factor}"] = u
            truth["sd"][f"{coef}|{factor}"] = s
            y += u[idx[k]] * (1.0 if coef == "Intercept" else x)
        if set(coefs) == {"Intercept", "x"}:
            bars.append(f"(x || {factor})")
        elif coefs:
            bars.append(f"({'1' if 'Intercept' in coefs else '0 + x'} | {factor})")
    frame = pd.DataFrame({"y": y, "x": x, "z": z})
    prefix = {names[0]: "d", names[-1]: "c"}
    for k, name in enumerate(names):
        tag = prefix.get(name, "s") if len(names) > 1 else "g"
        frame[name] = [f"{tag}{i + 1}" for i in local[k][idx[k]]]
    terms = [t for t in ("x", "z") if t in fixed]
    fixed_part = "x * z" if "x:z" in fixed else (" + ".join(terms) or "1")
    if "Intercept" not in fixed:
        fixed_part = "0 + " + fixed_part
    frame.attrs["formula"] = f"y ~ {fixed_part} + " + " + ".join(bars)
    frame.attrs["truth"] = truth
    frame.attrs["group_effects"] = effects
    return frame


def simulate_crossed(n_subjects=30, n_items=20, *, fill=1.0, reps=1, fixed=None, sd=None, sigma=1.0, seed=None):
    """Data from two crossed random factors, subjects x items, with known parameters.

    Every subject meets a subset of the items (each subject-item cell is observed with
    probability ``fill``, with at least one item per subject and one subject per item), and
    each observed cell gives ``reps`` rows. A row-level predictor ``x`` (a condition, say)
    has a fixed slope; the subjects have a random intercept and a random slope on ``x``, the
    items a random intercept:

        y = g0 + g1 x + u_subject + v_subject x + w_item + e

    which in mixed form is ``y ~ x + (x || subject) + (1 | item)`` (psycholinguistics'
    by-subject and by-item random effects). With ``fill`` below 1 the design is partially
    crossed, the normal case in practice.

    Parameters
    ----------
    n_subjects, n_items : int
        Numbers of levels of the two factors.
    fill : float
        Probability that a subject-item cell is observed, in (0, 1].
    reps : int or (int, int)
        Rows per observed cell (or uniform between two bounds).
    fixed : dict, optional
        ``{"Intercept": g0, "x": g1}``; default ``{"Intercept": 10, "x": 2}``.
    sd : dict, optional
        ``{"subject": {"Intercept": sd, "x": sd}, "item": {"Intercept": sd, "x": sd}}``,
        independent random coefficients; default ``{"subject": {"Intercept": 1, "x": 0.5},
        "item": {"Intercept": 0.8}}``.
    sigma : float
        Level-1 residual SD.
    seed : int, optional

    Returns
    -------
    pandas.DataFrame
        Columns ``y``, ``x``, ``subject`` (``"s1"``, ...) and ``item`` (``"i1"``, ...).
        ``attrs["formula"]`` is the matching model, ``attrs["truth"]`` the parameters
        (SDs under ``"<coef>|<factor>"``), ``attrs["group_effects"]`` the drawn effects.

    Examples
    --------
    >>> import bayeshlm as bh
    >>> df = bh.simulate_crossed(n_subjects=40, n_items=25, fill=0.5, seed=1)
    >>> df.attrs["formula"]
    'y ~ x + (x || subject) + (1 | item)'
    """
    rng = np.random.default_rng(seed)
    for name, value in (("n_subjects", n_subjects), ("n_items", n_items)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 < fill <= 1.0:
        raise ValueError(f"fill must be in (0, 1], got {fill!r}")
    fixed = {"Intercept": 10.0, "x": 2.0} if fixed is None else dict(fixed)
    unknown = set(fixed) - {"Intercept", "x"}
    if unknown:
        raise ValueError(f"unknown fixed effects {sorted(unknown)}; use Intercept, x")
    if sd is None:
        sd = {"subject": {"Intercept": 1.0, "x": 0.5}, "item": {"Intercept": 0.8}}
    for name, coefs in sd.items():
        if name not in ("subject", "item") or set(coefs) - {"Intercept", "x"}:
            raise ValueError(f"sd must map 'subject' and 'item' to {{'Intercept': sd, 'x': sd}}, got {name!r}: {coefs}")
    # the observed cells: Bernoulli(fill), then at least one per subject and per item
    cells = rng.random((n_subjects, n_items)) < fill
    empty_rows = ~cells.any(axis=1)
    cells[empty_rows, rng.integers(0, n_items, size=int(empty_rows.sum()))] = True
    empty_cols = ~cells.any(axis=0)
    cells[rng.integers(0, n_subjects, size=int(empty_cols.sum())), empty_cols] = True
    subj_cell, item_cell = np.nonzero(cells)
    n_rows = _count(reps, rng, subj_cell.size)
    subject = np.repeat(subj_cell, n_rows)
    item = np.repeat(item_cell, n_rows)
    n = subject.size
    x = rng.normal(size=n)
    y = fixed.get("Intercept", 0.0) + fixed.get("x", 0.0) * x + rng.normal(0.0, sigma, size=n)
    truth = {"fixed": fixed, "sigma": sigma, "sd": {}}
    effects = {}
    bars = []
    for factor, idx, count in (("subject", subject, n_subjects), ("item", item, n_items)):
        coefs = sd.get(factor, {})
        for coef, s in coefs.items():
            u = rng.normal(0.0, s, size=count)
            effects[f"{coef}|{factor}"] = u
            truth["sd"][f"{coef}|{factor}"] = s
            y += u[idx] * (1.0 if coef == "Intercept" else x)
        if set(coefs) == {"Intercept", "x"}:
            bars.append(f"(x || {factor})")
        elif coefs:
            bars.append(f"({'1' if 'Intercept' in coefs else '0 + x'} | {factor})")
    frame = pd.DataFrame({"y": y, "x": x, "subject": [f"s{i + 1}" for i in subject],
                          "item": [f"i{j + 1}" for j in item]})
    fixed_part = "x" if "x" in fixed else "1"
    if "Intercept" not in fixed:
        fixed_part = "0 + " + fixed_part
    frame.attrs["formula"] = f"y ~ {fixed_part} + " + " + ".join(bars)
    frame.attrs["truth"] = truth
    frame.attrs["group_effects"] = effects
    return frame
