//! What every model-running subcommand shares: where the model is and which device runs it.

use clap::Args;
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::CudaBackend;
use mla_rt::backend::Backend;
use mla_rt::config::quantization::{Fp8Activations, Fp8Blocks};
use mla_rt::config::ModelConfig;
use mla_rt::error::{Error, Result};
use mla_rt::kv::cache_dtype::KvCacheDtype;
use mla_rt::kv::DEFAULT_BLOCK_SIZE;
use mla_rt::model::AttentionForm;
use mla_rt::model::Model;
use mla_rt::weights::online_fp8::{OnlineFp8, Quantization};
use mla_rt::weights::{Checkpoint, TensorSource};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device \"{s}\" (expected cpu, cuda or cuda:N)")),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Hugging Face model folder: config.json, model.safetensors (or shards with
    /// model.safetensors.index.json), tokenizer.json. Default: the shipped MLA demo model
    /// (models/demo-mla).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// Where to run: cpu, or cuda[:N] (GPU N; needs kernels compiled in and the NVIDIA driver).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,

    /// Activation and weight type on the GPU: auto (the checkpoint's: bf16 for bf16/f16
    /// checkpoints), f32 or bf16. The CPU always computes in f32.
    #[arg(long, value_enum, default_value_t = DType::Auto)]
    pub dtype: DType,

    /// MLA form: auto (per step the one with fewer multiply-adds: absorbed for decode and short
    /// chunks over long contexts, materialised for prefill), materialised or absorbed.
    #[arg(long, value_enum, default_value_t = AttentionForm::Auto)]
    pub attention: AttentionForm,

    /// Weights: none (the checkpoint's), or fp8 (linear weights rounded at load to
    /// float8_e4m3 with a scale per 128 × 128 block, DeepSeek-V3's FP8 format; the CPU computes
    /// with their exact values, a GPU of compute capability 8.9+ in bf16 multiplies them as FP8
    /// by activations quantized per token per 128 channels).
    #[arg(long, value_enum, default_value_t = Quantization::None)]
    pub quantization: Quantization,

    /// How activations meet FP8 weights (an FP8 checkpoint's, or --quantization fp8's): auto
    /// (dynamic on a GPU of compute capability 8.9+ in bf16, else exact), exact (times the
    /// weights' exact values, as transformers computes) or dynamic (quantized per token per 128
    /// channels to e4m3 and multiplied FP8 by FP8, as DeepSeek's inference code does; on the
    /// CPU and in f32, what the GPU's FP8 GEMM computes).
    #[arg(long, value_enum, default_value_t = Fp8Activations::Auto)]
    pub fp8_activations: Fp8Activations,

    /// KV cache type: auto (f32 on the CPU, the model's dtype on a GPU), f32, bf16, or fp8
    /// (e4m3 with scales: FlashMLA's 656-byte layout for MLA, per-head scales for MHA/GQA).
    #[arg(long, value_enum, default_value_t = KvCacheDtype::Auto)]
    pub kv_cache_dtype: KvCacheDtype,

    /// Tokens per block of the paged latent KV cache, 1 to 1024.
    #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE, value_name = "TOKENS",
          value_parser = super::block_size)]
    pub block_size: usize,
}

/// Where the demo model lives inside the repository.
const DEMO_MODEL: &str = "models/demo-mla";

/// `explicit`, or the shipped demo model: looked for in the current folder, next to the binary
/// (and the folders above it, which covers `target/release/mla`), then in the source tree.
pub fn model_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    let mut roots: Vec<PathBuf> = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots
        .into_iter()
        .map(|root| root.join(DEMO_MODEL))
        .find(|dir| dir.join("config.json").is_file())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "no --model given and the demo model ({DEMO_MODEL}) was not found in the current folder, next to the binary or in the source tree; pass --model DIR"
            ))
        })
}

/// The config of a model folder, with a clear error when the folder or file is missing.
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    let problem = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some("is a file, not a model folder (--model takes the folder of config.json)"),
        Err(_) => Some("model folder not found"),
    };
    if let Some(problem) = problem {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, problem),
        ));
    }
    let path = dir.join("config.json");
    mla_rt::util::files::require_regular_file(&path)?;
    ModelConfig::from_file(&path)
}

/// Element type of activations (and weights) on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DType {
    /// bf16 when the checkpoint holds bf16 or f16 tensors, f32 otherwise (vLLM's `auto`).
    Auto,
    F32,
    Bf16,
}

impl DType {
    fn resolve(self, checkpoint: &Checkpoint) -> DType {
        match self {
            DType::Auto
                if checkpoint
                    .dtypes()
                    .iter()
                    .any(|d| d == "BF16" || d == "F16" || d == "F8_E4M3") =>
            {
                DType::Bf16
            }
            DType::Auto => DType::F32,
            other => other,
        }
    }
}

pub struct LoadedModel<B: Backend> {
    /// The model folder it came from.
    pub dir: PathBuf,
    pub backend: B,
    pub model: Model<B>,
}

/// The body of a subcommand, written once for every backend `--device` can pick.
pub trait ModelTask {
    type Output;
    fn run<B: Backend>(self, loaded: LoadedModel<B>) -> Result<Self::Output>;
}

impl ModelArgs {
    /// The files of the model folder, which no `--output` may replace.
    pub fn input_files(&self) -> Result<Vec<PathBuf>> {
        let dir = model_dir(self.model.as_deref())?;
        Ok(std::fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default())
    }

    /// Loads the model onto the device `--device` names and runs `task` with it.
    pub fn run<T: ModelTask>(&self, task: T) -> Result<T::Output> {
        let dir = model_dir(self.model.as_deref())?;
        let config = load_config(&dir)?;
        match self.device {
            DeviceSpec::Cpu => {
                let checkpoint = Checkpoint::open(&dir)?;
                mla_rt::engine::memory::check_weights_fit_host(
                    &config,
                    &dir.display().to_string(),
                )?;
                task.run(load_on(
                    dir,
                    config,
                    (&checkpoint, self.quantization),
                    CpuBackend::new(self.fp8_activations),
                )?)
            }
            DeviceSpec::Cuda(ordinal) => {
                let checkpoint = Checkpoint::open(&dir)?;
                match self.dtype.resolve(&checkpoint) {
                    DType::Bf16 => {
                        let backend = CudaBackend::<half::bf16>::open(ordinal)?;
                        backend.set_fp8_activations(self.fp8_activations)?;
                        task.run(load_on(
                            dir,
                            config,
                            (&checkpoint, self.quantization),
                            backend,
                        )?)
                    }
                    _ => {
                        let backend = CudaBackend::<f32>::open(ordinal)?;
                        backend.set_fp8_activations(self.fp8_activations)?;
                        task.run(load_on(
                            dir,
                            config,
                            (&checkpoint, self.quantization),
                            backend,
                        )?)
                    }
                }
            }
        }
    }
}

fn load_on<B: Backend>(
    dir: PathBuf,
    config: ModelConfig,
    (checkpoint, quantization): (&Checkpoint, Quantization),
    backend: B,
) -> Result<LoadedModel<B>> {
    let online;
    let source: &dyn TensorSource = match quantization {
        Quantization::None => checkpoint,
        Quantization::Fp8 => {
            online = OnlineFp8 {
                inner: checkpoint,
                blocks: Fp8Blocks::DEEPSEEK,
            };
            &online
        }
    };
    let model = Model::load(config, source, &backend)?;
    Ok(LoadedModel {
        dir,
        backend,
        model,
    })
}
