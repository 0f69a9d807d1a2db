//! gemm (procpool's kernel) vs matrixmultiply, one thread, C = A·B of n×n f64, best of 3,
//! each kernel twice in alternation. Prints one JSON line per measurement; "gemm_path"
//! says which of gemm's micro-kernels this build may use (x86-v4: AVX-512 where the CPU
//! has it).
use std::time::Instant;
fn main() {
    for n in [1024usize, 2048] {
        let a: Vec<f64> = (0..n * n).map(|i| ((i * 7919) % 1000) as f64 / 500.0 - 1.0).collect();
        let b: Vec<f64> = (0..n * n).map(|i| ((i * 104729) % 1000) as f64 / 500.0 - 1.0).collect();
        let mut c = vec![0.0f64; n * n];
        let flops = 2.0 * (n as f64).powi(3);
        for name in ["gemm", "matrixmultiply", "gemm", "matrixmultiply"] {
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                unsafe {
                    if name == "gemm" {
                        gemm::gemm(n, n, n, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, n as isize,
                            b.as_ptr(), 1, n as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
                    } else {
                        matrixmultiply::dgemm(n, n, n, 1.0, a.as_ptr(), n as isize, 1, b.as_ptr(), n as isize, 1,
                            0.0, c.as_mut_ptr(), n as isize, 1);
                    }
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let gemm_path = if cfg!(feature = "x86-v4") { "x86-v4" } else { "x86-v3" };
            println!(
                "{{\"n\": {n}, \"kernel\": \"{name}\", \"gemm_path\": \"{gemm_path}\", \"gflops\": {:.2}}}",
                flops / best / 1e9
            );
        }
    }
}
