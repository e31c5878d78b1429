//! Microkernel throughput in isolation, one thread, on the active ISA path (`QFAST_ISA`):
//! `dot_tile` and `linear_tile` in G MAC/s with their operands in L1/L2, `pack_panels` in
//! GB/s out of matrices in the LLC, and the peak loops of the active path.
//!
//! `cargo run --release --example tile_speed [tiles|pack|peak|gguf|gemv|fbound]` (`gemv` and
//! `fbound` only when named). A tuning aid for the microkernels; the user-facing benchmarks
//! are in `benches/`.

use qfast::simd::gemm::{
    self, Panel, Rows, TileF32, TileI32, TileWide, MR, NR, WIDE_PANELS, WIDE_ROWS,
};
use qfast::simd::{self, Kernels};
use std::hint::black_box;
use std::time::Instant;

/// Depth and rows of the tile runs, panels per task: as `matmul_int8` runs them.
const KC: usize = 1024;
const M: usize = 128;
const PANELS: usize = 64;

/// `work` per call of `f` / the best time of a call, in G/s; samples of at least 20 ms.
fn rate(work: f64, f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    let reps = (0.02 / t.elapsed().as_secs_f64()).ceil().max(1.0) as usize;
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    work / best / 1e9
}

fn tiles(kern: &Kernels) {
    let stride = gemm::row_stride(KC);
    let x: Vec<i8> = (0..M * stride).map(|i| (i * 7 % 251) as i8).collect();
    let packed: Vec<u8> = (0..PANELS * KC * NR)
        .map(|i| (i * 13 % 256) as u8)
        .collect();
    let macs = (M * KC * NR * PANELS) as f64;
    let mut tile: TileI32 = [0; MR * NR];
    let g = rate(macs, &mut || {
        for p in packed.chunks_exact(KC * NR) {
            for m0 in (0..M).step_by(MR) {
                let xr = Rows::strided(&x[m0 * stride..], MR, KC, stride);
                (kern.dot_tile)(black_box(p), &xr, &mut tile);
                black_box(&tile);
            }
        }
    });
    println!("dot_tile {MR} rows x {KC} deep: {g:.1} G MAC/s");
    if let Some(wide) = kern.dot_tile_wide {
        for kc in [KC / 2, KC] {
            let mut tile: TileWide = [0; WIDE_ROWS * WIDE_PANELS * NR];
            let group = WIDE_PANELS * kc * NR;
            let g = rate(macs, &mut || {
                // As many MACs as above: the panels' bytes, `kc` deep groups of them.
                for p in packed.chunks_exact(group) {
                    for m0 in (0..M).step_by(WIDE_ROWS) {
                        let rows = WIDE_ROWS.min(M - m0);
                        let xr = Rows::strided(&x[m0 * stride..], rows, kc, stride);
                        wide(black_box(p), &xr, &mut tile);
                        black_box(&tile);
                    }
                }
            });
            println!(
                "dot_tile_wide {WIDE_ROWS} rows x {WIDE_PANELS} panels x {kc} deep: {g:.1} G MAC/s"
            );
        }
    }
    // The linear tiles run over whole panels (the layer's full depth), as `linear` does.
    let lk = 4096;
    let lstride = gemm::row_stride(lk);
    let x: Vec<i8> = (0..M * lstride).map(|i| (i * 7 % 251) as i8).collect();
    let segs_env = std::env::var("TILE_SEG").ok().and_then(|v| v.parse().ok());
    for bits in [8u32, 4] {
        // Groups of 128 (`TILE_SEG` picks another length).
        let seg: usize = segs_env.unwrap_or(128);
        let segs = lk / seg;
        let seg_len = vec![seg as u32; segs];
        let grid = vec![0.01f32; segs * NR];
        let bytes = lk * NR * bits as usize / 8;
        let lpanels = packed.len() / bytes;
        let macs = (M * lk * NR * lpanels) as f64;
        let xsum = vec![1.0f32; MR * segs];
        let mut out: TileF32 = [0.0; MR * NR];
        let g = rate(macs, &mut || {
            for p in packed.chunks_exact(bytes) {
                let panel = Panel {
                    codes: p,
                    bits,
                    seg_len: &seg_len,
                    scale: &grid,
                    zero: &grid,
                    zscale: &grid,
                    zero_all: None,
                };
                for m0 in (0..M).step_by(MR) {
                    let xr = Rows::strided(&x[m0 * lstride..], MR, lk, lstride);
                    (kern.linear_tile)(&panel, &xr, &xsum, &mut out);
                    black_box(&out);
                }
            }
        });
        println!("linear_tile W{bits}A8 g{seg}: {g:.1} G MAC/s");
        // One row (GEMV), the panels in L2.
        let g = rate(macs / M as f64, &mut || {
            for p in packed.chunks_exact(bytes) {
                let panel = Panel {
                    codes: p,
                    bits,
                    seg_len: &seg_len,
                    scale: &grid,
                    zero: &grid,
                    zscale: &grid,
                    zero_all: None,
                };
                let xr = Rows::strided(&x, 1, lk, lstride);
                (kern.linear_tile)(&panel, &xr, &xsum[..segs], &mut out);
                black_box(&out);
            }
        });
        println!("linear_tile W{bits}A8 g{seg}, 1 row: {g:.1} G MAC/s");
        let xf: Vec<f32> = x.iter().map(|&v| v as f32 * 0.01).collect();
        let stride = lstride;
        for rows in [1, MR] {
            let g = rate(macs * rows as f64 / M as f64, &mut || {
                for p in packed.chunks_exact(bytes) {
                    let panel = Panel {
                        codes: p,
                        bits,
                        seg_len: &seg_len,
                        scale: &grid,
                        zero: &grid,
                        zscale: &grid,
                        zero_all: None,
                    };
                    let xr = Rows::strided(&xf, rows, lk, stride);
                    (kern.linear_tile_f32)(&panel, &xr, &mut out);
                    black_box(&out);
                }
            });
            println!("linear_tile_f32 W{bits}A16 g{seg}, {rows} rows: {g:.1} G MAC/s");
        }
    }
}

fn pack(kern: &Kernels) {
    // Three 4096 x 4096 matrices in turn (48 MiB: in the LLC, not in L2), packed a task's
    // block (PANELS x KC) at a time.
    let (k, n) = std::env::var("PACKN")
        .map(|s| {
            let v: usize = s.parse().unwrap();
            (v, v)
        })
        .unwrap_or((4096, 4096));
    let bs: Vec<Vec<i8>> = (0..3)
        .map(|s| {
            (0..k * n + 64)
                .map(|i| ((i * 31 + s) % 256) as u8 as i8)
                .collect()
        })
        .collect();
    let boff: usize = std::env::var("BOFF")
        .map(|s| s.parse().unwrap())
        .unwrap_or(16);
    let bs: Vec<&[i8]> = bs
        .iter()
        .map(|b| {
            let o = (b.as_ptr().align_offset(64) + boff) % 64;
            &b[o..o + k * n]
        })
        .collect();
    let mut buf = vec![0u8; PANELS * KC * NR + 64];
    let off = buf.as_ptr().align_offset(64)
        + std::env::var("OFF")
            .map(|s| s.parse().unwrap())
            .unwrap_or(0usize);
    let out = &mut buf[off..off + PANELS * KC * NR];
    let g = rate((3 * k * n) as f64, &mut || {
        for b in bs.iter() {
            for n0 in (0..n).step_by((PANELS * NR).min(n)) {
                for kb in (0..k).step_by(KC.min(k)) {
                    let kc = KC.min(k);
                    let rows = &b[kb * n..(kb + kc) * n];
                    (kern.pack_panels)(
                        rows,
                        (kc, n),
                        n0,
                        PANELS.min(n / NR),
                        kc,
                        &mut out[..PANELS.min(n / NR) * kc * NR],
                    );
                    black_box(&*out);
                }
            }
        }
    });
    println!("pack_panels {PANELS} panels x {KC} deep: {g:.1} GB/s of b");
}

/// `Q4_0 · Q8_0` rows (`qfast.gguf.dot`) with both operands in L1 (one 4096-long row pair)
/// and streaming a matrix beyond the LLC: nanoseconds and cycles-at-peak-clock per block.
fn gguf_dot(kern: &Kernels) {
    let _ = kern;
    let n = 4096;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let mut w = vec![0u8; n / 32 * 18];
    let mut v = vec![0u8; n / 32 * 34];
    qfast::gguf::quantize(qfast::gguf::GgmlType::Q4_0, &x, &mut w).unwrap();
    qfast::gguf::quantize(qfast::gguf::GgmlType::Q8_0, &x, &mut v).unwrap();
    let blocks = (n / 32) as f64;
    // 16 rows (37 KB of Q4_0) stay in L1 across calls.
    let l1: Vec<u8> = w.iter().cycle().take(16 * w.len()).copied().collect();
    let mut out = [0f32; 16];
    let g = rate(blocks * 16.0 * 100.0, &mut || {
        for _ in 0..100 {
            qfast::gguf::dot_q4_0_q8_0(black_box(&l1), &v, &mut out).unwrap();
        }
    });
    println!(
        "gguf dot Q4_0 x Q8_0, 16 rows in L1: {:.2} ns per block",
        1.0 / g
    );
    let rows = 131072; // 300 MB of Q4_0 rows
    let big: Vec<u8> = w.iter().cycle().take(rows * w.len()).copied().collect();
    let mut out = vec![0f32; rows];
    let g = rate(blocks * rows as f64, &mut || {
        qfast::gguf::dot_q4_0_q8_0(black_box(&big), &v, &mut out).unwrap();
    });
    println!(
        "gguf dot Q4_0 x Q8_0, {rows} rows from DRAM: {:.2} ns per block",
        1.0 / g
    );
}

/// GGUF quantize (`qfast.gguf.quantize`) per type: a 256 KiB tensor (in L2, repeated) and a
/// 1 GiB one (from DRAM) into an output allocated once, in G elements/s. Run with
/// `QFAST_NUM_THREADS=1` for the per-core figure.
fn gguf_quantize() {
    use qfast::gguf::GgmlType;
    for (label, n, reps) in [("in L2", 1usize << 16, 2000), ("from DRAM", 1 << 28, 1)] {
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 1001) as f32 - 500.0) / 70.0)
            .collect();
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
        ] {
            let mut out = vec![1u8; n / ty.block_size() * ty.type_size()];
            let g = rate((n * reps) as f64, &mut || {
                for _ in 0..reps {
                    qfast::gguf::quantize(ty, black_box(&x), &mut out).unwrap();
                }
            });
            println!("gguf quantize {} {label}: {g:.2} G elements/s", ty.name());
        }
    }
}

/// GEMV beyond the LLC (`gemv`): the one-row `linear_tile` (W4A8 g32 / g128 symmetric, and
/// W4A16 through `linear_tile_f32`) over 1 GiB of packed 4096-deep panels, in GB/s of codes
/// and grid read, next to the read bandwidth of a plain sum over 1 GiB in the same run.
fn gemv(kern: &Kernels) {
    let lk = 4096usize;
    let total = 1usize << 30;
    let big: Vec<u8> = (0..total).map(|i| (i * 13 % 256) as u8).collect();
    let words: Vec<u64> = (0..total / 8).map(|i| i as u64 * 7).collect();
    let x: Vec<i8> = (0..lk).map(|i| (i * 7 % 251) as i8).collect();
    let xf: Vec<f32> = x.iter().map(|&v| v as f32 * 0.01).collect();
    for round in 0..2 {
        let g = rate(total as f64, &mut || {
            black_box(words.iter().fold(0u64, |m, &v| m.wrapping_add(v)));
        });
        println!("round {round}: read bandwidth (sum over 1 GiB): {g:.1} GB/s");
        for seg in [32usize, 128] {
            let segs = lk / seg;
            let seg_len = vec![seg as u32; segs];
            let bytes = lk * NR / 2;
            let panels = total / bytes;
            let grid: Vec<f32> = (0..panels * segs * NR)
                .map(|i| 0.01 + (i % 7) as f32)
                .collect();
            let zero = vec![8.0f32; segs * NR];
            let xsum = vec![1.0f32; segs];
            let mut out: TileF32 = [0.0; MR * NR];
            let read = (total + grid.len() * 4) as f64;
            let gi = rate(read, &mut || {
                for (p, c) in big.chunks_exact(bytes).enumerate() {
                    let sc = &grid[p * segs * NR..(p + 1) * segs * NR];
                    let panel = Panel {
                        codes: c,
                        bits: 4,
                        seg_len: &seg_len,
                        scale: sc,
                        zero: &zero,
                        zscale: sc,
                        zero_all: Some(8.0),
                    };
                    let xr = Rows::new(&x, 1, lk);
                    (kern.linear_tile)(&panel, &xr, &xsum, &mut out);
                    black_box(&out);
                }
            });
            let read = (total + 2 * grid.len() * 4) as f64;
            let gf = rate(read, &mut || {
                for (p, c) in big.chunks_exact(bytes).enumerate() {
                    let sc = &grid[p * segs * NR..(p + 1) * segs * NR];
                    let panel = Panel {
                        codes: c,
                        bits: 4,
                        seg_len: &seg_len,
                        scale: sc,
                        zero: sc,
                        zscale: sc,
                        zero_all: None,
                    };
                    let xr = Rows::new(&xf, 1, lk);
                    (kern.linear_tile_f32)(&panel, &xr, &mut out);
                    black_box(&out);
                }
            });
            println!("round {round}: GEMV g{seg}: W4A8 {gi:.1} GB/s, W4A16 {gf:.1} GB/s");
        }
    }
}

/// The port bound of the float-mode GEMV (`fbound`): its decode-convert-FMA loop on registers,
/// per 64-byte block of a 4-bit panel (128 weights) the nibble split (`vpsrlw`, two `vpand`)
/// and per vector of weights `vpshufb`, `vcvtdq2ps`, `vsubps`, `vmulps`, `vfmadd231ps`
/// (the activations' broadcasts are loads in the tile): ymm on AVX2, zmm on AVX-512. Then the
/// one-row `linear_tile_f32` over W4A16 panels in L2, as a share of it, in the same run.
#[cfg(target_arch = "x86_64")]
fn float_bound(kern: &Kernels) {
    use simd::Isa;
    #[target_feature(enable = "avx2,fma")]
    unsafe fn loop_avx2(iters: u64) -> f32 {
        use std::arch::x86_64::*;
        let v = black_box(_mm256_set1_epi8(0x5a));
        let low = _mm256_set1_epi8(0x0f);
        let ctl = black_box([_mm256_set1_epi32(-128); 4]);
        let (zero, scale, xb) = black_box((
            _mm256_set1_ps(8.0),
            _mm256_set1_ps(0.5),
            _mm256_set1_ps(1e-9),
        ));
        let mut acc = [_mm256_setzero_ps(); 4];
        for _ in 0..iters {
            // SAFETY: register-only AVX2 / FMA instructions.
            unsafe {
                std::arch::asm!(
                    ".rept 2",
                    "vpsrlw {hi}, {v}, 4",
                    "vpand {lo}, {v}, {low}",
                    "vpand {hi}, {hi}, {low}",
                    "vpshufb {d}, {lo}, {c0}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a0}, {xb}, {d}",
                    "vpshufb {d}, {lo}, {c1}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a1}, {xb}, {d}",
                    "vpshufb {d}, {lo}, {c2}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a2}, {xb}, {d}",
                    "vpshufb {d}, {lo}, {c3}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a3}, {xb}, {d}",
                    "vpshufb {d}, {hi}, {c0}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a0}, {xb}, {d}",
                    "vpshufb {d}, {hi}, {c1}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a1}, {xb}, {d}",
                    "vpshufb {d}, {hi}, {c2}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a2}, {xb}, {d}",
                    "vpshufb {d}, {hi}, {c3}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a3}, {xb}, {d}",
                    ".endr",
                    v = in(ymm_reg) v, low = in(ymm_reg) low,
                    c0 = in(ymm_reg) ctl[0], c1 = in(ymm_reg) ctl[1], c2 = in(ymm_reg) ctl[2], c3 = in(ymm_reg) ctl[3],
                    zero = in(ymm_reg) zero, scale = in(ymm_reg) scale, xb = in(ymm_reg) xb,
                    lo = out(ymm_reg) _, hi = out(ymm_reg) _, d = out(ymm_reg) _,
                    a0 = inout(ymm_reg) acc[0], a1 = inout(ymm_reg) acc[1], a2 = inout(ymm_reg) acc[2], a3 = inout(ymm_reg) acc[3],
                    options(pure, nomem, nostack),
                );
            }
        }
        let mut o = [0f32; 8];
        _mm256_storeu_ps(
            o.as_mut_ptr(),
            _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])),
        );
        o[0]
    }
    #[target_feature(enable = "avx512f,avx512bw,fma")]
    unsafe fn loop_avx512(iters: u64) -> f32 {
        use std::arch::x86_64::*;
        let v = black_box(_mm512_set1_epi8(0x5a));
        let low = _mm512_set1_epi8(0x0f);
        let ctl = black_box([_mm512_set1_epi32(-128); 4]);
        let (zero, scale, xb) = black_box((
            _mm512_set1_ps(8.0),
            _mm512_set1_ps(0.5),
            _mm512_set1_ps(1e-9),
        ));
        let mut acc = [_mm512_setzero_ps(); 4];
        for _ in 0..iters {
            // SAFETY: register-only AVX-512 instructions.
            unsafe {
                std::arch::asm!(
                    "vpsrlw {hi}, {v}, 4",
                    "vpandd {lo}, {v}, {low}",
                    "vpandd {hi}, {hi}, {low}",
                    "vpshufb {d}, {lo}, {c0}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a0}, {xb}, {d}",
                    "vpshufb {d}, {lo}, {c1}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a1}, {xb}, {d}",
                    "vpshufb {d}, {lo}, {c2}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a2}, {xb}, {d}",
                    "vpshufb {d}, {lo}, {c3}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a3}, {xb}, {d}",
                    "vpshufb {d}, {hi}, {c0}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a0}, {xb}, {d}",
                    "vpshufb {d}, {hi}, {c1}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a1}, {xb}, {d}",
                    "vpshufb {d}, {hi}, {c2}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a2}, {xb}, {d}",
                    "vpshufb {d}, {hi}, {c3}", "vcvtdq2ps {d}, {d}", "vsubps {d}, {d}, {zero}", "vmulps {d}, {d}, {scale}", "vfmadd231ps {a3}, {xb}, {d}",
                    v = in(zmm_reg) v, low = in(zmm_reg) low,
                    c0 = in(zmm_reg) ctl[0], c1 = in(zmm_reg) ctl[1], c2 = in(zmm_reg) ctl[2], c3 = in(zmm_reg) ctl[3],
                    zero = in(zmm_reg) zero, scale = in(zmm_reg) scale, xb = in(zmm_reg) xb,
                    lo = out(zmm_reg) _, hi = out(zmm_reg) _, d = out(zmm_reg) _,
                    a0 = inout(zmm_reg) acc[0], a1 = inout(zmm_reg) acc[1], a2 = inout(zmm_reg) acc[2], a3 = inout(zmm_reg) acc[3],
                    options(pure, nomem, nostack),
                );
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }
    let wide = matches!(kern.isa, Isa::Avx512 | Isa::Avx512Vnni);
    if !wide && kern.isa != Isa::Avx2 {
        return;
    }
    let iters = 1u64 << 20;
    let lk = 4096;
    let seg = 128;
    let segs = lk / seg;
    let seg_len = vec![seg as u32; segs];
    let grid = vec![0.01f32; segs * NR];
    let bytes = lk * NR / 2;
    let packed: Vec<u8> = (0..32 * bytes).map(|i| (i * 13 % 256) as u8).collect();
    let xf: Vec<f32> = (0..lk).map(|i| (i % 251) as f32 * 0.01).collect();
    let mut out: TileF32 = [0.0; MR * NR];
    for round in 0..3 {
        // SAFETY: the active path has the features of the loop chosen.
        let b = rate(iters as f64 * 128.0, &mut || unsafe {
            black_box(if wide {
                loop_avx512(iters)
            } else {
                loop_avx2(iters)
            });
        });
        let g = rate((32 * lk * NR) as f64, &mut || {
            for p in packed.chunks_exact(bytes) {
                let panel = Panel {
                    codes: p,
                    bits: 4,
                    seg_len: &seg_len,
                    scale: &grid,
                    zero: &grid,
                    zscale: &grid,
                    zero_all: None,
                };
                (kern.linear_tile_f32)(&panel, &Rows::new(&xf, 1, lk), &mut out);
                black_box(&out);
            }
        });
        println!(
            "round {round}: W4A16 GEMV port bound (register loop) {b:.1} G MAC/s, the 1-row tile \
             (L2) {g:.1} G MAC/s = {:.0}%",
            100.0 * g / b
        );
    }
}

fn main() {
    let kern = simd::active().expect("an ISA path");
    let what = std::env::args().nth(1);
    let all = what.is_none();
    if all || what.as_deref() == Some("tiles") {
        tiles(kern);
    }
    if all || what.as_deref() == Some("pack") {
        pack(kern);
    }
    #[cfg(target_arch = "x86_64")]
    if what.as_deref() == Some("fbound") {
        float_bound(kern);
    }
    if what.as_deref() == Some("gemv") {
        gemv(kern);
    }
    if all || what.as_deref() == Some("gguf") {
        gguf_dot(kern);
        gguf_quantize();
    }
    let isa = kern.isa; // the active path (`QFAST_ISA`), as the benches' peak_gmacs
    if all || what.as_deref() == Some("peak") {
        for mix in simd::probe::Mix::ALL {
            if let Some(ops) = simd::probe::peak_loop(isa, mix, 1 << 20) {
                // The best of several samples, as the tiles are measured.
                let g = rate(ops as f64, &mut || {
                    simd::probe::peak_loop(isa, mix, 1 << 20);
                });
                println!("{} peak, {}: {g:.1} G MAC/s", isa.name(), mix.name());
            }
        }
        // The saturating vpmaddubsw + vpmaddwd + vpaddd mix of ONNX Runtime's AVX2 kernels.
        #[cfg(target_arch = "x86_64")]
        if let Some(ops) = simd::probe::peak_avx2_maddubs(1 << 22) {
            let t = Instant::now();
            simd::probe::peak_avx2_maddubs(1 << 22);
            let g = ops as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!("avx2 saturating vpmaddubsw peak: {g:.1} G MAC/s");
        }
    }
}
