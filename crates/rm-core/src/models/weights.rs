//! Named weight sources a backbone loads from: HF safetensors folders and GGUF files.
//!
//! A [`WeightSource`] hands out tensors by their *source* name (HF or llama.cpp naming) as
//! row-major f32 data with a PyTorch-order shape. Each model family maps those names onto its
//! burn module in one place (its own file under [`crate::models`]).

use anyhow::{Result, bail};

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

/// An error naming `name` in `origin` when `values` holds a NaN or an infinity (the first one,
/// with its flat index): a weight file with one would otherwise load and make every output NaN.
pub fn check_finite(origin: &str, name: &str, values: &[f32]) -> Result<()> {
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        bail!(
            "{origin}: tensor {name} holds {bad} non-finite value(s) (the first, {v}, at flat index {i})"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_an_error_naming_the_tensor() {
        assert!(check_finite("f", "w", &[0.0, -1.5, f32::MAX]).is_ok());
        let err = check_finite("m.safetensors", "w", &[0.0, f32::NAN, f32::INFINITY])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "m.safetensors: tensor w holds 2 non-finite value(s) (the first, NaN, at flat index 1)"
        );
    }
}
