//! How a tensor splits into quantization units and how codes are laid out in memory.

use crate::checks;
use crate::error::Result;
use crate::simd::{scalar, Kernels};

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

    /// Whether codes are packed below a byte each (every width but 8).
    pub fn packed(&self) -> bool {
        self.bits < 8
    }

    /// Bytes of one packed line of `n` codes: `ceil(n * bits / 8)`.
    pub fn line_bytes(&self, n: usize) -> usize {
        line_bytes(n, self.bits)
    }
}

/// Bytes of one line of `n` codes of `bits` bits: the codes form a little-endian bit stream
/// (code `i` in bits `[i * bits, (i + 1) * bits)`, bit 0 the lowest bit of byte 0), padded with
/// zero bits to a whole byte, so `ceil(n * bits / 8)`, computed without overflow.
pub fn line_bytes(n: usize, bits: u32) -> usize {
    let b = bits as usize;
    (n / 8) * b + ((n % 8) * b).div_ceil(8)
}

/// Packs one line of byte codes (`bits` low bits used) into `out`
/// (`line_bytes(codes.len(), bits)` bytes): 8-bit copied, 4-bit and 2-bit by the path's
/// kernels, 3/5/6/7-bit by the portable bit-stream packer (the same bytes on every path).
pub fn pack_line(k: &Kernels, bits: u32, codes: &[u8], out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(codes),
        4 => (k.pack4)(codes, out),
        2 => (k.pack2)(codes, out),
        _ => scalar::pack_bits(codes, bits, out),
    }
}

/// Unpacks `out.len()` codes of a line packed by [`pack_line`] to one byte each, sign-extended
/// when `signed`; `packed` holds at least `line_bytes(out.len(), bits)` bytes.
pub fn unpack_line(k: &Kernels, bits: u32, packed: &[u8], signed: bool, out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(&packed[..out.len()]),
        4 => (k.unpack4)(packed, signed, out),
        2 => (k.unpack2)(packed, signed, out),
        _ => scalar::unpack_bits(packed, bits, signed, out),
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

    #[test]
    fn line_bytes_is_ceil_n_bits_over_8() {
        for bits in 2..=8u32 {
            for n in 0..100usize {
                assert_eq!(line_bytes(n, bits), (n * bits as usize).div_ceil(8));
            }
        }
        assert_eq!(line_bytes(usize::MAX, 8), usize::MAX);
        assert_eq!(line_bytes(usize::MAX, 4), usize::MAX / 2 + 1);
    }

    #[test]
    fn pack_line_agrees_on_every_path() {
        // Every path packs every width into the same bytes and reads them back.
        for isa in crate::simd::available() {
            let k = isa.kernels().unwrap();
            for bits in 2..=8u32 {
                for n in [0usize, 1, 5, 8, 31, 64, 67] {
                    let codes: Vec<u8> = (0..n).map(|i| (i * 29 + 3) as u8).collect();
                    let mask = ((1u16 << bits) - 1) as u8;
                    let mut want = vec![0u8; line_bytes(n, bits)];
                    scalar::pack_bits(&codes, bits, &mut want);
                    let mut got = vec![0u8; line_bytes(n, bits)];
                    pack_line(k, bits, &codes, &mut got);
                    assert_eq!(got, want, "{isa:?} bits={bits} n={n}");
                    let mut back = vec![0u8; n];
                    unpack_line(k, bits, &got, false, &mut back);
                    let masked: Vec<u8> = codes.iter().map(|&c| c & mask).collect();
                    assert_eq!(back, masked, "{isa:?} bits={bits} n={n}");
                }
            }
        }
    }
}
