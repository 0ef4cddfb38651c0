//! Memory-mapped safetensors checkpoints (single file or sharded through
//! `model.safetensors.index.json`), read into f32 host tensors.

use crate::config::quantization::Fp8Blocks;
use crate::error::{read_json, Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

pub mod fp8;
pub mod online_fp8;
pub mod random;
pub use random::RandomWeights;

/// A dense row-major f32 tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Where the tensor data starts: 8 length bytes plus the JSON header.
    data_start: usize,
}

struct Entry {
    shard: usize,
    info: TensorInfo,
}

/// Where a model's named tensors come from: a checkpoint, or generated weights.
pub trait TensorSource {
    /// Tensor `name` as f32, which must have exactly `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor>;
    fn contains(&self, name: &str) -> bool;
    /// Tensor `name` as a block-scaled FP8 matrix, where the source holds it so (an FP8
    /// checkpoint's `F8_E4M3` weight with its `_scale_inv`, or `--quantization fp8`); `None`
    /// for any other tensor, which [`Self::load`] reads.
    fn load_fp8(&self, _name: &str, _shape: &[usize]) -> Result<Option<fp8::Fp8Matrix>> {
        Ok(None)
    }
    /// A fused stack of expert matrices `name` (`[experts, rows, cols]`, transformers 5's
    /// `experts.gate_up_proj` and `experts.down_proj`) as block-scaled FP8 matrices, where the
    /// source makes them so (`--quantization fp8`): each expert's matrix cut into
    /// [`online_fp8::fused_parts`] equal row ranges (gate and up apart), expert by expert.
    fn load_fp8_stack(&self, _name: &str, _shape: &[usize]) -> Result<Option<Vec<fp8::Fp8Matrix>>> {
        Ok(None)
    }
    /// For generated weights: how tensor `name` is filled, so that a backend can generate it
    /// in place instead of receiving it from the host.
    fn random_fill(&self, _name: &str, _shape: &[usize]) -> Option<random::RandomFill> {
        None
    }
}

impl TensorSource for Checkpoint {
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        Checkpoint::load(self, name, shape)
    }

    fn contains(&self, name: &str) -> bool {
        Checkpoint::contains(self, name)
    }

    fn load_fp8(&self, name: &str, shape: &[usize]) -> Result<Option<fp8::Fp8Matrix>> {
        Checkpoint::load_fp8_matrix(self, name, shape)
    }
}

/// Whether `file` (a shard named by an index) is a relative path that stays inside the folder:
/// no root, no drive, no `..` (what a link inside the folder points at is the folder's own
/// business, as in the Hugging Face cache).
fn inside_folder(file: &str) -> bool {
    let path = Path::new(file);
    !file.is_empty()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
        && path
            .components()
            .any(|c| matches!(c, std::path::Component::Normal(_)))
}

/// All tensors of a checkpoint folder, by name.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: HashMap<String, Entry>,
    /// The block-scaled FP8 format config.json declares, for `F8_E4M3` tensors.
    fp8_blocks: Option<Fp8Blocks>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        use crate::util::files::{exists_in_any_form, require_regular_file};
        let files: Vec<(PathBuf, Option<Vec<String>>)> = if exists_in_any_form(&index_path) {
            let index: ShardIndex = read_json(&index_path)?;
            let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (tensor, file) in index.weight_map {
                if !inside_folder(&file) {
                    return Err(Error::checkpoint(
                        &index_path,
                        format!(
                            "weight_map puts tensor {tensor} in {file:?}, which is not a path inside the model folder"
                        ),
                    ));
                }
                by_file.entry(file).or_default().push(tensor);
            }
            if by_file.is_empty() {
                return Err(Error::checkpoint(
                    &index_path,
                    "weight_map lists no tensors",
                ));
            }
            by_file
                .into_iter()
                .map(|(file, names)| (dir.join(file), Some(names)))
                .collect()
        } else if exists_in_any_form(&single) {
            require_regular_file(&single)?;
            vec![(single, None)]
        } else {
            return Err(Error::checkpoint(
                dir,
                "no weights found (expected model.safetensors or model.safetensors.index.json)",
            ));
        };

        let config = dir.join("config.json");
        let mut checkpoint = Checkpoint {
            dir: dir.to_path_buf(),
            shards: Vec::new(),
            tensors: HashMap::new(),
            fp8_blocks: match crate::util::files::exists_in_any_form(&config) {
                true => crate::config::quantization::fp8_blocks_of_file(&config)?,
                false => None,
            },
        };
        for (path, expected_names) in files {
            let shard_id = checkpoint.shards.len();
            let shard = open_shard(&path)?;
            let (_, metadata) = SafeTensors::read_metadata(&shard.mmap).map_err(|e| {
                let header = &shard.mmap[8..shard.data_start];
                Error::checkpoint(
                    &path,
                    match tensor_size_mismatch(header) {
                        Some(mismatch) => mismatch,
                        None => format!("not a valid safetensors file (truncated or corrupt): {e}"),
                    },
                )
            })?;
            let data_len = shard.mmap.len() - shard.data_start;
            for (name, info) in metadata.tensors() {
                let (begin, end) = info.data_offsets;
                if end > data_len || begin > end {
                    return Err(Error::checkpoint(
                        &path,
                        format!("tensor {name} lies past the end of the file (truncated?)"),
                    ));
                }
                checkpoint.tensors.insert(
                    name,
                    Entry {
                        shard: shard_id,
                        info: info.clone(),
                    },
                );
            }
            if let Some(names) = expected_names {
                if let Some(missing) = names.iter().find(|n| !checkpoint.tensors.contains_key(*n)) {
                    return Err(Error::checkpoint(
                        &path,
                        format!(
                            "the index lists tensor {missing} in this file, but it is not there"
                        ),
                    ));
                }
            }
            checkpoint.shards.push(shard);
        }
        Ok(checkpoint)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.info.shape.as_slice())
    }

    /// Names and element counts of every tensor, for parameter counting (an FP8 checkpoint's
    /// block scales are not parameters).
    pub fn tensor_sizes(&self) -> impl Iterator<Item = (&str, usize)> {
        let fp8 = self.fp8_blocks.is_some();
        self.tensors
            .iter()
            .filter(move |(n, _)| !(fp8 && n.ends_with("_scale_inv")))
            .map(|(n, e)| (n.as_str(), e.info.shape.iter().product()))
    }

    /// Reads every tensor (in name order) and fails on the first holding a NaN or an infinity,
    /// naming the tensor and the element; returns how many tensors were read.
    pub fn verify_finite(&self) -> Result<usize> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for name in &names {
            let shape = self.tensors[*name].info.shape.clone();
            let tensor = self.load(name, &shape)?;
            if let Some((i, v)) = tensor.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite(format!(
                    "tensor {name} (shape {shape:?}) holds {v} at element {i}, in {}",
                    self.dir.display()
                )));
            }
        }
        Ok(names.len())
    }

    /// Dtype names present in the checkpoint, e.g. `["BF16"]`.
    pub fn dtypes(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .tensors
            .values()
            .map(|e| format!("{:?}", e.info.dtype))
            .collect();
        d.sort();
        d.dedup();
        d
    }

    /// Tensor `name`'s entry, stored bytes and file, checking it has exactly `shape`.
    fn stored(&self, name: &str, shape: &[usize]) -> Result<(&Entry, &[u8], &Path)> {
        let entry = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        })?;
        if entry.info.shape != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: entry.info.shape.clone(),
            });
        }
        let shard = &self.shards[entry.shard];
        let (begin, end) = entry.info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + begin..shard.data_start + end];
        Ok((entry, bytes, &shard.path))
    }

    /// Reads tensor `name` as f32, checking it has exactly `shape`.
    pub fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let (entry, bytes, path) = self.stored(name, shape)?;
        let count: usize = shape.iter().product();
        if entry.info.dtype == Dtype::F8_E4M3 {
            return Ok(self.fp8_matrix(name, shape, bytes, path)?.dequantize());
        }
        let width = match entry.info.dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            other => {
                return Err(Error::UnsupportedDtype {
                    dtype: format!("{other:?}"),
                    tensor: name.to_string(),
                })
            }
        };
        if bytes.len() != count * width {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor {name} holds {} bytes, its shape {shape:?} needs {}",
                    bytes.len(),
                    count * width
                ),
            ));
        }
        let data = match entry.info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Ok(HostTensor::new(shape.to_vec(), data))
    }
}

impl Checkpoint {
    /// Tensor `name` as stored, if it is `F8_E4M3` (with its block scales); `None` for
    /// another dtype. Shapes are checked as [`Self::load`] checks them.
    pub fn load_fp8_matrix(&self, name: &str, shape: &[usize]) -> Result<Option<fp8::Fp8Matrix>> {
        match self.tensors.get(name) {
            Some(entry) if entry.info.dtype == Dtype::F8_E4M3 => {
                let (_, bytes, path) = self.stored(name, shape)?;
                self.fp8_matrix(name, shape, bytes, path).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A block-scaled `F8_E4M3` matrix with its `{name}_scale_inv` (see [`fp8::dequantize`]);
    /// the scale grid must be the one the config's blocks give.
    fn fp8_matrix(
        &self,
        name: &str,
        shape: &[usize],
        bytes: &[u8],
        file: &Path,
    ) -> Result<fp8::Fp8Matrix> {
        let err = |message: String| Error::checkpoint(file, message);
        let Some(blocks) = self.fp8_blocks else {
            return Err(err(format!(
                "tensor {name} is F8_E4M3, but config.json has no quantization_config \
                 (block-scaled fp8)"
            )));
        };
        let &[rows, cols] = shape else {
            return Err(err(format!(
                "tensor {name} is F8_E4M3 with shape {shape:?}; block-scaled FP8 tensors are \
                 matrices"
            )));
        };
        if bytes.len() != rows * cols {
            return Err(err(format!(
                "tensor {name} holds {} bytes, its shape {shape:?} needs {}",
                bytes.len(),
                rows * cols
            )));
        }
        let scale_name = format!("{name}_scale_inv");
        let grid = fp8::scale_grid(rows, cols, blocks);
        match self.shape(&scale_name) {
            None => {
                return Err(err(format!(
                    "tensor {name} is F8_E4M3, but its block scales {scale_name} are missing"
                )))
            }
            Some(found) if found != grid => {
                return Err(err(format!(
                    "tensor {scale_name} has shape {found:?}, but {name} ({rows} × {cols} in \
                     blocks of {} × {}) needs {grid:?}",
                    blocks.rows, blocks.cols
                )))
            }
            Some(_) => {}
        }
        let scales = self.load(&scale_name, &grid)?;
        Ok(fp8::Fp8Matrix {
            rows,
            cols,
            codes: bytes.to_vec(),
            scales: scales.data,
            blocks,
        })
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    crate::util::files::require_regular_file(path)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only and the map is never written; a checkpoint that another
    // process truncates while we run is outside what a reader of weights can defend against.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    if mmap.len() < 8 {
        return Err(Error::checkpoint(
            path,
            "file is shorter than a safetensors header (truncated?)",
        ));
    }
    let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes")) as usize;
    let data_start = header_len
        .checked_add(8)
        .filter(|&s| s <= mmap.len())
        .ok_or_else(|| {
            Error::checkpoint(
                path,
                "safetensors header runs past the end of the file (truncated?)",
            )
        })?;
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start,
    })
}

/// The first tensor of a safetensors header whose dtype and shape disagree with the bytes its
/// offsets span, described (the safetensors crate's error does not name it).
fn tensor_size_mismatch(header: &[u8]) -> Option<String> {
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .find_map(|(name, info)| {
            let info: TensorInfo = serde_json::from_value(info.clone()).ok()?;
            let (dtype, shape) = (info.dtype, &info.shape);
            let (begin, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            let want = shape
                .iter()
                .try_fold(dtype.bitsize() as u64, |n: u64, &d| n.checked_mul(d as u64))?
                .div_ceil(8);
            (end.checked_sub(begin) != Some(want)).then(|| {
                format!(
                    "tensor {name}: {dtype:?} of shape {shape:?} takes {want} bytes, but its \
                     data_offsets [{begin}, {end}] span {}",
                    end as i128 - begin as i128
                )
            })
        })
}

#[cfg(test)]
mod tests;
