//! `qfast.quantize` over a strided tensor: statistics, grid and codes, split across threads
//! in chunks of lines whose results do not depend on the thread count. The grid is written
//! straight into the caller's scale / zero-point buffers; scratch is bounded per task.

use super::layout::{pack_line, split_mut, Scheme, Units, TASK_ELEMS};
use super::params::{self, code_range, ScaleDtype};
use super::source::{Element, Strided};
use crate::alloc::{try_resize, try_vec, zeroed};
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

/// Columns per segment of a per-channel-on-the-last-axis ("lanes") sweep: the statistics of
/// a wide array are gathered one block of columns at a time, so scratch stays this size
/// whatever the width. A multiple of 8, so segments start on a byte of packed codes.
const LANE_BLOCK: usize = 8192;

/// Most partial statistics a narrow lanes sweep keeps at once (each `n <= LANE_BLOCK` wide).
const LANE_PARTIALS: usize = 64;

/// Quantizes `x` with the scheme, computing the grid or using the given one.
pub fn quantize<T: Element>(
    x: &Strided<T>,
    scheme: &Scheme,
    given: Option<StaticParams>,
) -> Result<Quantized> {
    scheme.validate(x.shape())?;
    let mut codes = zeroed(codes_len(x.shape(), scheme))?;
    let count = params_len(x.shape(), scheme);
    let mut scale = zeroed(count)?;
    let mut zero_point = match scheme.signed {
        true => None,
        false => Some(zeroed(count)?),
    };
    quantize_into(
        x,
        scheme,
        given,
        &mut codes,
        &mut scale,
        zero_point.as_deref_mut(),
    )?;
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

/// Scales (and zero points) for `shape` under the scheme.
pub fn params_len(shape: &[usize], scheme: &Scheme) -> usize {
    Units::new(shape, scheme.granularity).params()
}

/// The grid being written: one scale (and, for unsigned codes, one zero point) per unit.
struct GridOut<'g> {
    scale: &'g mut [f32],
    zero_point: Option<&'g mut [i32]>,
}

impl GridOut<'_> {
    /// Consecutive pieces of `size` units, `count` of them.
    fn split(&mut self, size: usize, count: usize) -> Vec<GridOut<'_>> {
        let scales = split_mut(self.scale, size, count);
        let mut zps: Vec<Option<&mut [i32]>> = match self.zero_point.as_deref_mut() {
            Some(z) => split_mut(z, size, count).into_iter().map(Some).collect(),
            None => (0..count).map(|_| None).collect(),
        };
        scales
            .into_iter()
            .zip(zps.drain(..))
            .map(|(scale, zero_point)| GridOut { scale, zero_point })
            .collect()
    }

    fn set(&mut self, i: usize, p: &QParams) {
        self.scale[i] = p.scale;
        if let Some(z) = self.zero_point.as_deref_mut() {
            z[i] = p.zero_point;
        }
    }
}

/// Grid entry `i` of a scale / zero-point pair (zero point 0 for signed codes).
fn params_at(scale: &[f32], zero_point: Option<&[i32]>, i: usize, range: (i32, i32)) -> QParams {
    QParams {
        scale: scale[i],
        zero_point: zero_point.map_or(0, |z| z[i]),
        qmin: range.0,
        qmax: range.1,
    }
}

/// As [`quantize`], writing the codes into `codes` (of [`codes_len`] bytes) and the grid into
/// `scale` and `zero_point` (of [`params_len`] entries; `zero_point` exactly when the codes
/// are unsigned).
pub fn quantize_into<T: Element>(
    x: &Strided<T>,
    scheme: &Scheme,
    given: Option<StaticParams>,
    codes: &mut [u8],
    scale: &mut [f32],
    zero_point: Option<&mut [i32]>,
) -> Result<()> {
    quantize_into_as(x, scheme, given, ScaleDtype::F32, codes, scale, zero_point)
}

/// As [`quantize_into`], with computed scales rounded to `scale_dtype` as each grid is made,
/// so the codes are computed against the scale as stored (a given grid is used as it is).
pub fn quantize_into_as<T: Element>(
    x: &Strided<T>,
    scheme: &Scheme,
    given: Option<StaticParams>,
    scale_dtype: ScaleDtype,
    codes: &mut [u8],
    scale: &mut [f32],
    zero_point: Option<&mut [i32]>,
) -> Result<()> {
    scheme.validate(x.shape())?;
    let kernels = simd::active()?;
    let units = Units::new(x.shape(), scheme.granularity);
    let want = units.lines * scheme.line_bytes(units.n);
    if codes.len() != want {
        return Err(QfastError::InvalidArgument(format!(
            "the code buffer holds {} bytes, shape {:?} needs {want}",
            codes.len(),
            x.shape(),
        )));
    }
    let count = units.params();
    let zp_len = zero_point.as_ref().map(|z| z.len());
    if scale.len() != count || zp_len.is_some() == scheme.signed || zp_len.unwrap_or(count) != count
    {
        return Err(QfastError::InvalidArgument(format!(
            "the grid buffers hold {} scales and {zp_len:?} zero points; shape {:?} needs {count} \
             scales and {} zero points",
            scale.len(),
            x.shape(),
            if scheme.signed { "no" } else { "as many" }
        )));
    }
    let mut grid = GridOut { scale, zero_point };
    if let Some(g) = given {
        static_grid(scheme, &units, g, &mut grid)?;
    }
    let computed = given.is_none();
    let run = Run {
        x,
        k: kernels,
        scheme,
        units: &units,
        scale_dtype,
        range: code_range(scheme.bits, scheme.signed),
    };
    let outcome = if units.lanes {
        run.lanes(grid, computed, codes)
    } else if units.channels_contiguous() {
        if computed {
            // Units with no lines (an empty input) keep the grid of no data: scale 1, zero 0.
            let p = placeholder(scheme);
            grid.scale.fill(p.scale);
            if let Some(z) = grid.zero_point.as_deref_mut() {
                z.fill(p.zero_point);
            }
        }
        run.fused(grid, computed, codes)
    } else {
        run.two_phase(grid, computed, codes)
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(Stop::NonFinite) => Err(x.nonfinite_error()),
        Err(Stop::Error(e)) => Err(e),
    }
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

/// Checks the given grid and copies it into `out`.
fn static_grid(
    scheme: &Scheme,
    units: &Units,
    given: StaticParams,
    out: &mut GridOut,
) -> Result<()> {
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
    match (given.zero_point, scheme.signed) {
        (Some(_), true) => {
            return Err(QfastError::InvalidArgument(
                "zero_point was given for a symmetric scheme; pass symmetric=False to use it"
                    .to_string(),
            ))
        }
        (None, true) => {}
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
        (Some(z), false) => {
            if let Some(bad) = z.iter().find(|z| !(qmin..=qmax).contains(*z)) {
                return Err(QfastError::InvalidArgument(format!(
                    "zero_point {bad} is outside the {}-bit code range [{qmin}, {qmax}]",
                    scheme.bits
                )));
            }
            if let Some(out) = out.zero_point.as_deref_mut() {
                out.copy_from_slice(z);
            }
        }
    }
    out.scale.copy_from_slice(given.scale);
    Ok(())
}

/// Lines per parallel task.
fn lines_per_task(n: usize) -> usize {
    (TASK_ELEMS / n.max(1)).max(1)
}

/// First problem in task order: deterministic whatever the thread count.
fn first_stop(results: Vec<TaskResult>) -> TaskResult {
    results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
}

/// Per-task buffers of the fused sweeps: a line converted to float32, its unpacked codes, the
/// statistics of its groups and their grids.
#[derive(Default)]
struct Scratch {
    line: Vec<f32>,
    codes: Vec<u8>,
    stats: Vec<MinMax>,
    grid: Vec<QParams>,
}

struct Run<'r, 'a, T> {
    x: &'r Strided<'a, T>,
    k: &'static Kernels,
    scheme: &'r Scheme,
    units: &'r Units,
    scale_dtype: ScaleDtype,
    range: (i32, i32),
}

impl<T: Element> Run<'_, '_, T> {
    /// Writes the codes of line `l` (float32 `line`) with one grid for the whole line.
    fn emit(&self, line: &[f32], p: &QParams, scratch: &mut Vec<u8>, out: &mut [u8]) -> Result<()> {
        if !self.scheme.packed() {
            (self.k.quantize)(line, p, out);
        } else {
            try_resize(scratch, line.len(), 0)?;
            (self.k.quantize)(line, p, scratch);
            self.pack(scratch, out);
        }
        Ok(())
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

    /// Entry `i` of a grid piece.
    fn params(&self, g: &GridOut, i: usize) -> QParams {
        params_at(g.scale, g.zero_point.as_deref(), i, self.range)
    }

    /// Channels (or groups) that each cover a contiguous run of lines: statistics and codes
    /// in one sweep per unit while its data is in cache.
    fn fused(&self, mut grid: GridOut, computed: bool, codes: &mut [u8]) -> TaskResult {
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
            .zip(grid.split(per_task * u.groups, tasks))
            .enumerate()
            .collect();
        let results = parallel::map(items, self.x.len(), |(t, (codes, mut grid))| {
            let first = t * per_task;
            let count = per_task.min(blocks - first);
            let mut s = Scratch::default();
            for b in 0..count {
                let lines = (first + b) * block_lines..(first + b + 1) * block_lines;
                let codes = &mut codes[b * block_lines * lb..(b + 1) * block_lines * lb];
                let units = b * u.groups..(b + 1) * u.groups;
                if block_lines == 1 {
                    self.fused_line(lines.start, &mut grid, units, computed, &mut s, codes)?;
                } else {
                    self.fused_block(lines, &mut grid, units.start, computed, &mut s, codes)?;
                }
            }
            Ok(())
        })
        .map_err(Stop::Error)?;
        first_stop(results)
    }

    /// One line, one grid entry per group (entries `units` of `grid`): the statistics of all
    /// its groups in one kernel call, their grids, then the codes of all its groups in one
    /// call. The groups are checked in order, as a group-by-group loop would stop: the first
    /// non-finite group, or the first grid that cannot be computed, ends the task.
    fn fused_line(
        &self,
        l: usize,
        grid: &mut GridOut,
        units: std::ops::Range<usize>,
        computed: bool,
        s: &mut Scratch,
        out: &mut [u8],
    ) -> TaskResult {
        let u = self.units;
        let line = self.x.line(l, &mut s.line)?;
        if line.is_empty() {
            // A per-channel line of no elements (`group_size` 0): one grid of empty stats.
            if computed {
                let p = self.grid(MinMax::EMPTY)?;
                for i in units {
                    grid.set(i, &p);
                }
            }
            return Ok(());
        }
        try_resize(&mut s.stats, units.len(), MinMax::EMPTY)?;
        (self.k.minmax_groups)(line, u.group_size, &mut s.stats);
        s.grid.clear();
        for (i, stats) in units.zip(&s.stats) {
            if !stats.finite {
                return Err(Stop::NonFinite);
            }
            let p = if computed {
                let p = self.grid(*stats)?;
                grid.set(i, &p);
                p
            } else {
                self.params(grid, i)
            };
            s.grid.push(p);
        }
        if self.scheme.packed() {
            try_resize(&mut s.codes, u.n, 0)?;
            (self.k.quantize_groups)(line, u.group_size, &s.grid, &mut s.codes);
            self.pack(&s.codes, out);
        } else {
            (self.k.quantize_groups)(line, u.group_size, &s.grid, out);
        }
        Ok(())
    }

    /// Several whole lines sharing grid entry `i`.
    fn fused_block(
        &self,
        lines: std::ops::Range<usize>,
        grid: &mut GridOut,
        i: usize,
        computed: bool,
        s: &mut Scratch,
        out: &mut [u8],
    ) -> TaskResult {
        let mut stats = MinMax::EMPTY;
        for l in lines.clone() {
            stats = stats.merge((self.k.minmax)(self.x.line(l, &mut s.line)?));
        }
        if !stats.finite {
            return Err(Stop::NonFinite);
        }
        let p = if computed {
            let p = self.grid(stats)?;
            grid.set(i, &p);
            p
        } else {
            self.params(grid, i)
        };
        let lb = self.scheme.line_bytes(self.units.n);
        for (j, l) in lines.enumerate() {
            let line = self.x.line(l, &mut s.line)?;
            self.emit(line, &p, &mut s.codes, &mut out[j * lb..(j + 1) * lb])?;
        }
        Ok(())
    }

    /// Per-tensor, or channels whose lines interleave: statistics of every channel first
    /// (each task merges its lines into per-channel statistics), then the grid per channel,
    /// then the codes.
    fn two_phase(&self, mut grid: GridOut, computed: bool, codes: &mut [u8]) -> TaskResult {
        let u = self.units;
        let per_task = lines_per_task(u.n);
        let tasks = u.lines.div_ceil(per_task);
        let ranges: Vec<_> = (0..tasks)
            .map(|t| t * per_task..((t + 1) * per_task).min(u.lines))
            .collect();
        let stats = parallel::map(ranges, self.x.len(), |lines| -> Result<Vec<MinMax>> {
            let mut buf = Vec::new();
            let mut out = Vec::new();
            for l in lines {
                let s = (self.k.minmax)(self.x.line(l, &mut buf)?);
                if out.len() == out.capacity() {
                    out.try_reserve(1)
                        .map_err(|_| crate::alloc::out_of_memory::<MinMax>(per_task))?;
                }
                out.push(s);
            }
            Ok(out)
        })
        .map_err(Stop::Error)?;
        let mut per_channel = try_vec(MinMax::EMPTY, u.channels)?;
        let mut l = 0;
        for task in stats {
            for s in task? {
                if !s.finite {
                    return Err(Stop::NonFinite);
                }
                let c = u.channel_of(l);
                per_channel[c] = per_channel[c].merge(s);
                l += 1;
            }
        }
        if computed {
            for (c, s) in per_channel.into_iter().enumerate() {
                let p = self.grid(s)?;
                grid.set(c, &p);
            }
        }
        let lb = self.scheme.line_bytes(u.n);
        let items: Vec<_> = split_mut(codes, per_task * lb, tasks)
            .into_iter()
            .enumerate()
            .collect();
        let grid = &grid;
        let results = parallel::map(items, self.x.len(), |(t, codes)| -> Result<()> {
            let mut buf = Vec::new();
            let mut scratch = Vec::new();
            for (i, out) in split_mut(codes, lb, codes.len() / lb.max(1))
                .into_iter()
                .enumerate()
            {
                let l = t * per_task + i;
                let p = self.params(grid, u.channel_of(l));
                self.emit(self.x.line(l, &mut buf)?, &p, &mut scratch, out)?;
            }
            Ok(())
        })
        .map_err(Stop::Error)?;
        results.into_iter().collect::<Result<()>>()?;
        Ok(())
    }

    /// Per-channel on the last axis: a grid per element of a line. The statistics are
    /// gathered per block of [`LANE_BLOCK`] columns (a wide array), or over at most
    /// [`LANE_PARTIALS`] chunks of lines (a narrow one), so scratch does not grow with the
    /// array; min / max merge exactly, so the result does not depend on the split.
    fn lanes(&self, mut grid: GridOut, computed: bool, codes: &mut [u8]) -> TaskResult {
        let u = self.units;
        if u.n > LANE_BLOCK {
            let blocks = u.n.div_ceil(LANE_BLOCK);
            let items: Vec<_> = grid
                .split(LANE_BLOCK, blocks)
                .into_iter()
                .enumerate()
                .collect();
            let results = parallel::map(items, self.x.len(), |(b, mut grid)| -> TaskResult {
                let c0 = b * LANE_BLOCK;
                let w = grid.scale.len();
                let mut lo = try_vec(f32::INFINITY, w)?;
                let mut hi = try_vec(f32::NEG_INFINITY, w)?;
                let mut buf = Vec::new();
                let mut finite = true;
                for l in 0..u.lines {
                    let seg = self.x.segment(l, c0, w, &mut buf)?;
                    finite &= (self.k.minmax_lanes)(seg, &mut lo, &mut hi);
                }
                if !finite {
                    return Err(Stop::NonFinite);
                }
                if computed {
                    self.lane_grid(&lo, &hi, &mut grid)?;
                }
                Ok(())
            })
            .map_err(Stop::Error)?;
            first_stop(results)?;
        } else {
            let per_task = lines_per_task(u.n).max(u.lines.div_ceil(LANE_PARTIALS));
            let tasks = u.lines.div_ceil(per_task);
            let ranges: Vec<_> = (0..tasks)
                .map(|t| t * per_task..((t + 1) * per_task).min(u.lines))
                .collect();
            let partial = parallel::map(ranges, self.x.len(), |lines| {
                let mut lo = try_vec(f32::INFINITY, u.n)?;
                let mut hi = try_vec(f32::NEG_INFINITY, u.n)?;
                let mut buf = Vec::new();
                let mut finite = true;
                for l in lines {
                    finite &= (self.k.minmax_lanes)(self.x.line(l, &mut buf)?, &mut lo, &mut hi);
                }
                Ok((lo, hi, finite))
            })
            .map_err(Stop::Error)?;
            let mut lo = try_vec(f32::INFINITY, u.n)?;
            let mut hi = try_vec(f32::NEG_INFINITY, u.n)?;
            for p in partial {
                let (plo, phi, finite) = p.map_err(Stop::Error)?;
                if !finite {
                    return Err(Stop::NonFinite);
                }
                for i in 0..u.n {
                    lo[i] = lo[i].min(plo[i]);
                    hi[i] = hi[i].max(phi[i]);
                }
            }
            if computed {
                self.lane_grid(&lo, &hi, &mut grid)?;
            }
        }
        self.lane_codes(&grid, codes)
    }

    /// The grid of every column from its statistics.
    fn lane_grid(&self, lo: &[f32], hi: &[f32], grid: &mut GridOut) -> Result<()> {
        for (i, (&min, &max)) in lo.iter().zip(hi).enumerate() {
            let p = self.grid(MinMax {
                min,
                max,
                finite: true,
            })?;
            grid.set(i, &p);
        }
        Ok(())
    }

    /// The codes of a lanes sweep, one segment of [`LANE_BLOCK`] columns at a time.
    fn lane_codes(&self, grid: &GridOut, codes: &mut [u8]) -> TaskResult {
        let u = self.units;
        let per_task = lines_per_task(u.n);
        let tasks = u.lines.div_ceil(per_task);
        let lb = self.scheme.line_bytes(u.n);
        let (qmin, qmax) = self.range;
        let items: Vec<_> = split_mut(codes, per_task * lb, tasks)
            .into_iter()
            .enumerate()
            .collect();
        let results = parallel::map(items, self.x.len(), |(t, codes)| -> Result<()> {
            let w = u.n.min(LANE_BLOCK);
            let mut buf = Vec::new();
            let mut scratch = zeroed::<u8>(if self.scheme.packed() { w } else { 0 })?;
            let zeros = zeroed::<i32>(if grid.zero_point.is_none() { w } else { 0 })?;
            for (i, out) in split_mut(codes, lb, codes.len() / lb.max(1))
                .into_iter()
                .enumerate()
            {
                let l = t * per_task + i;
                let mut c0 = 0;
                while c0 < u.n {
                    let w = (u.n - c0).min(LANE_BLOCK);
                    let seg = self.x.segment(l, c0, w, &mut buf)?;
                    let scale = &grid.scale[c0..c0 + w];
                    let zp = match grid.zero_point.as_deref() {
                        Some(z) => &z[c0..c0 + w],
                        None => &zeros[..w],
                    };
                    let dst = &mut out[self.scheme.line_bytes(c0)..self.scheme.line_bytes(c0 + w)];
                    if !self.scheme.packed() {
                        (self.k.quantize_lanes)(seg, scale, zp, qmin, qmax, dst);
                    } else {
                        let s = &mut scratch[..w];
                        (self.k.quantize_lanes)(seg, scale, zp, qmin, qmax, s);
                        self.pack(s, dst);
                    }
                    c0 += w;
                }
            }
            Ok(())
        })
        .map_err(Stop::Error)?;
        results.into_iter().collect::<Result<()>>()?;
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

    /// Per-channel on the last axis of a wide array (statistics per block of columns) and of
    /// a narrow one (line chunks) give exactly the per-column reference: column `c`'s codes
    /// are those of quantizing column `c` alone.
    #[test]
    fn lanes_match_column_by_column() {
        for (lines, n) in [(3, LANE_BLOCK * 2 + 13), (70, 37), (0, LANE_BLOCK + 1)] {
            let x = data(lines * n);
            let view = Strided::contiguous(&x, &[lines, n]).unwrap();
            for (bits, signed) in [
                (8, false),
                (4, true),
                (2, false),
                (8, true),
                (3, false),
                (5, true),
            ] {
                let scheme = Scheme {
                    bits,
                    signed,
                    granularity: Granularity::PerChannel { axis: 1 },
                };
                let q = quantize(&view, &scheme, None).unwrap();
                assert_eq!(q.scale.len(), n);
                let lb = scheme.line_bytes(n);
                for c in (0..n)
                    .step_by(997)
                    .chain([n.saturating_sub(1)])
                    .take_while(|_| n > 0)
                {
                    let col: Vec<f32> = (0..lines).map(|l| x[l * n + c]).collect();
                    let one = Strided::contiguous(&col, &[lines, 1]).unwrap();
                    let r = quantize(&one, &scheme, None).unwrap();
                    assert_eq!(r.scale[0], q.scale[c], "{bits} {signed} column {c}");
                    if let (Some(z), Some(rz)) = (&q.zero_point, &r.zero_point) {
                        assert_eq!(z[c], rz[0]);
                    }
                    let (b, mask) = (bits as usize, ((1u16 << bits) - 1) as u8);
                    for l in 0..lines {
                        // Code c of the line's little-endian bit stream (it may straddle
                        // two bytes; a byte past the line is masked off).
                        let at = l * lb + c * b / 8;
                        let pair = q.codes[at] as u16
                            | (q.codes.get(at + 1).copied().unwrap_or(0) as u16) << 8;
                        let code = (pair >> (c * b % 8)) as u8 & mask;
                        let want = r.codes[l] & mask;
                        assert_eq!(code, want, "{bits} {signed} ({l}, {c})");
                    }
                }
            }
        }
    }
}
