//! GGUF Q4_0 / Q8_0 quantize (`qfast::gguf::quantize`) in G values/s on the active ISA path
//! (`QFAST_ISA`), one thread when run with `QFAST_NUM_THREADS=1`, for each size (values) on the
//! command line, plus the DRAM bandwidth of this run: a 1 GiB float32 copy with ordinary
//! stores (bytes read + write-allocated + written per second) and a 1 GiB read.
//!
//! `QFAST_NUM_THREADS=1 cargo run --release --example gguf_quantize_perf 65536 268435456`;
//! `scripts/ggml_quantize_perf.py` runs it beside ggml's `test-quantize-perf`. Output lines:
//! `isa NAME`, `TYPE VALUES GVALUES_PER_S`, `tsc HZ`, `copy GB_PER_S`, `read GB_PER_S`. Each
//! figure is the fastest single call (after 5 warm-up calls), as test-quantize-perf's
//! `min cycles` is; beyond the cache (more than 2^24 values), the fastest 64 MiB piece of
//! passes over the whole tensor, for the quantizers and the bandwidths alike.

use std::hint::black_box;
use std::time::Instant;

/// The fastest call of `f`, in seconds, as test-quantize-perf times ggml (5 calls to warm
/// up, then the minimum over single calls): calls for about 0.3 s, at least 5.
fn fastest(f: &mut dyn FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let (mut best, start) = (f64::MAX, Instant::now());
    let mut calls = 0;
    while calls < 5 || start.elapsed().as_secs_f64() < 0.3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        calls += 1;
    }
    best
}

/// The TSC's rate in Hz (test-quantize-perf counts TSC cycles), over 0.2 s of wall time.
#[cfg(target_arch = "x86_64")]
fn tsc_hz() -> f64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU.
    let (c0, t0) = (unsafe { core::arch::x86_64::_rdtsc() }, Instant::now());
    while t0.elapsed().as_secs_f64() < 0.2 {}
    let c1 = unsafe { core::arch::x86_64::_rdtsc() };
    (c1 - c0) as f64 / t0.elapsed().as_secs_f64()
}

/// The same synthetic data as test-quantize-perf (`0.1 + 2 cos(i)`).
fn data(n: usize) -> Vec<f32> {
    (0..n).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect()
}

#[cfg(target_arch = "x86_64")]
mod bw {
    use core::arch::x86_64::*;

    /// `dst = src` with ordinary (write-allocating) 32-byte stores, from `dst`'s first
    /// 32-byte boundary; volatile, so that the compiler does not turn it into `memcpy` (whose
    /// large copies use non-temporal stores).
    #[target_feature(enable = "avx")]
    pub unsafe fn copy(src: &[f32], dst: &mut [f32]) {
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = d.align_offset(32).min(8);
        let n = src.len().min(dst.len()).saturating_sub(8);
        while i < n {
            let v = _mm256_loadu_ps(s.add(i));
            core::ptr::write_volatile(d.add(i) as *mut __m256, v);
            i += 8;
        }
    }

    /// The sum of `src`'s lanes, four accumulators (only its reads matter).
    #[target_feature(enable = "avx")]
    pub unsafe fn read(src: &[f32]) -> f32 {
        let n = src.len() / 32 * 32;
        let s = src.as_ptr();
        let mut a = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < n {
            a[0] = _mm256_add_ps(a[0], _mm256_loadu_ps(s.add(i)));
            a[1] = _mm256_add_ps(a[1], _mm256_loadu_ps(s.add(i + 8)));
            a[2] = _mm256_add_ps(a[2], _mm256_loadu_ps(s.add(i + 16)));
            a[3] = _mm256_add_ps(a[3], _mm256_loadu_ps(s.add(i + 24)));
            i += 32;
        }
        let v = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), v);
        l.iter().sum()
    }
}

/// Values per timed piece of a tensor beyond the cache (64 MiB of float32): each piece's
/// data still comes from DRAM (the passes walk the whole tensor), and a piece is short
/// enough (~10-50 ms) that some run without another process's time slice inside.
const PIECE: usize = 1 << 24;

/// The fastest piece, in seconds per value, of `f(start, len)` walked over `0..n` in pieces
/// of [`PIECE`] values: one pass to warm up, then 3 timed passes.
fn fastest_piece(n: usize, f: &mut dyn FnMut(usize, usize)) -> f64 {
    let mut best = f64::MAX;
    for pass in 0..4 {
        let mut at = 0;
        while at < n {
            let len = PIECE.min(n - at);
            let t = Instant::now();
            f(at, len);
            if pass > 0 {
                best = best.min(t.elapsed().as_secs_f64() / len as f64);
            }
            at += len;
        }
    }
    best
}

fn main() {
    use qfast::gguf::GgmlType;
    let kern = qfast::simd::active().expect("an ISA path (QFAST_ISA names one this CPU has)");
    println!("isa {}", kern.isa.name());
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes in values, multiples of 32"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1 << 16, 1 << 28]
    } else {
        sizes
    };
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let x = data(largest);
    for &n in &sizes {
        assert!(n % 32 == 0, "{n} is not a multiple of 32");
        for (name, ty) in [("q4_0", GgmlType::Q4_0), ("q8_0", GgmlType::Q8_0)] {
            // Allocated and written once, outside the timing (no fresh pages to zero).
            let mut out = vec![1u8; n / ty.block_size() * ty.type_size()];
            let per_value = if n > PIECE {
                let (bs, ts) = (ty.block_size(), ty.type_size());
                fastest_piece(n, &mut |at, len| {
                    let o = &mut out[at / bs * ts..(at + len) / bs * ts];
                    qfast::gguf::quantize(ty, black_box(&x[at..at + len]), o).unwrap();
                })
            } else {
                fastest(&mut || {
                    qfast::gguf::quantize(ty, black_box(&x[..n]), &mut out).unwrap();
                }) / n as f64
            };
            println!("{name} {n} {:.4}", 1.0 / per_value / 1e9);
        }
    }
    #[cfg(target_arch = "x86_64")]
    println!("tsc {:.0}", tsc_hz());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        let n = 1 << 28;
        let src = data(n);
        let mut dst = vec![1f32; n];
        let t = fastest_piece(n, &mut |at, len| {
            // SAFETY: the CPU has AVX (checked above).
            unsafe { bw::copy(black_box(&src[at..at + len]), &mut dst[at..at + len]) }
        });
        println!("copy {:.3}", 3.0 * 4.0 / t / 1e9);
        let t = fastest_piece(n, &mut |at, len| {
            // SAFETY: as above.
            black_box(unsafe { bw::read(black_box(&src[at..at + len])) });
        });
        println!("read {:.3}", 4.0 / t / 1e9);
    }
}
