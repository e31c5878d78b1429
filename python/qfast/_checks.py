"""The one home of every argument rule: integers, bools, numbers, bits, group sizes, axes, float
input and finiteness.

Each rule, and the wording of its error, is written here once; the public functions call these
instead of writing their own. Rust's own checks (``src/checks.rs``) word the rules they share
with this module identically.

Types: a wrong type is a ``TypeError`` (``bits=3.7``, ``bits='4'``, ``symmetric='no'``); a value
out of range is a ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np

# The float dtypes every function that takes float data accepts (bfloat16 from ml_dtypes).
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")

# The code widths a QTensor stores.
MIN_BITS, MAX_BITS = 2, 8


def as_int(value: Any, name: str) -> int:
    """``value`` as an int: Python and NumPy integers only (not bool, float or str)."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an integer, got {value!r}")


def as_shape(value: Any, name: str = "shape") -> tuple[int, ...]:
    """A shape: a sequence of integer sizes (a bare integer is not one)."""
    if isinstance(value, (int, np.integer, str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of sizes, e.g. (4096, 4096), got {value!r}")
    return tuple(as_int(d, name) for d in value)


def as_bool(value: Any, name: str) -> bool:
    """``value`` as a bool: ``True`` / ``False`` (or NumPy's) only, not ``'no'``, 0 or None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def as_float(value: Any, name: str) -> float:
    """``value`` as a float: a Python or NumPy real number (not bool or str)."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise TypeError(f"{name} must be a number, got {value!r}")


def check_at_least(value: Any, name: str, lo: int) -> int:
    """``value`` as an int of at least ``lo``."""
    v = as_int(value, name)
    if v < lo:
        raise ValueError(f"{name} must be at least {lo}, got {v}")
    return v


def _not_positive(name: str, value: Any) -> ValueError:
    return ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_positive(value: Any, name: str) -> float:
    """``value`` as a float above 0 and below infinity (a damping fraction, a penalty weight)."""
    v = as_float(value, name)
    if not (math.isfinite(v) and v > 0):
        raise _not_positive(name, value)
    return v


def check_positive_array(a: np.ndarray, name: str) -> None:
    """A ValueError naming the first value of ``a`` that is not positive and finite."""
    bad = ~(np.isfinite(a) & (a > 0))
    if bad.any():
        raise _not_positive(name, float(a.reshape(-1)[int(bad.argmax())]))


def check_bits(bits: Any) -> int:
    """A code width QTensor stores: an int from 2 to 8."""
    b = as_int(bits, "bits")
    if not MIN_BITS <= b <= MAX_BITS:
        raise ValueError(f"bits={b} is not supported; pass bits between 2 and 8")
    return b


def check_group_size(group_size: Any) -> int:
    """A group size: an int of at least 1 (callers handle ``None`` as their docs say)."""
    return check_at_least(group_size, "group_size", 1)


def check_group_divides(group_size: Any, n: int) -> int:
    """A group size that splits ``n`` values into whole groups (AWQ and HQQ reshape rows into
    groups)."""
    g = check_group_size(group_size)
    if n % g:
        divisors = [d for d in range(1, min(n, 256) + 1) if n % d == 0][-12:]
        raise ValueError(
            f"group_size={g} does not divide the input size {n} (the last axis); pass one of "
            f"{divisors}, or None for one group per row"
        )
    return g


def normalize_axis(axis: Any, ndim: int) -> int:
    """``axis`` in ``[0, ndim)`` (negative counts from the end; a 0-d array has axis 0)."""
    a = as_int(axis, "axis")
    nd = max(ndim, 1)
    if not -nd <= a < nd:
        raise ValueError(f"axis={a} is out of range for an array with {ndim} dimensions")
    return a % nd


# The QTensor class, registered by qfast.tensor.qtensor when it is defined (that module uses
# these rules, so this one does not import it; before it is imported no QTensor can exist).
_QTENSOR_TYPES: tuple[type, ...] = ()


def register_qtensor_type(cls: type) -> None:
    """Makes :func:`float_input` refuse instances of ``cls`` (qfast's QTensor)."""
    global _QTENSOR_TYPES
    _QTENSOR_TYPES = (*_QTENSOR_TYPES, cls)


def float_input(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array of one of ``FLOAT_DTYPES``, in native byte order and aligned (a
    copy only where one of those needs it; strides are kept).

    A NumPy array must already be float; other array-likes of numbers (a list of ints, a
    Python scalar) are converted to float32. A QTensor is refused (dequantize it first).
    """
    if isinstance(x, _QTENSOR_TYPES):
        raise TypeError(f"{name} is already a QTensor; dequantize it first")
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if not isinstance(x, np.ndarray) and arr.dtype.kind in "iub":
        arr = arr.astype(np.float32)
    if arr.dtype.name not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a float array (float32, float64, float16 or bfloat16), got "
            f"{arr.dtype}; convert it first, e.g. with .astype(np.float32)"
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not arr.flags.aligned:
        arr = arr.copy()
    return arr


def float32_input(x: Any, name: str) -> np.ndarray:
    """:func:`float_input`, as a C-contiguous float32 array."""
    return np.asarray(float_input(x, name), dtype=np.float32, order="C")  # keeps 0-d


def check_finite(a: np.ndarray, name: str) -> None:
    """A ValueError naming the first NaN/Inf of ``a``, if there is one."""
    finite = np.isfinite(a)
    if not finite.all():
        at = np.unravel_index(int(np.argmin(finite.reshape(-1))), a.shape)
        raise ValueError(
            f"{name} contains {a[at]} at index {tuple(int(i) for i in at)}; "
            "quantization needs finite values (replace or mask them first, e.g. np.nan_to_num)"
        )
