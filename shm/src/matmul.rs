//! A single-threaded, cache-blocked SIMD dgemm over shared arrays.
//!
//! Workers multiply row blocks of shared arrays; the kernel is the `gemm` crate's
//! (chosen over `matrixmultiply` by measurement: bench/BENCHMARKS.md). Its `x86-v4`
//! feature (the workspace enables it) picks the AVX-512 micro-kernel at run time on
//! CPUs that have AVX-512F, and AVX2+FMA otherwise. Its interface takes raw pointers
//! and strides, which is what memory shared with other processes needs (see
//! [`SharedArray`]): the bounds are checked here once, and the kernel reads and
//! writes the mappings in place, with no copy and no reference into them.

use std::ops::Range;

use crate::{Result, SharedArray, ShmError};

/// `C[rows] = A[rows] · B`: computes the rows `rows` of the product of the
/// shared `f64` matrices `a` (m×k) and `b` (k×n) into the same rows of the
/// writable shared matrix `c` (m×n), on this thread only.
///
/// All three must be 2-D `f64` arrays in C order, in the host's byte order.
/// The kernel works in the mappings themselves, as the type's cross-process
/// contract allows: while it runs, no other process may write `a`'s rows
/// `rows` or any of `b` (they would change the numbers read), nor read or
/// write `c`'s rows `rows` (they would see, or spoil, a half-done block).
/// Other rows of `c` may be written by other workers meanwhile.
///
/// ```
/// # fn main() -> Result<(), procpool_shm::ShmError> {
/// use procpool_shm::{matmul_rows, Element, SharedArray};
/// let a = SharedArray::from_f64("a", &[2, 2], &[1.0, 2.0, 3.0, 4.0])?;
/// let b = SharedArray::from_f64("b", &[2, 2], &[5.0, 6.0, 7.0, 8.0])?;
/// let mut c = SharedArray::create("c", f64::DTYPE, &[2, 2])?;
/// matmul_rows(&a, &b, &mut c, 1..2)?;
/// assert_eq!(c.to_vec::<f64>()?, [0.0, 0.0, 43.0, 50.0]);
/// # Ok(()) }
/// ```
pub fn matmul_rows(
    a: &SharedArray,
    b: &SharedArray,
    c: &mut SharedArray,
    rows: Range<usize>,
) -> Result<()> {
    let (m, k, n) = match (a.shape(), b.shape(), c.shape()) {
        (&[m, k], &[k2, n], &[m2, n2]) if k == k2 && m == m2 && n == n2 => (m, k, n),
        _ => {
            return Err(ShmError::ProductShape {
                a: a.shape().to_vec(),
                b: b.shape().to_vec(),
                c: c.shape().to_vec(),
            })
        }
    };
    if rows.start > rows.end || rows.end > m {
        return Err(ShmError::OutOfRange {
            what: "rows",
            range: rows,
            len: m,
        });
    }
    if !c.is_writable() {
        return Err(ShmError::ReadOnly);
    }
    let (a_first, b_first, c_first) = (a.f64_elements()?, b.f64_elements()?, c.f64_elements()?);
    if rows.is_empty() || n == 0 {
        return Ok(());
    }
    if k == 0 {
        return c.write(rows.start * n, &vec![0.0; rows.len() * n]);
    }
    // SAFETY: the shapes checked above make every element the kernel touches lie
    // inside the three arrays' data (each is as long as its shape says: checked
    // when it was created or opened, and aligned for f64): rows `rows` of `a`
    // (m×k, row stride k), all of `b` (k×n, row stride n), rows `rows` of `c`
    // (m×n, row stride n), all with column stride 1. `c`'s mapping is writable
    // (checked) and borrowed mutably, so this process makes no other access to it
    // meanwhile; what other processes do is bound by the contract above. No
    // reference into any mapping is made: the kernel takes raw pointers. With
    // `read_dst = false` it ignores c's old contents (alpha is unused) and writes
    // c = beta · a·b with beta = 1.
    unsafe {
        gemm::gemm(
            rows.len(),
            n,
            k,
            c_first.add(rows.start * n),
            1,
            n as isize,
            false,
            a_first.add(rows.start * k),
            1,
            k as isize,
            b_first,
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Element;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_the_textbook_product_on_odd_shapes_block_by_block() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 1, 65), (5, 0, 3)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i % 13) as f64 - 6.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i % 7) as f64 * 0.5).collect();
            let shared_a = SharedArray::from_f64("a", &[m, k], &a).unwrap();
            let shared_b = SharedArray::from_f64("b", &[k, n], &b).unwrap();
            let mut c = SharedArray::create("c", f64::DTYPE, &[m, n]).unwrap();
            c.fill(f64::NAN).unwrap();
            // Two blocks, as two tasks would compute them.
            let half = m / 2;
            for rows in [0..half, half..m] {
                matmul_rows(&shared_a, &shared_b, &mut c, rows).unwrap();
            }
            assert_eq!(
                c.to_vec::<f64>().unwrap(),
                naive(&a, &b, m, k, n),
                "{m}x{k}x{n}"
            );
        }
    }

    #[test]
    fn only_the_given_rows_are_written() {
        let a = SharedArray::from_f64("a", &[3, 1], &[1.0, 2.0, 3.0]).unwrap();
        let b = SharedArray::from_f64("b", &[1, 2], &[10.0, 20.0]).unwrap();
        let mut c = SharedArray::create("c", f64::DTYPE, &[3, 2]).unwrap();
        c.fill(-1.0).unwrap();
        matmul_rows(&a, &b, &mut c, 1..2).unwrap();
        assert_eq!(
            c.to_vec::<f64>().unwrap(),
            [-1.0, -1.0, 20.0, 40.0, -1.0, -1.0]
        );
        matmul_rows(&a, &b, &mut c, 3..3).unwrap();
    }

    #[test]
    fn wrong_shapes_rows_dtypes_and_read_only_products_are_errors() {
        let a = SharedArray::from_f64("a", &[2, 3], &[1.0; 6]).unwrap();
        let b = SharedArray::from_f64("b", &[2, 2], &[1.0; 4]).unwrap();
        let mut c = SharedArray::create("c", f64::DTYPE, &[2, 2]).unwrap();
        let err = matmul_rows(&a, &b, &mut c, 0..2).unwrap_err();
        assert!(
            err.to_string()
                .contains("A of shape [2, 3], B of shape [2, 2] and C of shape [2, 2]"),
            "{err}"
        );
        let mut vector = SharedArray::from_f64("v", &[4], &[1.0; 4]).unwrap();
        assert!(matches!(
            matmul_rows(&b, &b, &mut vector, 0..1),
            Err(ShmError::ProductShape { .. })
        ));
        let err = matmul_rows(&b, &b, &mut c, 1..3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rows 1..3 is out of range: there are only 2"
        );
        let mut ints = SharedArray::create("i", i32::DTYPE, &[2, 2]).unwrap();
        assert!(matches!(
            matmul_rows(&b, &b, &mut ints, 0..2),
            Err(ShmError::DTypeMismatch { .. })
        ));
        let path = c.worker_path();
        let mut read_only = SharedArray::open(std::path::Path::new(&path), false).unwrap();
        assert!(matches!(
            matmul_rows(&b, &b, &mut read_only, 0..2),
            Err(ShmError::ReadOnly)
        ));
    }
}
