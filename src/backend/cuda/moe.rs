//! Rust side of `kernels/moe.cu`: MoE routing on the device, by the host reference's rules.

use super::{CudaDevice, GpuFloat, GpuTensor};
use crate::config::{MoeConfig, ScoringFunc, TopkMethod};
use crate::error::{Error, Result};
use crate::model::moe::Route;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Limits of the kernel's per-token bit sets (`taken[32]`, `MAX_GROUPS`).
const MAX_EXPERTS: usize = 1024;
const MAX_GROUPS: usize = 64;

impl CudaDevice {
    /// Each token's chosen experts and weights from its router logits `[tokens, experts]`, as
    /// [`crate::model::moe::route`] chooses them.
    pub fn moe_route<T: GpuFloat>(
        &self,
        logits: &GpuTensor<T>,
        bias: Option<&[f32]>,
        moe: &MoeConfig,
    ) -> Result<Vec<Vec<Route>>> {
        let (tokens, experts, k) = (logits.rows, logits.cols, moe.num_experts_per_tok);
        let grouped = moe.topk_method != TopkMethod::Greedy;
        let ok = experts <= MAX_EXPERTS
            && (1..=experts).contains(&k)
            && bias.is_none_or(|b| b.len() == experts)
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
        if tokens == 0 {
            return Ok(Vec::new());
        }
        // Zeros stand for "no bias": adding them changes no choice.
        let bias_values = bias.map_or_else(|| vec![0.0; experts], <[f32]>::to_vec);
        let bias_dev = self.upload_f32(&bias_values)?;
        let mut ids = self.upload_u32(&vec![u32::MAX; tokens * k])?;
        let mut weights = self.upload_f32(&vec![f32::NAN; tokens * k])?;
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
        let name = format!("moe_route_{}", T::SUFFIX);
        let f = self.function("moe", &name)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&logits.data)
            .arg(&bias_dev)
            .arg(&mut ids)
            .arg(&mut weights)
            .arg(&experts_i)
            .arg(&k_i)
            .arg(&sigmoid)
            .arg(&method)
            .arg(&groups)
            .arg(&keep)
            .arg(&normalize)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (2 * experts * std::mem::size_of::<f32>()) as u32,
        };
        // SAFETY: the arguments match moe_route in moe.cu in order and type; block `t` reads
        // row `t` of the logits and writes its `k` ids and weights; the checks above keep the
        // expert and group counts within the kernel's fixed-size sets.
        unsafe { b.launch(cfg) }.map_err(|e| Error::Device(format!("kernel {name}: {e}")))?;
        let ids = self.fetch(&ids, "expert ids")?;
        let weights = self.fetch(&weights, "expert weights")?;
        if let Some(bad) = ids.iter().find(|&&e| e as usize >= experts) {
            return Err(Error::Device(format!(
                "moe_route chose expert {bad} of {experts}"
            )));
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
}
