"""Run chains: a compiled loop over sweeps, and a thread pool over chains.

Each chain owns one ``numpy.random.Generator`` and one :class:`ChainState`, so chains are
independent and the draws are bit-for-bit the same whether the chains run one after
another or side by side in threads. The compiled loop runs in chunks of sweeps; between
chunks Python reports progress and can stop the run (Ctrl-C) keeping what was drawn.
"""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from numba import njit
from numba.extending import overload

from samplers import newton
from samplers.augment import (
    POISSON_LOG,
    augment,
    correct,
    forget,
    keep_loglik,
    refresh,
    rows_loglik,
    save_draw,
    seek_mode,
)
from samplers.gaussian import forget_statistics, state_is_crossed, workspace
from samplers.linalg import copy_into, inverse_from_cholesky
from samplers.mh import end_of_iteration
from samplers.scale import after_sweep, level1_step, start_weights
from samplers.scale import keep_loglik as keep_level1
from samplers.sweep import gibbs_moves, sweep
from samplers.theta import decode_theta
from samplers.types import (
    AUG_LOGLIK,
    AUG_NEWTON,
    AUG_NO_CORRECTION,
    AUG_STALE,
    FACTORED,
    FAILED,
    IND_LQ,
    ITER,
    L1_LOGLIK,
    LP,
    N_IBUF,
    N_SCAL,
    READY,
    ChainState,
    DrawStore,
    MHMoves,
    Schedule,
)


def n_nodes_of(structure):
    """Number of groups of all grouping factors (the rows of the group coefficients)."""
    return int(structure.node_ptr[-1])


def init_state(rng, theta0, stats, structure, priors, init_step=0.1, moves=None, aug=None, level1=None):
    """Allocate a chain's state at ``theta0`` and draw its first coefficients.

    Parameters
    ----------
    rng : numpy.random.Generator
    theta0 : ndarray of shape (n_theta,)
        Starting variance components (unconstrained).
    stats : SuffStats
    structure : Structure
    priors : Priors
    init_step : float
        Standard deviation of the first random-walk proposal, before adaptation.
    moves : GibbsMoves or MHMoves, optional
        The moves the chain will run (default ``MHMoves(1)``): the first draw runs in the
        same compiled chain, so no other variant is compiled for it.
    aug : Augmentation, optional
        A non-Gaussian level 1 (:func:`run_augmented_chain`): the first coefficients are
        drawn from the working statistics ``aug.stats`` holds (``stats`` is then ``aug.stats``).
    level1 : Level1, optional
        A level-1 variance model (:func:`run_scaled_chain`; ``stats`` is then ``level1.stats``).

    Returns
    -------
    ChainState
        ``state.scal[FAILED]`` is 1 when the starting point has no posterior density.
    """
    n_groups, d = stats.Xty.shape
    p = stats.Fty.shape[0]
    n_theta = theta0.shape[0]
    scal = np.zeros(N_SCAL)
    scal[IND_LQ] = np.nan
    state = ChainState(
        theta=np.array(theta0, dtype=np.float64),
        a=np.zeros(p),
        b=np.zeros((n_nodes_of(structure), d)),
        scal=scal,
        ibuf=np.zeros(N_IBUF, dtype=np.int64),
        r=np.zeros((n_groups, d)),
        work=workspace(stats, structure),
        scratch=workspace(stats, structure),
        prop_chol=np.eye(n_theta) * init_step,
        ad_mean=np.zeros(n_theta),
        ad_cov=np.zeros((n_theta, n_theta)),
        ind_mean=np.zeros(n_theta),
        ind_chol=np.zeros((n_theta, n_theta)),
    )
    # a call that stops at sweep 0 draws the first coefficients of a fresh state and keeps nothing
    moves = MHMoves(1) if moves is None else moves
    store = DrawStore.keeping_nothing(n_theta, p, d)
    if level1 is not None:
        run_scaled_chain(rng, state, level1, structure, priors, moves, Schedule(0, 1, 0), store)
    elif aug is None:
        run_chain(rng, state, stats, structure, priors, moves, Schedule(0, 1, 0), store)
    else:
        run_augmented_chain(rng, state, aug, structure, priors, moves, Schedule(0, 1, 0), store)
    return state


def statistics_replaced(state):
    """Tell a chain that the statistics it runs on were replaced (a new response or new weights).

    Whatever the chain keeps of the old ones goes: the factors at the current ``theta``
    (``ibuf[FACTORED]``, so the next moves on ``p(theta | y)`` evaluate it afresh) and the
    workspaces' sums of the statistics (:func:`samplers.gaussian.forget_statistics`).
    """
    state.ibuf[FACTORED] = 0
    forget_statistics(state.work)
    forget_statistics(state.scratch)


@njit(cache=True, nogil=True, inline="always")
def _store(state, store, k, acc):
    """Keep the current draw as kept draw ``k`` (see :class:`~samplers.types.DrawStore`)."""
    copy_into(store.theta[k], state.theta)
    copy_into(store.a[k], state.a)
    b = state.b  # fields read once: a tuple's field read in a loop costs a reference count each time
    d = b.shape[1]
    coef_map = store.coef_map
    out, b_rows = store.b, store.b_rows
    if k < out.shape[0]:
        for i in range(b_rows.shape[0]):
            g = b_rows[i]  # indexed, not a view per group
            for r in range(d):
                t = 0.0
                for m in range(d):
                    t += coef_map[r, m] * b[g, m]
                out[k, i, r] = t
    moments = store.b_moments
    if moments.shape[0] > 0:
        inv = 1.0 / (k + 1)
        mean = moments[0]
        m2 = moments[1]
        for g in range(mean.shape[0]):
            for r in range(d):
                x = 0.0
                for m in range(d):
                    x += coef_map[r, m] * b[g, m]
                delta = x - mean[g, r]
                mean[g, r] += delta * inv
                m2[g, r] += delta * (x - mean[g, r])
    store.lp[k] = state.scal[LP]
    store.accept[k] = acc


@njit(cache=True, nogil=True, inline="always")
def _end_sweep(state, store, it, warmup, thin, acc):
    """After sweep ``it`` of a chain past its first draw: adapt in warm-up, keep a kept draw; its index, or -1."""
    k = -1
    if it < warmup:  # the MH proposal's adaptation (a Gibbs chain never uses the proposal)
        end_of_iteration(state, warmup)
    elif (it - warmup) % thin == 0:
        k = (it - warmup) // thin
        _store(state, store, k, acc)
    state.ibuf[ITER] = it + 1
    return k


@njit(cache=True, nogil=True)
def run_chain(rng, state, stats, structure, priors, moves, schedule, store):
    """Run sweeps until ``schedule.stop`` sweeps are done, storing every ``thin``-th kept draw.

    ``moves`` is :class:`~samplers.types.GibbsMoves` or :class:`~samplers.types.MHMoves`,
    ``schedule`` a :class:`~samplers.types.Schedule`, ``store`` a
    :class:`~samplers.types.DrawStore` (``store.b`` may hold no draws, to keep no group
    coefficients; ``store.b_moments`` (0, ...) to keep no running moments). A fresh state
    (``state.ibuf[READY] == 0``) first gets its coefficients drawn at its ``theta``
    (:func:`init_state` does this with a schedule that stops at sweep 0). A failed
    factorisation sets ``state.scal[FAILED]`` and returns.
    """
    warmup = schedule.warmup
    thin = schedule.thin
    while True:
        fresh = state.ibuf[READY] == 0
        it = state.ibuf[ITER]
        if not fresh and it >= schedule.stop:
            return
        # one call site of sweep, so that it is compiled inline once
        acc = sweep(rng, state, stats, structure, priors, moves, warmup, not fresh)
        if state.scal[FAILED] != 0.0:
            return
        if fresh:
            state.ibuf[READY] = 1
            continue
        _end_sweep(state, store, it, warmup, thin, acc)


def _newton_sweep(rng, state, stats, nw, wrong, structure, priors, counting):
    """One sweep with the Newton proposal (:mod:`samplers.newton`): ``T | b``, then each factor's groups, ``a``, shifts.

    With ``nw.interweave[k]`` factor ``k``'s SD also moves given the standardised effects
    after ``T | b`` (:func:`samplers.newton.scale_move`); ``a`` moves ``nw.fixed_moves[0]``
    times (:func:`samplers.newton.settle`); then the fixed effects shift with the groups
    (:func:`samplers.newton.shift_move`) and the groups with the groups in them
    (:func:`samplers.newton.nest_shift_move`), and two nested factors' SDs move with the split
    of the groups' totals (:func:`samplers.newton.split_move`). ``wrong`` is ``aug.scal[AUG_NO_CORRECTION]``
    (wrong steps, for tests: 1 no ratio, 2 the SD move's without its proposal densities).
    The caller passes the augmentation's parts, not the augmentation: every array of a tuple
    argument costs a reference count at each call.
    """
    acc = gibbs_moves(rng, state, stats, structure, priors)
    if state.scal[FAILED] != 0.0:
        return np.nan
    unchecked = wrong == 1.0
    a, b = state.a, state.b
    n_factors = nw.level_ptr.shape[0] - 1
    for k in range(n_factors):
        if nw.interweave[k]:
            newton.scale_move(rng, nw, k, state.theta, structure, priors, b, counting, wrong != 0.0)
    d = b.shape[1]
    C = np.zeros((d, d))
    decode_theta(state.theta, structure, priors, C)
    Ti = np.empty((d, d))  # T^{-1}, block diagonal by factor, for the groups' moves and the shifts
    if not inverse_from_cholesky(C, d, Ti):
        state.scal[FAILED] = 1.0
        return np.nan
    for k in range(n_factors):
        newton.group_moves(rng, nw, k, a, b, C, Ti, counting, unchecked)
    fixed = priors.fixed
    for _ in range(nw.fixed_moves[0]):
        newton.fixed_move(rng, nw, fixed, a, counting, unchecked)
    newton.shift_move(rng, nw, fixed, a, b, Ti)
    if n_factors > 1:  # (a call that returns at once still counts a reference for each of nw's arrays)
        newton.nest_shift_move(rng, nw, b, Ti)
        newton.split_move(rng, nw, state.theta, structure, priors, b)
    return acc


def newton_sweep(rng, state, stats, nw, wrong, structure, priors, counting):
    """One sweep with the Newton proposal (:func:`_newton_sweep`; compiled code only).

    Its code is compiled for a chain whose grouping factors are nested (the two-level and
    the nested workspaces): :func:`bayeshlm.sample.sample` gives the proposal no crossed
    model. In a crossed chain it fails the sweep, and no Newton code is compiled into it.
    """
    raise NotImplementedError("compiled code only")


@overload(newton_sweep)
def _newton_sweep_impl(rng, state, stats, nw, wrong, structure, priors, counting):
    if state_is_crossed(state):
        def refuse(rng, state, stats, nw, wrong, structure, priors, counting):
            state.scal[FAILED] = 1.0
            return np.nan

        return refuse
    return _newton_sweep


@njit(cache=True, nogil=True)
def run_augmented_chain(rng, state, aug, structure, priors, moves, schedule, store):
    """:func:`run_chain` for a non-Gaussian level 1 (:class:`~samplers.types.Augmentation`).

    Each sweep draws the augmentation given the linear predictor at the current
    coefficients (:func:`samplers.augment.augment`), recomputes the working statistics from
    it, and runs the Gaussian sweep on them; for a Poisson level 1 the sweep's draw is then
    corrected (:func:`samplers.augment.correct`: accepted, or taken back). With the Newton
    proposal (``aug.scal[AUG_NEWTON]``) no augmentation is drawn: after the first draw each
    sweep is :func:`newton_sweep`, and the rows' predictor and working values are those the
    moves left (:func:`samplers.newton.start` forms them at the first draw); a crossed
    variant holds no Newton code (:func:`newton_sweep`).
    A fresh state draws its first coefficients from the working statistics at the
    conditional mode given its ``theta`` (:func:`samplers.augment.seek_mode`, from the
    predictor ``aug.eta`` the caller sets). ``state.scal[LP]`` and the stored ``lp`` are the
    log-likelihood ``sum_i log p(y_i | eta_i)`` of the draw; ``aug.ll_out`` receives its
    rows' values (:func:`samplers.augment.keep_loglik`).
    """
    warmup = schedule.warmup
    thin = schedule.thin
    nw = aug.newton
    with_newton = aug.scal[AUG_NEWTON] != 0.0
    poisson = aug.family == POISSON_LOG and not with_newton
    while True:
        fresh = state.ibuf[READY] == 0
        it = state.ibuf[ITER]
        if not fresh and it >= schedule.stop:
            return
        if fresh:
            seek_mode(rng, aug, state, structure, priors, 30)
        elif with_newton:  # the rows' working values at the current draw are kept from the last sweep
            pass
        else:
            refresh(aug, state, structure, not fresh)  # True here; a bool, as below: one compiled variant
            if not augment(rng, aug):
                state.scal[FAILED] = 1.0
                return
            forget(state)
            if poisson:
                save_draw(aug, state)
        if with_newton and not fresh and it == warmup:  # warm-up is over: the fixed effects' moves a sweep
            newton.settle(nw)
        if with_newton and not fresh:
            acc = newton_sweep(rng, state, aug.stats, nw, aug.scal[AUG_NO_CORRECTION], structure, priors,
                               it >= warmup)
        else:  # one call site of sweep, so that it is compiled inline once
            acc = sweep(rng, state, aug.stats, structure, priors, moves, warmup, not fresh)
        if state.scal[FAILED] != 0.0:
            return
        # the log-likelihood of a draw that is kept (a row pass saved on every other)
        kept = it >= warmup and (it - warmup) % thin == 0
        if with_newton:
            if fresh:  # the rows and the groups' sums at the first draw
                newton.start(nw, aug.offset, state.a, state.b)
            aug.scal[AUG_LOGLIK] = newton.loglik(nw)
            aug.scal[AUG_STALE] = 0.0
        elif poisson and not fresh:
            correct(rng, aug, state, structure, moves, it >= warmup)
            aug.scal[AUG_LOGLIK] = rows_loglik(aug) if kept else np.nan
            aug.scal[AUG_STALE] = 0.0
        else:
            aug.scal[AUG_STALE] = 1.0
            refresh(aug, state, structure, kept and not fresh)
        state.scal[LP] = aug.scal[AUG_LOGLIK]
        if fresh:
            state.ibuf[READY] = 1
            continue
        k = _end_sweep(state, store, it, warmup, thin, acc)
        if k >= 0:
            if with_newton:
                newton.keep_loglik(aug, nw, k)
            else:
                keep_loglik(aug, k)


@njit(cache=True, nogil=True)
def run_scaled_chain(rng, state, l1, structure, priors, moves, schedule, store):
    """:func:`run_chain` for a level-1 variance other than ``sigma^2 / w_i`` (:class:`~samplers.types.Level1`).

    Each sweep draws the level-1 parameters given the residuals at the current coefficients
    and ``s2`` (:func:`samplers.scale.level1_step`: ``nu``, the Student-t weights, ``delta``,
    the groups' SDs), recomputes the statistics with the rows' new precisions, and runs the
    Gaussian sweep on them, which draws ``theta``, ``a`` and ``b`` (docs/design.md,
    "Heterogeneous level-1 variance"). ``state.scal[LP]`` and the stored ``lp`` are the
    log-likelihood of the kept draws; ``l1.par_out``, ``l1.e_out`` and ``l1.ll_out``
    receive the level-1 parameters and the rows' log-likelihoods.
    """
    warmup = schedule.warmup
    thin = schedule.thin
    d = state.b.shape[1]
    C = np.empty((d, d))
    while True:
        fresh = state.ibuf[READY] == 0
        it = state.ibuf[ITER]
        if not fresh and it >= schedule.stop:
            return
        if fresh:
            start_weights(l1)
        else:
            s2, _ = decode_theta(state.theta, structure, priors, C)
            level1_step(rng, l1, s2, it >= warmup)
        forget(state)
        # one call site of sweep, so that it is compiled inline once
        acc = sweep(rng, state, l1.stats, structure, priors, moves, warmup, not fresh)
        if state.scal[FAILED] != 0.0:
            return
        kept = not fresh and it >= warmup and (it - warmup) % thin == 0
        s2, _ = decode_theta(state.theta, structure, priors, C)
        after_sweep(l1, structure, state.work, state.a, state.b, s2, kept)
        state.scal[LP] = l1.scal[L1_LOGLIK]
        if fresh:
            state.ibuf[READY] = 1
            continue
        k = _end_sweep(state, store, it, warmup, thin, acc)
        if k >= 0:
            keep_level1(l1, k)


class ChainOutput:
    """Draws of one chain (arrays indexed by kept draw) and how far it got."""

    def __init__(self, n_keep, n_keep_b, n_theta, n_fixed, n_groups, n_coef, n_moment_groups=0, b=None):
        self.theta = np.full((n_keep, n_theta), np.nan)
        self.a = np.full((n_keep, n_fixed), np.nan)
        self.b = np.full((n_keep_b, n_groups, n_coef), np.nan) if b is None else b
        self.b_moments = np.zeros((2 if n_moment_groups else 0, n_moment_groups, n_coef))
        self.lp = np.full(n_keep, np.nan)
        self.accept = np.full(n_keep, np.nan)
        self.iterations = 0
        self.failed = False


def run_chains(rngs, states, stats, structure, priors, *, moves, warmup, draws,
               thin=1, keep_group_draws=True, group_moments=False, n_threads=None, chunk_seconds=0.2,
               min_chunk=10, progress=None, coef_map=None, augs=None, level1s=None):
    """Run independent chains, in threads, into freshly allocated outputs.

    Parameters
    ----------
    rngs : list of numpy.random.Generator
        One generator per chain (never shared).
    states : list of ChainState
        One initial state per chain (from :func:`init_state`); advanced in place.
    stats, structure, priors
        The model.
    moves : GibbsMoves or MHMoves
        Conjugate Gibbs for the variance components, or collapsed Metropolis-Hastings
        (with its number of moves per sweep), :mod:`samplers.types`.
    warmup, draws, thin : int
        Sweeps of warm-up, kept draws per chain, and sweeps per kept draw.
    keep_group_draws : bool or ndarray of int
        Store the group coefficients of every kept draw: of all groups (True), of none
        (False), or of the groups (rows of ``state.b``) listed.
    group_moments : bool
        Accumulate the running mean and sum of squared deviations of every group's
        coefficients over the kept draws (``ChainOutput.b_moments``).
    n_threads : int, optional
        Threads (default: one per chain, at most the number of CPUs).
    chunk_seconds : float
        Aimed duration of one compiled call; between calls progress is reported and a stop
        request (Ctrl-C) is honoured. Calls start at ``min_chunk`` sweeps and double in
        length while they are shorter than half of this.
    min_chunk : int
        Sweeps in the first call.
    progress : callable, optional
        ``progress(chain, n_sweeps_done_in_this_chunk)``, called from worker threads.
    coef_map : ndarray of shape (n_coef, n_coef), optional
        Map applied to each group's coefficients before they are stored or averaged
        (default the identity).
    augs : list of Augmentation, optional
        A non-Gaussian level 1: one per chain, each with its own working statistics
        (:func:`run_augmented_chain`; ``stats`` is then unused).
    level1s : list of Level1, optional
        A level-1 variance model: one per chain (:func:`run_scaled_chain`; ``stats`` is then unused).

    Returns
    -------
    outputs : list of ChainOutput
    interrupted : bool
        True when the run was stopped by KeyboardInterrupt; each output's ``iterations``
        says how far its chain got.
    """
    n_chains = len(rngs)
    total = warmup + draws * thin
    _, d = stats.Xty.shape
    n_groups = n_nodes_of(structure)
    p = stats.Fty.shape[0]
    n_theta = states[0].theta.shape[0]
    if keep_group_draws is True:
        b_rows = np.arange(n_groups, dtype=np.int64)
    elif keep_group_draws is False or keep_group_draws is None:
        b_rows = np.zeros(0, dtype=np.int64)
    else:
        b_rows = np.asarray(keep_group_draws, dtype=np.int64)
    n_keep_b = draws if b_rows.shape[0] else 0
    # the chains' group draws as views of one block, (chain, draw, group, coef): the result takes
    # the block as it is, without a copy of what is often the largest array of a run
    b_block = np.full((n_chains, n_keep_b, b_rows.shape[0], d), np.nan)
    outputs = [
        ChainOutput(draws, n_keep_b, n_theta, p, b_rows.shape[0], d, n_groups if group_moments else 0,
                    b=b_block[c])
        for c in range(n_chains)
    ]
    stop_event = threading.Event()
    coef_map = np.eye(d) if coef_map is None else np.ascontiguousarray(coef_map, dtype=np.float64)

    def work(c):
        rng, state, out = rngs[c], states[c], outputs[c]
        n_sweeps = min_chunk
        while state.ibuf[ITER] < total and not stop_event.is_set():
            start = int(state.ibuf[ITER])
            stop = min(total, start + n_sweeps)
            t0 = time.perf_counter()
            store = DrawStore(out.theta, out.a, b_rows, out.b, out.b_moments, out.lp, out.accept, coef_map)
            if level1s is not None:
                run_scaled_chain(rng, state, level1s[c], structure, priors, moves, Schedule(warmup, thin, stop),
                                 store)
            elif augs is None:
                run_chain(rng, state, stats, structure, priors, moves, Schedule(warmup, thin, stop), store)
            else:
                run_augmented_chain(rng, state, augs[c], structure, priors, moves, Schedule(warmup, thin, stop),
                                    store)
            # Each call costs a fixed overhead (passing the model in): grow the chunks until
            # a call lasts about chunk_seconds. The draws do not depend on the chunking.
            if time.perf_counter() - t0 < 0.5 * chunk_seconds:
                n_sweeps *= 2
            out.iterations = int(state.ibuf[ITER])
            if state.scal[FAILED] != 0.0:
                out.failed = True
                return
            if progress is not None:
                progress(c, out.iterations - start)

    if n_threads is None:
        n_threads = min(n_chains, os.cpu_count() or 1)
    interrupted = False
    if n_threads <= 1:
        try:
            for c in range(n_chains):
                work(c)
        except KeyboardInterrupt:
            interrupted = True
    else:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            futures = [pool.submit(work, c) for c in range(n_chains)]
            try:
                pending = futures
                while pending:
                    _, pending = wait(pending, timeout=0.1)
            except KeyboardInterrupt:
                interrupted = True
                stop_event.set()
                wait(futures)
            for f in futures:
                f.result()
    return outputs, interrupted


__all__ = ["ChainOutput", "init_state", "run_augmented_chain", "run_chain", "run_chains", "run_scaled_chain"]
