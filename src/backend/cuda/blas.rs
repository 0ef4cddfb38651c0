//! cuBLAS GEMMs for the projections, in the layout the model uses: row-major activations
//! `[rows, k]` times row-major weights `[n, k]` transposed. cuBLAS is column-major, so each call
//! computes the transposed product `(x·wᵀ)ᵀ = w·xᵀ`, which lands row-major in memory as `x·wᵀ`.
//! bf16 runs through `cublasGemmEx` with f32 accumulation; f32 uses plain SGEMM (no TF32), so
//! the f32 path stays within 1e-4 of the CPU reference.

use super::counters::CounterCells;
use super::error::{cublas_err, unavailable};
use super::graph::Recording;
use super::GpuFloat;
use crate::error::{Error, Result};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice};
use std::sync::Arc;

pub struct Blas {
    handle: CudaBlas,
    stream: Arc<CudaStream>,
    /// Each GEMM call counts as one kernel launch.
    counters: Arc<CounterCells>,
    /// A dry run drops the GEMMs (graph.rs).
    recording: Arc<Recording>,
}

/// A row-major matrix operand: `rows × cols` values with `ld` between row starts.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Op {
        op: "matmul",
        message: format!("{what} = {v} is beyond cuBLAS's 32-bit sizes"),
    })
}

impl Blas {
    pub fn new(
        stream: Arc<CudaStream>,
        counters: Arc<CounterCells>,
        recording: Arc<Recording>,
    ) -> Result<Self> {
        // SAFETY: only asks the dynamic loader whether libcublas can be opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(unavailable(
                "cuBLAS (libcublas.so) was not found: add the CUDA toolkit's lib64 folder or the \
                 pip nvidia-cublas wheel's lib folder to LD_LIBRARY_PATH",
            ));
        }
        let handle =
            CudaBlas::new(stream.clone()).map_err(cublas_err("creating the cuBLAS handle"))?;
        Ok(Blas {
            handle,
            stream,
            counters,
            recording,
        })
    }

    /// `out[x.rows, w.rows] = x · wᵀ` (`x.cols == w.cols`); `out` rows are `ld_out` apart.
    pub fn matmul_nt<T: GpuFloat, X, W, O>(
        &self,
        x: &X,
        x_layout: Layout,
        w: &W,
        w_layout: Layout,
        out: &mut O,
        ld_out: usize,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
        X: DevicePtr<T>,
        W: DevicePtr<T>,
        O: DevicePtrMut<T>,
    {
        check_operands(x, x_layout, w, w_layout, out, ld_out)?;
        let cfg = gemm_config::<T>(x_layout, w_layout, ld_out)?;
        if self.recording.dry_run() {
            return Ok(());
        }
        if !self.recording.capturing() {
            self.counters.kernel_launch();
        }
        // SAFETY: check_operands bounds every element cuBLAS reads or writes by the lengths of
        // the three buffers, and all three live on the handle's stream.
        unsafe { self.handle.gemm(cfg, w, x, out) }.map_err(cublas_err(format!(
            "cuBLAS GEMM {x_layout:?} × {w_layout:?}ᵀ"
        )))
    }

    /// `out[x.rows, w.rows] = x · wᵀ` with an f32 result whatever the operands' type: the MoE
    /// router's logits, which the spec keeps in fp32 because rounding one can change the expert a
    /// token is sent to.
    pub fn matmul_nt_f32_out<T: GpuFloat, X, W>(
        &self,
        x: &X,
        x_layout: Layout,
        w: &W,
        w_layout: Layout,
        out: &mut CudaSlice<f32>,
        ld_out: usize,
    ) -> Result<()>
    where
        X: DevicePtr<T>,
        W: DevicePtr<T>,
    {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        check_operands(x, x_layout, w, w_layout, out, ld_out)?;
        let cfg = gemm_config::<T>(x_layout, w_layout, ld_out)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (a, _a_use) = w.device_ptr(&self.stream);
        let (b, _b_use) = x.device_ptr(&self.stream);
        let (c, _c_use) = out.device_ptr_mut(&self.stream);
        if self.recording.dry_run() {
            return Ok(());
        }
        if !self.recording.capturing() {
            self.counters.kernel_launch();
        }
        // SAFETY: check_operands bounds every element cuBLAS reads or writes by the lengths of
        // the three buffers; the scalars are f32 as CUBLAS_COMPUTE_32F requires and outlive the
        // call; all three buffers live on the handle's stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.handle.handle(),
                cfg.transa,
                cfg.transb,
                cfg.m,
                cfg.n,
                cfg.k,
                &alpha as *const f32 as *const _,
                a as *const _,
                T::BLAS_TYPE,
                cfg.lda,
                b as *const _,
                T::BLAS_TYPE,
                cfg.ldb,
                &beta as *const f32 as *const _,
                c as *mut _,
                cudaDataType::CUDA_R_32F,
                cfg.ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cublas_err(format!(
            "cuBLAS GEMM {x_layout:?} × {w_layout:?}ᵀ → f32"
        )))
    }

    /// For each of `batch` heads: `out_h = x_h · w_hᵀ`, where `x_h` starts `x_stride` values after
    /// `x_{h-1}`, `w_h` is the `h`-th of `batch` back-to-back matrices and `out_h` starts
    /// `out_stride` values after `out_{h-1}`.
    #[allow(clippy::too_many_arguments)]
    pub fn batched_matmul_nt<T: GpuFloat, X, W, O>(
        &self,
        batch: usize,
        x: &X,
        x_layout: Layout,
        x_stride: usize,
        w: &W,
        w_layout: Layout,
        out: &mut O,
        ld_out: usize,
        out_stride: usize,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
        X: DevicePtr<T>,
        W: DevicePtr<T>,
        O: DevicePtrMut<T>,
    {
        check_operands(x, x_layout, w, w_layout, out, ld_out)?;
        let last = batch.saturating_sub(1);
        let fits = last * x_stride + span(x_layout) <= x.len()
            && batch * w_layout.rows * w_layout.cols <= w.len()
            && last * out_stride + span(out_layout(x_layout, w_layout, ld_out)) <= out.len();
        if !fits {
            return Err(Error::Op {
                op: "head_matmul",
                message: format!(
                    "{batch} heads of {x_layout:?} (stride {x_stride}) × {w_layout:?}ᵀ overrun their buffers"
                ),
            });
        }
        let cfg = StridedBatchedConfig {
            gemm: gemm_config::<T>(x_layout, w_layout, ld_out)?,
            batch_size: int("heads", batch)?,
            stride_a: (w_layout.rows * w_layout.cols) as i64,
            stride_b: x_stride as i64,
            stride_c: out_stride as i64,
        };
        if self.recording.dry_run() {
            return Ok(());
        }
        if !self.recording.capturing() {
            self.counters.kernel_launch();
        }
        // SAFETY: the checks above bound every element of every batch entry by the lengths of
        // the three buffers, and all three live on the handle's stream.
        unsafe { self.handle.gemm_strided_batched(cfg, w, x, out) }.map_err(cublas_err(format!(
            "cuBLAS batched GEMM {batch} × {x_layout:?} × {w_layout:?}ᵀ"
        )))
    }
}

/// Values from the first to one past the last element of a row-major operand.
fn span(l: Layout) -> usize {
    if l.rows == 0 {
        0
    } else {
        (l.rows - 1) * l.ld + l.cols
    }
}

fn out_layout(x: Layout, w: Layout, ld_out: usize) -> Layout {
    Layout {
        rows: x.rows,
        cols: w.rows,
        ld: ld_out,
    }
}

fn check_operands<T, U, X: DeviceSlice<T>, W: DeviceSlice<T>, O: DeviceSlice<U>>(
    x: &X,
    x_layout: Layout,
    w: &W,
    w_layout: Layout,
    out: &O,
    ld_out: usize,
) -> Result<()> {
    let out_l = out_layout(x_layout, w_layout, ld_out);
    let ok = x_layout.cols == w_layout.cols
        && x_layout.ld >= x_layout.cols
        && w_layout.ld == w_layout.cols
        && ld_out >= w_layout.rows
        && span(x_layout) <= x.len()
        && span(w_layout) <= w.len()
        && span(out_l) <= out.len();
    if ok {
        Ok(())
    } else {
        Err(Error::Op {
            op: "matmul",
            message: format!(
                "x {x_layout:?} ({} values) × w {w_layout:?}ᵀ ({} values) → out ld {ld_out} ({} values)",
                x.len(),
                w.len(),
                out.len()
            ),
        })
    }
}

/// Column-major view: `outᵀ [n, m] = w [n, k] · xᵀ [k, m]`, with `w` read transposed from its
/// row-major storage and `x` read as the column-major `[k, m]` it already is.
fn gemm_config<T: GpuFloat>(x: Layout, w: Layout, ld_out: usize) -> Result<GemmConfig<T>> {
    Ok(GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m: int("n", w.rows)?,
        n: int("m", x.rows)?,
        k: int("k", x.cols)?,
        alpha: T::from_f32(1.0),
        lda: int("k", w.ld)?,
        ldb: int("ld", x.ld)?,
        beta: T::from_f32(0.0),
        ldc: int("ld", ld_out)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cuBLAS's column-major GEMM, as its documentation defines it, on host slices.
    fn colmajor_gemm(cfg: &GemmConfig<f32>, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, k) = (cfg.m as usize, cfg.n as usize, cfg.k as usize);
        let (lda, ldb, ldc) = (cfg.lda as usize, cfg.ldb as usize, cfg.ldc as usize);
        let op = |t, x: &[f32], ld: usize, row: usize, col: usize| {
            if t == CUBLAS_OP_T {
                x[col + row * ld]
            } else {
                x[row + col * ld]
            }
        };
        for j in 0..n {
            for i in 0..m {
                let dot: f32 = (0..k)
                    .map(|l| op(cfg.transa, a, lda, i, l) * op(cfg.transb, b, ldb, l, j))
                    .sum();
                c[i + j * ldc] = cfg.alpha * dot + cfg.beta * c[i + j * ldc];
            }
        }
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
    }

    #[test]
    fn the_column_major_call_computes_x_times_w_transposed() {
        // x: 5 rows of 7 values inside rows of 10 (a strided view); w: [3, 7].
        let (m, k, n, ld) = (5, 7, 3, 10);
        let (x, w) = (values(m * ld, 0.1), values(n * k, 0.7));
        let cfg = gemm_config::<f32>(
            Layout {
                rows: m,
                cols: k,
                ld,
            },
            Layout {
                rows: n,
                cols: k,
                ld: k,
            },
            n + 2,
        )
        .unwrap();
        // The call passes w as A and x as B (see `matmul_nt`).
        let mut out = vec![0.0; m * (n + 2)];
        colmajor_gemm(&cfg, &w, &x, &mut out);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|l| x[i * ld + l] * w[j * k + l]).sum();
                assert!((out[i * (n + 2) + j] - want).abs() < 1e-5, "({i}, {j})");
            }
        }
    }

    #[test]
    fn the_batched_call_multiplies_each_head_by_its_own_matrix() {
        // 3 heads of stride 9 in rows of 27; each head reads columns [2, 8) into 4 outputs.
        let (heads, stride, offset, input, outs, rows) = (3, 9, 2, 6, 4, 5);
        let x = values(rows * heads * stride, 0.3);
        let w = values(heads * outs * input, 1.1);
        let cfg = gemm_config::<f32>(
            Layout {
                rows,
                cols: input,
                ld: heads * stride,
            },
            Layout {
                rows: outs,
                cols: input,
                ld: input,
            },
            heads * outs,
        )
        .unwrap();
        let mut out = vec![0.0; rows * heads * outs];
        for h in 0..heads {
            // What gemm_strided_batched does for entry h: offsets by the three strides.
            let a = &w[h * outs * input..];
            let b = &x[offset + h * stride..];
            let mut c = out[h * outs..].to_vec();
            colmajor_gemm(&cfg, a, b, &mut c);
            out[h * outs..].copy_from_slice(&c);
        }
        for t in 0..rows {
            for h in 0..heads {
                for o in 0..outs {
                    let want: f32 = (0..input)
                        .map(|i| {
                            x[t * heads * stride + h * stride + offset + i]
                                * w[(h * outs + o) * input + i]
                        })
                        .sum();
                    let got = out[t * heads * outs + h * outs + o];
                    assert!((got - want).abs() < 1e-5, "row {t} head {h} out {o}");
                }
            }
        }
    }
}
