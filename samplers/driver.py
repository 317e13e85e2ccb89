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

from samplers.linalg import copy_into
from samplers.mh import FAILED, ITER, LP, READY, end_of_iteration
from samplers.nested import tree_flag, two_level
from samplers.sweep import METHOD_MH, sweep
from samplers.types import ChainState


def n_nodes_of(stats, structure):
    """Number of groups of all grouping factors (the rows of the group coefficients)."""
    return int(stats.n.shape[0] if two_level(structure) else structure.node_ptr[-1])


def init_state(rng, theta0, stats, structure, priors, init_step=0.1):
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

    Returns
    -------
    ChainState
        ``state.scal[3]`` is 1 when the starting point has no posterior density.
    """
    n_groups, d = stats.Xty.shape
    p = stats.Fty.shape[0]
    n_theta = theta0.shape[0]
    n_nodes = n_nodes_of(stats, structure)
    state = ChainState(
        theta=np.array(theta0, dtype=np.float64),
        a=np.zeros(p),
        b=np.zeros((n_nodes, d)),
        scal=np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, np.nan]),
        ibuf=np.zeros(4, dtype=np.int64),
        C_buf=np.zeros((2, d, d)),
        r_buf=np.zeros((n_groups, d)),
        L_buf=np.zeros((2, n_groups if n_nodes == n_groups else 1, d, d)),
        LA_buf=np.zeros((2, p, p)),
        c_buf=np.zeros((2, p)),
        prop_chol=np.eye(n_theta) * init_step,
        ad_mean=np.zeros(n_theta),
        ad_cov=np.zeros((n_theta, n_theta)),
        ind_mean=np.zeros(n_theta),
        ind_chol=np.zeros((n_theta, n_theta)),
    )
    # run_chain draws the first coefficients of a fresh state, then stops at sweep 0
    run_chain(rng, state, stats, structure, priors, tree_flag(structure), METHOD_MH, 1, 0, 1, 0,
              np.empty((0, n_theta)), np.empty((0, p)),
              np.zeros(0, dtype=np.int64), np.empty((0, 0, d)), np.empty((0, 0, d)), np.empty(0), np.empty(0),
              np.eye(d))
    return state


@njit(cache=True, nogil=True)
def run_chain(rng, state, stats, structure, priors, tree, method, mh_steps, warmup, thin, stop,
              out_theta, out_a, b_rows, out_b, b_moments, out_lp, out_acc, coef_map):
    """Run sweeps until ``stop`` sweeps are done, storing every ``thin``-th kept draw.

    Outputs are indexed by kept draw ``k = (iteration - warmup) // thin``. ``out_b[k]`` holds
    the coefficients of the groups ``b_rows`` (``out_b`` may hold no draws, to keep no group
    coefficients). ``b_moments`` (shape (2, n_nodes, d), or (0, ...) for none) accumulates the
    running mean and sum of squared deviations (Welford) of every group's coefficients over
    the kept draws. Both hold the group coefficients mapped by ``coef_map`` (shape (d, d),
    block diagonal: ``coef_map @ b`` of each group, the coefficients in the user's
    parametrisation when the kernels work in another basis). A fresh state
    (``state.ibuf[READY] == 0``) first gets its coefficients drawn at its ``theta``; a failure
    there sets ``state.scal[FAILED]``. ``tree`` and ``method`` are variant flags
    (:mod:`samplers.nested`, :mod:`samplers.sweep`).
    """
    while True:
        # one call site of sweep, so that it is compiled inline once
        fresh = state.ibuf[READY] == 0
        it = state.ibuf[ITER]
        if not fresh and it >= stop:
            return
        acc = sweep(rng, state, stats, structure, priors, tree, method, mh_steps, warmup, not fresh)
        if state.scal[FAILED] != 0.0:
            return
        if fresh:
            state.ibuf[READY] = 1
            continue
        if method is None and it < warmup:  # METHOD_MH
            end_of_iteration(state, warmup)
        if it >= warmup and (it - warmup) % thin == 0:
            k = (it - warmup) // thin
            copy_into(out_theta[k], state.theta)
            copy_into(out_a[k], state.a)
            d = state.b.shape[1]
            if k < out_b.shape[0]:
                for i in range(b_rows.shape[0]):
                    row = state.b[b_rows[i]]
                    for r in range(d):
                        t = 0.0
                        for m in range(d):
                            t += coef_map[r, m] * row[m]
                        out_b[k, i, r] = t
            if b_moments.shape[0] > 0:
                inv = 1.0 / (k + 1)
                mean = b_moments[0]
                m2 = b_moments[1]
                for g in range(mean.shape[0]):
                    for r in range(d):
                        x = 0.0
                        for m in range(d):
                            x += coef_map[r, m] * state.b[g, m]
                        delta = x - mean[g, r]
                        mean[g, r] += delta * inv
                        m2[g, r] += delta * (x - mean[g, r])
            out_lp[k] = state.scal[LP]
            out_acc[k] = acc
        state.ibuf[ITER] = it + 1


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


def run_chains(rngs, states, stats, structure, priors, *, method, mh_steps, warmup, draws,
               thin=1, keep_group_draws=True, group_moments=False, n_threads=None, chunk_seconds=0.2,
               min_chunk=10, progress=None, coef_map=None):
    """Run independent chains, in threads, into freshly allocated outputs.

    Parameters
    ----------
    rngs : list of numpy.random.Generator
        One generator per chain (never shared).
    states : list of ChainState
        One initial state per chain (from :func:`init_state`); advanced in place.
    stats, structure, priors
        The model.
    method : METHOD_GIBBS or METHOD_MH
        Conjugate Gibbs for the variance components, or collapsed Metropolis-Hastings.
    mh_steps : int
        MH moves per sweep (method 1).
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
    n_groups = n_nodes_of(stats, structure)
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
    tree = tree_flag(structure)
    coef_map = np.eye(d) if coef_map is None else np.ascontiguousarray(coef_map, dtype=np.float64)

    def work(c):
        rng, state, out = rngs[c], states[c], outputs[c]
        n_sweeps = min_chunk
        while state.ibuf[ITER] < total and not stop_event.is_set():
            start = int(state.ibuf[ITER])
            stop = min(total, start + n_sweeps)
            t0 = time.perf_counter()
            run_chain(rng, state, stats, structure, priors, tree, method, mh_steps, warmup, thin, stop,
                      out.theta, out.a, b_rows, out.b, out.b_moments, out.lp, out.accept, coef_map)
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


__all__ = ["ChainOutput", "init_state", "run_chain", "run_chains"]
