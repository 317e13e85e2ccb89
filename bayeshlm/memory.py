"""The memory a run of :func:`bayeshlm.sample` needs for its draws, checked before it starts.

A sampler run allocates every kept draw up front, then builds the ArviZ result from them:
draws of millions of group coefficients, or a pointwise log-likelihood of millions of rows,
can need more memory than the machine has. :func:`check_memory` compares the estimate of
:func:`draws_memory` with :func:`available_memory` and refuses such a run at once, with the
numbers and what to change, instead of letting it fail (or be killed) halfway.
"""

from __future__ import annotations

import numbers
import os
import resource

from bayeshlm.family import newton_move
from bayeshlm.results import group_selection, loglik_mode
from samplers.augment import latent_capacity
from samplers.driver import n_nodes_of
from samplers.gaussian import workspace_values
from samplers.suffstats import row_products_size

__all__ = ["InsufficientMemoryError", "available_memory", "check_memory", "draws_memory"]

_FLOAT = 8  # bytes of a float64: every draw is stored as one

# How each remedy is spelled in the message: as keyword arguments of bayeshlm.sample, or as
# command-line options.
PYTHON_SPELLING = {"draws": "draws={n}", "keep": "keep_group_draws={n} (with group_moments=True for every group's "
                   "posterior mean and SD)", "loglik_group": "log_likelihood='group'",
                   "loglik_none": "log_likelihood=False"}


class InsufficientMemoryError(MemoryError, ValueError):
    """A run whose draws need more memory than is available.

    Attributes
    ----------
    need : int
        Estimated bytes (:func:`draws_memory`, ``"total"``).
    available : int
        Bytes of memory available (:func:`available_memory`).
    parts : dict
        The estimate by part, as :func:`draws_memory` returns it.
    """

    def __init__(self, message, need, available, parts):
        super().__init__(message)
        self.need = need
        self.available = available
        self.parts = parts


def _size(n_bytes):
    """Bytes in the largest unit that keeps the number at or above 1 (decimal units: GB = 1e9 bytes)."""
    value = float(n_bytes)
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _loglik_mode(model, chains, draws, keep_group_draws, log_likelihood):
    """The log-likelihood a run stores (:func:`bayeshlm.results.loglik_mode`)."""
    return loglik_mode(model, chains, draws, keep_group_draws, log_likelihood)


def draws_memory(
    model, *, draws=1000, chains=4, keep_group_draws=True, group_moments=False, log_likelihood="auto", glm_move="auto"
):
    """Estimate the bytes :func:`bayeshlm.sample` allocates for the draws of a run, at its peak.

    The draws are made into per-chain buffers and then stacked into the result, so during
    the hand-off both copies are alive; the estimate counts both. It does not count the
    model itself (already in memory) nor what is compiled.

    Parameters
    ----------
    model : Model
        From :func:`bayeshlm.hlm` or :func:`bayeshlm.hlm_stats`.
    draws, chains, keep_group_draws, group_moments, log_likelihood, glm_move
        As for :func:`bayeshlm.sample`.

    Returns
    -------
    dict of str to int
        Bytes by part: ``"posterior"`` (fixed effects, variance components, SDs, correlations
        and the sampler statistics), ``"group_draws"`` (the kept group coefficients),
        ``"log_likelihood"``, ``"log_prior"`` (each draw's prior density and the arrays it is
        computed from), ``"chain_states"`` (each chain's working arrays and running
        moments), ``"augmentation"`` (a non-Gaussian level 1: the rows the chains read and
        their cross-products, and each chain's working rows, statistics and, for counts,
        latent event times; with the Newton proposal each chain's two buffers of the rows'
        working values and the groups' sums instead of the cross-products and latent
        times), and
        their sum, ``"total"``.

    Examples
    --------
    >>> import bayeshlm as bh
    >>> model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    >>> parts = draws_memory(model, draws=1000, chains=4, log_likelihood=False)
    >>> parts["group_draws"]  # 18 subjects x 2 coefficients x 4000 draws, twice, in float64
    2304000
    """
    stats, structure = model.stats, model.structure
    n_groups, d = stats.Xty.shape  # finest groups; random coefficients of all factors
    p = stats.Fty.shape[0]
    n_theta = model.n_theta
    n_nodes = n_nodes_of(structure)
    samples = chains * draws
    rows, _ = group_selection(model, keep_group_draws)
    n_kept = int(rows.shape[0])
    n_pairs = d * (d - 1) // 2
    # per-chain buffers (theta, a, lp, acceptance) and their stacked copies in the result, plus
    # the derived sigma, SDs, correlation matrices and the correlations kept
    posterior = samples * (2 * (n_theta + p + 2) + 2 + d + d * d + n_pairs)
    group_draws = samples * n_kept * d  # one block, written by the chains and taken by the result as it is
    mode = _loglik_mode(model, chains, draws, keep_group_draws, log_likelihood)
    loglik = 0
    if mode:
        loglik = samples * (model.n_obs if mode == "pointwise" else model.n_groups)
        if len(structure.level_ptr) > 2:
            # several factors: every finest group's coefficients, ancestors' included, gathered, then joined
            loglik += 2 * samples * n_groups * d
    # b, r, two workspaces (the current draw's and the proposals'), the proposal's matrices
    states = chains * (n_nodes * d + n_groups * d + 2 * workspace_values(n_groups, d, p, structure)
                       + 3 * n_theta * n_theta)
    if group_moments:
        # the running moments (2), and in the result their stacked means, sums of squares and SDs with
        # the copies xarray makes of them
        states += chains * n_nodes * d * 9
    augmentation = 0
    if not getattr(model, "gaussian", True):
        n_obs = model.n_obs
        # the shared rows (y, trials, offset, constants, F, X, group), then per chain eta, w, z,
        # the rows' log-likelihoods and a copy of the statistics
        augmentation = n_obs * (5 + p + d) + chains * (4 * n_obs + n_groups * (d * d + d * p + d + p * p + p + 4))
        newton = glm_move != "augment" and newton_move(model, glm_move)
        if newton:
            # each chain's two buffers of eta, the finest groups' sums at the draw and at a proposal, each
            # finest group's groups of every factor (twice: anc, kids) and the shifts' coefficients per group,
            # and the distinct columns of F and X the chains share (at most p + d of them; docs/design.md,
            # "The Newton proposal")
            n_factors_newton = max(len(structure.level_ptr) - 1, 1)
            augmentation += chains * (2 * n_obs + 2 * n_groups * (d * d + d + p * p + p + 1)
                                      + 2 * n_groups * n_factors_newton + n_nodes * (p + 1)) + n_groups + 1
            augmentation += (p + d) * n_obs
        else:
            # the rows' cross-products the chains share (docs/design.md, "Statistics of reweighted rows")
            augmentation += row_products_size(n_obs, p + d, False) + n_groups + 1
        if (
            model.family == "poisson" and not newton
        ):  # each chain's latent times, their offsets and the previous draw's predictor
            augmentation += chains * (latent_capacity(model.design.y) + 2 * n_obs + n_nodes * d)
    # the log prior of every draw (bayeshlm.log_prior): one value per fixed effect, SD and factor, and
    # sigma's, with the draws of the fixed effects and SDs gathered in the chains' order; the working
    # arrays are those of a few thousand draws at a time
    n_factors = max(len(structure.level_ptr) - 1, 0)
    log_prior = samples * (2 * p + 2 + 2 * d + n_factors)
    parts = {"posterior": posterior, "group_draws": group_draws, "log_likelihood": loglik, "log_prior": log_prior,
             "chain_states": states, "augmentation": augmentation}
    parts = {k: _FLOAT * int(v) for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def _meminfo_available(path):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _cgroup_available(root):
    """Room left under the memory limit of this process's control group (v2, then v1), or None."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(os.path.join(root, limit_file)), _read_int(os.path.join(root, usage_file))
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes "no limit" as a huge number
            return max(limit - usage, 0)
    return None


def _address_space_available(status="/proc/self/status"):
    """Room left under ``RLIMIT_AS`` (``ulimit -v``), or None when there is no such limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open(status) as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        return None
    return max(soft - used, 0)


def available_memory(*, meminfo="/proc/meminfo", cgroup="/sys/fs/cgroup"):
    """Bytes of memory a new allocation can use without swapping, or None when it cannot be told.

    The smallest of: the kernel's estimate of available memory (``MemAvailable`` in
    ``/proc/meminfo``; elsewhere ``os.sysconf("SC_AVPHYS_PAGES")`` pages, the free memory),
    the room left under the memory limit of the control group (a container's limit), and
    the room left under the address-space limit (``ulimit -v``).

    Parameters
    ----------
    meminfo, cgroup : str
        Where Linux shows them (parameters for tests).

    Returns
    -------
    int or None
    """
    found = [_meminfo_available(meminfo), _cgroup_available(cgroup), _address_space_available()]
    if found[0] is None:
        try:
            found[0] = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    found = [v for v in found if v is not None]
    return min(found) if found else None


def check_memory(model, *, draws=1000, chains=4, keep_group_draws=True, group_moments=False,
                 log_likelihood="auto", glm_move="auto", available=None, spelling=None):
    """Refuse a run of :func:`bayeshlm.sample` whose draws need more memory than is available.

    Parameters
    ----------
    model : Model
    draws, chains, keep_group_draws, group_moments, log_likelihood, glm_move
        As for :func:`bayeshlm.sample`. Arguments that ``sample`` would refuse are not
        checked here (``sample`` says what is wrong with them).
    available : int, optional
        Bytes available; by default :func:`available_memory` (no check when it is unknown).
    spelling : dict, optional
        How the remedies are written in the message (by default as keyword arguments of
        ``sample``; the command line names its options).

    Returns
    -------
    dict
        The estimate (:func:`draws_memory`), when the run fits.

    Raises
    ------
    InsufficientMemoryError
        A ``MemoryError`` and a ``ValueError``: the estimate, the memory available, and the
        arguments that would make the run fit.
    """
    counts = (draws, chains)
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in counts):
        return None
    if not (isinstance(keep_group_draws, bool) or (isinstance(keep_group_draws, numbers.Integral)
                                                   and keep_group_draws >= 1)):
        return None
    if log_likelihood not in ("auto", "pointwise", "group", False):
        return None
    parts = draws_memory(model, draws=int(draws), chains=int(chains), keep_group_draws=keep_group_draws,
                         group_moments=group_moments, log_likelihood=log_likelihood, glm_move=glm_move)
    if available is None:
        available = available_memory()
    if available is None or parts["total"] <= available:
        return parts
    words = {**PYTHON_SPELLING, **(spelling or {})}
    shown = ", ".join(f"{k.replace('_', ' ')} {_size(v)}" for k, v in parts.items() if k != "total" and v)
    # the number of draws that fits, all else equal (every part but a few small arrays grows with it)
    fitting = int(draws * available / parts["total"])
    fixes = [f"fewer draws ({words['draws'].format(n=max(fitting, 1))} or less, or fewer chains)"]
    if parts["group_draws"] > available / 4:
        fixes.append("keep the draws of fewer groups: " + words["keep"].format(n=100))
    if parts["log_likelihood"] > available / 4:
        loglik = _loglik_mode(model, chains, draws, keep_group_draws, log_likelihood)
        options = [words["loglik_none"]] if loglik == "group" else [words["loglik_group"], words["loglik_none"]]
        fixes.append("store the log-likelihood by group or not at all: " + " or ".join(options))
    raise InsufficientMemoryError(
        f"{chains} chains x {draws} draws need about {_size(parts['total'])} of memory for the draws ({shown}), "
        f"but {_size(available)} is available; ask for " + "; or ".join(fixes),
        parts["total"], available, parts,
    )
