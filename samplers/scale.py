"""The level-1 steps of a Gaussian sweep whose level-1 variance is not one ``sigma^2 / w_i``.

docs/design.md, "Heterogeneous level-1 variance" and "Student-t level 1". Row ``i`` has the
level-1 precision ``w_i lambda_i exp(-z_i' delta - 2 e_g(i)) / s2``: ``w`` the precision
weights, ``z`` the standardised columns of ``sigma=``, ``e_j`` a group's log-SD deviation
(a ``(1 | g)`` term) and ``lambda_i`` the scale-mixture weight of a Student-t level 1 (1
otherwise). Given the row precisions the model is a weighted Gaussian one, whose sweep
(:func:`samplers.sweep.sweep`) draws ``(theta, a, b)``; given ``(s2, a, b)`` the functions
here draw the level-1 parameters from their conditionals:

* ``nu`` (estimated): a Metropolis-Hastings move on ``log(nu - 1)`` with ``lambda`` integrated
  out, proposed from a Newton step of the log density at the current value (two passes over
  the rows, each a ``log1p`` and a division per row);
* ``lambda_i ~ Gamma((nu + 1) / 2, rate (nu + u_i) / 2)``, ``u_i`` the row's scaled squared
  residual, by Marsaglia and Tsang's method (the shape is at least 1);
* ``delta``: the concave conditional's Newton mode and curvature, then an independence
  Metropolis-Hastings proposal ``Normal(mode, 1.2^2 (-H)^-1)``;
* each ``e_j``: the same in one dimension;
* ``omega``: slice moves on ``log omega`` given the ``e_j`` and given ``e_j / omega``.

All of it reads the rows once per sweep (plus a pass per Newton step of ``delta``), and
:func:`samplers.suffstats.reweight` forms the statistics the sweep reads from the new
precisions (from the rows' cross-products, kept once, docs/design.md, "Statistics of reweighted rows").
"""

import math

import numpy as np
from numba import njit

from samplers.gaussian import finest_coefficients
from samplers.suffstats import reweight
from samplers.types import (
    L1_DELTA_ACC,
    L1_DELTA_N,
    L1_E_ACC,
    L1_E_N,
    L1_LOGLIK,
    L1_NU_ACC,
    L1_NU_N,
)

DELTA_PRIOR_SD = 2.5  # Normal(0, 2.5) on each standardised column's delta
OMEGA_PRIOR_SCALE = 1.0  # half-normal scale of the SD of the groups' log SDs
NU_PRIOR_SHAPE, NU_PRIOR_RATE = 2.0, 0.1  # nu ~ Gamma(2, 0.1) restricted to nu >= 1 (brms's default)
PROPOSAL_INFLATION = 1.2  # the independence proposals' SD relative to the Laplace approximation
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# Slots of Level1.par after the k delta: log omega, nu
PAR_LOG_OMEGA, PAR_NU = 0, 1


@njit(cache=True, nogil=True)
def residuals(l1, structure, work, a, b):
    """``l1.r[i] = y_i - F_i a - X_i b_g(i)`` at the current coefficients."""
    coef = finest_coefficients(work, structure, b)
    # every array a loop reads is taken out of the tuple first: compiled code reads a field of
    # a tuple this large slowly, a local array at full speed
    F, X, g, y, r = l1.F, l1.X, l1.gidx, l1.y, l1.r
    p, d = F.shape[1], X.shape[1]
    for i in range(y.shape[0]):
        e = y[i]
        for q in range(p):
            e -= F[i, q] * a[q]
        j = g[i]
        for k in range(d):
            e -= X[i, k] * coef[j, k]
        r[i] = e


@njit(cache=True, nogil=True, inline="always")
def _row_log_scale(Z, par, e, vg, i):
    """``z_i' delta + 2 e_g(i)``: row ``i``'s log variance relative to ``s2 / w_i`` (``par`` starts with ``delta``)."""
    t = 0.0
    for m in range(Z.shape[1]):
        t += Z[i, m] * par[m]
    if e.shape[0] > 0:
        t += 2.0 * e[vg[i]]
    return t


@njit(cache=True, nogil=True)
def loglik(l1, s2):
    """``sum_i log p(y_i | a, b, theta, level-1 parameters)`` at ``l1.r``, each row's kept in ``l1.ll_row`` if room.

    Student-t rows with ``lambda`` integrated out. In the user's units: ``l1.log_y_scale``
    (the log of the response's scale in the kernels' basis) is taken from each row.
    """
    Z, par, e, vg, r, bw, ll_row = l1.Z, l1.par, l1.e, l1.vgidx, l1.r, l1.base_w, l1.ll_row
    keep = ll_row.shape[0] > 0
    total = 0.0
    student = l1.student != 0
    nu = par[Z.shape[1] + PAR_NU]
    log_y_scale = l1.log_y_scale
    c_t = 0.0
    if student:
        c_t = math.lgamma(0.5 * (nu + 1.0)) - math.lgamma(0.5 * nu) - 0.5 * math.log(nu * math.pi)
    log_s2 = math.log(s2)
    inv_s2 = 1.0 / s2
    plain = Z.shape[1] == 0 and e.shape[0] == 0  # no variance model: neither exp nor log per row
    for i in range(r.shape[0]):
        if plain:
            b = bw[i]
            log_var = log_s2 if b == 1.0 else log_s2 - math.log(b)
            u = r[i] * r[i] * b * inv_s2
        else:
            log_var = log_s2 + _row_log_scale(Z, par, e, vg, i) - math.log(bw[i])
            u = r[i] * r[i] * math.exp(-log_var)
        if student:
            ll = c_t - 0.5 * log_var - 0.5 * (nu + 1.0) * math.log1p(u / nu)
        else:
            ll = -_HALF_LOG_2PI - 0.5 * log_var - 0.5 * u
        ll -= log_y_scale
        if keep:
            ll_row[i] = ll
        total += ll
    return total


@njit(cache=True, nogil=True)
def keep_loglik(l1, k):
    """Keep draw ``k``: the rows' log-likelihoods into ``l1.ll_out``, the level-1 parameters into their stores."""
    if k < l1.par_out.shape[0]:
        l1.par_out[k, :] = l1.par
    if k < l1.e_out.shape[0]:
        l1.e_out[k, :] = l1.e
    if l1.ll_out.shape[1] == 0 or k >= l1.ll_out.shape[0]:
        return
    out, idx, ll_row = l1.ll_out[k], l1.out_idx, l1.ll_row
    out[:] = 0.0
    for i in range(ll_row.shape[0]):
        out[idx[i]] += ll_row[i]


# ---------------------------------------------------------------------------------------------- slice sampling
SLICE_OMEGA_CENTRED, SLICE_OMEGA_NONCENTRED = 1, 2


@njit(cache=True, nogil=True)
def _slice_target(kind, x, l1):
    """The log density, on its unconstrained coordinate ``x = log omega``, of a slice move's parameter.

    ``SLICE_OMEGA_CENTRED``: the ``e_j`` held. ``SLICE_OMEGA_NONCENTRED``:
    ``eps_j = e_j / omega`` held (``l1.eps``), the groups' likelihood
    from their row counts ``l1.gn`` and sums ``l1.gq``.
    """
    if x < -12.0 or x > 6.0:
        return -np.inf
    omega = math.exp(x)
    prior = -0.5 * (omega / OMEGA_PRIOR_SCALE) ** 2 + x
    ev, eps, gn, gq = l1.e, l1.eps, l1.gn, l1.gq
    n_g = ev.shape[0]
    if kind == SLICE_OMEGA_CENTRED:
        ss = 0.0
        for j in range(n_g):
            ss += ev[j] * ev[j]
        return prior - n_g * x - 0.5 * ss / (omega * omega)
    total = prior
    for j in range(n_g):
        e = omega * eps[j]
        total += -gn[j] * e - 0.5 * gq[j] * math.exp(-2.0 * e)
    return total


@njit(cache=True, nogil=True)
def slice_move(rng, kind, x0, l1, width=1.0, max_steps=30):
    """One slice-sampling update of ``x0`` (Neal 2003: stepping out, then shrinkage)."""
    f0 = _slice_target(kind, x0, l1)
    level = f0 - rng.standard_exponential()
    lo = x0 - width * rng.random()
    hi = lo + width
    steps = 0
    while steps < max_steps and _slice_target(kind, lo, l1) > level:
        lo -= width
        steps += 1
    steps = 0
    while steps < max_steps and _slice_target(kind, hi, l1) > level:
        hi += width
        steps += 1
    while True:
        x = lo + (hi - lo) * rng.random()
        if _slice_target(kind, x, l1) > level:
            return x
        if x < x0:
            lo = x
        else:
            hi = x
        if hi - lo < 1e-12:
            return x0


# ---------------------------------------------------------------------------------------------- nu
NU_X_MAX = 8.0  # log(nu - 1) above 8 (nu above 3000): indistinguishable from the normal, and the prior is nil there
NU_MAX_STEP = 2.0  # the proposal's largest Newton step on log(nu - 1)
NU_RW_SD = 1.0  # the proposal's SD where the log density is not concave


@njit(cache=True, nogil=True)
def _digamma(x):
    """``psi(x)`` for ``x > 0``: the recurrence up to 6, then the asymptotic series (error below 1e-13)."""
    r = 0.0
    while x < 6.0:
        r -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    return r + math.log(x) - 0.5 / x - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (
        1.0 / 240.0 - f / 132.0))))


@njit(cache=True, nogil=True)
def _trigamma(x):
    """``psi'(x)`` for ``x > 0``, likewise."""
    r = 0.0
    while x < 6.0:
        r += 1.0 / (x * x)
        x += 1.0
    f = 1.0 / (x * x)
    return r + 1.0 / x + 0.5 * f + f / x * (1.0 / 6.0 - f * (1.0 / 30.0 - f * (1.0 / 42.0 - f / 30.0)))


@njit(cache=True, nogil=True)
def nu_terms(x, u):
    """The log density of ``x = log(nu - 1)`` given the scaled squared residuals ``u``, and its two derivatives.

    ``lambda`` integrated out: ``sum_i log t_nu(r_i / s_i)`` (each ``u_i = r_i^2 / s_i^2``),
    the ``Gamma(2, 0.1)`` prior on ``nu`` and the Jacobian ``nu - 1``. One pass over the rows:
    ``S = sum_i log(1 + u_i / nu)``, and with ``t_i = u_i / (nu + u_i)``, ``S' = -sum_i t_i / nu``
    and ``S'' = sum_i t_i (2 - t_i) / nu^2`` (docs/design.md, "Student-t level 1").
    """
    if x > NU_X_MAX:
        return -np.inf, 0.0, 0.0
    m = math.exp(x)
    nu = 1.0 + m
    n = u.shape[0]
    inv = 1.0 / nu
    s = 0.0
    st = 0.0
    stt = 0.0
    for i in range(n):
        ui = u[i]
        s += math.log1p(ui * inv)
        t = ui / (nu + ui)
        st += t
        stt += t * t
    s1 = -st * inv
    s2 = (2.0 * st - stt) * inv * inv
    h0, h1 = 0.5 * (nu + 1.0), 0.5 * nu
    a0 = n * (math.lgamma(h0) - math.lgamma(h1) - 0.5 * math.log(nu))
    a1 = n * (0.5 * (_digamma(h0) - _digamma(h1)) - 0.5 * inv)
    a2 = n * (0.25 * (_trigamma(h0) - _trigamma(h1)) + 0.5 * inv * inv)
    shape1 = NU_PRIOR_SHAPE - 1.0
    f = a0 - h0 * s + shape1 * math.log(nu) - NU_PRIOR_RATE * nu + x
    f1 = a1 - 0.5 * s - h0 * s1 + shape1 * inv - NU_PRIOR_RATE
    f2 = a2 - s1 - h0 * s2 - shape1 * inv * inv
    return f, f1 * m + 1.0, f2 * m * m + f1 * m


@njit(cache=True, nogil=True, inline="always")
def _nu_proposal(x, g, h):
    """The proposal's mean and SD from ``x``: a Newton step (at most 2) and SD ``1.2 / sqrt(-h)``, or a random walk."""
    if h < -1e-8:
        step = -g / h
        step = min(max(step, -NU_MAX_STEP), NU_MAX_STEP)
        return x + step, min(PROPOSAL_INFLATION / math.sqrt(-h), NU_RW_SD)
    return x, NU_RW_SD


@njit(cache=True, nogil=True)
def move_nu(rng, l1, counting):
    """A Metropolis-Hastings move of ``nu`` (``lambda`` integrated out) from a Newton step of its log density.

    The proposal ``Normal(mu(x), sd(x)^2)`` on ``x = log(nu - 1)`` depends on the current
    ``x`` through the log density's derivatives there; the acceptance ratio has the reverse
    proposal's density, from the derivatives at the proposed point (docs/design.md,
    "Student-t level 1"). Near-independent draws for two passes over the rows.
    """
    i_nu = l1.Z.shape[1] + PAR_NU
    u = l1.u
    x0 = math.log(l1.par[i_nu] - 1.0)
    f0, g0, h0 = nu_terms(x0, u)
    mu0, sd0 = _nu_proposal(x0, g0, h0)
    x1 = mu0 + sd0 * rng.standard_normal()
    f1, g1, h1 = nu_terms(x1, u)
    if counting:
        l1.scal[L1_NU_N] += 1.0
    if f1 == -np.inf:
        return
    mu1, sd1 = _nu_proposal(x1, g1, h1)
    q_fwd = -0.5 * ((x1 - mu0) / sd0) ** 2 - math.log(sd0)
    q_rev = -0.5 * ((x0 - mu1) / sd1) ** 2 - math.log(sd1)
    if math.log(rng.random()) < f1 - f0 + q_rev - q_fwd:
        l1.par[i_nu] = 1.0 + math.exp(x1)
        if counting:
            l1.scal[L1_NU_ACC] += 1.0


@njit(cache=True, nogil=True, inline="always")
def _standard_gamma(rng, d, c):
    """A ``Gamma(d + 1/3, 1)`` draw by Marsaglia and Tsang (2000), ``c = 1 / sqrt(9 d)``: exact for shape >= 1."""
    while True:
        x = rng.standard_normal()
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        w = rng.random()
        x2 = x * x
        if w < 1.0 - 0.0331 * x2 * x2 or math.log(w) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
            return d * v


@njit(cache=True, nogil=True)
def draw_weights(rng, nu, u, lam):
    """``lam[i] ~ Gamma((nu + 1) / 2, rate (nu + u_i) / 2)``, the Student-t scale-mixture weights given ``u``."""
    d = 0.5 * (nu + 1.0) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    for i in range(u.shape[0]):
        lam[i] = _standard_gamma(rng, d, c) * 2.0 / (nu + u[i])


# ---------------------------------------------------------------------------------------------- delta
@njit(cache=True, nogil=True)
def _delta_terms(l1, delta, grad, hess):
    """The conditional log density of ``delta`` (up to a constant), its gradient and Hessian.

    ``log p = -1/2 sum_i z_i' delta - 1/2 sum_i q_i exp(-z_i' delta - 2 e_g(i)) - |delta|^2 / (2 s^2)``
    with ``q_i = l1.q[i]``, the row's squared residual times its precision but for the variance
    model; with ``l1.grouped`` the sums run over the groups of the statistics, ``n_j`` rows and
    ``l1.grss[j]`` each.
    """
    k = delta.shape[0]
    prec = 1.0 / (DELTA_PRIOR_SD * DELTA_PRIOR_SD)
    f = 0.0
    for m in range(k):
        f -= 0.5 * prec * delta[m] * delta[m]
        grad[m] = -prec * delta[m]
        for c in range(k):
            hess[m, c] = -prec if m == c else 0.0
    ev = l1.e
    groups = ev.shape[0] > 0
    grouped = l1.grouped != 0
    # rows, or the groups of the statistics (each with its rows' count)
    Z = l1.gz if grouped else l1.Z
    q = l1.grss if grouped else l1.q
    v = l1.gv if grouped else l1.vgidx
    counts = l1.base.n
    n_units = Z.shape[0]
    for i in range(n_units):
        t = 0.0
        for m in range(k):
            t += Z[i, m] * delta[m]
        count = counts[i] if grouped else 1.0
        h = q[i] * math.exp(-t - 2.0 * ev[v[i]]) if groups else q[i] * math.exp(-t)
        f -= 0.5 * (count * t + h)
        for m in range(k):
            grad[m] += 0.5 * Z[i, m] * (h - count)
            for c in range(m + 1):
                hess[m, c] -= 0.5 * h * Z[i, m] * Z[i, c]
    for m in range(k):
        for c in range(m + 1, k):
            hess[m, c] = hess[c, m]
    return f


@njit(cache=True, nogil=True)
def _delta_mode(l1, start, grad, hess, n_iter=30):
    """Newton's method from ``start`` on the concave conditional of ``delta``; returns the mode."""
    k = start.shape[0]
    x = start.copy()
    f = _delta_terms(l1, x, grad, hess)
    for _ in range(n_iter):
        step = np.linalg.solve(-hess, grad)
        t = 1.0
        while True:  # a damped step: the log density must rise
            trial = x + t * step
            g2 = np.empty(k)
            h2 = np.empty((k, k))
            f2 = _delta_terms(l1, trial, g2, h2)
            if f2 >= f - 1e-12 or t < 1e-6:
                break
            t *= 0.5
        moved = 0.0
        for m in range(k):
            moved = max(moved, abs(trial[m] - x[m]))
        x = trial
        f = f2
        grad[:] = g2
        hess[:, :] = h2
        if moved < 1e-9:
            break
    return x


@njit(cache=True, nogil=True)
def move_delta(rng, l1, counting):
    """An independence Metropolis-Hastings move of ``delta`` from the Laplace approximation of its conditional."""
    k = l1.Z.shape[1]
    delta = l1.par[:k].copy()
    grad = np.empty(k)
    hess = np.empty((k, k))
    mode = _delta_mode(l1, delta, grad, hess)
    c = PROPOSAL_INFLATION
    L = np.linalg.cholesky(-hess / (c * c))  # the proposal's precision, L L'
    # draw mode + L'^-1 z: solve L' x = z
    zz = np.empty(k)
    for m in range(k):
        zz[m] = rng.standard_normal()
    x = np.linalg.solve(L.T, zz)
    prop = mode + x
    g = np.empty(k)
    h = np.empty((k, k))
    f_new = _delta_terms(l1, prop, g, h)
    f_old = _delta_terms(l1, delta, g, h)
    # log q(.) = -1/2 |L'(. - mode)|^2
    q_new = -0.5 * np.dot(zz, zz)
    v = L.T @ (delta - mode)
    q_old = -0.5 * np.dot(v, v)
    if counting:
        l1.scal[L1_DELTA_N] += 1.0
    if math.log(rng.random()) < f_new - f_old + q_old - q_new:
        l1.par[:k] = prop
        if counting:
            l1.scal[L1_DELTA_ACC] += 1.0


# ---------------------------------------------------------------------------------------------- e_j and omega
@njit(cache=True, nogil=True, inline="always")
def _e_terms(n, Q, prec, e):
    """``log p(e)``, its first and second derivatives: ``-n e - Q exp(-2e) / 2 - prec e^2 / 2``."""
    h = Q * math.exp(-2.0 * e)
    return -n * e - 0.5 * h - 0.5 * prec * e * e, -n + h - prec * e, -2.0 * h - prec


@njit(cache=True, nogil=True)
def move_groups(rng, l1, counting):
    """Each group's ``e_j`` by an independence move from its Laplace approximation, then ``omega`` by slice moves."""
    k = l1.Z.shape[1]
    omega = math.exp(l1.par[k + PAR_LOG_OMEGA])
    prec = 1.0 / (omega * omega)
    c = PROPOSAL_INFLATION
    for j in range(l1.e.shape[0]):
        n, Q = l1.gn[j], l1.gq[j]
        e0 = l1.e[j]
        x = e0
        for _ in range(50):
            _, d1, d2 = _e_terms(n, Q, prec, x)
            step = -d1 / d2
            if step > 2.0:
                step = 2.0
            elif step < -2.0:
                step = -2.0
            x += step
            if abs(step) < 1e-10:
                break
        _, _, d2 = _e_terms(n, Q, prec, x)
        sd = c / math.sqrt(-d2)
        prop = x + sd * rng.standard_normal()
        f_new, _, _ = _e_terms(n, Q, prec, prop)
        f_old, _, _ = _e_terms(n, Q, prec, e0)
        q_new = -0.5 * ((prop - x) / sd) ** 2
        q_old = -0.5 * ((e0 - x) / sd) ** 2
        if counting:
            l1.scal[L1_E_N] += 1.0
        if math.log(rng.random()) < f_new - f_old + q_old - q_new:
            l1.e[j] = prop
            if counting:
                l1.scal[L1_E_ACC] += 1.0
    # omega given the e_j (centred), then given e_j / omega (non-centred)
    x = slice_move(rng, SLICE_OMEGA_CENTRED, l1.par[k + PAR_LOG_OMEGA], l1)
    l1.par[k + PAR_LOG_OMEGA] = x
    omega = math.exp(x)
    for j in range(l1.e.shape[0]):
        l1.eps[j] = l1.e[j] / omega
    x = slice_move(rng, SLICE_OMEGA_NONCENTRED, x, l1)
    l1.par[k + PAR_LOG_OMEGA] = x
    omega = math.exp(x)
    for j in range(l1.e.shape[0]):
        l1.e[j] = omega * l1.eps[j]


# ---------------------------------------------------------------------------------------------- the step
@njit(cache=True, nogil=True)
def level1_step(rng, l1, s2, counting):
    """Draw the level-1 parameters given the residuals ``l1.r`` and ``s2``, then recompute ``l1.stats``.

    ``counting``: after warm-up, count the independence moves and their acceptances.
    """
    n = l1.y.shape[0]
    k = l1.Z.shape[1]
    n_g = l1.e.shape[0]
    if l1.grouped != 0:
        _grouped_step(rng, l1, counting)
        return
    Z, par, ev, vg, r, bw, u, q, lam, w = l1.Z, l1.par, l1.e, l1.vgidx, l1.r, l1.base_w, l1.u, l1.q, l1.lam, l1.w
    plain = k == 0 and n_g == 0  # a Student-t level 1 without a variance model: no exponential per row
    inv_s2 = 1.0 / s2
    if plain:
        for i in range(n):
            u[i] = bw[i] * r[i] * r[i] * inv_s2
    else:
        for i in range(n):
            u[i] = bw[i] * r[i] * r[i] * inv_s2 * math.exp(-_row_log_scale(Z, par, ev, vg, i))
    if l1.student != 0:
        if l1.nu_fixed == 0.0:
            move_nu(rng, l1, counting)
        draw_weights(rng, par[k + PAR_NU], u, lam)
    if plain:
        for i in range(n):
            w[i] = bw[i] * lam[i]
        reweight(l1.stats, l1.prod, l1.y, l1.F, l1.X, l1.gidx, w)
        return
    for i in range(n):  # the row's scaled squared residual without its exp(-z' delta - 2 e)
        q[i] = bw[i] * lam[i] * r[i] * r[i] * inv_s2
    if k > 0:
        move_delta(rng, l1, counting)
    if n_g > 0:
        gq = l1.gq
        gq[:] = 0.0
        for i in range(n):
            t = 0.0
            for m in range(k):
                t += Z[i, m] * par[m]
            gq[vg[i]] += q[i] * math.exp(-t)
        move_groups(rng, l1, counting)
    for i in range(n):
        w[i] = bw[i] * lam[i] * math.exp(-_row_log_scale(Z, par, ev, vg, i))
    reweight(l1.stats, l1.prod, l1.y, l1.F, l1.X, l1.gidx, w)


@njit(cache=True, nogil=True)
def scale_statistics(l1):
    """``l1.stats``: each group's part of ``l1.base`` times its precision factor ``exp(-z_j' delta - 2 e_g(j))``."""
    st, base = l1.stats, l1.base
    gz, par, ev, gv = l1.gz, l1.par, l1.e, l1.gv
    p, d = base.Fty.shape[0], base.Xty.shape[1]
    st.FtF[:, :] = 0.0
    st.Fty[:] = 0.0
    yty = 0.0
    logw = 0.0
    per_group = base.FtF_g.shape[0] > 0
    for j in range(base.n.shape[0]):
        t = _row_log_scale(gz, par, ev, gv, j)
        c = math.exp(-t)
        st.n[j] = base.n[j]
        for m in range(d):
            st.Xty[j, m] = c * base.Xty[j, m]
            for r in range(d):
                st.XtX[j, m, r] = c * base.XtX[j, m, r]
            for q in range(p):
                st.XtF[j, m, q] = c * base.XtF[j, m, q]
        st.yty_g[j] = c * base.yty_g[j]
        st.logw_g[j] = base.logw_g[j] - base.n[j] * t
        for q in range(p):
            st.Fty_g[j, q] = c * base.Fty_g[j, q]
            st.Fty[q] += c * base.Fty_g[j, q]
            for r in range(p):
                x = c * base.FtF_g[j, q, r]
                st.FtF[q, r] += x
                if per_group:
                    st.FtF_g[j, q, r] = x
        yty += c * base.yty_g[j]
        logw += st.logw_g[j]
    st.scal[0] = yty
    st.scal[1] = base.scal[1]
    st.scal[2] = logw


@njit(cache=True, nogil=True)
def _grouped_step(rng, l1, counting):
    """:func:`level1_step` when the precisions are constant within the groups of the statistics: no row is read."""
    k = l1.Z.shape[1]
    if k > 0:
        move_delta(rng, l1, counting)
    if l1.e.shape[0] > 0:
        gz, par, gv, grss, gq = l1.gz, l1.par, l1.gv, l1.grss, l1.gq
        gq[:] = 0.0
        for j in range(grss.shape[0]):
            t = 0.0
            for m in range(k):
                t += gz[j, m] * par[m]
            gq[gv[j]] += grss[j] * math.exp(-t)
        move_groups(rng, l1, counting)
    scale_statistics(l1)


@njit(cache=True, nogil=True)
def group_rss(l1, structure, work, a, b, s2):
    """``l1.grss[j]``: group ``j``'s residual sum of squares, weighted by the precision weights, over ``s2``.

    A quadratic form in the group's statistics (``l1.base``) at ``(a, b_j)``; returns the
    log-likelihood of all rows at the current level-1 parameters.
    """
    coef = finest_coefficients(work, structure, b)
    base = l1.base
    gz, par, ev, gv, grss = l1.gz, l1.par, l1.e, l1.gv, l1.grss
    p, d = base.Fty.shape[0], base.Xty.shape[1]
    total = 0.0
    for j in range(base.n.shape[0]):
        rss = base.yty_g[j]
        for q in range(p):
            fa = 0.0
            for r in range(p):
                fa += base.FtF_g[j, q, r] * a[r]
            rss += a[q] * (fa - 2.0 * base.Fty_g[j, q])
        for m in range(d):
            bm = coef[j, m]
            xa = 0.0
            for q in range(p):
                xa += base.XtF[j, m, q] * a[q]
            xb = 0.0
            for r in range(d):
                xb += base.XtX[j, m, r] * coef[j, r]
            rss += bm * (2.0 * xa + xb - 2.0 * base.Xty[j, m])
        grss[j] = max(rss, 0.0) / s2
        t = _row_log_scale(gz, par, ev, gv, j)
        total += (-0.5 * base.n[j] * (2.0 * _HALF_LOG_2PI + math.log(s2) + t) + 0.5 * base.logw_g[j]
                  - 0.5 * math.exp(-t) * grss[j])
    return total - l1.y.shape[0] * l1.log_y_scale


@njit(cache=True, nogil=True)
def start_weights(l1):
    """The statistics at the chain's starting level-1 parameters (before its first sweep)."""
    if l1.grouped != 0:
        scale_statistics(l1)
        return
    Z, par, ev, vg, bw, lam, w = l1.Z, l1.par, l1.e, l1.vgidx, l1.base_w, l1.lam, l1.w
    for i in range(w.shape[0]):
        w[i] = bw[i] * lam[i] * math.exp(-_row_log_scale(Z, par, ev, vg, i))
    reweight(l1.stats, l1.prod, l1.y, l1.F, l1.X, l1.gidx, w)


@njit(cache=True, nogil=True)
def after_sweep(l1, structure, work, a, b, s2, kept):
    """Residuals at the sweep's new coefficients (the next level-1 step reads them), the log-likelihood if ``kept``.

    With ``l1.grouped`` the groups' residual sums of squares instead, and the rows only for
    a kept draw whose rows' log-likelihoods are stored.
    """
    if l1.grouped != 0:
        total = group_rss(l1, structure, work, a, b, s2)
        if kept and l1.ll_row.shape[0] > 0:
            residuals(l1, structure, work, a, b)
            total = loglik(l1, s2)
        l1.scal[L1_LOGLIK] = total
        return
    residuals(l1, structure, work, a, b)
    l1.scal[L1_LOGLIK] = loglik(l1, s2) if kept else np.nan


__all__ = ["DELTA_PRIOR_SD", "NU_PRIOR_RATE", "NU_PRIOR_SHAPE", "OMEGA_PRIOR_SCALE", "PAR_LOG_OMEGA", "PAR_NU",
           "after_sweep", "draw_weights", "keep_loglik", "level1_step", "loglik", "move_delta", "move_groups",
           "move_nu", "nu_terms", "residuals", "slice_move", "start_weights"]
