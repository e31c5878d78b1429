"""The compiled kernels (qfast._qfast). Use the functions in `qfast` instead."""

from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "PackedLinear",
    "QfastError",
    "__version__",
    "awq_clip_search",
    "awq_pseudo_quantize",
    "awq_quantize",
    "cpu_info",
    "dequantize",
    "get_num_threads",
    "gguf_can_quantize_rows",
    "gguf_dequantize",
    "gguf_dot_q4_0_q8_0",
    "gguf_quantize",
    "gguf_quantize_rows",
    "gguf_type_info",
    "gptq_block",
    "gptq_find_params",
    "hqq_codes",
    "hqq_error",
    "hqq_init",
    "hqq_step",
    "matmul_int8",
    "matmul_int8_batched",
    "pack",
    "pack_linear",
    "peak_gmacs",
    "quantize",
    "set_num_threads",
    "unpack",
]

__version__: str

class QfastError(Exception):
    """qfast could not run the operation (not an argument error)."""

def quantize(
    x: npt.NDArray[Any],
    dtype: str,
    bits: int,
    signed: bool,
    axis: int | None = None,
    group_size: int | None = None,
    scale: npt.NDArray[np.float32] | None = None,
    zero_point: npt.NDArray[np.int32] | None = None,
    scale_dtype: str = "float32",
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int32] | None]: ...
def dequantize(
    codes: npt.NDArray[np.uint8],
    shape: list[int],
    bits: int,
    signed: bool,
    axis: int | None,
    group_size: int | None,
    scale: npt.NDArray[np.float32],
    zero_point: npt.NDArray[np.float32] | None,
    g_idx: npt.NDArray[np.int32] | None,
    dtype: str,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]: ...
def hqq_init(
    w: npt.NDArray[np.float32], shape: list[int], group_size: int, bits: int, round_zero: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def hqq_step(
    w: npt.NDArray[np.float32],
    group_size: int,
    bits: int,
    scale: npt.NDArray[np.float32],
    zero: npt.NDArray[np.float32],
    beta: float,
    lp_norm: float,
) -> tuple[npt.NDArray[np.float32], float]: ...
def hqq_codes(
    w: npt.NDArray[np.float32],
    group_size: int,
    bits: int,
    scale: npt.NDArray[np.float32],
    zero: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.uint8], float]: ...
def hqq_error(
    w: npt.NDArray[np.float32],
    group_size: int,
    bits: int,
    scale: npt.NDArray[np.float32],
    zero: npt.NDArray[np.float32],
) -> float: ...
def awq_pseudo_quantize(
    w: npt.NDArray[np.float32],
    group_size: int,
    bits: int,
    symmetric: bool,
    scales: npt.NDArray[np.float32] | None,
    out: npt.NDArray[np.float32],
) -> None: ...
def awq_quantize(
    w: npt.NDArray[np.float32], group_size: int, bits: int, symmetric: bool
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int32]]: ...
def awq_clip_search(
    w: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    group_size: int,
    bits: int,
    symmetric: bool,
    n_grid: int,
    n_shrink: int,
) -> npt.NDArray[np.float32]: ...
def pack(codes: npt.NDArray[np.uint8], n: int, bits: int) -> npt.NDArray[np.uint8]: ...
def unpack(
    packed: npt.NDArray[np.uint8], line_bytes: int, n: int, bits: int, signed: bool
) -> npt.NDArray[np.uint8]: ...
def cpu_info() -> dict[str, Any]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def matmul_int8(a: npt.NDArray[Any], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]: ...
def matmul_int8_batched(
    a: npt.NDArray[Any],
    b: npt.NDArray[np.int8],
    ia: npt.NDArray[np.int64],
    ib: npt.NDArray[np.int64],
) -> npt.NDArray[np.int32]: ...
def gguf_type_info(name: str) -> tuple[str, int, int, int, bool]: ...
def gguf_quantize(x: npt.NDArray[np.float32], name: str) -> npt.NDArray[np.uint8]: ...
def gguf_quantize_rows(
    x: npt.NDArray[np.float32],
    n_per_row: int,
    name: str,
    imatrix: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.uint8]: ...
def gguf_can_quantize_rows(name: str, weighted: bool) -> bool: ...
def gguf_dequantize(blocks: npt.NDArray[np.uint8], name: str) -> npt.NDArray[np.float32]: ...
def gguf_dot_q4_0_q8_0(
    w: npt.NDArray[np.uint8], x: npt.NDArray[np.uint8], rows: int
) -> npt.NDArray[np.float32]: ...
def gptq_find_params(
    x: npt.NDArray[np.float32],
    bits: int,
    symmetric: bool,
    mse: tuple[float, int, float] | None = None,
    scale_dtype: str = "float32",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def gptq_block(
    w: npt.NDArray[np.float32],
    hinv: npt.NDArray[np.float32],
    i1: int,
    i2: int,
    bits: int,
    symmetric: bool,
    mse: tuple[float, int, float] | None,
    codes: npt.NDArray[np.uint8],
    err: npt.NDArray[np.float32],
    scale: npt.NDArray[np.float32],
    zero: npt.NDArray[np.float32],
    group_size: int | None,
    static_groups: bool,
    col_group: npt.NDArray[np.uint32],
    scale_dtype: str = "float32",
) -> float: ...

@final
class PackedLinear:
    """A quantized weight packed for `linear`'s kernels (built by `pack_linear`)."""

    @property
    def in_features(self) -> int: ...
    @property
    def out_features(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def forward(
        self,
        x: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32] | None,
        compute: str,
    ) -> npt.NDArray[np.float32]: ...

def pack_linear(
    codes: npt.NDArray[np.uint8],
    k: int,
    bits: int,
    signed: bool,
    scale: npt.NDArray[np.float32],
    zero_point: npt.NDArray[np.float32] | None,
    group_size: int | None,
    g_idx: npt.NDArray[np.int32] | None,
) -> PackedLinear: ...
def peak_gmacs(mix: str = "int8") -> float | None: ...
