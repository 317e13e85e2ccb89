"""``sample()``: seeds, starting values, the chains, and the hand-off to ArviZ."""

from __future__ import annotations

import numbers
import os
import sys
import threading
import time
from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy.special import ndtri

from bayeshlm.family import GLM_MOVES, family_code, log_normalising_constants, newton_interweave, newton_move
from bayeshlm.impute import impute
from bayeshlm.level1 import has_level1_model, level1_chains, level1_posterior
from bayeshlm.log_prior import log_prior_dataset
from bayeshlm.memory import check_memory
from bayeshlm.results import cell_groups, group_selection, group_stats_held, loglik_mode, to_datatree
from bayeshlm.schema import LOG_PRIOR
from bayeshlm.start import starting_theta
from bayeshlm.summary import warn_if_unconverged
from samplers.augment import latent_capacity, mixture_table, working_rows
from samplers.driver import init_state, run_chains
from samplers.gaussian import marginal_moves_pay
from samplers.glm import BINOMIAL_LOGIT
from samplers.newton import N_FIXED_ACC, N_FIXED_PROP, N_GROUP_ACC, N_GROUP_PROP, N_SCALE_ACC, N_SCALE_PROP
from samplers.suffstats import compute_suffstats, recompute, row_products
from samplers.types import (
    AUG_N_ACC,
    AUG_N_PROP,
    AUG_NEWTON,
    AUG_STALE,
    FAILED,
    N_AUG_SCAL,
    NO_ROW_PRODUCTS,
    Augmentation,
    BlockedGibbsMoves,
    GibbsMoves,
    MHMoves,
    distinct_columns,
    group_of_rows,
    newton_rows,
)

METHODS = ("mh", "gibbs", "blocked")
DEFAULT_MH_STEPS = 6  # moves on p(theta | a, y) a sweep
DEFAULT_MARGINAL_MH_STEPS = 2  # moves on p(theta | y) a sweep (crossed factors)


class SamplingError(RuntimeError):
    """The sampler met a numerical failure it could not recover from."""


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_seed(seed):
    if seed is None:  # fresh entropy, kept below 2**63 so that the result's files can store it
        return int(np.random.SeedSequence().entropy) % 2**63
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def chain_moves(model, method, mh_steps, marginal):
    """The kernels' moves for ``method``.

    A Poisson level 1 has its sweeps corrected (:func:`samplers.augment.correct`); with
    Metropolis-Hastings moves the sweep is then a proposal, which needs moves on
    ``p(theta | y)`` (``marginal``) drawn by a reversible kernel (``shuffled``).
    """
    if method == "gibbs":
        return GibbsMoves()
    if method == "blocked":
        return BlockedGibbsMoves()
    if getattr(model, "family", "gaussian") == "poisson":
        return MHMoves(mh_steps, 1, 1)
    return MHMoves(mh_steps, int(marginal))


def _writable(a, dtype=np.float64):
    """``a`` as a C-contiguous, writable array of ``dtype`` (a copy only when it is not one already)."""
    return np.require(a, dtype=dtype, requirements=["C", "W"])


class _Rows:
    """What the chains of a non-Gaussian model share: the rows in the kernels' basis, and a starting ``eta``."""

    def __init__(self, model):
        design, basis = model.design, model.basis
        _, F, X = basis.rows(design.y, design.F, design.X)
        # contiguous and writable: a read-only array (pandas hands out read-only views) is another
        # type to the compiled chain, which would be compiled again for it
        self.F, self.X = _writable(F), _writable(X)
        self.y = _writable(design.y)
        n_obs = self.y.shape[0]
        self.n = _writable(model.trials if model.trials is not None else np.ones(n_obs))
        self.offset = _writable(model.offset if model.offset is not None else np.zeros(n_obs))
        self.gidx = _writable(design.group_idx, np.int64)
        self.code = family_code(model.family, model.link)
        self.poisson = model.family == "poisson"
        self.const = log_normalising_constants(model.family, self.n, self.y)
        if self.poisson:  # the chains start from the overall rate
            level = np.log(max(self.y.sum(), 0.5) / np.exp(self.offset).sum())
        else:  # from the overall share
            share = np.clip(self.y.sum() / self.n.sum(), 0.02, 0.98)
            level = np.log(share / (1 - share)) if model.link == "logit" else ndtri(share)
        self.eta0 = self.offset + level
        self.n_coef_rows = int(model.structure.node_ptr[-1])
        self.n_theta = model.n_theta
        self.n_groups = model.stats.n.shape[0]
        self.newton = None
        # the rows' cross-products, from which each sweep's working statistics are formed
        self.prod = row_products(self.F, self.X, self.gidx, self.n_groups)

    def sort_for_newton(self, structure):
        """Rows in finest-group order for the Newton proposal, with each group's first row and the shared directions.

        Returns the order, which the log-likelihood's columns must follow. The Newton proposal
        forms no statistics from the cross-products: they are not kept.
        """
        order = np.argsort(self.gidx, kind="stable")
        for name in ("F", "X", "y", "n", "offset", "gidx", "const", "eta0"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name)[order]))
        starts = np.zeros(self.n_groups + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.gidx, minlength=self.n_groups), out=starts[1:])
        level_ptr = np.asarray(structure.level_ptr, dtype=np.int64)
        node_ptr = np.asarray(structure.node_ptr, dtype=np.int64)
        parent = np.asarray(structure.parent, dtype=np.int64)
        self.node = group_of_rows(self.gidx, parent, len(level_ptr) - 1)
        pairs, coef = shift_pairs(self.F, self.X, self.node, level_ptr, int(node_ptr[-1]))
        cols, col_of = distinct_columns(self.F, self.X)
        self.newton = {"starts": starts, "shared": pairs, "shift_coef": coef, "level_ptr": level_ptr,
                       "node_ptr": node_ptr, "parent": parent,
                       "nest_pairs": nest_pairs(col_of[self.F.shape[1]:], level_ptr), "cols": cols, "col_of": col_of}
        self.prod = NO_ROW_PRODUCTS
        return order

    def augmentation(self, model, n_keep, out_idx, n_out):
        """One chain's :class:`~samplers.types.Augmentation`, its working statistics at the starting ``eta``."""
        n_obs = self.y.shape[0]
        keep = n_out > 0
        stats = compute_suffstats(np.zeros(n_obs), self.F, self.X, self.gidx, self.n_groups)
        aug = Augmentation(
            family=self.code, y=self.y, n=self.n, offset=self.offset, const=self.const, F=self.F, X=self.X,
            gidx=self.gidx, stats=stats, eta=self.eta0.copy(), w=np.empty(n_obs), z=np.empty(n_obs),
            ll_row=np.empty(n_obs if keep else 0),
            out_idx=out_idx, ll_out=np.full((n_keep if keep else 0, n_out), np.nan),
            scal=np.zeros(N_AUG_SCAL), prod=self.prod)
        if self.poisson and self.newton is None:  # room for the latent times and the draw a rejection restores
            aug = aug._replace(
                lat=np.empty(latent_capacity(self.y)), lat_ptr=np.zeros(n_obs + 1, dtype=np.int64),
                mix=mixture_table(),
                eta_prev=np.empty(n_obs), a_prev=np.empty(self.F.shape[1]),
                b_prev=np.empty((self.n_coef_rows, self.X.shape[1])), theta_prev=np.empty(self.n_theta))
        if self.newton is not None:
            aug = aug._replace(
                newton=newton_rows(aug.family, aug.y, aug.n, aug.const, aug.F, aug.X, **self.newton,
                                   bernoulli=self.code == BINOMIAL_LOGIT and bool(np.all(self.n == 1.0))
                                   and not np.any(self.const)))
            aug.scal[AUG_NEWTON] = 1.0
        working_rows(aug, aug.eta, aug.w, aug.z)
        recompute(aug.stats, aug.z, aug.F, aug.X, aug.gidx, aug.w)
        aug.scal[AUG_STALE] = 1.0
        return aug


# a fixed column is c_j times a group column when in every row f_i and c_j x_i differ by at most this share of
# |f_i| + |c_j x_i| (a product such as a cross-level interaction is rounded once; c_j is a least-squares fit)
SHIFT_TOLERANCE = 1e-12


def shift_pairs(F, X, node, level_ptr, n_nodes):
    """The Newton proposal's shared directions: pairs ``(q, c)`` and, per group ``j``, ``c_j`` with ``F_q = c_j X_c``.

    ``node[i, k]`` is row ``i``'s group of factor ``k``, whose coefficients are columns
    ``level_ptr[k]:level_ptr[k + 1]`` of ``X``. Fixed column ``q`` pairs, in each factor, with
    the first of its columns ``c`` such that in each of its groups ``j`` ``F_q`` is ``c_j X_c``:
    ``c_j = 1`` for a fixed effect that is also a group coefficient, the group's value for a
    group-level predictor with a random intercept, or for a cross-level interaction with a
    random slope. Returns ``(pairs, coef)``, shapes ``(m, 2)`` and ``(n_nodes, m)`` (``c_j = 0``
    for a group without rows and for the groups of the other factors). See
    :func:`samplers.newton.shift_move`.
    """
    pairs, coefs = [], []
    for q in range(F.shape[1]):
        f = F[:, q]
        if not np.any(f):
            continue
        for k in range(len(level_ptr) - 1):
            nk = node[:, k]
            for c in range(level_ptr[k], level_ptr[k + 1]):
                x = X[:, c]
                xx = np.bincount(nk, x * x, minlength=n_nodes)
                xf = np.bincount(nk, x * f, minlength=n_nodes)
                cj = np.divide(xf, xx, out=np.zeros(n_nodes), where=xx > 0.0)
                fit = cj[nk] * x
                if np.all(np.abs(f - fit) <= SHIFT_TOLERANCE * (np.abs(f) + np.abs(fit))):
                    pairs.append((q, c))
                    coefs.append(cj)
                    break
    coef = np.column_stack(coefs) if coefs else np.zeros((n_nodes, 0))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.ascontiguousarray(coef)


def nest_pairs(x_col, level_ptr):
    """Pairs ``(u, v)``: coefficient ``u`` of a factor and ``v`` of the next coarser one are the same column of ``X``.

    ``x_col[u]`` names ``X``'s column ``u`` among the distinct columns (equal names, equal
    columns: :func:`~samplers.types.distinct_columns`). Each ``u`` pairs with the first such
    ``v`` (:func:`samplers.newton.nest_shift_move`).
    """
    pairs = []
    for k in range(len(level_ptr) - 2):
        used = set()
        for u in range(level_ptr[k], level_ptr[k + 1]):
            for v in range(level_ptr[k + 1], level_ptr[k + 2]):
                if v not in used and x_col[u] == x_col[v]:
                    pairs.append((u, v))
                    used.add(v)
                    break
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def augmentations(model, n_chains, n_keep, log_likelihood=False, newton=False, interweave=None):
    """One :class:`~samplers.types.Augmentation` per chain for a non-Gaussian model.

    They share the rows; each holds its own working statistics, formed at the predictor the
    chains start from (the overall share of successes), and room for ``n_keep`` draws of the
    log-likelihood (``log_likelihood``: ``"pointwise"``, ``"group"`` or False). ``newton``:
    the chains move their coefficients by the Newton proposal (``glm_move="newton"``), with
    the interweaving move of the group SD as ``interweave`` asks
    (:func:`bayeshlm.family.newton_interweave`: None chooses by the groups' information).
    """
    rows = _Rows(model)
    out_idx, n_out = _loglik_columns(model, log_likelihood)
    if newton:
        order = rows.sort_for_newton(model.structure)
        out_idx = np.ascontiguousarray(out_idx[order]) if n_out else out_idx
    augs = [rows.augmentation(model, n_keep, out_idx, n_out) for _ in range(n_chains)]
    if newton:
        first = augs[0]  # each group's information at the starting predictor: sum_i w_i x_i^2
        lp, n_nodes = first.newton.level_ptr, int(first.newton.node_ptr[-1])
        iw = np.zeros(len(lp) - 1, dtype=np.bool_)
        for k, factor in enumerate(model.factors):
            c = lp[k]
            info = np.bincount(rows.node[:, k], first.w * first.X[:, c] ** 2, minlength=n_nodes)
            has_rows = np.bincount(rows.node[:, k], minlength=n_nodes) > 0
            iw[k] = newton_interweave(info[has_rows], int(lp[k + 1] - c), interweave, factor)
        augs = [a._replace(newton=a.newton._replace(interweave=iw.copy())) for a in augs]
    return augs


def _loglik_columns(model, mode):
    """``(out_idx, n_out)``: the column of the log-likelihood each row adds into."""
    if not mode:
        return np.zeros(0, dtype=np.int64), 0
    if mode == "pointwise":
        return np.arange(model.n_obs, dtype=np.int64), model.n_obs
    idx = np.asarray(model.design.group_idx, dtype=np.int64)
    groups = cell_groups(model)
    if groups is None:
        return np.ascontiguousarray(idx), int(model.stats.n.shape[0])
    return np.ascontiguousarray(groups[idx]), len(model.design.factor_labels[0])


class _Progress:
    def __init__(self, total, enabled):
        self.bar = None
        self.lock = threading.Lock()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="sampling", unit="sweep", file=sys.stderr, smoothing=0.1)

    def __call__(self, chain, n):
        if self.bar is not None:
            with self.lock:
                self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def sample(
    model,
    *,
    draws=1000,
    warmup=1000,
    chains=4,
    thin=1,
    seed=None,
    method=None,
    mh_steps=None,
    glm_move="auto",
    interweave=None,
    keep_group_draws=True,
    group_moments=False,
    log_likelihood="auto",
    progress=True,
    n_threads=None,
):
    """Draw from the posterior of a hierarchical linear model.

    Each sweep draws the variance components, then every coefficient (fixed effects and
    all group coefficients) jointly and exactly given them, from per-group sufficient
    statistics: its cost does not depend on the number of observations.

    Parameters
    ----------
    model : Model
        From :func:`bayeshlm.hlm`.
    draws : int
        Kept draws per chain.
    warmup : int
        Warm-up sweeps per chain (discarded; the MH proposal is adapted during them only).
    chains : int
        Independent chains, run in parallel threads.
    thin : int
        Sweeps per kept draw.
    seed : int, optional
        Seed of the run: the same seed gives the same draws, whatever ``n_threads``. Chain
        ``c`` uses the ``c``-th child of ``numpy.random.SeedSequence(seed)``. When None a
        fresh seed is drawn and recorded in the result's attributes.
    method : {"mh", "gibbs", "blocked"}, optional
        How the variance components move. ``"mh"`` (the default, except with the Newton
        proposal below, which needs ``"gibbs"``): Metropolis-Hastings on their
        marginal posterior with the coefficients integrated out (adaptive random walk and a
        fitted independence proposal); it mixes well whether groups carry much information
        or little, and accepts any prior. ``"gibbs"``: conditional draws given the group
        coefficients (exact for inverse-gamma / inverse-Wishart priors, an independence MH
        correction otherwise); cheap, but slow to move when a group variance is small.
        Both then draw every coefficient exactly and jointly. ``"blocked"`` (crossed factors
        only): the Gibbs moves, then each factor's coefficients jointly with the fixed
        effects given the other factors' (the collapsed Gibbs sampler of Papaspiliopoulos,
        Roberts & Zanella 2020), a pass over the cells per factor instead of the joint
        factorisation, whose cost grows as the cube of the second-largest factor's
        coefficients: the choice for crossed designs with thousands of groups in more than
        one factor. Its ``sample_stats.lp`` is nan.
    mh_steps : int, optional
        Metropolis-Hastings moves per sweep (``"mh"`` only). Default 6 with nested factors
        (the moves target ``p(theta | a, y)``, given the fixed effects, or ``p(theta | y)``
        for a Poisson model) and 2 with crossed factors (the moves target ``p(theta | y)``;
        each then costs a full factorisation, and the one of the last accepted move is the
        one the coefficients are drawn from). Once the independence proposal is fitted, two
        of every three moves in a sweep use it and the third is a random-walk move, so with 2
        moves a sweep both are independence moves (a Poisson model draws each move's kind at
        random, with the same shares).
    glm_move : {"auto", "augment", "newton"}
        How the coefficients of a binomial or Poisson model move (not used by other models).
        ``"augment"``: data augmentation (Pólya–Gamma for the logit link, the latent normals
        of Albert & Chib for the probit link, the latent arrival times with their corrected
        normal mixture for Poisson), then the exact Gaussian draw of every coefficient given
        it. ``"newton"`` (nested grouping factors, not crossed): no augmentation; each
        factor's group coefficients, then the fixed effects, are proposed from the Gaussian
        working model of iteratively reweighted least squares at the current draw and
        accepted by Metropolis-Hastings, group by group, and a fixed effect shared with a
        group coefficient (the intercept, a group-level predictor, a cross-level interaction)
        is shifted against it by its exact conditional, as is a group's coefficient against
        the same coefficient of the groups in it (docs/design.md, "The Newton proposal"). A
        sweep costs two passes over the rows with one exponential each
        instead of a Pólya–Gamma draw, and the proposals are accepted nearly always when the
        groups have many rows; with few rows per group the variance components mix more
        slowly than with ``"augment"``. The variance components move by their conditionals
        given the group coefficients (``method="gibbs"``). ``"auto"`` (with ``method`` unset
        or ``"gibbs"``): ``"newton"`` for a Poisson level 1, and for binomial rows when the
        finest groups hold on average at least :data:`bayeshlm.family.NEWTON_ROWS_PER_GROUP`
        rows (trials), else ``"augment"``; with another ``method``, ``"augment"``.
        The share of proposals accepted after warm-up is ``coefficient_acceptance`` in the
        result's ``sampler`` attribute (JSON).
    interweave : bool, optional
        With the Newton proposal and one coefficient per group (a random intercept, or one
        random slope): also move the group SD given the standardised effects ``b_g / SD``
        each sweep, a Newton proposal in the SD accepted by Metropolis-Hastings, at the cost
        of one more pass over the rows (docs/design.md, "The Newton proposal"). ``T | b`` alone
        mixes slowly when the groups say little about their coefficients; this move mixes
        well there. None (the default) takes it when the median group's information about its
        coefficient at the starting predictor is below
        :data:`bayeshlm.family.NEWTON_INTERWEAVE_INFORMATION`, factor by factor with nested
        factors (True asks it of every factor, each of which must have one coefficient); the
        result's ``sampler`` attribute records ``interweave`` (whether any factor's SD moves),
        ``interweave_by_factor`` with nested factors, and ``sd_acceptance``.
    keep_group_draws : bool or int
        Which groups' coefficient draws to keep, at full length: all (True, needed for the
        log-likelihood), none (False), or the first ``n`` groups of each grouping factor (an
        int ``n``, in order of appearance). The variance components and fixed effects are
        always kept in full. With 100,000 groups, 2 coefficients, 4 chains and 1000 draws the
        group draws alone take 6.4 GB; keep a subset, and ask for ``group_moments``.
    group_moments : bool
        Also accumulate, in every chain, the running posterior mean and standard deviation
        of every group's coefficients over the kept draws (Welford's algorithm, memory of two
        draws): the ``group_moments`` group of the result, ``<g>_effect_mean`` and
        ``<g>_effect_sd`` by chain, group and coefficient, with ``n_draws`` per chain.
    log_likelihood : {"auto", "pointwise", "group", False}
        Store the log-likelihood of each observation (``"pointwise"``), of each finest
        group's observations (``"group"``), or none. ``"auto"``: pointwise when the rows are
        held and chains x draws x observations is at most 2e7 values, else by group; none
        when not all group draws are kept. By group, the values are quadratic forms in each
        group's statistics, kept when the model is compiled (also by ``hlm_stats``): the
        cost per draw grows with the groups, not the rows. With crossed factors "group" is
        each group of the factor with most groups (a subject's rows, every coefficient at
        the draw); leaving out a group of any factor is ``bh.loo(model, posterior,
        by=factor)``.
    progress : bool
        Show a progress bar on standard error.
    n_threads : int, optional
        Threads running the chains (default: one per chain up to the number of CPUs).

    Returns
    -------
    xarray.DataTree
        ArviZ groups ``posterior``, ``sample_stats``, ``log_likelihood``, ``observed_data``,
        ``constant_data``; see :func:`bayeshlm.results.to_datatree`. A run stopped by
        Ctrl-C returns the draws made so far, with ``attrs["interrupted"] = 1``: every chain
        that reached its kept draws, cut to the shortest of them. When a fixed effect, SD,
        correlation or sigma has R-hat above 1.01 a :class:`~bayeshlm.summary.ConvergenceWarning`
        names it (its chains disagree: draw more).

    Raises
    ------
    SamplingError
        When a factorisation fails in a way the sampler cannot step around.
    bayeshlm.memory.InsufficientMemoryError
        Before sampling, when the draws would need more memory than is available.

    Examples
    --------
    >>> import bayeshlm as bh
    >>> model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    >>> post = bh.sample(model, draws=200, warmup=200, chains=2, seed=1, progress=False)
    >>> post.posterior["fixed"].sizes["fixed_term"]
    2
    """
    run = run_sampler(model, draws=draws, warmup=warmup, chains=chains, thin=thin, seed=seed, method=method,
                      mh_steps=mh_steps, glm_move=glm_move, interweave=interweave,
                      keep_group_draws=keep_group_draws, group_moments=group_moments, log_likelihood=log_likelihood,
                      progress=progress, n_threads=n_threads)
    outputs, n_keep, kept, level1s = run.outputs, run.n_keep, run.kept, run.level1s
    tree = to_datatree(model, outputs, n_keep, run.settings, run.timings, run.log_likelihood, run.keep_group_draws,
                       kept_per_chain=kept if group_moments else None, log_lik=run.log_lik)
    tree[LOG_PRIOR] = xr.DataTree(log_prior_dataset(model, tree))
    if level1s is not None:
        level1_posterior(model, tree, level1s, n_keep)
    if getattr(model.design, "missing_responses", None) is not None:  # missing="impute": draws of the missing rows
        child = np.random.SeedSequence(run.seed).spawn(chains + 1)[-1]  # not any chain's stream
        tree = impute(model, tree, np.random.Generator(np.random.PCG64(child)))
    if not run.interrupted:
        warn_if_unconverged(tree)
    return tree


class SamplerRun(NamedTuple):
    """What :func:`run_sampler` returns.

    The chains' outputs (:class:`samplers.driver.ChainOutput`) and the rest of what
    :func:`sample` builds its result from (``kept``: the kept draws of each chain, ``n_keep``
    the fewest of them).
    """

    outputs: list
    n_keep: int
    kept: list
    settings: dict
    timings: dict
    log_likelihood: object
    keep_group_draws: object
    log_lik: object
    level1s: object
    seed: object
    interrupted: bool


def run_sampler(
    model,
    *,
    draws=1000,
    warmup=1000,
    chains=4,
    thin=1,
    seed=None,
    method=None,
    mh_steps=None,
    glm_move="auto",
    interweave=None,
    keep_group_draws=True,
    group_moments=False,
    log_likelihood="auto",
    progress=True,
    n_threads=None,
):
    """The chains of :func:`sample`, and what its result is built from, without building it.

    Takes :func:`sample`'s arguments and checks them as it does; returns a :class:`SamplerRun`.
    For code that wants the draws as arrays, many times over (simulation-based calibration:
    :func:`bayeshlm.testing.posterior_draws`), assembling the ArviZ result would cost more than
    the chains of a small model.
    """
    scaled = has_level1_model(model)
    gaussian = getattr(model, "gaussian", True) or scaled
    if scaled and method == "blocked":
        raise ValueError("method='blocked' is not available with sigma= or family='student': use method='mh' or "
                         "'gibbs'")
    if scaled and not model.rows_held:
        raise ValueError("a model with sigma= or family='student' is sampled from its rows; this one was compiled "
                         "from statistics")
    if not gaussian and method == "blocked":
        raise ValueError("method='blocked' is for Gaussian models; the crossed factors of a non-Gaussian model are "
                         "drawn jointly: use method='mh' or 'gibbs'")
    if not gaussian and not model.rows_held:
        raise ValueError("a non-Gaussian model is sampled from its rows; this one was compiled from statistics")
    draws = _check_count("draws", draws, 1)
    warmup = _check_count("warmup", warmup, 0)
    chains = _check_count("chains", chains, 1)
    thin = _check_count("thin", thin, 1)
    seed = _check_seed(seed)
    if glm_move not in GLM_MOVES:
        raise ValueError(f"glm_move must be one of {list(GLM_MOVES)}, got {glm_move!r}")
    newton = not gaussian and newton_move(model, glm_move, method)
    if interweave is not None and not isinstance(interweave, bool | np.bool_):
        raise ValueError(f"interweave must be True, False or None (chosen by the data), got {interweave!r}")
    if interweave and not newton:
        raise ValueError("interweave=True is a move of the Newton proposal: use it with glm_move='newton' "
                         "(a binomial or Poisson model with nested grouping factors)")
    if method is None:
        method = "gibbs" if newton else "mh"
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if newton and method != "gibbs":
        raise ValueError(
            f"glm_move='newton' moves the variance components by their conditionals given the "
            f"coefficients: use method='gibbs' (or leave it unset), not {method!r}"
        )
    # a Poisson model's moves always target p(theta | y) (chain_moves): nested, they cost no more than on
    # p(theta | a, y), so the default number follows the structure alone
    marginal = marginal_moves_pay(model.structure)
    if mh_steps is None:
        mh_steps = DEFAULT_MARGINAL_MH_STEPS if marginal else DEFAULT_MH_STEPS
    mh_steps = _check_count("mh_steps", mh_steps, 1)
    if log_likelihood not in ("auto", "pointwise", "group", False):
        raise ValueError(f"log_likelihood must be 'auto', 'pointwise', 'group' or False, got {log_likelihood!r}")
    if not isinstance(keep_group_draws, bool):
        if not isinstance(keep_group_draws, numbers.Integral):
            raise TypeError(f"keep_group_draws must be True, False or a number of groups, got {keep_group_draws!r}")
        keep_group_draws = _check_count("keep_group_draws", keep_group_draws, 1)
    log_likelihood = loglik_mode(model, chains, draws, keep_group_draws, log_likelihood)
    if log_likelihood == "pointwise" and not model.rows_held:
        raise ValueError("the pointwise log-likelihood needs the rows, which a model from hlm_stats does not "
                         "keep; use log_likelihood='group' or False")
    if log_likelihood == "group" and not (model.rows_held or group_stats_held(model)):
        raise ValueError("the group log-likelihood needs the rows or every group's fixed-part statistics, "
                         "which this model from hlm_stats does not keep (too many groups x fixed effects); "
                         "use log_likelihood=False")
    if getattr(model.design, "missing_responses", None) is not None and keep_group_draws is not True:
        raise ValueError("missing='impute' draws the missing responses from every group's coefficients: set "
                         "keep_group_draws=True")
    if log_likelihood and keep_group_draws is not True:
        raise ValueError("the log-likelihood needs the draws of all groups: set keep_group_draws=True "
                         "or log_likelihood=False")
    if n_threads is not None:
        n_threads = _check_count("n_threads", n_threads, 1)
    if method == "gibbs":
        st = model.structure
        for k in range(len(st.block_ptr) - 1):
            size = int(st.block_ptr[k + 1] - st.block_ptr[k])
            lev = int(np.searchsorted(st.level_ptr, st.block_ptr[k], side="right") - 1)
            factor = model.factors[lev]
            n_groups = len(model.design.factor_labels[lev]) if model.design.factor_labels else model.n_groups
            if n_groups < size:
                raise ValueError(
                    f"method='gibbs' needs at least as many groups as coefficients in a covariance block "
                    f"({n_groups} groups of {factor!r}, block of {size}); use method='mh'"
                )

    # refuse, before any work, a run whose draws cannot fit in memory
    check_memory(model, draws=draws, chains=chains, keep_group_draws=keep_group_draws,
                 group_moments=bool(group_moments), log_likelihood=log_likelihood,
                 glm_move="newton" if newton else "augment")
    t_start = time.perf_counter()
    if method == "blocked" and not model.crossed:
        raise ValueError("method='blocked' draws crossed factors one at a time; this model's factors are nested, "
                         "where the exact joint draw of 'gibbs' costs as little: use method='gibbs' or 'mh'")
    moves = chain_moves(model, method, mh_steps, marginal)
    children = np.random.SeedSequence(seed).spawn(chains)
    rngs = [np.random.Generator(np.random.PCG64(s)) for s in children]
    states = []
    augs = None
    level1s = None
    if not gaussian:
        augs = augmentations(model, chains, draws, log_likelihood, newton, interweave)
    if scaled:
        level1s = level1_chains(model, chains, draws, *_loglik_columns(model, log_likelihood))
    for c, rng in enumerate(rngs):
        for attempt in range(50):
            theta0 = starting_theta(model, rng, jitter=0.5 if attempt == 0 else 1.0 + 0.1 * attempt)
            stats = model.stats if augs is None else augs[c].stats
            stats = stats if level1s is None else level1s[c].stats
            state = init_state(rng, theta0, stats, model.structure, model.priors, moves=moves,
                               aug=None if augs is None else augs[c], level1=None if level1s is None else level1s[c])
            if state.scal[FAILED] == 0.0:
                break
        else:
            raise SamplingError(
                f"chain {c}: no starting point with finite posterior density was found in 50 tries; "
                "check the priors (e.g. a Uniform upper bound below the scale of the data)"
            )
        states.append(state)
    kept_rows, _ = group_selection(model, keep_group_draws)
    total = warmup + draws * thin
    bar = _Progress(total * chains, progress)
    t_sample = time.perf_counter()
    try:
        outputs, interrupted = run_chains(
            rngs, states, model.stats, model.structure, model.priors,
            moves=moves, warmup=warmup, draws=draws, thin=thin,
            keep_group_draws=kept_rows, group_moments=bool(group_moments), n_threads=n_threads,
            progress=bar, coef_map=model.basis.coef_to_user(), augs=augs, level1s=level1s,
        )
    finally:
        bar.close()
    sampling_seconds = time.perf_counter() - t_sample
    for c, out in enumerate(outputs):
        if out.failed:
            raise SamplingError(
                f"chain {c} stopped at sweep {out.iterations}: a covariance matrix was not positive "
                "definite. This happens when the variance components reach extreme values; "
                "try a more informative prior on the SDs, or method='mh' if you used 'gibbs'."
            )
    kept = [max(0, -(-(out.iterations - warmup) // thin)) for out in outputs]
    if interrupted:
        # keep the chains that reached the kept draws, cut to a common length
        if augs is not None:
            augs = [a for a, k in zip(augs, kept, strict=True) if k > 0]
        if level1s is not None:
            level1s = [a for a, k in zip(level1s, kept, strict=True) if k > 0]
        outputs = [out for out, k in zip(outputs, kept, strict=True) if k > 0]
        kept = [k for k in kept if k > 0]
        if not outputs:
            raise KeyboardInterrupt("sampling interrupted before the first kept draw")
    n_keep = min(kept)
    settings = {
        "draws": draws, "warmup": warmup, "chains": chains, "thin": thin, "seed": seed,
        "method": method, "mh_steps": mh_steps if method == "mh" else 0,
        "n_threads": n_threads if n_threads is not None else min(chains, os.cpu_count() or 1),
        "interrupted": int(interrupted),
    }
    timings = {"setup_seconds": t_sample - t_start, "sampling_seconds": sampling_seconds}
    settings["keep_group_draws"] = keep_group_draws
    settings["group_moments"] = bool(group_moments)
    log_lik = None
    if augs is not None:
        settings["family"], settings["link"] = model.family, model.link
        settings["glm_move"] = "newton" if newton else "augment"
        if newton:  # the shares of the groups' and the fixed effects' proposals accepted after warm-up
            cnt = sum(a.newton.cnt for a in augs)
            settings["coefficient_acceptance"] = float(cnt[N_GROUP_ACC] / max(cnt[N_GROUP_PROP], 1.0))
            settings["fixed_acceptance"] = float(cnt[N_FIXED_ACC] / max(cnt[N_FIXED_PROP], 1.0))
            settings["fixed_moves"] = [int(a.newton.fixed_moves[0]) for a in augs]  # per chain, set by warm-up
            iw = augs[0].newton.interweave
            settings["interweave"] = bool(np.any(iw))
            if len(iw) > 1:  # nested factors: which factors' SDs move given the standardised effects
                settings["interweave_by_factor"] = {f: bool(v) for f, v in zip(model.factors, iw, strict=True)}
            if settings["interweave"]:
                settings["sd_acceptance"] = float(cnt[N_SCALE_ACC] / max(cnt[N_SCALE_PROP], 1.0))
        elif model.family == "poisson":  # the share of corrected proposals accepted after warm-up
            n_prop = sum(a.scal[AUG_N_PROP] for a in augs)
            settings["coefficient_acceptance"] = float(sum(a.scal[AUG_N_ACC] for a in augs) / max(n_prop, 1.0))
        if log_likelihood:
            log_lik = np.stack([a.ll_out[:n_keep] for a in augs])
    if level1s is not None:
        settings["family"] = model.family
        if model.family == "student" and model.options.get("nu") is not None:
            settings["nu"] = float(model.options["nu"])
        if log_likelihood:
            log_lik = np.stack([a.ll_out[:n_keep] for a in level1s])
    return SamplerRun(outputs, n_keep, kept, settings, timings, log_likelihood, keep_group_draws, log_lik, level1s,
                      seed, bool(interrupted))
