//! ggml's scalar arithmetic, shared by the ports of its quantizers (`kq_affine`, `kq_sym`):
//! `nearest_int`'s magic-number rounding and ggml's own float16 conversion
//! (`ggml_compute_fp32_to_fp16` / `ggml_compute_fp16_to_fp32`), bit for bit as its C.

/// ggml's `nearest_int`: `fval + 1.5 * 2^23` rounds to an integer (half to even) in the low
/// mantissa bits. Exact for `|fval| <= 4194303`; beyond that (ggml's assert is compiled out)
/// the same bit arithmetic gives the same garbage as C.
#[inline(always)]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// ggml's float32 to float16 (Maratyszcza's FP16): round to nearest even; any NaN becomes
/// `0x7E00` with its sign.
pub fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    #[allow(clippy::assign_op_pattern)] // C's operand order
    {
        base = f32::from_bits((bias >> 1) + 0x0780_0000) + base;
    }
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

/// ggml's float16 to float32 (exact).
pub fn fp16_to_fp32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    let exp_offset = 0xE0u32 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
    let magic_mask = 126u32 << 23;
    let denormalized = f32::from_bits((two_w >> 17) | magic_mask) - 0.5;
    let denormalized_cutoff = 1u32 << 27;
    let result = sign
        | if two_w < denormalized_cutoff {
            denormalized.to_bits()
        } else {
            normalized.to_bits()
        };
    f32::from_bits(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-0.0), 0);
        assert_eq!(nearest_int(4194303.0), 4194303);
        assert_eq!(nearest_int(-4194303.0), -4194303);
    }

    #[test]
    fn fp16_matches_the_half_crate_on_finite_values() {
        let mut s = 0x1234_5678u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let f = f32::from_bits(s);
            if f.is_nan() {
                assert_eq!(fp32_to_fp16(f) & 0x7FFF, 0x7E00);
                continue;
            }
            let h = fp32_to_fp16(f);
            assert_eq!(h, half::f16::from_f32(f).to_bits(), "{f:e}");
            let back = fp16_to_fp32(h);
            assert_eq!(back.to_bits(), half::f16::from_bits(h).to_f32().to_bits());
        }
    }

    #[test]
    fn fp32_to_fp16_rounds_as_the_half_crate() {
        // Every finite float32 with a stride prime to the mantissa patterns, plus the
        // boundaries around float16's overflow and subnormal range.
        let mut bits = 0u32;
        while bits < 0x7F80_0000 {
            for f in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert_eq!(half::f16::from_f32(f).to_bits(), fp32_to_fp16(f), "{f:e}");
            }
            bits += 251;
        }
        for f in [
            65504.0f32,
            65519.99,
            65520.0,
            1e30,
            5.96e-8,
            2.98e-8,
            2.9802322e-8,
        ] {
            assert_eq!(half::f16::from_f32(f).to_bits(), fp32_to_fp16(f), "{f:e}");
        }
    }

    #[test]
    fn nearest_int_rounds_to_nearest_ties_to_even() {
        for (v, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
        ] {
            assert_eq!(nearest_int(v), want, "{v}");
        }
        assert_eq!(nearest_int(-4194303.0), -4194303);
    }
}
