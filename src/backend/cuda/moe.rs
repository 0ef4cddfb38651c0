//! Rust side of `kernels/moe.cu`: MoE routing on the device, by the host reference's rules, and
//! the MoE layer that runs the routed experts over their tokens.

use super::backend::{op_err, CudaBackend};
use super::kernels;
use super::launch::Order;
use super::moe_grouped::MoePath;
use super::{CudaDevice, GpuFloat, GpuTensor};
use crate::backend::{Backend, MoeWeights};
use crate::config::{MoeConfig, ScoringFunc, TopkMethod};
use crate::error::{Error, Result};
use crate::ops::routing::Route;
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Limits of the kernel's per-token bit sets (`taken[32]`, `MAX_GROUPS`).
pub(super) const MAX_EXPERTS: usize = 1024;
const MAX_GROUPS: usize = 64;

impl CudaDevice {
    /// Each token's chosen experts and weights from its router logits `[tokens, experts]`, as
    /// [`crate::ops::routing::route`] chooses them.
    pub fn moe_route<T: GpuFloat>(
        &self,
        logits: &GpuTensor<T>,
        bias: Option<&[f32]>,
        moe: &MoeConfig,
    ) -> Result<Vec<Vec<Route>>> {
        let experts = logits.cols;
        // Zeros stand for "no bias": adding them changes no choice.
        let bias = match bias {
            Some(b) if b.len() != experts => {
                return Err(op_err(
                    "moe_route",
                    format!("{} bias values for {experts} experts", b.len()),
                ))
            }
            Some(b) => self.upload_values(b)?,
            None => self.upload_values(&vec![0.0; experts])?,
        };
        let (ids, weights) = self.moe_route_on_device(logits, &bias, moe)?;
        self.fetch_routes(&ids, &weights, moe.num_experts_per_tok, experts)
    }

    /// Routes left on the device by [`Self::moe_route_on_device`] brought back, `k` per token;
    /// an expert id of `experts` or more is an error.
    fn fetch_routes(
        &self,
        ids: &CudaSlice<u32>,
        weights: &CudaSlice<f32>,
        k: usize,
        experts: usize,
    ) -> Result<Vec<Vec<Route>>> {
        let ids = self.fetch(ids, "expert ids")?;
        let weights = self.fetch(weights, "expert weights")?;
        if let Some(bad) = ids.iter().find(|&&e| e as usize >= experts) {
            return Err(op_err(
                "moe_route",
                format!("chose expert {bad} of {experts}"),
            ));
        }
        Ok(ids
            .chunks_exact(k)
            .zip(weights.chunks_exact(k))
            .map(|(ids, ws)| {
                ids.iter()
                    .zip(ws)
                    .map(|(&expert, &weight)| Route {
                        expert: expert as usize,
                        weight,
                    })
                    .collect()
            })
            .collect())
    }

    /// The routes of [`Self::moe_route`] left on the device: `[tokens·k]` expert ids and
    /// weights, token after token. `bias` has one value per expert (zeros for none).
    pub(super) fn moe_route_on_device<T: GpuFloat>(
        &self,
        logits: &GpuTensor<T>,
        bias: &CudaSlice<f32>,
        moe: &MoeConfig,
    ) -> Result<(CudaSlice<u32>, CudaSlice<f32>)> {
        let (tokens, experts, k) = (logits.rows, logits.cols, moe.num_experts_per_tok);
        let grouped = moe.topk_method != TopkMethod::Greedy;
        let ok = experts <= MAX_EXPERTS
            && (1..=experts).contains(&k)
            && bias.len() == experts
            && (!grouped
                || (moe.n_group >= 1
                    && moe.n_group <= MAX_GROUPS
                    && experts % moe.n_group == 0
                    && moe.topk_group <= moe.n_group));
        if !ok {
            return Err(Error::Op {
                op: "moe_route",
                message: format!(
                    "{experts} experts (at most {MAX_EXPERTS}), top-{k}, {} groups keeping {} (at most {MAX_GROUPS})",
                    moe.n_group, moe.topk_group
                ),
            });
        }
        let ids = self.uninit::<u32>(tokens * k, "expert ids")?;
        let weights = self.uninit::<f32>(tokens * k, "expert weights")?;
        if tokens == 0 {
            return Ok((ids, weights));
        }
        let sigmoid = (moe.scoring_func == ScoringFunc::Sigmoid) as i32;
        let method = match moe.topk_method {
            TopkMethod::Greedy => 0i32,
            TopkMethod::GroupLimitedGreedy => 1,
            TopkMethod::NoauxTc => 2,
        };
        let (experts_i, k_i, groups, keep) = (
            experts as i32,
            k as i32,
            moe.n_group as i32,
            moe.topk_group as i32,
        );
        let normalize = (moe.topk_method == TopkMethod::NoauxTc && moe.norm_topk_prob) as i32;
        let scale = moe.routed_scaling_factor as f32;
        let args = self.args(&[
            &logits.data,
            bias,
            &ids,
            &weights,
            &experts_i,
            &k_i,
            &sigmoid,
            &method,
            &groups,
            &keep,
            &normalize,
            &scale,
        ]);
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (2 * experts * std::mem::size_of::<f32>()) as u32,
        };
        // SAFETY: launch's contract. Block `t` reads row `t` of the logits and writes its `k` ids
        // and weights (every element of both); the checks above keep the expert and group
        // counts within the kernel's fixed-size sets.
        unsafe { self.launch(kernels::MOE_ROUTE.of::<T>(), cfg, Order::Serial, &args) }?;
        Ok((ids, weights))
    }
}

impl<T: GpuFloat> CudaBackend<T>
where
    CudaBlas: Gemm<T>,
{
    /// Each token's routes in an MoE layer, as both paths route it (fp32 logits on the device),
    /// brought back to the host: what `mla bench moe` counts the experts it reads from.
    pub fn moe_routes(
        &self,
        x: &GpuTensor<T>,
        w: &MoeWeights<Self>,
        config: &MoeConfig,
    ) -> Result<Vec<Vec<Route>>> {
        let logits = self.router_logits(x, w.router.dense("router")?)?;
        self.device
            .moe_route(&logits, w.score_bias.as_deref(), config)
    }

    /// The MoE layer on the path [`Self::set_moe_path`] chose.
    pub(super) fn moe_layer(
        &self,
        x: &GpuTensor<T>,
        w: &MoeWeights<Self>,
        config: &MoeConfig,
    ) -> Result<GpuTensor<T>> {
        match self.moe_path.get() {
            MoePath::Grouped | MoePath::GroupedMma => self.moe_grouped(x, w, config),
            MoePath::PerExpert => self.moe_per_expert(x, w, config),
        }
    }

    /// The per-expert path: routing on the device from fp32 logits; each token's k expert ids
    /// and weights come back to size the per-expert GEMMs, which run over their tokens gathered
    /// from `x` and are added back weighted, on top of the shared experts.
    fn moe_per_expert(
        &self,
        x: &GpuTensor<T>,
        w: &MoeWeights<Self>,
        config: &MoeConfig,
    ) -> Result<GpuTensor<T>> {
        let logits = self.router_logits(x, w.router.dense("router")?)?;
        let (ids, weights) =
            self.device
                .moe_route_on_device(&logits, &w.experts.score_bias, config)?;
        let routes = self.device.fetch_routes(
            &ids,
            &weights,
            config.num_experts_per_tok,
            w.router.rows(),
        )?;
        let mut assigned: Vec<(Vec<u32>, Vec<f32>)> =
            vec![(Vec::new(), Vec::new()); w.router.rows()];
        for (t, token_routes) in routes.iter().take(x.rows).enumerate() {
            for choice in token_routes {
                let (tokens, weights) = assigned.get_mut(choice.expert).ok_or_else(|| {
                    op_err(
                        "moe",
                        format!("expert {} of {}", choice.expert, w.router.rows()),
                    )
                })?;
                // Tokens arrive in order: a repeat would be this token naming one expert twice.
                if tokens.last() == Some(&(t as u32)) {
                    return Err(op_err(
                        "moe",
                        format!("token {t} routed twice to {}", choice.expert),
                    ));
                }
                tokens.push(t as u32);
                weights.push(choice.weight);
            }
        }
        // Every expert's token ids and weights in one upload (not two per expert); the gathers
        // and scatter-adds read their slices. Ids are rows of x, distinct within an expert.
        let ids: Vec<u32> = assigned
            .iter()
            .flat_map(|(t, _)| t.iter().copied())
            .collect();
        let weights: Vec<f32> = assigned
            .iter()
            .flat_map(|(_, w)| w.iter().copied())
            .collect();
        let mut out = match &w.shared {
            Some(shared) => self.mlp(x, shared)?,
            None => self.device.tensor(x.rows, x.cols, Some(0.0))?,
        };
        if ids.is_empty() {
            return Ok(out);
        }
        let (ids_on_device, weights_on_device) = (
            self.device.upload_values(&ids)?,
            self.device.upload_values(&weights)?,
        );
        let rows_of_x = x.data.slice(..x.rows * x.cols);
        let mut first = 0;
        for (expert, (tokens, _)) in assigned.iter().enumerate() {
            let range = first..first + tokens.len();
            first = range.end;
            if tokens.is_empty() {
                continue;
            }
            let mut picked = self.output(tokens.len(), x.cols)?;
            let idx = ids_on_device.slice(range.clone());
            // SAFETY: the ids are tokens t < x.rows (routes has one entry per token of x,
            // `take` above), `picked` has one row per id and x.cols columns.
            unsafe {
                self.device.gather_rows_indexed(
                    &mut picked,
                    &rows_of_x,
                    x.cols,
                    self.device.address(&idx),
                )?
            };
            let y = self.mlp(&picked, &w.experts.per_expert[expert])?;
            if (y.rows, y.cols) != (tokens.len(), out.cols) {
                return Err(op_err(
                    "moe",
                    format!(
                        "expert {expert} gave [{}, {}] for {} tokens",
                        y.rows,
                        y.cols,
                        tokens.len()
                    ),
                ));
            }
            // SAFETY: the ids are distinct rows of `out` (checked while assigning), one weight
            // and one row of y each, and y has out's columns (checked above).
            unsafe {
                self.device.scatter_add_rows_indexed(
                    &mut out,
                    &y,
                    &idx,
                    &weights_on_device.slice(range),
                )?
            };
        }
        Ok(out)
    }
}
