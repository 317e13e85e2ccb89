"""Values that cross the boundary between :mod:`bayeshlm` and the kernels.

Every field is a C-contiguous ``float64`` or ``int64`` array, or a Python scalar, so that one
compiled kernel serves every model: the model is data passed to the kernels, never code.
Two choices are made by the *type* of a value rather than by its contents, so that each
variant is compiled once, on first use, with only its own code: the structure of the
Gaussian part by the type of its workspace (:mod:`samplers.gaussian`, docs/design.md,
"The single seam"), and the moves on the variance components by :class:`GibbsMoves` or
:class:`MHMoves`.
"""

from typing import NamedTuple

import numpy as np

# Slots of SuffStats.scal
YTY, N_OBS, SUM_LOG_W = 0, 1, 2


class SuffStats(NamedTuple):
    """Per-group cross-products of the weighted data: the only O(n_obs) summary.

    With ``w`` the observation weights (1, or the inverse known variances), ``F`` the fixed
    design, ``X`` the random design and ``j`` a group:

    Attributes
    ----------
    n : ndarray of shape (n_groups,)
        Number of observations per group.
    XtX : ndarray of shape (n_groups, n_coef, n_coef)
        ``X_j' W_j X_j``.
    XtF : ndarray of shape (n_groups, n_coef, n_fixed)
        ``X_j' W_j F_j``.
    Xty : ndarray of shape (n_groups, n_coef)
        ``X_j' W_j y_j``.
    yty_g : ndarray of shape (n_groups,)
        ``y_j' W_j y_j`` (kept per group for group-wise likelihoods).
    FtF : ndarray of shape (n_fixed, n_fixed)
        ``F' W F`` summed over all rows.
    Fty : ndarray of shape (n_fixed,)
        ``F' W y`` summed over all rows.
    scal : ndarray of shape (3,)
        ``[y' W y, n_obs, sum(log w)]``, read by the slot names :data:`YTY`, :data:`N_OBS`
        and :data:`SUM_LOG_W`.
    FtF_g : ndarray of shape (n_groups, n_fixed, n_fixed), or (0, n_fixed, n_fixed)
        ``F_j' W_j F_j``, kept when ``n_groups * n_fixed**2`` is at most
        :data:`samplers.suffstats.GROUP_FIXED_LIMIT` (else empty): with ``Fty_g`` and the
        fields above, every group's residual sum of squares at any ``(a, b_j)`` is a
        quadratic form, so per-group log-likelihoods never read the rows.
    Fty_g : ndarray of shape (n_groups, n_fixed)
        ``F_j' W_j y_j``.
    logw_g : ndarray of shape (n_groups,)
        ``sum(log w)`` over group ``j``'s rows.
    """

    n: np.ndarray
    XtX: np.ndarray
    XtF: np.ndarray
    Xty: np.ndarray
    yty_g: np.ndarray
    FtF: np.ndarray
    Fty: np.ndarray
    scal: np.ndarray
    FtF_g: np.ndarray
    Fty_g: np.ndarray
    logw_g: np.ndarray


class RowProducts(NamedTuple):
    """The rows' cross-products, kept for statistics recomputed every sweep with new row weights.

    A sampler that reweights the rows each sweep (a Student-t level 1, a variance model, a
    data augmentation) needs ``sum_i w_i v_i v_i'`` per group for the row's columns
    ``v_i = (x_i, f_i[, y_i])``. The products ``v_i v_i'`` do not change, so they are formed
    once, the rows in group order, and a sweep's statistics are then a weighted sum of
    contiguous rows per group (:func:`samplers.suffstats.recompute_products`, docs/design.md,
    "Statistics of reweighted rows").

    Attributes
    ----------
    P : ndarray of shape (n_obs, m (m + 1) / 2), or (0, 0) when not kept
        Row by row in group order, the upper triangle of ``v v'`` by rows of the triangle;
        ``v`` has the ``n_coef`` columns of ``X``, the ``n_fixed`` of ``F``, and the response
        last when it does not change (``m`` columns).
    V : ndarray of shape (n_obs, n_coef + n_fixed), or (0, 0) when the response is in ``P``
        ``(x_i, f_i)`` in group order, for the terms of a response that changes each sweep.
    order : ndarray of int64, shape (n_obs,)
        The row (of the model's arrays) at each position of the group order.
    starts : ndarray of int64, shape (n_groups + 1,)
        Group ``j``'s rows are positions ``starts[j]:starts[j + 1]``.
    """

    P: np.ndarray
    V: np.ndarray
    order: np.ndarray
    starts: np.ndarray


NO_ROW_PRODUCTS = RowProducts(np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0, dtype=np.int64),
                              np.zeros(0, dtype=np.int64))


class Structure(NamedTuple):
    """Shape of the variance components.

    Attributes
    ----------
    block_ptr : ndarray of int64, shape (n_blocks + 1,)
        Random coefficients ``block_ptr[k]:block_ptr[k+1]`` form covariance block ``k``;
        blocks are independent (``T`` is block diagonal).
    theta_ptr : ndarray of int64, shape (n_blocks + 1,)
        Where each block's entries start in the unconstrained vector ``theta`` (after
        ``log sigma`` when sigma is estimated).
    sigma_known : int
        1 when the level-1 variances are known (``s2`` fixed at 1 and the weights carry them).
    diag_scale : ndarray of shape (n_coef,)
        Scale ``s_i`` of the signed SDs: ``tau_i = s_i sinh(theta)`` (see :mod:`samplers.theta`).
    flip_bits : ndarray of int64, shape (n_theta,)
        For each entry of ``theta``, the bit mask of the coefficients whose reflection
        negates it: its own bit for an SD, the two coefficients' bits for a correlation,
        0 for ``log sigma``.
    sd_idx : ndarray of int64, shape (n_coef,)
        Position in ``theta`` of each coefficient's signed SD.
    level_ptr : ndarray of int64, shape (n_factors + 1,)
        Coefficients ``level_ptr[k]:level_ptr[k+1]`` belong to grouping factor ``k``, finest
        first (a covariance block never spans two factors). ``[0, n_coef]`` for one factor.
    node_ptr : ndarray of int64, shape (n_factors + 1,)
        The groups of all factors are numbered one after another, finest first: factor ``k``
        has groups ``node_ptr[k]:node_ptr[k+1]``; the finest are the groups of the statistics.
    parent : ndarray of int64, shape (node_ptr[-1],)
        The group of the next coarser factor that contains each group (-1 for the coarsest,
        and for every group when the factors are crossed).
    cell_node : ndarray of int64, shape (n_cells, n_factors), or (0, 0)
        For crossed factors (:mod:`samplers.crossed`): the groups of the statistics are the
        cells, the combinations of groups that occur, and ``cell_node[c, k]`` is cell ``c``'s
        group of factor ``k`` (a number in ``node_ptr[k]:node_ptr[k+1]``); factor 0 has the
        most groups. Empty for nested factors, whose finest groups are the statistics'.
    """

    block_ptr: np.ndarray
    theta_ptr: np.ndarray
    sigma_known: int
    diag_scale: np.ndarray
    flip_bits: np.ndarray
    sd_idx: np.ndarray
    level_ptr: np.ndarray
    node_ptr: np.ndarray
    parent: np.ndarray
    cell_node: np.ndarray = np.zeros((0, 0), dtype=np.int64)


class FixedPrior(NamedTuple):
    """Gaussian prior of the fixed effects in information form (flat in some directions).

    ``log p(a) = -1/2 (a' prec a - 2 lin' a + const) - (p - n_flat)/2 log(2 pi)``: ``prec`` is
    positive semi-definite, and the directions it leaves out are flat (improper uniform).
    A product of independent normals on any linear coordinates of ``a`` has this form.

    Attributes
    ----------
    prec : ndarray of shape (n_fixed, n_fixed)
        Prior precision ``P0`` (zero for a flat prior).
    lin : ndarray of shape (n_fixed,)
        Linear term ``h = P0 m0``.
    const : float
        ``m0' P0 m0 - log pdet(P0)``: with ``n_flat`` the constant that makes the proper part
        a normalised density (0 for a flat prior).
    n_flat : int
        Number of flat directions, ``n_fixed - rank(P0)``.
    """

    prec: np.ndarray
    lin: np.ndarray
    const: float
    n_flat: int


class Priors(NamedTuple):
    """Numeric hyperparameters, all in the kernels' (internal) basis.

    Attributes
    ----------
    fixed : FixedPrior
        Prior of the fixed effects.
    sigma_kind : int
        Prior code for sigma (``PRIOR_*`` of :mod:`samplers.sd_priors`).
    sigma_par : ndarray of shape (2,)
        Its parameters.
    sd_kind : ndarray of int64, shape (n_coef,)
        Prior code of each group SD (ignored inside inverse-Wishart blocks).
    sd_par : ndarray of shape (n_coef, 2)
        Their parameters.
    block_iw : ndarray of int64, shape (n_blocks,)
        1 where the block has an inverse-Wishart prior on its whole covariance.
    block_eta : ndarray of shape (n_blocks,)
        LKJ shape for the correlations of each block (or the IW degrees of freedom when
        ``block_iw`` is 1).
    iw_scale : ndarray of shape (n_coef, n_coef)
        Block-diagonal scale matrices of the inverse-Wishart priors.
    block_map : ndarray of int64, shape (n_blocks,)
        1 where the block's SD and correlation priors are set on other coordinates of its
        coefficients than the kernels' own: on ``G_k b`` with ``G_k`` the block of
        ``prior_map`` (a centred slope's intercept, say). Their density is then evaluated at
        ``G_k T_k G_k'`` (see :func:`samplers.theta.decode_theta`).
    prior_map : ndarray of shape (n_coef, n_coef)
        Block-diagonal maps ``G_k`` (identity blocks where ``block_map`` is 0).
    """

    fixed: FixedPrior
    sigma_kind: int
    sigma_par: np.ndarray
    sd_kind: np.ndarray
    sd_par: np.ndarray
    block_iw: np.ndarray
    block_eta: np.ndarray
    iw_scale: np.ndarray
    block_map: np.ndarray
    prior_map: np.ndarray


def flat_fixed_prior(p):
    """A :class:`FixedPrior` that is flat in every direction (ML, REML)."""
    return FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, int(p))


# Slots of ChainState.scal
LP = 0  # log p(theta | y) up to a constant, at the current draw
LP_COND = 1  # the target of the Metropolis-Hastings moves at the current theta: log p(theta | a, y) or log p(theta | y)
LOG_SCALE = 2  # log of the random-walk step scale
FAILED = 3  # 1.0 once a factorisation failed: the chain stops
RTR = 4  # (y - F a)'W(y - F a) at the current fixed effects
IND_ACC = 5  # summed acceptance of the independence moves in warm-up
IND_N = 6  # their count
IND_LQ = 7  # independence-proposal log density at theta (nan when not known)
RSS = 8  # weighted residual sum of squares at the current (a, b), when the coefficient draw gives it
N_SCAL = 9
# Slots of ChainState.ibuf
ITER = 0  # sweeps done
WIN_COUNT = 1  # draws in the current adaptation window
LAST_RESET = 2  # sweep of the last reset of the proposal scale
READY = 3  # 1 once the first coefficients are drawn
CURRENT = 4  # which workspace holds the factors at the current theta: 0 work, 1 scratch
FACTORED = 5  # 1 when that workspace holds them (moves on p(theta | y) keep it so)
N_IBUF = 6


class ChainState(NamedTuple):
    """Mutable state of one chain, updated in place by the driver between chunks.

    Attributes
    ----------
    theta : ndarray of shape (n_theta,)
        Unconstrained variance components: ``log sigma`` (unless known), then per block the
        signed SDs and the canonical partial correlations (see :mod:`samplers.theta`).
    a : ndarray of shape (n_fixed,)
        Fixed effects.
    b : ndarray of shape (n_nodes, n_coef)
        Group coefficients (deviations from the fixed part), one row per group of every factor
        (``Structure.node_ptr``); a row uses its own factor's columns.
    scal : ndarray of shape (N_SCAL,)
        Scalars, by the slot names above (:data:`LP`, :data:`FAILED`, ...).
    ibuf : ndarray of int64, shape (N_IBUF,)
        Counters, by the slot names above (:data:`ITER`, :data:`READY`, ...).
    r : ndarray of shape (n_groups, n_coef)
        ``X_j'W_j(y_j - F_j a)`` at the current fixed effects (finest groups).
    work : NamedTuple
        Workspace of the Gaussian passes (from :func:`samplers.gaussian.workspace`), holding
        the factors at the current ``theta`` after each draw of the coefficients.
    scratch : NamedTuple
        A second workspace of the same type, for the Metropolis-Hastings proposals. Moves on
        ``p(theta | y)`` (``MHMoves.marginal``) evaluate a proposal in whichever of the two
        does not hold the current factors (``ibuf[CURRENT]``) and, when it is accepted, make
        it the current one, so that the coefficients are drawn from its factors without
        factorising again.
    prop_chol : ndarray of shape (n_theta, n_theta)
        Cholesky factor of the random-walk proposal covariance.
    ad_mean : ndarray of shape (n_theta,)
        Running mean of theta during warm-up.
    ad_cov : ndarray of shape (n_theta, n_theta)
        Running sum of squared deviations of theta during warm-up.
    ind_mean : ndarray of shape (n_theta,)
        Centre of the independence proposal (learnt during warm-up).
    ind_chol : ndarray of shape (n_theta, n_theta)
        Cholesky factor of its scale matrix (zero until learnt).
    """

    theta: np.ndarray
    a: np.ndarray
    b: np.ndarray
    scal: np.ndarray
    ibuf: np.ndarray
    r: np.ndarray
    work: tuple
    scratch: tuple
    prop_chol: np.ndarray
    ad_mean: np.ndarray
    ad_cov: np.ndarray
    ind_mean: np.ndarray
    ind_chol: np.ndarray


class GibbsMoves(NamedTuple):
    """Moves on the variance components: conjugate Gibbs updates given the coefficients."""


class BlockedGibbsMoves(NamedTuple):
    """Conjugate Gibbs moves on the variance components, and the coefficients drawn factor by factor.

    For crossed factors: each factor's group coefficients are drawn jointly with the fixed
    effects given the other factors' (the collapsed Gibbs sampler of Papaspiliopoulos,
    Roberts & Zanella 2020), a pass over the cells per factor instead of the exact joint
    factorisation. For nested factors the draw is the exact joint one.
    """


class MHMoves(NamedTuple):
    """Moves on the variance components: ``steps`` Metropolis-Hastings moves with the groups integrated out.

    ``marginal`` 0: the target is ``p(theta | a, y)``, the fixed effects given (each
    evaluation then costs the same whatever their number). 1: the target is ``p(theta | y)``,
    the fixed effects integrated out as well; the factors of an accepted proposal are the
    ones the coefficients are drawn from, so a sweep factorises only at its proposals
    (:func:`samplers.gaussian.marginal_moves_pay`).

    ``shuffled`` 1: once the independence proposal is fitted, each move is an independence
    move with probability 2/3 and a random-walk move otherwise, drawn afresh, instead of
    the fixed cycle of two independence moves and one random-walk move. The moves of a
    sweep are then a reversible kernel, as a Poisson level 1 needs
    (:func:`samplers.augment.correct`).
    """

    steps: int
    marginal: int = 0
    shuffled: int = 0


class Schedule(NamedTuple):
    """Where a call of :func:`samplers.driver.run_chain` stops and which sweeps it keeps.

    Sweeps ``0 .. warmup - 1`` are warm-up; from ``warmup`` every ``thin``-th sweep is kept;
    the call returns once ``stop`` sweeps are done.
    """

    warmup: int
    thin: int
    stop: int


class DrawStore(NamedTuple):
    """Where one chain's kept draws go, indexed by kept draw ``k = (sweep - warmup) // thin``.

    Attributes
    ----------
    theta : ndarray of shape (n_keep, n_theta)
    a : ndarray of shape (n_keep, n_fixed)
    b_rows : ndarray of int64, shape (n_kept_groups,)
        The groups (rows of ``ChainState.b``) whose coefficients are stored.
    b : ndarray of shape (n_keep_b, n_kept_groups, n_coef)
        Their coefficients (``n_keep_b`` is 0 to store none).
    b_moments : ndarray of shape (2, n_nodes, n_coef), or (0, 0, n_coef)
        Running mean and sum of squared deviations (Welford) of every group's coefficients.
    lp : ndarray of shape (n_keep,)
        ``log p(theta | y)`` up to a constant.
    accept : ndarray of shape (n_keep,)
        Mean acceptance of the moves on the variance components in the sweep.
    coef_map : ndarray of shape (n_coef, n_coef)
        Map applied to each group's coefficients before they are stored or averaged.
    """

    theta: np.ndarray
    a: np.ndarray
    b_rows: np.ndarray
    b: np.ndarray
    b_moments: np.ndarray
    lp: np.ndarray
    accept: np.ndarray
    coef_map: np.ndarray

    @classmethod
    def keeping_nothing(cls, n_theta, n_fixed, n_coef):
        """A store for a call that keeps no draw (arrays of length 0 in the draws)."""
        return cls(np.empty((0, n_theta)), np.empty((0, n_fixed)), np.zeros(0, dtype=np.int64),
                   np.empty((0, 0, n_coef)), np.empty((0, 0, n_coef)), np.empty(0), np.empty(0), np.eye(n_coef))


# Slots of Augmentation.scal
AUG_STALE = 0  # 1 when eta and the log-likelihood are not those of the current (a, b)
AUG_LOGLIK = 1  # sum_i log p(y_i | eta_i) at the current (a, b)
AUG_MEAN_OMEGA = 2  # 1: omega at its conditional mean instead of drawn (a wrong step, for a test)
AUG_LOG_F = 3  # Poisson: log of the correction f at the current (a, b), given the latent arrival times
AUG_N_PROP = 4  # Poisson: corrected coefficient proposals after warm-up
AUG_N_ACC = 5  # Poisson: and how many of them were accepted
AUG_NO_CORRECTION = 6  # wrong steps, for tests: 1 every proposal accepted, the correction or Newton ratio skipped
# (the Newton SD move: its proposal densities left out of its ratio); 2 only the latter
AUG_NEWTON = 7  # 1: the coefficients move by the Newton proposal (Augmentation.newton) instead of the augmentation
N_AUG_SCAL = 8


class NewtonRows(NamedTuple):
    """One chain's state of the Newton proposal (:mod:`samplers.newton`): rows in finest-group order, two buffers each.

    The rows' arrays are the :class:`Augmentation`'s own (not copies), held here too so that
    the moves take this tuple alone, except their columns: ``cols`` holds ``F`` and ``X``'s
    distinct columns once, transposed, which the chains share. A kernel that takes a tuple
    counts a reference for each array in it at every call (two arrays more made a cbpp sweep
    of about 20 microseconds 4 slower), so the tuple holds no array the moves can do
    without: the offset is read once, by :func:`samplers.newton.start`. The grouping factors
    are nested (one factor, or several, finest first, as :class:`Structure` numbers them);
    the sums are kept per finest group, from which any group's are added up.

    Attributes
    ----------
    family : int
        Family code of :mod:`samplers.glm`.
    y, n, const : ndarray of shape (n_obs,)
    cols : ndarray of shape (n_cols, n_obs)
        The distinct columns of the rows' ``F`` and ``X`` (sorted by finest group; ``X`` holds
        every factor's columns), one per row of the array (:func:`distinct_columns`), so that a
        pass reads each column once, contiguously.
    col_of : ndarray of int64, shape (n_fixed + n_coef,)
        Each column of ``F`` and then of ``X``: its row of ``cols``.
    starts : ndarray of int64, shape (n_finest + 1,)
        Finest group ``f``'s rows are ``starts[f]:starts[f + 1]``.
    level_ptr, node_ptr, parent : ndarray of int64
        The factors' columns and groups, as :class:`Structure`'s.
    anc : ndarray of int64, shape (n_finest, n_factors)
        ``anc[f, k]``: the group of factor ``k`` that holds finest group ``f`` (``anc[f, 0] = f``).
    kid_ptr, kids : ndarray of int64, shapes (n_nodes + 1,) and (n_finest * n_factors,)
        The finest groups in group ``j`` (of any factor) are ``kids[kid_ptr[j]:kid_ptr[j + 1]]``.
    shared : ndarray of int64, shape (m, 2)
        Pairs ``(q, c)``: in every row of group ``j`` of the factor that owns coefficient ``c``,
        fixed column ``q`` equals ``shift_coef[j]`` times column ``c`` of ``X``.
    shift_coef : ndarray of shape (n_nodes, m)
        Each pair's ``c_j`` (1 for a fixed effect that is also a group coefficient; the group's
        value of a group-level predictor; 0 for a group without rows or of another factor).
    nest_pairs : ndarray of int64, shape (m2, 2)
        Pairs ``(u, v)``: coefficient ``u`` of a factor and ``v`` of the next coarser one are the
        same column of ``X`` (the intercepts of ``(1 | h/g)``).
    cur : ndarray of int64, shape (n_finest,)
        The buffer (0 or 1) holding each finest group's rows at the current draw.
    eta : ndarray of shape (2, n_obs)
        Each row's predictor, in two buffers.
    A, h, FF, Fr, L : ndarray
        Each finest group's ``X'WX`` (n_finest, n_coef, n_coef; lower triangle), ``X's``
        (n_finest, n_coef), ``F'WF`` (n_finest, p, p; lower triangle), ``F's`` (n_finest, p) and
        log-likelihood (n_finest,) at the current draw (``W`` the rows' working weights, ``s``
        their scores).
    A2, h2, FF2, Fr2, L2 : ndarray
        The same at a proposal.
    cnt : ndarray of shape (8,)
        Group moves, fixed-effect moves and SD moves made and accepted after warm-up, and fixed-effect
        moves made and accepted in warm-up (slots of :mod:`samplers.newton`).
    bernoulli : bool
        Every row is Bernoulli with the logit link (one trial, no constant): a row reads only ``y``.
    interweave : ndarray of bool, shape (n_factors,)
        Each sweep also moves factor ``k``'s SD given the standardised effects
        (:func:`samplers.newton.scale_move`; a factor with one coefficient).
    fixed_moves : ndarray of int64, shape (1,)
        The fixed-effect moves a sweep makes: 1 in warm-up, then as :func:`samplers.newton.settle` sets.
    """

    family: int
    y: np.ndarray
    n: np.ndarray
    const: np.ndarray
    cols: np.ndarray
    col_of: np.ndarray
    starts: np.ndarray
    level_ptr: np.ndarray
    node_ptr: np.ndarray
    parent: np.ndarray
    anc: np.ndarray
    kid_ptr: np.ndarray
    kids: np.ndarray
    shared: np.ndarray
    shift_coef: np.ndarray
    nest_pairs: np.ndarray
    cur: np.ndarray
    eta: np.ndarray
    A: np.ndarray
    h: np.ndarray
    FF: np.ndarray
    Fr: np.ndarray
    L: np.ndarray
    A2: np.ndarray
    h2: np.ndarray
    FF2: np.ndarray
    Fr2: np.ndarray
    L2: np.ndarray
    cnt: np.ndarray
    bernoulli: bool
    interweave: np.ndarray
    fixed_moves: np.ndarray


def _int64(a, shape=None):
    a = np.ascontiguousarray(np.asarray(a, dtype=np.int64))
    return a if shape is None else a.reshape(shape)


def group_of_rows(finest, parent, n_factors):
    """``(n, n_factors)``: each row's group of every factor, from its finest group and the groups' ``parent``."""
    node = np.empty((finest.shape[0], n_factors), dtype=np.int64)
    node[:, 0] = finest
    for k in range(1, n_factors):
        node[:, k] = parent[node[:, k - 1]]
    return node


def distinct_columns(F, X):
    """``(cols, col_of)``: the distinct columns of ``F`` and ``X`` as rows of one array, and each column's row.

    Columns equal in every row (the intercept of ``(1 | g)`` and of the fixed effects) are
    kept once, so that a pass forms their products once.
    """
    both = np.concatenate([np.asarray(F, dtype=np.float64), np.asarray(X, dtype=np.float64)], axis=1)
    col_of = np.empty(both.shape[1], dtype=np.int64)
    keep = []
    for c in range(both.shape[1]):
        same = [r for r, k in enumerate(keep) if np.array_equal(both[:, k], both[:, c])]
        col_of[c] = same[0] if same else len(keep)
        if not same:
            keep.append(c)
    return np.ascontiguousarray(both[:, keep].T), col_of


def newton_rows(family, y, n, const, F, X, starts, shared, shift_coef, bernoulli=False, level_ptr=None,
                node_ptr=None, parent=None, nest_pairs=None, cols=None, col_of=None):
    """A chain's :class:`NewtonRows` for the rows ``y`` ... ``X`` in ``len(starts) - 1`` finest groups.

    ``level_ptr``, ``node_ptr`` and ``parent`` describe nested factors as :class:`Structure`'s
    do; left out, the model has one factor with every column of ``X``. ``cols`` and ``col_of``
    are :func:`distinct_columns` of ``F`` and ``X``, formed here when left out (the chains
    share them when given). ``interweave`` starts
    False for every factor; the caller sets it (``_replace``) once the rows' working weights
    say whether the groups are weakly informed.
    """
    G = len(starts) - 1
    n_obs, p, d = y.shape[0], F.shape[1], X.shape[1]
    level_ptr = _int64([0, d] if level_ptr is None else level_ptr)
    node_ptr = _int64([0, G] if node_ptr is None else node_ptr)
    parent = _int64(np.full(G, -1) if parent is None else parent)
    K = level_ptr.shape[0] - 1
    anc = group_of_rows(np.arange(G), parent, K)
    n_nodes = int(node_ptr[-1])
    node_of = anc.T.ravel()  # finest groups listed factor by factor, each under its group of that factor
    order = np.argsort(node_of, kind="stable")
    kid_ptr = np.zeros(n_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(node_of, minlength=n_nodes), out=kid_ptr[1:])
    shared = _int64(shared, (-1, 2))
    if cols is None:
        cols, col_of = distinct_columns(F, X)
    return NewtonRows(
        family=int(family), y=y, n=n, const=const, cols=cols, col_of=_int64(col_of),
        starts=_int64(starts), level_ptr=level_ptr, node_ptr=node_ptr, parent=parent, anc=anc,
        kid_ptr=kid_ptr, kids=_int64(np.tile(np.arange(G), K)[order]),
        shared=shared,
        shift_coef=np.ascontiguousarray(np.asarray(shift_coef, dtype=np.float64).reshape(n_nodes, len(shared))),
        nest_pairs=_int64(np.zeros((0, 2)) if nest_pairs is None else nest_pairs, (-1, 2)),
        cur=np.zeros(G, dtype=np.int64),
        eta=np.zeros((2, n_obs)),
        A=np.zeros((G, d, d)),
        h=np.zeros((G, d)),
        FF=np.zeros((G, p, p)),
        Fr=np.zeros((G, p)),
        L=np.zeros(G),
        A2=np.zeros((G, d, d)),
        h2=np.zeros((G, d)),
        FF2=np.zeros((G, p, p)),
        Fr2=np.zeros((G, p)),
        L2=np.zeros(G),
        cnt=np.zeros(8),
        bernoulli=bool(bernoulli),
        interweave=np.zeros(K, dtype=np.bool_),
        fixed_moves=np.ones(1, dtype=np.int64),
    )


NO_NEWTON = newton_rows(0, np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 0)), np.zeros((0, 0)),
                        np.zeros(1, dtype=np.int64), np.zeros((0, 2), dtype=np.int64), np.zeros((0, 0)))


class Augmentation(NamedTuple):
    """A non-Gaussian level 1 for one chain: the rows it reads, and its per-row working values.

    The rows (``y`` to ``gidx``) are shared by the chains; ``stats`` and the arrays after
    them belong to one chain (:mod:`samplers.augment`, docs/design.md, "Non-Gaussian
    level 1").

    Attributes
    ----------
    family : int
        Family code of :mod:`samplers.glm` (``BINOMIAL_LOGIT``, ``BINOMIAL_PROBIT`` or ``POISSON_LOG``).
    y, n, offset, const : ndarray of shape (n_obs,)
        Response, trials (1 for Bernoulli rows), the known part of the linear predictor, and
        each row's log normalising constant ``log C(n, y)``.
    F, X : ndarray of shape (n_obs, n_fixed), (n_obs, n_coef)
        The designs in the kernels' basis.
    gidx : ndarray of int64, shape (n_obs,)
        Each row's group of the statistics (finest group, or cell).
    stats : SuffStats
        This chain's working statistics, recomputed every sweep.
    eta, w, z : ndarray of shape (n_obs,)
        Linear predictor at the current coefficients, working weights and responses.
    ll_row : ndarray of shape (n_obs,) or (0,)
        Each row's log-likelihood at the current draw, when the log-likelihood is stored.
    out_idx : ndarray of int64, shape (n_obs,) or (0,)
        The column of ``ll_out`` each row adds into (the row itself, or its group).
    ll_out : ndarray of shape (n_keep, n_out)
        Log-likelihood of every kept draw (``n_out`` 0: none kept).
    scal : ndarray of shape (N_AUG_SCAL,)
        Scalars by the slot names ``AUG_*``.
    lat : ndarray of shape (capacity,)
        Poisson: ``-log`` of each row's latent inter-arrival times, ``y_i + 1`` of them for
        row ``i`` from ``lat_ptr[i]`` (capacity at least ``sum(y) + n_obs``); (0,) otherwise.
    lat_ptr : ndarray of int64, shape (n_obs + 1,) or (0,)
        Poisson: where each row's latent values start in ``lat``, set by each augmentation.
    mix : ndarray of shape (3, n_components)
        Poisson: the normal mixture standing in for the density of ``-log Exp(1)``, as rows
        ``log w_k - log(2 pi v_k) / 2``, ``m_k`` and ``1 / v_k``
        (:func:`samplers.augment.mixture_table`).
    eta_prev, a_prev, b_prev, theta_prev : ndarray
        Poisson: the predictor and the draw before a corrected proposal, restored when it is
        rejected ((0,) arrays otherwise).
    prod : RowProducts
        The rows' cross-products (without the response, which changes), shared by the chains:
        each sweep's working statistics are formed from them (docs/design.md, "Statistics of
        reweighted rows"); :data:`NO_ROW_PRODUCTS` above their size limit.
    newton : NewtonRows
        The Newton proposal's state (``scal[AUG_NEWTON]``; :data:`NO_NEWTON` otherwise).
    """

    family: int
    y: np.ndarray
    n: np.ndarray
    offset: np.ndarray
    const: np.ndarray
    F: np.ndarray
    X: np.ndarray
    gidx: np.ndarray
    stats: SuffStats
    eta: np.ndarray
    w: np.ndarray
    z: np.ndarray
    ll_row: np.ndarray
    out_idx: np.ndarray
    ll_out: np.ndarray
    scal: np.ndarray
    lat: np.ndarray = np.zeros(0)
    lat_ptr: np.ndarray = np.zeros(0, dtype=np.int64)
    mix: np.ndarray = np.zeros((3, 0))
    eta_prev: np.ndarray = np.zeros(0)
    a_prev: np.ndarray = np.zeros(0)
    b_prev: np.ndarray = np.zeros((0, 0))
    theta_prev: np.ndarray = np.zeros(0)
    prod: RowProducts = NO_ROW_PRODUCTS
    newton: NewtonRows = NO_NEWTON


# Slots of Level1.scal
L1_LOGLIK = 0  # sum_i log p(y_i | ...) at the current draw (nan when not formed)
L1_DELTA_ACC = 1  # independence moves of delta accepted after warm-up
L1_DELTA_N = 2  # and made
L1_E_ACC = 3  # independence moves of the groups' e_j accepted after warm-up
L1_E_N = 4  # and made
L1_NU_ACC = 5  # moves of nu accepted after warm-up
L1_NU_N = 6  # and made
N_L1_SCAL = 7


class Level1(NamedTuple):
    """A level-1 variance other than ``sigma^2 / w_i`` for one chain (:mod:`samplers.scale`).

    The rows (``y`` to ``out_idx``) are shared by the chains; ``stats`` and the arrays after
    them belong to one chain (docs/design.md, "Heterogeneous level-1 variance", "Student-t
    level 1").

    Attributes
    ----------
    y : ndarray of shape (n_obs,)
        The response (minus any offset) in the kernels' basis.
    base_w : ndarray of shape (n_obs,)
        The precision weights in the kernels' basis (ones without ``weights=``).
    F, X : ndarray of shape (n_obs, n_fixed), (n_obs, n_coef)
        The designs in the kernels' basis.
    gidx : ndarray of int64, shape (n_obs,)
        Each row's group of the statistics.
    Z : ndarray of shape (n_obs, k)
        The standardised columns of ``sigma=`` (k may be 0).
    vgidx : ndarray of int64, shape (n_obs,)
        Each row's group of the ``(1 | g)`` term (zeros without one).
    gn : ndarray of shape (n_vgroups,)
        Rows per group of that term ((0,) without one).
    student : int
        1 for a Student-t level 1.
    nu_fixed : float
        Its fixed degrees of freedom, or 0 when they are estimated.
    log_y_scale : float
        ``log`` of the response's scale in the kernels' basis (the log-likelihood is in the user's units).
    out_idx : ndarray of int64, shape (n_obs,) or (0,)
        The column of ``ll_out`` each row adds into.
    stats : SuffStats
        This chain's statistics at its current row precisions.
    r, u, q, lam, w, ll_row : ndarray of shape (n_obs,)
        Residuals at the current coefficients, scaled squared residuals, their part without
        the variance model, the Student-t weights (ones otherwise), the row precisions, and
        the rows' log-likelihoods ((0,) when none is kept).
    par : ndarray of shape (k + 2,)
        ``delta_N``, ``log omega``, ``nu``.
    e, eps, gq : ndarray of shape (n_vgroups,)
        The groups' log-SD deviations, ``e / omega``, and their sums of ``q exp(-z' delta)``.
    par_out : ndarray of shape (n_keep, k + 2)
    e_out : ndarray of shape (n_keep, n_vgroups)
    ll_out : ndarray of shape (n_keep, n_out)
    scal : ndarray of shape (N_L1_SCAL,)
        By the slot names ``L1_*``.
    grouped : int
        1 when the row precisions are constant within each group of the statistics (``z``
        and the ``(1 | g)`` group constant within it, no Student-t weights): the statistics
        are then ``base`` scaled group by group and the residual sums of squares quadratic
        forms in it, so that a sweep reads no row (docs/design.md, "Heterogeneous level-1 variance").
    base : SuffStats
        The statistics with the precision weights alone (``grouped`` only; else those of ``stats``' shape).
    gz : ndarray of shape (n_groups, k)
        Each group of the statistics' ``z`` (``grouped`` only).
    gv : ndarray of int64, shape (n_groups,)
        Each group of the statistics' group of the ``(1 | g)`` term (``grouped`` only).
    grss : ndarray of shape (n_groups,)
        Their weighted residual sums of squares over ``s2`` at the current coefficients.
    prod : RowProducts
        The rows' cross-products with the response, shared by the chains, from which each
        sweep's statistics are formed (:data:`NO_ROW_PRODUCTS` with ``grouped``, or above
        their size limit: the statistics then come from the rows).
    """

    y: np.ndarray
    base_w: np.ndarray
    F: np.ndarray
    X: np.ndarray
    gidx: np.ndarray
    Z: np.ndarray
    vgidx: np.ndarray
    gn: np.ndarray
    student: int
    nu_fixed: float
    log_y_scale: float
    out_idx: np.ndarray
    stats: SuffStats
    r: np.ndarray
    u: np.ndarray
    q: np.ndarray
    lam: np.ndarray
    w: np.ndarray
    ll_row: np.ndarray
    par: np.ndarray
    e: np.ndarray
    eps: np.ndarray
    gq: np.ndarray
    par_out: np.ndarray
    e_out: np.ndarray
    ll_out: np.ndarray
    scal: np.ndarray
    grouped: int
    base: SuffStats
    gz: np.ndarray
    gv: np.ndarray
    grss: np.ndarray
    prod: RowProducts
