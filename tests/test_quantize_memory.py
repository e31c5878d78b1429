"""Bounded memory: ``qfast.quantize_model`` on a checkpoint larger than its memory bound.

Issue 13's must-show: a synthetic Llama checkpoint of more than 1.5 GB of float32 weights is
quantized in a fresh interpreter, with RTN and with GPTQ (on 4 x 128 calibration tokens),
writing a GPTQ checkpoint (RTN; issue 14's export bound) or qfast's format (GPTQ) as it goes,
in under 3 minutes each; the process's peak RSS stays at
most 3x its largest decoder block (float32) plus the calibration state plus 300 MB: far less
than the checkpoint, so the weights must stream block by block from the memory map, their
pages given back after each block, and each block's output must leave memory once written
(and the RSS must not grow from block to block). Separately, the embedding a calibrated method
reads to embed its data is not held while the blocks are quantized.

The checkpoint (``config.json`` + ``model.safetensors``) is written tensor by tensor with a
header computed first, never held in memory whole; it is built once per session and removed
at the end.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="peak RSS from /proc/self/status (VmHWM) and ru_maxrss in KiB: Linux",
)

MB = 1_000_000

# A Llama with GQA (8 query heads, 4 KV heads of 128), hidden 1024, MLP 2048: each decoder
# block is 9.4 M weights (37.8 MB in float32); 41 of them, plus an untied embedding and LM
# head over a small vocabulary, make 404 M weights, 1.62 GB (1.5 GiB). GPTQ's work grows
# with weights x input width, so the widths are kept small and the layers many.
CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 1024,
    "intermediate_size": 2048,
    "num_hidden_layers": 41,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 8192,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "float32",
}
SAMPLES, SEQ_LEN = 4, 128
# The checkpoint, and two outputs of about 0.25 GB, with room to spare.
DISK_NEEDED = 4 * 1024**3
TIME_LIMIT = 180.0  # seconds per quantize run (the "under 3 minutes")
SLACK = 300 * MB  # the interpreter, NumPy, qfast, the thread pool, buffers


def checkpoint_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, in file order (Hugging Face names)."""
    h, ff, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg["vocab_size"], h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (q, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (ff, h)
        shapes[p + "mlp.up_proj.weight"] = (ff, h)
        shapes[p + "mlp.down_proj.weight"] = (h, ff)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    return shapes


def largest_block_bytes(cfg: dict) -> int:
    """The largest decoder block's weights in float32 bytes."""
    shapes = checkpoint_shapes(cfg)
    return max(
        sum(4 * math.prod(s) for n, s in shapes.items() if n.startswith(f"model.layers.{i}."))
        for i in range(cfg["num_hidden_layers"])
    )


def calibration_state_bytes(cfg: dict, tokens: int) -> int:
    """What block-sequential GPTQ keeps besides the weights, from the shapes alone:

    - the hidden states of every calibration token, float32 ``tokens x hidden`` (the residual
      stream that flows from block to block);
    - one group's input over all of them, float32 ``tokens x in`` for the widest group input
      (down_proj's, ``intermediate_size``): a stage computes the next group's input while the
      current one is held;
    - the Hessians, float64 ``in x in``, one per shared input group of a block (q/k/v, o,
      gate/up, down): ``3 x hidden^2 + intermediate^2`` times 8 bytes.
    """
    h, ff = cfg["hidden_size"], cfg["intermediate_size"]
    o_in = cfg["num_attention_heads"] * cfg["head_dim"]
    hidden_states = 4 * tokens * h
    group_input = 4 * tokens * max(h, o_in, ff)
    hessians = 8 * (h * h + o_in * o_in + h * h + ff * ff)
    return hidden_states + group_input + hessians


def _write_checkpoint(folder: Path, cfg: dict, seed: int = 0, dtype: str = "F32") -> int:
    """Writes ``config.json`` and ``model.safetensors`` (``dtype`` F32 or F16, N(0, 0.02)
    weights, norms around 1) one tensor at a time; returns the weights' bytes."""
    shapes = checkpoint_shapes(cfg)
    header: dict = {"__metadata__": {"format": "pt"}}
    item = {"F32": 4, "F16": 2}[dtype]
    offset = 0
    for name, shape in shapes.items():
        size = item * math.prod(shape)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    rng = np.random.default_rng(seed)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for shape in shapes.values():
            if len(shape) == 1:  # a norm's weight
                w = 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
            else:
                w = rng.standard_normal(shape, dtype=np.float32)
                w *= np.float32(0.02)
            f.write(w.astype("<f4" if dtype == "F32" else "<f2", copy=False).tobytes())
            del w
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return offset


@pytest.fixture(scope="session")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """The synthetic checkpoint's folder (built once per session, removed at the end)."""
    root = tmp_path_factory.mktemp("quantize_memory")
    free = shutil.disk_usage(root).free
    if free < DISK_NEEDED:
        pytest.skip(
            f"needs ~{DISK_NEEDED / 1024**3:.0f} GiB of free disk for a 1.6 GB synthetic "
            f"checkpoint and its quantized copies; {root} has {free / 1024**3:.1f} GiB"
        )
    folder = root / "llama"
    folder.mkdir()
    try:
        nbytes = _write_checkpoint(folder, CONFIG)
        yield folder, nbytes
    finally:
        shutil.rmtree(root, ignore_errors=True)


# Runs in a fresh interpreter: loads the checkpoint, quantizes it with ``output=``, reports
# its peak memory and wall time, then loads the output and runs a forward pass.
CHILD = r"""
import json, re, resource, sys, time
t0 = time.perf_counter()
import numpy as np
import qfast

src, out, method, fmt = sys.argv[1:5]
samples, seq_len = map(int, sys.argv[5:7])

def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(key + r":\s+(\d+)", text).group(1)) * 1024

blocks_rss = []
def progress(done, total, what):
    blocks_rss.append(status("VmRSS"))

model = qfast.load_model(src, compute="float")
ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (samples, seq_len))
recipe = qfast.Recipe(method, bits=4, group_size=128)
q = qfast.quantize_model(
    model, recipe, ids if method == "gptq" else None, samples=samples, seq_len=seq_len,
    output=out, format=fmt, progress=progress,
)
wall = time.perf_counter() - t0
report = {
    "wall": wall,
    "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "hwm": status("VmHWM"),
    "blocks_rss": blocks_rss,
    "seconds": q.quantize_report.seconds,
}
# The output loads, holds QTensors, and runs.
back = qfast.load_model(out)
w = back.weights["model.layers.0.mlp.down_proj.weight"]
report["qtensor"] = isinstance(w, qfast.QTensor) and w.bits == 4 and w.group_size == 128
logits = back.logits(ids[:1, :16])
report["logits_shape"] = list(logits.shape)
report["logits_finite"] = bool(np.isfinite(logits).all())
print(json.dumps(report))
"""


@linux_only
@pytest.mark.parametrize(("method", "fmt"), [("rtn", "gptq"), ("gptq", "qfast")])
def test_quantize_model_peak_memory_is_bounded(
    method, fmt, big_checkpoint, tmp_path, run_python, isa_env
):
    """RTN writes a GPTQ checkpoint (issue 14: exporting stays within the bound), GPTQ
    qfast's format."""
    folder, nbytes = big_checkpoint
    assert nbytes >= 1.5 * 1024**3
    out = tmp_path / f"{method}-4bit"
    env = isa_env()
    # One BLAS thread: GPTQ's Cholesky and triangular inverses are LAPACK calls on 256-512
    # panels, which OpenBLAS's threads (busy-waiting for each other) run 10-50x slower on a
    # machine with more runnable threads than cores, as a CI runner or a shared box can be;
    # the memory bound does not depend on it.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    proc = run_python(
        ["-c", CHILD, str(folder), str(out), method, fmt, str(SAMPLES), str(SEQ_LEN)],
        env,
        timeout=TIME_LIMIT + 120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    try:
        block = largest_block_bytes(CONFIG)
        calib = calibration_state_bytes(CONFIG, SAMPLES * SEQ_LEN) if method == "gptq" else 0
        bound = 3 * block + calib + SLACK
        assert nbytes > bound  # the bound is only a test if the model does not fit in it
        # The peak of the child's own memory, VmHWM: its ru_maxrss starts from the parent's
        # peak (Linux carries the forking process's high-water mark over the exec: a child
        # of a process that once held 600 MB reports 600 MB), here pytest's, which earlier
        # tests may have raised. Alone, the two agree.
        peak = got["hwm"]
        assert peak <= bound, (
            f"{method}: peak RSS {peak / MB:.0f} MB > bound {bound / MB:.0f} MB (3 x block "
            f"{block / MB:.0f} MB + calibration {calib / MB:.0f} MB + {SLACK / MB:.0f} MB); RSS "
            f"after each block: {[round(r / MB) for r in got['blocks_rss']]} MB"
        )
        # Nothing accumulates from block to block (a leak of a fraction of a block per block,
        # such as the written QTensors kept alive, can hide under the bound's slack): the RSS
        # after the last block is within one float32 block of the most it was over the first
        # quarter of the blocks. (The first blocks may grow it once: the allocator keeps the
        # arenas of the first stages' arrays, and the forward pass's caches fill; seen as one
        # step of 46 MB at block 2 in a clean-clone CI run, flat from there to block 41. A
        # leak grows it all the way: the written QTensors kept alive add 212 MB.)
        rss = got["blocks_rss"]  # at the start, after each block, at the end
        n = CONFIG["num_hidden_layers"]
        growth = rss[n] - max(rss[1 : 1 + n // 4])
        assert growth <= block, (
            f"{method}: RSS grew by {growth / MB:.0f} MB from the first quarter to block "
            f"{CONFIG['num_hidden_layers']}: {[round(r / MB) for r in rss]} MB"
        )
        assert got["wall"] < TIME_LIMIT, f"{method}: {got['wall']:.0f} s ({got['seconds']})"
        assert got["qtensor"]
        assert got["logits_shape"] == [1, 16, CONFIG["vocab_size"]]
        assert got["logits_finite"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(
        f"{method}: {got['wall']:.1f} s, VmHWM {got['hwm'] / MB:.0f} MB, ru_maxrss "
        f"{got['maxrss'] / MB:.0f} MB, bound {bound / MB:.0f} MB; {got['seconds']}"
    )


def test_quantize_model_gives_the_embedding_back_after_calibration(tmp_path):
    """A float16 checkpoint's embedding is read as a float32 copy to embed the calibration
    data; it is needed again only for the last shard, and must not stay in memory while the
    blocks are quantized (for SmolLM2 it is 8x a block: 113 MB)."""
    import tracemalloc

    import qfast

    cfg = dict(
        CONFIG, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=32768,
    )  # fmt: skip
    folder = tmp_path / "f16"
    folder.mkdir()
    _write_checkpoint(folder, cfg, dtype="F16")
    embedding = 4 * cfg["vocab_size"] * cfg["hidden_size"]  # 33.5 MB as float32
    model = qfast.load_model(folder, compute="float")
    ids = np.random.default_rng(1).integers(0, cfg["vocab_size"], (SAMPLES, SEQ_LEN))
    held: list[int] = []

    def progress(done: int, total: int, what: str) -> None:
        if 0 < done < total:  # after each block
            held.append(tracemalloc.get_traced_memory()[0])

    tracemalloc.start()
    try:
        q = qfast.quantize_model(
            model, qfast.Recipe("gptq", bits=4, group_size=128), ids, samples=SAMPLES,
            seq_len=SEQ_LEN, output=tmp_path / "out", progress=progress,
        )  # fmt: skip
    finally:
        tracemalloc.stop()
    assert len(held) == cfg["num_hidden_layers"]
    # Everything else alive then (hidden states, scratch, a block's weights) is about 13 MB
    # (47 MB with the embedding kept).
    assert max(held) < embedding, [round(h / MB) for h in held]
    # The last shard still has the embedding, as the checkpoint stored it.
    want = np.asarray(model.weights["model.embed_tokens.weight"])
    assert np.array_equal(np.asarray(q.weights["model.embed_tokens.weight"]), want)


def test_quantize_model_drops_the_forward_scratch_while_a_group_is_quantized(tmp_path, monkeypatch):
    """The forward pass keeps a batch's intermediate arrays for reuse from stage to stage;
    they are not needed while GPTQ runs on a group (its Hessian and factors are the peak), so
    they must not be alive then (SmolLM2, 32 x 512 tokens: 125 MB of the peak)."""
    import tracemalloc

    import qfast
    import qfast.algorithms.gptq as gptq_module

    cfg = dict(
        CONFIG, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, vocab_size=512,
    )  # fmt: skip
    folder = tmp_path / "small"
    folder.mkdir()
    _write_checkpoint(folder, cfg)
    samples, seq_len = 4, 1024  # one batch of 4096 tokens
    tokens, h, ff = samples * seq_len, cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    # The scratch of one batch: x, o, q, rotated q, attention context and output (hidden
    # wide), k, v, rotated k (kv wide), gate, up (MLP wide): 24 MB, float32.
    scratch = 4 * tokens * (6 * h + 3 * kv + 2 * ff)
    # What GPTQ needs alive: the hidden states, the widest group input, a Hessian with its
    # float32 / float64 copies and factors, the weight, codes and update buffers (< 1 MB
    # each here), and the causal mask (seq_len^2 float32): 14 MB. Measured: 12 MB with the
    # scratch freed, 45 MB with it kept.
    needed = 4 * tokens * (h + ff) + 4 * seq_len**2 + 5 * 8 * ff * ff + (1 << 20)
    at_gptq: list[int] = []
    real = gptq_module.gptq

    def gptq(*args, **kwargs):
        at_gptq.append(tracemalloc.get_traced_memory()[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(gptq_module, "gptq", gptq)
    model = qfast.load_model(folder, compute="float")
    ids = np.random.default_rng(1).integers(0, cfg["vocab_size"], (samples, seq_len))
    tracemalloc.start()
    try:
        qfast.quantize_model(
            model, qfast.Recipe("gptq", bits=4, group_size=128), ids, samples=samples,
            seq_len=seq_len, output=tmp_path / "out",
        )  # fmt: skip
    finally:
        tracemalloc.stop()
    assert len(at_gptq) == 7 * cfg["num_hidden_layers"]
    assert max(at_gptq) < needed + scratch / 2, [round(m / MB, 1) for m in at_gptq]
