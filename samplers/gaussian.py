"""The single seam of the core: the Gaussian part of the model given the variance components.

Given ``theta`` every coefficient (fixed effects ``a``, group coefficients ``b``) is jointly
Gaussian, and everything the samplers and the EB/ML fit need from that Gaussian goes
through the functions here (docs/design.md, "The single seam"):

* :func:`integrate` -- the upward pass: ``log p(y | theta)`` with ``a`` and ``b`` integrated out
  (``a`` against its prior; with a flat prior, the restricted likelihood), leaving the
  factors in the workspace;
* :func:`integrate_given_a` -- ``log p(y | theta, a)``, ``b`` integrated out, ``a`` given through
  the residual statistics ``r = X_j'W_j(y_j - F_j a)`` (the target of the Metropolis-Hastings
  moves);
* :func:`draw_coefficients` -- after :func:`integrate`, an exact joint draw of ``(a, b)`` (or
  their means);
* :func:`group_moments` -- after :func:`integrate` with a flat prior, the GLS fixed effects and
  each group's conditional mean and covariance (the EB estimates);
* :func:`em_iteration` -- after :func:`integrate` with a flat prior, the E-step moments and the
  closed-form M-step of EM;
* :func:`score` -- after :func:`integrate` with a flat prior, the derivatives of the ML or
  REML log-likelihood in ``C`` and ``s2`` (Fisher's identity);
* :func:`finest_coefficients` -- each statistics group's full coefficient vector (a finest
  group's, or a cell's of crossed factors).

Each structure implements them once, in its own module (:mod:`samplers.two_level`,
:mod:`samplers.nested`, :mod:`samplers.crossed`), and the implementation is chosen by the *type* of the workspace,
which :func:`workspace` makes when a model is compiled: that is the only place in the
package that asks which structure a model has. Numba compiles each function once per
workspace type, with only that structure's code.

Every function reads the data through :class:`~samplers.types.SuffStats` only. The
statistics may carry per-row weights and a working response (``w_i`` and ``y_i`` of
:func:`samplers.suffstats.compute_suffstats`, recomputed in place by
:func:`samplers.suffstats.recompute`), so that a data-augmentation step for a non-Gaussian
level 1 recomputes the statistics and calls the same passes.
"""

from typing import NamedTuple

import numpy as np
from numba import njit
from numba.extending import overload

from samplers import crossed, nested, two_level
from samplers.types import FixedPrior


class TwoLevelWork(NamedTuple):
    """Workspace of the two-level passes (:mod:`samplers.two_level`).

    Attributes
    ----------
    C : ndarray of shape (n_coef, n_coef)
        Lower-triangular factor of the group covariance ``T = C C'`` (written by
        :func:`samplers.theta.decode_theta`).
    L : ndarray of shape (n_groups, n_coef, n_coef)
        Cholesky factors of each group's ``K_j``.
    LA : ndarray of shape (n_fixed, n_fixed)
        Cholesky factor of the fixed-effect precision ``A`` plus its prior.
    cA : ndarray of shape (n_fixed,)
        Linear term ``c`` plus its prior.
    """

    C: np.ndarray
    L: np.ndarray
    LA: np.ndarray
    cA: np.ndarray


class NestedWork(NamedTuple):
    """Workspace of the nested passes (:mod:`samplers.nested`).

    ``C``, ``LA``, ``cA`` as in :class:`TwoLevelWork`; ``Lt``, ``Ut`` each group's factor and
    message, ``Acc`` the messages accumulated at each parent, ``beta`` the whitened
    coefficients of the downward pass.
    """

    C: np.ndarray
    Lt: np.ndarray
    Ut: np.ndarray
    Acc: np.ndarray
    LA: np.ndarray
    cA: np.ndarray
    beta: np.ndarray


class CrossedWork(NamedTuple):
    """Workspace of the crossed passes (:mod:`samplers.crossed`).

    ``C``, ``LA``, ``cA``, ``beta`` as in :class:`NestedWork`; ``L``, ``Ue``, ``Ua``, ``u`` the
    factors and whitened couplings of the groups of the largest factor; ``S``, ``s`` the
    dense rest (the other factors' coefficients and the fixed effects) and ``Lx`` its factor;
    the index arrays locate each group's support (:func:`samplers.crossed.workspace_arrays`).
    ``blocks``, ``Cb``, ``Lb``, ``bb``, ``Xty0``, ``cross``: per factor, the statistics,
    covariance factor, group factors, coefficients, response sums and each cell's
    cross-products with the other factors' columns, of the factor-by-factor draw
    (:func:`samplers.crossed.draw_blocks`), with ``cell_node32`` the cells' groups in 32 bits
    (the draw reads them every sweep); ``block_ready[0]`` is 1 once what does not change
    between draws is made (set it to 0 after recomputing the statistics).
    """

    C: np.ndarray
    L: np.ndarray
    Ue: np.ndarray
    Ua: np.ndarray
    u: np.ndarray
    S: np.ndarray
    s: np.ndarray
    Lx: np.ndarray
    LA: np.ndarray
    cA: np.ndarray
    beta: np.ndarray
    xoff: np.ndarray
    cell_ptr: np.ndarray
    cell_order: np.ndarray
    supp_ptr: np.ndarray
    supp_node: np.ndarray
    supp_col: np.ndarray
    supp_fac: np.ndarray
    cell_supp: np.ndarray
    Esum: np.ndarray
    Cy: np.ndarray
    v: np.ndarray
    blocks: tuple
    Cb: tuple
    Lb: tuple
    bb: tuple
    Xty0: tuple
    cross: tuple
    cell_node32: np.ndarray
    block_ready: np.ndarray


def is_crossed(structure):
    """Whether the grouping factors are crossed: the statistics' groups are cells of several factors."""
    return structure.cell_node.shape[0] > 0


def is_two_level(structure):
    """Whether the two-level passes apply: one grouping factor with random coefficients."""
    return len(structure.level_ptr) == 2 and structure.level_ptr[-1] > 0


def marginal_moves_pay(structure):
    """Whether the Metropolis-Hastings moves should target ``p(theta | y)`` rather than ``p(theta | a, y)``.

    With crossed factors the fixed effects sit in the dense part of the factorisation
    whether they are given or integrated out, so an evaluation of ``p(theta | y)`` costs
    about the same, and the moves gain the factors they leave behind (one factorisation a
    sweep fewer, no evaluation at the current point). Nested passes given the fixed effects
    cost ``O(n_coef^3)`` per group whatever the number of fixed effects; integrating them out
    adds ``O(n_coef * n_fixed^2)`` per group to every evaluation.
    """
    return is_crossed(structure)


def forget_statistics(work):
    """Mark what a workspace keeps of the statistics as stale, after they were replaced.

    The crossed passes sum each factor's group statistics once per workspace
    (:func:`samplers.crossed.block_constants`); a new response or new weights must clear
    them. The other workspaces keep nothing of the data between passes.
    """
    if isinstance(work, CrossedWork):
        work.block_ready[0] = 0


@overload(forget_statistics)
def _forget_statistics_impl(work):
    if _is_crossed_work(work):
        def impl_crossed(work):
            work.block_ready[0] = 0

        return impl_crossed
    return lambda work: None


def workspace(stats, structure):
    """The workspace of a model's Gaussian passes; its type chooses the implementation.

    This is where the structure is dispatched on, once per model: crossed factors take the
    crossed passes, one grouping factor with random coefficients the two-level passes,
    several nested factors (or none) the nested ones. ``C`` starts at zero (``T = 0``).
    """
    n_groups, d = stats.Xty.shape
    p = stats.Fty.shape[0]
    if is_crossed(structure):
        return CrossedWork(np.zeros((d, d)), *crossed.workspace_arrays(stats, structure),
                           *_block_arrays(stats, structure))
    if is_two_level(structure):
        return TwoLevelWork(np.zeros((d, d)), np.zeros((n_groups, d, d)), np.zeros((p, p)), np.zeros(p))
    Lt, Ut, Acc, LA, cA, beta = nested.workspace_arrays(stats, structure)
    return NestedWork(np.zeros((d, d)), Lt, Ut, Acc, LA, cA, beta)


def _block_arrays(stats, structure):
    """Per factor: its groups' statistics, covariance factor, group factors and coefficients (the blocked draw)."""
    from samplers.types import SuffStats

    p = stats.Fty.shape[0]
    lp, npt = structure.level_ptr, structure.node_ptr
    blocks, Cb, Lb, bb, Xty0, cross = [], [], [], [], [], []
    n_cells, D = structure.cell_node.shape[0], int(lp[-1])
    for k in range(len(lp) - 1):
        n_k, d_k = int(npt[k + 1] - npt[k]), int(lp[k + 1] - lp[k])
        blocks.append(SuffStats(np.zeros(n_k), np.zeros((n_k, d_k, d_k)), np.zeros((n_k, d_k, p)), np.zeros((n_k, d_k)),
                                np.zeros(n_k), np.zeros((p, p)), np.zeros(p), np.zeros(3), np.zeros((0, p, p)),
                                np.zeros((0, p)), np.zeros(n_k)))
        Cb.append(np.zeros((d_k, d_k)))
        Lb.append(np.zeros((n_k, d_k, d_k)))
        bb.append(np.zeros((n_k, d_k)))
        Xty0.append(np.zeros((n_k, d_k)))
        cross.append(np.zeros((n_cells, d_k, D - d_k)))
    return (tuple(blocks), tuple(Cb), tuple(Lb), tuple(bb), tuple(Xty0), tuple(cross),
            np.zeros(structure.cell_node.shape, dtype=np.int32), np.zeros(1, dtype=np.int64))


def workspace_values(n_groups, n_coef, n_fixed, structure):
    """Number of float64 values in one :func:`workspace` (for memory estimates, without allocating)."""
    d, p = n_coef, n_fixed
    if is_crossed(structure):
        lp, npt = structure.level_ptr, structure.node_ptr
        w = int(sum((npt[k + 1] - npt[k]) * (lp[k + 1] - lp[k]) for k in range(1, len(lp) - 1))) + p
        n0, d0 = int(npt[1]), int(lp[1])
        n_cells = structure.cell_node.shape[0]
        # the couplings of each cell's group of factor 0, the dense rest twice, its inverse when the moments are asked
        # and, for the blocked draw, every group's statistics and factors again, each cell's cross-products
        return (d * d + n0 * d0 * (d0 + p + 1) + 2 * n_cells * d0 * d + 3 * w * w + int(npt[-1]) * d * (2 * d + p + 3)
                + n_cells * d * d)
    if is_two_level(structure):
        return d * d + n_groups * d * d + p * p + p
    lp = structure.level_ptr
    n_nodes = int(structure.node_ptr[-1])
    dm = max([1] + [int(lp[k + 1] - lp[k]) for k in range(len(lp) - 1)])
    w2 = int(lp[-1] - lp[1]) + p + 1
    n_acc = n_nodes - int(structure.node_ptr[1]) + 1
    return d * d + n_nodes * dm * dm + n_nodes * dm * w2 + n_acc * w2 * w2 + p * p + p + n_nodes * dm


def _is_two_level_work(work):
    return work.instance_class is TwoLevelWork


def _is_crossed_work(work):
    return work.instance_class is CrossedWork


def state_is_crossed(state):
    """Whether a chain state's workspace is the crossed one; ``state`` is the Numba type of a ``ChainState``.

    For overloads outside the seam that compile code for nested factors only (the Newton
    proposal: ``samplers.driver.newton_sweep``).
    """
    return _is_crossed_work(state.types[state.fields.index("work")])


# ---- the seam ------------------------------------------------------------------------------
#
# Each operation is a Python function with an ``overload``: in compiled code the overload picks
# the structure's implementation by the workspace's type and is inlined at the call site (no
# extra call, so no copies of the arguments); called from Python, the function runs a compiled
# entry point that calls the same overload.


def integrate(work, stats, structure, s2, fixed):
    """``log p(y | theta)`` with every coefficient integrated out; the factors are left in ``work``.

    ``work.C`` must hold the factor of the group covariance at ``theta`` and ``s2`` its
    level-1 variance; ``fixed`` is the prior of the fixed effects
    (:class:`~samplers.types.FixedPrior`; a flat one gives the restricted likelihood).
    Returns ``(loglik, ok)``, ``ok`` False when a factorisation failed.
    """
    return _integrate_entry(work, stats, structure, s2, fixed)


@overload(integrate)
def _integrate_impl(work, stats, structure, s2, fixed):
    if _is_crossed_work(work):
        return lambda work, stats, structure, s2, fixed: crossed.upward(
            stats, structure, s2, work.C, True, fixed, stats.Xty, 0.0, work)
    if _is_two_level_work(work):
        return lambda work, stats, structure, s2, fixed: two_level.upward(
            stats, s2, work.C, fixed, work.L, work.LA, work.cA)
    return lambda work, stats, structure, s2, fixed: nested.upward(
        stats, structure, s2, work.C, True, fixed, stats.Xty, 0.0, work.Lt, work.Ut, work.Acc, work.LA, work.cA)


def integrate_given_a(work, stats, structure, s2, r, rtr):
    """``log p(y | theta, a)``: the group coefficients integrated out, the fixed effects given.

    ``r`` (n_groups, n_coef) holds ``X_j'W_j(y_j - F_j a)`` and ``rtr`` the weighted residual
    sum of squares at ``a`` (:func:`samplers.suffstats.residual_stats`). Returns
    ``(loglik, ok)``.
    """
    return _integrate_given_a_entry(work, stats, structure, s2, r, rtr)


@overload(integrate_given_a, inline="always")
def _integrate_given_a_impl(work, stats, structure, s2, r, rtr):
    if _is_crossed_work(work):
        return lambda work, stats, structure, s2, r, rtr: crossed.upward(
            stats, structure, s2, work.C, False, FixedPrior(np.zeros((0, 0)), np.zeros(0), 0.0, 0), r, rtr, work)
    if _is_two_level_work(work):
        return lambda work, stats, structure, s2, r, rtr: two_level.loglik_given_a(stats, s2, work.C, r, rtr, work.L)
    # the fixed effects are given: their prior does not enter (an empty one of the right type)
    return lambda work, stats, structure, s2, r, rtr: nested.upward(
        stats, structure, s2, work.C, False, FixedPrior(np.zeros((0, 0)), np.zeros(0), 0.0, 0), r, rtr,
        work.Lt, work.Ut, work.Acc, work.LA, work.cA)


def draw_coefficients(rng, work, stats, structure, s2, a, b, draw):
    """After :func:`integrate`: an exact joint draw of ``(a, b) | theta, y`` into ``a`` and ``b``.

    ``b`` has one row per group of every factor (``Structure.node_ptr``). With ``draw`` False
    the posterior means are written instead.
    """
    _draw_coefficients_entry(rng, work, stats, structure, s2, a, b, draw)


@overload(draw_coefficients)
def _draw_coefficients_impl(rng, work, stats, structure, s2, a, b, draw):
    if _is_crossed_work(work):
        return lambda rng, work, stats, structure, s2, a, b, draw: crossed.draw(
            rng, structure, work.C, work, a, b, draw)
    if _is_two_level_work(work):
        return lambda rng, work, stats, structure, s2, a, b, draw: two_level.draw(
            rng, stats, s2, work.C, work.L, work.LA, work.cA, a, b, draw)
    return lambda rng, work, stats, structure, s2, a, b, draw: nested.draw(
        rng, structure, work.C, work.Lt, work.Ut, work.LA, work.cA, work.beta, a, b, draw)


def group_moments(rng, work, stats, structure, s2, a, b, V, A_inv):
    """After :func:`integrate` with a flat prior: the EB estimates.

    Writes the GLS fixed effects ``a`` and their covariance ``A_inv``, each group's
    conditional mean ``b`` and the covariance ``V`` of its own coefficients given ``a``
    (lme4's conditional variances). ``rng`` is not drawn from (None will do).
    """
    _group_moments_entry(rng, work, stats, structure, s2, a, b, V, A_inv)


@overload(group_moments)
def _group_moments_impl(rng, work, stats, structure, s2, a, b, V, A_inv):
    if _is_crossed_work(work):
        def impl(rng, work, stats, structure, s2, a, b, V, A_inv):
            crossed.moments(rng, stats, structure, s2, work.C, work, False, a, b, V, A_inv, np.zeros((0, 0)))

        return impl
    if _is_two_level_work(work):
        def impl(rng, work, stats, structure, s2, a, b, V, A_inv):
            two_level.moments(rng, stats, s2, work.C, work.L, work.LA, work.cA, a, b, V)
            nested.lower_inverse_gram(work.LA, A_inv)

        return impl

    def impl(rng, work, stats, structure, s2, a, b, V, A_inv):
        nested.moments(rng, stats, structure, s2, work.C, work.Lt, work.Ut, work.LA, work.cA, work.beta, False,
                       a, b, V, A_inv, np.zeros((0, 0)))

    return impl


def em_iteration(rng, work, stats, structure, s2, reml, a, b, V, A_inv, T):
    """After :func:`integrate` with a flat prior: one EM iteration; returns the new level-1 variance.

    E-step: the moments of the coefficients given ``theta`` (for REML with the fixed effects
    integrated out). M-step: ``T`` (written, per covariance block) the mean of ``E[b b']``
    over the groups of the block's factor, the level-1 variance ``E[RSS] / N``.
    """
    return _em_iteration_entry(rng, work, stats, structure, s2, reml, a, b, V, A_inv, T)


@overload(em_iteration)
def _em_iteration_impl(rng, work, stats, structure, s2, reml, a, b, V, A_inv, T):
    if _is_crossed_work(work):
        return lambda rng, work, stats, structure, s2, reml, a, b, V, A_inv, T: crossed.em_update(
            rng, stats, structure, s2, work.C, work, reml, a, b, V, A_inv, T)
    if _is_two_level_work(work):
        return lambda rng, work, stats, structure, s2, reml, a, b, V, A_inv, T: two_level.em_update(
            rng, stats, s2, work.C, work.L, work.LA, work.cA, structure.block_ptr, reml, a, b, V, T)
    return lambda rng, work, stats, structure, s2, reml, a, b, V, A_inv, T: nested.em_update(
        rng, stats, structure, s2, work.C, work.Lt, work.Ut, work.LA, work.cA, work.beta, reml, a, b, V, A_inv, T)


def score(rng, work, stats, structure, s2, reml, gC):
    """After :func:`integrate` with a flat prior: the derivatives of the ML or REML log-likelihood.

    By Fisher's identity, the posterior mean of the complete-data score (docs/design.md,
    "EM"): ``d loglik / dC`` is written into ``gC`` (n_coef x n_coef, for the entries that
    ``C`` has) and ``d loglik / ds2`` is returned. For REML the fixed effects are integrated
    out; for ML they are at their GLS value (the profile's maximiser). ``rng`` is not drawn
    from.
    """
    return _score_entry(rng, work, stats, structure, s2, reml, gC)


@overload(score)
def _score_impl(rng, work, stats, structure, s2, reml, gC):
    if _is_crossed_work(work):
        return lambda rng, work, stats, structure, s2, reml, gC: crossed.score_terms(
            rng, stats, structure, s2, work.C, work, reml, gC)
    if _is_two_level_work(work):
        return lambda rng, work, stats, structure, s2, reml, gC: two_level.score_terms(
            stats, s2, work.C, work.L, work.LA, work.cA, reml, gC)
    return lambda rng, work, stats, structure, s2, reml, gC: nested.score_terms(
        rng, stats, structure, s2, work.C, work.Lt, work.Ut, work.LA, work.cA, work.beta, reml, gC)


def draw_by_factor(rng, work, stats, structure, s2, fixed, a, b):
    """A draw of ``(a, b)`` by blocks: for crossed factors each factor's coefficients with ``a`` given the others.

    For crossed factors, one sweep of :func:`samplers.crossed.draw_blocks` (``b`` and ``a``
    are read as the current state and overwritten): a Gibbs update whose stationary
    distribution is ``p(a, b | theta, y)``, costing a pass over the cells per factor. For
    the other structures, where the exact joint draw costs as little, :func:`integrate`
    and :func:`draw_coefficients`. ``work.C`` must hold the factor of the group covariance.
    Returns the weighted residual sum of squares at the new ``(a, b)`` (nan where the draw
    does not give it: the exact one), or -1 when a factorisation failed.
    """
    return _draw_by_factor_entry(rng, work, stats, structure, s2, fixed, a, b)


@overload(draw_by_factor)
def _draw_by_factor_impl(rng, work, stats, structure, s2, fixed, a, b):
    if _is_crossed_work(work):
        return lambda rng, work, stats, structure, s2, fixed, a, b: crossed.draw_blocks(
            rng, structure, work.C, work, stats, s2, fixed, a, b)

    def impl(rng, work, stats, structure, s2, fixed, a, b):
        _, ok = integrate(work, stats, structure, s2, fixed)
        if not ok:
            return -1.0
        draw_coefficients(rng, work, stats, structure, s2, a, b, True)
        return np.nan  # the exact draw does not give the residual sum of squares

    return impl


def finest_coefficients(work, structure, b):
    """Each finest group's full coefficient vector (its own and its ancestors' columns).

    For a two-level model that is ``b`` itself (not a copy); for crossed factors, each
    cell's (its group of every factor).
    """
    return _finest_coefficients_entry(work, structure, b)


@overload(finest_coefficients)
def _finest_coefficients_impl(work, structure, b):
    if _is_two_level_work(work):
        return lambda work, structure, b: b  # the groups are the finest: no copy
    if _is_crossed_work(work):
        def impl_cells(work, structure, b):
            out = np.zeros((structure.cell_node.shape[0], b.shape[1]))
            crossed.cell_coefficients(structure, b, out)
            return out

        return impl_cells

    def impl(work, structure, b):
        out = np.zeros((structure.node_ptr[1], b.shape[1]))
        nested.effective_coefficients(structure, b, out)
        return out

    return impl


# ---- compiled entry points for calls from Python ---------------------------------------------

@njit(cache=True, nogil=True)
def _integrate_entry(work, stats, structure, s2, fixed):
    return integrate(work, stats, structure, s2, fixed)


@njit(cache=True, nogil=True)
def _integrate_given_a_entry(work, stats, structure, s2, r, rtr):
    return integrate_given_a(work, stats, structure, s2, r, rtr)


@njit(cache=True, nogil=True)
def _draw_coefficients_entry(rng, work, stats, structure, s2, a, b, draw):
    draw_coefficients(rng, work, stats, structure, s2, a, b, draw)


@njit(cache=True, nogil=True)
def _group_moments_entry(rng, work, stats, structure, s2, a, b, V, A_inv):
    group_moments(rng, work, stats, structure, s2, a, b, V, A_inv)


@njit(cache=True, nogil=True)
def _em_iteration_entry(rng, work, stats, structure, s2, reml, a, b, V, A_inv, T):
    return em_iteration(rng, work, stats, structure, s2, reml, a, b, V, A_inv, T)


@njit(cache=True, nogil=True)
def _score_entry(rng, work, stats, structure, s2, reml, gC):
    return score(rng, work, stats, structure, s2, reml, gC)


@njit(cache=True, nogil=True)
def _draw_by_factor_entry(rng, work, stats, structure, s2, fixed, a, b):
    return draw_by_factor(rng, work, stats, structure, s2, fixed, a, b)


@njit(cache=True, nogil=True)
def _finest_coefficients_entry(work, structure, b):
    return finest_coefficients(work, structure, b)


__all__ = [
    "CrossedWork",
    "NestedWork",
    "TwoLevelWork",
    "draw_by_factor",
    "draw_coefficients",
    "em_iteration",
    "finest_coefficients",
    "forget_statistics",
    "group_moments",
    "integrate",
    "integrate_given_a",
    "is_crossed",
    "is_two_level",
    "marginal_moves_pay",
    "score",
    "state_is_crossed",
    "workspace",
    "workspace_values",
]
