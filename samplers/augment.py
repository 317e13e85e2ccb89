"""The level-1 steps of a non-Gaussian sweep: data augmentation, and an exact correction where none exists.

A sweep of a model with a binomial or Poisson level 1 is the Gaussian sweep on working
statistics that this module forms from the rows (docs/design.md, "Non-Gaussian level 1"):

* **logit link** (binomial, Bernoulli): Pólya–Gamma augmentation (Polson, Scott & Windle
  2013). Given the linear predictor ``eta_i``, ``omega_i ~ PG(n_i, eta_i)``; given
  ``omega``, the likelihood in ``(a, b)`` is Gaussian with precision weights ``omega_i`` and
  working response ``kappa_i / omega_i - offset_i``, ``kappa_i = y_i - n_i / 2``.
* **probit link**: the augmentation of Albert & Chib (1993). Each of the row's ``n_i``
  trials has a latent ``u ~ N(eta_i, 1)``, positive for a success and negative for a
  failure; given them the likelihood is Gaussian with weight ``n_i`` and working response
  ``mean(u) - offset_i``.
* **Poisson, log link**: no augmentation makes the likelihood Gaussian exactly. A count
  ``y_i`` is the number of events of a Poisson process of rate ``mu_i = exp(eta_i)`` in
  ``(0, 1)``; its ``y_i + 1`` inter-arrival times ``t_ij`` (the last one ending after 1)
  are independent ``Exp(mu_i)`` a priori, so ``-log t_ij = eta_i + e_ij`` with ``e_ij``
  distributed as ``-log Exp(1)`` (Frühwirth-Schnatter & Wagner 2006). Given ``eta`` the
  times are drawn exactly; each ``e_ij`` is then given a component ``r_ij`` of a mixture
  of ten normals ``g(e) = sum_k w_k N(e; m_k, v_k)`` fitted to that distribution, and
  given the components the likelihood is Gaussian (weights ``1 / v_r``). The mixture is
  an approximation; :func:`correct` removes it: the coefficients the Gaussian sweep draws
  are a proposal accepted with probability ``min(1, f(new) / f(old))``,
  ``f = prod_ij p(e_ij) / g(e_ij)``, which makes the chain exact whatever the mixture
  (docs/design.md, "Poisson level 1"). The ratio is close to 1 because the mixture is.

Everything here reads the rows once per sweep (the only ``O(n_obs)`` work of a non-Gaussian
sweep); :func:`samplers.suffstats.reweight` turns the working rows into the statistics the
Gaussian passes read, from the rows' cross-products kept once (docs/design.md, "Statistics of
reweighted rows").
"""

import math

import numpy as np
from numba import njit
from numba.extending import overload

from samplers.fastexp import exp_neg
from samplers.gaussian import draw_coefficients, finest_coefficients, forget_statistics, integrate
from samplers.glm import BINOMIAL_LOGIT, BINOMIAL_PROBIT, POISSON_LOG, working
from samplers.polyagamma import draw_pg
from samplers.suffstats import recompute, reweight
from samplers.theta import decode_theta
from samplers.types import (
    AUG_LOG_F,
    AUG_LOGLIK,
    AUG_MEAN_OMEGA,
    AUG_N_ACC,
    AUG_N_PROP,
    AUG_NO_CORRECTION,
    AUG_STALE,
    FACTORED,
    IND_LQ,
    MHMoves,
)

_SQRT2 = math.sqrt(2.0)

# Ten normals whose mixture approximates the density exp(-e - exp(-e)) of -log E, E ~ Exp(1):
# weights, means and variances, fitted by EM to that density on a fine grid (docs/design.md,
# "Poisson level 1", gives the fit's accuracy; tests/test_poisson_mixture.py checks it).
MIX_W = np.array([0.0598251391709632, 0.10956320756049122, 0.1187928573896317, 0.12302007103984382,
                  0.13109534701169853, 0.14269992008224688, 0.18509839093811356, 0.10368054873619073,
                  0.02403317363774658, 0.00219134443307387])
MIX_M = np.array([-1.1288749322787768, -0.666645281938893, -0.20358110517306546, 0.06979915469428793,
                  0.3710423288328748, 0.7087598710319134, 1.3347184013668603, 2.2700476325293857,
                  3.7086566161713184, 5.503992454211637])
MIX_V = np.array([0.13908516848101676, 0.13425119558807935, 0.17150985416453537, 0.26900579980587414,
                  0.3479611566323407, 0.4121456945714161, 0.6617030977278004, 1.2366639987865955,
                  2.2694180392193055, 4.92633209275226])

MAX_START_STEP = 2.0  # the largest change of a row's predictor in one step of the start's search

# A count above this gets two latent values instead of y + 1: the time of its y-th event, whose
# -log is eta + e with e ~ -log Gamma(y, 1), approximated by one normal (the correction's
# variance per such row is about 1 / (6 y)), and the wait after it
LARGE_COUNT = 50


def latent_capacity(y):
    """Room for a Poisson chain's latent times: ``y_i + 1`` for each row, 2 for a count above ``LARGE_COUNT``."""
    y = np.asarray(y)
    return int(np.sum(np.where(y > LARGE_COUNT, 1, y))) + len(y)


def mixture_table(w=MIX_W, m=MIX_M, v=MIX_V):
    """The rows ``log w_k - log(2 pi v_k) / 2``, ``m_k`` and ``1 / v_k`` a chain reads (``Augmentation.mix``)."""
    w, m, v = (np.asarray(x, dtype=np.float64) for x in (w, m, v))
    return np.ascontiguousarray(np.stack([np.log(w) - 0.5 * np.log(2.0 * np.pi * v), m, 1.0 / v]))


@njit(cache=True, nogil=True)
def _softplus(x):
    """``log(1 + exp(x))`` without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, nogil=True)
def row_loglik(family, y, n, const, eta):
    """``log p(y | eta)`` of one row; ``const`` its normalising constant (binomial coefficient, ``-log y!``)."""
    if family == POISSON_LOG:
        return const + y * eta - math.exp(eta)
    if family == BINOMIAL_LOGIT:
        return const - y * _softplus(-eta) - (n - y) * _softplus(eta)
    p = 0.5 * math.erfc(-eta / _SQRT2)
    q = 0.5 * math.erfc(eta / _SQRT2)
    return const + y * math.log(max(p, 1e-300)) + (n - y) * math.log(max(q, 1e-300))


@njit(cache=True, nogil=True)
def _lower_truncated_normal(rng, lo):
    """A draw of ``N(0, 1)`` truncated to ``(lo, inf)``, exact.

    Below 0 by rejection from the normal itself (acceptance above 1/2); above it from a
    shifted exponential with rate ``(lo + sqrt(lo^2 + 4)) / 2`` (Robert 1995), whose
    acceptance is above 0.76 for every ``lo >= 0``.
    """
    if lo <= 0.0:
        while True:
            x = rng.standard_normal()
            if x > lo:
                return x
    rate = 0.5 * (lo + math.sqrt(lo * lo + 4.0))
    while True:
        x = lo + rng.standard_exponential() / rate
        if rng.random() <= math.exp(-0.5 * (x - rate) * (x - rate)):
            return x


@njit(cache=True, nogil=True)
def linear_predictor(aug, structure, work, a, b, eta):
    """``eta_i = offset_i + F_i a + X_i b_g(i)`` for every row (the log-likelihood at it: :func:`rows_loglik`)."""
    coef = finest_coefficients(work, structure, b)
    F, X, g = aug.F, aug.X, aug.gidx
    p, d = F.shape[1], X.shape[1]
    for i in range(eta.shape[0]):
        e = aug.offset[i]
        for q in range(p):
            e += F[i, q] * a[q]
        j = g[i]
        for k in range(d):
            e += X[i, k] * coef[j, k]
        eta[i] = e


@njit(cache=True, nogil=True)
def rows_loglik(aug):
    """``sum_i log p(y_i | eta_i)`` at ``aug.eta``, each row's value kept in ``aug.ll_row`` when it has room."""
    keep = aug.ll_row.shape[0] > 0
    total = 0.0
    for i in range(aug.eta.shape[0]):
        ll = row_loglik(aug.family, aug.y[i], aug.n[i], aug.const[i], aug.eta[i])
        if keep:
            aug.ll_row[i] = ll
        total += ll
    return total


@njit(cache=True, nogil=True)
def keep_loglik(aug, k):
    """Add the rows' log-likelihoods at the current draw into kept draw ``k`` of ``aug.ll_out``."""
    if aug.ll_out.shape[1] == 0 or k >= aug.ll_out.shape[0]:
        return
    out = aug.ll_out[k]
    out[:] = 0.0
    for i in range(aug.ll_row.shape[0]):
        out[aug.out_idx[i]] += aug.ll_row[i]


@njit(cache=True, nogil=True)
def forget(state):
    """The statistics were replaced: nothing the chain computed from the old ones may be reused."""
    state.ibuf[FACTORED] = 0
    forget_statistics(state.work)
    forget_statistics(state.scratch)


@njit(cache=True, nogil=True, inline="always")
def _mixture_terms(mix, e, weight):
    """``weight[k] = w_k N(e; m_k, v_k)`` relative to the largest; returns ``log p(e) - log g(e)`` and their sum.

    The component of ``e`` is ``k`` with probability ``weight[k] / sum``. The exponentials
    are of non-positive numbers (:func:`samplers.fastexp.exp_neg`).
    """
    top = -np.inf
    n_mix = mix.shape[1]
    for k in range(n_mix):
        dev = e - mix[1, k]
        c = mix[0, k] - 0.5 * dev * dev * mix[2, k]
        weight[k] = c
        top = max(top, c)
    total = 0.0
    for k in range(n_mix):
        q = exp_neg(weight[k] - top)
        weight[k] = q
        total += q
    log_g = top + math.log(total)
    return -e - math.exp(-e) - log_g, total


@njit(cache=True, nogil=True, inline="always")
def _log_gamma_moments(y):
    """Mean and variance of ``-log G``, ``G ~ Gamma(y, 1)``: ``-digamma(y)``, ``trigamma(y)`` (asymptotic, y > 20)."""
    r = 1.0 / y
    r2 = r * r
    psi = math.log(y) - 0.5 * r - r2 * (1.0 / 12.0 - r2 * (1.0 / 120.0 - r2 / 252.0))
    tri = r + 0.5 * r2 + r * r2 * (1.0 / 6.0 - r2 * (1.0 / 30.0 - r2 / 42.0))
    return -psi, tri


@njit(cache=True, nogil=True, inline="always")
def _event_time_term(y, e):
    """``log p(e) - log g(e)`` for ``e ~ -log Gamma(y, 1)`` against one normal; returns it, ``m`` and ``1 / v``."""
    m, v = _log_gamma_moments(y)
    dev = e - m
    log_p = -y * e - math.exp(-e) - math.lgamma(y)
    log_g = -0.5 * math.log(2.0 * math.pi * v) - 0.5 * dev * dev / v
    return log_p - log_g, m, 1.0 / v


@njit(cache=True, nogil=True)
def log_correction(aug, eta):
    """``log f = sum_ij log p(e_ij) - log g(e_ij)`` at the predictor ``eta``, the arrival times ``aug.lat`` given."""
    weight = np.empty(aug.mix.shape[1])
    total = 0.0
    for i in range(eta.shape[0]):
        e = eta[i]
        start = aug.lat_ptr[i]
        if aug.y[i] > LARGE_COUNT:  # the y-th event's time, then the wait
            diff, _, _ = _event_time_term(aug.y[i], aug.lat[start] - e)
            total += diff
            start += 1
        for j in range(start, aug.lat_ptr[i + 1]):
            diff, _ = _mixture_terms(aug.mix, aug.lat[j] - e, weight)
            total += diff
    return total


@njit(cache=True, nogil=True)
def _augment_poisson(rng, aug):
    """The arrival times and mixture components given ``aug.eta``, the working rows, and ``log f`` at ``aug.eta``.

    Given ``y_i`` events in ``(0, 1)``, the event times are uniform order statistics whatever
    the rate: their spacings are ``E_j / (E_1 + ... + E_{y+1})`` with ``E`` standard
    exponentials, the last of those ``E`` standing for the gap from the last event to 1,
    after which the next event comes ``Exp(mu_i)`` later. A count above
    :data:`LARGE_COUNT` keeps only the time of its last event, ``U^(1/y)`` (the largest of
    ``y`` uniforms), and the wait after it. Returns False when ``aug.lat`` is too short.
    """
    n_obs = aug.y.shape[0]
    ptr = aug.lat_ptr
    ptr[0] = 0
    for i in range(n_obs):
        ptr[i + 1] = ptr[i] + (2 if aug.y[i] > LARGE_COUNT else int(aug.y[i]) + 1)
    if ptr[n_obs] > aug.lat.shape[0]:
        return False
    mix = aug.mix
    n_mix = mix.shape[1]
    prob = np.empty(n_mix)
    log_f = 0.0
    for i in range(n_obs):
        e = aug.eta[i]
        start, stop = ptr[i], ptr[i + 1]
        last = stop - 1
        weight = 0.0
        resp = 0.0
        if aug.y[i] > LARGE_COUNT:
            # -log of the y-th event's time, U^(1/y): E / y; then the gap to 1 and the wait
            t_log = rng.standard_exponential() / aug.y[i]
            aug.lat[start] = t_log
            tail = -math.expm1(-t_log) + rng.standard_exponential() * math.exp(-e)
            aug.lat[last] = -math.log(tail)
            diff, m, prec = _event_time_term(aug.y[i], t_log - e)
            log_f += diff
            weight += prec
            resp += (t_log - m) * prec
            start += 1
        else:
            total = 0.0
            for j in range(start, stop):
                g = rng.standard_exponential()
                aug.lat[j] = g
                total += g
            # the y spacings, then the gap from the y-th event to 1 plus an Exp(mu) wait
            for j in range(start, last):
                aug.lat[j] = -math.log(aug.lat[j] / total)
            tail = aug.lat[last] / total + rng.standard_exponential() * math.exp(-e)
            aug.lat[last] = -math.log(tail)
        for j in range(start, stop):
            diff, total = _mixture_terms(mix, aug.lat[j] - e, prob)
            log_f += diff
            u = rng.random() * total
            acc = 0.0
            k = n_mix - 1
            for m in range(n_mix):
                acc += prob[m]
                if u < acc:
                    k = m
                    break
            weight += mix[2, k]
            resp += (aug.lat[j] - mix[1, k]) * mix[2, k]
        aug.w[i] = weight
        aug.z[i] = resp / weight - aug.offset[i]
    aug.scal[AUG_LOG_F] = log_f
    return True


@njit(cache=True, nogil=True)
def augment(rng, aug):
    """Draw the augmentation given ``aug.eta`` (logit, probit) and recompute ``aug.stats`` from it.

    Logit: ``omega_i ~ PG(n_i, eta_i)``, or, with ``aug.scal[AUG_MEAN_OMEGA]`` set, its
    conditional mean ``n_i tanh(eta_i / 2) / (2 eta_i)`` instead of a draw: a deliberately
    wrong step, for the test that shows SBC rejects it. Probit: the trials' latent normals.
    Poisson: the arrival times and their mixture components, and ``log f`` at ``aug.eta``
    (:func:`correct`). Returns False when ``aug.lat`` cannot hold the latent values.
    """
    family = aug.family
    if family == POISSON_LOG:
        ok = _augment_poisson(rng, aug)
        reweight(aug.stats, aug.prod, aug.z, aug.F, aug.X, aug.gidx, aug.w)
        return ok
    mean_omega = aug.scal[AUG_MEAN_OMEGA] != 0.0
    for i in range(aug.y.shape[0]):
        e = aug.eta[i]
        n = aug.n[i]
        y = aug.y[i]
        if family == BINOMIAL_LOGIT:
            if mean_omega:
                w = 0.25 * n if abs(e) < 1e-8 else n * math.tanh(0.5 * e) / (2.0 * e)
            else:
                w = draw_pg(rng, int(n), e)
            aug.w[i] = w
            aug.z[i] = (y - 0.5 * n) / w - aug.offset[i]
        else:  # probit: y successes (u > 0) and n - y failures (u < 0)
            total = 0.0
            for _ in range(int(y)):
                total += e + _lower_truncated_normal(rng, -e)
            for _ in range(int(n - y)):
                total += e - _lower_truncated_normal(rng, e)
            aug.w[i] = n
            aug.z[i] = total / n - aug.offset[i]
    # the sums of log w are a constant of the working likelihood within the sweep: not formed
    reweight(aug.stats, aug.prod, aug.z, aug.F, aug.X, aug.gidx, aug.w)
    return True


def reverts_theta(moves):
    """Whether a rejected Poisson proposal also takes back the sweep's variance components (compiled code only)."""
    raise NotImplementedError("compiled code only")


@overload(reverts_theta)
def _reverts_theta_impl(moves):
    # Metropolis-Hastings moves on p(theta | working data) are part of the proposal; Gibbs
    # moves given the coefficients leave the exact posterior invariant on their own
    if moves.instance_class is MHMoves:
        return lambda moves: True
    return lambda moves: False


@njit(cache=True, nogil=True, inline="always")
def save_draw(aug, state):
    """Keep the predictor and the draw before a Poisson sweep proposes new ones (:func:`correct`)."""
    aug.eta_prev[:] = aug.eta
    aug.a_prev[:] = state.a
    aug.b_prev[:, :] = state.b
    aug.theta_prev[:] = state.theta


@njit(cache=True, nogil=True, inline="always")
def correct(rng, aug, state, structure, moves, counting):
    """Accept or take back the coefficients a Poisson sweep drew from the mixture's Gaussian model.

    The sweep's draw of ``(a, b)`` given ``theta`` and the mixture components is exact for the
    Gaussian working model; the model with the exact density of ``e_ij`` differs from it by
    the factor ``f``, so the draw is a proposal accepted with probability
    ``min(1, f(new) / f(old))``. With Gibbs moves the proposal is the coefficients alone
    (``theta`` was drawn given the old ones, exactly). With Metropolis-Hastings moves,
    ``theta`` moved on ``p(theta | working data)`` with the coefficients integrated out, by a
    reversible kernel (``MHMoves.shuffled``, ``marginal``): ``theta`` and the coefficients
    are then one joint proposal, accepted or taken back together (delayed acceptance,
    Christen & Fox 2005; docs/design.md). Leaves ``aug.eta`` at the chain's current draw.
    """
    linear_predictor(aug, structure, state.work, state.a, state.b, aug.eta)
    log_f = log_correction(aug, aug.eta)
    accept = aug.scal[AUG_NO_CORRECTION] != 0.0 or math.log(rng.random()) < log_f - aug.scal[AUG_LOG_F]
    if counting:
        aug.scal[AUG_N_PROP] += 1.0
        if accept:
            aug.scal[AUG_N_ACC] += 1.0
    if accept:
        aug.scal[AUG_LOG_F] = log_f
        return
    aug.eta[:] = aug.eta_prev
    state.a[:] = aug.a_prev
    state.b[:, :] = aug.b_prev
    if reverts_theta(moves):
        state.theta[:] = aug.theta_prev
        state.scal[IND_LQ] = np.nan  # the independence proposal's density at the current theta


@njit(cache=True, nogil=True)
def working_rows(aug, eta, w, z):
    """IRLS working weights and responses at ``eta``: ``w_i`` the information, ``z_i = eta_i + r_i - offset_i``."""
    for i in range(eta.shape[0]):
        wi, ri = working(aug.family, aug.y[i], aug.n[i], eta[i])
        w[i] = wi
        z[i] = eta[i] + ri - aug.offset[i]


@njit(cache=True, nogil=True)
def seek_mode(rng, aug, state, structure, priors, n_iter):
    """Start a chain near the conditional mode of ``(a, b)`` given its ``theta``.

    ``n_iter`` iterations of iteratively reweighted least squares from ``aug.eta``: the
    working statistics at the current predictor, then the posterior mean of ``(a, b)`` in
    that Gaussian model (the Newton step of the penalised log-likelihood), stopping when the
    predictor moves less than 1e-8. ``aug.stats`` is left as the working statistics at the
    last predictor, from which the chain draws its first coefficients. A start far from the
    mode would cost the chain warm-up sweeps. A step that would move some row's predictor by
    more than ``MAX_START_STEP`` is shortened to that (a count of 50,000 among zeros would
    otherwise overshoot by orders of magnitude).
    """
    work = state.work
    decode_theta(state.theta, structure, priors, work.C)
    eta_new = np.empty(aug.eta.shape[0])
    for _ in range(n_iter):
        working_rows(aug, aug.eta, aug.w, aug.z)
        recompute(aug.stats, aug.z, aug.F, aug.X, aug.gidx, aug.w)
        forget(state)
        _, ok = integrate(work, aug.stats, structure, 1.0, priors.fixed)
        if not ok:
            return
        draw_coefficients(rng, work, aug.stats, structure, 1.0, state.a, state.b, False)
        linear_predictor(aug, structure, work, state.a, state.b, eta_new)
        moved = 0.0
        for i in range(eta_new.shape[0]):
            moved = max(moved, abs(eta_new[i] - aug.eta[i]))
        if not np.isfinite(moved):  # a step that overflowed: start from the last finite predictor
            break
        if moved > MAX_START_STEP:  # a Newton step far outside the quadratic's reach: a shorter one
            shrink = MAX_START_STEP / moved
            for i in range(eta_new.shape[0]):
                eta_new[i] = aug.eta[i] + shrink * (eta_new[i] - aug.eta[i])
        aug.eta[:] = eta_new
        if moved < 1e-8:
            break
    working_rows(aug, aug.eta, aug.w, aug.z)
    recompute(aug.stats, aug.z, aug.F, aug.X, aug.gidx, aug.w)
    forget(state)


@njit(cache=True, nogil=True)
def refresh(aug, state, structure, with_loglik):
    """Bring ``aug.eta`` (and, with ``with_loglik``, the log-likelihood) up to the current ``(a, b)`` if stale."""
    if aug.scal[AUG_STALE] != 0.0:
        linear_predictor(aug, structure, state.work, state.a, state.b, aug.eta)
        aug.scal[AUG_LOGLIK] = rows_loglik(aug) if with_loglik else np.nan
        aug.scal[AUG_STALE] = 0.0


__all__ = ["BINOMIAL_LOGIT", "BINOMIAL_PROBIT", "LARGE_COUNT", "MIX_M", "MIX_V", "MIX_W", "POISSON_LOG", "augment",
           "correct", "forget", "keep_loglik", "latent_capacity", "linear_predictor", "log_correction",
           "mixture_table", "refresh", "row_loglik", "rows_loglik", "save_draw", "seek_mode", "working_rows"]
