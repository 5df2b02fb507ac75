//! Backend selection: one parser from a user's `--device` string to a burn [`Device`].
//!
//! Accepted forms:
//! - `auto` — CUDA device 0 when the `cuda` feature is compiled in and an NVIDIA device node
//!   exists, else the default wgpu adapter when `wgpu` is compiled in, else `flex`;
//! - `flex` — burn's pure-Rust CPU backend (the default feature);
//! - `wgpu` (best adapter), `wgpu:N` (N-th discrete GPU), `wgpu:integrated:N`, `wgpu:cpu`
//!   (a CPU adapter such as Mesa's lavapipe);
//! - `cuda`, `cuda:N`.
//!
//! A backend that was not compiled in is a clear error naming the cargo feature to enable.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// Which wgpu adapter to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WgpuAdapter {
    /// wgpu's own choice (high-power GPU first).
    Default,
    /// The N-th discrete GPU.
    Discrete(usize),
    /// The N-th integrated GPU.
    Integrated(usize),
    /// A CPU adapter (Mesa lavapipe, SwiftShader).
    Cpu,
}

/// A parsed `--device` value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Flex,
    Wgpu(WgpuAdapter),
    Cuda(usize),
}

/// Errors of device parsing and selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error(
        "unknown device `{0}`: expected auto, flex, wgpu, wgpu:N, wgpu:integrated:N, wgpu:cpu, cuda or cuda:N"
    )]
    Unknown(String),
    #[error("bad device index in `{0}`: expected a non-negative integer")]
    BadIndex(String),
    #[error(
        "the `{backend}` backend was not compiled into this build; rebuild with `--features {backend}` \
         (for example `cargo build --release --features {backend}`)"
    )]
    NotCompiled { backend: &'static str },
}

fn parse_index(full: &str, s: &str) -> Result<usize, DeviceError> {
    s.parse()
        .map_err(|_| DeviceError::BadIndex(full.to_string()))
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split(':').collect();
        match parts.as_slice() {
            ["auto"] => Ok(DeviceSpec::Auto),
            ["flex"] | ["cpu"] => Ok(DeviceSpec::Flex),
            ["wgpu"] => Ok(DeviceSpec::Wgpu(WgpuAdapter::Default)),
            ["wgpu", "cpu"] => Ok(DeviceSpec::Wgpu(WgpuAdapter::Cpu)),
            ["wgpu", "integrated", n] => Ok(DeviceSpec::Wgpu(WgpuAdapter::Integrated(
                parse_index(s, n)?,
            ))),
            ["wgpu", n] => Ok(DeviceSpec::Wgpu(WgpuAdapter::Discrete(parse_index(s, n)?))),
            ["cuda"] => Ok(DeviceSpec::Cuda(0)),
            ["cuda", n] => Ok(DeviceSpec::Cuda(parse_index(s, n)?)),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Flex => write!(f, "flex"),
            DeviceSpec::Wgpu(WgpuAdapter::Default) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(WgpuAdapter::Discrete(n)) => write!(f, "wgpu:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Integrated(n)) => write!(f, "wgpu:integrated:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Cpu) => write!(f, "wgpu:cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The backends compiled into this build, in `auto`'s order of preference.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg!(feature = "cuda") {
        out.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        out.push("wgpu");
    }
    if cfg!(feature = "flex") {
        out.push("flex");
    }
    out
}

/// Whether an NVIDIA device node is present (a cheap check that does not initialise CUDA).
pub fn nvidia_device_present() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
}

impl DeviceSpec {
    /// Resolves `auto` to a concrete choice for this build and machine.
    pub fn resolve(self) -> Result<DeviceSpec, DeviceError> {
        match self {
            DeviceSpec::Auto => {
                if cfg!(feature = "cuda") && nvidia_device_present() {
                    Ok(DeviceSpec::Cuda(0))
                } else if cfg!(feature = "wgpu") {
                    Ok(DeviceSpec::Wgpu(WgpuAdapter::Default))
                } else if cfg!(feature = "flex") {
                    Ok(DeviceSpec::Flex)
                } else {
                    Err(DeviceError::NotCompiled { backend: "flex" })
                }
            }
            other => Ok(other),
        }
    }

    /// Builds the burn device. Gradients are off; call [`Device::autodiff`] on the result to
    /// train.
    pub fn device(self) -> Result<Device, DeviceError> {
        match self.resolve()? {
            DeviceSpec::Auto => unreachable!("resolve() never returns Auto"),
            DeviceSpec::Flex => flex_device(),
            DeviceSpec::Wgpu(adapter) => wgpu_device(adapter),
            DeviceSpec::Cuda(index) => cuda_device(index),
        }
    }
}

/// Environment variable naming the device tests run on (default `flex`).
pub const TEST_DEVICE_ENV: &str = "PLUMB_TEST_DEVICE";

/// The device tests run on: `$PLUMB_TEST_DEVICE` parsed like `--device`, else `flex`. CI sets it
/// to `wgpu:cpu` to run the tensor tests on Mesa's lavapipe as well.
pub fn test_device() -> Device {
    let spec = std::env::var(TEST_DEVICE_ENV).unwrap_or_else(|_| "flex".into());
    parse_device(&spec).unwrap_or_else(|e| panic!("{TEST_DEVICE_ENV}={spec}: {e}"))
}

/// Serializes the tests of one process that seed the backend's RNG and rely on what it draws
/// (parameter initialization, dropout): burn's seed is process-wide, so two such tests running
/// on parallel threads (`cargo test`; `cargo nextest` runs each test in its own process) would
/// draw from each other's stream. Hold the guard for the whole test.
pub fn seeded_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Parses and builds a device in one call: `parse_device("cuda:1")`.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    Ok(s.parse::<DeviceSpec>()?.device()?)
}

#[cfg(feature = "flex")]
fn flex_device() -> Result<Device, DeviceError> {
    Ok(Device::flex())
}

#[cfg(not(feature = "flex"))]
fn flex_device() -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled { backend: "flex" })
}

#[cfg(feature = "wgpu")]
fn wgpu_device(adapter: WgpuAdapter) -> Result<Device, DeviceError> {
    use burn::tensor::DeviceKind;
    let kind = match adapter {
        WgpuAdapter::Default => DeviceKind::DefaultDevice,
        WgpuAdapter::Discrete(n) => DeviceKind::DiscreteGpu(n),
        WgpuAdapter::Integrated(n) => DeviceKind::IntegratedGpu(n),
        WgpuAdapter::Cpu => DeviceKind::Cpu,
    };
    Ok(Device::wgpu(kind))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_adapter: WgpuAdapter) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled { backend: "wgpu" })
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device, DeviceError> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled { backend: "cuda" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("flex".parse(), Ok(DeviceSpec::Flex));
        assert_eq!("FLEX".parse(), Ok(DeviceSpec::Flex));
        assert_eq!("wgpu".parse(), Ok(DeviceSpec::Wgpu(WgpuAdapter::Default)));
        assert_eq!(
            "wgpu:2".parse(),
            Ok(DeviceSpec::Wgpu(WgpuAdapter::Discrete(2)))
        );
        assert_eq!(
            "wgpu:integrated:1".parse(),
            Ok(DeviceSpec::Wgpu(WgpuAdapter::Integrated(1)))
        );
        assert_eq!("wgpu:cpu".parse(), Ok(DeviceSpec::Wgpu(WgpuAdapter::Cpu)));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
    }

    #[test]
    fn rejects_garbage_with_a_clear_error() {
        assert_eq!(
            "tpu".parse::<DeviceSpec>(),
            Err(DeviceError::Unknown("tpu".into()))
        );
        assert_eq!(
            "cuda:x".parse::<DeviceSpec>(),
            Err(DeviceError::BadIndex("cuda:x".into()))
        );
        assert_eq!(
            "cuda:-1".parse::<DeviceSpec>(),
            Err(DeviceError::BadIndex("cuda:-1".into()))
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "auto",
            "flex",
            "wgpu",
            "wgpu:1",
            "wgpu:integrated:0",
            "wgpu:cpu",
            "cuda:2",
        ] {
            let spec: DeviceSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = DeviceSpec::Cuda(0).device().unwrap_err();
        assert_eq!(err, DeviceError::NotCompiled { backend: "cuda" });
        let msg = err.to_string();
        assert!(msg.contains("--features cuda"), "{msg}");
    }

    #[cfg(all(feature = "flex", not(feature = "cuda"), not(feature = "wgpu")))]
    #[test]
    fn auto_is_flex_on_a_cpu_only_build() {
        assert_eq!(DeviceSpec::Auto.resolve(), Ok(DeviceSpec::Flex));
    }

    #[test]
    fn the_test_device_computes() {
        use burn::tensor::Tensor;
        let device = test_device();
        let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
        let b = Tensor::<2>::from_floats([[5.0], [6.0]], &device);
        let c = a.matmul(b).into_data().convert::<f32>();
        assert_eq!(c.as_slice::<f32>().unwrap(), &[17.0, 39.0]);
    }
}
