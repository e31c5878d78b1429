//! How a tensor splits into quantization units and how codes are laid out in memory.

use crate::checks;
use crate::error::Result;

/// Which elements share a scale (and zero point).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per index of `axis`.
    PerChannel { axis: usize },
    /// One scale per `group_size` consecutive elements along the last axis (the last group of
    /// a line may be shorter), per index of every other axis.
    PerGroup { group_size: usize },
}

/// The quantization scheme: code width, signedness (symmetric grids use signed codes) and
/// granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheme {
    pub bits: u32,
    pub signed: bool,
    pub granularity: Granularity,
}

/// Elements per line to aim for in one parallel task: large enough to amortise scheduling,
/// small enough to balance.
pub const TASK_ELEMS: usize = 1 << 16;

impl Scheme {
    pub fn validate(&self, shape: &[usize]) -> Result<()> {
        checks::check_bits(self.bits)?;
        match self.granularity {
            Granularity::PerTensor => Ok(()),
            Granularity::PerChannel { axis } => checks::check_axis(axis, shape.len()).map(drop),
            Granularity::PerGroup { group_size } => checks::check_group_size(group_size).map(drop),
        }
    }

    /// Codes per byte: 2 for 4-bit, 4 for 2-bit, else 1 (3/5/6/7-bit use a byte each).
    pub fn codes_per_byte(&self) -> usize {
        match self.bits {
            4 => 2,
            2 => 4,
            _ => 1,
        }
    }

    /// Bytes of one packed line of `n` codes.
    pub fn line_bytes(&self, n: usize) -> usize {
        n.div_ceil(self.codes_per_byte())
    }
}

/// The unit structure of a shape (at least 1-d) under a granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Units {
    /// Number of lines (product of the leading axes) and their length (the last axis).
    pub lines: usize,
    pub n: usize,
    /// Per-group: groups per line and the group size.
    pub groups: usize,
    pub group_size: usize,
    /// Per-channel on a leading axis, or per-tensor: line `l` belongs to channel
    /// `(l / inner) % channels`.
    pub inner: usize,
    pub channels: usize,
    /// Per-channel on the last axis: one scale per element of a line.
    pub lanes: bool,
}

impl Units {
    pub fn new(shape: &[usize], g: Granularity) -> Units {
        let shape: &[usize] = if shape.is_empty() { &[1] } else { shape };
        let d = shape.len();
        let n = shape[d - 1];
        let lines = shape[..d - 1].iter().product();
        let mut u = Units {
            lines,
            n,
            groups: 1,
            group_size: n,
            inner: lines.max(1),
            channels: 1,
            lanes: false,
        };
        match g {
            Granularity::PerTensor => {}
            Granularity::PerChannel { axis } if axis == d - 1 => u.lanes = true,
            Granularity::PerChannel { axis } => {
                u.channels = shape[axis];
                u.inner = shape[axis + 1..d - 1].iter().product();
            }
            Granularity::PerGroup { group_size } => {
                u.group_size = group_size;
                u.groups = n.div_ceil(group_size);
                u.inner = 1;
                u.channels = lines;
            }
        }
        u
    }

    /// Number of scales (and zero points).
    pub fn params(&self) -> usize {
        if self.lanes {
            self.n
        } else if self.groups != 1 || self.group_size != self.n {
            self.lines * self.groups
        } else {
            self.channels
        }
    }

    /// The channel of line `l` (per-tensor and per-channel on a leading axis).
    pub fn channel_of(&self, l: usize) -> usize {
        (l / self.inner.max(1)) % self.channels.max(1)
    }

    /// Whether every channel covers one contiguous run of lines, so that its statistics and
    /// codes can be computed in one sweep while its lines are in cache.
    pub fn channels_contiguous(&self) -> bool {
        !self.lanes && self.inner * self.channels == self.lines
    }
}

/// Splits `buf` into `count` consecutive pieces of `size` (which may be 0).
pub fn split_mut<T>(mut buf: &mut [T], size: usize, count: usize) -> Vec<&mut [T]> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (head, tail) = buf.split_at_mut(size.min(buf.len()));
        out.push(head);
        buf = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_counts() {
        let u = Units::new(&[4, 6], Granularity::PerGroup { group_size: 4 });
        assert_eq!((u.groups, u.params()), (2, 8));
        let u = Units::new(&[2, 3, 5], Granularity::PerChannel { axis: 1 });
        assert_eq!(
            (u.params(), u.channel_of(4), u.channels_contiguous()),
            (3, 1, false)
        );
        let u = Units::new(&[3, 5], Granularity::PerChannel { axis: 0 });
        assert!(u.channels_contiguous());
        let u = Units::new(&[3, 5], Granularity::PerChannel { axis: 1 });
        assert!(u.lanes && u.params() == 5);
        let u = Units::new(&[], Granularity::PerTensor);
        assert_eq!((u.lines, u.n, u.params()), (1, 1, 1));
        assert_eq!(split_mut(&mut [0u8; 0], 0, 3).len(), 3);
    }
}
