"""qfast: fast INT8/INT4 quantization for NumPy.

SIMD kernels in Rust (AVX-512 VNNI, AVX2, NEON, chosen at run time) under a small NumPy API.
"""

from __future__ import annotations

from . import gguf
from ._qfast import QfastError, __version__, cpu_info, get_num_threads, set_num_threads
from .algorithms.awq import AWQResult, awq
from .algorithms.gptq import gptq
from .algorithms.gptq_gguf import gptq_gguf
from .algorithms.hqq import hqq
from .algorithms.rtn import rtn
from .calibration.hessian import Hessian
from .formats.safetensors import load, save
from .model.checkpoint import load_model
from .model.evaluate import Evaluation, evaluate
from .model.imatrix import ImportanceMatrix, importance_matrix, load_importance_matrix
from .model.quantize import QuantizeReport, quantize_model
from .model.recipe import Recipe
from .tensor.linear import linear, matmul_int8
from .tensor.qtensor import QTensor
from .tensor.quantize import dequantize, pack, pack_int4, quantize, unpack, unpack_int4

__all__ = [
    "AWQResult",
    "Evaluation",
    "Hessian",
    "ImportanceMatrix",
    "QTensor",
    "QfastError",
    "QuantizeReport",
    "Recipe",
    "__version__",
    "awq",
    "cpu_info",
    "dequantize",
    "evaluate",
    "get_num_threads",
    "gguf",
    "gptq",
    "gptq_gguf",
    "hqq",
    "importance_matrix",
    "linear",
    "load",
    "load_importance_matrix",
    "load_model",
    "matmul_int8",
    "pack",
    "pack_int4",
    "quantize",
    "quantize_model",
    "rtn",
    "save",
    "set_num_threads",
    "unpack",
    "unpack_int4",
]
