"""``exp(x)`` for ``x <= 0`` without a call into the C library, for the rows' loops.

The Newton proposal's Bernoulli pass (:mod:`samplers.newton`) and the Poisson
augmentation's mixture weights (:mod:`samplers.augment`) take an exponential of a
non-positive number per row or per latent value; glibc's ``exp`` is a call, which the
compiler cannot vectorise or inline.
"""

import math

import numpy as np
from numba import njit

# exp(x) for x <= 0 (exp_neg): x = -n ln2 / 64 + r, |r| <= ln2 / 128; exp(x) = 2^-(n // 64) 2^-((n % 64) / 64) e^r.
# ln2 / 64 in two parts (fdlibm's ln2_hi, whose trailing zeros keep n * _LN2_64_HI exact, and ln2_lo)
_LN2_64_HI = 6.93147180369123816490e-01 / 64.0
_LN2_64_LO = 1.90821492927058770002e-10 / 64.0
_64_OVER_LN2 = 64.0 / math.log(2.0)
_EXP_MIN = -745.0  # exp(-745) is the smallest subnormal double; below, 0
_POW2_INT = 2.0 ** -np.arange(1076, dtype=np.float64)  # 2^-q, q = 0 .. 1075 (subnormal, then 0)
_POW2_FRAC = 2.0 ** (-np.arange(64, dtype=np.float64) / 64.0)  # 2^-(j / 64)


@njit(cache=True, nogil=True, inline="always")
def exp_neg(x):
    """``exp(x)`` for ``x <= 0``, within 2 units in the last place, by table and polynomial, without a call.

    glibc's ``exp`` is a call the compiler cannot vectorise, and it was a third of a
    Bernoulli row's cost. Here ``x = -n ln2/64 + r`` with ``|r| <= ln2/128``, so that
    ``e^r`` needs five Taylor terms (truncation below ``r^6/720 < 4e-17``) and ``2^(-n/64)``
    is two table entries. ``n`` is clamped, so that no input (not even NaN) reads outside
    the tables; a NaN stays NaN through ``r``. ``tests/test_newton.py`` checks it against
    ``numpy.exp``.
    """
    x = max(x, _EXP_MIN)
    n = int(-x * _64_OVER_LN2 + 0.5)
    r = (x + n * _LN2_64_HI) + n * _LN2_64_LO
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0)))))
    q = n >> 6
    q = 0 if q < 0 else (1075 if q > 1075 else q)
    return p * _POW2_FRAC[n & 63] * _POW2_INT[q]


__all__ = ["exp_neg"]
