"""Exact draws from the Pólya–Gamma distribution, compiled.

``omega ~ PG(b, c)`` is the infinite convolution ``omega = (1 / (2 pi^2)) sum_k g_k /
((k - 1/2)^2 + c^2 / (4 pi^2))`` with ``g_k ~ Gamma(b, 1)`` i.i.d. (Polson, Scott & Windle
2013, "Bayesian inference for logistic models using Pólya–Gamma latent variables", JASA).
Given ``omega_i ~ PG(n_i, x_i'beta)``, a binomial logit likelihood in ``beta`` becomes
Gaussian with precision weights ``omega_i`` and working response ``kappa_i / omega_i``,
``kappa_i = y_i - n_i / 2`` (docs/design.md, "Non-Gaussian level 1").

``PG(1, c)`` is drawn exactly by the alternating-series method of Devroye (1986) as that paper
lays it out for ``J*(1, z) = 4 PG(1, 2z)``: a proposal mixing an exponential tail beyond the
truncation point ``t = 0.64`` with an inverse-Gaussian body below it, accepted by the
alternating series of the density, which stops after about one term on average (formed in
ratios to its first term: one exponential, and none for 99.4% of the points, :func:`_accepts`). ``PG(b, c)``
for a whole number ``b`` is the sum of ``b`` independent ``PG(1, c)`` draws (the binomial
trials of a row), so its cost grows with ``b``.

Its moments (used by the tests): ``E omega = b tanh(c / 2) / (2 c)`` (``b / 4`` at ``c = 0``),
and its Laplace transform ``E exp(-s omega) = cosh(c / 2)^b / cosh(sqrt((c^2 / 2 + s) / 2))^b``.
"""

import math

from numba import njit

_T = 0.64  # the truncation point of Devroye's method
_PI2_8 = math.pi * math.pi / 8.0
_PI2_2 = math.pi * math.pi / 2.0
_SQUEEZE = 1.0 - 3.0 * math.exp(-2.0 * min(2.0 / _T, _PI2_2 * _T))  # 1 - the first ratio's bound: 0.9942
_R = math.sqrt(1.0 / _T)


@njit(cache=True, nogil=True)
def _norm_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@njit(cache=True, nogil=True)
def _accepts(u, x):
    """Whether ``u ~ U(0, 1)`` accepts the proposal ``x``: ``u <= S(x) / a_0(x)`` by the alternating series.

    ``S(x) = sum_n (-1)^n a_n(x)`` is the ``J*(1, 0)`` density and ``a_0`` the proposal's shape,
    so the terms enter as ratios ``a_n(x) / a_0(x) = (2n + 1) exp(-rate n (n + 1))``, ``rate = 2 / x``
    below ``t`` and ``pi^2 x / 2`` above it: one exponential for the whole series. The partial
    sums bracket the density alternately, and the first ratio is at most ``3 exp(-2 min(rate))``:
    a ``u`` below ``_SQUEEZE`` accepts before any exponential is formed.
    """
    if u <= _SQUEEZE:
        return True
    rate = 2.0 / x if x <= _T else _PI2_2 * x
    s = 1.0
    n = 0
    while True:
        n += 1
        term = (2 * n + 1) * math.exp(-rate * n * (n + 1))
        if n % 2 == 1:
            s -= term
            if u <= s:
                return True
        else:
            s += term
            if u > s:
                return False


@njit(cache=True, nogil=True)
def _truncated_inverse_gaussian(rng, z):
    """A draw of ``IG(mean 1 / z, shape 1)`` truncated to ``(0, t)`` (``z >= 0``)."""
    mu = 1.0 / z if z > 0.0 else math.inf
    if mu > _T:  # a scaled 1 / chi^2_1 proposal, accepted with probability exp(-z^2 x / 2)
        while True:
            while True:
                e1 = rng.standard_exponential()
                e2 = rng.standard_exponential()
                if e1 * e1 <= 2.0 * e2 / _T:
                    break
            x = _T / ((1.0 + _T * e1) ** 2)
            h = 0.5 * z * z * x
            u = rng.random()
            if u <= 1.0 - h or u <= math.exp(-h):  # exp(-h) >= 1 - h: most draws accept without the exponential
                return x
    while True:  # the inverse Gaussian itself (Michael, Schucany & Haas 1976), kept below t
        y = rng.standard_normal()
        y *= y
        x = mu + 0.5 * mu * mu * y - 0.5 * mu * math.sqrt(4.0 * mu * y + (mu * y) ** 2)
        if rng.random() > mu / (mu + x):
            x = mu * mu / x
        if x <= _T:
            return x


@njit(cache=True, nogil=True)
def _proposal(z):
    """What a draw of ``J*(1, z)`` needs of ``z`` alone: ``f(z)`` and the exponential part's share of the proposal.

    The proposal's masses above ``t`` (exponential, rate ``f(z)``) and below it (the truncated
    inverse Gaussian) are ``p`` and ``q``; the share ``p / (p + q)`` costs two exponentials and
    two normal integrals, formed once for all the trials of a row.
    """
    fz = _PI2_8 + 0.5 * z * z
    p = (0.5 * math.pi / fz) * math.exp(-fz * _T)
    lo = _norm_cdf(-_R * (_T * z + 1.0))
    if z < 300.0:  # exp(z) and exp(-z) from one exponential
        ez = math.exp(z)
        q = 2.0 * _norm_cdf(_R * (_T * z - 1.0)) / ez + 2.0 * ez * lo
    else:  # exp(z) would overflow; exp(z) lo is below exp(-t z^2 / 2) there: zero in doubles
        q = 2.0 * math.exp(-z) * _norm_cdf(_R * (_T * z - 1.0))
    return fz, p / (p + q)


@njit(cache=True, nogil=True)
def _jstar1(rng, z, fz, share):
    """A draw of ``J*(1, z)``, ``z >= 0``, given ``(fz, share) = _proposal(z)``."""
    while True:
        if rng.random() < share:
            x = _T + rng.standard_exponential() / fz
        else:
            x = _truncated_inverse_gaussian(rng, z)
        if _accepts(rng.random(), x):
            return x


@njit(cache=True, nogil=True)
def draw_pg(rng, b, c):
    """One draw of ``PG(b, c)`` for a whole number ``b >= 1``: the sum of ``b`` draws of ``PG(1, c)``."""
    z = 0.5 * abs(c)
    fz, share = _proposal(z)
    total = 0.0
    for _ in range(b):
        total += _jstar1(rng, z, fz, share)
    return 0.25 * total
