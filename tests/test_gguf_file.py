"""qfast's GGUF files (``qfast.formats.gguf.file``: load / save) against gguf-py's own reader:
a real file (SmolLM2-135M's Q4_1 GGUF) loads with the metadata and tensors GGUFReader sees,
writes back unchanged, and new files (quantized with qfast.gguf) read back with the types,
shapes, bytes and metadata they were given."""

from __future__ import annotations

import filecmp
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qfast.gguf as qg
from qfast.formats.gguf import file as gguf_file
from qfast.formats.gguf.file import REQUIRED_KEYS, GGUFFile, GGUFTensor, load, save

gguf = pytest.importorskip("gguf")
V = gguf.GGUFValueType
T = gguf.GGMLQuantizationType


def reader_metadata(reader: Any) -> dict[str, tuple[Any, Any]]:
    """key -> (value type, value) of every metadata field, decoded from GGUFReader's raw parts
    (not with ``field.contents()``, which load uses): a scalar's type, or (ARRAY, element type)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        items = [field.parts[i] for i in field.data]
        if field.types[-1] == V.STRING:
            values = [bytes(p).decode("utf-8") for p in items]
        else:
            values = [p.tolist()[0] for p in items]
        if field.types[0] == V.ARRAY:
            out[key] = ((V.ARRAY, V(int(field.parts[3][0]))), values)
        else:
            (value,) = values
            out[key] = (field.types[0], value)
    return out


def loaded_metadata(f: GGUFFile) -> dict[str, tuple[Any, Any]]:
    return {key: (f.value_types[key], value) for key, value in f.metadata.items()}


def logical_shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def raw_bytes(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8)


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    from qfast import assets

    return Path(assets.smollm2_gguf())


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_path: Path) -> Any:
    return gguf.GGUFReader(smollm2_path)


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> GGUFFile:
    return load(smollm2_path)


@pytest.fixture(scope="module")
def round_trip(smollm2: GGUFFile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rt") / "rt.gguf"
    save(path, smollm2)
    return path


# --- loading SmolLM2 ---------------------------------------------------------------------------


def test_load_metadata(smollm2: GGUFFile, smollm2_reader: Any) -> None:
    want = reader_metadata(smollm2_reader)
    assert list(smollm2.metadata) == list(want)  # every key, in file order, no header fields
    assert loaded_metadata(smollm2) == want
    assert smollm2.architecture == "llama"
    assert smollm2.alignment == smollm2_reader.alignment == 32
    assert smollm2.metadata["llama.block_count"] == 30
    assert smollm2.value_types["llama.block_count"] == V.UINT32
    assert smollm2.value_types["tokenizer.ggml.token_type"] == (V.ARRAY, V.INT32)
    tokens = smollm2.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == 49152 and tokens[1] == "<|im_start|>"
    assert isinstance(smollm2.metadata["tokenizer.ggml.add_bos_token"], bool)


def test_load_tensors(smollm2: GGUFFile, smollm2_reader: Any) -> None:
    assert list(smollm2.tensors) == [t.name for t in smollm2_reader.tensors]
    for rt in smollm2_reader.tensors:
        t = smollm2.tensors[rt.name]
        assert isinstance(t, GGUFTensor) and t.name == rt.name
        assert t.type == rt.tensor_type.name
        assert t.shape == logical_shape(rt)
        assert t.data.dtype == rt.data.dtype and t.data.shape == rt.data.shape
        assert isinstance(t.data, np.memmap)  # a view of the file, not a copy
        assert t.nbytes == rt.n_bytes
        assert np.array_equal(raw_bytes(t.data), raw_bytes(rt.data))
    types = {t.type for t in smollm2.tensors.values()}
    assert types == {"Q4_1", "Q8_0", "F32"}


def test_dequantize_matches_gguf_py(smollm2: GGUFFile, smollm2_reader: Any) -> None:
    for rt in smollm2_reader.tensors:
        t = smollm2.tensors[rt.name]
        want = gguf.quants.dequantize(rt.data, rt.tensor_type).astype(np.float32)
        assert_bits_equal(t.dequantize(), want.reshape(t.shape))


def test_reprs(smollm2: GGUFFile) -> None:
    assert repr(smollm2.tensors["blk.0.attn_q.weight"]) == (
        "GGUFTensor('blk.0.attn_q.weight', Q4_1, shape=(576, 576), 207,360 bytes)"
    )
    text = repr(smollm2)
    assert "architecture='llama'" in text and "272 tensors" in text and "33 metadata keys" in text


# --- writing it back ---------------------------------------------------------------------------


def test_round_trip_reads_the_same(
    round_trip: Path, smollm2_path: Path, smollm2_reader: Any
) -> None:
    new = gguf.GGUFReader(round_trip)
    assert reader_metadata(new) == reader_metadata(smollm2_reader)
    assert list(new.fields) == list(smollm2_reader.fields)
    assert new.alignment == smollm2_reader.alignment
    assert len(new.tensors) == len(smollm2_reader.tensors)
    for a, b in zip(new.tensors, smollm2_reader.tensors):
        assert (a.name, a.tensor_type) == (b.name, b.tensor_type)
        assert logical_shape(a) == logical_shape(b)
        assert np.array_equal(raw_bytes(a.data), raw_bytes(b.data))
        assert a.data_offset % new.alignment == 0
    # gguf-py wrote SmolLM2's file: writing it back gives it byte for byte.
    assert filecmp.cmp(round_trip, smollm2_path, shallow=False)


def test_round_trip_loads_the_same(round_trip: Path, smollm2: GGUFFile) -> None:
    again = load(round_trip)
    assert loaded_metadata(again) == loaded_metadata(smollm2)
    assert again.alignment == smollm2.alignment
    assert [(t.name, t.type, t.shape) for t in again.tensors.values()] == [
        (t.name, t.type, t.shape) for t in smollm2.tensors.values()
    ]


# --- writing new files -------------------------------------------------------------------------

VOCAB, DIM = 64, 128


def tiny_metadata() -> dict[str, Any]:
    """A consistent one-block Llama with a 64-token BPE vocabulary."""
    return {
        "general.architecture": "llama",
        "general.name": "tiny",
        "llama.context_length": 256,
        "llama.embedding_length": DIM,
        "llama.block_count": 1,
        "llama.feed_forward_length": 256,
        "llama.rope.dimension_count": 32,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": 10000.0,
        "general.file_type": 2,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(VOCAB)],
        "tokenizer.ggml.token_type": [3] + [1] * (VOCAB - 1),
        "tokenizer.ggml.merges": ["t 1", "t 2"],
        "tokenizer.ggml.scores": [float(-i) for i in range(VOCAB)],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.add_bos_token": True,
        "custom.big": 1 << 40,
        "custom.negative": -3,
        "custom.empty_string": "",
    }


# The types save infers for tiny_metadata() (general.architecture: GGUFWriter's STRING).
TINY_TYPES = {
    "general.architecture": V.STRING,
    "general.name": V.STRING,
    "llama.context_length": V.UINT32,
    "llama.embedding_length": V.UINT32,
    "llama.block_count": V.UINT32,
    "llama.feed_forward_length": V.UINT32,
    "llama.rope.dimension_count": V.UINT32,
    "llama.attention.head_count": V.UINT32,
    "llama.attention.head_count_kv": V.UINT32,
    "llama.attention.layer_norm_rms_epsilon": V.FLOAT32,
    "llama.rope.freq_base": V.FLOAT32,
    "general.file_type": V.UINT32,
    "tokenizer.ggml.model": V.STRING,
    "tokenizer.ggml.tokens": (V.ARRAY, V.STRING),
    "tokenizer.ggml.token_type": (V.ARRAY, V.INT32),
    "tokenizer.ggml.merges": (V.ARRAY, V.STRING),
    "tokenizer.ggml.scores": (V.ARRAY, V.FLOAT32),
    "tokenizer.ggml.bos_token_id": V.UINT32,
    "tokenizer.ggml.add_bos_token": V.BOOL,
    "custom.big": V.INT64,
    "custom.negative": V.INT32,
    "custom.empty_string": V.STRING,
}


def tiny_tensors(rng: np.random.Generator) -> dict[str, Any]:
    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    return {
        "token_embd.weight": (qg.quantize(e := w(VOCAB, DIM), "Q8_0"), "Q8_0", e.shape),
        "blk.0.attn_norm.weight": w(DIM),  # F32
        "blk.0.attn_q.weight": (qg.quantize(q := w(DIM, DIM), "Q4_0"), "Q4_0", q.shape),
        "blk.0.attn_k.weight": (qg.quantize(k := w(64, DIM), T.Q5_1), T.Q5_1, k.shape),
        "blk.0.ffn_up.weight": (qg.quantize(u := w(256, DIM), "BF16"), "BF16", u.shape),
        "blk.0.ffn_down.weight": (qg.quantize(d := w(DIM, 256), "F16"), "F16", d.shape),
        "blk.0.ffn_gate.weight": w(256, DIM).astype(np.float16),  # F16
        "blk.0.stacked": (qg.quantize(s := w(2, 3, 4, 32), "Q4_1"), "q4_1", s.shape),  # 4 axes
    }


def expected(tensor: Any) -> tuple[str, tuple[int, ...], np.ndarray]:
    """(type name, logical shape, raw data) that save must write for a tensor argument."""
    if isinstance(tensor, tuple):
        data, t, shape = tensor
        return (t if isinstance(t, str) else t.name).upper(), shape, data
    return ("F16" if tensor.dtype == np.float16 else "F32"), tensor.shape, tensor


def test_new_file(tmp_path: Path) -> None:
    tensors = tiny_tensors(np.random.default_rng(0))
    path = tmp_path / "tiny.gguf"
    save(path, tensors, tiny_metadata())

    reader = gguf.GGUFReader(path)
    want_meta = {k: (TINY_TYPES[k], v) for k, v in tiny_metadata().items()}
    want_meta["llama.attention.layer_norm_rms_epsilon"] = (V.FLOAT32, float(np.float32(1e-5)))
    assert reader_metadata(reader) == want_meta
    assert reader.alignment == 32 and "general.alignment" not in reader.fields

    assert [t.name for t in reader.tensors] == list(tensors)
    for rt in reader.tensors:
        type_name, shape, data = expected(tensors[rt.name])
        assert rt.tensor_type.name == type_name
        assert logical_shape(rt) == shape
        assert np.array_equal(raw_bytes(rt.data), raw_bytes(data))
        assert rt.data_offset % 32 == 0
        want = qg.dequantize(data, type_name, shape)
        got = gguf.quants.dequantize(rt.data, rt.tensor_type).astype(np.float32)
        assert_bits_equal(got.reshape(shape), want)

    f = load(path)
    assert f.tensors["blk.0.attn_norm.weight"].data.dtype == np.float32
    assert np.array_equal(
        f.tensors["blk.0.attn_norm.weight"].dequantize(), tensors["blk.0.attn_norm.weight"]
    )
    assert f.tensors["blk.0.stacked"].shape == (2, 3, 4, 32)
    assert loaded_metadata(f) == reader_metadata(reader)


def test_forced_value_types(tmp_path: Path) -> None:
    meta = {
        **tiny_metadata(),
        "custom.u8": 200,
        "custom.f64": 0.1,
        "custom.i64": 5,
        "custom.u16_array": [1, 2, 65535],
        "custom.np_u64": np.array([1, 2**63], dtype=np.uint64),  # dtype decides
        "custom.np_f32": np.float32(0.5),
        "custom.bools": [True, False],
        "llama.context_length": 4096,
    }
    forced = {
        "custom.u8": V.UINT8,
        "custom.f64": V.FLOAT64,
        "custom.i64": V.INT64,
        "custom.u16_array": (V.ARRAY, V.UINT16),
        "llama.context_length": V.INT32,  # overrides the inferred UINT32
    }
    path = tmp_path / "types.gguf"
    save(path, {"x": np.zeros(4, np.float32)}, meta, value_types=forced)
    got = reader_metadata(gguf.GGUFReader(path))
    assert got["custom.u8"] == (V.UINT8, 200)
    assert got["custom.f64"] == (V.FLOAT64, 0.1)
    assert got["custom.i64"] == (V.INT64, 5)
    assert got["custom.u16_array"] == ((V.ARRAY, V.UINT16), [1, 2, 65535])
    assert got["custom.np_u64"] == ((V.ARRAY, V.UINT64), [1, 2**63])
    assert got["custom.np_f32"] == (V.FLOAT32, 0.5)
    assert got["custom.bools"] == ((V.ARRAY, V.BOOL), [True, False])
    assert got["llama.context_length"] == (V.INT32, 4096)
    # and load reports them in the form save takes back
    f = load(path)
    assert f.value_types["custom.u16_array"] == (V.ARRAY, V.UINT16)
    assert f.metadata["custom.u16_array"] == [1, 2, 65535]
    save(tmp_path / "again.gguf", f.tensors, f.metadata, value_types=f.value_types)
    assert reader_metadata(gguf.GGUFReader(tmp_path / "again.gguf")) == got


@pytest.mark.parametrize(
    ("key", "value", "vtype", "match"),
    [
        ("custom.u8", 256, V.UINT8, r"custom\.u8: 256 is not a valid UINT8"),
        ("custom.u32", -1, V.UINT32, r"custom\.u32: -1 is not a valid UINT32"),
        ("custom.f32", 1e39, V.FLOAT32, "not a valid FLOAT32"),
        ("custom.s", 3, V.STRING, "not a valid STRING"),
        ("custom.arr", [1, 300], (V.ARRAY, V.UINT8), r"custom\.arr\[1\]: 300 is not a valid UINT8"),
        ("custom.empty", [], (V.ARRAY, V.INT32), "cannot write an empty array"),
        ("custom.mixed", [1, "a"], None, "mixes"),
        ("custom.nested", [[1], [2]], None, "list"),
        ("custom.obj", object(), None, "GGUF stores str, int, float, bool"),
    ],
)
def test_bad_metadata_values(tmp_path: Path, key: str, value: Any, vtype: Any, match: str) -> None:
    path = tmp_path / "bad.gguf"
    forced = {} if vtype is None else {key: vtype}
    with pytest.raises((ValueError, TypeError), match=match):
        save(path, {"x": np.zeros(4, np.float32)}, {key: value}, value_types=forced, check=False)
    assert not path.exists()


def test_alignment(tmp_path: Path) -> None:
    tensors = {"a": np.ones(3, np.float32), "b": np.ones(5, np.float16)}
    path = tmp_path / "a64.gguf"
    save(path, tensors, tiny_metadata(), alignment=64)
    reader = gguf.GGUFReader(path)
    assert reader.alignment == 64
    assert reader_metadata(reader)["general.alignment"] == (V.UINT32, 64)
    assert all(t.data_offset % 64 == 0 for t in reader.tensors)
    f = load(path)
    assert f.alignment == 64
    save(tmp_path / "copy.gguf", f)  # keeps it
    assert gguf.GGUFReader(tmp_path / "copy.gguf").alignment == 64
    save(tmp_path / "a256.gguf", f, alignment=256)  # the argument wins
    assert gguf.GGUFReader(tmp_path / "a256.gguf").alignment == 256
    with pytest.raises(ValueError, match="power of two"):
        save(tmp_path / "bad.gguf", f, alignment=48)


def test_architecture_written_once(tmp_path: Path) -> None:
    meta = {k: v for k, v in tiny_metadata().items() if k != "general.architecture"}
    path = tmp_path / "arch.gguf"
    save(path, {"x": np.zeros(4, np.float32)}, meta, architecture="llama")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert int(reader.fields["GGUF.kv_count"].parts[0][0]) == len(meta) + 1
    f = load(path)
    assert f.architecture == "llama"
    save(tmp_path / "mistral.gguf", f, architecture="mistral")  # the argument wins
    assert load(tmp_path / "mistral.gguf").metadata["general.architecture"] == "mistral"


# --- REQUIRED_KEYS -----------------------------------------------------------------------------


def test_required_keys_are_in_smollm2(smollm2: GGUFFile) -> None:
    assert REQUIRED_KEYS["llama"][0] == "general.architecture"
    assert len(REQUIRED_KEYS["llama"]) >= 12
    missing = [k for k in REQUIRED_KEYS["llama"] if k not in smollm2.metadata]
    assert missing == []


@pytest.mark.parametrize(
    "drop", ["llama.block_count", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"]
)
def test_missing_required_key(tmp_path: Path, drop: str) -> None:
    meta = {k: v for k, v in tiny_metadata().items() if k != drop}
    path = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match=drop.replace(".", r"\.")):
        save(path, {"x": np.zeros(4, np.float32)}, meta)
    assert not path.exists()
    save(path, {"x": np.zeros(4, np.float32)}, meta, check=False)
    assert drop not in gguf.GGUFReader(path).fields


def test_required_keys_lists_every_missing_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the metadata keys") as exc:
        save(tmp_path / "m.gguf", {}, {"llama.block_count": 1}, architecture="llama")
    for key in REQUIRED_KEYS["llama"]:
        if key not in ("general.architecture", "llama.block_count"):
            assert key in str(exc.value)


def test_other_architectures_need_only_general_architecture(tmp_path: Path) -> None:
    save(tmp_path / "m.gguf", {}, {"mamba.block_count": 2}, architecture="mamba")
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["mamba.block_count"].types == [V.UINT32]
    with pytest.raises(ValueError, match=r"general\.architecture"):
        save(tmp_path / "none.gguf", {}, {"x": 1})
    save(tmp_path / "none.gguf", {}, {"x": 1}, check=False)
    assert "general.architecture" not in gguf.GGUFReader(tmp_path / "none.gguf").fields


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        ((np.zeros((4, 17), np.uint8), "Q4_0", (4, 32)), r"'w'.*takes 72 bytes.*has 68"),
        ((np.zeros((4, 18), np.uint8), "Q4_0", (4, 30)), r"'w'.*blocks of 32 values"),
        ((np.zeros((4, 32), np.float32), "Q4_0", (4, 32)), r"'w'.*must be uint8"),
        ((np.zeros(8, np.float64), "F32", (16,)), r"'w'.*must be float32"),
        ((np.zeros(4, np.uint8), "Q9_9", (4,)), r"'w'.*unknown GGUF type 'Q9_9'"),
        ((np.zeros(4, np.float32), "F32", ()), r"'w'.*1 to 4 axes"),
        ((np.zeros(32, np.float32), "F32", (2, 2, 2, 2, 2)), r"'w'.*1 to 4 axes"),
        (np.zeros(4, np.int32), r"'w'.*expected a GGUFTensor"),
    ],
)
def test_bad_tensors(tmp_path: Path, tensor: Any, match: str) -> None:
    path = tmp_path / "bad.gguf"
    with pytest.raises((ValueError, TypeError), match=match):
        save(path, {"w": tensor}, check=False)
    assert not path.exists()


@pytest.mark.parametrize("name", ["", "x" * 64])
def test_bad_tensor_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="GGUF names are non-empty"):
        save(tmp_path / "bad.gguf", {name: np.zeros(4, np.float32)}, check=False)


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(1).bytes(1000))
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load(path)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load(tmp_path / "empty.gguf")


def test_truncated(tmp_path: Path, smollm2_path: Path) -> None:
    path = tmp_path / "half.gguf"
    with open(smollm2_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(os.path.getsize(smollm2_path) // 2))
    with pytest.raises(ValueError, match="truncated or corrupt") as exc:
        load(path)
    assert str(path) in str(exc.value)
    # cut inside the metadata, too
    path.write_bytes(smollm2_path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.gguf"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.gguf"):
        load(path)
    with pytest.raises(FileNotFoundError, match="no_dir"):
        save(tmp_path / "no_dir" / "x.gguf", {}, check=False)


def test_dequantize_unsupported_type(tmp_path: Path) -> None:
    path = tmp_path / "i8.gguf"
    save(path, {"ids": (np.arange(8, dtype=np.int8), "I8", (8,))}, check=False)
    t = load(path).tensors["ids"]
    assert t.type == "I8" and t.data.dtype == np.int8
    with pytest.raises(ValueError, match="I8"):
        t.dequantize()


def test_without_gguf_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now fails
    with pytest.raises(ImportError, match="pip install gguf"):
        load(tmp_path / "x.gguf")
    with pytest.raises(ImportError, match="pip install gguf"):
        save(tmp_path / "x.gguf", {"x": np.zeros(4, np.float32)}, architecture="x")


# --- atomic writes -----------------------------------------------------------------------------


def test_failed_validation_leaves_path_untouched(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"previous contents")
    tensors = {
        "a": np.ones(32, np.float32),
        "b": (qg.quantize(np.ones((2, 32), np.float32), "Q8_0"), "Q8_0", (2, 32)),
        "c": (np.zeros(10, np.uint8), "Q8_0", (32,)),  # 34 bytes expected
    }
    with pytest.raises(ValueError, match="'c'"):
        save(path, tensors, check=False)
    assert path.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["model.gguf"]


def test_failure_while_writing_leaves_path_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"previous model")

    def fail_midway(f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"\0" * 1000)  # some tensor data, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(gguf_file, "_write_tensor", fail_midway)
    with pytest.raises(OSError, match="No space left"):
        save(path, {"a": np.ones(1000, np.float32)}, tiny_metadata())
    assert path.read_bytes() == b"previous model"
    assert sorted(os.listdir(tmp_path)) == ["model.gguf"]
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path / "new.gguf", {"a": np.ones(1000, np.float32)}, tiny_metadata())
    assert sorted(os.listdir(tmp_path)) == ["model.gguf"]


def test_overwrite_a_loaded_file(tmp_path: Path) -> None:
    """Saving over the file a GGUFFile maps: the rename leaves the old mapping intact."""
    path = tmp_path / "m.gguf"
    x = np.arange(64, dtype=np.float32)
    save(path, {"x": x}, tiny_metadata())
    f = load(path)
    save(path, f.tensors, {**f.metadata, "general.name": "renamed"}, value_types=f.value_types)
    assert np.array_equal(f.tensors["x"].dequantize(), x)
    g = load(path)
    assert g.metadata["general.name"] == "renamed"
    assert np.array_equal(g.tensors["x"].dequantize(), x)


# --- to_qtensor / from_qtensor: byte for byte --------------------------------------------------

BLOCK_TYPES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}


def special_blocks(name: str, rng: np.random.Generator) -> np.ndarray:
    """Random blocks (finite d and m) with the edge cases first: all zeros, d = -0, the
    smallest subnormal d, and for Q4_1 d = 0 with a subnormal m, d = 0 with m = -0 and random
    codes, d = 1 with codes 0, a subnormal d with the largest m, a subnormal m."""
    ts = BLOCK_TYPES[name]
    blk = rng.integers(0, 256, (64 * 8, ts), dtype=np.uint8)
    for k in (0, 2) if name == "Q4_1" else (0,):
        inf_nan = (blk[:, k + 1] & 0x7C) == 0x7C
        blk[inf_nan, k + 1] &= 0x83
    h = np.float16
    blk[0] = 0
    blk[1, :2] = np.array([-0.0], h).view(np.uint8)
    blk[2, :2] = np.array([2.0**-24], h).view(np.uint8)
    if name == "Q4_1":
        blk[3, :4] = np.array([0.0, 2.0**-24], h).view(np.uint8)
        blk[3, 4:] = 0
        blk[4, :4] = np.array([0.0, -0.0], h).view(np.uint8)
        blk[5, :4] = np.array([1.0, -3.0], h).view(np.uint8)
        blk[5, 4:] = 0
        blk[6, :4] = np.array([2.0**-24, 65504.0], h).view(np.uint8)
        blk[7, :4] = np.array([0.5, -(2.0**-20)], h).view(np.uint8)
    return blk.reshape(64, 8 * ts)


@pytest.mark.parametrize("name", list(BLOCK_TYPES))
def test_qtensor_round_trip_gguf_py_bytes(name: str) -> None:
    """gguf-py's own blocks (all-zero and constant rows, so d = 0 blocks, tiny values, so
    subnormal d) come back from to_qtensor / from_qtensor byte for byte."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((12, 256)).astype(np.float32)
    x[0] = 0  # d = 0, m = 0
    x[1] = 5  # d = 0, m = 5
    x[2, :64] = -3
    x[3] = rng.standard_normal(256).astype(np.float32) * 1e-6  # subnormal float16 d
    x[4, :32] = 1e-7
    blocks = gguf.quants.quantize(x, T[name])
    q = qg.to_qtensor(blocks, name)
    data, t = qg.from_qtensor(q)
    assert t == name
    assert data.dtype == np.uint8 and data.shape == blocks.shape
    assert data.tobytes() == blocks.tobytes()
    assert "gguf_blocks" not in q.meta  # the format's own blocks need nothing kept
    want = gguf.quants.dequantize(blocks, T[name])
    if name == "Q4_1":
        # d * q + m as scale * (q - zero): float32 rounding, relative to the values' size
        np.testing.assert_allclose(q.dequantize(), want, rtol=0, atol=1e-6 * np.abs(want).max())
        got = q.dequantize()
        assert np.array_equal(got[:2], want[:2])  # d = 0 blocks: m exactly
        assert np.array_equal(got[2, :64], want[2, :64])
    else:
        assert np.array_equal(q.dequantize(), want)


@pytest.mark.parametrize("name", list(BLOCK_TYPES))
def test_qtensor_round_trip_any_bytes(name: str) -> None:
    """Any finite blocks, negative zeros and subnormals included, come back byte for byte,
    also after the QTensor went through to_dict / from_dict."""
    from qfast.tensor.qtensor import QTensor

    blocks = special_blocks(name, np.random.default_rng(5))
    q = qg.to_qtensor(blocks, name)
    data, _ = qg.from_qtensor(q)
    assert data.tobytes() == blocks.tobytes()
    q2 = QTensor.from_dict(q.to_dict(prefix="w."), prefix="w.")
    data2, _ = qg.from_qtensor(q2)
    assert data2.tobytes() == blocks.tobytes()
    if name == "Q4_1":  # only the blocks the grid cannot tell apart are kept
        kept = [i for i, _ in q.meta["gguf_blocks"]]
        assert kept == [1, 4, 5]
        with np.errstate(all="ignore"):
            got = q.dequantize().reshape(-1, 32)
        want = gguf.quants.dequantize(blocks, T[name]).reshape(-1, 32)
        for i in (0, 1, 3, 4, 5):  # d = 0 (and d = 1, codes 0) blocks: m exactly
            assert np.array_equal(got[i], want[i]), i
    else:
        assert "gguf_blocks" not in q.meta
        assert np.array_equal(q.dequantize(), gguf.quants.dequantize(blocks, T[name]))


def test_kept_blocks_not_used_for_a_changed_grid() -> None:
    """A kept block whose grid was changed since to_qtensor is written from the grid."""
    from qfast.tensor.qtensor import QTensor

    blocks = special_blocks("Q4_1", np.random.default_rng(5))
    q = qg.to_qtensor(blocks, "Q4_1")
    zero = np.array(q.zero_point, np.float32)
    zero.reshape(-1)[1] = -2.0  # block 1 (d = -0 kept): now m = 2 with scale 1, codes 0
    changed = QTensor(q.data, q.shape, 4, False, q.scale, zero, group_size=32, meta=q.meta)
    data, _ = qg.from_qtensor(changed)
    b = data.reshape(-1, 20)
    assert b[1, :4].view(np.float16).tolist() == [0.0, 2.0]
    assert not np.signbit(b[1, :2].view(np.float16)[0])
    assert np.array_equal(np.delete(b, 1, axis=0), np.delete(blocks.reshape(-1, 20), 1, axis=0))


# --- a file that shrinks under its memory map ---------------------------------------------------

_SHRINK = """
import os, sys
import numpy as np
import qfast
import qfast.gguf as qg
from qfast.formats.gguf.file import load, save

path, out = sys.argv[1], sys.argv[2]
f = load(path)
size = os.path.getsize(path)
os.truncate(path, size // 2)  # a download or a copy still in progress, or cut short
for name, t in f.tensors.items():
    try:
        t.dequantize()
        print("read", name)  # lies before the cut: fine
    except qfast.QfastError as e:
        print("refused", name, "|", e)
try:
    save(out, f)
    print("saved")
except qfast.QfastError as e:
    print("save refused |", e)
"""


def test_truncated_after_load(tmp_path: Path) -> None:
    """Truncating a loaded file, then dequantizing: a QfastError naming the file (not SIGBUS,
    which would kill the process: hence the subprocess), for the tensors past the cut; the
    tensors before it still read; save refuses without leaving a file."""
    import subprocess

    path, out = tmp_path / "m.gguf", tmp_path / "copy.gguf"
    tensors = {f"t{i}": np.full((4, 1024), i, np.float32) for i in range(4)}
    save(path, tensors, tiny_metadata())
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(qg.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    )
    res = subprocess.run(
        [sys.executable, "-c", _SHRINK, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, (res.returncode, res.stderr)  # -7: killed by SIGBUS
    lines = res.stdout.splitlines()
    assert "read t0" in lines
    refused = [line for line in lines if line.startswith("refused")]
    assert refused and "refused t3 |" in "\n".join(refused)
    assert (
        "shrank to" in refused[0]
        and str(path) in refused[0]
        and "load the file again" in (refused[0])
    )
    assert any(line.startswith("save refused |") for line in lines)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]


# --- qfast's own header code: GGUFWriter's bytes, GGUFReader's values, without either ---------


def _every_kind_of_metadata() -> tuple[dict[str, Any], dict[str, Any]]:
    """Metadata with every scalar type, an array of every element type, a vocabulary-sized
    string array (non-ASCII, empty and long strings among them) and a custom alignment; with the
    value type of each key."""
    vocab = [f"tok{i}" for i in range(50_000)] + ["", "▁héllo", "日本語", "x" * 300, "\n"]
    scalars = {
        V.UINT8: 255, V.INT8: -128, V.UINT16: 65535, V.INT16: -32768, V.UINT32: (1 << 32) - 1,
        V.INT32: -(1 << 31), V.FLOAT32: 0.1, V.UINT64: (1 << 64) - 1, V.INT64: -(1 << 63),
        V.FLOAT64: 1e300, V.BOOL: True, V.STRING: "ünïcode",
    }  # fmt: skip
    arrays = {
        V.UINT8: [0, 7, 255], V.INT8: [-128, 0, 127], V.UINT16: [0, 65535],
        V.INT16: [-32768, 32767], V.UINT32: [0, (1 << 32) - 1], V.INT32: [-(1 << 31), 5],
        V.FLOAT32: [0.1, -1e30, float("inf"), 0.0], V.UINT64: [(1 << 64) - 1, 0],
        V.INT64: [-(1 << 63), 1], V.FLOAT64: [0.1, -1e300], V.BOOL: [True, False, True],
        V.STRING: ["a", "", "ß"],
    }  # fmt: skip
    metadata: dict[str, Any] = {"general.architecture": "test", "general.alignment": 64}
    types: dict[str, Any] = {"general.alignment": V.UINT32}
    for t, value in scalars.items():
        metadata[f"s.{t.name.lower()}"], types[f"s.{t.name.lower()}"] = value, t
        metadata[f"a.{t.name.lower()}"] = arrays[t]
        types[f"a.{t.name.lower()}"] = (V.ARRAY, t)
    metadata["s.empty"], types["s.empty"] = "", V.STRING
    metadata["tokenizer.ggml.tokens"] = vocab
    types["tokenizer.ggml.tokens"] = (V.ARRAY, V.STRING)
    return metadata, types


def _every_kind_of_tensor() -> dict[str, tuple[np.ndarray, str, tuple[int, ...]]]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    return {
        "f32": (x[0, :40].copy(), "F32", (40,)),
        "f16": (x[:2, :48].astype(np.float16), "F16", (2, 48)),
        "q8": (qg.quantize(x[:, :64], "Q8_0"), "Q8_0", (3, 64)),
        "q4k": (qg.quantize(x, "Q4_K"), "Q4_K", (3, 256)),
        "ids": (np.arange(-5, 5, dtype=np.int8), "I8", (10,)),
    }


def _gguf_py_write(
    path: Path, metadata: dict[str, Any], types: dict[str, Any], tensors: dict[str, Any]
) -> None:
    """The file gguf-py's GGUFWriter writes: the oracle for qfast's bytes."""
    w = gguf.GGUFWriter(path, arch=metadata["general.architecture"])
    for key, value in metadata.items():
        if key == "general.alignment":
            w.add_custom_alignment(value)
        elif key != "general.architecture":
            t = types[key]
            vtype, sub = t if isinstance(t, tuple) else (t, None)
            w.add_key_value(key, value, vtype, sub_type=sub)
    for name, (data, qtype, shape) in tensors.items():
        block_size, type_size = gguf.GGML_QUANT_SIZES[T[qtype]]
        rows = raw_bytes(data).reshape(*shape[:-1], shape[-1] // block_size * type_size)
        w.add_tensor(name, rows, raw_dtype=T[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_written_bytes_are_gguf_writers(tmp_path: Path) -> None:
    """save and save_streamed write, byte for byte, the file GGUFWriter writes from the same
    metadata and tensors; load reads back what GGUFReader reads from it."""
    metadata, types = _every_kind_of_metadata()
    tensors = _every_kind_of_tensor()
    _gguf_py_write(tmp_path / "oracle.gguf", metadata, types, tensors)
    want = (tmp_path / "oracle.gguf").read_bytes()
    save(tmp_path / "saved.gguf", tensors, metadata, value_types=types, check=False)
    assert (tmp_path / "saved.gguf").read_bytes() == want
    specs = [(name, qtype, shape) for name, (_, qtype, shape) in tensors.items()]
    gguf_file.save_streamed(
        tmp_path / "streamed.gguf",
        metadata,
        specs,
        lambda name: tensors[name][0],
        value_types=types,
        check=False,
    )
    assert (tmp_path / "streamed.gguf").read_bytes() == want
    # and without an architecture, at the default alignment
    plain = {k: v for k, v in metadata.items() if k not in ("general.alignment", "a.float32")}
    plain["general.architecture"] = ""
    save(tmp_path / "plain.gguf", tensors, plain, value_types=types, check=False)
    w = gguf.GGUFWriter(tmp_path / "plain-oracle.gguf", arch="")
    for key, value in plain.items():
        if key != "general.architecture":
            t = types[key]
            vtype, sub = t if isinstance(t, tuple) else (t, None)
            w.add_key_value(key, value, vtype, sub_type=sub)
    for name, (data, qtype, shape) in tensors.items():
        block_size, type_size = gguf.GGML_QUANT_SIZES[T[qtype]]
        rows = raw_bytes(data).reshape(*shape[:-1], shape[-1] // block_size * type_size)
        w.add_tensor(name, rows, raw_dtype=T[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert (tmp_path / "plain.gguf").read_bytes() == (tmp_path / "plain-oracle.gguf").read_bytes()

    reader = gguf.GGUFReader(tmp_path / "oracle.gguf")
    f = load(tmp_path / "saved.gguf")
    assert loaded_metadata(f) == reader_metadata(reader)
    for key, field in reader.fields.items():  # the same Python types as contents() gives
        if not key.startswith("GGUF."):
            got, want_value = f.metadata[key], field.contents()
            assert got == want_value and type(got) is type(want_value), key
            if isinstance(got, list):
                assert [type(v) for v in got] == [type(v) for v in want_value], key
    assert f.alignment == reader.alignment == 64
    assert list(f.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        got_t = f.tensors[t.name]
        assert got_t.type == t.tensor_type.name and got_t.shape == logical_shape(t)
        assert type(got_t.data) is type(t.data) and got_t.data.dtype == t.data.dtype
        assert got_t.data.shape == t.data.shape and not got_t.data.flags.writeable
        assert np.array_equal(raw_bytes(got_t.data), raw_bytes(t.data))


def test_load_and_save_without_gguf_py_reader_or_writer(
    tmp_path: Path, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load, save and save_streamed parse and write the header themselves: GGUFReader makes a
    NumPy view per vocabulary string (seconds for a 49k-token model), GGUFWriter packs each."""
    want = reader_metadata(gguf.GGUFReader(smollm2_path))

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("gguf-py's reader or writer was used")

    monkeypatch.setattr(gguf, "GGUFReader", refused)
    monkeypatch.setattr(gguf, "GGUFWriter", refused)
    f = load(smollm2_path)
    assert loaded_metadata(f) == want
    save(tmp_path / "copy.gguf", f)
    assert filecmp.cmp(tmp_path / "copy.gguf", smollm2_path, shallow=False)
    specs = [(name, t.type, t.shape) for name, t in f.tensors.items()]
    gguf_file.save_streamed(
        tmp_path / "streamed.gguf",
        f.metadata,
        specs,
        lambda name: f.tensors[name].data,
        value_types=f.value_types,
    )
    assert filecmp.cmp(tmp_path / "streamed.gguf", smollm2_path, shallow=False)


@pytest.mark.parametrize(
    ("element", "bad", "match"),
    [
        (V.STRING, 7, "7 is not a valid STRING"),
        (V.UINT32, 1 << 32, "4294967296 is not a valid UINT32"),
        (V.INT8, True, "True is not a valid INT8"),
        (V.FLOAT32, 1e39, "1e+39 is not a valid FLOAT32"),
        (V.BOOL, 1, "1 is not a valid BOOL"),
    ],
)
def test_long_array_names_its_bad_element(
    tmp_path: Path, element: Any, bad: Any, match: str
) -> None:
    """One wrong element among 50,000: a ValueError naming it, nothing written."""
    good = {V.STRING: "a", V.UINT32: 3, V.INT8: -1, V.FLOAT32: 0.5, V.BOOL: False}[element]
    values = [good] * 50_000
    values[40_000] = bad
    path = tmp_path / "x.gguf"
    with pytest.raises(ValueError, match=rf"metadata k\[40000\]: {re.escape(match)}"):
        save(
            path,
            {},
            {"general.architecture": "t", "k": values},
            value_types={"k": (V.ARRAY, element)},
            check=False,
        )
    assert not path.exists()


def test_metadata_string_not_utf8(tmp_path: Path) -> None:
    """A metadata string, or one string of an array, that is not UTF-8: a ValueError naming
    the file and the key."""
    save(
        tmp_path / "ok.gguf",
        {},
        {"general.architecture": "test", "a.s": "xy", "a.list": ["ab", "cd"]},
        check=False,
    )
    raw = (tmp_path / "ok.gguf").read_bytes()
    for key, good in (("a.s", b"xy"), ("a.list", b"cd")):
        path = tmp_path / f"{key}.gguf"
        path.write_bytes(raw.replace(good, b"\xff\xfe"))
        with pytest.raises(ValueError, match=rf"metadata '{key}' holds a string that is not UTF-8"):
            load(path)


def test_streamed_tensor_names_unique(tmp_path: Path) -> None:
    specs = [("a", "F32", (4,)), ("a", "F32", (4,))]
    with pytest.raises(ValueError, match="'a' is listed twice"):
        gguf_file.save_streamed(
            tmp_path / "x.gguf",
            {"general.architecture": "test"},
            specs,
            lambda name: np.zeros(4, np.float32),
        )
    assert not (tmp_path / "x.gguf").exists()


# --- corrupt headers: every count, length and offset checked before anything reads it -----------
#
# The files are built here byte by byte (not with gguf-py or qfast), so each field's place is
# known. Loads run in a subprocess with a timeout: a file that makes the reader loop for hours
# fails the test instead of hanging pytest, and one that crashes the interpreter shows up as a
# missing result.


def _u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def _str(s: str) -> bytes:
    return _u64(len(s.encode())) + s.encode()


class _File:
    """A GGUF v3 file as labelled fields: ``at[label]`` is a field's byte offset."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.at: dict[str, int] = {}
        self.size = 0

    def put(self, raw: bytes, label: str | None = None) -> None:
        if label is not None:
            self.at[label] = self.size
        self.parts.append(raw)
        self.size += len(raw)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


_Q8_CODES = np.arange(-16, 16, dtype=np.int8)


def _corrupt_base(extra_kv: tuple[tuple[str, bytes], ...] = ()) -> _File:
    """A valid file: four metadata entries (STRING, INT32 array, STRING array, UINT32), an F32
    tensor "f" (8 values 0..7) and a Q8_0 tensor "q" (2 x 32: d = 0.5, codes -16..15)."""
    f = _File()
    f.put(b"GGUF")
    f.put(_u32(3), "version")
    f.put(_u64(2), "n_tensors")
    f.put(_u64(4 + len(extra_kv)), "n_kv")
    f.put(_u64(20), "key0_len")
    f.put(b"general.architecture")
    f.put(_u32(8), "key0_type")
    f.put(_u64(4), "str_len")
    f.put(b"test")
    f.put(_str("a.ints"))
    f.put(_u32(9), "ints_type")
    f.put(_u32(5), "ints_element")
    f.put(_u64(3), "ints_count")
    f.put(np.array([1, 2, 3], "<i4").tobytes())
    f.put(_str("a.strs"))
    f.put(_u32(9))
    f.put(_u32(8), "strs_element")
    f.put(_u64(2), "strs_count")
    f.put(_str("x"), "strs0_len")
    f.put(_str("yz"))
    f.put(_str("a.u32"), "key3_len")
    f.put(_u32(4), "key3_type")
    f.put(_u32(7))
    for key, entry in extra_kv:
        f.put(_str(key) + entry, f"kv:{key}")
    # tensor infos: "f" F32 (8,) at 0; "q" Q8_0 (2, 32) at 32 (GGUF lists axes innermost first)
    f.put(_str("f"), "t0_name_len")
    f.put(_u32(1), "t0_ndims")
    f.put(_u64(8), "t0_dim0")
    f.put(_u32(0), "t0_type")
    f.put(_u64(0), "t0_offset")
    f.put(_str("q"), "t1_name_len")
    f.put(_u32(2), "t1_ndims")
    f.put(_u64(32), "t1_dim0")
    f.put(_u64(2), "t1_dim1")
    f.put(_u32(8), "t1_type")
    f.put(_u64(32), "t1_offset")
    f.put(b"\0" * (-f.size % 32))
    f.at["data"] = f.size
    f.put(np.arange(8, dtype="<f4").tobytes())
    block = np.float16(0.5).tobytes() + _Q8_CODES.tobytes()
    f.put(block * 2, "q_data")
    f.put(b"\0" * (-f.size % 32))
    return f


def _patched(f: _File, label: str, raw: bytes) -> bytes:
    b = bytearray(f.bytes())
    b[f.at[label] : f.at[label] + len(raw)] = raw
    return bytes(b)


def _nested_array(depth: int) -> bytes:
    """An ARRAY value whose one element is an ARRAY, ``depth`` levels down to one INT32."""
    return _u32(9) + (_u32(9) + _u64(1)) * depth + _u32(5) + _u64(1) + _u32(7)


_LOAD_EACH = """
import json, sys, time
from pathlib import Path
import qfast.gguf as qg

for p in sorted(Path(sys.argv[1]).iterdir()):
    t0 = time.perf_counter()
    try:
        f = qg.load(p)
        values = {name: t.dequantize().tolist() for name, t in f.tensors.items()}
        out = {"outcome": "ok", "values": values}
    except Exception as e:
        out = {"outcome": type(e).__name__, "message": str(e)}
    out.update(file=p.name, s=time.perf_counter() - t0)
    print(json.dumps(out), flush=True)
"""


def _load_each(folder: Path, files: dict[str, bytes], timeout: float) -> dict[str, Any]:
    """``qg.load`` and dequantize on each file, in a subprocess: name -> {"outcome": "ok" or
    the exception's type, "message", "values", "s"}; a file with no result hung or crashed."""
    import json
    import subprocess

    folder.mkdir()
    for name, raw in files.items():
        (folder / f"{name}.gguf").write_bytes(raw)
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(qg.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    )
    try:
        res = subprocess.run(
            [sys.executable, "-c", _LOAD_EACH, str(folder)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        stdout, stderr, rc = res.stdout, res.stderr, res.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        stdout = out.decode() if isinstance(out, bytes) else out
        stderr, rc = f"timed out after {timeout} s", None
    results = {}
    for line in stdout.splitlines():
        r = json.loads(line)
        results[r.pop("file").removesuffix(".gguf")] = r
    for name in files:
        results.setdefault(name, {"outcome": f"no result (hung or crashed: rc {rc}, {stderr})"})
    return results


def _corrupt_files() -> dict[str, bytes]:
    f = _corrupt_base()
    big, top = _u64(1 << 62), _u64((1 << 64) - 1)
    return {
        "kv-count-absurd": _patched(f, "n_kv", big),
        "kv-count-max": _patched(f, "n_kv", top),
        "kv-count-one-more": _patched(f, "n_kv", _u64(5)),
        "tensor-count-absurd": _patched(f, "n_tensors", big),
        "tensor-count-max": _patched(f, "n_tensors", top),
        "tensor-count-one-more": _patched(f, "n_tensors", _u64(3)),
        "key-length-absurd": _patched(f, "key0_len", big),
        "key-length-max": _patched(f, "key0_len", top),
        "string-length-absurd": _patched(f, "str_len", big),
        "string-length-max": _patched(f, "str_len", top),
        # the sweep's hang: the string's length becomes an element type and an array count
        "value-type-string-to-array": _patched(f, "key0_type", _u32(9)),
        "value-type-unknown": _patched(f, "key3_type", _u32(13)),
        "array-count-absurd": _patched(f, "ints_count", _u64(1 << 61)),  # x 4 bytes wraps
        "array-count-max": _patched(f, "ints_count", top),
        "array-element-type-unknown": _patched(f, "ints_element", _u32(99)),
        "string-array-count-absurd": _patched(f, "strs_count", big),
        "string-array-element-length": _patched(f, "strs0_len", big),
        "tensor-name-length-absurd": _patched(f, "t1_name_len", big),
        "n-dims-max": _patched(f, "t0_ndims", _u32((1 << 32) - 1)),
        "n-dims-5": _patched(f, "t0_ndims", _u32(5)),
        "dim-absurd": _patched(f, "t0_dim0", big),
        "dim-max": _patched(f, "t0_dim0", top),
        "dims-product-overflow": _patched(f, "t1_dim0", _u64(1 << 32) + _u64(1 << 40)),
        "tensor-type-max": _patched(f, "t1_type", _u32((1 << 32) - 1)),
        "offset-max": _patched(f, "t1_offset", top),
        "offset-aligned-wraps": _patched(f, "t1_offset", _u64((1 << 64) - 32)),
        "nested-array": _corrupt_base((("a.nested", _nested_array(1)),)).bytes(),
        "nested-array-deep": _corrupt_base((("a.nested", _nested_array(5000)),)).bytes(),
        "alignment-zero": _corrupt_base((("general.alignment", _u32(4) + _u32(0)),)).bytes(),
        "alignment-3": _corrupt_base((("general.alignment", _u32(4) + _u32(3)),)).bytes(),
        "duplicate-key": _corrupt_base((("a.u32", _u32(4) + _u32(8)),)).bytes(),
    }


@pytest.fixture(scope="module")
def corrupt_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    files = {"valid": _corrupt_base().bytes(), **_corrupt_files()}
    return _load_each(tmp_path_factory.mktemp("corrupt") / "files", files, timeout=120)


def test_corrupt_base_is_valid(corrupt_results: dict[str, Any], tmp_path: Path) -> None:
    """The base the corrupt files are made from loads, in gguf-py and in qfast, as built."""
    path = tmp_path / "base.gguf"
    path.write_bytes(_corrupt_base().bytes())
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["f", "q"]
    r = corrupt_results["valid"]
    assert r["outcome"] == "ok", r
    assert r["values"]["f"] == list(range(8))
    assert r["values"]["q"] == [(0.5 * _Q8_CODES).tolist()] * 2
    f = load(path)
    assert f.metadata == {"general.architecture": "test", "a.ints": [1, 2, 3],
                          "a.strs": ["x", "yz"], "a.u32": 7}  # fmt: skip


@pytest.mark.parametrize("kind", list(_corrupt_files()))
def test_corrupt_header_refused_fast(corrupt_results: dict[str, Any], kind: str) -> None:
    """Each count, length, type and offset that does not fit the file is a ValueError within
    milliseconds: no hang (gguf-py would loop ~8e18 times), no RecursionError, no garbage."""
    r = corrupt_results[kind]
    assert r["outcome"] == "ValueError", r
    assert r["s"] < 1.0, r
    assert "bad.gguf" not in r["message"] and f"{kind}.gguf" in r["message"]  # names the file


def test_corrupt_messages(corrupt_results: dict[str, Any]) -> None:
    def message(kind: str) -> str:
        return str(corrupt_results[kind].get("message"))

    assert "18,446,744,073,709,551,615" in message("offset-max") and "'q'" in message("offset-max")
    assert "'q'" in message("offset-aligned-wraps")
    assert "'a.nested' is a nested array" in message("nested-array-deep")
    assert "'general.architecture'" in message("value-type-string-to-array")
    assert "'f'" in message("n-dims-max") and "at most 4" in message("n-dims-max")
    assert "power of two" in message("alignment-3")
    assert "'a.u32' appears twice" in message("duplicate-key")


@pytest.mark.parametrize(
    ("offset", "aligned"),
    [((1 << 64) - 1, False), ((1 << 64) - 32, True), (1 << 40, True), (64, True), (33, False)],
)
def test_tensor_offset_outside_data_section(tmp_path: Path, offset: int, aligned: bool) -> None:
    """An offset that wraps in uint64 (gguf-py maps the bytes before the data section then),
    points past the end, or is not a multiple of the alignment: a ValueError that names the
    tensor and its offset, before anything is mapped. (The data section here is 32 + 68 bytes
    of tensors and 28 of padding: "q" at 64 would end 4 bytes past the file.)"""
    path = tmp_path / "offset.gguf"
    path.write_bytes(_patched(_corrupt_base(), "t1_offset", _u64(offset)))
    with pytest.raises(ValueError, match=rf"tensor 'q' has offset {offset:,}\b") as exc:
        load(path)
    assert ("not a multiple of the alignment 32" in str(exc.value)) == (not aligned)
    assert str(path) in str(exc.value)


def test_tensor_offsets_may_leave_gaps(tmp_path: Path) -> None:
    """The GGUF spec asks for aligned offsets inside the file, not packed ones: "q" moved one
    alignment step on (into the padding, the file grown to hold it) still loads."""
    f = _corrupt_base()
    raw = bytearray(_patched(f, "t1_offset", _u64(64)))
    start = f.at["data"]
    raw[start + 64 : start + 64 + 68] = raw[start + 32 : start + 100]
    path = tmp_path / "gap.gguf"
    path.write_bytes(bytes(raw[: start + 64 + 68]))
    q = load(path).tensors["q"].dequantize()
    assert q.tolist() == [(0.5 * _Q8_CODES).tolist()] * 2


def test_truncated_at_every_byte(tmp_path: Path) -> None:
    """A small real file (gguf-py's writer, through save) cut at every byte: each cut before the
    end of the last tensor's data is a ValueError, fast; a cut in the trailing padding loads."""
    src = tmp_path / "src.gguf"
    x = np.random.default_rng(7).standard_normal((2, 64)).astype(np.float32)
    save(
        src,
        {"w": (qg.quantize(x, "Q4_1"), "Q4_1", x.shape), "b": x[0, :8].copy()},
        {
            "general.architecture": "test",
            "general.name": "cut",
            "tokenizer.ggml.tokens": ["a", "bc", ""],
            "tokenizer.ggml.scores": [0.5, -1.0, 2.0],
            "custom.flag": True,
            "custom.big": 1 << 40,
        },
    )
    raw = src.read_bytes()
    reader = gguf.GGUFReader(src)
    data_end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    assert 300 < data_end <= len(raw) < 2000
    files = {f"{cut:05d}": raw[:cut] for cut in range(len(raw))}
    import time

    t0 = time.perf_counter()
    results = _load_each(tmp_path / "cuts", files, timeout=120)
    elapsed = time.perf_counter() - t0
    wrong = {}
    for cut in range(len(raw)):
        r = results[f"{cut:05d}"]
        want = "ValueError" if cut < data_end else "ok"
        if r["outcome"] != want or r.get("s", 1) > 0.5:
            wrong[cut] = r
    assert not wrong, (len(wrong), dict(list(wrong.items())[:5]))
    assert elapsed < 30, elapsed


def test_header_fields_overwritten(tmp_path: Path) -> None:
    """Every header offset overwritten with 8 bytes of 0xFF, or of 2**62: each load either
    works (the bytes were a value, a name, ...) or is a ValueError, within milliseconds; never
    another exception, a hang or a crash."""
    f = _corrupt_base()
    raw = f.bytes()
    files = {}
    for at in range(4, f.at["data"]):
        for tag, fill in (("ff", b"\xff" * 8), ("big", _u64(1 << 62))):
            b = bytearray(raw)
            b[at : at + 8] = fill
            files[f"{at:04d}-{tag}"] = bytes(b[: len(raw)])
    results = _load_each(tmp_path / "flips", files, timeout=120)
    wrong = {k: r for k, r in results.items() if r["outcome"] not in ("ok", "ValueError")}
    slow = {k: r for k, r in results.items() if r.get("s", 0) > 0.5}
    assert not wrong and not slow, (dict(list(wrong.items())[:5]), slow)
    assert sum(r["outcome"] == "ValueError" for r in results.values()) > len(files) // 2


# --- wrong argument types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        (np.zeros((2, 32), np.int8), "not ndarray; for a float array use qfast.gguf.quantize"),
        ({"data": 1}, r"not dict \(QTensor.from_dict\(d\) makes one from a dict\)"),
        (None, "not NoneType"),
    ],
)
def test_from_qtensor_wrong_type(arg: Any, match: str) -> None:
    with pytest.raises(TypeError, match=rf"from_qtensor expects a QTensor .*{match}"):
        qg.from_qtensor(arg)


def test_from_qtensor_dict_of_a_qtensor() -> None:
    import qfast

    q = qg.to_qtensor(qg.quantize(np.ones((2, 32), np.float32), "Q8_0"), "Q8_0")
    with pytest.raises(TypeError, match=r"QTensor\.from_dict"):
        qg.from_qtensor(q.to_dict())
    assert qg.from_qtensor(qfast.QTensor.from_dict(q.to_dict()))[1] == "Q8_0"


@pytest.mark.parametrize("fn", ["to_qtensor", "dot"])
def test_block_functions_want_bytes(fn: str) -> None:
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(TypeError, match=r"data must be uint8 bytes.*not float32"):
        qg.to_qtensor(x, "Q8_0") if fn == "to_qtensor" else qg.dot(x, x[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tensors": [np.zeros(4, np.float32)]}, "save takes tensors as a dict .*not list"),
        ({"tensors": np.zeros(4, np.float32)}, "save takes tensors as a dict .*not ndarray"),
        ({"tensors": {}, "metadata": [("k", 1)]}, "save takes metadata as a dict .*not list"),
        ({"tensors": {}, "value_types": ["k"]}, "save takes value_types as a dict .*not list"),
        ({"tensors": {"t": (np.zeros(4, np.float32), None, (4,))}}, "a GGUF type is a name"),
        ({"tensors": {"t": (np.zeros(4, np.float32), "F32", 4)}}, "shape of a .* tuple"),
    ],
)
def test_save_wrong_types(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    path = tmp_path / "x.gguf"
    with pytest.raises(TypeError, match=match):
        save(path, check=False, **kwargs)
    assert not os.listdir(tmp_path)
