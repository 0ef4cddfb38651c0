//! Rust side of `kernels/fp8_gemm.cu`: weights kept as block-scaled FP8 on the device and
//! multiplied by activations quantized per row per 128 columns, on compute capability 8.9+
//! with bf16 activations. Elsewhere (an older GPU, f32 activations, blocks other than 128 × 128,
//! rows not of whole 16-byte pieces) an FP8 weight is dequantized to `T` at load, as before.
//! `crate::ops::fp8_matmul` is the CPU reference of the arithmetic.

use super::backend::{op_err, rows_layout, CudaBackend};
use super::blas::Layout;
use super::kernels::{self, Kernel};
use super::launch::{KernelParams, Order};
use super::{GpuFloat, GpuTensor};
use crate::config::quantization::Fp8Activations;
use crate::error::{Error, Result};
use crate::ops::fp8_matmul::Fp8Rows;
use crate::weights::fp8::Fp8Matrix;
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use std::mem::{offset_of, size_of};

/// The scale blocks' side the kernels take, in weights and activations (`FP8_BLOCK`).
pub const FP8_BLOCK: usize = 128;
/// Output columns of one GEMM CTA (`F8_BN`).
const GEMM_COLUMNS: usize = 64;
/// Rows of x from which the 64-row build pays (fewer take 16-row blocks).
const WIDE_ROWS: usize = 64;

/// A weight as the CUDA backend holds it: in `T`, or as block-scaled FP8.
pub enum CudaWeight<T> {
    Dense(GpuTensor<T>),
    Fp8(Fp8Weight),
}

/// `rows × cols` e4m3 codes with one f32 scale per 128 × 128 block.
pub struct Fp8Weight {
    pub rows: usize,
    pub cols: usize,
    codes: CudaSlice<u8>,
    scales: CudaSlice<f32>,
    /// `[codes address]` and `[scales address]`: the one-expert tables a dense launch reads.
    code_table: CudaSlice<u64>,
    scale_table: CudaSlice<u64>,
}

impl Fp8Weight {
    pub fn k_blocks(&self) -> usize {
        self.cols.div_ceil(FP8_BLOCK)
    }

    /// Bytes on the device (codes and scales).
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }

    pub(super) fn codes(&self) -> &CudaSlice<u8> {
        &self.codes
    }

    pub(super) fn scales(&self) -> &CudaSlice<f32> {
        &self.scales
    }
}

impl<T> CudaWeight<T> {
    pub fn rows(&self) -> usize {
        match self {
            CudaWeight::Dense(t) => t.rows,
            CudaWeight::Fp8(w) => w.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            CudaWeight::Dense(t) => t.cols,
            CudaWeight::Fp8(w) => w.cols,
        }
    }

    /// The weight in `T`, for an op that takes no FP8 weight (norms, embeddings, the router:
    /// none of them is stored in FP8 by a checkpoint or by `--quantization fp8`).
    pub fn dense(&self, op: &'static str) -> Result<&GpuTensor<T>> {
        match self {
            CudaWeight::Dense(t) => Ok(t),
            CudaWeight::Fp8(w) => Err(op_err(
                op,
                format!(
                    "takes no FP8 weight; got a [{}, {}] FP8 matrix",
                    w.rows, w.cols
                ),
            )),
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Fp8QuantizeParams {
    x: u64,
    codes: u64,
    scales: u64,
    block_expert: u64,
    rows: i32,
    cols: i32,
    ld: i32,
    k_blocks: i32,
    block_rows: i32,
    pad: i32,
}

/// The GEMM's parameters (`Fp8GemmParams` in the kernel); moe_grouped.rs fills the grouped
/// fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Fp8GemmParams {
    pub a: u64,
    pub a_scales: u64,
    pub w1: u64,
    pub w2: u64,
    pub s1: u64,
    pub s2: u64,
    pub sorted_routes: u64,
    pub block_expert: u64,
    pub route_weights: u64,
    pub out: u64,
    pub partial: u64,
    pub rows: i32,
    pub k_dim: i32,
    pub n: i32,
    pub k_blocks: i32,
    pub top_k: i32,
    pub gather: i32,
    pub k_split: i32,
    pub pad: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Fp8ReduceParams {
    partial: u64,
    out: u64,
    rows: i32,
    n: i32,
    splits: i32,
    gate_up: i32,
}

const _: () = {
    assert!(size_of::<Fp8QuantizeParams>() == 56);
    assert!(size_of::<Fp8GemmParams>() == 120 && offset_of!(Fp8GemmParams, rows) == 88);
    assert!(size_of::<Fp8ReduceParams>() == 32);
};

// SAFETY: each mirrors its struct in kernels/fp8_gemm.cu (sizes and offsets asserted on both
// sides); the addresses are filled from live buffers by the functions below and moe_grouped.rs.
unsafe impl KernelParams for Fp8QuantizeParams {}
unsafe impl KernelParams for Fp8GemmParams {}
unsafe impl KernelParams for Fp8ReduceParams {}

/// Activations as the FP8 GEMM reads them: `rows × cols` e4m3 codes and one scale per row per
/// 128 columns.
pub(super) struct QuantizedActivations {
    pub codes: CudaSlice<u8>,
    pub scales: CudaSlice<f32>,
}

/// The GEMM builds of 64-row blocks (`wide`: 64+ rows, or 32+ rows per expert) or of 16-row
/// ones: `(plain, gate+up, block rows)`. Wide bf16 ones run on wgmma where `wgmma` (a Hopper
/// GPU, which has no FP8 mma.sync).
pub(super) fn fp8_kernels<T: GpuFloat>(wide: bool, wgmma: bool) -> (Kernel, Kernel, usize) {
    match wide {
        true if wgmma && T::BF16 => (
            kernels::FP8_GEMM_WGMMA_BF16,
            kernels::FP8_GATE_UP_WGMMA_BF16,
            64,
        ),
        true => (
            kernels::FP8_GEMM_MMA64.of::<T>(),
            kernels::FP8_GATE_UP_MMA64.of::<T>(),
            64,
        ),
        false => (
            kernels::FP8_GEMM_MMA16.of::<T>(),
            kernels::FP8_GATE_UP_MMA16.of::<T>(),
            16,
        ),
    }
}

/// Whether FP8 weights go to the FP8 GEMM under `mode`, for bf16 (else f32) activations on a
/// GPU of `compute_capability`; `dynamic` where there is no FP8 GEMM is refused.
fn fp8_gemm_runs(mode: Fp8Activations, bf16: bool, compute_capability: (i32, i32)) -> Result<bool> {
    let native = compute_capability >= (8, 9);
    match mode {
        Fp8Activations::Auto => Ok(bf16 && native),
        Fp8Activations::Exact => Ok(false),
        Fp8Activations::Dynamic if native => Ok(true),
        Fp8Activations::Dynamic => Err(Error::InvalidInput(format!(
            "--fp8-activations dynamic needs an FP8 GEMM, on compute capability 8.9 or newer; \
             this GPU is {}.{}",
            compute_capability.0, compute_capability.1
        ))),
    }
}

/// How many k splits a dense FP8 GEMM of `ctas` tiles over `k_blocks` 128-wide blocks takes on
/// `multiprocessors` SMs: none where the tiles fill the GPU, else enough for
/// [`super::tuning::FP8_SPLIT_CTAS_PER_SM`] CTAs per SM, at most one block each. Returns
/// `(splits, blocks per split)`.
pub(super) fn k_splits(ctas: usize, k_blocks: usize, multiprocessors: usize) -> (usize, usize) {
    let wanted = super::tuning::FP8_SPLIT_CTAS_PER_SM * multiprocessors;
    if ctas >= multiprocessors || k_blocks <= 1 {
        return (1, k_blocks);
    }
    let per_split = k_blocks.div_ceil(wanted.div_ceil(ctas).min(k_blocks));
    (k_blocks.div_ceil(per_split), per_split)
}

impl<T: GpuFloat> CudaBackend<T>
where
    CudaBlas: Gemm<T>,
{
    /// Whether FP8 weights uploaded now stay FP8 and meet quantized activations: by default
    /// ([`Fp8Activations::Auto`]) bf16 activations on compute capability 8.9+.
    pub fn multiplies_fp8(&self) -> bool {
        self.fp8_activations.get()
    }

    /// Whether 64-row FP8 GEMMs run on wgmma: on a Hopper GPU, unless [`Self::set_fp8_wgmma`]
    /// turned them off.
    pub(super) fn fp8_wgmma(&self) -> bool {
        self.device.info.hopper() && self.fp8_wgmma.get()
    }

    /// Whether 64-row FP8 GEMMs take the wgmma builds on a Hopper GPU (the default) or the
    /// mma.sync ones (tests check both; `mla bench gemm` compares them).
    pub fn set_fp8_wgmma(&self, on: bool) {
        self.fp8_wgmma.set(on);
    }

    /// How FP8 weights uploaded from now on are multiplied (`--fp8-activations`): `dynamic`
    /// keeps them FP8 for the FP8 GEMM (in f32 too, to compare with the CPU's `dynamic`),
    /// `exact` dequantizes them at load. `dynamic` needs compute capability 8.9+.
    pub fn set_fp8_activations(&self, mode: Fp8Activations) -> Result<()> {
        let on = fp8_gemm_runs(mode, T::BF16, self.device.info.compute_capability)?;
        self.fp8_activations.set(on);
        Ok(())
    }

    /// `m` on the device: as FP8 where [`Self::multiplies_fp8`] and the kernels take its shape
    /// (128 × 128 blocks, rows of whole 16-byte pieces), else dequantized to `T`.
    pub(super) fn fp8_weight(&self, m: Fp8Matrix) -> Result<CudaWeight<T>> {
        if !self.multiplies_fp8() || !m.fits_fp8_gemm() {
            return self.device.upload(&m.dequantize()).map(CudaWeight::Dense);
        }
        let codes = self.device.upload_values(&m.codes)?;
        let scales = self.device.upload_values(&m.scales)?;
        Ok(CudaWeight::Fp8(Fp8Weight {
            rows: m.rows,
            cols: m.cols,
            code_table: self.device.upload_values(&[self.device.address(&codes)])?,
            scale_table: self.device.upload_values(&[self.device.address(&scales)])?,
            codes,
            scales,
        }))
    }

    /// Rows of `x` (`layout`: rows, cols, ld) quantized per row per 128 columns. With
    /// `used_blocks` (block_expert, block rows), rows of blocks no expert uses are skipped.
    pub(super) fn quantize_fp8(
        &self,
        x: &CudaView<'_, T>,
        layout: Layout,
        used_blocks: Option<(&CudaSlice<i32>, usize)>,
    ) -> Result<QuantizedActivations> {
        let k_blocks = layout.cols.div_ceil(FP8_BLOCK);
        let dev = &self.device;
        let codes = dev.uninit::<u8>(layout.rows * layout.cols, "FP8 activations")?;
        let scales = dev.uninit::<f32>(layout.rows * k_blocks, "FP8 activation scales")?;
        if self.poison_outputs {
            dev.fill_bytes(&codes, 0x7f)?;
            dev.fill_bytes(&scales, 0xff)?;
        }
        if layout.rows == 0 {
            return Ok(QuantizedActivations { codes, scales });
        }
        if layout.ld < layout.cols || x.len() < (layout.rows - 1) * layout.ld + layout.cols {
            return Err(op_err(
                "fp8 matmul",
                format!("x holds {} values, not {layout:?}", x.len()),
            ));
        }
        let (block_expert, block_rows) = match used_blocks {
            Some((b, rows)) => (dev.address(b), rows),
            None => (0, 1),
        };
        let p = Fp8QuantizeParams {
            x: dev.address(x),
            codes: dev.address(&codes),
            scales: dev.address(&scales),
            block_expert,
            rows: layout.rows as i32,
            cols: layout.cols as i32,
            ld: layout.ld as i32,
            k_blocks: k_blocks as i32,
            block_rows: block_rows as i32,
            pad: 0,
        };
        let cfg = LaunchConfig {
            grid_dim: (layout.rows as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: launch_params' contract. Block r reads row r of x (cols values from r·ld,
        // inside x: checked above) and writes row r of codes and scales, both sized for rows;
        // with block_expert, it reads entry r / block_rows (the caller's buffer covers them).
        unsafe { dev.launch_params(kernels::QUANTIZE_ROWS_FP8.of::<T>(), cfg, Order::Serial, &p) }?;
        Ok(QuantizedActivations { codes, scales })
    }

    /// The rows of `x` as the FP8 GEMM quantizes them, read back (for tests).
    pub fn quantized_rows(&self, x: &GpuTensor<T>) -> Result<Fp8Rows> {
        let a = self.quantize_fp8(&x.data.slice(..), rows_layout(x), None)?;
        let mut codes: Vec<u8> = self.device.fetch(&a.codes, "FP8 activations")?;
        let mut scales: Vec<f32> = self.device.fetch(&a.scales, "FP8 activation scales")?;
        codes.truncate(x.rows * x.cols);
        scales.truncate(x.rows * x.cols.div_ceil(FP8_BLOCK));
        Ok(Fp8Rows {
            rows: x.rows,
            cols: x.cols,
            codes,
            scales,
        })
    }

    /// Launches one FP8 GEMM over `row_blocks` blocks of rows, ⌈n / 64⌉ column blocks and
    /// ⌈k_blocks / k_split⌉ k splits.
    pub(super) fn launch_fp8_gemm(
        &self,
        kernel: Kernel,
        p: &Fp8GemmParams,
        row_blocks: usize,
    ) -> Result<()> {
        let splits = (p.k_blocks.max(1) as usize).div_ceil(p.k_split.max(1) as usize);
        let cfg = LaunchConfig {
            grid_dim: (
                (p.n as usize).div_ceil(GEMM_COLUMNS) as u32,
                row_blocks as u32,
                splits as u32,
            ),
            block_dim: (128, 1, 1),
            // The wgmma builds' stages (MoeWgmmaShared); the mma.sync builds' are static.
            shared_mem_bytes: kernel.shared_bytes as u32,
        };
        // SAFETY: launch_params' contract. Every caller fills `p` from live buffers: a
        // ([a rows, k_dim] codes, [a rows, k_blocks] scales), weight tables whose entries are
        // [n, k_dim] codes and [⌈n/128⌉, k_blocks] scales, and out (or, split, partial:
        // [splits, matrices, rows, n] f32) sized for every row a CTA writes (dense: `rows`;
        // grouped: row_blocks · block rows, never split).
        unsafe { self.device.launch_params(kernel, cfg, Order::Serial, p) }
    }

    /// `x · wᵀ` for an FP8 `w`, `x` given as a buffer and its layout; with `up`, the fused
    /// `silu(x·wᵀ) ⊙ (x·upᵀ)` of a SwiGLU MLP.
    pub(super) fn fp8_matmul(
        &self,
        x: &CudaView<'_, T>,
        layout: Layout,
        w: &Fp8Weight,
        up: Option<&Fp8Weight>,
    ) -> Result<GpuTensor<T>> {
        let same = |u: &Fp8Weight| u.rows == w.rows && u.cols == w.cols;
        if layout.cols != w.cols || !up.is_none_or(same) {
            return Err(op_err(
                "fp8 matmul",
                format!(
                    "x is [{}, {}] but w is [{}, {}]{}",
                    layout.rows,
                    layout.cols,
                    w.rows,
                    w.cols,
                    up.map_or(String::new(), |u| format!(", up [{}, {}]", u.rows, u.cols))
                ),
            ));
        }
        let out = self.output(layout.rows, w.rows)?;
        if layout.rows == 0 {
            return Ok(out);
        }
        let a = self.quantize_fp8(x, layout, None)?;
        let (plain, gate_up, block_rows) =
            fp8_kernels::<T>(layout.rows >= WIDE_ROWS, self.fp8_wgmma());
        let row_blocks = layout.rows.div_ceil(block_rows);
        let ctas = w.rows.div_ceil(GEMM_COLUMNS) * row_blocks;
        let (splits, k_split) = k_splits(ctas, w.k_blocks(), self.device.info.multiprocessors);
        let matrices = if up.is_some() { 2 } else { 1 };
        let dev = &self.device;
        let partial = match splits {
            1 => None,
            _ => {
                let sums =
                    dev.uninit::<f32>(splits * matrices * layout.rows * w.rows, "split sums")?;
                if self.poison_outputs {
                    dev.fill_bytes(&sums, 0xff)?;
                }
                Some(sums)
            }
        };
        let p = Fp8GemmParams {
            a: dev.address(&a.codes),
            a_scales: dev.address(&a.scales),
            w1: dev.address(&w.code_table),
            s1: dev.address(&w.scale_table),
            w2: up.map_or(0, |u| dev.address(&u.code_table)),
            s2: up.map_or(0, |u| dev.address(&u.scale_table)),
            out: dev.address(&out.data),
            partial: partial.as_ref().map_or(0, |p| dev.address(p)),
            rows: layout.rows as i32,
            k_dim: w.cols as i32,
            n: w.rows as i32,
            k_blocks: w.k_blocks() as i32,
            k_split: k_split as i32,
            ..Default::default()
        };
        let kernel = if up.is_some() { gate_up } else { plain };
        self.launch_fp8_gemm(kernel, &p, row_blocks)?;
        if let Some(sums) = &partial {
            let reduce = Fp8ReduceParams {
                partial: dev.address(sums),
                out: dev.address(&out.data),
                rows: layout.rows as i32,
                n: w.rows as i32,
                splits: splits as i32,
                gate_up: up.is_some() as i32,
            };
            let cfg = LaunchConfig {
                grid_dim: (layout.rows as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: launch_params' contract. Block r reads row r of every split's sums
            // ([splits, matrices, rows, n], all written by the GEMM above) and writes row r of
            // out ([rows, n]).
            unsafe {
                dev.launch_params(
                    kernels::FP8_SPLIT_REDUCE.of::<T>(),
                    cfg,
                    Order::Serial,
                    &reduce,
                )
            }?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_activations_resolve_by_dtype_and_compute_capability() {
        use Fp8Activations::*;
        assert!(fp8_gemm_runs(Auto, true, (8, 9)).unwrap());
        assert!(fp8_gemm_runs(Auto, true, (9, 0)).unwrap());
        assert!(!fp8_gemm_runs(Auto, false, (9, 0)).unwrap());
        assert!(!fp8_gemm_runs(Auto, true, (8, 6)).unwrap());
        assert!(!fp8_gemm_runs(Exact, true, (9, 0)).unwrap());
        assert!(fp8_gemm_runs(Dynamic, false, (9, 0)).unwrap());
        let refused = fp8_gemm_runs(Dynamic, true, (8, 0))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("compute capability 8.9") && refused.contains("8.0"),
            "{refused}"
        );
    }

    #[test]
    fn k_splits_fill_the_gpu_only_where_the_tiles_do_not() {
        // V2-Lite's o_proj at one token: 32 tiles on 132 SMs, 16 k blocks: 8 splits of 2.
        assert_eq!(k_splits(32, 16, 132), (8, 2));
        // 576 × 2048 (kv_a): 9 tiles, every k block its own split.
        assert_eq!(k_splits(9, 16, 132), (16, 1));
        // Enough tiles already (prefill, or V3's q_b_proj at 384 tiles): no split.
        assert_eq!(k_splits(384, 12, 132), (1, 12));
        assert_eq!(k_splits(4, 1, 132), (1, 1));
        // Splits of equal whole blocks, none empty: 11 blocks in 4 of 3 → 4 splits (3, 3, 3, 2).
        assert_eq!(k_splits(66, 11, 132), (4, 3));
    }
}
