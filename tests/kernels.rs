//! Every ISA path this CPU can run, against the scalar oracle, kernel by kernel.
//!
//! A plain single-threaded program (`harness = false`): it also runs on aarch64 under QEMU user
//! mode, which hangs as soon as a program starts a thread, so no libtest, no threads. It prints
//! one line per path and exits with status 1 at the first mismatch, naming the path, kernel,
//! length, index, inputs, and the expected and actual values.
//!
//! Integer codes and float results must be bit-identical to the oracle; the one exception is
//! `minmax`'s min and max, compared with `==` (the sign of a zero may differ), and only when
//! the slice is finite (otherwise they are unspecified and only `finite == false` is checked).
//! Codes of NaN inputs are unspecified: the call must not crash, their bytes are not compared.

use qfast::kernels::layout::{line_bytes, pack_line, unpack_line};
use qfast::kernels::params::code_range;
use qfast::simd::gemm::{self, Panel, Rows, MR, NR, WIDE_PANELS, WIDE_ROWS};
use qfast::simd::{self, scalar, Isa, Kernels, MinMax, QParams};
use std::fmt::Debug;
use std::process::exit;

/// splitmix64: tiny, dependency-free, good enough to spread test inputs.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }

    /// Uniform in `0..n`, `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + self.below((hi - lo) as usize + 1) as i32
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.u32() >> 8) as f32 / (1u32 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// A positive float with a random mantissa and an exponent in `lo..=hi` (both normal).
    fn log_uniform(&mut self, lo: i32, hi: i32) -> f32 {
        let e = self.int(lo, hi);
        f32::from_bits((((e + 127) as u32) << 23) | (self.u32() >> 9))
    }

    fn sign(&mut self, v: f32) -> f32 {
        if self.chance(2) {
            -v
        } else {
            v
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u32() as u8).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Elements around the output slice that the kernel must leave alone.
const GUARD: usize = 24;

/// `data` copied into a fresh buffer at element offset `off` (misaligning it), with padding on
/// both sides; the slice is `buf[off..off + data.len()]`.
fn placed<T: Copy>(data: &[T], off: usize, pad: T) -> Vec<T> {
    let mut buf = vec![pad; off + data.len() + GUARD];
    buf[off..off + data.len()].copy_from_slice(data);
    buf
}

/// A guarded output buffer: `len` elements at offset `off`, the rest set to `fill`.
struct Out<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + PartialEq + Debug> Out<T> {
    fn new(len: usize, off: usize, fill: T) -> Self {
        Out {
            buf: vec![fill; off + len + GUARD],
            off,
            len,
        }
    }

    fn slice(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }

    fn got(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }

    /// The first guard element the kernel wrote, if any.
    fn overwritten(&self, fill: T) -> Option<usize> {
        (0..self.buf.len())
            .filter(|&i| i < self.off || i >= self.off + self.len)
            .find(|&i| self.buf[i] != fill)
    }
}

const BYTE_FILL: u8 = 0xa5;
const F32_FILL: f32 = -1.2345e-7;
const MINMAX_FILL: MinMax = MinMax {
    min: F32_FILL,
    max: F32_FILL,
    finite: false,
};

/// One path under test, with its counters.
struct Check<'a> {
    isa: Isa,
    k: &'a Kernels,
    rng: Rng,
    calls: u64,
    values: u64,
}

impl Check<'_> {
    fn fail(&self, kernel: &str, len: usize, what: &str) -> ! {
        eprintln!(
            "MISMATCH on path `{}`, kernel `{kernel}`, length {len}: {what}",
            self.isa.name()
        );
        eprintln!("(the scalar kernel is the reference; see tests/kernels.rs)");
        exit(1);
    }

    fn off(&mut self) -> usize {
        self.rng.below(17)
    }

    /// Compares `got` with `expected` element by element, skipping indices for which `skip`
    /// holds; `inputs(i)` describes the inputs of element `i` for the report.
    fn compare<T: PartialEq + Debug>(
        &mut self,
        kernel: &str,
        expected: &[T],
        got: &[T],
        skip: impl Fn(usize) -> bool,
        inputs: impl Fn(usize) -> String,
    ) {
        assert_eq!(expected.len(), got.len());
        for i in 0..expected.len() {
            if skip(i) {
                continue;
            }
            if expected[i] != got[i] {
                let what = format!(
                    "index {i}: {}; expected {:?}, got {:?}",
                    inputs(i),
                    expected[i],
                    got[i]
                );
                self.fail(kernel, expected.len(), &what);
            }
            self.values += 1;
        }
        self.calls += 1;
    }

    fn guards<T: Copy + PartialEq + Debug>(&self, kernel: &str, out: &Out<T>, fill: T) {
        if let Some(i) = out.overwritten(fill) {
            let what = format!(
                "wrote outside its output slice: buffer index {i} (slice at {}..{}) = {:?}",
                out.off,
                out.off + out.len,
                out.buf[i]
            );
            self.fail(kernel, out.len, &what);
        }
    }

    // -----------------------------------------------------------------------------------------
    // minmax, minmax_lanes

    fn minmax(&mut self, x: &[f32]) {
        let n = x.len();
        let expected = scalar::minmax(x);
        let off = self.off();
        let buf = placed(x, off, f32::NAN);
        let got = (self.k.minmax)(&buf[off..off + n]);
        let bad = || x.iter().position(|v| !v.is_finite());
        if got.finite != expected.finite {
            let what = format!(
                "finite: expected {}, got {} (first non-finite at {:?})",
                expected.finite,
                got.finite,
                bad()
            );
            self.fail("minmax", n, &what);
        }
        if expected.finite && (got.min != expected.min || got.max != expected.max) {
            let what = format!("expected {expected:?}, got {got:?}");
            self.fail("minmax", n, &what);
        }
        self.calls += 1;
        self.values += 1;
    }

    fn minmax_lanes(&mut self, x: &[f32], min: &[f32], max: &[f32]) {
        let n = x.len();
        let (mut emin, mut emax) = (min.to_vec(), max.to_vec());
        let expected = scalar::minmax_lanes(x, &mut emin, &mut emax);
        let off = self.off();
        let buf = placed(x, off, f32::NAN);
        let (o1, o2) = (self.off(), self.off());
        let mut gmin = Out::new(n, o1, F32_FILL);
        gmin.slice().copy_from_slice(min);
        let mut gmax = Out::new(n, o2, F32_FILL);
        gmax.slice().copy_from_slice(max);
        let got = (self.k.minmax_lanes)(&buf[off..off + n], gmin.slice(), gmax.slice());
        self.guards("minmax_lanes", &gmin, F32_FILL);
        self.guards("minmax_lanes", &gmax, F32_FILL);
        if got != expected {
            let first = x.iter().position(|v| !v.is_finite());
            let what =
                format!("finite: expected {expected}, got {got} (first non-finite at {first:?})");
            self.fail("minmax_lanes", n, &what);
        }
        if expected {
            let show = |i: usize| format!("x = {:e}, min = {:e}, max = {:e}", x[i], min[i], max[i]);
            self.compare("minmax_lanes (min)", &emin, gmin.got(), |_| false, show);
            self.compare("minmax_lanes (max)", &emax, gmax.got(), |_| false, show);
        }
    }

    /// Both minmax kernels on `x`; the lanes version from ±Inf and from random bounds.
    fn minmax_both(&mut self, x: &[f32]) {
        let n = x.len();
        self.minmax(x);
        let (lo, hi) = (vec![f32::INFINITY; n], vec![f32::NEG_INFINITY; n]);
        self.minmax_lanes(x, &lo, &hi);
        let lo: Vec<f32> = (0..n).map(|_| self.rng.uniform(-2.0, 1.0)).collect();
        let hi: Vec<f32> = lo.iter().map(|&l| l + self.rng.uniform(0.0, 2.0)).collect();
        self.minmax_lanes(x, &lo, &hi);
    }

    // -----------------------------------------------------------------------------------------
    // quantize, quantize_lanes

    fn quantize(&mut self, x: &[f32], p: QParams) {
        let n = x.len();
        let mut expected = vec![0u8; n];
        scalar::quantize(x, &p, &mut expected);
        let off = self.off();
        let buf = placed(x, off, f32::NAN);
        let mut out = Out::new(n, self.off(), BYTE_FILL);
        (self.k.quantize)(&buf[off..off + n], &p, out.slice());
        self.guards("quantize", &out, BYTE_FILL);
        let show = |i: usize| {
            format!(
                "x = {:e} ({:#010x}), scale = {:e} ({:#010x}), zero_point = {}, qmin = {}, \
                 qmax = {}",
                x[i],
                x[i].to_bits(),
                p.scale,
                p.scale.to_bits(),
                p.zero_point,
                p.qmin,
                p.qmax
            )
        };
        self.compare("quantize", &expected, out.got(), |i| x[i].is_nan(), show);

        // quantize_lanes with the same parameters in every lane.
        let scale = vec![p.scale; n];
        let zp = vec![p.zero_point; n];
        self.quantize_lanes(x, &scale, &zp, p.qmin, p.qmax);
    }

    fn quantize_lanes(&mut self, x: &[f32], scale: &[f32], zp: &[i32], qmin: i32, qmax: i32) {
        let n = x.len();
        let mut expected = vec![0u8; n];
        scalar::quantize_lanes(x, scale, zp, qmin, qmax, &mut expected);
        let (o1, o2, o3) = (self.off(), self.off(), self.off());
        let (bx, bs, bz) = (
            placed(x, o1, f32::NAN),
            placed(scale, o2, 0.0),
            placed(zp, o3, 0),
        );
        let mut out = Out::new(n, self.off(), BYTE_FILL);
        (self.k.quantize_lanes)(
            &bx[o1..o1 + n],
            &bs[o2..o2 + n],
            &bz[o3..o3 + n],
            qmin,
            qmax,
            out.slice(),
        );
        self.guards("quantize_lanes", &out, BYTE_FILL);
        let show = |i: usize| {
            format!(
                "x = {:e} ({:#010x}), scale = {:e} ({:#010x}), zero_point = {}, qmin = {qmin}, \
                 qmax = {qmax}",
                x[i],
                x[i].to_bits(),
                scale[i],
                scale[i].to_bits(),
                zp[i]
            )
        };
        self.compare(
            "quantize_lanes",
            &expected,
            out.got(),
            |i| x[i].is_nan(),
            show,
        );
    }

    // -----------------------------------------------------------------------------------------
    // minmax_groups, quantize_groups

    /// `minmax_groups` against the oracle's and against this path's `minmax` group by group.
    fn minmax_groups(&mut self, x: &[f32], group_size: usize) {
        let n = x.len();
        let groups = n.div_ceil(group_size);
        let mut expected = vec![MinMax::EMPTY; groups];
        scalar::minmax_groups(x, group_size, &mut expected);
        let composed: Vec<MinMax> = x.chunks(group_size).map(|g| (self.k.minmax)(g)).collect();
        let off = self.off();
        let buf = placed(x, off, f32::NAN);
        let mut out = Out::new(groups, self.off(), MINMAX_FILL);
        (self.k.minmax_groups)(&buf[off..off + n], group_size, out.slice());
        let kernel = format!("minmax_groups (group_size {group_size})");
        self.guards(&kernel, &out, MINMAX_FILL);
        for (what, reference) in [("scalar", &expected), ("per-slice minmax", &composed)] {
            for (g, (e, got)) in reference.iter().zip(out.got()).enumerate() {
                let same =
                    e.finite == got.finite && (!e.finite || (e.min == got.min && e.max == got.max));
                if !same || e.finite != expected[g].finite {
                    let what = format!("group {g}: expected ({what}) {e:?}, got {got:?}");
                    self.fail(&kernel, n, &what);
                }
                self.values += 1;
            }
        }
        self.calls += 1;
    }

    /// `quantize_groups` against the oracle's and against this path's `quantize` group by
    /// group.
    fn quantize_groups(&mut self, x: &[f32], group_size: usize, grid: &[QParams]) {
        let n = x.len();
        let mut expected = vec![0u8; n];
        scalar::quantize_groups(x, group_size, grid, &mut expected);
        let mut composed = vec![0u8; n];
        let pieces = x.chunks(group_size).zip(composed.chunks_mut(group_size));
        for ((g, o), p) in pieces.zip(grid) {
            (self.k.quantize)(g, p, o);
        }
        let (o1, o2) = (self.off(), self.off());
        let bx = placed(x, o1, f32::NAN);
        let bg = placed(
            grid,
            o2,
            QParams {
                scale: f32::NAN,
                zero_point: 0,
                qmin: 0,
                qmax: 0,
            },
        );
        let mut out = Out::new(n, self.off(), BYTE_FILL);
        (self.k.quantize_groups)(
            &bx[o1..o1 + n],
            group_size,
            &bg[o2..o2 + grid.len()],
            out.slice(),
        );
        let kernel = format!("quantize_groups (group_size {group_size})");
        self.guards(&kernel, &out, BYTE_FILL);
        let show = |i: usize| {
            let p = grid[i / group_size];
            format!(
                "group {}, x = {:e} ({:#010x}), {p:?}",
                i / group_size,
                x[i],
                x[i].to_bits()
            )
        };
        self.compare(&kernel, &expected, out.got(), |i| x[i].is_nan(), show);
        let kernel = format!("{kernel} vs per-slice quantize");
        self.compare(&kernel, &composed, out.got(), |i| x[i].is_nan(), show);
    }

    // -----------------------------------------------------------------------------------------
    // dequantize, dequantize_lanes

    fn dequantize(&mut self, codes: &[u8], signed: bool, scale: f32, zp: f32) {
        let n = codes.len();
        let mut expected = vec![0f32; n];
        scalar::dequantize(codes, signed, scale, zp, &mut expected);
        let off = self.off();
        let buf = placed(codes, off, 0x5a);
        let mut out = Out::new(n, self.off(), F32_FILL);
        (self.k.dequantize)(&buf[off..off + n], signed, scale, zp, out.slice());
        self.guards("dequantize", &out, F32_FILL);
        let (e, g) = (bits(&expected), bits(out.got()));
        let show = |i: usize| {
            format!(
                "code = {} (signed: {signed}), scale = {scale:e} ({:#010x}), zero_point = \
                 {zp:e} ({:#010x}); as floats expected {:e}, got {:e}",
                codes[i],
                scale.to_bits(),
                zp.to_bits(),
                expected[i],
                out.got()[i]
            )
        };
        self.compare("dequantize", &e, &g, |_| false, show);

        let scales = vec![scale; n];
        let zps = vec![zp; n];
        self.dequantize_lanes(codes, signed, &scales, &zps);
    }

    fn dequantize_lanes(&mut self, codes: &[u8], signed: bool, scale: &[f32], zp: &[f32]) {
        let n = codes.len();
        let mut expected = vec![0f32; n];
        scalar::dequantize_lanes(codes, signed, scale, zp, &mut expected);
        let (o1, o2, o3) = (self.off(), self.off(), self.off());
        let (bc, bs, bz) = (
            placed(codes, o1, 0x5a),
            placed(scale, o2, 0.0),
            placed(zp, o3, 0.0),
        );
        let mut out = Out::new(n, self.off(), F32_FILL);
        (self.k.dequantize_lanes)(
            &bc[o1..o1 + n],
            signed,
            &bs[o2..o2 + n],
            &bz[o3..o3 + n],
            out.slice(),
        );
        self.guards("dequantize_lanes", &out, F32_FILL);
        let (e, g) = (bits(&expected), bits(out.got()));
        let show = |i: usize| {
            format!(
                "code = {} (signed: {signed}), scale = {:e}, zero_point = {:e}; as floats \
                 expected {:e}, got {:e}",
                codes[i],
                scale[i],
                zp[i],
                expected[i],
                out.got()[i]
            )
        };
        self.compare("dequantize_lanes", &e, &g, |_| false, show);
    }

    // -----------------------------------------------------------------------------------------
    // pack4, unpack4, pack2, unpack2

    /// `pack` of `codes`, then `unpack` of random packed bytes, for `per` codes per byte.
    fn pack_unpack(&mut self, codes: &[u8], per: usize) {
        let n = codes.len();
        let (k, s) = (self.k, &scalar::KERNELS);
        let (name, pack, unpack, spack, sunpack) = if per == 2 {
            ("4", k.pack4, k.unpack4, s.pack4, s.unpack4)
        } else {
            ("2", k.pack2, k.unpack2, s.pack2, s.unpack2)
        };
        let m = n.div_ceil(per);

        let mut expected = vec![0u8; m];
        spack(codes, &mut expected);
        let off = self.off();
        let buf = placed(codes, off, 0xff);
        let mut out = Out::new(m, self.off(), BYTE_FILL);
        pack(&buf[off..off + n], out.slice());
        let kernel = format!("pack{name}");
        self.guards(&kernel, &out, BYTE_FILL);
        let show = |i: usize| format!("codes {:x?}", &codes[i * per..n.min(i * per + per)]);
        self.compare(&kernel, &expected, out.got(), |_| false, show);

        // unpack: exactly m packed bytes (sometimes more), both signs.
        let extra = self.rng.below(3) * self.rng.below(2);
        let packed = self.rng.bytes(m + extra);
        for signed in [false, true] {
            let mut expected = vec![0u8; n];
            sunpack(&packed, signed, &mut expected);
            let off = self.off();
            let buf = placed(&packed, off, 0x00);
            let mut out = Out::new(n, self.off(), BYTE_FILL);
            unpack(&buf[off..off + packed.len()], signed, out.slice());
            let kernel = format!("unpack{name} (signed: {signed})");
            self.guards(&kernel, &out, BYTE_FILL);
            let show = |i: usize| format!("packed byte {:#04x}", packed[i / per]);
            self.compare(&kernel, &expected, out.got(), |_| false, show);
        }
    }

    /// `layout::pack_line` / `unpack_line` of `bits`-bit codes on this path against the
    /// documented bit stream, built and read one bit at a time: code `i` in bits
    /// `[i * bits, (i + 1) * bits)`, bit 0 the lowest bit of byte 0, zero padding.
    fn dense(&mut self, codes: &[u8], bits: u32) {
        let n = codes.len();
        let b = bits as usize;
        let m = line_bytes(n, bits);
        let mut expected = vec![0u8; m];
        for (i, &c) in codes.iter().enumerate() {
            for j in 0..b {
                let at = i * b + j;
                expected[at / 8] |= ((c >> j) & 1) << (at % 8);
            }
        }
        let mut got = vec![0xa5u8; m];
        pack_line(self.k, bits, codes, &mut got);
        let kernel = format!("pack_line ({bits}-bit)");
        let show = |i: usize| format!("byte {i} of {n} codes {:x?}", &codes[..n.min(16)]);
        self.compare(&kernel, &expected, &got, |_| false, show);
        for signed in [false, true] {
            let want: Vec<u8> = codes
                .iter()
                .map(|&c| {
                    let v = c & ((1u16 << bits) - 1) as u8;
                    if signed && bits < 8 && v >> (bits - 1) == 1 {
                        v.wrapping_sub((1u16 << bits) as u8)
                    } else {
                        v
                    }
                })
                .collect();
            let mut back = vec![0x5au8; n];
            unpack_line(self.k, bits, &expected, signed, &mut back);
            let kernel = format!("unpack_line ({bits}-bit, signed: {signed})");
            self.compare(
                &kernel,
                &want,
                &back,
                |_| false,
                |i| format!("code {:#04x}", codes[i]),
            );
        }
    }

    /// Valid codes of `bits` (2 or 4) survive this path's pack then unpack.
    fn round_trip(&mut self, n: usize, bits: u32) {
        for signed in [false, true] {
            let (qmin, qmax) = code_range(bits, signed);
            let codes: Vec<u8> = (0..n).map(|_| self.rng.int(qmin, qmax) as u8).collect();
            let per = (8 / bits) as usize;
            let mut packed = vec![0u8; n.div_ceil(per)];
            let mut back = vec![0u8; n];
            if bits == 4 {
                (self.k.pack4)(&codes, &mut packed);
                (self.k.unpack4)(&packed, signed, &mut back);
            } else {
                (self.k.pack2)(&codes, &mut packed);
                (self.k.unpack2)(&packed, signed, &mut back);
            }
            let kernel = format!("pack{bits} then unpack{bits} (signed: {signed})");
            self.compare(
                &kernel,
                &codes,
                &back,
                |_| false,
                |i| format!("code {:#04x}", codes[i]),
            );
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// A random grid: bits in 2..=8, signed or not, a zero point anywhere in the code range
/// (0 for most signed grids, as `qfast.quantize` makes them), and a scale.
fn random_params(rng: &mut Rng, bits: u32, signed: bool) -> QParams {
    let (qmin, qmax) = code_range(bits, signed);
    let zero_point = match rng.below(5) {
        0 => qmin,
        1 => qmax,
        2 if signed => 0,
        2 => (qmin + qmax) / 2,
        _ => rng.int(qmin, qmax),
    };
    QParams {
        scale: random_scale(rng),
        zero_point,
        qmin,
        qmax,
    }
}

fn random_scale(rng: &mut Rng) -> f32 {
    match rng.below(8) {
        // Powers of two make `(k + 0.5) * scale` exact ties.
        0 | 1 => 2f32.powi(rng.int(-30, 30)),
        2 => f32::MIN_POSITIVE,
        3 => f32::from_bits(rng.int(1, 0x7f_ffff) as u32), // subnormal
        _ => rng.log_uniform(-40, 40),
    }
}

/// A scale for the reciprocal fast path of `quantize`: mostly one whose reciprocal is inexact,
/// of any magnitude from about 1e-30 to 1e30, and the extremes where `1 / scale` leaves the
/// normal range (subnormal scales, scales above 2^126) or just stays in it.
fn wide_scale(rng: &mut Rng) -> f32 {
    match rng.below(10) {
        0 => f32::from_bits(rng.int(1, 0x7f_ffff) as u32), // subnormal: 1 / scale overflows
        1 => rng.log_uniform(-126, -124),                  // 1 / scale near the top
        2 => rng.log_uniform(124, 127),                    // 1 / scale subnormal or near it
        _ => rng.log_uniform(-100, 100),
    }
}

/// `x` moved by `ulps` units in the last place (away from zero for positive `ulps`).
fn nudge(x: f32, ulps: i32) -> f32 {
    f32::from_bits(x.to_bits().wrapping_add_signed(ulps))
}

/// Inputs at and around the ties of `x / scale`, where a quotient computed as `x * (1 / scale)`
/// can round to the other side of a half-integer than the division: `fl((k + 1/2) * scale)`
/// and the floats up to three ulps either side, for codes `k` across the grid, half of them at
/// its clamp edges (`k + 1/2` at `qmin - zero_point - 1/2` and `qmax - zero_point + 1/2`).
/// When `sparse`, only one element in about 40 is such a tie and the rest are ordinary grid
/// values, so that most vectors (and blocks of vectors) hold at most one.
fn tie_data(rng: &mut Rng, p: &QParams, n: usize, sparse: bool) -> Vec<f32> {
    let s = p.scale;
    let (lo, hi) = (p.qmin - p.zero_point, p.qmax - p.zero_point);
    (0..n)
        .map(|_| {
            if sparse && !rng.chance(40) {
                return s * rng.uniform((lo - 2) as f32, (hi + 2) as f32);
            }
            let k = match rng.below(4) {
                0 => lo - 1,
                1 => hi,
                _ => rng.int(lo - 2, hi + 1),
            };
            let tie = (k as f32 + 0.5) * s;
            let ulps = match rng.below(3) {
                0 => 0,
                1 => rng.pick(&[-1, 1]),
                _ => rng.int(-3, 3),
            };
            nudge(tie, ulps)
        })
        .collect()
}

/// `blocks` blocks of 64 elements, each holding one tie (as in [`tie_data`]) at a random index
/// `j < 8` among values `k * scale` (far from ties), and a NaN or ±Inf at `8 + j` and
/// `16 + j`: the same lane of the next vector for 8- and 16-lane vectors. A kernel that tests
/// a whole block at once must not let the non-finite lane hide the tie.
fn lone_ties(rng: &mut Rng, p: &QParams, blocks: usize) -> Vec<f32> {
    let (lo, hi) = (p.qmin - p.zero_point, p.qmax - p.zero_point);
    let mut x = Vec::with_capacity(64 * blocks);
    for _ in 0..blocks {
        let mut block: Vec<f32> = (0..64)
            .map(|_| rng.int(lo - 1, hi + 1) as f32 * p.scale)
            .collect();
        let j = rng.below(8);
        block[j] = tie_data(rng, p, 1, false)[0];
        block[8 + j] = rng.pick(&NONFINITE);
        block[16 + j] = rng.pick(&NONFINITE);
        x.extend(block);
    }
    x
}

/// The kinds of `quantize` input, for the grid `p` (`x / scale` spans its codes and beyond).
const QUANT_KINDS: usize = 7;

fn quant_data(rng: &mut Rng, kind: usize, n: usize, p: &QParams) -> Vec<f32> {
    let s = p.scale;
    let lo = (p.qmin - p.zero_point) as f32;
    let hi = (p.qmax - p.zero_point) as f32;
    let edges = [
        lo * s,
        hi * s,
        (lo - 0.5) * s,
        (hi + 0.5) * s,
        (lo + 0.5) * s,
        (hi - 0.5) * s,
        (lo - 1.0) * s,
        (hi + 1.0) * s,
        0.0,
        -0.0,
        f32::MAX,
        -f32::MAX,
        1e30,
        -1e30,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(1),
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    match kind {
        // Anywhere on the grid and a little beyond both clamp edges.
        0 => (0..n)
            .map(|_| s * rng.uniform(lo - 3.0, hi + 3.0))
            .collect(),
        // Exact .5 ties of x / scale (exact when the scale is a power of two), both signs.
        1 => (0..n)
            .map(|_| {
                let k = rng.int(lo as i32 - 2, hi as i32 + 1) as f32;
                let v = (k + 0.5) * s;
                if rng.chance(4) {
                    -v
                } else {
                    v
                }
            })
            .collect(),
        // On and beyond the clamp edges, huge values (x / scale = ±inf), zeros, infinities.
        2 => (0..n).map(|_| rng.pick(&edges)).collect(),
        // Subnormal and tiny values.
        3 => (0..n)
            .map(|_| {
                let v = if rng.chance(2) {
                    f32::from_bits(rng.int(0, 0x7f_ffff) as u32)
                } else {
                    rng.log_uniform(-126, -100)
                };
                rng.sign(v)
            })
            .collect(),
        // Degenerate slices: all equal, all zero, all -0.0, one huge outlier.
        4 => {
            let v = s * rng.uniform(lo, hi);
            let mut x = match rng.below(4) {
                0 => vec![v; n],
                1 => vec![0.0; n],
                2 => vec![-0.0; n],
                _ => (0..n).map(|_| s * rng.uniform(-1.0, 1.0)).collect(),
            };
            if n > 0 && rng.chance(2) {
                let i = rng.below(n);
                x[i] = rng.pick(&[f32::MAX, -f32::MAX, 3e38, -1e30, 1e20]);
            }
            x
        }
        // Random values of any magnitude.
        5 => (0..n)
            .map(|_| {
                let v = rng.log_uniform(-126, 127);
                rng.sign(v)
            })
            .collect(),
        // NaN and ±Inf among grid values (NaN codes are not compared).
        _ => (0..n)
            .map(|_| match rng.below(8) {
                0 => f32::NAN,
                1 => -f32::NAN,
                2 => f32::INFINITY,
                3 => f32::NEG_INFINITY,
                _ => s * rng.uniform(lo - 3.0, hi + 3.0),
            })
            .collect(),
    }
}

/// Finite inputs for `minmax`, of several shapes.
fn minmax_data(rng: &mut Rng, kind: usize, n: usize) -> Vec<f32> {
    match kind % 6 {
        0 => (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(),
        1 => {
            let a = rng.log_uniform(-20, 20);
            (0..n).map(|_| rng.uniform(0.5 * a, a)).collect() // all positive
        }
        2 => {
            let a = rng.log_uniform(-20, 20);
            (0..n).map(|_| -rng.uniform(0.5 * a, a)).collect() // all negative
        }
        3 => (0..n)
            .map(|_| match rng.below(6) {
                0 => f32::MAX,
                1 => -f32::MAX,
                2 => 0.0,
                3 => -0.0,
                4 => {
                    let v = f32::from_bits(rng.int(1, 0x7f_ffff) as u32);
                    rng.sign(v)
                }
                _ => {
                    let v = rng.log_uniform(-126, 127);
                    rng.sign(v)
                }
            })
            .collect(),
        4 => {
            let v = rng.uniform(-5.0, 5.0);
            let mut x = vec![if rng.chance(3) { -0.0 } else { v }; n];
            if n > 0 && rng.chance(2) {
                let i = rng.below(n);
                x[i] = rng.pick(&[f32::MAX, -f32::MAX, 1e30, -1e-30]);
            }
            x
        }
        _ => (0..n)
            .map(|_| {
                let v = f32::from_bits(rng.int(0, 0x7f_ffff) as u32);
                rng.sign(v)
            })
            .collect(),
    }
}

const GROUP_SIZES: [usize; 16] = [
    1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 128, 129, 256,
];

const NONFINITE: [f32; 5] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::from_bits(0xffc0_0000), // -NaN
    f32::from_bits(0x7f80_0001), // signaling NaN
];

// ---------------------------------------------------------------------------------------------
// The suite, for one path

fn run(isa: Isa) -> (u64, u64) {
    let k = isa.kernels().expect("available paths have kernels");
    assert_eq!(
        k.isa,
        isa,
        "the table of `{}` says it is `{:?}`",
        isa.name(),
        k.isa
    );
    let mut c = Check {
        isa,
        k,
        rng: Rng(0x5eed ^ isa as u64),
        calls: 0,
        values: 0,
    };
    let mut lengths: Vec<usize> = (0..=300).collect();
    lengths.extend([511, 1023, 1024, 4097, 65537]);

    // Every length, rotating through grids and kinds of data.
    for (step, &n) in lengths.iter().enumerate() {
        let reps = if n > 1000 { 1 } else { 2 };
        for rep in 0..reps {
            let bits = 2 + ((step + rep) % 7) as u32;
            let signed = (step / 7 + rep) % 2 == 0;
            let p = random_params(&mut c.rng, bits, signed);
            let x = quant_data(&mut c.rng, (step + 3 * rep) % QUANT_KINDS, n, &p);
            c.quantize(&x, p);

            // Per-element scales and zero points.
            let (qmin, qmax) = (p.qmin, p.qmax);
            let scale: Vec<f32> = (0..n).map(|_| random_scale(&mut c.rng)).collect();
            let zp: Vec<i32> = (0..n).map(|_| c.rng.int(qmin, qmax)).collect();
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    let q = c
                        .rng
                        .uniform((qmin - zp[i] - 2) as f32, (qmax - zp[i] + 2) as f32);
                    if c.rng.chance(4) {
                        (q.round() + 0.5) * scale[i]
                    } else {
                        q * scale[i]
                    }
                })
                .collect();
            c.quantize_lanes(&x, &scale, &zp, qmin, qmax);

            let x = minmax_data(&mut c.rng, step + rep, n);
            c.minmax_both(&x);
            if n > 0 {
                let mut x = x;
                let i = c.rng.below(n);
                x[i] = c.rng.pick(&NONFINITE);
                c.minmax_both(&x);
            }

            let codes = c.rng.bytes(n);
            let signed = rep == 0;
            let scale = random_scale(&mut c.rng);
            let scale = c.rng.sign(scale);
            let zp = match c.rng.below(4) {
                0 => c.rng.int(-128, 255) as f32,
                1 => c.rng.int(-128, 255) as f32 + 0.5,
                2 => -0.0,
                _ => c.rng.uniform(-200.0, 300.0),
            };
            c.dequantize(&codes, signed, scale, zp);
            let scales: Vec<f32> = (0..n)
                .map(|_| {
                    let s = random_scale(&mut c.rng);
                    c.rng.sign(s)
                })
                .collect();
            let zps: Vec<f32> = (0..n).map(|_| c.rng.uniform(-130.0, 260.0)).collect();
            c.dequantize_lanes(&codes, signed, &scales, &zps);

            c.pack_unpack(&codes, 2);
            c.pack_unpack(&codes, 4);
            c.round_trip(n, 4);
            c.round_trip(n, 2);
            c.dense(&codes, 2 + (step % 7) as u32);
        }
    }

    // Every grid, zero points across its range, every kind of data.
    for bits in 2..=8u32 {
        for signed in [false, true] {
            let (qmin, qmax) = code_range(bits, signed);
            let step = ((qmax - qmin) / 6).max(1) as usize;
            let mut zps: Vec<i32> = (qmin..=qmax).step_by(step).collect();
            zps.push(qmax);
            for zp in zps {
                for kind in 0..QUANT_KINDS {
                    let n = c.rng.below(200);
                    let mut p = random_params(&mut c.rng, bits, signed);
                    p.zero_point = zp;
                    let x = quant_data(&mut c.rng, kind, n, &p);
                    c.quantize(&x, p);
                }
            }
        }
    }

    // The reciprocal fast path of `quantize` (see `src/simd/x86_64/avx2/quant.rs`): ties of
    // x / scale and their neighbours, for scales with inexact reciprocals and of every
    // magnitude, on every kind of grid, in slices long enough for whole blocks of vectors and
    // with every kind of remainder.
    let mut scales = vec![
        0.1f32,
        1.0 / 3.0,
        0.024_721_06,
        0.7,
        3.0,
        1e-3,
        1e-30,
        1e30,
        f32::MIN_POSITIVE,
        1.5 * f32::MIN_POSITIVE,
        2f32.powi(126),
        1.5 * 2f32.powi(126),
        2f32.powi(127),
        f32::MAX,
        f32::from_bits(0x0040_0000), // subnormal
    ];
    scales.extend((0..60).map(|_| wide_scale(&mut c.rng)));
    for scale in scales {
        for bits in [8, 4, 2, 5] {
            for signed in [true, false] {
                let mut p = random_params(&mut c.rng, bits, signed);
                p.scale = scale;
                for kind in 0..3 {
                    let n = c.rng.pick(&[64 * 4 + 13, 1000, 777, 31]) + c.rng.below(70);
                    let mut x = tie_data(&mut c.rng, &p, n, kind == 1);
                    if kind == 2 {
                        // NaN and ±Inf among the ties: they must not hide a tie from the
                        // test of its vector or block.
                        for _ in 0..n / 8 {
                            let i = c.rng.below(n);
                            x[i] = c.rng.pick(&NONFINITE);
                        }
                    }
                    c.quantize(&x, p);
                }
                let x = lone_ties(&mut c.rng, &p, 40);
                c.quantize(&x, p);
            }
        }
    }

    // Adversarial scales: tiny (x / scale overflows), the smallest normal with subnormal x,
    // power-of-two ties; every code of every signed and unsigned 8-bit dequantization.
    for &scale in &[1e-3f32, f32::MIN_POSITIVE, 1e-40, 0.5, 0.25, 3.0] {
        for signed in [false, true] {
            let (qmin, qmax) = code_range(8, signed);
            let p = QParams {
                scale,
                zero_point: if signed { 0 } else { 128 },
                qmin,
                qmax,
            };
            for kind in 0..QUANT_KINDS {
                let x = quant_data(&mut c.rng, kind, 77, &p);
                c.quantize(&x, p);
            }
        }
    }
    let all: Vec<u8> = (0..=255).collect();
    for (scale, zp) in [
        (0.1f32, 0.0f32),
        (-0.37, 3.0),
        (2.5, -0.5),
        (1e-40, 1.5),
        (3e38, -7.0),
    ] {
        c.dequantize(&all, false, scale, zp);
        c.dequantize(&all, true, scale, zp);
    }

    // The group kernels: every group size around the vector widths and unrolled blocks, whole
    // and ragged last groups, a grid per group (bits, sign, zero point and scale all vary),
    // and groups with NaN or ±Inf among finite ones.
    for group_size in GROUP_SIZES {
        let mut lengths = vec![0, 1, group_size, 2 * group_size, 5 * group_size];
        lengths.extend([
            group_size + 1,
            3 * group_size - 1,
            4 * group_size + group_size / 2,
        ]);
        lengths.push(c.rng.below(6 * group_size + 40));
        if group_size < 64 {
            lengths.push(40 * group_size + c.rng.below(group_size));
        }
        for (step, &n) in lengths.iter().enumerate() {
            let groups = n.div_ceil(group_size);
            let mut grid = Vec::with_capacity(groups);
            let mut x = Vec::with_capacity(n);
            for g in 0..groups {
                let bits = c.rng.int(2, 8) as u32;
                let signed = c.rng.chance(2);
                let mut p = random_params(&mut c.rng, bits, signed);
                if c.rng.chance(2) {
                    p.scale = wide_scale(&mut c.rng);
                }
                let len = group_size.min(n - g * group_size);
                let kind = c.rng.below(QUANT_KINDS + 2);
                let data = if kind < QUANT_KINDS {
                    quant_data(&mut c.rng, kind, len, &p)
                } else {
                    tie_data(&mut c.rng, &p, len, kind == QUANT_KINDS)
                };
                x.extend(data);
                grid.push(p);
            }
            c.quantize_groups(&x, group_size, &grid);

            let mut x: Vec<f32> = (0..groups)
                .flat_map(|g| {
                    let len = group_size.min(n - g * group_size);
                    minmax_data(&mut c.rng, step + g, len)
                })
                .collect();
            c.minmax_groups(&x, group_size);
            for g in 0..groups {
                if c.rng.chance(3) {
                    let start = g * group_size;
                    let i = start + c.rng.below(group_size.min(n - start));
                    x[i] = c.rng.pick(&NONFINITE);
                }
            }
            c.minmax_groups(&x, group_size);
            // One grid for every group equals `quantize` of the whole slice.
            let p = random_params(&mut c.rng, 4, step % 2 == 0);
            let x = quant_data(&mut c.rng, step % QUANT_KINDS, n, &p);
            c.quantize_groups(&x, group_size, &vec![p; groups]);
        }
    }

    // A non-finite value at every position, of every kind, for the lengths around the
    // vector widths and unrolled blocks of every path.
    for n in (1..=70).chain([95, 127, 128, 129, 200, 257]) {
        let x = minmax_data(&mut c.rng, n, n);
        let positions: Vec<usize> = if n <= 70 {
            (0..n).collect()
        } else {
            vec![0, n / 2, n - 2, n - 1]
        };
        for i in positions {
            let mut x = x.clone();
            x[i] = NONFINITE[(i + n) % NONFINITE.len()];
            c.minmax(&x);
            let (lo, hi) = (vec![f32::INFINITY; n], vec![f32::NEG_INFINITY; n]);
            c.minmax_lanes(&x, &lo, &hi);
        }
    }
    c.gemm_tiles();
    c.pack_panels();
    c.matmul_rows();
    (c.calls, c.values)
}

// ---------------------------------------------------------------------------------------------
// Tile kernels of matmul_int8 and linear

/// Panel and activation bytes: random, or extreme (every value at one end of its range, which
/// is where `vpmaddubsw`-style saturation and sign tricks break).
fn gemm_bytes(rng: &mut Rng, kind: usize, n: usize, bits: u32, panel: bool) -> Vec<u8> {
    let extreme: &[u8] = if panel {
        &[0xff, 0x00, 0xf0, 0x0f]
    } else {
        &[0x80, 0x7f, 0xff]
    };
    match kind {
        0 => rng.bytes(n),
        1 => vec![extreme[0]; n],
        2 => (0..n).map(|_| rng.pick(extreme)).collect(),
        _ => {
            let b = rng.bytes(n);
            if panel && bits == 8 {
                b.iter().map(|&v| v | 0x80).collect()
            } else {
                b.iter()
                    .map(|&v| if v & 1 == 0 { 0x80 } else { v })
                    .collect()
            }
        }
    }
}

/// Random segment lengths (multiples of 8) covering `kp`.
fn segments(rng: &mut Rng, kp: usize) -> Vec<u32> {
    let mut segs = Vec::new();
    let mut left = kp;
    while left > 0 {
        let len = 8
            * (1 + rng
                .below(left / 8)
                .min(rng.pick(&[1usize, 4, 16, 64, 10_000])));
        let len = len.min(left);
        segs.push(len as u32);
        left -= len;
    }
    segs
}

impl Check<'_> {
    fn gemm_tiles(&mut self) {
        let kps = [8usize, 16, 24, 32, 40, 64, 136, 264, 1024, 4096];
        for (step, &kp) in kps.iter().cycle().take(4 * kps.len()).enumerate() {
            for rows in 1..=MR {
                let kind = (step + rows) % 4;
                let bits = if (step + rows) % 2 == 0 { 8 } else { 4 };
                self.gemm_tile(kp, rows, bits, kind);
            }
        }
    }

    /// `pack_panels` against the portable packer: whole and partial panels, depths that are
    /// not multiples of 4, column windows anywhere in the matrix.
    fn pack_panels(&mut self) {
        for &(k, n) in &[
            (1, 1),
            (3, 17),
            (8, 64),
            (13, 100),
            (64, 256),
            (100, 300),
            (517, 1040),
        ] {
            for _ in 0..4 {
                let b: Vec<i8> = (0..k * n).map(|_| self.rng.int(-128, 127) as i8).collect();
                let n0 = self.rng.below(n);
                let panels = 1 + self.rng.below(9);
                let kp = k.next_multiple_of(4) + 4 * self.rng.below(3);
                let mut expected = vec![0u8; panels * kp * NR];
                let mut got = vec![1u8; panels * kp * NR];
                gemm::pack_i8_panels(&b, (k, n), n0, panels, kp, &mut expected);
                (self.k.pack_panels)(&b, (k, n), n0, panels, kp, &mut got);
                self.compare(
                    "pack_panels",
                    &expected,
                    &got,
                    |_| false,
                    |i| format!("k {k}, n {n}, n0 {n0}, panels {panels}, kp {kp}, byte {i}"),
                );
            }
        }
    }

    /// `matmul_rows` (where the path has it) against its reference: 1..=4 rows, depths with a
    /// partial last quad, column windows of every width up to the maximum, extreme bytes.
    fn matmul_rows(&mut self) {
        let Some(rows_fn) = self.k.matmul_rows else {
            return;
        };
        let shapes = [
            (1, 1),
            (3, 17),
            (4, 64),
            (5, 100),
            (17, 1030),
            (64, 2100),
            (131, 70),
        ];
        for (step, &(k, n)) in shapes.iter().enumerate() {
            for m in 1..=gemm::ROWS_M {
                for signed in [false, true] {
                    let kind = (step + m) % 4;
                    let a = gemm_bytes(&mut self.rng, kind, m * k, 8, !signed);
                    let b: Vec<i8> = gemm_bytes(&mut self.rng, kind, k * n, 8, false)
                        .into_iter()
                        .map(|v| v as i8)
                        .collect();
                    let c0 = self.rng.below(n);
                    let w = (1 + self.rng.below(n - c0)).min(gemm::ROWS_COLS);
                    let mut expected = vec![0i32; m * w];
                    let mut got = vec![7i32; m * w];
                    scalar::gemm::matmul_rows(&a, signed, m, &b, (k, n), c0, &mut expected);
                    rows_fn(&a, signed, m, &b, (k, n), c0, &mut got);
                    self.compare(
                        "matmul_rows",
                        &expected,
                        &got,
                        |_| false,
                        |i| format!("m {m}, k {k}, n {n}, c0 {c0}, w {w}, signed {signed}, data {kind}, index {i}"),
                    );
                }
            }
        }
    }

    fn gemm_tile(&mut self, kp: usize, rows: usize, nbits: u32, kind: usize) {
        // Rows are a window of longer rows half of the time (as matmul's depth blocks are).
        let stride = if kind.is_multiple_of(2) {
            kp
        } else {
            kp + 8 * (1 + self.rng.below(3))
        };
        let x: Vec<i8> = gemm_bytes(&mut self.rng, kind, rows * stride, nbits, false)
            .into_iter()
            .map(|b| b as i8)
            .collect();
        let xr = Rows::strided(&x, rows, kp, stride);
        let what = |name: &str| format!("{name}: kp {kp}, rows {rows}, bits {nbits}, data {kind}");

        // matmul_int8's integer tile (8-bit panels only).
        let panel8 = gemm_bytes(&mut self.rng, kind, kp * NR, 8, true);
        let mut expected = [0i32; MR * NR];
        let mut got = [0i32; MR * NR];
        (scalar::KERNELS.dot_tile)(&panel8, &xr, &mut expected);
        (self.k.dot_tile)(&panel8, &xr, &mut got);
        let n = rows * NR;
        let w = what("dot_tile");
        self.compare(
            "dot_tile",
            &expected[..n],
            &got[..n],
            |_| false,
            |i| w.clone() + &format!(", tile index {i}"),
        );

        // The wide tile: WIDE_PANELS panels, up to WIDE_ROWS rows, against dot_tile.
        if let (Some(wide), true) = (self.k.dot_tile_wide, rows <= WIDE_ROWS) {
            let panels = gemm_bytes(&mut self.rng, kind, WIDE_PANELS * kp * NR, 8, true);
            let mut expected = [0i32; WIDE_ROWS * WIDE_PANELS * NR];
            let mut got = [0i32; WIDE_ROWS * WIDE_PANELS * NR];
            scalar::gemm::dot_tile_wide(&panels, &xr, &mut expected);
            wide(&panels, &xr, &mut got);
            let n = rows * WIDE_PANELS * NR;
            let w = what("dot_tile_wide");
            self.compare(
                "dot_tile_wide",
                &expected[..n],
                &got[..n],
                |_| false,
                |i| w.clone() + &format!(", tile index {i}"),
            );
        }

        // linear's tiles, integer and float mode.
        let codes = gemm_bytes(
            &mut self.rng,
            kind,
            kp * NR * nbits as usize / 8,
            nbits,
            true,
        );
        let seg_len = segments(&mut self.rng, kp);
        let segs = seg_len.len();
        let scale: Vec<f32> = (0..segs * NR)
            .map(|_| random_scale(&mut self.rng))
            .collect();
        let zmax = (1 << nbits) - 1;
        // Every other panel shares one zero point (symmetric weights: `zero_all`).
        let shared = kind.is_multiple_of(2).then(|| self.rng.int(0, zmax) as f32);
        let zero: Vec<f32> = (0..segs * NR)
            .map(|i| {
                if let Some(z) = shared {
                    z
                } else if i % 7 == 3 {
                    self.rng.uniform(0.0, zmax as f32)
                } else {
                    self.rng.int(0, zmax) as f32
                }
            })
            .collect();
        let zscale: Vec<f32> = scale.iter().zip(&zero).map(|(s, z)| -s * z).collect();
        let panel = Panel {
            codes: &codes,
            bits: nbits,
            seg_len: &seg_len,
            scale: &scale,
            zero: &zero,
            zscale: &zscale,
            zero_all: shared,
        };
        let mut xsum = vec![0f32; rows * segs];
        for m in 0..rows {
            let mut k0 = 0;
            for (s, &len) in seg_len.iter().enumerate() {
                let sum: i32 = xr.row(m)[k0..k0 + len as usize]
                    .iter()
                    .map(|&v| v as i32)
                    .sum();
                xsum[m * segs + s] = sum as f32;
                k0 += len as usize;
            }
        }
        let mut expected = [0f32; MR * NR];
        let mut got = [0f32; MR * NR];
        (scalar::KERNELS.linear_tile)(&panel, &xr, &xsum, &mut expected);
        (self.k.linear_tile)(&panel, &xr, &xsum, &mut got);
        let w = what("linear_tile") + &format!(", segments {seg_len:?}");
        self.compare(
            "linear_tile",
            &crate::bits(&expected[..n]),
            &crate::bits(&got[..n]),
            |_| false,
            |i| {
                format!(
                    "{w}, tile index {i}: expected {}, got {}",
                    expected[i], got[i]
                )
            },
        );

        let xf: Vec<f32> = (0..rows * kp)
            .map(|_| self.rng.uniform(-4.0, 4.0))
            .collect();
        let xfr = Rows::new(&xf, rows, kp);
        (scalar::KERNELS.linear_tile_f32)(&panel, &xfr, &mut expected);
        (self.k.linear_tile_f32)(&panel, &xfr, &mut got);
        let w = what("linear_tile_f32");
        self.compare(
            "linear_tile_f32",
            &crate::bits(&expected[..n]),
            &crate::bits(&got[..n]),
            |_| false,
            |i| {
                format!(
                    "{w}, tile index {i}: expected {}, got {}",
                    expected[i], got[i]
                )
            },
        );
    }
}

/// The GGUF block formats against gguf-py's bytes (`tests/data/gguf/`, written and kept
/// current by `tests/gguf_fixtures.py`): quantize and dequantize through the path qfast
/// picks on this CPU (the portable code on aarch64, where gguf-py cannot run).
fn gguf_fixtures() -> usize {
    use qfast::gguf::{self, GgmlType};
    fn file(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/gguf/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    let fail = |what: String| -> ! {
        println!("FAIL gguf: {what}");
        exit(1)
    };
    let x = floats(&file("quantize_input.f32"));
    let mut checked = 0;
    for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"] {
        let ty = GgmlType::from_name(name).unwrap();
        let want = file(&format!("{name}.quantized"));
        let mut got = vec![0u8; want.len()];
        gguf::quantize(ty, &x, &mut got).unwrap();
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            let block = i / ty.type_size();
            fail(format!(
                "quantize {name}: byte {i} (block {block}, input {:?}) is {} not {}",
                &x[block * 32..block * 32 + 32],
                got[i],
                want[i]
            ));
        }
        checked += want.len();
    }
    for name in [
        "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
        "IQ4_XS",
    ] {
        let ty = GgmlType::from_name(name).unwrap();
        let blocks = file(&format!("{name}.blocks"));
        let want = floats(&file(&format!("{name}.dequantized.f32")));
        let mut got = vec![0f32; want.len()];
        gguf::dequantize(ty, &blocks, &mut got).unwrap();
        if let Some(i) = (0..want.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            fail(format!(
                "dequantize {name}: value {i} (block {}) is {:e} not {:e}",
                i / ty.block_size(),
                got[i],
                want[i]
            ));
        }
        checked += want.len();
    }
    checked
}

fn main() {
    let paths = simd::available();
    println!(
        "kernels: {} paths on this CPU ({}); features: {}",
        paths.len(),
        paths
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(", "),
        simd::cpu_features().join(" ")
    );
    for isa in paths {
        let (calls, values) = run(isa);
        println!(
            "{:<13} ok: {calls} kernel calls, {values} values checked against scalar",
            isa.name()
        );
    }
    let n = gguf_fixtures();
    println!(
        "gguf          ok: {n} bytes and values equal to gguf-py's ({})",
        simd::active().map_or("?", |k| k.isa.name())
    );
}
