//! Weight loading shared by the model definitions: tensors by name with the shapes the config
//! implies, SwiGLU MLPs, and routed experts in either checkpoint layout.

use crate::backend::{Backend, MlpWeights};
use crate::error::Result;
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

    /// Routed experts in the published per-expert layout or transformers 5's fused layout.
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
        let gate_up = self.host(&fused, &[count, 2 * inter, hidden])?;
        let down = self.host(&format!("{prefix}.down_proj"), &[count, hidden, inter])?;
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
