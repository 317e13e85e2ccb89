"""Starting values of the variance components, shared by the sampler and the EB/ML fit."""

from __future__ import annotations

import numpy as np

from samplers.types import N_OBS, YTY


def starting_theta(model, rng, jitter):
    """A rough starting point for the variance components, jittered per chain.

    In the kernels' standardised basis (:mod:`bayeshlm.basis`), where the response and the
    predictors have unit scale: sigma from the residuals of the fixed-effects-only fit
    (computed from the statistics); each group SD half of that, times a random factor in
    ``exp(+-jitter)``; small random correlations.
    """
    stats = model.stats
    p = stats.Fty.shape[0]
    ridge = 1e-12 * max(np.trace(stats.FtF), 1e-300) * np.eye(p)
    a_hat = np.linalg.lstsq(stats.FtF + ridge, stats.Fty, rcond=None)[0] if p else np.zeros(0)
    rss = max(float(stats.scal[YTY] - a_hat @ stats.Fty), 0.0)
    n_obs = stats.scal[N_OBS]
    if model.sigma_known or rss <= 0:
        scale = 1.0
    else:
        scale = float(np.sqrt(rss / n_obs))
    theta = np.zeros(model.n_theta)
    structure = model.structure
    if not model.sigma_known:
        theta[0] = np.log(scale) + rng.uniform(-jitter, jitter)
    for k in range(len(structure.block_ptr) - 1):
        c0, c1 = structure.block_ptr[k], structure.block_ptr[k + 1]
        t0 = structure.theta_ptr[k]
        for i in range(c1 - c0):
            tau = 0.5 * scale * np.exp(rng.uniform(-jitter, jitter))
            theta[t0 + i] = np.arcsinh(tau / structure.diag_scale[c0 + i])
        n_corr = structure.theta_ptr[k + 1] - t0 - (c1 - c0)
        theta[t0 + (c1 - c0) : structure.theta_ptr[k + 1]] = rng.uniform(-0.3, 0.3, size=n_corr)
    return theta
