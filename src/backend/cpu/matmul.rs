//! Multi-threaded f32 matrix products for the reference backend.

use rayon::prelude::*;

/// Output columns computed per task: enough work to amortise scheduling, few enough that
/// the weight rows of one task stay in cache while every input row passes over them.
const COLUMN_BLOCK: usize = 32;

/// `y[m, n] = x[m, k] · w[n, k]ᵀ`.
pub fn matmul_nt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.len(), n * k);
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(COLUMN_BLOCK))
        .into_par_iter()
        .map(|b| {
            let cols = b * COLUMN_BLOCK..((b + 1) * COLUMN_BLOCK).min(n);
            let mut out = Vec::with_capacity(m * cols.len());
            for row in x.chunks_exact(k) {
                for j in cols.clone() {
                    out.push(dot(row, &w[j * k..(j + 1) * k]));
                }
            }
            out
        })
        .collect();
    let mut y = vec![0.0; m * n];
    for (b, block) in blocks.iter().enumerate() {
        let c0 = b * COLUMN_BLOCK;
        let width = block.len() / m.max(1);
        for i in 0..m {
            y[i * n + c0..i * n + c0 + width].copy_from_slice(&block[i * width..(i + 1) * width]);
        }
    }
    y
}

/// Dot product with eight independent accumulators so the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// `y += a·x`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product_on_odd_sizes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 17, 70), (5, 8, 33), (2, 100, 1)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let y = matmul_nt(&x, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let expected: f32 = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
                    assert!(
                        (y[i * n + j] - expected).abs() < 1e-4,
                        "({i},{j}) of {m}x{k}x{n}"
                    );
                }
            }
        }
    }
}
