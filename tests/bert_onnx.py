"""An ONNX graph of a BERT encoder from standard ops, the reference for qfast.models.Bert.

Built with ``onnx.helper`` straight from a checkpoint's tensors and ``config.json`` (it shares no
code with ``qfast.models``), and run by ONNX Runtime with graph optimisations off, so that each
node is the textbook op: Gather, Slice, Add, LayerNormalization (opset 17), Transpose, MatMul,
Reshape, Div, Softmax, Erf, Mul. Padding is masked the way transformers does it: an additive
bias of (1 - mask) * float32.min on the attention scores (qfast.models uses -inf instead).

``graph_inputs`` turns chosen checkpoint tensors into graph inputs instead of initializers, so
one session can run the model with replaced (e.g. quantized) weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # LayerNormalization


class _Builder:
    def __init__(self, tensors: Mapping[str, np.ndarray], graph_inputs: Iterable[str]) -> None:
        self.tensors = tensors
        self.graph_inputs = set(graph_inputs)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.count = 0

    def weight(self, name: str) -> str:
        """A checkpoint tensor, as an initializer or (if asked for) a graph input."""
        if name in self.graph_inputs:
            if all(i.name != name for i in self.inputs):
                shape = list(self.tensors[name].shape)
                self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        elif name not in self.initializers:
            arr = np.asarray(self.tensors[name], dtype=np.float32)
            self.initializers[name] = numpy_helper.from_array(arr, name)
        return name

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        name = f"const_{len(self.initializers)}"
        self.initializers[name] = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        self.count += 1
        out = out or f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def linear(self, x: str, prefix: str) -> str:
        """x @ W.T + b, W stored [out, in] as in the checkpoint."""
        wt = self.op("Transpose", [self.weight(prefix + ".weight")], perm=[1, 0])
        return self.op("Add", [self.op("MatMul", [x, wt]), self.weight(prefix + ".bias")])

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.weight(prefix + ".weight"), self.weight(prefix + ".bias")],
            axis=-1,
            epsilon=eps,
        )

    def gelu(self, x: str) -> str:
        """0.5 x (1 + erf(x / sqrt 2))."""
        erf = self.op("Erf", [self.op("Div", [x, self.const(np.sqrt(2.0))])])
        return self.op(
            "Mul", [self.op("Mul", [x, self.const(0.5)]), self.op("Add", [erf, self.const(1.0)])]
        )


def linear_input_name(linear: str) -> str:
    """The graph value that is the input of a linear layer (an extra graph output)."""
    return f"input_of:{linear}"


def build_bert(
    tensors: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    graph_inputs: Iterable[str] = (),
) -> onnx.ModelProto:
    """The BERT encoder as an ONNX model.

    Args:
        tensors: checkpoint tensors by name (``embeddings.*``, ``encoder.layer.N.*``).
        config: ``config.json``.
        graph_inputs: checkpoint tensor names to make graph inputs instead of initializers.

    Returns:
        A model with inputs ``input_ids``, ``attention_mask`` (int64 [batch, seq]) and the
        ``graph_inputs``; outputs ``last_hidden_state`` [batch, seq, hidden] and, for every
        linear layer ``L``, ``linear_input_name(L)`` [batch, seq, in].
    """
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    size = hidden // heads
    eps = float(config["layer_norm_eps"])
    assert config["hidden_act"] == "gelu"
    b = _Builder(tensors, graph_inputs)
    linear_inputs: list[onnx.ValueInfoProto] = []

    def capture(x: str, linear: str) -> str:
        out = b.op("Identity", [x], out=linear_input_name(linear))
        width = tensors[linear + ".weight"].shape[1]
        linear_inputs.append(
            helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "seq", width])
        )
        return out

    # embeddings: word[ids] + position[:seq] + token_type[0], LayerNorm
    seq = b.op(
        "Slice", [b.op("Shape", ["input_ids"]), b.const([1], np.int64), b.const([2], np.int64)]
    )
    pos = b.op(
        "Slice",
        [
            b.weight("embeddings.position_embeddings.weight"),
            b.const([0], np.int64),
            seq,
            b.const([0], np.int64),
        ],
    )
    word = b.op("Gather", [b.weight("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    ttype = b.op(
        "Gather",
        [b.weight("embeddings.token_type_embeddings.weight"), b.const(0, np.int64)],
        axis=0,
    )
    h = b.layer_norm(b.op("Add", [b.op("Add", [word, pos]), ttype]), "embeddings.LayerNorm", eps)

    # attention bias [batch, 1, 1, seq]: 0 on real tokens, float32.min on padding
    maskf = b.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inv = b.op("Sub", [b.const(1.0), maskf])
    bias = b.op("Mul", [inv, b.const(np.finfo(np.float32).min)])
    bias = b.op("Unsqueeze", [bias, b.const([1, 2], np.int64)])
    split_shape = b.const([0, 0, heads, size], np.int64)
    merge_shape = b.const([0, 0, hidden], np.int64)

    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        x = capture(h, p + "attention.self.query")
        capture(h, p + "attention.self.key")
        capture(h, p + "attention.self.value")
        q = b.op(
            "Transpose",
            [b.op("Reshape", [b.linear(x, p + "attention.self.query"), split_shape])],
            perm=[0, 2, 1, 3],
        )
        k = b.op(
            "Transpose",
            [b.op("Reshape", [b.linear(x, p + "attention.self.key"), split_shape])],
            perm=[0, 2, 3, 1],
        )
        v = b.op(
            "Transpose",
            [b.op("Reshape", [b.linear(x, p + "attention.self.value"), split_shape])],
            perm=[0, 2, 1, 3],
        )
        scores = b.op("Add", [b.op("Div", [b.op("MatMul", [q, k]), b.const(np.sqrt(size))]), bias])
        ctx = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
        ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        attn = b.linear(capture(ctx, p + "attention.output.dense"), p + "attention.output.dense")
        a = b.layer_norm(b.op("Add", [attn, h]), p + "attention.output.LayerNorm", eps)
        inter = b.gelu(b.linear(capture(a, p + "intermediate.dense"), p + "intermediate.dense"))
        out = b.linear(capture(inter, p + "output.dense"), p + "output.dense")
        h = b.layer_norm(b.op("Add", [out, a]), p + "output.LayerNorm", eps)
    b.op("Identity", [h], out="last_hidden_state")

    ids = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask")
    ]
    shape = ["batch", "seq", hidden]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, shape)]
    outputs += linear_inputs
    graph = helper.make_graph(
        b.nodes, "bert", ids + b.inputs, outputs, list(b.initializers.values())
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what every onnxruntime >= 1.14 reads
    onnx.checker.check_model(model)
    return model


def session(model: onnx.ModelProto) -> Any:
    """An ONNX Runtime session on the CPU with graph optimisations off (no op fusion, so the
    reference computes what the graph says) and at most 2 threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
