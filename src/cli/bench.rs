//! `mla bench`: llama-bench-style throughput of random-weight presets.

use super::loading::{DType, DeviceSpec};
use crate::bench::report::{compare, render, Format};
use crate::bench::{run, BatchSize, BenchConfig};
use clap::Args;
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::{CudaBackend, NarrowAttention, SplitCombine, WideAttention};
use mla_rt::backend::Backend;
use mla_rt::config::presets::{preset_config, PRESETS};
use mla_rt::engine::memory::parse_bytes;
use mla_rt::error::{Error, Result};
use mla_rt::kv::cache_dtype::{CacheRows, KvCacheDtype};
use mla_rt::model::Model;
use mla_rt::weights::RandomWeights;

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

#[derive(Debug, Args)]
pub struct AttentionBenchArgs {
    #[command(flatten)]
    pub gpu: GpuArg,

    /// Query heads (16: DeepSeek-V2-Lite, 128: V3).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16,128",
        value_name = "H"
    )]
    pub heads: Vec<usize>,

    /// Sequences per step.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,32,128",
        value_name = "B"
    )]
    pub batch: Vec<usize>,

    /// Cached tokens per sequence.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,4096,16384,32768",
        value_name = "N"
    )]
    pub context: Vec<usize>,

    /// Timed calls per shape (after one warm-up).
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = super::at_least_one)]
    pub reps: usize,

    /// The kernels to time, a row each where they differ: where-pays (the runtime's choice),
    /// wgmma (64 rows per CTA on Hopper's warpgroup tensor cores; 64+ heads), mma (64 rows per
    /// CTA, mma.sync), 16-row (16 rows per CTA); in a build with the experimental-kernels
    /// feature also wgmma-rs, wgmma-persistent, wgmma-seesaw, wgmma-seesaw-tma and 16-row-deep
    /// (docs/kernels.md).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "where-pays",
        value_name = "K"
    )]
    pub kernel: Vec<KernelChoice>,

    /// CTAs the split-KV schedule aims for, in waves of the CTAs the GPU holds at once (the
    /// runtime uses 1), a row each: fewer, longer splits below 1; more, shorter ones above.
    #[arg(long, value_delimiter = ',', default_value = "1", value_name = "W")]
    pub waves: Vec<f32>,

    /// How the splits of a row group are merged, a row each where it differs: kernel (a second
    /// kernel once the attention grid has finished; the runtime's choice); in a build with the
    /// experimental-kernels feature also last-cta (by the attention CTA that finishes a group's
    /// last split, for up to 32 splits per group).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kernel",
        value_name = "C"
    )]
    pub combine: Vec<CombineChoice>,

    /// Also time the materialised path (K/V expanded with cuBLAS, then attention over them)
    /// where its K/V fit, and print the absorbed kernel's speed-up over it; `false` leaves
    /// only the absorbed kernel's launches (for a profiler).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub materialised: bool,

    /// Cache types, a row each: bf16 (auto) or fp8 (FlashMLA's 656-byte rows, read by the FP8
    /// builds of the kernels); GB/s count the bytes each actually reads.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bf16",
        value_name = "D"
    )]
    pub kv_cache_dtype: Vec<KvCacheDtype>,
}

/// `--combine` of `mla bench attention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CombineChoice {
    Kernel,
    #[cfg(feature = "experimental-kernels")]
    LastCta,
}

impl From<CombineChoice> for SplitCombine {
    fn from(choice: CombineChoice) -> Self {
        match choice {
            CombineChoice::Kernel => SplitCombine::Kernel,
            #[cfg(feature = "experimental-kernels")]
            CombineChoice::LastCta => SplitCombine::LastCta,
        }
    }
}

/// `--kernel` of `mla bench attention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    WherePays,
    Wgmma,
    Mma,
    #[value(name = "16-row")]
    SixteenRow,
    #[cfg(feature = "experimental-kernels")]
    #[value(name = "wgmma-rs")]
    WgmmaRs,
    #[cfg(feature = "experimental-kernels")]
    #[value(name = "wgmma-persistent")]
    WgmmaPersistent,
    #[cfg(feature = "experimental-kernels")]
    #[value(name = "wgmma-seesaw")]
    WgmmaSeesaw,
    #[cfg(feature = "experimental-kernels")]
    #[value(name = "wgmma-seesaw-tma")]
    WgmmaSeesawTma,
    #[cfg(feature = "experimental-kernels")]
    #[value(name = "16-row-deep")]
    SixteenRowDeep,
}

impl KernelChoice {
    /// The 64-row kernel and the 16-row build this choice asks for.
    fn tuning(self) -> (WideAttention, NarrowAttention) {
        let shallow = NarrowAttention::Shallow;
        match self {
            KernelChoice::WherePays => (WideAttention::WherePays, shallow),
            KernelChoice::Wgmma => (WideAttention::Wgmma, shallow),
            KernelChoice::Mma => (WideAttention::Mma, shallow),
            KernelChoice::SixteenRow => (WideAttention::Off, shallow),
            #[cfg(feature = "experimental-kernels")]
            KernelChoice::WgmmaRs => (WideAttention::WgmmaRs, shallow),
            #[cfg(feature = "experimental-kernels")]
            KernelChoice::WgmmaPersistent => (WideAttention::WgmmaPersistent, shallow),
            #[cfg(feature = "experimental-kernels")]
            KernelChoice::WgmmaSeesaw => (WideAttention::WgmmaSeesaw, shallow),
            #[cfg(feature = "experimental-kernels")]
            KernelChoice::WgmmaSeesawTma => (WideAttention::WgmmaSeesawTma, shallow),
            #[cfg(feature = "experimental-kernels")]
            KernelChoice::SixteenRowDeep => (WideAttention::Off, NarrowAttention::Deep),
        }
    }
}

fn bench_attention(args: &AttentionBenchArgs) -> Result<()> {
    let ordinal = args.gpu.ordinal("attention")?;
    if args.kernel.is_empty() {
        return Err(Error::InvalidInput(
            "--kernel needs at least one kernel".into(),
        ));
    }
    if let Some(w) = args.waves.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
        return Err(Error::InvalidInput(format!(
            "--waves must be positive, not {w}"
        )));
    }
    if args.waves.is_empty() {
        return Err(Error::InvalidInput(
            "--waves needs at least one value".into(),
        ));
    }
    if args.combine.is_empty() {
        return Err(Error::InvalidInput(
            "--combine needs at least one choice".into(),
        ));
    }
    if args.kv_cache_dtype.is_empty() || args.kv_cache_dtype.contains(&KvCacheDtype::F32) {
        return Err(Error::InvalidInput(
            "--kv-cache-dtype of `bench attention` takes bf16 and fp8".into(),
        ));
    }
    if args.heads.contains(&0) || args.batch.contains(&0) || args.context.contains(&0) {
        return Err(Error::InvalidInput(
            "--heads, --batch and --context must be positive".into(),
        ));
    }
    let gpu = CudaBackend::<half::bf16>::open(ordinal)?;
    let kernels: Vec<_> = args.kernel.iter().map(|&k| k.tuning()).collect();
    let combines: Vec<SplitCombine> = args.combine.iter().map(|&c| c.into()).collect();
    let shapes = crate::bench::attention::AttentionShapes {
        kernels: &kernels,
        waves: &args.waves,
        combines: &combines,
        heads: &args.heads,
        batches: &args.batch,
        contexts: &args.context,
        reps: args.reps,
        materialised: args.materialised,
        caches: &args.kv_cache_dtype,
    };
    let (copy, rows) = crate::bench::attention::run(&gpu, &shapes, |r| {
        super::output::note!(
            "h={} batch {} context {} {}: {:.1} µs",
            r.heads,
            r.batch,
            r.context,
            r.kernel,
            r.micros
        )
    })?;
    super::output::say(&crate::bench::attention::render(&gpu.name(), copy, &rows))?;
    Ok(())
}

/// The GPU a kernel benchmark runs on.
#[derive(Debug, Args)]
pub struct GpuArg {
    /// The GPU: cuda or cuda:N.
    #[arg(long, default_value = "cuda", value_name = "DEVICE")]
    pub device: DeviceSpec,
}

impl GpuArg {
    fn ordinal(&self, suite: &str) -> Result<usize> {
        match self.device {
            DeviceSpec::Cuda(ordinal) => Ok(ordinal),
            DeviceSpec::Cpu => Err(Error::InvalidInput(format!(
                "mla bench {suite} measures GPU kernels: give --device cuda[:N]"
            ))),
        }
    }
}

#[derive(Debug, Args)]
pub struct KernelBenchArgs {
    #[command(flatten)]
    pub gpu: GpuArg,

    /// Element type of the tensors: auto (bf16), f32 or bf16.
    #[arg(long, value_enum, default_value_t = DType::Auto)]
    pub dtype: DType,
}

#[derive(Debug, Args)]
pub struct MoeBenchArgs {
    #[command(flatten)]
    pub gpu: GpuArg,

    /// Layer shapes: v2-lite (64 experts of 1408, top-6, hidden 2048), v3 (256 experts of 2048,
    /// top-8, hidden 7168; about 23 GB of weights), tiny (a quick run on cuda-emu).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "v2-lite,v3",
        value_name = "SHAPE"
    )]
    pub shape: Vec<String>,

    /// Tokens per call (a decode batch).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8,64,128,512",
        value_name = "N"
    )]
    pub tokens: Vec<usize>,

    /// Weights of the experts and shared MLP: bf16, fp8 (128 × 128 blocks, multiplied as FP8
    /// on compute capability 8.9+), or both in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bf16",
        value_name = "DTYPE"
    )]
    pub weights: Vec<WeightDtype>,

    /// Timed calls per row (after one warm-up).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = super::at_least_one)]
    pub reps: usize,
}

/// `mla bench moe --weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightDtype {
    Bf16,
    Fp8,
}

fn bench_moe(args: &MoeBenchArgs) -> Result<()> {
    let ordinal = args.gpu.ordinal("moe")?;
    if args.tokens.contains(&0) {
        return Err(Error::InvalidInput(
            "every --tokens value must be positive".into(),
        ));
    }
    let shapes = args
        .shape
        .iter()
        .map(|s| crate::bench::moe::shape(s))
        .collect::<Result<Vec<_>>>()?;
    let gpu = CudaBackend::<half::bf16>::open(ordinal)?;
    // Past any L2 (50 MB on an H100), small enough for cuda-emu's 8 GiB.
    let copy_bytes = 512 << 20;
    let fp8: Vec<bool> = args
        .weights
        .iter()
        .map(|&w| w == WeightDtype::Fp8)
        .collect();
    let (rows, copy) =
        crate::bench::moe::run(&gpu, &shapes, &args.tokens, args.reps, copy_bytes, &fp8)?;
    super::output::say(&crate::bench::moe::render(
        &gpu.name(),
        args.reps,
        copy,
        &rows,
    ))?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct GemmBenchArgs {
    #[command(flatten)]
    pub gpu: GpuArg,

    /// Projection shapes: v2-lite (q_proj, o_proj, an expert's gate and down), v3 (q_b_proj,
    /// o_proj, an expert's gate and down), tiny (a quick run on cuda-emu).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "v2-lite,v3",
        value_name = "SHAPE"
    )]
    pub shape: Vec<String>,

    /// Rows of x per call (decode batches, then a prefill chunk).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,64,4096",
        value_name = "N"
    )]
    pub tokens: Vec<usize>,

    /// Timed calls per row (after one warm-up).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = super::at_least_one)]
    pub reps: usize,
}

fn bench_gemm(args: &GemmBenchArgs) -> Result<()> {
    let ordinal = args.gpu.ordinal("gemm")?;
    if args.tokens.contains(&0) {
        return Err(Error::InvalidInput(
            "every --tokens value must be positive".into(),
        ));
    }
    let mut shapes = Vec::new();
    for s in &args.shape {
        shapes.extend(crate::bench::gemm::shapes(s)?);
    }
    let gpu = CudaBackend::<half::bf16>::open(ordinal)?;
    let (rows, copy) = crate::bench::gemm::run(&gpu, &shapes, &args.tokens, args.reps, 512 << 20)?;
    super::output::say(&crate::bench::gemm::render(
        &gpu.name(),
        args.reps,
        copy,
        &rows,
    ))?;
    Ok(())
}

fn bench_kernels(args: &KernelBenchArgs) -> Result<()> {
    let ordinal = args.gpu.ordinal("kernels")?;
    let table = if args.dtype == DType::F32 {
        let gpu = CudaBackend::<f32>::open(ordinal)?;
        crate::bench::kernels::render(&gpu.name(), &crate::bench::kernels::run(&gpu)?)
    } else {
        let gpu = CudaBackend::<half::bf16>::open(ordinal)?;
        crate::bench::kernels::render(&gpu.name(), &crate::bench::kernels::run(&gpu)?)
    };
    super::output::say(&table)?;
    Ok(())
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
        (DeviceSpec::Cpu, _) => bench_on(&args, CpuBackend),
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
        let model = Model::load(config, &RandomWeights { seed: args.seed }, &backend)?;
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
