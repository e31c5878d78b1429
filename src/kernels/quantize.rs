//! `qfast.quantize` over a strided tensor: statistics, grid and codes, split across threads
//! in chunks of lines whose results do not depend on the thread count.

use super::layout::{pack_line, split_mut, Scheme, Units, TASK_ELEMS};
use super::params::{self, code_range, ScaleDtype};
use super::source::{Element, Strided};
use crate::error::{QfastError, Result};
use crate::parallel;
use crate::simd::{self, Kernels, MinMax, QParams};

/// Caller-supplied grid (static quantization), one entry per unit in C order.
#[derive(Clone, Copy, Debug)]
pub struct StaticParams<'p> {
    pub scale: &'p [f32],
    pub zero_point: Option<&'p [i32]>,
}

/// Codes (`lines x line_bytes`, C order, each line a packed bit stream, see
/// [`super::layout::line_bytes`]) and the grid, one entry per unit in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub codes: Vec<u8>,
    pub scale: Vec<f32>,
    /// `None` for signed (symmetric) codes.
    pub zero_point: Option<Vec<i32>>,
}

/// Why a task stopped early.
enum Stop {
    NonFinite,
    Error(QfastError),
}

impl From<QfastError> for Stop {
    fn from(e: QfastError) -> Self {
        Stop::Error(e)
    }
}

type TaskResult = std::result::Result<(), Stop>;

/// Quantizes `x` with the scheme, computing the grid or using the given one.
pub fn quantize<T: Element>(
    x: &Strided<T>,
    scheme: &Scheme,
    given: Option<StaticParams>,
) -> Result<Quantized> {
    scheme.validate(x.shape())?;
    let mut codes = vec![0u8; codes_len(x.shape(), scheme)];
    let (scale, zero_point) = quantize_into(x, scheme, given, &mut codes)?;
    Ok(Quantized {
        codes,
        scale,
        zero_point,
    })
}

/// Bytes of codes for `shape` (at least 1-d) under the scheme.
pub fn codes_len(shape: &[usize], scheme: &Scheme) -> usize {
    let units = Units::new(shape, scheme.granularity);
    units.lines * scheme.line_bytes(units.n)
}

/// As [`quantize`], writing the codes into `codes` (of [`codes_len`] bytes); returns the
/// grid.
pub fn quantize_into<T: Element>(
    x: &Strided<T>,
    scheme: &Scheme,
    given: Option<StaticParams>,
    codes: &mut [u8],
) -> Result<(Vec<f32>, Option<Vec<i32>>)> {
    quantize_into_as(x, scheme, given, ScaleDtype::F32, codes)
}

/// As [`quantize_into`], with computed scales rounded to `scale_dtype` as each grid is made,
/// so the codes are computed against the scale as stored (a given grid is used as it is).
pub fn quantize_into_as<T: Element>(
    x: &Strided<T>,
    scheme: &Scheme,
    given: Option<StaticParams>,
    scale_dtype: ScaleDtype,
    codes: &mut [u8],
) -> Result<(Vec<f32>, Option<Vec<i32>>)> {
    scheme.validate(x.shape())?;
    let kernels = simd::active()?;
    let units = Units::new(x.shape(), scheme.granularity);
    if codes.len() != units.lines * scheme.line_bytes(units.n) {
        return Err(QfastError::InvalidArgument(format!(
            "the code buffer holds {} bytes, shape {:?} needs {}",
            codes.len(),
            x.shape(),
            units.lines * scheme.line_bytes(units.n)
        )));
    }
    let mut grid = match given {
        Some(g) => static_grid(scheme, &units, g)?,
        None => Vec::new(),
    };
    let computed = given.is_none();
    let run = Run {
        x,
        k: kernels,
        scheme,
        units: &units,
        scale_dtype,
    };
    let outcome = if units.lanes {
        run.lanes(&mut grid, computed, codes)
    } else if units.channels_contiguous() {
        if computed {
            grid = vec![placeholder(scheme); units.params()];
        }
        run.fused(&mut grid, computed, codes)
    } else {
        run.two_phase(&mut grid, computed, codes)
    };
    match outcome {
        Ok(()) => {}
        Err(Stop::NonFinite) => return Err(x.nonfinite_error()),
        Err(Stop::Error(e)) => return Err(e),
    }
    let scale = grid.iter().map(|p| p.scale).collect();
    let zero_point = (!scheme.signed).then(|| grid.iter().map(|p| p.zero_point).collect());
    Ok((scale, zero_point))
}

fn placeholder(scheme: &Scheme) -> QParams {
    let (qmin, qmax) = code_range(scheme.bits, scheme.signed);
    QParams {
        scale: 1.0,
        zero_point: 0,
        qmin,
        qmax,
    }
}

fn static_grid(scheme: &Scheme, units: &Units, given: StaticParams) -> Result<Vec<QParams>> {
    let count = units.params();
    let (qmin, qmax) = code_range(scheme.bits, scheme.signed);
    if given.scale.len() != count {
        return Err(QfastError::InvalidArgument(format!(
            "expected {count} scales for this granularity, got {}",
            given.scale.len()
        )));
    }
    for &s in given.scale {
        crate::checks::check_positive(s, "scale")?;
    }
    let zero_point: Vec<i32> = match (given.zero_point, scheme.signed) {
        (Some(_), true) => {
            return Err(QfastError::InvalidArgument(
                "zero_point was given for a symmetric scheme; pass symmetric=False to use it"
                    .to_string(),
            ))
        }
        (None, true) => vec![0; count],
        (None, false) => {
            return Err(QfastError::InvalidArgument(
                "an asymmetric scheme with a given scale also needs zero_point".to_string(),
            ))
        }
        (Some(z), false) if z.len() != count => {
            return Err(QfastError::InvalidArgument(format!(
                "expected {count} zero points for this granularity, got {}",
                z.len()
            )))
        }
        (Some(z), false) => z.to_vec(),
    };
    if let Some(bad) = zero_point.iter().find(|z| !(qmin..=qmax).contains(*z)) {
        return Err(QfastError::InvalidArgument(format!(
            "zero_point {bad} is outside the {}-bit code range [{qmin}, {qmax}]",
            scheme.bits
        )));
    }
    Ok(given
        .scale
        .iter()
        .zip(zero_point)
        .map(|(&scale, zero_point)| QParams {
            scale,
            zero_point,
            qmin,
            qmax,
        })
        .collect())
}

/// Lines per parallel task.
fn lines_per_task(n: usize) -> usize {
    (TASK_ELEMS / n.max(1)).max(1)
}

/// First problem in task order: deterministic whatever the thread count.
fn first_stop(results: Vec<TaskResult>) -> TaskResult {
    results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
}

/// Per-task buffers of the fused sweeps: a line converted to float32, its unpacked codes, and
/// the statistics of its groups.
#[derive(Default)]
struct Scratch {
    line: Vec<f32>,
    codes: Vec<u8>,
    stats: Vec<MinMax>,
}

struct Run<'r, 'a, T> {
    x: &'r Strided<'a, T>,
    k: &'static Kernels,
    scheme: &'r Scheme,
    units: &'r Units,
    scale_dtype: ScaleDtype,
}

impl<T: Element> Run<'_, '_, T> {
    /// Writes the codes of line `l` (float32 `line`) with one grid for the whole line.
    fn emit(&self, line: &[f32], p: &QParams, scratch: &mut Vec<u8>, out: &mut [u8]) {
        if !self.scheme.packed() {
            (self.k.quantize)(line, p, out);
        } else {
            scratch.resize(line.len(), 0);
            (self.k.quantize)(line, p, scratch);
            self.pack(scratch, out);
        }
    }

    fn pack(&self, codes: &[u8], out: &mut [u8]) {
        pack_line(self.k, self.scheme.bits, codes, out);
    }

    fn grid(&self, stats: MinMax) -> Result<QParams> {
        params::compute(
            stats,
            self.scheme.bits,
            self.scheme.signed,
            self.scale_dtype,
        )
    }

    /// Channels (or groups) that each cover a contiguous run of lines: statistics and codes
    /// in one sweep per unit while its data is in cache.
    fn fused(&self, grid: &mut [QParams], computed: bool, codes: &mut [u8]) -> TaskResult {
        let u = self.units;
        let lb = self.scheme.line_bytes(u.n);
        // Blocks of `inner` lines share `groups` grid entries.
        let block_lines = u.inner.max(1);
        let blocks = if u.lines == 0 {
            0
        } else {
            u.lines / block_lines
        };
        let per_task = (lines_per_task(u.n) / block_lines).max(1);
        let tasks = blocks.div_ceil(per_task);
        let items: Vec<_> = split_mut(codes, per_task * block_lines * lb, tasks)
            .into_iter()
            .zip(split_mut(grid, per_task * u.groups, tasks))
            .enumerate()
            .collect();
        let results = parallel::map(items, self.x.len(), |(t, (codes, grid))| {
            let first = t * per_task;
            let count = per_task.min(blocks - first);
            let mut s = Scratch::default();
            for b in 0..count {
                let lines = (first + b) * block_lines..(first + b + 1) * block_lines;
                let codes = &mut codes[b * block_lines * lb..(b + 1) * block_lines * lb];
                let grid = &mut grid[b * u.groups..(b + 1) * u.groups];
                if block_lines == 1 {
                    self.fused_line(lines.start, grid, computed, &mut s, codes)?;
                } else {
                    self.fused_block(lines, &mut grid[0], computed, &mut s, codes)?;
                }
            }
            Ok(())
        })
        .map_err(Stop::Error)?;
        first_stop(results)
    }

    /// One line, one grid entry per group: the statistics of all its groups in one kernel
    /// call, their grids, then the codes of all its groups in one call. The groups are checked
    /// in order, as a group-by-group loop would stop: the first non-finite group, or the first
    /// grid that cannot be computed, ends the task.
    fn fused_line(
        &self,
        l: usize,
        grid: &mut [QParams],
        computed: bool,
        s: &mut Scratch,
        out: &mut [u8],
    ) -> TaskResult {
        let u = self.units;
        let line = self.x.line(l, &mut s.line);
        if line.is_empty() {
            // A per-channel line of no elements (`group_size` 0): one grid of empty stats.
            if computed {
                for p in grid.iter_mut() {
                    *p = self.grid(MinMax::EMPTY)?;
                }
            }
            return Ok(());
        }
        s.stats.resize(grid.len(), MinMax::EMPTY);
        (self.k.minmax_groups)(line, u.group_size, &mut s.stats);
        for (p, stats) in grid.iter_mut().zip(&s.stats) {
            if !stats.finite {
                return Err(Stop::NonFinite);
            }
            if computed {
                *p = self.grid(*stats)?;
            }
        }
        if self.scheme.packed() {
            s.codes.resize(u.n, 0);
            (self.k.quantize_groups)(line, u.group_size, grid, &mut s.codes);
            self.pack(&s.codes, out);
        } else {
            (self.k.quantize_groups)(line, u.group_size, grid, out);
        }
        Ok(())
    }

    /// Several whole lines sharing one grid entry.
    fn fused_block(
        &self,
        lines: std::ops::Range<usize>,
        p: &mut QParams,
        computed: bool,
        s: &mut Scratch,
        out: &mut [u8],
    ) -> TaskResult {
        let mut stats = MinMax::EMPTY;
        for l in lines.clone() {
            stats = stats.merge((self.k.minmax)(self.x.line(l, &mut s.line)));
        }
        if !stats.finite {
            return Err(Stop::NonFinite);
        }
        if computed {
            *p = self.grid(stats)?;
        }
        let lb = self.scheme.line_bytes(self.units.n);
        for (i, l) in lines.enumerate() {
            let line = self.x.line(l, &mut s.line);
            self.emit(line, p, &mut s.codes, &mut out[i * lb..(i + 1) * lb]);
        }
        Ok(())
    }

    /// Per-tensor, or channels whose lines interleave: statistics of every line first, then
    /// the grid per channel, then the codes.
    fn two_phase(&self, grid: &mut Vec<QParams>, computed: bool, codes: &mut [u8]) -> TaskResult {
        let u = self.units;
        let per_task = lines_per_task(u.n);
        let tasks = u.lines.div_ceil(per_task);
        let ranges: Vec<_> = (0..tasks)
            .map(|t| t * per_task..((t + 1) * per_task).min(u.lines))
            .collect();
        let stats = parallel::map(ranges, self.x.len(), |lines| {
            let mut buf = Vec::new();
            lines
                .map(|l| (self.k.minmax)(self.x.line(l, &mut buf)))
                .collect::<Vec<_>>()
        })
        .map_err(Stop::Error)?;
        let stats: Vec<MinMax> = stats.into_iter().flatten().collect();
        if stats.iter().any(|s| !s.finite) {
            return Err(Stop::NonFinite);
        }
        if computed {
            let mut per_channel = vec![MinMax::EMPTY; u.channels];
            for (l, s) in stats.iter().enumerate() {
                let c = u.channel_of(l);
                per_channel[c] = per_channel[c].merge(*s);
            }
            *grid = per_channel
                .into_iter()
                .map(|s| self.grid(s))
                .collect::<Result<_>>()?;
        }
        let lb = self.scheme.line_bytes(u.n);
        let items: Vec<_> = split_mut(codes, per_task * lb, tasks)
            .into_iter()
            .enumerate()
            .collect();
        let grid: &[QParams] = grid;
        parallel::map(items, self.x.len(), |(t, codes)| {
            let mut buf = Vec::new();
            let mut scratch = Vec::new();
            for (i, out) in split_mut(codes, lb, codes.len() / lb.max(1))
                .into_iter()
                .enumerate()
            {
                let l = t * per_task + i;
                let p = &grid[u.channel_of(l)];
                self.emit(self.x.line(l, &mut buf), p, &mut scratch, out);
            }
        })
        .map_err(Stop::Error)?;
        Ok(())
    }

    /// Per-channel on the last axis: a grid per element of a line.
    fn lanes(&self, grid: &mut Vec<QParams>, computed: bool, codes: &mut [u8]) -> TaskResult {
        let u = self.units;
        let per_task = lines_per_task(u.n);
        let tasks = u.lines.div_ceil(per_task);
        let ranges: Vec<_> = (0..tasks)
            .map(|t| t * per_task..((t + 1) * per_task).min(u.lines))
            .collect();
        let partial = parallel::map(ranges, self.x.len(), |lines| {
            let mut buf = Vec::new();
            let mut lo = vec![f32::INFINITY; u.n];
            let mut hi = vec![f32::NEG_INFINITY; u.n];
            let mut finite = true;
            for l in lines {
                finite &= (self.k.minmax_lanes)(self.x.line(l, &mut buf), &mut lo, &mut hi);
            }
            (lo, hi, finite)
        })
        .map_err(Stop::Error)?;
        if partial.iter().any(|(_, _, finite)| !finite) {
            return Err(Stop::NonFinite);
        }
        if computed {
            let mut stats = vec![MinMax::EMPTY; u.n];
            for (lo, hi, _) in &partial {
                for (i, s) in stats.iter_mut().enumerate() {
                    *s = s.merge(MinMax {
                        min: lo[i],
                        max: hi[i],
                        finite: true,
                    });
                }
            }
            *grid = stats
                .into_iter()
                .map(|s| self.grid(s))
                .collect::<Result<_>>()?;
        }
        let scale: Vec<f32> = grid.iter().map(|p| p.scale).collect();
        let zero_point: Vec<i32> = grid.iter().map(|p| p.zero_point).collect();
        let (qmin, qmax) = code_range(self.scheme.bits, self.scheme.signed);
        let lb = self.scheme.line_bytes(u.n);
        let items: Vec<_> = split_mut(codes, per_task * lb, tasks)
            .into_iter()
            .enumerate()
            .collect();
        parallel::map(items, self.x.len(), |(t, codes)| {
            let mut buf = Vec::new();
            let mut scratch = vec![0u8; u.n];
            for (i, out) in split_mut(codes, lb, codes.len() / lb.max(1))
                .into_iter()
                .enumerate()
            {
                let line = self.x.line(t * per_task + i, &mut buf);
                if !self.scheme.packed() {
                    (self.k.quantize_lanes)(line, &scale, &zero_point, qmin, qmax, out);
                } else {
                    (self.k.quantize_lanes)(line, &scale, &zero_point, qmin, qmax, &mut scratch);
                    self.pack(&scratch, out);
                }
            }
        })
        .map_err(Stop::Error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dequantize::{dequantize, QuantizedRef};
    use crate::kernels::layout::Granularity;

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
            .collect()
    }

    fn round_trip(shape: &[usize], scheme: Scheme) -> (Quantized, Vec<f32>, Vec<f32>) {
        let x = data(shape.iter().product());
        let view = Strided::contiguous(&x, shape).unwrap();
        let q = quantize(&view, &scheme, None).unwrap();
        let zp: Option<Vec<f32>> = q
            .zero_point
            .as_ref()
            .map(|z| z.iter().map(|&v| v as f32).collect());
        let back = dequantize::<f32>(&QuantizedRef {
            codes: &q.codes,
            shape,
            scheme,
            scale: &q.scale,
            zero_point: zp.as_deref(),
            g_idx: None,
        })
        .unwrap();
        (q, x, back)
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let grans = [
            Granularity::PerTensor,
            Granularity::PerChannel { axis: 0 },
            Granularity::PerChannel { axis: 1 },
            Granularity::PerChannel { axis: 2 },
            Granularity::PerGroup { group_size: 5 },
        ];
        for granularity in grans {
            for bits in 2..=8 {
                for signed in [true, false] {
                    let scheme = Scheme {
                        bits,
                        signed,
                        granularity,
                    };
                    let (q, x, back) = round_trip(&[3, 4, 13], scheme);
                    let smax = q.scale.iter().cloned().fold(0.0f32, f32::max);
                    for (a, b) in x.iter().zip(&back) {
                        // Signed grids clip the most negative values by up to one step.
                        let tol = if signed { 1.01 * smax } else { 0.51 * smax };
                        assert!((a - b).abs() <= tol, "{scheme:?}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn layouts_and_param_counts() {
        let g = Granularity::PerGroup { group_size: 4 };
        let (q, _, _) = round_trip(
            &[2, 9],
            Scheme {
                bits: 4,
                signed: false,
                granularity: g,
            },
        );
        assert_eq!((q.codes.len(), q.scale.len()), (2 * 5, 2 * 3));
        let (q, _, _) = round_trip(
            &[5, 7],
            Scheme {
                bits: 2,
                signed: true,
                granularity: Granularity::PerChannel { axis: 1 },
            },
        );
        assert_eq!((q.codes.len(), q.scale.len()), (5 * 2, 7));
        assert!(q.zero_point.is_none());
        // 3/5/6/7-bit lines are dense bit streams: ceil(9 * bits / 8) bytes per line of 9.
        for (bits, lb) in [(3, 4), (5, 6), (6, 7), (7, 8)] {
            let (q, _, _) = round_trip(
                &[2, 9],
                Scheme {
                    bits,
                    signed: true,
                    granularity: g,
                },
            );
            assert_eq!(q.codes.len(), 2 * lb, "bits={bits}");
        }
    }

    #[test]
    fn first_nonfinite_is_reported() {
        let mut x = data(40);
        x[33] = f32::NAN;
        x[12] = f32::INFINITY;
        let view = Strided::contiguous(&x, &[4, 10]).unwrap();
        let scheme = Scheme {
            bits: 8,
            signed: true,
            granularity: Granularity::PerTensor,
        };
        match quantize(&view, &scheme, None) {
            Err(QfastError::NonFinite { index, value }) => {
                assert_eq!(index, vec![1, 2]);
                assert_eq!(value, f32::INFINITY);
            }
            other => panic!("expected a NonFinite error, got {other:?}"),
        }
    }

    #[test]
    fn static_grid_is_checked() {
        let x = data(8);
        let view = Strided::contiguous(&x, &[2, 4]).unwrap();
        let scheme = Scheme {
            bits: 8,
            signed: false,
            granularity: Granularity::PerChannel { axis: 0 },
        };
        let given = |scale, zero_point| StaticParams { scale, zero_point };
        assert!(quantize(&view, &scheme, Some(given(&[1.0], Some(&[0])))).is_err());
        assert!(quantize(&view, &scheme, Some(given(&[1.0, -1.0], Some(&[0, 0])))).is_err());
        assert!(quantize(&view, &scheme, Some(given(&[1.0, 1.0], Some(&[0, 256])))).is_err());
        assert!(quantize(&view, &scheme, Some(given(&[1.0, 1.0], None))).is_err());
        let q = quantize(&view, &scheme, Some(given(&[1.0, 2.0], Some(&[3, 4])))).unwrap();
        assert_eq!(q.scale, vec![1.0, 2.0]);
        assert_eq!(q.zero_point, Some(vec![3, 4]));
    }
}
