"""Small dense linear algebra for the hot loops.

The random dimension of a group is small (1 to about 6), where a hand-written Cholesky
factorisation into a preallocated buffer is several times faster than a LAPACK call that
allocates. All routines work in place and never form an inverse they can solve with.
"""

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types
from numba.extending import get_cython_function_address


def _lapack(name):
    """A LAPACK routine of SciPy's ``cython_lapack`` as a compiled external function.

    The routine's address is registered under a symbol of our own and the compiled code
    calls it by that name, so the kernels that call it can still be cached on disk (a
    ctypes function pointer would be a constant address, which Numba refuses to cache).
    Every routine used here takes ``(uplo, n, a, lda, info)``, all by pointer.
    """
    symbol = f"bayeshlm_{name}"
    llvm.add_symbol(symbol, get_cython_function_address("scipy.linalg.cython_lapack", name))
    return types.ExternalFunction(symbol, types.void(*(types.voidptr,) * 5))


_dpotrf = _lapack("dpotrf")
_dpotri = _lapack("dpotri")
_UPPER = 85  # ord("U"): a C-ordered lower triangle is the upper triangle of the Fortran view


@njit(cache=True, nogil=True)
def copy_into(dst, src):
    """``dst[:] = src`` for 1-d arrays of the same length.

    A loop rather than slice assignment: the slice assignment's shape check formats its
    error message with string operations that add seconds to every kernel's compilation.
    """
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@njit(cache=True, nogil=True)
def chol_inplace(M):
    """Overwrite the symmetric matrix ``M`` with its lower Cholesky factor ``L`` (``M = L L'``).

    Parameters
    ----------
    M : ndarray of shape (d, d)
        Symmetric positive-definite matrix; only its lower triangle is read.

    Returns
    -------
    bool
        False when ``M`` is not numerically positive definite (``M`` is then garbage).
    """
    d = M.shape[0]
    for j in range(d):
        s = M[j, j]
        for k in range(j):
            s -= M[j, k] * M[j, k]
        if not s > 0.0:
            return False
        ljj = np.sqrt(s)
        M[j, j] = ljj
        for i in range(j + 1, d):
            t = M[i, j]
            for k in range(j):
                t -= M[i, k] * M[j, k]
            M[i, j] = t / ljj
        for i in range(j):
            M[i, j] = 0.0
    return True


@njit(cache=True, nogil=True)
def solve_lower(L, x):
    """Overwrite ``x`` with ``L^{-1} x`` (forward substitution), ``x`` of shape (d,)."""
    d = L.shape[0]
    for i in range(d):
        t = x[i]
        for k in range(i):
            t -= L[i, k] * x[k]
        x[i] = t / L[i, i]


@njit(cache=True, nogil=True)
def solve_upper(L, x):
    """Overwrite ``x`` with ``L'^{-1} x`` (back substitution with the transpose of ``L``)."""
    d = L.shape[0]
    for i in range(d - 1, -1, -1):
        t = x[i]
        for k in range(i + 1, d):
            t -= L[k, i] * x[k]
        x[i] = t / L[i, i]


@njit(cache=True, nogil=True)
def solve_lower_cols(L, B):
    """Overwrite every column of ``B`` (shape (d, m)) with ``L^{-1} B``."""
    d = L.shape[0]
    m = B.shape[1]
    for c in range(m):
        for i in range(d):
            t = B[i, c]
            for k in range(i):
                t -= L[i, k] * B[k, c]
            B[i, c] = t / L[i, i]


@njit(cache=True, nogil=True)
def logdet_chol(L):
    """Return ``log |L L'|`` for a lower Cholesky factor ``L``."""
    s = 0.0
    for i in range(L.shape[0]):
        s += np.log(L[i, i])
    return 2.0 * s


@njit(cache=True, nogil=True)
def gaussian_from_precision(L, mean, z, out):
    """Transform standard normals into a draw from ``N(mean, (L L')^{-1})``.

    ``out = mean + L'^{-1} z``; then ``(out - mean)' L L' (out - mean) = z'z``.
    """
    for i in range(z.shape[0]):
        out[i] = z[i]
    solve_upper(L, out)
    for i in range(z.shape[0]):
        out[i] += mean[i]


@njit(cache=True, nogil=True)
def draw_canonical(L, c, rng, draw, out):
    """Write a draw from ``N(P^{-1} c, P^{-1})``, ``P = L L'``, into ``out`` (or its mean).

    ``out = L'^{-1}(L^{-1} c + z)`` with ``z`` standard normals when ``draw`` is true and
    ``rng`` is not None (a None generator is pruned when compiled), else ``z = 0``. ``L`` is
    ``n x n`` with ``n`` the length of ``out``.
    """
    for i in range(out.shape[0]):
        out[i] = c[i]
    solve_lower(L, out)
    if rng is not None:
        if draw:
            for i in range(out.shape[0]):
                out[i] += rng.standard_normal()
    solve_upper(L, out)


@njit(cache=True, nogil=True)
def dense_cholesky(A, n):
    """In place, LAPACK's ``dpotrf``: the lower triangle of ``A[:n, :n]`` becomes its Cholesky factor.

    For the large dense blocks (hundreds of rows and more), where LAPACK's blocked algorithm
    is many times faster than :func:`chol_inplace`. Only the lower triangle is read and
    written; ``A`` is C-contiguous, its leading dimension its row length. Returns False when
    the block is not numerically positive definite.
    """
    uplo = np.array([_UPPER], dtype=np.uint8)
    nn = np.array([n], dtype=np.int32)
    lda = np.array([A.shape[1]], dtype=np.int32)
    info = np.zeros(1, dtype=np.int32)
    _dpotrf(uplo.ctypes, nn.ctypes, A.ctypes, lda.ctypes, info.ctypes)
    return info[0] == 0


@njit(cache=True, nogil=True)
def inverse_from_cholesky(L, n, out):
    """``out = (L L')^{-1}`` for the leading ``n x n`` block of a lower Cholesky factor ``L``, by LAPACK's ``dpotri``.

    ``out`` (C-contiguous, shape (n, n)) receives the full symmetric inverse. A third of the
    work of inverting the matrix itself (``np.linalg.inv`` factorises it again, by LU).
    Returns False when LAPACK reports a zero on the diagonal of ``L``.
    """
    for i in range(n):
        for j in range(i + 1):
            out[i, j] = L[i, j]
    uplo = np.array([_UPPER], dtype=np.uint8)
    nn = np.array([n], dtype=np.int32)
    info = np.zeros(1, dtype=np.int32)
    _dpotri(uplo.ctypes, nn.ctypes, out.ctypes, nn.ctypes, info.ctypes)
    for i in range(n):
        for j in range(i):
            out[j, i] = out[i, j]
    return info[0] == 0
