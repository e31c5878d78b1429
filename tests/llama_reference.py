"""An independent Llama-family forward pass for the tests, written plainly.

Float64 throughout, one head at a time, K/V heads repeated explicitly (as Hugging Face's
``repeat_kv``), RoPE as Hugging Face's ``rotate_half``, the causal (and sliding-window) mask
as explicit comparisons. It reads the Hugging Face config.json dict and tensors by name and
shares no code with ``qfast.model.arch.llama``.
"""

from __future__ import annotations

import math

import numpy as np


def rope_inv_freq(cfg: dict) -> np.ndarray:
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg.get("rope_theta", 10000.0)
    inv = [1.0 / base ** (2 * j / d) for j in range(d // 2)]
    scaling = cfg.get("rope_scaling")
    if scaling is None:
        return np.array(inv)
    assert scaling["rope_type"] == "llama3"
    factor = scaling["factor"]
    low = scaling["low_freq_factor"]
    high = scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(f)
        elif wavelen > old / low:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        out[t] = x[t] / math.sqrt(float(np.mean(x[t] ** 2)) + eps) * w
    return out


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def window_of(cfg: dict, layer: int) -> int | None:
    mt = cfg["model_type"]
    if mt == "mistral":
        return cfg.get("sliding_window")
    if mt == "qwen2" and cfg.get("use_sliding_window"):
        if layer >= cfg.get("max_window_layers", 28):
            return cfg.get("sliding_window")
    return None


def forward(cfg: dict, t: dict, ids: list[int], record=None, act=None, dtype=np.float64):
    """Logits ``[seq, vocab]`` of one sequence, computed in ``dtype`` (float64 by default;
    float32 shows how far an honest float32 computation strays).

    ``record``: a dict that receives each linear's input rows by weight name; ``act(name, x)``:
    applied to every linear's input first (e.g. fake activation quantization).
    """
    w = {k: np.asarray(v, dtype=dtype) for k, v in t.items()}
    hidden = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    d = cfg.get("head_dim") or hidden // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    mt = cfg["model_type"]
    qkv_bias = mt == "qwen2" or (mt == "llama" and cfg.get("attention_bias", False))
    o_bias = mt == "llama" and cfg.get("attention_bias", False)
    mlp_bias = mt == "llama" and cfg.get("mlp_bias", False)
    s = len(ids)
    inv = rope_inv_freq(cfg)
    cos = np.zeros((s, d))
    sin = np.zeros((s, d))
    for pos in range(s):
        for j in range(d // 2):
            cos[pos, j] = cos[pos, j + d // 2] = math.cos(pos * inv[j])
            sin[pos, j] = sin[pos, j + d // 2] = math.sin(pos * inv[j])
    cos, sin = cos.astype(dtype), sin.astype(dtype)

    h = np.stack([w["model.embed_tokens.weight"][i] for i in ids])
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)

        def lin(x: np.ndarray, name: str, bias: bool) -> np.ndarray:
            if record is not None:
                record[name + ".weight"] = x
            if act is not None:
                x = act(name + ".weight", x)
            y = x @ w[name + ".weight"].T
            return y + w[name + ".bias"] if bias else y

        q = lin(x, p + "self_attn.q_proj", qkv_bias).reshape(s, nh, d)
        k = lin(x, p + "self_attn.k_proj", qkv_bias).reshape(s, nkv, d)
        v = lin(x, p + "self_attn.v_proj", qkv_bias).reshape(s, nkv, d)
        k = np.repeat(k, nh // nkv, axis=1)  # head h uses kv head h // (nh // nkv)
        v = np.repeat(v, nh // nkv, axis=1)
        window = window_of(cfg, layer)
        out = np.zeros((s, nh, d), dtype)
        for head in range(nh):
            qh = q[:, head] * cos + rotate_half(q[:, head]) * sin
            kh = k[:, head] * cos + rotate_half(k[:, head]) * sin
            for i in range(s):
                visible = [j for j in range(s) if j <= i and (window is None or i - j < window)]
                scores = np.array([qh[i] @ kh[j] for j in visible]) / math.sqrt(d)
                e = np.exp(scores - scores.max())
                prob = e / e.sum()
                out[i, head] = sum(pr * v[j, head] for pr, j in zip(prob, visible))
        h = h + lin(out.reshape(s, nh * d), p + "self_attn.o_proj", o_bias)
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate = lin(x, p + "mlp.gate_proj", mlp_bias)
        up = lin(x, p + "mlp.up_proj", mlp_bias)
        swiglu = gate / (1.0 + np.exp(-gate)) * up
        h = h + lin(swiglu, p + "mlp.down_proj", mlp_bias)
    x = rms_norm(h, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight")
    if head is None:
        return x @ w["model.embed_tokens.weight"].T
    if record is not None:
        record["lm_head.weight"] = x
    if act is not None:
        x = act("lm_head.weight", x)
    return x @ head.T
