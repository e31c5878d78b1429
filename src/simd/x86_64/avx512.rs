//! AVX-512 path (F, BW, DQ): 512-bit vectors, 16 floats or 64 bytes at a time.
//!
//! Written as inline assembly, not `core::arch` intrinsics: the AVX-512 intrinsics and
//! `#[target_feature(enable = "avx512f")]` are stable only since Rust 1.89, and this path also
//! builds with older compilers (checked with 1.85). `asm!` is stable, the assembler takes
//! AVX-512 instructions whatever target features are enabled, and `zmm`/`k` registers can be
//! named as clobbers without them.
//!
//! Each kernel is a safe wrapper (length checks, CPU check) around one `asm!` block that runs
//! the same per-vector body three ways: four vectors per iteration over whole blocks, one
//! vector at a time over the whole vectors left, and once under a mask (`k1`, with `k2` where
//! the output count differs) over the last partial vector. The masks come from the wrapper, so
//! every read and write stays inside the slices; masked-off elements of a memory operand are
//! never accessed (AVX-512 fault suppression).
//!
//! Conventions of every block: Intel syntax; local labels `2:`..`6:`; it clobbers zmm0-zmm15 and
//! k1-k4 (declared by [`asm512!`]) and ends with `vzeroupper`, so the SSE code around it pays no
//! transition penalty; it does not touch the stack.
//!
//! Soundness: `Isa::kernels` hands this table out only after `has_avx512()`, but `KERNELS` is a
//! public constant, so each wrapper checks the CPU again (one cached load) and falls back to
//! the scalar kernel rather than run an AVX-512 instruction on a CPU without it.

use super::avx2::{prefetch_distance, IDENTITY, SIGNED_CRUMBS, SIGNED_NIBBLES, STREAM_AHEAD};
use crate::simd::{scalar, Isa, Kernels, MinMax, QParams};

pub const KERNELS: Kernels = Kernels {
    isa: Isa::Avx512,
    minmax,
    minmax_lanes,
    quantize,
    quantize_lanes,
    dequantize,
    dequantize_lanes,
    pack4,
    unpack4,
    pack2,
    unpack2,
};

/// The VNNI path differs only in the integer dot products.
pub const KERNELS_VNNI: Kernels = Kernels {
    isa: Isa::Avx512Vnni,
    ..KERNELS
};

/// Whether this CPU runs the path, detected once: one relaxed load per kernel call.
#[inline(always)]
fn cpu_ok() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static KNOWN: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 yes, 2 no
    match KNOWN.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let ok = super::has_avx512();
            KNOWN.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}

/// `asm!` with the clobbers every block of this file shares appended.
macro_rules! asm512 {
    ($($args:tt)*) => {
        core::arch::asm!(
            $($args)*
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("k1") _, out("k2") _, out("k3") _, out("k4") _,
            options(nostack),
        )
    };
}

/// Register numbers 4+j, 8+j, 12+j for vector j.
#[rustfmt::skip]
macro_rules! r4 {
    ("0") => { "4" };
    ("1") => { "5" };
    ("2") => { "6" };
    ("3") => { "7" };
}
#[rustfmt::skip]
macro_rules! r8 {
    ("0") => { "8" };
    ("1") => { "9" };
    ("2") => { "10" };
    ("3") => { "11" };
}
#[rustfmt::skip]
macro_rules! r12 {
    ("0") => { "12" };
    ("1") => { "13" };
    ("2") => { "14" };
    ("3") => { "15" };
}

/// How a length splits for a kernel whose vector covers `unit` elements: blocks of four
/// vectors, then whole vectors, then `rest < unit` elements under a mask.
#[derive(Clone, Copy)]
struct Split {
    blocks: usize,
    vectors: usize,
    rest: usize,
}

impl Split {
    fn new(n: usize, unit: usize) -> Split {
        Split {
            blocks: n / (4 * unit),
            vectors: n % (4 * unit) / unit,
            rest: n % unit,
        }
    }
}

/// The low `n` bits set, `n <= 64`.
#[inline(always)]
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The three-way loop of every block. `$setup` loads the constants; `$body` is a macro that
/// expands to the text of one vector: `$body!(vector index j, load-mask text, store-mask text)`,
/// where the register numbers and offsets derive from `j`; `$adv1` advances the pointers past
/// one vector. The block reads `{nb}` (blocks), `{nv}` (vectors) and `{tail}` (non-zero when a
/// masked vector is left, with its masks already in k1/k2).
#[rustfmt::skip] // one instruction per line
macro_rules! three_way {
    ($setup:expr, $body:ident, $adv4:expr, $adv1:expr, $kmasks:expr) => {
        concat!(
            $setup,
            "test {nb}, {nb}\n",
            "jz 3f\n",
            "2:\n",
            $body!("0", "", ""),
            $body!("1", "", ""),
            $body!("2", "", ""),
            $body!("3", "", ""),
            $adv4,
            "dec {nb}\n",
            "jnz 2b\n",
            "3:\n",
            "test {nv}, {nv}\n",
            "jz 4f\n",
            "5:\n",
            $body!("0", "", ""),
            $adv1,
            "dec {nv}\n",
            "jnz 5b\n",
            "4:\n",
            "test {tail}, {tail}\n",
            "jz 6f\n",
            $kmasks,
            $body!("0", " {{k1}} {{z}}", " {{k2}}"),
            "6:\n",
        )
    };
}

// ---------------------------------------------------------------------------------------------
// minmax

/// One vector of `minmax`: accumulators zmm(j) (min) and zmm(4+j) (max), data zmm(8+j); k4
/// gathers the lanes that are NaN or ±Inf (`vfpclassps` classes 0x99: QNaN, +Inf, -Inf, SNaN),
/// which a float min/max could lose; k3 is scratch. Under a mask the load zeroes the other
/// lanes (zero is finite) and min/max merge, keeping their accumulators there.
#[rustfmt::skip] // one instruction per line
macro_rules! minmax_vec {
    ($j:tt, $kz:literal, $k:literal) => {
        concat!(
            "vmovups zmm", r8!($j), $kz, ", zmmword ptr [{x} + 64*", $j, "]\n",
            "vminps zmm", $j, $k, ", zmm", $j, ", zmm", r8!($j), "\n",
            "vmaxps zmm", r4!($j), $k, ", zmm", r4!($j), ", zmm", r8!($j), "\n",
            "vfpclassps k3, zmm", r8!($j), ", 0x99\n",
            "korw k4, k4, k3\n",
        )
    };
}

/// Horizontal reduction of four accumulators `$a..$a+3` with `$op` into the low float of `xmm$a`.
#[rustfmt::skip] // one instruction per line
macro_rules! reduce4 {
    ($op:literal, $a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!(
            $op, " zmm", $a, ", zmm", $a, ", zmm", $b, "\n",
            $op, " zmm", $c, ", zmm", $c, ", zmm", $d, "\n",
            $op, " zmm", $a, ", zmm", $a, ", zmm", $c, "\n",
            "vextractf64x4 ymm", $b, ", zmm", $a, ", 1\n",
            $op, " ymm", $a, ", ymm", $a, ", ymm", $b, "\n",
            "vextractf128 xmm", $b, ", ymm", $a, ", 1\n",
            $op, " xmm", $a, ", xmm", $a, ", xmm", $b, "\n",
            "vpermilps xmm", $b, ", xmm", $a, ", 0x4e\n",
            $op, " xmm", $a, ", xmm", $a, ", xmm", $b, "\n",
            "vpermilps xmm", $b, ", xmm", $a, ", 0xb1\n",
            $op, " xmm", $a, ", xmm", $a, ", xmm", $b, "\n",
        )
    };
}

fn minmax(x: &[f32]) -> MinMax {
    if !cpu_ok() {
        return scalar::minmax(x);
    }
    let s = Split::new(x.len(), 16);
    let (mut min, mut max, nonfinite): (u32, u32, u32);
    // SAFETY: the CPU has AVX-512 F/BW/DQ (checked above). The block reads
    // `16 * (4 * blocks + vectors) + rest == x.len()` floats from `x.as_ptr()` on, the last
    // `rest` under the mask k1 = k2 = low_bits(rest), and writes no memory. The prefetches may
    // name any address: they are hints that never fault.
    unsafe {
        asm512!(
            "vpbroadcastd zmm0, {inf:e}",
            "vmovaps zmm1, zmm0",
            "vmovaps zmm2, zmm0",
            "vmovaps zmm3, zmm0",
            "vpbroadcastd zmm4, {ninf:e}",
            "vmovaps zmm5, zmm4",
            "vmovaps zmm6, zmm4",
            "vmovaps zmm7, zmm4",
            "kxorw k4, k4, k4",
            three_way!(
                "",
                minmax_vec,
                concat!(
                    "prefetcht0 [{x} + {pf}]\n",
                    "prefetcht0 [{x} + {pf} + 64]\n",
                    "prefetcht0 [{x} + {pf} + 128]\n",
                    "prefetcht0 [{x} + {pf} + 192]\n",
                    "add {x}, 256\n",
                ),
                "add {x}, 64\n",
                "kmovw k1, {mask:e}\nkmovw k2, {mask:e}\n"
            ),
            reduce4!("vminps", "0", "1", "2", "3"),
            reduce4!("vmaxps", "4", "5", "6", "7"),
            "vmovd {min:e}, xmm0",
            "vmovd {max:e}, xmm4",
            "kmovw {nf:e}, k4",
            "vzeroupper",
            x = inout(reg) x.as_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest) as u32,
            inf = in(reg) f32::INFINITY.to_bits(),
            ninf = in(reg) f32::NEG_INFINITY.to_bits(),
            pf = in(reg) STREAM_AHEAD,
            min = lateout(reg) min,
            max = lateout(reg) max,
            nf = lateout(reg) nonfinite,
        );
    }
    MinMax {
        min: f32::from_bits(min),
        max: f32::from_bits(max),
        finite: nonfinite == 0,
    }
}

// ---------------------------------------------------------------------------------------------
// minmax_lanes

/// One vector of `minmax_lanes`: data zmm(4+j), new min zmm(8+j), new max zmm(12+j); k4
/// gathers the non-finite lanes, k3 is scratch.
/// `vminps x, m` returns `m` when `x` is NaN, like the oracle's `m.min(x)`.
#[rustfmt::skip] // one instruction per line
macro_rules! minmax_lanes_vec {
    ($j:tt, $kz:literal, $k:literal) => {
        concat!(
            "vmovups zmm", r4!($j), $kz, ", zmmword ptr [{x} + 64*", $j, "]\n",
            "vminps zmm", r8!($j), $kz, ", zmm", r4!($j), ", zmmword ptr [{lo} + 64*", $j, "]\n",
            "vmaxps zmm", r12!($j), $kz, ", zmm", r4!($j), ", zmmword ptr [{hi} + 64*", $j, "]\n",
            "vmovups zmmword ptr [{lo} + 64*", $j, "]", $k, ", zmm", r8!($j), "\n",
            "vmovups zmmword ptr [{hi} + 64*", $j, "]", $k, ", zmm", r12!($j), "\n",
            "vfpclassps k3, zmm", r4!($j), ", 0x99\n",
            "korw k4, k4, k3\n",
        )
    };
}

fn minmax_lanes(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool {
    assert!(x.len() == min.len() && x.len() == max.len());
    if !cpu_ok() {
        return scalar::minmax_lanes(x, min, max);
    }
    let s = Split::new(x.len(), 16);
    let nonfinite: u32;
    // SAFETY: the CPU has AVX-512 (checked above); the three slices have the same length n,
    // and the block reads and writes exactly their first n floats, the last `rest` under the
    // masks k1 = k2 = low_bits(rest). Prefetches are hints that never fault.
    unsafe {
        asm512!(
            "kxorw k4, k4, k4",
            three_way!(
                "",
                minmax_lanes_vec,
                concat!(
                    "prefetcht0 [{x} + {pf}]\n",
                    "prefetcht0 [{x} + {pf} + 64]\n",
                    "prefetcht0 [{x} + {pf} + 128]\n",
                    "prefetcht0 [{x} + {pf} + 192]\n",
                    "add {x}, 256\nadd {lo}, 256\nadd {hi}, 256\n",
                ),
                "add {x}, 64\nadd {lo}, 64\nadd {hi}, 64\n",
                "kmovw k1, {mask:e}\nkmovw k2, {mask:e}\n"
            ),
            "kmovw {nf:e}, k4",
            "vzeroupper",
            x = inout(reg) x.as_ptr() => _,
            lo = inout(reg) min.as_mut_ptr() => _,
            hi = inout(reg) max.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest) as u32,
            pf = in(reg) STREAM_AHEAD,
            nf = lateout(reg) nonfinite,
        );
    }
    nonfinite == 0
}

// ---------------------------------------------------------------------------------------------
// quantize, quantize_lanes

/// One vector of `quantize`, in zmm(4+j): the oracle's `quantize_one`. `vdivps` is the
/// correctly rounded quotient like `/`; max/min with the finite bounds lo (zmm1) and hi (zmm2)
/// send ±Inf to the bounds; the conversion rounds to nearest even explicitly ({rn-sae}) and
/// cannot overflow on the clamped value; the zero point (zmm3) is added as an integer, and
/// `vpmovdb` keeps the low byte, the `as u8` truncation.
#[rustfmt::skip] // one instruction per line
macro_rules! quantize_vec {
    ($j:tt, $kz:literal, $k:literal) => {
        concat!(
            "vmovups zmm", r4!($j), $kz, ", zmmword ptr [{x} + 64*", $j, "]\n",
            "vdivps zmm", r4!($j), ", zmm", r4!($j), ", zmm0\n",
            "vmaxps zmm", r4!($j), ", zmm", r4!($j), ", zmm1\n",
            "vminps zmm", r4!($j), ", zmm", r4!($j), ", zmm2\n",
            "vcvtps2dq zmm", r4!($j), ", zmm", r4!($j), ", {{rn-sae}}\n",
            "vpaddd zmm", r4!($j), ", zmm", r4!($j), ", zmm3\n",
            "vpmovdb xmmword ptr [{o} + 16*", $j, "]", $k, ", zmm", r4!($j), "\n",
        )
    };
}

fn quantize(x: &[f32], p: &QParams, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    if !cpu_ok() {
        return scalar::quantize(x, p, out);
    }
    // The oracle's bounds, computed the same way.
    let lo = (p.qmin - p.zero_point) as f32;
    let hi = (p.qmax - p.zero_point) as f32;
    let s = Split::new(x.len(), 16);
    // SAFETY: the CPU has AVX-512 (checked above); `x` and `out` have the same length n, and
    // the block reads n floats and writes n bytes, the last `rest` under k1 = k2 =
    // low_bits(rest). The prefetches may name any address: they are hints that never fault.
    unsafe {
        asm512!(
            three_way!(
                concat!(
                    "vpbroadcastd zmm0, {scale:e}\n",
                    "vpbroadcastd zmm1, {lo:e}\n",
                    "vpbroadcastd zmm2, {hi:e}\n",
                    "vpbroadcastd zmm3, {zp:e}\n",
                ),
                quantize_vec,
                concat!(
                    "prefetcht0 [{x} + {pf}]\n",
                    "prefetcht0 [{x} + {pf} + 64]\n",
                    "prefetcht0 [{x} + {pf} + 128]\n",
                    "prefetcht0 [{x} + {pf} + 192]\n",
                    "add {x}, 256\nadd {o}, 64\n",
                ),
                "add {x}, 64\nadd {o}, 16\n",
                "kmovw k1, {mask:e}\nkmovw k2, {mask:e}\n"
            ),
            "vzeroupper",
            x = inout(reg) x.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest) as u32,
            scale = in(reg) p.scale.to_bits(),
            lo = in(reg) lo.to_bits(),
            hi = in(reg) hi.to_bits(),
            zp = in(reg) p.zero_point,
            pf = in(reg) prefetch_distance(x.len()),
        );
    }
}

/// One vector of `quantize_lanes`: as `quantize_vec` with per-lane scale, zero point zmm(8+j)
/// and bounds `(qmin - zp) as f32`, `(qmax - zp) as f32` in zmm(12+j) (`vcvtdq2ps` rounds to
/// nearest like `as`); qmin in zmm0, qmax in zmm1.
#[rustfmt::skip] // one instruction per line
macro_rules! quantize_lanes_vec {
    ($j:tt, $kz:literal, $k:literal) => {
        concat!(
            "vmovups zmm", r4!($j), $kz, ", zmmword ptr [{x} + 64*", $j, "]\n",
            "vdivps zmm", r4!($j), $kz, ", zmm", r4!($j), ", zmmword ptr [{s} + 64*", $j, "]\n",
            "vmovdqu32 zmm", r8!($j), $kz, ", zmmword ptr [{zp} + 64*", $j, "]\n",
            "vpsubd zmm", r12!($j), ", zmm0, zmm", r8!($j), "\n",
            "vcvtdq2ps zmm", r12!($j), ", zmm", r12!($j), "\n",
            "vmaxps zmm", r4!($j), ", zmm", r4!($j), ", zmm", r12!($j), "\n",
            "vpsubd zmm", r12!($j), ", zmm1, zmm", r8!($j), "\n",
            "vcvtdq2ps zmm", r12!($j), ", zmm", r12!($j), "\n",
            "vminps zmm", r4!($j), ", zmm", r4!($j), ", zmm", r12!($j), "\n",
            "vcvtps2dq zmm", r4!($j), ", zmm", r4!($j), ", {{rn-sae}}\n",
            "vpaddd zmm", r4!($j), ", zmm", r4!($j), ", zmm", r8!($j), "\n",
            "vpmovdb xmmword ptr [{o} + 16*", $j, "]", $k, ", zmm", r4!($j), "\n",
        )
    };
}

fn quantize_lanes(
    x: &[f32],
    scale: &[f32],
    zero_point: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) {
    assert!(x.len() == out.len() && x.len() == scale.len() && x.len() == zero_point.len());
    if !cpu_ok() {
        return scalar::quantize_lanes(x, scale, zero_point, qmin, qmax, out);
    }
    let s = Split::new(x.len(), 16);
    // SAFETY: the CPU has AVX-512 (checked above); the four slices have the same length n, and
    // the block reads the first n elements of `x`, `scale`, `zero_point` and writes n bytes,
    // the last `rest` under k1 = k2 = low_bits(rest). Prefetches are hints that never fault.
    unsafe {
        asm512!(
            three_way!(
                "vpbroadcastd zmm0, {qmin:e}\nvpbroadcastd zmm1, {qmax:e}\n",
                quantize_lanes_vec,
                concat!(
                    "prefetcht0 [{x} + {pf}]\n",
                    "prefetcht0 [{x} + {pf} + 64]\n",
                    "prefetcht0 [{x} + {pf} + 128]\n",
                    "prefetcht0 [{x} + {pf} + 192]\n",
                    "add {x}, 256\nadd {s}, 256\nadd {zp}, 256\nadd {o}, 64\n",
                ),
                "add {x}, 64\nadd {s}, 64\nadd {zp}, 64\nadd {o}, 16\n",
                "kmovw k1, {mask:e}\nkmovw k2, {mask:e}\n"
            ),
            "vzeroupper",
            x = inout(reg) x.as_ptr() => _,
            s = inout(reg) scale.as_ptr() => _,
            zp = inout(reg) zero_point.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest) as u32,
            qmin = in(reg) qmin,
            qmax = in(reg) qmax,
            pf = in(reg) STREAM_AHEAD,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// dequantize, dequantize_lanes

/// One vector of `dequantize` in zmm(4+j): 16 codes widened with `$ext` (vpmovsxbd for i8
/// codes, vpmovzxbd for u8), converted exactly, then `(q - zero_point) * scale` as two
/// roundings like the oracle (never an FMA); scale in zmm0, zero point in zmm1.
#[rustfmt::skip] // one instruction per line
macro_rules! dequantize_vec {
    ($ext:literal, $j:tt, $kz:literal, $k:literal) => {
        concat!(
            $ext, " zmm", r4!($j), $kz, ", xmmword ptr [{c} + 16*", $j, "]\n",
            "vcvtdq2ps zmm", r4!($j), ", zmm", r4!($j), "\n",
            "vsubps zmm", r4!($j), ", zmm", r4!($j), ", zmm1\n",
            "vmulps zmm", r4!($j), ", zmm", r4!($j), ", zmm0\n",
            "vmovups zmmword ptr [{o} + 64*", $j, "]", $k, ", zmm", r4!($j), "\n",
        )
    };
}
macro_rules! dequantize_vec_i8 {
    ($j:tt, $kz:literal, $k:literal) => {
        dequantize_vec!("vpmovsxbd", $j, $kz, $k)
    };
}
macro_rules! dequantize_vec_u8 {
    ($j:tt, $kz:literal, $k:literal) => {
        dequantize_vec!("vpmovzxbd", $j, $kz, $k)
    };
}

/// As `dequantize_vec`, with the zero point and scale of each lane read from memory.
#[rustfmt::skip] // one instruction per line
macro_rules! dequantize_lanes_vec {
    ($ext:literal, $j:tt, $kz:literal, $k:literal) => {
        concat!(
            $ext, " zmm", r4!($j), $kz, ", xmmword ptr [{c} + 16*", $j, "]\n",
            "vcvtdq2ps zmm", r4!($j), ", zmm", r4!($j), "\n",
            "vsubps zmm", r4!($j), $kz, ", zmm", r4!($j), ", zmmword ptr [{zp} + 64*", $j, "]\n",
            "vmulps zmm", r4!($j), $kz, ", zmm", r4!($j), ", zmmword ptr [{s} + 64*", $j, "]\n",
            "vmovups zmmword ptr [{o} + 64*", $j, "]", $k, ", zmm", r4!($j), "\n",
        )
    };
}
macro_rules! dequantize_lanes_vec_i8 {
    ($j:tt, $kz:literal, $k:literal) => {
        dequantize_lanes_vec!("vpmovsxbd", $j, $kz, $k)
    };
}
macro_rules! dequantize_lanes_vec_u8 {
    ($j:tt, $kz:literal, $k:literal) => {
        dequantize_lanes_vec!("vpmovzxbd", $j, $kz, $k)
    };
}

/// The asm block of `dequantize` with the given per-vector body.
macro_rules! dequantize_asm {
    ($body:ident, $codes:ident, $scale:ident, $zero_point:ident, $out:ident) => {{
        let s = Split::new($codes.len(), 16);
        asm512!(
            three_way!(
                "vpbroadcastd zmm0, {scale:e}\nvpbroadcastd zmm1, {zp:e}\n",
                $body,
                "add {c}, 64\nadd {o}, 256\n",
                "add {c}, 16\nadd {o}, 64\n",
                "kmovw k1, {mask:e}\nkmovw k2, {mask:e}\n"
            ),
            "vzeroupper",
            c = inout(reg) $codes.as_ptr() => _,
            o = inout(reg) $out.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest) as u32,
            scale = in(reg) $scale.to_bits(),
            zp = in(reg) $zero_point.to_bits(),
        )
    }};
}

fn dequantize(codes: &[u8], signed: bool, scale: f32, zero_point: f32, out: &mut [f32]) {
    assert_eq!(codes.len(), out.len());
    if !cpu_ok() {
        return scalar::dequantize(codes, signed, scale, zero_point, out);
    }
    // SAFETY: the CPU has AVX-512 (checked above); `codes` and `out` have the same length n,
    // and the block reads n bytes and writes n floats, the last `rest` under k1 = k2 =
    // low_bits(rest).
    unsafe {
        if signed {
            dequantize_asm!(dequantize_vec_i8, codes, scale, zero_point, out);
        } else {
            dequantize_asm!(dequantize_vec_u8, codes, scale, zero_point, out);
        }
    }
}

macro_rules! dequantize_lanes_asm {
    ($body:ident, $codes:ident, $scale:ident, $zero_point:ident, $out:ident) => {{
        let s = Split::new($codes.len(), 16);
        asm512!(
            three_way!(
                "",
                $body,
                "add {c}, 64\nadd {s}, 256\nadd {zp}, 256\nadd {o}, 256\n",
                "add {c}, 16\nadd {s}, 64\nadd {zp}, 64\nadd {o}, 64\n",
                "kmovw k1, {mask:e}\nkmovw k2, {mask:e}\n"
            ),
            "vzeroupper",
            c = inout(reg) $codes.as_ptr() => _,
            s = inout(reg) $scale.as_ptr() => _,
            zp = inout(reg) $zero_point.as_ptr() => _,
            o = inout(reg) $out.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest) as u32,
        )
    }};
}

fn dequantize_lanes(
    codes: &[u8],
    signed: bool,
    scale: &[f32],
    zero_point: &[f32],
    out: &mut [f32],
) {
    assert!(
        codes.len() == out.len() && codes.len() == scale.len() && codes.len() == zero_point.len()
    );
    if !cpu_ok() {
        return scalar::dequantize_lanes(codes, signed, scale, zero_point, out);
    }
    // SAFETY: the CPU has AVX-512 (checked above); the four slices have the same length n, and
    // the block reads the first n elements of `codes`, `scale`, `zero_point` and writes n
    // floats, the last `rest` under k1 = k2 = low_bits(rest).
    unsafe {
        if signed {
            dequantize_lanes_asm!(dequantize_lanes_vec_i8, codes, scale, zero_point, out);
        } else {
            dequantize_lanes_asm!(dequantize_lanes_vec_u8, codes, scale, zero_point, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pack4, unpack4, pack2, unpack2

/// One vector of `pack4`: 64 codes to 32 bytes in zmm(4+j). Masked to nibbles (zmm0 = 0x0f
/// bytes), `vpmaddubsw` with weights (1, 16) (zmm1) forms `lo | hi << 4` (at most 255) in each
/// 16-bit lane, and `vpmovwb` keeps its low byte. Under a mask the missing odd code reads as
/// zero, as in the oracle.
#[rustfmt::skip] // one instruction per line
macro_rules! pack4_vec {
    ($j:tt, $kz:literal, $k:literal) => {
        concat!(
            "vmovdqu8 zmm", r4!($j), $kz, ", zmmword ptr [{c} + 64*", $j, "]\n",
            "vpandd zmm", r4!($j), ", zmm", r4!($j), ", zmm0\n",
            "vpmaddubsw zmm", r4!($j), ", zmm", r4!($j), ", zmm1\n",
            "vpmovwb ymmword ptr [{o} + 32*", $j, "]", $k, ", zmm", r4!($j), "\n",
        )
    };
}

fn pack4(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(2));
    if !cpu_ok() {
        return scalar::pack4(codes, out);
    }
    let s = Split::new(codes.len(), 64);
    // SAFETY: the CPU has AVX-512 (checked above). The block reads the n codes, the last
    // `rest` under k1 = low_bits(rest) (64 byte lanes), and writes n.div_ceil(2) ==
    // out.len() bytes, the last rest.div_ceil(2) under k2 (32 word lanes).
    unsafe {
        asm512!(
            three_way!(
                "vpbroadcastd zmm0, {nib:e}\nvpbroadcastd zmm1, {w:e}\n",
                pack4_vec,
                "add {c}, 256\nadd {o}, 128\n",
                "add {c}, 64\nadd {o}, 32\n",
                "kmovq k1, {mask}\nkmovd k2, {omask:e}\n"
            ),
            "vzeroupper",
            c = inout(reg) codes.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest),
            omask = in(reg) low_bits(s.rest.div_ceil(2)) as u32,
            nib = in(reg) 0x0f0f_0f0fu32,
            w = in(reg) 0x1001_1001u32,
        );
    }
}

/// One vector of `unpack4`: 32 packed bytes to 64 codes in zmm(4+j). Each byte `b` widened to
/// the 16-bit lane `b | b << 4` holds its low nibble in the low byte and its high nibble in
/// the high byte once masked with 0x0f0f (zmm0; `vpternlogd` 0xa8 is `(a | b) & c`): element
/// `2i` then `2i + 1` in memory order. `vpshufb` with the table in zmm1 sign-extends (or keeps)
/// each nibble.
#[rustfmt::skip] // one instruction per line
macro_rules! unpack4_vec {
    ($j:tt, $kz:literal, $k:literal) => {
        concat!(
            "vpmovzxbw zmm", r4!($j), $kz, ", ymmword ptr [{p} + 32*", $j, "]\n",
            "vpsllw zmm", r8!($j), ", zmm", r4!($j), ", 4\n",
            "vpternlogd zmm", r4!($j), ", zmm", r8!($j), ", zmm0, 0xa8\n",
            "vpshufb zmm", r4!($j), ", zmm1, zmm", r4!($j), "\n",
            "vmovdqu8 zmmword ptr [{o} + 64*", $j, "]", $k, ", zmm", r4!($j), "\n",
        )
    };
}

fn unpack4(packed: &[u8], signed: bool, out: &mut [u8]) {
    assert!(packed.len() >= out.len().div_ceil(2));
    if !cpu_ok() {
        return scalar::unpack4(packed, signed, out);
    }
    let table = if signed { &SIGNED_NIBBLES } else { &IDENTITY };
    let s = Split::new(out.len(), 64);
    // SAFETY: the CPU has AVX-512 (checked above). The block writes the n = out.len() codes,
    // the last `rest` under k2 = low_bits(rest) (64 byte lanes), and reads n.div_ceil(2) <=
    // packed.len() bytes, the last rest.div_ceil(2) under k1 (32 word lanes), and the 16-byte
    // table.
    unsafe {
        asm512!(
            three_way!(
                "vpbroadcastd zmm0, {nib:e}\nvbroadcasti32x4 zmm1, xmmword ptr [{t}]\n",
                unpack4_vec,
                "add {p}, 128\nadd {o}, 256\n",
                "add {p}, 32\nadd {o}, 64\n",
                "kmovd k1, {imask:e}\nkmovq k2, {mask}\n"
            ),
            "vzeroupper",
            p = inout(reg) packed.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest),
            imask = in(reg) low_bits(s.rest.div_ceil(2)) as u32,
            nib = in(reg) 0x0f0f_0f0fu32,
            t = in(reg) table.as_ptr(),
        );
    }
}

/// One vector of `pack2`: 64 codes to 16 bytes in zmm(4+j). Masked to 2 bits (zmm0),
/// `vpmaddubsw` with (1, 4) (zmm1) then `vpmaddwd` with (1, 16) (zmm2) form
/// `c0 | c1 << 2 | c2 << 4 | c3 << 6` in each 32-bit lane, and `vpmovdb` keeps its low byte.
#[rustfmt::skip] // one instruction per line
macro_rules! pack2_vec {
    ($j:tt, $kz:literal, $k:literal) => {
        concat!(
            "vmovdqu8 zmm", r4!($j), $kz, ", zmmword ptr [{c} + 64*", $j, "]\n",
            "vpandd zmm", r4!($j), ", zmm", r4!($j), ", zmm0\n",
            "vpmaddubsw zmm", r4!($j), ", zmm", r4!($j), ", zmm1\n",
            "vpmaddwd zmm", r4!($j), ", zmm", r4!($j), ", zmm2\n",
            "vpmovdb xmmword ptr [{o} + 16*", $j, "]", $k, ", zmm", r4!($j), "\n",
        )
    };
}

fn pack2(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(4));
    if !cpu_ok() {
        return scalar::pack2(codes, out);
    }
    let s = Split::new(codes.len(), 64);
    // SAFETY: the CPU has AVX-512 (checked above). The block reads the n codes, the last
    // `rest` under k1 = low_bits(rest) (64 byte lanes), and writes n.div_ceil(4) ==
    // out.len() bytes, the last rest.div_ceil(4) under k2 (16 dword lanes).
    unsafe {
        asm512!(
            three_way!(
                concat!(
                    "vpbroadcastd zmm0, {crumb:e}\n",
                    "vpbroadcastd zmm1, {w8:e}\n",
                    "vpbroadcastd zmm2, {w16:e}\n",
                ),
                pack2_vec,
                "add {c}, 256\nadd {o}, 64\n",
                "add {c}, 64\nadd {o}, 16\n",
                "kmovq k1, {mask}\nkmovw k2, {omask:e}\n"
            ),
            "vzeroupper",
            c = inout(reg) codes.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest),
            omask = in(reg) low_bits(s.rest.div_ceil(4)) as u32,
            crumb = in(reg) 0x0303_0303u32,
            w8 = in(reg) 0x0401_0401u32,
            w16 = in(reg) 0x0010_0001u32,
        );
    }
}

/// One vector of `unpack2`: 16 packed bytes to 64 codes in zmm(8+j). Each byte `b` widened to
/// the 32-bit lane `b | b << 6 | b << 12 | b << 18` holds crumb `k` in the low bits of byte
/// `k` once masked with 0x03030303 (zmm0; `vpternlogd` 0xfe is `a | b | c`, 0xa8 is
/// `(a | b) & c`); `vpshufb` with the table in zmm1 sign-extends (or keeps) each crumb.
#[rustfmt::skip] // one instruction per line
macro_rules! unpack2_vec {
    ($j:tt, $kz:literal, $k:literal) => {
        concat!(
            "vpmovzxbd zmm", r4!($j), $kz, ", xmmword ptr [{p} + 16*", $j, "]\n",
            "vpslld zmm", r8!($j), ", zmm", r4!($j), ", 6\n",
            "vpslld zmm", r12!($j), ", zmm", r4!($j), ", 12\n",
            "vpternlogd zmm", r8!($j), ", zmm", r4!($j), ", zmm", r12!($j), ", 0xfe\n",
            "vpslld zmm", r12!($j), ", zmm", r4!($j), ", 18\n",
            "vpternlogd zmm", r8!($j), ", zmm", r12!($j), ", zmm0, 0xa8\n",
            "vpshufb zmm", r8!($j), ", zmm1, zmm", r8!($j), "\n",
            "vmovdqu8 zmmword ptr [{o} + 64*", $j, "]", $k, ", zmm", r8!($j), "\n",
        )
    };
}

fn unpack2(packed: &[u8], signed: bool, out: &mut [u8]) {
    assert!(packed.len() >= out.len().div_ceil(4));
    if !cpu_ok() {
        return scalar::unpack2(packed, signed, out);
    }
    let table = if signed { &SIGNED_CRUMBS } else { &IDENTITY };
    let s = Split::new(out.len(), 64);
    // SAFETY: the CPU has AVX-512 (checked above). The block writes the n = out.len() codes,
    // the last `rest` under k2 = low_bits(rest) (64 byte lanes), and reads n.div_ceil(4) <=
    // packed.len() bytes, the last rest.div_ceil(4) under k1 (16 dword lanes), and the 16-byte
    // table.
    unsafe {
        asm512!(
            three_way!(
                "vpbroadcastd zmm0, {crumb:e}\nvbroadcasti32x4 zmm1, xmmword ptr [{t}]\n",
                unpack2_vec,
                "add {p}, 64\nadd {o}, 256\n",
                "add {p}, 16\nadd {o}, 64\n",
                "kmovw k1, {imask:e}\nkmovq k2, {mask}\n"
            ),
            "vzeroupper",
            p = inout(reg) packed.as_ptr() => _,
            o = inout(reg) out.as_mut_ptr() => _,
            nb = inout(reg) s.blocks => _,
            nv = inout(reg) s.vectors => _,
            tail = in(reg) s.rest,
            mask = in(reg) low_bits(s.rest),
            imask = in(reg) low_bits(s.rest.div_ceil(4)) as u32,
            crumb = in(reg) 0x0303_0303u32,
            t = in(reg) table.as_ptr(),
        );
    }
}
