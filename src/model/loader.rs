//! Weight loading shared by the model definitions: tensors by name with the shapes the config
//! implies, SwiGLU MLPs, and routed experts in either checkpoint layout.

use crate::backend::{Backend, MlpWeights};
use crate::error::{Error, Result};
use crate::weights::{HostTensor, TensorSource};

/// Reads tensors by name with the shapes the config implies.
pub struct Loader<'a, B: Backend> {
    pub checkpoint: &'a dyn TensorSource,
    pub backend: &'a B,
}

impl<B: Backend> Loader<'_, B> {
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.checkpoint.load(name, shape)
    }

    pub fn weight(&self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        if let Some(fill) = self.checkpoint.random_fill(name, shape) {
            if let Some(w) = self.backend.generate_weight(shape, &fill)? {
                return Ok(w);
            }
        }
        if let Some(m) = self.checkpoint.load_fp8(name, shape)? {
            return self.backend.upload_fp8_weight(m);
        }
        self.backend.upload_weight(self.host(name, shape)?)
    }

    pub fn mlp(&self, prefix: &str, hidden: usize, intermediate: usize) -> Result<MlpWeights<B>> {
        Ok(MlpWeights {
            gate: self.weight(
                &format!("{prefix}.gate_proj.weight"),
                &[intermediate, hidden],
            )?,
            up: self.weight(&format!("{prefix}.up_proj.weight"), &[intermediate, hidden])?,
            down: self.weight(
                &format!("{prefix}.down_proj.weight"),
                &[hidden, intermediate],
            )?,
            biases: None,
        })
    }

    /// Routed experts in the published per-expert layout or transformers 5's fused layout (whose
    /// stacks a source may give as FP8 matrices: `--quantization fp8`).
    pub fn experts(
        &self,
        prefix: &str,
        count: usize,
        hidden: usize,
        inter: usize,
    ) -> Result<Vec<MlpWeights<B>>> {
        let fused = format!("{prefix}.gate_up_proj");
        if !self.checkpoint.contains(&fused) {
            return (0..count)
                .map(|e| self.mlp(&format!("{prefix}.{e}"), hidden, inter))
                .collect();
        }
        let fused_down = format!("{prefix}.down_proj");
        let fp8 = (
            self.checkpoint
                .load_fp8_stack(&fused, &[count, 2 * inter, hidden])?,
            self.checkpoint
                .load_fp8_stack(&fused_down, &[count, hidden, inter])?,
        );
        if let (Some(gate_up), Some(down)) = fp8 {
            if gate_up.len() != 2 * count || down.len() != count {
                return Err(Error::Op {
                    op: "load experts",
                    message: format!(
                        "{fused}: {} FP8 matrices and {fused_down}: {} for {count} experts",
                        gate_up.len(),
                        down.len()
                    ),
                });
            }
            let mut halves = gate_up.into_iter();
            return down
                .into_iter()
                .zip(std::iter::from_fn(|| {
                    Some((halves.next()?, halves.next()?))
                }))
                .map(|(down, (gate, up))| {
                    Ok(MlpWeights {
                        gate: self.backend.upload_fp8_weight(gate)?,
                        up: self.backend.upload_fp8_weight(up)?,
                        down: self.backend.upload_fp8_weight(down)?,
                        biases: None,
                    })
                })
                .collect();
        }
        let gate_up = self.host(&fused, &[count, 2 * inter, hidden])?;
        let down = self.host(&fused_down, &[count, hidden, inter])?;
        let matrix = inter * hidden;
        (0..count)
            .map(|e| {
                let block = &gate_up.data[e * 2 * matrix..(e + 1) * 2 * matrix];
                Ok(MlpWeights {
                    gate: self.backend.upload_weight(HostTensor::new(
                        vec![inter, hidden],
                        block[..matrix].to_vec(),
                    ))?,
                    up: self.backend.upload_weight(HostTensor::new(
                        vec![inter, hidden],
                        block[matrix..].to_vec(),
                    ))?,
                    down: self.backend.upload_weight(HostTensor::new(
                        vec![hidden, inter],
                        down.data[e * matrix..(e + 1) * matrix].to_vec(),
                    ))?,
                    biases: None,
                })
            })
            .collect()
    }
}
