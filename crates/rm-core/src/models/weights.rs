//! Named weight sources a backbone loads from: HF safetensors folders and GGUF files.
//!
//! A [`WeightSource`] hands out tensors by their *source* name (HF or llama.cpp naming) as
//! row-major f32 data with a PyTorch-order shape. Each model family maps those names onto its
//! burn module in one place (its own file under [`crate::models`]).

use anyhow::Result;

/// A tensor read from a weight file: PyTorch-order shape and row-major f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Anything that can hand out named tensors.
pub trait WeightSource {
    /// Every tensor name in the source.
    fn names(&self) -> Vec<String>;
    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// Reads `name` as f32 (dequantizing or up-casting as needed). A missing name is an error that
    /// names the tensor and the file.
    fn tensor(&self, name: &str) -> Result<HostTensor>;
}
