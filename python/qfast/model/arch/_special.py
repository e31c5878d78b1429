"""Special functions in NumPy for the model forward passes (SciPy is not a dependency).

``erf`` follows W. J. Cody, "Rational Chebyshev approximations for the error function",
Math. Comp. 23 (1969), as in his SPECFUN routine CALERF: three rational approximations
(|x| <= 0.46875, |x| <= 4, |x| > 4), evaluated in float64, with a relative error near float64
rounding. A cheaper float32-grade formula (e.g. Abramowitz-Stegun 7.1.26, 1.5e-7 absolute) would
already sit at the level of float32 rounding in GELU, but then every GELU output would carry a
systematic error of a few float32 ulps that depends on our choice of formula; with Cody's
approximation the only error left is the final rounding to float32, so the forward pass is exact
in the sense that matters here: GELU's result does not depend on how erf was computed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["erf", "gelu", "gelu_tanh"]

# CALERF's coefficients (IEEE double precision).
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)  # fmt: skip
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)  # fmt: skip
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)  # fmt: skip
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)  # fmt: skip
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)  # fmt: skip
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)  # fmt: skip
_RSQRTPI = 0.56418958354775628695  # 1 / sqrt(pi)
_THRESH = 0.46875


def _exp_neg_square(y: np.ndarray) -> np.ndarray:
    """``exp(-y*y)`` without the relative error of rounding ``y*y`` first (Cody's trick: split
    ``y`` into a 4-bit-fraction part, whose square is exact, and a small rest)."""
    with np.errstate(invalid="ignore", over="ignore"):  # y = inf: inf - inf; exp(-inf) wins
        head = np.trunc(y * 16.0) / 16.0
        rest = (y - head) * (y + head)
        return np.exp(-head * head) * np.exp(-rest)


def _horner(coefficients: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """``c[0] x^n + c[1] x^(n-1) + ... + c[n]``, updating one temporary in place."""
    acc = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        acc *= x
        acc += c
    return acc


# CALERF's polynomials, highest degree first (denominators monic).
_A_NUM = (_A[4], _A[0], _A[1], _A[2], _A[3])
_B_DEN = (1.0, *_B)
_C_NUM = (_C[8], *_C[:8])
_D_DEN = (1.0, *_D)


def _erf_small(x: np.ndarray) -> np.ndarray:
    """erf(x) for |x| <= 0.46875 (odd: the sign of x carries through)."""
    z = x * x
    r = _horner(_A_NUM, z)
    r /= _horner(_B_DEN, z)
    r *= x
    return r


def _erfc_mid(y: np.ndarray) -> np.ndarray:
    """erfc(y) for 0.46875 < y <= 4."""
    r = _horner(_C_NUM, y)
    r /= _horner(_D_DEN, y)
    r *= _exp_neg_square(y)
    return r


def _erfc_large(y: np.ndarray) -> np.ndarray:
    """erfc(y) for y > 4 (0 once exp(-y*y) underflows; y = inf gives 0)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = 1.0 / (y * y)
        num, den = _P[5] * z, z
        for i in range(4):
            num, den = (num + _P[i]) * z, (den + _Q[i]) * z
        r = (_RSQRTPI - z * (num + _P[4]) / (den + _Q[4])) / y
    return np.where(np.isfinite(y), r * _exp_neg_square(y), 0.0)


def erf(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The error function, elementwise, in float64 (relative error about 1e-16).

    Args:
        x: any real array (converted to float64).

    Returns:
        ``erf(x)`` as float64, same shape; NaN where ``x`` is NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.abs(x)
    out = np.full_like(y, np.nan)
    small = y <= _THRESH
    mid = (y > _THRESH) & (y <= 4.0)
    large = y > 4.0
    out[small] = _erf_small(y[small])
    out[mid] = 1.0 - _erfc_mid(y[mid])
    out[large] = 1.0 - _erfc_large(y[large])
    return np.copysign(out, x)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = erfc(-x / sqrt 2) / 2 in float64, accurate relative to Phi itself also in the
    left tail (where 1 + erf(x / sqrt 2) would cancel)."""
    t = x * -np.sqrt(0.5)
    y = np.abs(t)
    # The middle interval covers most activations: evaluate it everywhere (on clipped values)
    # and patch the two other intervals, instead of gathering and scattering three subsets.
    e = _erfc_mid(np.clip(y, _THRESH, 4.0))
    large = np.flatnonzero(y > 4.0)
    if large.size:
        e[large] = _erfc_large(y[large])
    phi = np.where(t >= 0.0, 0.5 * e, 1.0 - 0.5 * e)  # erfc(-y) = 2 - erfc(y)
    small = np.flatnonzero(y <= _THRESH)
    if small.size:
        phi[small] = 0.5 - 0.5 * _erf_small(t[small])
    phi[np.isnan(x)] = np.nan
    return phi


# Elements per block in gelu: the float64 temporaries of a block stay in L2, which makes the
# two dozen elementwise passes 2 to 4 times faster than over whole activations.
_BLOCK = 1 << 14


def gelu(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Exact GELU, ``x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))`` (BERT's ``"gelu"``).

    Args:
        x: float32 array.

    Returns:
        float32 array of the same shape: computed in float64 (error about 1e-16 relative) and
        rounded once, so within float32 rounding of the exact value.
    """
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty_like(flat)
    for start in range(0, flat.size, _BLOCK):
        x64 = flat[start : start + _BLOCK].astype(np.float64)
        out[start : start + _BLOCK] = x64 * _normal_cdf(x64)
    return out.reshape(np.shape(x))


def gelu_tanh(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The tanh approximation of GELU (``"gelu_new"`` / ``"gelu_pytorch_tanh"`` in
    transformers' configs), ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    Args:
        x: float32 array.

    Returns:
        float32 array of the same shape.
    """
    x64 = x.astype(np.float64)
    inner = np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64**3)
    return (0.5 * x64 * (1.0 + np.tanh(inner))).astype(np.float32)
