//! What every model-running subcommand shares: where the model is and which device runs it.

use crate::backend::cpu::CpuBackend;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv::DEFAULT_BLOCK_SIZE;
use crate::model::AttentionForm;
use crate::model::Model;
use crate::weights::Checkpoint;
use clap::Args;
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

    /// Where to run: cpu, or cuda[:N] once the CUDA backend is built.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,

    /// MLA form: auto (materialised for prefill, absorbed for decode), materialised or absorbed.
    #[arg(long, value_enum, default_value_t = AttentionForm::Auto)]
    pub attention: AttentionForm,

    /// Tokens per block of the paged latent KV cache.
    #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE, value_name = "TOKENS")]
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
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
        ));
    }
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ));
    }
    ModelConfig::from_file(&path)
}

pub struct LoadedModel {
    /// The model folder it came from.
    pub dir: PathBuf,
    pub backend: CpuBackend,
    pub model: Model<CpuBackend>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let dir = model_dir(self.model.as_deref())?;
        let config = load_config(&dir)?;
        let backend = match self.device {
            DeviceSpec::Cpu => CpuBackend,
            DeviceSpec::Cuda(ordinal) => {
                // Say exactly what is missing (kernels, driver, device) before saying what is.
                let device = crate::backend::cuda::CudaDevice::open(ordinal)?;
                return Err(Error::Device(format!(
                    "{} is ready and its kernels load, but the GPU forward pass is not built yet; run with --device cpu",
                    device.info.name
                )));
            }
        };
        if self.block_size == 0 {
            return Err(Error::InvalidInput(
                "--block-size must be at least 1".into(),
            ));
        }
        let checkpoint = Checkpoint::open(&dir)?;
        crate::engine::memory::check_weights_fit_host(&config, &dir.display().to_string())?;
        let model = Model::load(config, &checkpoint, &backend)?;
        Ok(LoadedModel {
            dir,
            backend,
            model,
        })
    }
}
