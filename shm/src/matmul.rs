//! A safe front for a single-threaded, cache-blocked SIMD dgemm.
//!
//! Workers multiply row blocks of shared arrays; the kernel is the `gemm` crate's
//! (chosen over `matrixmultiply` by measurement: bench/BENCHMARKS.md). Its `x86-v4`
//! feature (the workspace enables it) picks the AVX-512 micro-kernel at run time on
//! CPUs that have AVX-512F, and AVX2+FMA otherwise. Its interface takes raw pointers
//! and strides, so the bounds are checked here once.

use crate::{Result, ShmError};

/// `c = a · b` for row-major `a` (m×k), `b` (k×n) and `c` (m×n), on this thread only.
///
/// ```
/// let a = [1.0, 2.0, 3.0, 4.0]; // 2x2
/// let b = [5.0, 6.0, 7.0, 8.0]; // 2x2
/// let mut c = [0.0; 4];
/// procpool_shm::matmul_into(&a, &b, &mut c, 2, 2, 2).unwrap();
/// assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
/// ```
pub fn matmul_into(
    a: &[f64],
    b: &[f64],
    c: &mut [f64],
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    let check = |which, got: usize, rows: usize, cols: usize| {
        let expected = rows.checked_mul(cols).ok_or(ShmError::SizeOverflow {
            shape: vec![rows, cols],
            dtype: "<f8".into(),
        })?;
        if got == expected {
            Ok(())
        } else {
            Err(ShmError::ProductShape {
                m,
                k,
                n,
                which,
                got,
                expected,
            })
        }
    };
    check("a", a.len(), m, k)?;
    check("b", b.len(), k, n)?;
    check("c", c.len(), m, n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.fill(0.0);
        return Ok(());
    }
    // SAFETY: the lengths checked above make every element the kernel touches
    // in bounds: `a` is m×k with row stride k, `b` k×n with row stride n, `c` m×n with
    // row stride n, all with column stride 1; `c` is borrowed mutably, so it aliases
    // neither input. With `read_dst = false` the kernel ignores c's old contents
    // (alpha is unused) and writes c = beta · a·b with beta = 1.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
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
    fn matches_the_textbook_product_on_odd_shapes() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 1, 65), (5, 0, 3)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i % 13) as f64 - 6.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i % 7) as f64 * 0.5).collect();
            let mut c = vec![f64::NAN; m * n];
            matmul_into(&a, &b, &mut c, m, k, n).unwrap();
            assert_eq!(c, naive(&a, &b, m, k, n), "{m}x{k}x{n}");
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut c = vec![0.0; 4];
        let err = matmul_into(&[1.0; 6], &[1.0; 4], &mut c, 2, 2, 2).unwrap_err();
        assert!(
            err.to_string().contains("a holds 6 elements, expected 4"),
            "{err}"
        );
        assert!(matmul_into(&[1.0; 4], &[1.0; 4], &mut c[..3], 2, 2, 2).is_err());
    }
}
