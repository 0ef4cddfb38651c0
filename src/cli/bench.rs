//! `mla bench`: llama-bench-style throughput of random-weight presets.

use super::bench_suites::{
    bench_attention, bench_gemm, bench_kernels, bench_moe, AttentionBenchArgs, GemmBenchArgs,
    KernelBenchArgs, MoeBenchArgs,
};
use super::loading::{DType, DeviceSpec};
use crate::bench::report::{compare, render, Format};
use crate::bench::{run, BatchSize, BenchConfig};
use clap::Args;
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::CudaBackend;
use mla_rt::backend::Backend;
use mla_rt::config::presets::{preset_config, PRESETS};
use mla_rt::config::quantization::Fp8Blocks;
use mla_rt::engine::memory::parse_bytes;
use mla_rt::error::{Error, Result};
use mla_rt::kv::cache_dtype::{CacheRows, KvCacheDtype};
use mla_rt::model::Model;
use mla_rt::weights::online_fp8::{OnlineFp8, Quantization};
use mla_rt::weights::{RandomWeights, TensorSource};

#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub suite: Option<BenchSuite>,

    /// Comma-separated presets (random weights, published dimensions).
    #[arg(long, value_delimiter = ',', required = true, value_name = "NAMES",
          help = format!("Comma-separated presets with random weights: {}", PRESETS.join(", ")))]
    pub preset: Vec<String>,

    /// Keep only the first N layers of every preset.
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,

    /// Sequences per test (comma-separated); `max`: the largest batch whose caches (in whole
    /// blocks) fit the memory budget at each depth, each model its own. At most 4096.
    #[arg(long, value_delimiter = ',', default_value = "1", value_name = "B")]
    pub batch: Vec<BatchSize>,

    /// Prompt tokens per sequence for the prefill test (pp).
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub prompt: usize,

    /// Decode steps for the generation test (tg).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub gen: usize,

    /// Tokens already in each sequence's cache when the tests start (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0", value_name = "D")]
    pub depth: Vec<usize>,

    /// Repetitions of each test (mean ± standard deviation).
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = super::at_least_one)]
    pub reps: usize,

    /// KV cache memory for the max-batch column, e.g. 60GiB (default: 0.9 of the memory left
    /// after the weights).
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    pub kv_cache_memory: Option<u64>,

    /// Tokens per cache block.
    #[arg(long, default_value_t = 64, value_name = "TOKENS", value_parser = super::block_size)]
    pub block_size: usize,

    /// KV cache types, comma-separated: auto (the backend's), f32, bf16 or fp8 (as for
    /// `generate`; the KV bytes/token and max-batch columns follow it). Every preset runs at
    /// each; with more than one, rows are labelled `<preset> <dtype>`. Each at most once.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "auto",
        value_name = "DTYPES"
    )]
    pub kv_cache_dtype: Vec<KvCacheDtype>,

    /// Print the ratios of the first preset at the first cache dtype against every other
    /// (preset, cache dtype) pair.
    #[arg(long)]
    pub compare: bool,

    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,

    /// Also draw decode tokens/s against depth and the max-batch bars into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,

    /// Where to run: cpu, or cuda[:N].
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,

    /// Activation, weight and KV cache type on the GPU (auto: bf16, as the published
    /// checkpoints). The CPU always computes in f32.
    #[arg(long, value_enum, default_value_t = DType::Auto)]
    pub dtype: DType,

    /// Seed of the random weights.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,

    /// Weights: none (the presets' bf16), or fp8 (linear weights made FP8 in 128 × 128 blocks,
    /// as `--quantization fp8` does; on the host, so loading takes longer). Rows are labelled
    /// `<preset> fp8-weights`.
    #[arg(long, value_enum, default_value_t = Quantization::None)]
    pub quantization: Quantization,

    /// Launch every kernel of the decode test's steps (on a GPU they are otherwise captured as
    /// CUDA graphs and replayed, as `generate` and `serve` do).
    #[arg(long)]
    pub enforce_eager: bool,
}

/// Benchmarks of single kernels rather than whole models.
#[derive(Debug, clap::Subcommand)]
pub enum BenchSuite {
    /// Bandwidth of every elementwise and row kernel on tens of MB, against a device-to-device
    /// copy measured in the same run (GPU only).
    Kernels(KernelBenchArgs),
    /// The absorbed MLA decode kernel on DeepSeek-V2-Lite (16 heads) and V3 (128 heads) shapes:
    /// time, GB/s and TFLOPS against a device-to-device copy, and the materialised path's time (GPU
    /// only, bf16).
    Attention(AttentionBenchArgs),
    /// Load an OpenAI-compatible server (`mla serve`) with streamed completions: throughput and
    /// TTFT, TPOT, ITL and end-to-end latency, as `vllm bench serve` reports them.
    Serve(crate::bench::serve::ServeBenchArgs),
    /// One MoE layer at V2-Lite and V3 shapes for batches of decode tokens, grouped path against
    /// per-expert path: weight bytes read over time as a fraction of copy bandwidth, with the
    /// launches and device→host waits of a call (needs --device cuda).
    Moe(MoeBenchArgs),
    /// One projection x·wᵀ with bf16 weights (cuBLAS) and FP8 weights (the FP8 GEMM, quantizing
    /// x included) at V2-Lite and V3 shapes: TFLOPS, and weight bytes per second against a
    /// device-to-device copy (needs --device cuda, compute capability 8.9+).
    Gemm(GemmBenchArgs),
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    match &args.suite {
        Some(BenchSuite::Kernels(k)) => return bench_kernels(k),
        Some(BenchSuite::Attention(a)) => return bench_attention(a),
        Some(BenchSuite::Serve(s)) => return crate::bench::serve::run(s),
        Some(BenchSuite::Moe(m)) => return bench_moe(m),
        Some(BenchSuite::Gemm(g)) => return bench_gemm(g),
        None => {}
    }
    if args.prompt == 0 && args.gen == 0 {
        return Err(Error::InvalidInput(
            "--prompt + --gen must be positive".into(),
        ));
    }
    match (args.device, args.dtype) {
        (DeviceSpec::Cpu, _) => bench_on(&args, CpuBackend::EXACT),
        (DeviceSpec::Cuda(ordinal), DType::F32) => {
            bench_on(&args, CudaBackend::<f32>::open(ordinal)?)
        }
        // Presets stand for bf16 checkpoints, so `auto` is bf16.
        (DeviceSpec::Cuda(ordinal), _) => {
            bench_on(&args, CudaBackend::<half::bf16>::open(ordinal)?)
        }
    }
}

fn bench_on<B: Backend>(args: &BenchArgs, backend: B) -> Result<()> {
    let configs = args
        .preset
        .iter()
        .map(|name| Ok((name.clone(), preset_config(name, args.layers)?)))
        .collect::<Result<Vec<_>>>()?;
    let native = backend.cache_value_bytes();
    // Each dtype with its resolved name; the names are distinct (`cache_dtypes`), so are the
    // labels of the (preset, dtype) pairs.
    let Some((_, first)) = configs.first() else {
        return Err(Error::InvalidInput(
            "--preset needs at least one preset".into(),
        ));
    };
    let dtypes = crate::bench::cache_dtypes(&args.kv_cache_dtype, first, native)?;
    let label = |name: &str, dtype: &str| crate::bench::model_label(name, dtype, dtypes.len() > 1);
    // The plot's path is checked before the runs, not after them.
    let plot = args
        .plot
        .as_deref()
        .map(|path| super::output_file::OutputFile::create(path, &[]))
        .transpose()?;
    // Lengths past the context, and a given budget that holds no sequence, are refused before
    // any weights are made.
    for (name, config) in &configs {
        for &depth in &args.depth {
            let total = depth
                .checked_add(args.prompt)
                .and_then(|n| n.checked_add(args.gen))
                .filter(|&n| n <= config.max_position_embeddings())
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{name}: depth {depth} + prompt {} + gen {} exceeds \
                         max_position_embeddings ({})",
                        args.prompt,
                        args.gen,
                        config.max_position_embeddings()
                    ))
                })?;
            let Some(budget) = args.kv_cache_memory else {
                continue;
            };
            if !args.batch.contains(&BatchSize::Max) {
                continue;
            }
            for &(dtype, dtype_name) in &dtypes {
                let rows = CacheRows::resolve(dtype, config, native)?;
                let fits = crate::bench::sequences_that_fit(
                    config,
                    args.block_size,
                    (&rows, native),
                    budget,
                    total,
                );
                if fits == 0 {
                    let model = label(name, dtype_name);
                    return Err(crate::bench::no_sequence_fits(&model, total, budget));
                }
            }
        }
    }
    let mut rows = Vec::new();
    // Preset-major, so each preset's weights are made once; the first row is the first
    // (preset, dtype) pair, `compare`'s baseline.
    for (name, config) in configs {
        if args.device == DeviceSpec::Cpu {
            mla_rt::engine::memory::check_weights_fit_host(&config, &name)?;
        }
        super::output::note!("{name}: generating random weights (seed {})", args.seed);
        let random = RandomWeights { seed: args.seed };
        let online = OnlineFp8 {
            inner: &random,
            blocks: Fp8Blocks::DEEPSEEK,
        };
        let (source, name): (&dyn TensorSource, String) = match args.quantization {
            Quantization::None => (&random, name),
            Quantization::Fp8 => (&online, format!("{name} fp8-weights")),
        };
        let model = Model::load(config, source, &backend)?;
        let budget = match args.kv_cache_memory {
            Some(b) => b,
            None => (backend.free_memory().unwrap_or(0) as f64 * 0.9) as u64,
        };
        // Measured once per preset (a GPU times copies), shared by its dtypes.
        let copy_bytes_per_s = backend.copy_bandwidth();
        for &(dtype, dtype_name) in &dtypes {
            let model_label = label(&name, dtype_name);
            let bench = BenchConfig {
                batches: args.batch.clone(),
                prompt: args.prompt,
                gen: args.gen,
                depths: args.depth.clone(),
                reps: args.reps,
                block_size: args.block_size,
                cuda_graphs: !args.enforce_eager,
                copy_bytes_per_s,
                memory_budget: budget,
                cache_value_bytes: native,
                fp8_weights: args.quantization == Quantization::Fp8 && backend.keeps_fp8_weights(),
                cache_dtype: dtype,
            };
            rows.extend(run(&model_label, &model, &backend, &bench, |r| {
                super::output::note!(
                    "{model_label}: {} batch {} depth {}: {:.2} tokens/s",
                    r.test,
                    r.batch,
                    r.depth,
                    r.tokens_per_s
                )
            })?);
        }
    }
    if let Some(mut plot) = plot {
        plot.write(crate::bench::plot::svg(&rows).as_bytes())?;
        let shown = plot.shown().display().to_string();
        plot.commit()?;
        super::output::note!("plot written to {shown}");
    }
    let comparisons = args.compare.then(|| compare(&rows));
    super::output::say(&render(&rows, comparisons.as_deref(), args.format))?;
    Ok(())
}
