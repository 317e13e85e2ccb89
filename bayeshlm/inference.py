"""t and F tests of the fixed effects of an EM fit with Satterthwaite's degrees of freedom.

A Wald test of the fixed effects treats ``Cov(a_hat) = V(theta)`` as known; with few groups
it is not, and the t statistic of a contrast ``l'a`` is closer to a t distribution whose
degrees of freedom match the variance of ``l'V(theta_hat)l`` to that of a scaled chi-square
(Satterthwaite 1946; Giesbrecht & Burns 1985): ``nu = 2 (l'Vl)^2 / (g' A g)``, ``g`` the
gradient of ``l'V(theta)l`` in the variance components and ``A`` their covariance, the
inverse observed information of the fit's (ML or REML) log-likelihood. Both are taken in the
kernels' unconstrained ``theta``: at an interior optimum the result does not depend on how
the variance components are parametrised, so it equals lmerTest's, which works with lme4's
``(theta, sigma)``. An F test of ``q`` contrasts rotates them to the eigenvectors of
``L V L'``, takes each one's ``nu_i``, and gives the denominator ``2 E / (E - q)`` with
``E = sum nu_i / (nu_i - 2)`` (Fai & Cornelius 1996), 2 when some ``nu_i <= 2``.

Kenward and Roger (1997) also correct the covariance: ``Phi_A = Phi + 2 Lambda`` adds what the
estimated variance components take from the precision of ``a_hat``, and the F statistic of
``q`` contrasts, scaled by ``lambda``, is referred to F(q, m) with ``m`` from matching two
moments. Both come from the derivatives ``G_i`` of the marginal covariance ``Sigma`` of the
rows in its variance and covariance parameters (linear: ``Sigma = sum theta_i G_i``), formed
dense within each top-level group, as pbkrtest forms them. HLM's degrees of freedom
(Raudenbush & Bryk 2002) give the coefficient of a group-level variable in the equation of a
random coefficient ``J - S - 1``: the groups of that level less the equation's terms.
docs/design.md, "Small-sample inference".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeshlm.em import EMResult, fixed_cov_at, observed_information
from bayeshlm.model import check_result, model_first, refuse_variance_model

__all__ = ["ContrastTest", "KenwardRoger", "contrast_df", "contrast_test", "kenward_roger", "t_tests"]

DDF = ("satterthwaite", "kenward-roger", "hlm", "normal")
KR_DENSE_LIMIT = 4000  # rows of one block of the dense marginal covariance (crossed factors: all rows)


def _check(model, fit, ddf):
    model, fit = model_first(model, fit, "t_tests")
    if not isinstance(fit, EMResult):
        raise TypeError(f"small-sample tests are of an EM fit (bayeshlm.fit_em), got {type(fit).__name__}")
    check_result(model, fit, "the fit")
    if ddf not in DDF:
        raise ValueError(f"ddf must be one of {DDF}, got {ddf!r}")
    if ddf != "normal":
        name = {"satterthwaite": "Satterthwaite's", "kenward-roger": "Kenward and Roger's", "hlm": "HLM's"}[ddf]
        if not model.gaussian:
            raise ValueError(f"{name} degrees of freedom are for Gaussian models; a {model.family} model's "
                             "fixed effects are tested by z (ddf='normal'), as glmer does")
        if fit.boundary and ddf in ("satterthwaite", "kenward-roger"):
            raise ValueError(f"{name} degrees of freedom need the variance components inside their range; "
                             f"{', '.join(fit.boundary)} is at zero: refit without it")
        if ddf in ("satterthwaite", "kenward-roger"):
            # their derivatives are in the group variance components only, not in sigma='s delta
            refuse_variance_model(model, f"{name} degrees of freedom")
        if ddf == "kenward-roger" and fit.method != "reml":
            raise ValueError("Kenward and Roger's adjustment is for REML fits: refit with fit_em(model, 'reml')")
        if ddf in ("kenward-roger", "hlm") and not model.rows_held:
            raise ValueError(f"{name} degrees of freedom need the model's rows; a model built from statistics "
                             "alone (hlm_stats) has none: use ddf='satterthwaite'")
    return model, fit


def _contrasts(model, L):
    """``L`` as a 2-D array of contrasts (rows) on the fixed effects in the model's order."""
    names = list(model.fixed_names)
    if isinstance(L, dict):
        unknown = [k for k in L if k not in names]
        if unknown:
            raise ValueError(f"unknown fixed effect {unknown[0]!r} in the contrast; the fixed effects are {names}")
        L = [[float(L.get(n, 0.0)) for n in names]]
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    if L.shape[1] != len(names):
        raise ValueError(f"a contrast has one coefficient per fixed effect ({len(names)}: {names}), got {L.shape[1]}")
    if not np.all(np.isfinite(L)) or np.linalg.matrix_rank(L) < L.shape[0]:
        raise ValueError("the contrasts must be finite and linearly independent")
    return L


def _satterthwaite(model, fit, L):
    """Each row's ``nu = 2 (l'Vl)^2 / (g'Ag)`` at the fit's variance components."""
    theta = np.asarray(fit.theta, dtype=np.float64)
    A = np.linalg.inv(observed_information(model, theta, fit.method))
    G = np.empty((L.shape[0], theta.size))
    for i in range(theta.size):
        h = 1e-4 * max(1.0, abs(theta[i]))
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        G[:, i] = (np.einsum("rp,pq,rq->r", L, fixed_cov_at(model, up), L)
                   - np.einsum("rp,pq,rq->r", L, fixed_cov_at(model, down), L)) / (2 * h)
    var = np.einsum("rp,pq,rq->r", L, fit.vcov_fixed, L)
    return 2.0 * var**2 / np.einsum("ri,ij,rj->r", G, A, G)


def _row_blocks(model):
    """Rows of each independent block of the marginal covariance: the top-level groups, or all rows when crossed."""
    design = model.design
    n = model.n_obs
    if design.crossed:
        blocks = [np.arange(n)]
    else:
        top = np.asarray((design.factor_idx or (design.group_idx,))[-1], dtype=np.int64)
        order = np.argsort(top, kind="stable")
        blocks = np.split(order, np.flatnonzero(np.diff(top[order])) + 1)
    largest = max(len(b) for b in blocks)
    if largest > KR_DENSE_LIMIT:
        where = "crossed factors make all rows one block" if design.crossed else \
            f"the largest group of {model.factors[-1]!r} has {largest} rows"
        raise ValueError(f"Kenward and Roger's adjustment forms the marginal covariance of each independent block of "
                         f"rows densely; {where}, above {KR_DENSE_LIMIT}: use ddf='satterthwaite'")
    return blocks


@dataclass(frozen=True)
class KenwardRoger:
    """Kenward and Roger's (1997) adjusted covariance of the fixed effects, and what their degrees of freedom need.

    ``vcov`` is ``Phi_A`` in the user's parametrisation; the other fields are in the
    kernels' basis with orthonormal columns (``a_user = to_user @ a + shift``): ``phi`` the unadjusted covariance,
    ``P`` the matrices ``-F' Sigma^-1 G_i Sigma^-1 F`` and ``W`` the inverse expected REML
    information of the variance parameters (docs/design.md, "Small-sample inference").
    """

    vcov: np.ndarray
    phi: np.ndarray
    phi_adjusted: np.ndarray
    P: np.ndarray
    W: np.ndarray
    to_user: np.ndarray

    def moments(self, L):
        """``(lambda, m)`` of the ``q`` rows of ``L`` (user's parametrisation): F scale and denominator df."""
        L = np.atleast_2d(L) @ self.to_user
        q = L.shape[0]
        phi = self.phi
        theta = L.T @ np.linalg.solve(L @ phi @ L.T, L)
        u = np.einsum("ab,ibc,cd->iad", theta @ phi, self.P, phi)
        tr = np.einsum("iaa->i", u)
        A1 = float(tr @ self.W @ tr)
        A2 = float(np.einsum("ij,iab,jba->", self.W, u, u))
        B = (A1 + 6 * A2) / (2 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        denom = 3 * q + 2 * (1 - g)
        c1, c2, c3 = g / denom, (q - g) / denom, (q + 2 - g) / denom
        e_star = 1 / (1 - A2 / q)
        v_star = (2 / q) * (1 + c1 * B) / ((1 - c2 * B) ** 2 * (1 - c3 * B))
        rho = v_star / (2 * e_star**2)
        m = 4 + (q + 2) / (q * rho - 1)
        scale = 1.0 if abs(m - 4) < 1e-2 else m / (e_star * (m - 2))
        return float(scale), float(m)


def kenward_roger(model, fit):
    """Kenward and Roger's adjusted covariance of a REML fit's fixed effects (pbkrtest's ``vcovAdj``).

    ``Sigma = sum_i theta_i G_i`` in the level-1 variance and the elements of each covariance
    block of the group coefficients; ``Phi = (F' Sigma^-1 F)^-1``, ``P_i = -F' Sigma^-1 G_i
    Sigma^-1 F``, ``Q_ij = F' Sigma^-1 G_i Sigma^-1 G_j Sigma^-1 F``, and the expected REML
    information ``I_ij = (tr(Sigma^-1 G_i Sigma^-1 G_j) - 2 tr(Phi Q_ij) + tr(Phi P_i Phi
    P_j)) / 2``, ``W = I^-1``. Then ``Phi_A = Phi + 2 Phi [sum_ij W_ij (Q_ij - P_i Phi P_j)]
    Phi``. The sums run over the independent blocks of rows (the top-level groups), each
    formed densely; computed in the kernels' basis, where the columns are on one scale.

    Returns
    -------
    KenwardRoger
    """
    from samplers.theta import covariances

    model, fit = _check(model, fit, "kenward-roger")
    design, basis = model.design, model.basis
    if not model.coef_names:
        raise ValueError("Kenward and Roger's adjustment is for models with group-level variance components; "
                         "this model has none")
    _, F, X = basis.rows(design.y, design.F, design.X)
    # orthonormal columns (F = Q R): a product of a shifted column with another stays nearly
    # collinear with it in the kernels' basis, and the traces below would lose its digits
    R = np.linalg.qr(F, mode="r")
    F = np.linalg.solve(R.T, F.T).T
    w = basis.weights(design.obs_var, design.weights)
    s2, T = covariances(np.asarray(fit.theta, dtype=np.float64)[None, :], model.structure)
    s2, T = float(s2[0]), T[0]
    resid = np.full(model.n_obs, s2) if w is None else s2 / w
    sizes = design.factor_sizes or (len(model.coef_names),)
    col_factor = np.repeat(np.arange(len(sizes)), sizes)
    idx_all = [np.asarray(i, dtype=np.int64) for i in (design.factor_idx or (design.group_idx,))]
    bp = model.structure.block_ptr
    pairs = [(a, b) for k in range(len(bp) - 1) for a in range(bp[k], bp[k + 1]) for b in range(bp[k], a + 1)]
    residual = not model.sigma_known
    m = len(pairs) + residual
    p = F.shape[1]
    info = np.zeros((p, p))
    P = np.zeros((m, p, p))
    Q = np.zeros((m, m, p, p))
    K = np.zeros((m, m))
    for rows in _row_blocks(model):
        Fj, Xj = F[rows], X[rows]
        same = [idx[rows][:, None] == idx[rows][None, :] for idx in idx_all]
        G = []
        if residual:
            G.append(np.diag(resid[rows] / s2))
        for a, b in pairs:
            outer = np.outer(Xj[:, a], Xj[:, b])
            G.append(same[col_factor[a]] * (outer if a == b else outer + outer.T))
        G = np.array(G)
        V = np.diag(resid[rows]) + np.einsum("i,iab->ab", np.array([T[a, b] for a, b in pairs]), G[residual:])
        Vinv = np.linalg.inv(V)
        TT = Vinv @ Fj
        info += Fj.T @ TT
        GT = G @ TT  # (m, n_j, p)
        P -= np.einsum("ra,irb->iab", TT, GT)
        Q += np.einsum("ira,rs,jsb->ijab", GT, Vinv, GT)
        H = G @ Vinv
        K += np.einsum("iab,jba->ij", H, H)
    phi = np.linalg.inv(info)
    IE = K - 2 * np.einsum("ab,ijba->ij", phi, Q) + np.einsum("ab,ibc,cd,jda->ij", phi, P, phi, P)
    W = 2 * np.linalg.inv(IE)
    U = np.einsum("ij,ijab->ab", W, Q) - np.einsum("ij,iab,bc,jcd->ad", W, P, phi, P)
    phi_a = phi + 2 * phi @ U @ phi
    to_user = basis.fixed_to_user()[0] @ np.linalg.inv(R)
    return KenwardRoger(to_user @ phi_a @ to_user.T, phi, phi_a, P, W, to_user)


def _hlm_df(model):
    """HLM's degrees of freedom of each fixed effect (docs/design.md, "Small-sample inference").

    A fixed column that is a group-level variable times one of a factor's random coefficients'
    columns is a term of that coefficient's equation; at the coarsest factor where it is one,
    its df is the factor's number of groups less the terms of that equation. Any other column
    is a coefficient of level 1 alone: ``N - p``.
    """
    from bayeshlm.model import coef_parts

    design = model.design
    p = len(model.fixed_names)
    home = [None] * p
    for k in range(len(model.factors)):
        _, fixed_maps, _, _ = coef_parts(model, k)
        for f, own, _ in fixed_maps:
            home[f] = (k, own)
    counts = {}
    for h in home:
        if h is not None:
            counts[h] = counts.get(h, 0) + 1
    labels = design.factor_labels or (design.group_labels,)
    return np.array([model.n_obs - p if h is None else len(labels[h[0]]) - counts[h] for h in home], dtype=float)


def contrast_df(model, fit, L, ddf="satterthwaite"):
    """The degrees of freedom of each row of ``L`` taken as a contrast of its own.

    Parameters
    ----------
    model : Model
    fit : EMResult
    L : array_like (q, p) or (p,), or dict
        Contrasts on the fixed effects in the model's order, or ``{term: coefficient}``.
    ddf : {"satterthwaite", "kenward-roger", "hlm", "normal"}
        With ``"hlm"`` a contrast has the smallest df of the terms it involves.

    Returns
    -------
    ndarray of shape (q,)
    """
    model, fit = _check(model, fit, ddf)
    L = np.atleast_2d(np.asarray(L, dtype=np.float64)) if not isinstance(L, dict) else _contrasts(model, L)
    if L.shape[1] != len(model.fixed_names) or not np.all(np.isfinite(L)):
        raise ValueError(f"a contrast has one finite coefficient per fixed effect ({len(model.fixed_names)}: "
                         f"{list(model.fixed_names)}), got {L.shape[1]}")
    if ddf == "normal":
        return np.full(L.shape[0], np.inf)
    if ddf == "satterthwaite":
        return _satterthwaite(model, fit, L)
    if ddf == "hlm":
        df = _hlm_df(model)
        return np.array([df[np.abs(row) > 0].min() if np.any(row) else np.inf for row in L])
    kr = kenward_roger(model, fit)
    return np.array([kr.moments(row)[1] for row in L])


def t_tests(model, fit, *, ddf="satterthwaite"):
    """Each fixed effect's t test, as lmerTest's ``summary(fit, ddf=...)`` prints it.

    Parameters
    ----------
    model : Model
        The model of the fit.
    fit : EMResult
        Its REML (or ML) fit.
    ddf : {"satterthwaite", "kenward-roger", "hlm", "normal"}
        Satterthwaite's degrees of freedom; Kenward and Roger's, with their adjusted standard
        errors (REML fits); HLM's ``J - S - 1`` for the terms of a random coefficient's
        equation and ``N - p`` for the others; or none (the z test of
        :meth:`EMResult.fixed_table`).

    Returns
    -------
    pandas.DataFrame
        Index ``term``; columns ``estimate, se, df, t, p_value`` (two-sided).
    """
    from scipy.stats import norm
    from scipy.stats import t as student

    model, fit = _check(model, fit, ddf)
    names = list(model.fixed_names)
    est = np.array([fit.fixed[n] for n in names])
    eye = np.eye(len(names))
    if ddf == "kenward-roger":
        kr = kenward_roger(model, fit)
        se = np.sqrt(np.diag(kr.vcov))
        df = np.array([kr.moments(row)[1] for row in eye])
    else:
        se = np.sqrt(np.diag(fit.vcov_fixed))
        df = contrast_df(model, fit, eye, ddf)
    stat = est / se
    p = 2 * norm.sf(np.abs(stat)) if ddf == "normal" else 2 * student.sf(np.abs(stat), df)
    table = pd.DataFrame({"estimate": est, "se": se, "df": df, "t": stat, "p_value": p}, index=names)
    table.index.name = "term"
    return table


@dataclass(frozen=True)
class ContrastTest:
    """An F test of ``q`` linear contrasts ``L a = 0`` of the fixed effects (a t test when ``q = 1``)."""

    L: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    F: float
    num_df: int
    den_df: float
    p_value: float
    ddf: str

    def __str__(self) -> str:
        method = {"satterthwaite": "Satterthwaite", "kenward-roger": "Kenward-Roger", "hlm": "HLM's df",
                  "normal": "no small-sample correction"}[self.ddf]
        return f"F = {self.F:.4f} on {self.num_df} and {self.den_df:.2f} df, p = {self.p_value:.4g} ({method})"


def contrast_test(model, fit, L, *, ddf="satterthwaite"):
    """F test of the linear contrasts ``L a = 0`` (lmerTest's ``contest(fit, L, joint = TRUE)``).

    Parameters
    ----------
    model : Model
    fit : EMResult
    L : array_like (q, p) or (p,), or dict
        Contrasts on the fixed effects in the model's order, or ``{term: coefficient}`` for one.
    ddf : {"satterthwaite", "kenward-roger", "hlm", "normal"}
        With ``"kenward-roger"`` (pbkrtest's ``KRmodcomp``) ``V`` is the adjusted covariance
        and ``F`` is scaled by Kenward and Roger's ``lambda``; with ``"hlm"`` the denominator
        is the smallest df of the terms involved.

    Returns
    -------
    ContrastTest
        ``F = (La)'(L V L')^-1 (La) / q`` with ``q`` and the denominator degrees of freedom
        (infinite with ``ddf="normal"``: a chi-square test divided by ``q``).
    """
    from scipy.stats import chi2
    from scipy.stats import f as fisher

    model, fit = _check(model, fit, ddf)
    L = _contrasts(model, L)
    a = np.array([fit.fixed[n] for n in model.fixed_names])
    q = L.shape[0]
    kr = kenward_roger(model, fit) if ddf == "kenward-roger" else None
    M = L @ (fit.vcov_fixed if kr is None else kr.vcov) @ L.T
    est = L @ a
    F = float(est @ np.linalg.solve(M, est) / q)
    if kr is not None:
        scale, den = kr.moments(L)
        F *= scale
        p = float(fisher.sf(F, q, den))
    elif ddf == "hlm":
        den = float(contrast_df(model, fit, np.abs(L).sum(axis=0), "hlm")[0])
        p = float(fisher.sf(F, q, den))
    elif ddf == "normal":
        den = np.inf
        p = float(chi2.sf(q * F, q))
    else:
        values, vectors = np.linalg.eigh(M)
        nu = _satterthwaite(model, fit, vectors.T @ L)
        if q == 1 or np.all(np.abs(nu - nu[0]) < 1e-8):
            den = float(nu[0])
        elif np.any(nu <= 2):
            den = 2.0
        else:
            E = float(np.sum(nu / (nu - 2)))
            den = 2 * E / (E - q)
        p = float(fisher.sf(F, q, den))
    return ContrastTest(L, est, np.sqrt(np.diag(M)), F, q, float(den), p, ddf)
