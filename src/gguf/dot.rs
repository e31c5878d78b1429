//! `Q4_0 · Q8_0` dot products (llama.cpp's `ggml_vec_dot_q4_0_q8_0`): 4-bit weight blocks by
//! 8-bit activation blocks, integer sums per block, scaled in float32.
//!
//! The float order is fixed, so every path gives the same bits. Value `j` of a block (0..32,
//! in the formats' value order) belongs to lane `l = j / 4`; block `b` adds
//! `acc[slot(b, l)] = fma(p, dx · dy, acc[slot(b, l)])`, where `p` is the lane's exact integer
//! sum `Σ (q4 - 8) · q8`, `dx · dy` the two blocks' float16 scales multiplied in float32, and
//! `slot(b, l) = 16 · ((b % 4) / 2) + 8 · (l / 4) + 4 · (b % 2) + l % 4` (two 16-lane vectors,
//! each holding a pair of blocks with their low halves first); the 32 accumulators are then
//! summed as a tree: `a[i] + a[i + 16]`, then `+ 8`, `+ 4`, `+ 2`, `+ 1`. (ggml's kernels each
//! use their own order.)

use super::legacy::{Q4_0_BYTES, Q8_0_BYTES, QK};
use half::f16;

/// Accumulator lanes of the fixed order.
pub const LANES: usize = 32;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The accumulator of block `b`'s lane `l` (see the module docs).
#[inline(always)]
pub fn slot(b: usize, l: usize) -> usize {
    16 * ((b % 4) / 2) + 8 * (l / 4) + 4 * (b % 2) + l % 4
}

/// The tree sum of the accumulators.
pub fn tree_sum(mut a: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w >= 1 {
        for i in 0..w {
            a[i] += a[i + w];
        }
        w /= 2;
    }
    a[0]
}

/// The portable kernel (the oracle of the SIMD ones): `x` Q4_0 blocks, `y` as many Q8_0 blocks.
pub fn dot_ref(x: &[u8], y: &[u8]) -> f32 {
    let nb = x.len() / Q4_0_BYTES;
    assert!(x.len() == nb * Q4_0_BYTES && y.len() == nb * Q8_0_BYTES);
    let mut acc = [0f32; LANES];
    for (b, (xb, yb)) in x
        .chunks_exact(Q4_0_BYTES)
        .zip(y.chunks_exact(Q8_0_BYTES))
        .enumerate()
    {
        let d = f16_at(xb, 0) * f16_at(yb, 0);
        for lane in 0..QK / 4 {
            let mut p = 0i32;
            for j in 4 * lane..4 * lane + 4 {
                let q4 = if j < 16 {
                    xb[2 + j] & 0x0f
                } else {
                    xb[2 + j - 16] >> 4
                };
                p += (q4 as i32 - 8) * (yb[2 + j] as i8 as i32);
            }
            let a = &mut acc[slot(b, lane)];
            *a = (p as f32).mul_add(d, *a);
        }
    }
    tree_sum(acc)
}
