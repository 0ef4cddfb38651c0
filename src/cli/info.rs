//! `mla info`: what a model is and what its KV cache costs, from config and checkpoint headers.

use super::loading::{load_config, model_dir, DeviceSpec};
use super::output::Report;
use clap::Args;
use mla_rt::backend::cuda::CudaDevice;
use mla_rt::config::{
    DeepSeekConfig, LlamaConfig, ModelConfig, RopeConfig, RopeScaling, TopkMethod,
};
use mla_rt::error::Result;
use mla_rt::kv::cache_dtype::{CacheRows, Fp8Layout, KvCacheDtype};
use mla_rt::model::params::{count_params, kv_values_per_token_per_layer};
use mla_rt::weights::Checkpoint;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Hugging Face model folder (default: the shipped MLA demo model, models/demo-mla).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// Bytes per cached value for the KV cache figures (2 for bf16/f16, 4 for f32), 1 to 8.
    #[arg(long, default_value_t = 2, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..=8))]
    pub cache_dtype_bytes: u64,

    /// With --device: count the tokens that fit in this cache type (auto, f32, bf16, fp8)
    /// instead of at --cache-dtype-bytes per value.
    #[arg(long, value_enum, value_name = "DTYPE")]
    pub kv_cache_dtype: Option<KvCacheDtype>,

    /// Also read every weight and fail on the first tensor holding a NaN or an infinity.
    #[arg(long)]
    pub verify: bool,

    /// Also describe this device and how many cached tokens fit in its free memory after the
    /// weights (cpu, or cuda[:N]).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceSpec>,
}

/// `12345678` → `12.35 M`.
fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn describe_deepseek(out: &mut Report, c: &DeepSeekConfig) {
    let layers = c.num_hidden_layers;
    let moe_layers = (0..layers).filter(|&l| c.is_moe_layer(l)).count();
    out.line(format_args!(
        "layers:       {layers} ({} dense, {moe_layers} MoE)",
        layers - moe_layers
    ));
    out.line(format_args!(
        "attention:    MLA, {} heads; q_lora_rank {}, kv_lora_rank {}; head dims: nope {}, rope {}, v {}",
        c.num_attention_heads,
        c.q_lora_rank.map_or("none".to_string(), |r| r.to_string()),
        c.kv_lora_rank,
        c.qk_nope_head_dim,
        c.qk_rope_head_dim,
        c.v_head_dim
    ));
    out.line(format_args!(
        "hidden:       {} (dense MLP {}), vocab {}",
        c.hidden_size, c.intermediate_size, c.vocab_size
    ));
    if let Some(m) = &c.moe {
        let method = match m.topk_method {
            TopkMethod::Greedy => "greedy".to_string(),
            TopkMethod::GroupLimitedGreedy => format!(
                "group_limited_greedy ({} of {} groups)",
                m.topk_group, m.n_group
            ),
            TopkMethod::NoauxTc => format!("noaux_tc ({} of {} groups)", m.topk_group, m.n_group),
        };
        out.line(format_args!(
            "experts:      {} routed ({} per token) + {} shared, intermediate {}; {:?} scores, {method}",
            m.n_routed_experts, m.num_experts_per_tok, m.n_shared_experts, m.moe_intermediate_size, m.scoring_func
        ));
    }
    describe_rope(out, &c.rope, c.max_position_embeddings);
}

fn describe_llama(out: &mut Report, c: &LlamaConfig) {
    out.line(format_args!(
        "layers:       {} (dense)",
        c.num_hidden_layers
    ));
    let kind = match c.num_key_value_heads {
        1 => "MQA".to_string(),
        kv if kv == c.num_attention_heads => "MHA".to_string(),
        kv => format!(
            "GQA ({} query heads per KV head)",
            c.num_attention_heads / kv
        ),
    };
    out.line(format_args!(
        "attention:    {kind}, {} heads, {} KV heads, head dim {}{}",
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        match c.sliding_windows.iter().flatten().next() {
            Some(w) => format!(
                "; sliding window {w} on {} layers",
                c.sliding_windows.iter().flatten().count()
            ),
            None => String::new(),
        }
    ));
    out.line(format_args!(
        "hidden:       {} (MLP {}), vocab {}",
        c.hidden_size, c.intermediate_size, c.vocab_size
    ));
    describe_rope(out, &c.rope, c.max_position_embeddings);
}

fn describe_rope(out: &mut Report, rope: &RopeConfig, max_positions: usize) {
    let scaling = match &rope.scaling {
        RopeScaling::None => "plain".to_string(),
        RopeScaling::Linear { factor } => format!("linear ×{factor}"),
        RopeScaling::Dynamic { factor, .. } => format!("dynamic NTK ×{factor}"),
        RopeScaling::Llama3 {
            factor,
            original_max_position_embeddings,
            ..
        } => {
            format!("llama3 ×{factor} from {original_max_position_embeddings} positions")
        }
        RopeScaling::Yarn(y) => format!(
            "yarn ×{} from {} positions",
            y.factor, y.original_max_position_embeddings
        ),
    };
    out.line(format_args!(
        "rope:         theta {}, {scaling}, {} pairs; max positions {max_positions}",
        rope.theta,
        if rope.interleaved {
            "interleaved"
        } else {
            "half-split"
        },
    ));
}

pub fn run(args: InfoArgs) -> Result<()> {
    let dir = model_dir(args.model.as_deref())?;
    let c = load_config(&dir)?;
    let checkpoint = Checkpoint::open(&dir)?;
    let mut out = Report::default();
    out.line(format_args!(
        "model:        {} ({})",
        dir.display(),
        c.architecture().name()
    ));
    match &c {
        ModelConfig::DeepSeek(d) => describe_deepseek(&mut out, d),
        ModelConfig::Llama(l) => describe_llama(&mut out, l),
    }
    let p = count_params(&c);
    out.line(format_args!(
        "parameters:   {} total; {} activated per token ({} without the input embedding)",
        human(p.total),
        human(p.activated),
        human(p.activated - p.embedding)
    ));
    let in_files: u64 = checkpoint.tensor_sizes().map(|(_, n)| n as u64).sum();
    out.line(format_args!(
        "checkpoint:   {} parameters in {}",
        human(in_files),
        checkpoint.dtypes().join(", ")
    ));
    if let Some(b) = mla_rt::config::quantization::fp8_blocks_of_file(&dir.join("config.json"))? {
        let gpu = match b == mla_rt::config::quantization::Fp8Blocks::DEEPSEEK {
            true => "on a GPU of compute capability 8.9+ with bf16 activations kept as FP8 and multiplied by activations quantized per token per 128 channels, else dequantized to bf16 (--fp8-activations chooses)",
            false => "on a GPU dequantized to bf16 (the FP8 GEMM takes 128 × 128 blocks)",
        };
        out.line(format_args!(
            "quantization: fp8 e4m3 weights with one scale per {} × {} block; on the CPU dequantized to f32 at load; {gpu}",
            b.rows, b.cols
        ));
    }
    let (cached, mha) = kv_values_per_token_per_layer(&c);
    let layers = c.num_hidden_layers() as u64;
    let bytes = |values: u64| values * layers * args.cache_dtype_bytes;
    let what = match c {
        ModelConfig::DeepSeek(_) => "MLA latent",
        ModelConfig::Llama(_) => "K/V of the KV heads",
    };
    out.line(format_args!(
        "KV cache:     {what} {cached} values/token/layer = {} bytes/token; MHA (2·heads·head dim) {mha} values = {} bytes/token; {:.1}× smaller",
        bytes(cached),
        bytes(mha),
        mha as f64 / cached as f64
    ));
    let fp8 = Fp8Layout::for_model(&c).bytes_per_token() as u64;
    let mha_fp8 = Fp8Layout::mha_twin(&c).bytes_per_token();
    out.line(format_args!(
        "FP8 cache:    {fp8} bytes/token/layer = {} bytes/token ({:.2}× the tokens of bf16); MHA in FP8 {mha_fp8} bytes/token/layer (--kv-cache-dtype fp8)",
        fp8 * layers,
        (2 * cached) as f64 / fp8 as f64,
    ));
    if args.verify {
        let tensors = checkpoint.verify_finite()?;
        out.line(format_args!(
            "verified:     every value of the {tensors} tensors is finite"
        ));
    }
    if let Some(DeviceSpec::Cuda(ordinal)) = args.device {
        let device = CudaDevice::open(ordinal)?;
        let free = device.free_memory()? as u64;
        let weights = p.total.saturating_mul(args.cache_dtype_bytes);
        let left = free.saturating_sub(weights);
        // The cache as `--kv-cache-dtype` stores it (its own bytes), else at
        // `--cache-dtype-bytes` per value.
        let (per_token, mha_per_token) = match args.kv_cache_dtype {
            Some(dtype) => {
                let rows = CacheRows::resolve(dtype, &c, args.cache_dtype_bytes)?;
                (
                    rows.bytes_per_token(args.cache_dtype_bytes) * layers,
                    rows.mha_bytes_per_token(&c, args.cache_dtype_bytes) * layers,
                )
            }
            None => (bytes(cached), bytes(mha)),
        };
        out.line(format_args!(
            "device:       cuda:{ordinal} {} (compute {}.{}), {:.1} GiB, {:.1} GiB free; after {:.1} GiB of weights, {} tokens of KV cache fit ({} with an MHA cache)",
            device.info.name,
            device.info.compute_capability.0,
            device.info.compute_capability.1,
            device.info.total_memory as f64 / GIB,
            free as f64 / GIB,
            weights as f64 / GIB,
            left / per_token.max(1),
            left / mha_per_token.max(1)
        ));
        out.line(format_args!(
            "profiling:    {}",
            if mla_rt::profile::enable_nvtx() {
                "NVTX ranges on (libnvToolsExt found): nsys profile -t cuda,nvtx shows them"
            } else {
                "no NVTX library (libnvToolsExt) on the library path: --profile prints per-op tables"
            }
        ));
    }
    out.say()
}

const GIB: f64 = (1u64 << 30) as f64;
