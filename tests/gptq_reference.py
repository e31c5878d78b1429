"""A straightforward NumPy transcription of the reference GPTQ (the test oracle).

Line by line from IST-DASLab/gptq (``gptq.py``: ``GPTQ.add_batch`` and ``fasterquant``;
``quant.py``: ``Quantizer.find_params`` and ``quantize``), with the options AutoGPTQ and
GPTQModel added to ``fasterquant`` (``static_groups``; ``g_idx``). float32 throughout, as the
reference runs on a GPU; torch calls are replaced by their NumPy equivalents
(``torch.round`` -> ``np.round``, both round half to even; ``argsort(descending=True)`` ->
a stable argsort of ``-diag``, so tied diagonals keep their order). Deliberately slow and plain:
no blocking tricks beyond the reference's own, no Rust.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


class Quantizer:
    """``quant.py``'s Quantizer with ``perchannel=True`` (weights)."""

    def __init__(self, bits, sym, mse=False, norm=2.4, grid=100, maxshrink=0.8):
        self.maxq = F32(2**bits - 1)
        self.sym, self.mse = sym, mse
        self.norm, self.grid, self.maxshrink = norm, grid, maxshrink

    def find_params(self, x):
        x = x.astype(F32)
        xmin = np.minimum(x.min(1), F32(0))
        xmax = np.maximum(x.max(1), F32(0))
        if self.sym:
            xmax = np.maximum(np.abs(xmin), xmax)
            tmp = xmin < 0
            if np.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = F32(-1)
        xmax[tmp] = F32(+1)
        self.scale = (xmax - xmin) / self.maxq
        if self.sym:
            self.zero = np.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = np.round(-xmin / self.scale)
        if self.mse:
            best = np.full([x.shape[0]], np.inf, dtype=F32)
            for i in range(int(self.maxshrink * self.grid)):
                p = F32(1 - i / self.grid)
                xmin1 = p * xmin
                xmax1 = p * xmax
                scale1 = (xmax1 - xmin1) / self.maxq
                zero1 = np.round(-xmin1 / scale1) if not self.sym else self.zero
                q = quantize(x, scale1[:, None], zero1[:, None], self.maxq)
                q -= x
                q = np.abs(q)
                q = q ** F32(self.norm)
                err = np.sum(q, 1)
                tmp = err < best
                if np.any(tmp):
                    best[tmp] = err[tmp]
                    self.scale[tmp] = scale1[tmp]
                    self.zero[tmp] = zero1[tmp]
        self.scale = self.scale.reshape(-1, 1)
        self.zero = self.zero.reshape(-1, 1)
        return self


def quantize(x, scale, zero, maxq):
    q = np.clip(np.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def hessian(batches):
    """``GPTQ.add_batch`` over ``batches`` of ``[tokens, in]`` rows: the running
    ``H = 2/n Σ x xᵀ``."""
    H, n = None, 0
    for inp in batches:
        inp = np.asarray(inp, F32).reshape(-1, np.asarray(inp).shape[-1])
        tmp = inp.shape[0]
        if H is None:
            H = np.zeros((inp.shape[1], inp.shape[1]), F32)
        H *= F32(n / (n + tmp))
        n += tmp
        inp = F32(math.sqrt(2 / n)) * inp.T
        H += inp @ inp.T
    return H


def hinv(H, percdamp=0.01):
    """The damped Hessian's ``H⁻¹`` upper Cholesky factor, as ``fasterquant`` computes it."""
    H = np.array(H, dtype=F32)
    damp = F32(percdamp) * np.mean(np.diag(H))
    diag = np.arange(H.shape[0])
    H[diag, diag] += damp
    L = np.linalg.cholesky(H)
    Linv = np.linalg.inv(L)
    H = Linv.T @ Linv  # torch.cholesky_inverse
    return np.linalg.cholesky(H).T  # torch.linalg.cholesky(H, upper=True)


def fasterquant(
    W,
    H,
    bits=4,
    sym=True,
    blocksize=128,
    percdamp=0.01,
    groupsize=-1,
    actorder=False,
    static_groups=False,
    mse=False,
):
    """Returns ``(Q, scale, zero, g_idx, loss)``: ``Q`` the dequantized weights, ``scale`` /
    ``zero`` ``[rows, n_groups]`` in group order (AutoGPTQ's), ``g_idx`` each column's group."""
    W = np.array(W, dtype=F32)
    H = np.array(H, dtype=F32)
    columns = W.shape[1]
    quantizer = Quantizer(bits, sym, mse=mse)
    quantizer.find_params(W)

    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    groups = []
    if static_groups:
        for i in range(0, columns, groupsize):
            groups.append(Quantizer(bits, sym, mse=mse).find_params(W[:, i : i + groupsize]))

    perm = np.arange(columns)
    if actorder:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
    invperm = np.argsort(perm)

    Losses = np.zeros_like(W)
    Q = np.zeros_like(W)

    Hinv = hinv(H, percdamp)

    scales, zeros = [], []
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Losses1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        quantizer.find_params(W[:, (i1 + i) : (i1 + i + groupsize)])
                        scales.append(quantizer.scale[:, 0].copy())
                        zeros.append(quantizer.zero[:, 0].copy())
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    quantizer = groups[idx // groupsize]
            q = quantize(w[:, None], quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if actorder:
        Q = Q[:, invperm]
    if groupsize == -1:
        scale, zero = quantizer.scale, quantizer.zero
        g_idx = np.zeros(columns, np.int32)
    elif static_groups:
        scale = np.stack([g.scale[:, 0] for g in groups], 1)
        zero = np.stack([g.zero[:, 0] for g in groups], 1)
        g_idx = (np.arange(columns) // groupsize).astype(np.int32)
    else:
        scale, zero = np.stack(scales, 1), np.stack(zeros, 1)
        g_idx = (invperm // groupsize).astype(np.int32)
    return Q, scale, zero, g_idx, float(np.sum(Losses, dtype=np.float64))


def codes(Q, scale, zero, g_idx):
    """The integer codes behind ``Q`` (AutoGPTQ's ``pack``: ``round(Q / scale + zero)``)."""
    rows = np.arange(Q.shape[0])[:, None]
    s, z = scale[rows, g_idx[None, :]], zero[rows, g_idx[None, :]]
    return np.round(Q / s + z).astype(np.int32)
