//! llama.cpp's original block formats, 32 values per block, one block at a time, exactly as
//! ggml's reference quantizers (`quantize_row_q*_ref` in `ggml-quants.c`) and gguf-py's
//! `gguf.quants` compute them. These rules differ from qfast's own grid on purpose:
//!
//! - Q4_0 / Q5_0: `d = max / -8` (`-16`), where `max` is the value of largest magnitude (the
//!   first one on ties), so `d` carries the sign; codes `min(15, trunc(x / d + 8.5))`
//!   (`31`, `16.5`): a truncation of `x / d + 8.5`, not a round to even.
//! - Q4_1 / Q5_1: `d = (max - min) / 15` (`31`), `m = min`; codes
//!   `min(15, trunc((x - min) / d + 0.5))`.
//! - Q8_0: `d = max|x| / 127`, codes `roundf(x / d)` (ties away from zero).
//! - `x / d` is `x * (1 / d)` in float32 (and 0 where `d == 0`); `d` and `m` are stored as
//!   float16, rounded to nearest even.
//!
//! Layouts (little-endian): Q4_0 `d:f16, qs[16]`; Q4_1 `d:f16, m:f16, qs[16]`; Q5_0
//! `d:f16, qh:u32, qs[16]`; Q5_1 `d:f16, m:f16, qh:u32, qs[16]`; Q8_0 `d:f16, qs:i8[32]`.
//! `qs[j]` holds value `j` in its low nibble and value `j + 16` in its high nibble; bit `j`
//! of `qh` is the fifth bit of value `j`.
//!
//! Dequantization follows gguf-py's float32 order: `d * (q - offset)` for the symmetric
//! types, `d * q + m` (a product, then a sum: no FMA) for the others.

use half::f16;

/// Values per block of every type here.
pub const QK: usize = 32;

fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

fn put_f16(block: &mut [u8], at: usize, v: f32) {
    block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// The value of largest magnitude (the first on ties), as ggml's `amax < fabsf(v)` loop;
/// when every value is a zero, the first one (gguf-py's `argmax`, so `d` takes that zero's
/// opposite sign; ggml's C loop keeps `+0.0` there and stores `d = -0.0`).
fn signed_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, x[0]);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// As ggml's loop: strict comparisons, so among equal values (`-0.0` and `0.0`) the first
/// one stays.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    (lo, hi)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The float-to-int conversion both references compile to on x86 (`cvttss2si`): truncation,
/// and `i32::MIN` for NaN and out-of-range values. It matters only where a block's `d` is so
/// small that `1 / d` overflows to infinity: ggml's C (`(int8_t)` of it) and gguf-py
/// (`astype(uint8)`) then both keep the low byte, 0.
fn cvt_i32(v: f32) -> i32 {
    if v.is_nan() || !(-2147483648.0..2147483648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// `min(top, trunc(v))`, the low byte of the conversion as both references take it.
fn trunc_code(v: f32, top: u8) -> u8 {
    (cvt_i32(v) as u8).min(top)
}

/// Packs 32 codes (`< 16` or `< 32`) as `qs` (low nibbles) and, for 5-bit codes, `qh`.
fn pack(codes: &[u8; QK], qs: &mut [u8], qh: Option<&mut [u8]>) {
    for j in 0..QK / 2 {
        qs[j] = (codes[j] & 0x0f) | ((codes[j + QK / 2] & 0x0f) << 4);
    }
    if let Some(qh) = qh {
        let bits = codes
            .iter()
            .enumerate()
            .fold(0u32, |h, (j, &c)| h | (((c >> 4) as u32 & 1) << j));
        qh.copy_from_slice(&bits.to_le_bytes());
    }
}

fn unpack(qs: &[u8], qh: Option<&[u8]>) -> [u8; QK] {
    let high = qh.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    let mut codes = [0u8; QK];
    for j in 0..QK / 2 {
        codes[j] = qs[j] & 0x0f;
        codes[j + QK / 2] = qs[j] >> 4;
    }
    for (j, c) in codes.iter_mut().enumerate() {
        *c |= (((high >> j) & 1) as u8) << 4;
    }
    codes
}

pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;
pub const Q8_0_BYTES: usize = 34;

/// Symmetric 4/5-bit: `d = max / -half`, codes `trunc(x / d + half + 0.5)`.
fn quantize_sym(x: &[f32], half: f32, top: u8) -> (f32, [u8; QK]) {
    let d = signed_max(x) / -half;
    let id = inverse(d);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = trunc_code(v * id + (half + 0.5), top);
    }
    (d, codes)
}

/// Asymmetric 4/5-bit: `d = (max - min) / top`, codes `trunc((x - min) / d + 0.5)`.
fn quantize_asym(x: &[f32], top: u8) -> (f32, f32, [u8; QK]) {
    let (min, max) = min_max(x);
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = trunc_code((v - min) * id + 0.5, top);
    }
    (d, min, codes)
}

pub fn quantize_q4_0(x: &[f32], block: &mut [u8]) {
    let (d, codes) = quantize_sym(x, 8.0, 15);
    put_f16(block, 0, d);
    pack(&codes, &mut block[2..18], None);
}

pub fn quantize_q4_1(x: &[f32], block: &mut [u8]) {
    let (d, m, codes) = quantize_asym(x, 15);
    put_f16(block, 0, d);
    put_f16(block, 2, m);
    pack(&codes, &mut block[4..20], None);
}

pub fn quantize_q5_0(x: &[f32], block: &mut [u8]) {
    let (d, codes) = quantize_sym(x, 16.0, 31);
    put_f16(block, 0, d);
    let (qh, qs) = block[2..22].split_at_mut(4);
    pack(&codes, qs, Some(qh));
}

pub fn quantize_q5_1(x: &[f32], block: &mut [u8]) {
    let (d, m, codes) = quantize_asym(x, 31);
    put_f16(block, 0, d);
    put_f16(block, 2, m);
    let (qh, qs) = block[4..24].split_at_mut(4);
    pack(&codes, qs, Some(qh));
}

pub fn quantize_q8_0(x: &[f32], block: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    put_f16(block, 0, d);
    for (q, &v) in block[2..34].iter_mut().zip(x) {
        // `round`: ties away from zero, as C's roundf.
        *q = cvt_i32((v * id).round()) as u8;
    }
}

pub fn dequantize_q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &c) in out.iter_mut().zip(&unpack(&block[2..18], None)) {
        *o = d * (c as i32 - 8) as f32;
    }
}

pub fn dequantize_q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    for (o, &c) in out.iter_mut().zip(&unpack(&block[4..20], None)) {
        *o = d * c as f32 + m;
    }
}

pub fn dequantize_q5_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &c) in out
        .iter_mut()
        .zip(&unpack(&block[6..22], Some(&block[2..6])))
    {
        *o = d * (c as i32 - 16) as f32;
    }
}

pub fn dequantize_q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    for (o, &c) in out
        .iter_mut()
        .zip(&unpack(&block[8..24], Some(&block[4..8])))
    {
        *o = d * c as f32 + m;
    }
}

pub fn dequantize_q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = q as i8 as f32 * d;
    }
}
