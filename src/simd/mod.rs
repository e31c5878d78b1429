//! ISA implementations of the quantization kernels and the one-time runtime dispatch.
//!
//! Every path fills the same [`Kernels`] table of safe function pointers; the scalar table is
//! the oracle the others are tested against (bit-identical integer codes and float results).
//! A SIMD table is only ever handed out after the CPU was checked for its features, and each
//! safe wrapper checks again before entering `#[target_feature]` code.
//!
//! The tree, one folder per path with the same file names in each (a file only where the
//! path has code of that kind):
//!
//! ```text
//! simd/
//!   mod.rs        Isa, the Kernels table, select()/active(): the one run-time choice
//!                 (QFAST_ISA), safe_wrappers! and per_isa!
//!   contract.rs   what each kernel requires of its arguments, checked by every wrapper
//!   probe.rs      the CPU probes and the peak loops
//!   gemm.rs       the packed layouts and the tile contracts (the same on every path)
//!   scalar/       quant.rs gemm.rs            the oracle (the GGUF one is gguf::legacy)
//!   x86_64/avx2/  quant.rs gemm.rs gguf.rs    AVX2 + FMA + F16C; `avxvnni` is a second table
//!                 vnni.rs                     here (its integer tiles, VEX `vpdpbusd` on ymm)
//!   x86_64/avx512/ quant.rs gemm.rs gguf.rs   AVX-512 F/BW/VL/DQ; `avx512vnni` is a second
//!                                             table here (it only swaps the integer tiles)
//!   aarch64/neon/ quant.rs gemm.rs            NEON; `neon-dotprod` a second table here
//! ```
//!
//! No code outside this module names an instruction set: the algorithms' loops (`algo`) are
//! compiled per path by `per_isa!`, on the same [`active`] choice as the tables.

pub mod contract;
pub mod gemm;
pub mod probe;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;

use crate::error::{QfastError, Result};
use std::sync::OnceLock;

/// An instruction-set path, from the lowest to the highest on each architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    AvxVnni,
    Avx512,
    Avx512Vnni,
    Neon,
    NeonDotprod,
}

impl Isa {
    pub const ALL: [Isa; 7] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::NeonDotprod,
    ];

    /// The name used by `QFAST_ISA` and `qfast.cpu_info()`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neon-dotprod",
        }
    }

    pub fn parse(name: &str) -> Option<Isa> {
        let key = |s: &str| s.trim().to_ascii_lowercase().replace(['_', '-'], "");
        let name = key(name);
        Isa::ALL.into_iter().find(|isa| key(isa.name()) == name)
    }

    /// Whether this build and this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => probe::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => probe::has_avxvnni(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => probe::has_avx512(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => probe::has_avx512() && probe::has_avx512vnni(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => probe::has_dotprod(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The kernel table of this path, or `None` where the CPU or build cannot run it.
    pub fn kernels(self) -> Option<&'static Kernels> {
        if !self.is_supported() {
            return None;
        }
        match self {
            Isa::Scalar => Some(&scalar::KERNELS),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(&x86_64::avx2::KERNELS),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => Some(&x86_64::avx2::KERNELS_AVXVNNI),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(&x86_64::avx512::KERNELS),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Some(&x86_64::avx512::KERNELS_VNNI),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Some(&aarch64::neon::KERNELS),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => Some(&aarch64::neon::KERNELS_DOTPROD),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// Every path this CPU and build can run, lowest first.
pub fn available() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .filter(|isa| isa.is_supported())
        .collect()
}

/// The CPU features qfast looks at, as detected at run time.
pub fn cpu_features() -> Vec<&'static str> {
    probe::features()
}

/// Chooses the path: the best one available, or the one `requested` names (e.g. the value of
/// `QFAST_ISA`), which must be available.
pub fn select(requested: Option<&str>) -> Result<Isa> {
    let avail = available();
    match requested.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(*avail.last().expect("scalar is always available")),
        Some(name) => match Isa::parse(name) {
            Some(isa) if avail.contains(&isa) => Ok(isa),
            _ => Err(QfastError::UnsupportedIsa {
                requested: name.to_string(),
                available: avail.iter().map(|i| i.name()).collect(),
            }),
        },
    }
}

static ACTIVE: OnceLock<Result<&'static Kernels>> = OnceLock::new();

/// The kernel table in use, chosen once per process from the CPU and `QFAST_ISA`.
pub fn active() -> Result<&'static Kernels> {
    ACTIVE
        .get_or_init(|| {
            let requested = std::env::var("QFAST_ISA").ok();
            let isa = select(requested.as_deref())?;
            Ok(isa.kernels().expect("selected paths are supported"))
        })
        .clone()
}

/// The safe wrappers of a path's `#[target_feature]` kernels, one per entry:
///
/// ```text
/// safe_wrappers! {
///     cpu: probe::has_avx2(), else: crate::simd::scalar;
///     fn quantize(x: &[f32], p: &QParams, out: &mut [u8]) => quantize_avx2(x, p, out);
/// }
/// ```
///
/// defines `pub fn quantize(..)`, which checks the kernel's contract ([`contract`]`::quantize`),
/// then the CPU (`cpu`, a cached probe: the tables are public constants, so a wrapper must not
/// rely on `active()` having checked), and runs the body in `unsafe`, or `else::quantize` (the
/// scalar oracle, or a lower path) where the CPU lacks the features.
macro_rules! safe_wrappers {
    (cpu: $cpu:expr, else: $($else:ident)::+; $($items:tt)*) => {
        $crate::simd::safe_wrappers!(@item [$cpu] [$($else)::+] $($items)*);
    };
    (@item [$cpu:expr] [$($else:tt)*]) => {};
    (
        @item [$cpu:expr] [$($else:tt)*]
        $(#[$attr:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:expr;
        $($rest:tt)*
    ) => {
        $(#[$attr])*
        #[allow(unused_unsafe)]
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            $crate::simd::contract::$name($($arg),*);
            if !$cpu {
                return $($else)*::$name($($arg),*);
            }
            // SAFETY: the CPU has the path's features (checked just above) and the arguments
            // meet the kernel's contract (checked first), which is all its entry point needs.
            unsafe { $body }
        }
        $crate::simd::safe_wrappers!(@item [$cpu] [$($else)*] $($rest)*);
    };
}
pub(crate) use safe_wrappers;

/// The dispatch of generic code (the `algo` loops): defines `$name(isa, args..)`, which runs
/// `$body(args..)` compiled for the ISA path `isa`, the choice of [`active`] that also picks
/// the tables: AVX2 (also for `avxvnni`) or AVX-512 enabled, or the build's baseline elsewhere (aarch64 needs no
/// variant: NEON is part of its baseline). `$body` must be `#[inline(always)]`, so that it is
/// compiled inside each variant. The body is the same Rust code on every path, and LLVM never contracts
/// or reorders float operations, so every path gives the same bits.
macro_rules! per_isa {
    ($name:ident => $body:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(isa: crate::simd::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                use crate::simd::Isa;
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match isa {
                    // SAFETY: simd::active() picks a path only where the CPU has its
                    // features (AVX2 for `avx2` and `avxvnni`, AVX-512 F/BW/VL/DQ for the
                    // AVX-512 paths).
                    Isa::Avx2 | Isa::AvxVnni => return unsafe { avx2($($arg),*) },
                    // SAFETY: as above.
                    Isa::Avx512 | Isa::Avx512Vnni => return unsafe { avx512($($arg),*) },
                    _ => {}
                }
            }
            let _ = isa;
            $body($($arg),*)
        }
    };
}
pub(crate) use per_isa;

/// Range statistics of a slice: its minimum, its maximum, and whether every value is finite.
/// On a slice with a non-finite value, `min` and `max` are unspecified.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinMax {
    pub min: f32,
    pub max: f32,
    pub finite: bool,
}

impl MinMax {
    pub const EMPTY: MinMax = MinMax {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        finite: true,
    };

    pub fn merge(self, other: MinMax) -> MinMax {
        MinMax {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            finite: self.finite && other.finite,
        }
    }
}

/// Affine parameters of one quantization unit: `q = clamp(rint(x / scale) + zero_point,
/// qmin, qmax)`. `scale` is positive and finite; `qmin <= zero_point <= qmax`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

/// `quantize_lanes(x, scale, zero_point, qmin, qmax, out)`.
pub type QuantizeLanes =
    fn(x: &[f32], scale: &[f32], zero_point: &[i32], qmin: i32, qmax: i32, out: &mut [u8]);

/// `quantize_groups(x, group_size, grid, out)`.
pub type QuantizeGroups = fn(x: &[f32], group_size: usize, grid: &[QParams], out: &mut [u8]);

/// `dequantize_lanes(codes, signed, scale, zero_point, out)`.
pub type DequantizeLanes =
    fn(codes: &[u8], signed: bool, scale: &[f32], zero_point: &[f32], out: &mut [f32]);

/// The GGUF block types a path may quantize with SIMD code ([`GgufQuantize`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufKind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

/// `gguf_quantize(kind, x, out)`: whole 32-value blocks of `x` into `out` (`x.len() / 32`
/// blocks of `kind`), the bytes of `gguf::legacy`'s portable quantizers: `None` (nothing
/// written) when the CPU lacks the path, else whether every value of `x` was finite (when one
/// is not, `out` holds garbage and the caller reports the value).
pub type GgufQuantize = fn(kind: GgufKind, x: &[f32], out: &mut [u8]) -> Option<bool>;

/// The Q8_0 side of `Q4_0 · Q8_0` as a path's [`GgufDot`] arranges it, once per call for every
/// row: the int8 values back to back (padded to an even number of blocks), each lane's
/// `8 · Σ q8` (the `- 8` of the 4-bit codes), and the float32 scales. Only a path's `prepare`
/// makes one (the fields are private to `simd`: the kernels read them without bounds checks).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Q8Row {
    pub(in crate::simd) nb: usize,
    pub(in crate::simd) qs: Vec<i8>,
    pub(in crate::simd) corr: Vec<i32>,
    pub(in crate::simd) d: Vec<f32>,
}

/// A path's `Q4_0 · Q8_0` (`gguf::dot_q4_0_q8_0`): `prepare` arranges the Q8_0 row once, `dot`
/// takes one Q4_0 row against it, the bits of `gguf::dot::dot_ref` (`None` where the CPU lacks
/// the path: the caller runs `dot_ref`).
#[derive(Clone, Copy)]
pub struct GgufDot {
    pub prepare: fn(y: &[u8]) -> Result<Q8Row>,
    pub dot: fn(x: &[u8], y: &Q8Row) -> Option<f32>,
}

/// The kernels of one ISA path. Codes are bytes: two's complement for signed codes. Packed
/// 4-bit (2-bit) codes hold element `2i` (`4i`) in the lowest bits of byte `i`.
pub struct Kernels {
    pub isa: Isa,
    /// Minimum, maximum and finiteness of `x`.
    pub minmax: fn(x: &[f32]) -> MinMax,
    /// Elementwise running `min[i] = min(min[i], x[i])`, same for `max`; all slices have the
    /// same length. Returns whether every `x[i]` was finite.
    pub minmax_lanes: fn(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool,
    /// `out[i] = clamp(rint(x[i] / scale) + zero_point, qmin, qmax)`, ties to even.
    pub quantize: fn(x: &[f32], p: &QParams, out: &mut [u8]),
    /// As `quantize`, with a scale and zero point per element.
    pub quantize_lanes: QuantizeLanes,
    /// `minmax` of each run of `group_size` consecutive elements of `x` (the last run may be
    /// shorter): `out[g]` covers `x[g * group_size..]`. `group_size >= 1` and
    /// `out.len() == x.len().div_ceil(group_size)`.
    pub minmax_groups: fn(x: &[f32], group_size: usize, out: &mut [MinMax]),
    /// `quantize` of each run of `group_size` consecutive elements of `x` (grouped as in
    /// `minmax_groups`) with its own grid `grid[g]`. `group_size >= 1`,
    /// `grid.len() == x.len().div_ceil(group_size)` and `out.len() == x.len()`.
    pub quantize_groups: QuantizeGroups,
    /// `out[i] = (q[i] - zero_point) * scale` in float32, `q` read as i8 when `signed`.
    pub dequantize: fn(codes: &[u8], signed: bool, scale: f32, zero_point: f32, out: &mut [f32]),
    /// As `dequantize`, with a scale and zero point per element.
    pub dequantize_lanes: DequantizeLanes,
    /// Packs the low nibbles of `codes` two per byte; `out.len() == codes.len().div_ceil(2)`.
    pub pack4: fn(codes: &[u8], out: &mut [u8]),
    /// Unpacks `out.len()` nibbles (sign-extended when `signed`); `packed` holds at least
    /// `out.len().div_ceil(2)` bytes.
    pub unpack4: fn(packed: &[u8], signed: bool, out: &mut [u8]),
    /// Packs the low 2 bits of `codes` four per byte; `out.len() == codes.len().div_ceil(4)`.
    pub pack2: fn(codes: &[u8], out: &mut [u8]),
    /// Unpacks `out.len()` 2-bit codes (sign-extended when `signed`).
    pub unpack2: fn(packed: &[u8], signed: bool, out: &mut [u8]),
    /// Integer tile of `matmul_int8`: `out[m * NR + j] = Σ_k panel_j[k] · x_m[k]`, wrapping
    /// int32, over an 8-bit panel (see [`gemm`] for the layouts).
    pub pack_panels: gemm::PackPanels,
    pub dot_tile: gemm::DotTile,
    pub dot_tile_wide: Option<gemm::DotTileWide>,
    pub matmul_rows: Option<gemm::MatmulRows>,
    /// Tile of `linear` in integer mode (W8A8 / W4A8), see [`gemm::LinearTile`].
    pub linear_tile: gemm::LinearTile,
    /// Tile of `linear` in float mode (W8A16 / W4A16), see [`gemm::LinearTileF32`].
    pub linear_tile_f32: gemm::LinearTileF32,
    /// The GGUF quantizers of the 32-value block types, where the path has them.
    pub gguf_quantize: Option<GgufQuantize>,
    /// `Q4_0 · Q8_0`, where the path has it.
    pub gguf_dot: Option<GgufDot>,
}

/// Panics unless `groups` runs of `group_size >= 1` cover `n` elements, the last one possibly
/// shorter: the contract of `minmax_groups` and `quantize_groups`, checked by every path.
#[inline]
pub fn check_groups(n: usize, group_size: usize, groups: usize) {
    assert!(group_size > 0, "group_size must be at least 1");
    assert_eq!(groups, n.div_ceil(group_size), "one entry per group");
}

/// `minmax_groups` as a loop over a per-slice `minmax`: the scalar path's kernel, and the
/// NEON path's (its per-group overhead is one direct, inlinable call).
#[inline(always)]
pub fn minmax_groups_with(
    minmax: impl Fn(&[f32]) -> MinMax,
    x: &[f32],
    group_size: usize,
    out: &mut [MinMax],
) {
    check_groups(x.len(), group_size, out.len());
    for (o, g) in out.iter_mut().zip(x.chunks(group_size)) {
        *o = minmax(g);
    }
}

/// `quantize_groups` as a loop over a per-slice `quantize`, as [`minmax_groups_with`].
#[inline(always)]
pub fn quantize_groups_with(
    quantize: impl Fn(&[f32], &QParams, &mut [u8]),
    x: &[f32],
    group_size: usize,
    grid: &[QParams],
    out: &mut [u8],
) {
    check_groups(x.len(), group_size, grid.len());
    assert_eq!(x.len(), out.len());
    let groups = x.chunks(group_size).zip(out.chunks_mut(group_size));
    for ((g, o), p) in groups.zip(grid) {
        quantize(g, p, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse(" AVX512_VNNI "), Some(Isa::Avx512Vnni));
        assert_eq!(Isa::parse("AVX_VNNI"), Some(Isa::AvxVnni));
        assert_eq!(Isa::parse("sse9"), None);
    }

    #[test]
    fn select_rejects_unknown_and_unsupported() {
        assert_eq!(select(None).unwrap(), *available().last().unwrap());
        assert_eq!(select(Some("scalar")).unwrap(), Isa::Scalar);
        let err = select(Some("sse9")).unwrap_err().to_string();
        assert!(err.contains("sse9") && err.contains("scalar"), "{err}");
        #[cfg(target_arch = "x86_64")]
        assert!(select(Some("neon")).is_err());
    }
}
