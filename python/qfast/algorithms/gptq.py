"""GPTQ (Frantar et al., 2022) on one linear layer, faithful to the reference.

The reference is IST-DASLab/gptq's ``GPTQ.fasterquant`` and its successors AutoGPTQ and
GPTQModel (``static_groups``, ``g_idx``). The steps and where they run:

1. dead inputs (``H[i, i] == 0``) get ``H[i, i] = 1`` and their weights set to 0;
2. ``act_order``: columns are processed by decreasing ``H[i, i]``;
3. damping ``H += damp · mean(diag H) · I``, then the upper Cholesky factor ``U`` of ``H⁻¹``
   (float32, as the reference; here one Cholesky of the reversed matrix and one triangular
   inverse, which is the same factor with half the work of the reference's three
   factorisations). Not positive definite: damping doubles, with a warning;
4. blocks of ``block_size`` columns: the column loop in Rust (``_qfast.gptq_block``: per
   column, quantize, and spread the error over the block), then the lazy update of the
   later columns as one BLAS product, ``W[:, i2:] -= Err @ U[i1:i2, i2:]``.

Grids are the reference's (see ``qfast.algorithms.rtn``): a new group's grid comes from the
weights as they stand at the start of the block that reaches it, as the reference takes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _qfast
from .._checks import as_bool, check_at_least, check_bits, check_positive
from ..calibration.hessian import Hessian
from ..tensor.qtensor import QTensor, scale_dtype_name
from ._grid import MSE_SEARCH, as_weight, grid_params, rows_group_size, to_qtensor

F32 = np.float32

# Triangular inverses below this size are one LAPACK call.
_TRI_LEAF = 256
# Columns per panel of the blocked Cholesky factorisation.
_CHOL_BLOCK = 512
# Damping is doubled at most this many times before giving up.
_DAMP_RETRIES = 8


def _inv_upper(R: np.ndarray, out: np.ndarray) -> None:
    """Writes the inverse of an upper-triangular ``R`` into the upper triangle of ``out``, by
    halves, so the work is BLAS products: ``[[A, B], [0, C]]⁻¹ = [[A⁻¹, -A⁻¹ B C⁻¹], [0, C⁻¹]]``."""
    n = R.shape[0]
    if n <= _TRI_LEAF:
        out[...] = np.triu(np.linalg.inv(R))
        return
    h = n // 2
    _inv_upper(R[:h, :h], out[:h, :h])
    _inv_upper(R[h:, h:], out[h:, h:])
    out[:h, h:] = -(out[:h, :h] @ (R[:h, h:] @ out[h:, h:]))


def _cholesky_in_place(A: np.ndarray) -> None:
    """Overwrites ``A`` with its lower Cholesky factor, by panels of ``_CHOL_BLOCK`` columns:
    the trailing updates are BLAS products (NumPy's own ``cholesky`` ran at about a quarter
    of the BLAS rate here), and no second matrix is allocated (fresh memory is slow to fault
    in). Raises ``LinAlgError`` when ``A`` is not positive definite."""
    n = A.shape[0]
    for k in range(0, n, _CHOL_BLOCK):
        e = min(k + _CHOL_BLOCK, n)
        left = A[k:e, :k]
        Lkk = np.linalg.cholesky(A[k:e, k:e] - left @ left.T)
        A[k:e, k:e] = Lkk
        A[k:e, e:] = 0
        if e < n:
            A[e:, k:e] = (A[e:, k:e] - A[e:, :k] @ left.T) @ np.linalg.inv(Lkk).T


def _upper_cholesky_of_inverse(H: np.ndarray) -> np.ndarray:
    """``U`` upper-triangular with ``H⁻¹ = Uᵀ U`` (torch: ``cholesky(cholesky_inverse(
    cholesky(H)), upper=True)``). With ``J`` the reversal, ``cholesky(J H J) = M`` gives
    ``H = R Rᵀ``, ``R = J M J`` upper, so ``H⁻¹ = R⁻ᵀ R⁻¹`` and ``U = R⁻¹``. ``H`` (a
    scratch copy) is overwritten."""
    M = np.array(H[::-1, ::-1], order="C")  # a copy (ascontiguousarray may return a view)
    _cholesky_in_place(M)
    np.copyto(H, M[::-1, ::-1])  # R, in H's memory
    M.fill(0)
    _inv_upper(H, M)
    return M


def hinv_factor(H: np.ndarray, damp: float) -> tuple[np.ndarray, float]:
    """``U`` (see above) of the damped ``H``, and the damping that made it positive definite."""
    mean_diag = np.mean(np.diag(H))
    for attempt in range(_DAMP_RETRIES + 1):
        Hd = H.copy()
        idx = np.arange(H.shape[0])
        Hd[idx, idx] += F32(damp) * mean_diag
        try:
            U = _upper_cholesky_of_inverse(Hd)
            if np.isfinite(U).all():
                if attempt:
                    warnings.warn(
                        f"the damped Hessian was not positive definite; damping raised to "
                        f"{damp:g} of the mean diagonal (more calibration tokens help)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return U, damp
        except np.linalg.LinAlgError:
            pass
        damp *= 2
    raise ValueError(
        f"the Hessian is not positive definite even with damping {damp / 2:g} of its mean "
        "diagonal; check the calibration inputs (they may be constant or nearly so)"
    )


def _hessian_matrix(hessian: Any, X: Any, cols: int) -> np.ndarray:
    if (hessian is None) == (X is None):
        raise ValueError(
            "pass exactly one of X (calibration inputs [tokens, in_features]) or hessian "
            "(a qfast.Hessian or an [in_features, in_features] matrix)"
        )
    if X is not None:
        hessian = Hessian(cols).add(X)
    if isinstance(hessian, Hessian):
        if hessian.in_features != cols:
            raise ValueError(
                f"the Hessian is for in_features={hessian.in_features}, W has {cols} columns"
            )
        if hessian.n_samples < cols:
            warnings.warn(
                f"{hessian.n_samples} calibration rows for {cols} input features: the "
                "Hessian is rank-deficient and only damping keeps it invertible; use at least "
                f"{cols} (GPTQ usually takes a few thousand tokens)",
                RuntimeWarning,
                stacklevel=3,
            )
        H = hessian.matrix()
        if not np.isfinite(H).all():
            raise ValueError(
                "the Hessian overflows float32: the calibration inputs are too large "
                "(|x|² summed over tokens passes 3.4e38); scale them down"
            )
        return H
    H = np.array(hessian, dtype=F32, order="C")
    if H.shape != (cols, cols):
        raise ValueError(f"hessian has shape {H.shape}; W needs ({cols}, {cols})")
    if not np.isfinite(H).all():
        raise ValueError(
            "hessian contains NaN or Inf (in float32); check the calibration inputs, or scale "
            "them down if they are very large"
        )
    return H


def gptq(
    W: Any,
    X: Any = None,
    *,
    hessian: Any = None,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = True,
    act_order: bool = True,
    static_groups: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    mse: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    scale_dtype: Any = np.float32,
) -> QTensor:
    """Quantizes a linear layer's weight with GPTQ, as the reference does.

    Defaults follow AutoGPTQ / GPTQModel (4 bits, group 128, ``sym=True``,
    ``desc_act=True``, ``damp_percent=0.01``, block 128). IST-DASLab's scripts default to
    ``symmetric=False`` and ``act_order=False``: pass those to reproduce them.

    Args:
        W: float ``[out_features, in_features]``.
        X: calibration inputs of the layer, ``[tokens, in_features]`` (or ``[..., in]``);
            or pass ``hessian`` instead.
        hessian: a :class:`qfast.Hessian` (shared between layers with the same input) or the
            ``[in, in]`` matrix ``2/n Σ x xᵀ``.
        bits: code width, 2 to 8.
        group_size: one grid per this many input columns (the last group may be shorter);
            ``None`` (or -1) for one grid per output row.
        symmetric: the reference grid's ``sym`` (``scale = 2·max|x| / (2^b - 1)``, zero
            ``2^(b-1)``); ``False`` for ``[min(x, 0), max(x, 0)]`` with a rounded zero point.
        act_order: process columns by decreasing ``H[i, i]`` (``desc_act``). Groups are
            then formed in that order, and ``g_idx`` maps each column to its group.
        static_groups: with ``group_size``, fix every group's grid before any update, on
            the original column order (AutoGPTQ's ``static_groups``; no ``g_idx`` needed).
        damp: ``percdamp``, added to the diagonal as a fraction of its mean. When the damped
            Hessian is still not positive definite it is doubled (with a warning).
        block_size: columns per lazy-update block (the reference's ``blocksize``).
        mse: the reference's MSE grid search (norm 2.4, 100 points, shrink to 0.8).
        progress: called as ``progress(columns_done, columns)`` after each block.
        scale_dtype: np.float32 (default), np.float16 (as GPTQ checkpoints store scales) or
            ml_dtypes.bfloat16: each group's scale is rounded to it where the column loop
            finds the grid, so the codes, and the errors GPTQ spreads, are those of the
            scale as stored.

    Returns:
        A :class:`QTensor` (unsigned codes, int32 zero points, ``g_idx`` with act_order and
        dynamic groups); ``q.loss`` is the reference's ``Σ (w - q)² / (2 [H⁻¹]_ii)``,
        ``q.meta`` records the options and the damping used.
    """
    bits = check_bits(bits)
    sdtype = scale_dtype_name(scale_dtype)
    symmetric = as_bool(symmetric, "symmetric")
    act_order = as_bool(act_order, "act_order")
    static_groups = as_bool(static_groups, "static_groups")
    mse = as_bool(mse, "mse")
    W = as_weight(W)
    rows, cols = W.shape
    group_size = rows_group_size(group_size, cols)
    block_size = check_at_least(block_size, "block_size", 1)
    damp = check_positive(damp, "damp")
    if static_groups and group_size is None:
        raise ValueError("static_groups needs a group_size")
    H = _hessian_matrix(hessian, X, cols)  # a fresh array: gptq may modify it
    mse_arg = MSE_SEARCH if mse else None

    n_groups = 1 if group_size is None else -(-cols // group_size)
    scale = np.zeros((rows, n_groups), F32)
    zero = np.zeros((rows, n_groups), F32)
    if group_size is None:  # the reference finds it before dead columns are zeroed
        scale, zero = grid_params(W, bits, None, symmetric, mse, sdtype)

    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups:
        scale, zero = grid_params(W, bits, group_size, symmetric, mse, sdtype)

    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    if act_order:
        W = np.ascontiguousarray(W[:, perm])
        H = H[np.ix_(perm, perm)]
    U, damp_used = hinv_factor(H, damp)
    del H

    col_group = np.zeros(cols, np.uint32)
    if static_groups and group_size is not None:
        col_group = (perm // group_size).astype(np.uint32)
    codes = np.zeros((rows, cols), np.uint8)
    # One buffer for every block's lazy update: fresh arrays of this size cost more in page
    # faults than the product itself.
    update = np.empty(rows * max(cols - block_size, 0), F32)
    err_buf = np.empty(rows * block_size, F32)
    loss = 0.0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        err = err_buf[: rows * (i2 - i1)].reshape(rows, i2 - i1)
        loss += _qfast.gptq_block(
            W, U, i1, i2, bits, symmetric, mse_arg, codes, err, scale, zero,
            group_size, static_groups, col_group, sdtype,
        )  # fmt: skip
        if i2 < cols:
            tmp = update[: rows * (cols - i2)].reshape(rows, cols - i2)
            np.matmul(err, U[i1:i2, i2:], out=tmp)
            np.subtract(W[:, i2:], tmp, out=W[:, i2:])
        if progress is not None:
            progress(i2, cols)

    g_idx = None
    if act_order:
        invperm = np.argsort(perm)
        codes = np.ascontiguousarray(codes[:, invperm])
        if group_size is not None and not static_groups:
            g_idx = (invperm // group_size).astype(np.int32)
    meta = {
        "method": "gptq",
        "loss": loss / 2,
        "symmetric": symmetric,
        "act_order": act_order,
        "static_groups": static_groups,
        "damp": damp_used,
        "block_size": block_size,
        "mse": mse,
    }
    return to_qtensor(codes, scale, zero, bits, group_size, g_idx, meta, sdtype)
