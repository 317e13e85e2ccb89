"""The pieces of the Poisson sweep: the mixture of normals, the correction's value, the latent times.

The chain as a whole is tested statistically (``tests/statistical/test_sbc_glmm.py``,
``test_geweke.py``); here each piece against a direct computation.
"""

import numpy as np
from scipy import stats
from scipy.special import digamma, gammaln, logsumexp, polygamma

from samplers.augment import (
    LARGE_COUNT,
    MIX_M,
    MIX_V,
    MIX_W,
    augment,
    latent_capacity,
    log_correction,
    mixture_table,
)
from samplers.suffstats import compute_suffstats
from samplers.types import AUG_LOG_F, N_AUG_SCAL, Augmentation


def _log_mixture(x, w=MIX_W, m=MIX_M, v=MIX_V):
    return logsumexp(np.log(w) - 0.5 * np.log(2 * np.pi * v) - 0.5 * (x[:, None] - m) ** 2 / v, axis=1)


def test_the_mixture_is_close_to_the_density_of_minus_log_exponential():
    """KL(p || g) about 6e-6 and Var_p(log p - log g) about 1.4e-5 per latent time, by quadrature."""
    assert abs(MIX_W.sum() - 1.0) < 1e-12 and np.all(MIX_V > 0)
    x = np.linspace(-6.0, 25.0, 200_001)
    dx = x[1] - x[0]
    log_p = -x - np.exp(-x)
    p = np.exp(log_p)
    diff = log_p - _log_mixture(x)
    kl = np.sum(p * diff) * dx
    var = np.sum(p * diff**2) * dx - kl**2
    assert 0 <= kl < 1e-5 and var < 2e-5, (kl, var)


def _aug(y, eta, offset=None):
    y = np.asarray(y, dtype=float)
    n_obs = y.size
    F = np.ones((n_obs, 1))
    X = np.ones((n_obs, 1))
    gidx = np.zeros(n_obs, dtype=np.int64)
    return Augmentation(
        family=2, y=y, n=np.ones(n_obs), offset=np.zeros(n_obs) if offset is None else offset,
        const=-gammaln(y + 1), F=F, X=X, gidx=gidx, stats=compute_suffstats(np.zeros(n_obs), F, X, gidx, 1),
        eta=np.asarray(eta, dtype=float), w=np.empty(n_obs), z=np.empty(n_obs), ll_row=np.empty(0),
        out_idx=np.zeros(0, dtype=np.int64), ll_out=np.empty((0, 0)), scal=np.zeros(N_AUG_SCAL),
        lat=np.empty(latent_capacity(y)), lat_ptr=np.zeros(n_obs + 1, dtype=np.int64), mix=mixture_table())


def test_the_correction_is_the_sum_over_latent_times():
    """``log f`` at any predictor: small counts against the mixture, a large one against its one normal."""
    y = [0, 3, LARGE_COUNT + 20]
    aug = _aug(y, [0.1, 1.0, 4.2])
    assert augment(np.random.default_rng(1), aug)
    assert aug.lat_ptr.tolist() == [0, 1, 5, 7]
    eta = np.array([0.4, 0.7, 4.0])
    lat = aug.lat
    expected = 0.0
    for i, e in enumerate(eta):
        start, stop = aug.lat_ptr[i], aug.lat_ptr[i + 1]
        if y[i] > LARGE_COUNT:
            g = lat[start] - e
            yy = float(y[i])
            m, v = -digamma(yy), polygamma(1, yy)  # the mean and variance of -log Gamma(y, 1)
            expected += (-yy * g - np.exp(-g) - gammaln(yy)) - stats.norm.logpdf(g, m, np.sqrt(v))
            start += 1
        x = lat[start:stop] - e
        expected += np.sum(-x - np.exp(-x) - _log_mixture(x))
    assert abs(log_correction(aug, eta) - expected) < 1e-9
    # and the value the augmentation leaves is the one at its own predictor
    assert abs(aug.scal[AUG_LOG_F] - log_correction(aug, aug.eta)) < 1e-9


def test_latent_times_given_the_count():
    """Given y events, the last wait is Exp(mu) beyond the gap to 1, and the largest event time is Beta(y, 1).

    Kolmogorov-Smirnov tests at level 1e-3 each (fixed seed): a false alarm in at most 3e-3 of seeds.
    """
    rng = np.random.default_rng(2)
    mu = 2.5
    n = 20000
    aug = _aug(np.full(n, 3.0), np.full(n, np.log(mu)))
    assert augment(rng, aug)
    lat = aug.lat.reshape(n, 4)
    spacings = np.exp(-lat[:, :3])
    t3 = spacings.sum(axis=1)  # the time of the third event: the largest of three uniforms
    assert stats.kstest(t3, stats.beta(3, 1).cdf).pvalue > 1e-3
    wait = np.exp(-lat[:, 3]) - (1.0 - t3)  # the last inter-arrival time minus the gap to 1
    assert stats.kstest(wait, stats.expon(scale=1 / mu).cdf).pvalue > 1e-3
    big = _aug(np.full(n, LARGE_COUNT + 50.0), np.full(n, np.log(mu)))
    assert augment(rng, big)
    t_y = np.exp(-big.lat.reshape(n, 2)[:, 0])  # a large count keeps only its last event's time
    assert stats.kstest(t_y, stats.beta(LARGE_COUNT + 50.0, 1).cdf).pvalue > 1e-3
