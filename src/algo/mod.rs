//! Weight-quantization algorithms: the parts of GPTQ, AWQ and HQQ that NumPy/BLAS cannot do
//! at the speed of the hardware (column loops, grid searches, iterations). `kernels` applies a
//! given or min/max grid; these search for one. Their loops run compiled for the active ISA
//! path through `simd::per_isa!`.

pub mod awq;
pub mod gptq;
pub mod hqq;

/// NumPy's float32 summation (`pairwise_sum_FLOAT`), operation for operation: runs of at most
/// 128 values summed in 8 lanes folded as `((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))`, then the
/// rest one by one; longer runs split in two at a multiple of 8. The order of a float32 sum
/// is arbitrary (torch's differs again), but sharing NumPy's lets the tests hold results to
/// NumPy transcriptions of the references bit for bit: HQQ's zero points (a different
/// rounding of one mean can flip a code next iteration) and GPTQ's MSE grid choice.
pub(crate) fn pairwise_sum(a: &[f32]) -> f32 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(-0.0, |r, &v| r + v)
    } else if n <= BLOCK {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        for block in a[8..full].chunks_exact(8) {
            for j in 0..8 {
                r[j] += block[j];
            }
        }
        let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        a[full..].iter().fold(res, |r, &v| r + v)
    } else {
        let split = tree_split(n);
        pairwise_sum(&a[..split]) + pairwise_sum(&a[split..])
    }
}

/// The split point of NumPy's pairwise recursion for `n > 128` values.
pub(crate) fn tree_split(n: usize) -> usize {
    let half = n / 2;
    half - half % 8
}
