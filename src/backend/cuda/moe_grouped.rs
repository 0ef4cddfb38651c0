//! Rust side of `kernels/moe_grouped.cu`: the routed experts of an MoE layer on the device with
//! nothing coming back to the host. Routing → align (routes sorted by expert, padded to the
//! GEMM's row block) → grouped gate+up GEMM with SiLU-and-mul → grouped down GEMM with the route
//! weights → combine in route order, over buffers sized for the worst case
//! (`routes + min(experts, routes)·(block − 1)` rows). The per-expert path (moe.rs) stays as the
//! reference the tests and `mla bench moe` compare against.

use super::backend::{op_err, rows_layout, CudaBackend};
use super::fp8_gemm::{fp8_kernels, CudaWeight, Fp8GemmParams, FP8_BLOCK};
use super::kernels::{self, Kernel};
use super::launch::{KernelParams, Order};
use super::{GpuFloat, GpuTensor};
use crate::backend::{Backend, MlpWeights, MoeWeights};
use crate::config::MoeConfig;
use crate::error::Result;
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::{CudaSlice, LaunchConfig};
use std::mem::{offset_of, size_of};

/// Which kernels run the routed experts of an MoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MoePath {
    /// Align + two grouped GEMMs + combine: a fixed number of launches, no host round trip;
    /// on Hopper, 64-row blocks (prefill) on wgmma.
    #[default]
    Grouped,
    /// The grouped path with mma.sync GEMMs everywhere (what GPUs before Hopper run): the
    /// comparison for the wgmma GEMMs.
    GroupedMma,
    /// A gather, an MLP and a scatter-add per expert, sized on the host from the routes (one
    /// device→host copy per layer): the reference the grouped path is checked against.
    PerExpert,
}

/// The routed experts of one MoE layer: each expert's MLP, and tables of their device addresses
/// (gate, up, down by expert index) for the grouped GEMMs.
pub struct CudaExperts<T: GpuFloat>
where
    CudaBlas: Gemm<T>,
{
    pub per_expert: Vec<MlpWeights<CudaBackend<T>>>,
    /// Addresses of each expert's matrices in `T`, or of its FP8 codes.
    gate: CudaSlice<u64>,
    up: CudaSlice<u64>,
    down: CudaSlice<u64>,
    /// Addresses of each expert's FP8 block scales (gate, up, down), where they are FP8.
    fp8_scales: Option<[CudaSlice<u64>; 3]>,
    hidden: usize,
    inter: usize,
    /// The routing bias on the device (zeros where the layer has none).
    pub(super) score_bias: CudaSlice<f32>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MoeAlignParams {
    expert_ids: u64,
    sorted_routes: u64,
    block_expert: u64,
    route_row: u64,
    routes: i32,
    experts: i32,
    block_rows: i32,
    max_blocks: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MoeGemmParams {
    a: u64,
    w1: u64,
    w2: u64,
    sorted_routes: u64,
    block_expert: u64,
    route_weights: u64,
    out: u64,
    k_dim: i32,
    n: i32,
    top_k: i32,
    gather: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MoeCombineParams {
    y: u64,
    shared: u64,
    route_row: u64,
    out: u64,
    tokens: i32,
    top_k: i32,
    hidden: i32,
    pad: i32,
}

const _: () = {
    assert!(size_of::<MoeAlignParams>() == 48 && offset_of!(MoeAlignParams, routes) == 32);
    assert!(size_of::<MoeGemmParams>() == 72 && offset_of!(MoeGemmParams, k_dim) == 56);
    assert!(size_of::<MoeCombineParams>() == 48);
};

// SAFETY: each mirrors its struct in kernels/moe_grouped.cu (sizes and offsets asserted on both
// sides); the addresses are filled from live buffers by `moe_grouped`.
unsafe impl KernelParams for MoeAlignParams {}
unsafe impl KernelParams for MoeGemmParams {}
unsafe impl KernelParams for MoeCombineParams {}

/// Threads of the align kernel (one CTA) and most experts it counts (`MAX_EXPERTS`).
const ALIGN_THREADS: u32 = 1024;
/// Output columns of one GEMM CTA (`GEMM_BN`).
const GEMM_COLUMNS: usize = 64;

/// The grouped GEMMs of a layer: both use one row block (the align pads to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GemmChoice {
    gate_up: Kernel,
    down: Kernel,
    block_rows: usize,
    threads: u32,
}

/// bf16 rows of whole 16-byte chunks go to the tensor-core kernels: 64-row blocks once experts
/// average 32 rows or more (prefill; on wgmma where `wgmma`, a Hopper GPU), 16-row blocks below
/// (decode); anything else (the f32 build, odd widths) to the CUDA-core kernels with 16-row
/// blocks.
fn gemm_choice<T: GpuFloat>(
    hidden: usize,
    inter: usize,
    routes: usize,
    experts: usize,
    wgmma: bool,
) -> GemmChoice {
    if T::BF16 && hidden % 8 == 0 && inter % 8 == 0 {
        let (gate_up, down, block_rows) = if routes >= 32 * experts && wgmma {
            (
                kernels::MOE_GATE_UP_WGMMA_BF16,
                kernels::MOE_DOWN_WGMMA_BF16,
                64,
            )
        } else if routes >= 32 * experts {
            (
                kernels::MOE_GATE_UP_MMA64_BF16,
                kernels::MOE_DOWN_MMA64_BF16,
                64,
            )
        } else {
            (
                kernels::MOE_GATE_UP_MMA16_BF16,
                kernels::MOE_DOWN_MMA16_BF16,
                16,
            )
        };
        return GemmChoice {
            gate_up,
            down,
            block_rows,
            threads: 128,
        };
    }
    GemmChoice {
        gate_up: kernels::MOE_GATE_UP_SIMT.of::<T>(),
        down: kernels::MOE_DOWN_SIMT.of::<T>(),
        block_rows: 16,
        threads: 256,
    }
}

/// Where the align put each route: what both grouped GEMMs read.
struct Routing<'a> {
    sorted_routes: &'a CudaSlice<u32>,
    block_expert: &'a CudaSlice<i32>,
    route_weights: &'a CudaSlice<f32>,
    top_k: usize,
    /// The GEMMs and the row block the align padded to.
    choice: GemmChoice,
}

/// FP8 experts: the FP8 GEMM's 64-row builds from 32 rows per expert on average (on wgmma where
/// `wgmma`), else its 16-row ones (as [`gemm_choice`] picks for bf16).
fn fp8_choice<T: GpuFloat>(routes: usize, experts: usize, wgmma: bool) -> GemmChoice {
    let (down, gate_up, block_rows) = fp8_kernels::<T>(routes >= 32 * experts, wgmma);
    GemmChoice {
        gate_up,
        down,
        block_rows,
        threads: 128,
    }
}

/// Rows of the sorted-route buffer: every route, plus a partly filled block for each expert that
/// has any (at most `min(experts, routes)`), in whole blocks.
fn padded_rows(routes: usize, experts: usize, block_rows: usize) -> usize {
    let worst = routes + experts.min(routes) * (block_rows - 1);
    worst / block_rows * block_rows
}

impl<T: GpuFloat> CudaBackend<T>
where
    CudaBlas: Gemm<T>,
{
    /// Checks that every expert has the first one's shapes and uploads the address tables.
    pub(super) fn experts_on_device(
        &self,
        experts: Vec<MlpWeights<Self>>,
        score_bias: Option<&[f32]>,
    ) -> Result<CudaExperts<T>> {
        let (inter, hidden) = experts
            .first()
            .map_or((0, 0), |e| (e.gate.rows(), e.gate.cols()));
        for (i, e) in experts.iter().enumerate() {
            let shapes = [
                (e.gate.rows(), e.gate.cols()),
                (e.up.rows(), e.up.cols()),
                (e.down.rows(), e.down.cols()),
            ];
            if shapes != [(inter, hidden), (inter, hidden), (hidden, inter)] || e.biases.is_some() {
                return Err(op_err(
                    "moe",
                    format!(
                        "expert {i} has gate/up/down {shapes:?}; expert 0 has [{inter}, {hidden}] \
                         (and no biases)"
                    ),
                ));
            }
        }
        let is_fp8 = |w: &CudaWeight<T>| matches!(w, CudaWeight::Fp8(_));
        let fp8 = experts.iter().filter(|e| is_fp8(&e.gate)).count();
        if experts
            .iter()
            .any(|e| is_fp8(&e.up) != is_fp8(&e.gate) || is_fp8(&e.down) != is_fp8(&e.gate))
            || (fp8 != 0 && fp8 != experts.len())
        {
            return Err(op_err(
                "moe",
                format!(
                    "{fp8} of {} experts hold FP8 weights: all or none must",
                    experts.len()
                ),
            ));
        }
        let table = |pick: fn(&MlpWeights<Self>) -> &CudaWeight<T>, scales: bool| {
            let addresses: Vec<u64> = experts
                .iter()
                .map(|e| match (pick(e), scales) {
                    (CudaWeight::Dense(t), _) => self.device.address(&t.data),
                    (CudaWeight::Fp8(w), false) => self.device.address(w.codes()),
                    (CudaWeight::Fp8(w), true) => self.device.address(w.scales()),
                })
                .collect();
            self.device.upload_values(&addresses)
        };
        let fp8_scales = match fp8 {
            0 => None,
            _ => Some([
                table(|e| &e.gate, true)?,
                table(|e| &e.up, true)?,
                table(|e| &e.down, true)?,
            ]),
        };
        let bias = match score_bias {
            Some(b) => b.to_vec(),
            None => vec![0.0; experts.len()],
        };
        Ok(CudaExperts {
            gate: table(|e| &e.gate, false)?,
            up: table(|e| &e.up, false)?,
            down: table(|e| &e.down, false)?,
            fp8_scales,
            hidden,
            inter,
            score_bias: self.device.upload_values(&bias)?,
            per_expert: experts,
        })
    }

    /// The MoE layer on the grouped path: router GEMM, routing, align, the two grouped GEMMs,
    /// the shared experts (cuBLAS) and the combine; 6 launches plus the shared MLP's, none of
    /// them waiting for the host.
    pub(super) fn moe_grouped(
        &self,
        x: &GpuTensor<T>,
        w: &MoeWeights<Self>,
        config: &MoeConfig,
    ) -> Result<GpuTensor<T>> {
        let e = &w.experts;
        let (tokens, experts, k) = (x.rows, e.per_expert.len(), config.num_experts_per_tok);
        if x.cols != e.hidden || experts > super::moe::MAX_EXPERTS {
            return Err(op_err(
                "moe",
                format!(
                    "x is [{tokens}, {}], the experts take {} columns; {experts} experts (at \
                     most {})",
                    x.cols,
                    e.hidden,
                    super::moe::MAX_EXPERTS
                ),
            ));
        }
        let shared = w.shared.as_ref().map(|s| self.mlp(x, s)).transpose()?;
        if tokens == 0 || experts == 0 {
            return match shared {
                Some(s) => Ok(s),
                None => self.device.tensor(tokens, x.cols, Some(0.0)),
            };
        }
        let logits = self.router_logits(x, w.router.dense("router")?)?;
        let (ids, weights) = self
            .device
            .moe_route_on_device(&logits, &e.score_bias, config)?;
        let routes = tokens * k;
        let wgmma = self.device.info.hopper() && self.moe_path.get() == MoePath::Grouped;
        let choice = match e.fp8_scales {
            Some(_) => fp8_choice::<T>(routes, experts, wgmma && self.fp8_wgmma()),
            None => gemm_choice::<T>(e.hidden, e.inter, routes, experts, wgmma),
        };
        let block_rows = choice.block_rows;
        let rows = padded_rows(routes, experts, block_rows);
        let max_blocks = rows / block_rows;
        let dev = &self.device;
        let sorted_routes = dev.uninit::<u32>(rows, "sorted routes")?;
        let block_expert = dev.uninit::<i32>(max_blocks, "block experts")?;
        let route_row = dev.uninit::<u32>(routes, "route rows")?;
        let align = MoeAlignParams {
            expert_ids: dev.address(&ids),
            sorted_routes: dev.address(&sorted_routes),
            block_expert: dev.address(&block_expert),
            route_row: dev.address(&route_row),
            routes: routes as i32,
            experts: experts as i32,
            block_rows: block_rows as i32,
            max_blocks: max_blocks as i32,
        };
        let one_cta = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (ALIGN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: launch_params' contract. The kernel reads `routes` ids and writes route_row
        // [routes], block_expert [max_blocks] and sorted_routes below the padded total, which is
        // at most `rows` (padded_rows counts the worst case).
        unsafe { dev.launch_params(kernels::MOE_ALIGN, one_cta, Order::Serial, &align) }?;

        let h = self.output(rows, e.inter)?;
        let y = self.output(rows, e.hidden)?;
        let routing = Routing {
            sorted_routes: &sorted_routes,
            block_expert: &block_expert,
            route_weights: &weights,
            top_k: k,
            choice,
        };
        match &e.fp8_scales {
            Some(scales) => self.fp8_expert_gemms(x, e, scales, &routing, &h, &y)?,
            None => self.expert_gemms(x, e, &routing, &h, &y)?,
        }
        let out = self.output(tokens, e.hidden)?;
        let combine = MoeCombineParams {
            y: dev.address(&y.data),
            shared: shared.as_ref().map_or(0, |s| dev.address(&s.data)),
            route_row: dev.address(&route_row),
            out: dev.address(&out.data),
            tokens: tokens as i32,
            top_k: k as i32,
            hidden: e.hidden as i32,
            pad: 0,
        };
        let per_token = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: launch_params' contract. Block t reads its k route rows (each < rows or
        // NO_ROUTE, skipped), row t of `shared` ([tokens, hidden]) and writes row t of `out`.
        unsafe {
            dev.launch_params(
                kernels::MOE_COMBINE.of::<T>(),
                per_token,
                Order::Serial,
                &combine,
            )
        }?;
        Ok(out)
    }

    /// The bf16/f32 grouped GEMMs: gate+up into `h`, down into `y` (`[rows, hidden]`).
    fn expert_gemms(
        &self,
        x: &GpuTensor<T>,
        e: &CudaExperts<T>,
        routing: &Routing<'_>,
        h: &GpuTensor<T>,
        y: &GpuTensor<T>,
    ) -> Result<()> {
        let (dev, choice) = (&self.device, routing.choice);
        let gemm = |kernel: Kernel, p: MoeGemmParams, n: usize| {
            let cfg = LaunchConfig {
                grid_dim: (
                    n.div_ceil(GEMM_COLUMNS) as u32,
                    (h.rows / choice.block_rows) as u32,
                    1,
                ),
                block_dim: (choice.threads, 1, 1),
                // The wgmma kernels' tiles (their MoeWgmmaShared); none for the others.
                shared_mem_bytes: kernel.shared_bytes as u32,
            };
            // SAFETY: launch_params' contract. CTA (c, b) runs only if block_expert[b] names an
            // expert (< experts, the tables' length); it reads rows of `a` (tokens of x or rows
            // of h, each of k_dim values) and weight rows below n, and writes rows of
            // block b of `out` ([rows, n]).
            unsafe { dev.launch_params(kernel, cfg, Order::Serial, &p) }
        };
        let common = MoeGemmParams {
            sorted_routes: dev.address(routing.sorted_routes),
            block_expert: dev.address(routing.block_expert),
            route_weights: dev.address(routing.route_weights),
            top_k: routing.top_k as i32,
            ..Default::default()
        };
        gemm(
            choice.gate_up,
            MoeGemmParams {
                a: dev.address(&x.data),
                w1: dev.address(&e.gate),
                w2: dev.address(&e.up),
                out: dev.address(&h.data),
                k_dim: e.hidden as i32,
                n: e.inter as i32,
                gather: 1,
                ..common
            },
            e.inter,
        )?;
        gemm(
            choice.down,
            MoeGemmParams {
                a: dev.address(&h.data),
                w1: dev.address(&e.down),
                out: dev.address(&y.data),
                k_dim: e.inter as i32,
                n: e.hidden as i32,
                ..common
            },
            e.hidden,
        )?;
        Ok(())
    }

    /// The FP8 grouped GEMMs: x quantized per token, gate+up into `h`; h quantized per row
    /// (rows of used blocks), down into `y`.
    fn fp8_expert_gemms(
        &self,
        x: &GpuTensor<T>,
        e: &CudaExperts<T>,
        [gate_scales, up_scales, down_scales]: &[CudaSlice<u64>; 3],
        routing: &Routing<'_>,
        h: &GpuTensor<T>,
        y: &GpuTensor<T>,
    ) -> Result<()> {
        let (dev, choice) = (&self.device, routing.choice);
        let row_blocks = h.rows / choice.block_rows;
        let common = Fp8GemmParams {
            sorted_routes: dev.address(routing.sorted_routes),
            block_expert: dev.address(routing.block_expert),
            route_weights: dev.address(routing.route_weights),
            top_k: routing.top_k as i32,
            rows: h.rows as i32,
            ..Default::default()
        };
        // Never split: grouped launches have a CTA per expert block and column block.
        let blocks = |k: usize| k.div_ceil(FP8_BLOCK) as i32;
        let a = self.quantize_fp8(&x.data.slice(..), rows_layout(x), None)?;
        let gate_up = Fp8GemmParams {
            a: dev.address(&a.codes),
            a_scales: dev.address(&a.scales),
            w1: dev.address(&e.gate),
            w2: dev.address(&e.up),
            s1: dev.address(gate_scales),
            s2: dev.address(up_scales),
            out: dev.address(&h.data),
            k_dim: e.hidden as i32,
            n: e.inter as i32,
            k_blocks: blocks(e.hidden),
            k_split: blocks(e.hidden),
            gather: 1,
            ..common
        };
        self.launch_fp8_gemm(choice.gate_up, &gate_up, row_blocks)?;
        let used = Some((routing.block_expert, choice.block_rows));
        let a = self.quantize_fp8(&h.data.slice(..), rows_layout(h), used)?;
        let down = Fp8GemmParams {
            a: dev.address(&a.codes),
            a_scales: dev.address(&a.scales),
            w1: dev.address(&e.down),
            s1: dev.address(down_scales),
            out: dev.address(&y.data),
            k_dim: e.inter as i32,
            n: e.hidden as i32,
            k_blocks: blocks(e.inter),
            k_split: blocks(e.inter),
            ..common
        };
        self.launch_fp8_gemm(choice.down, &down, row_blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_buffer_holds_the_worst_padding() {
        // 6 routes over 64 experts in 16-row blocks: at most 6 experts used, 6 blocks.
        assert_eq!(padded_rows(6, 64, 16), 96);
        // Every route to one expert: 1 block suffices, the bound allows more.
        assert!(padded_rows(16, 4, 16) >= 16);
        // 512 tokens × 8 routes over 256 experts, 64-row blocks.
        let rows = padded_rows(4096, 256, 64);
        assert!(rows >= 4096 + 256 * 63 - 63 && rows % 64 == 0);
    }

    #[test]
    fn tensor_cores_take_aligned_bf16_with_blocks_by_rows_per_expert() {
        let decode = gemm_choice::<half::bf16>(2048, 1408, 6 * 64, 64, true);
        assert_eq!(
            (decode.gate_up, decode.block_rows),
            (kernels::MOE_GATE_UP_MMA16_BF16, 16)
        );
        let prefill = gemm_choice::<half::bf16>(2048, 1408, 6 * 512, 64, false);
        assert_eq!(
            (prefill.down, prefill.block_rows),
            (kernels::MOE_DOWN_MMA64_BF16, 64)
        );
        let hopper = gemm_choice::<half::bf16>(2048, 1408, 6 * 512, 64, true);
        assert_eq!(
            (hopper.gate_up, hopper.block_rows),
            (kernels::MOE_GATE_UP_WGMMA_BF16, 64)
        );
        let odd = gemm_choice::<half::bf16>(2048, 1404, 6, 64, true);
        assert_eq!(odd.gate_up, kernels::MOE_GATE_UP_SIMT.bf16);
        assert_eq!(
            gemm_choice::<f32>(2048, 1408, 6, 64, true).down,
            kernels::MOE_DOWN_SIMT.f32
        );
        // FP8 experts: the FP8 GEMM's builds, by the same rows per expert.
        let fp8_decode = fp8_choice::<half::bf16>(6 * 64, 64, true);
        assert_eq!(
            (fp8_decode.down, fp8_decode.block_rows),
            (kernels::FP8_GEMM_MMA16.bf16, 16)
        );
        let fp8_prefill = fp8_choice::<half::bf16>(6 * 512, 64, false);
        assert_eq!(
            (fp8_prefill.gate_up, fp8_prefill.block_rows),
            (kernels::FP8_GATE_UP_MMA64.bf16, 64)
        );
        let fp8_hopper = fp8_choice::<half::bf16>(6 * 512, 64, true);
        assert_eq!(
            (fp8_hopper.down, fp8_hopper.block_rows),
            (kernels::FP8_GEMM_WGMMA_BF16, 64)
        );
        // f32 (`--fp8-activations dynamic`) keeps the mma.sync builds.
        let fp8_f32 = fp8_choice::<f32>(6 * 512, 64, true);
        assert_eq!(fp8_f32.gate_up, kernels::FP8_GATE_UP_MMA64.f32);
    }
}
