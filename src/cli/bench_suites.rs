//! The GPU kernel suites of `mla bench` (`kernels`, `attention`, `moe`, `gemm`): their
//! arguments and runners.

use super::loading::{DType, DeviceSpec};
use clap::Args;
use mla_rt::backend::cuda::{CudaBackend, NarrowAttention, SplitCombine, WideAttention};
use mla_rt::backend::Backend;
use mla_rt::error::{Error, Result};
use mla_rt::kv::cache_dtype::KvCacheDtype;

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

pub(crate) fn bench_attention(args: &AttentionBenchArgs) -> Result<()> {
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

/// Bytes of the device-to-device copy the MoE and GEMM suites measure their ceiling with: past
/// any L2 (50 MB on an H100), small enough for cuda-emu's 8 GiB.
const COPY_BYTES: usize = 512 << 20;

/// `--tokens` of the MoE and GEMM suites: every value positive.
fn check_tokens(tokens: &[usize]) -> Result<()> {
    if tokens.contains(&0) {
        return Err(Error::InvalidInput(
            "every --tokens value must be positive".into(),
        ));
    }
    Ok(())
}

pub(crate) fn bench_moe(args: &MoeBenchArgs) -> Result<()> {
    let ordinal = args.gpu.ordinal("moe")?;
    check_tokens(&args.tokens)?;
    let shapes = args
        .shape
        .iter()
        .map(|s| crate::bench::moe::shape(s))
        .collect::<Result<Vec<_>>>()?;
    let gpu = CudaBackend::<half::bf16>::open(ordinal)?;
    let fp8: Vec<bool> = args
        .weights
        .iter()
        .map(|&w| w == WeightDtype::Fp8)
        .collect();
    let (rows, copy) =
        crate::bench::moe::run(&gpu, &shapes, &args.tokens, args.reps, COPY_BYTES, &fp8)?;
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

pub(crate) fn bench_gemm(args: &GemmBenchArgs) -> Result<()> {
    let ordinal = args.gpu.ordinal("gemm")?;
    check_tokens(&args.tokens)?;
    let mut shapes = Vec::new();
    for s in &args.shape {
        shapes.extend(crate::bench::gemm::shapes(s)?);
    }
    let gpu = CudaBackend::<half::bf16>::open(ordinal)?;
    let (rows, copy) = crate::bench::gemm::run(&gpu, &shapes, &args.tokens, args.reps, COPY_BYTES)?;
    super::output::say(&crate::bench::gemm::render(
        &gpu.name(),
        args.reps,
        copy,
        &rows,
    ))?;
    Ok(())
}

pub(crate) fn bench_kernels(args: &KernelBenchArgs) -> Result<()> {
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
