//! Backend selection: one parser from a user's `--device` string to a burn [`Device`].
//!
//! Accepted forms:
//! - `auto` — CUDA device 0 when the `cuda` feature is compiled in and an NVIDIA device node
//!   exists, else the default wgpu adapter when `wgpu` is compiled in, else `flex`;
//! - `flex` — burn's pure-Rust CPU backend (the default feature);
//! - `wgpu` (best adapter), `wgpu:N` (N-th discrete GPU), `wgpu:integrated:N`, `wgpu:cpu`
//!   (a CPU adapter such as Mesa's lavapipe);
//! - `cuda`, `cuda:N`;
//! - `tch` or `tch:cpu` (LibTorch on the CPU), `tch:cuda:N` (LibTorch on CUDA device N): burn's
//!   LibTorch backend, behind the opt-in `tch` feature (`cargo xtask tch` builds it against the
//!   `torch` wheel from PyPI). `auto` never picks it while `flex` is compiled in.
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

/// Which LibTorch device the `tch` backend uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TchDevice {
    /// LibTorch's CPU kernels (`tch`, `tch:cpu`).
    Cpu,
    /// LibTorch on the N-th CUDA device (`tch:cuda:N`).
    Cuda(usize),
}

/// A parsed `--device` value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    /// CUDA, else wgpu, else flex (see [`DeviceSpec::resolve`]).
    #[default]
    Auto,
    /// burn's pure-Rust CPU backend.
    Flex,
    /// A wgpu adapter.
    Wgpu(WgpuAdapter),
    /// CUDA device N through cubecl.
    Cuda(usize),
    /// burn's LibTorch backend (feature `tch`).
    Tch(TchDevice),
}

/// Errors of device parsing and selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error(
        "unknown device `{0}`: expected auto, flex, wgpu, wgpu:N, wgpu:integrated:N, wgpu:cpu, cuda, cuda:N, \
         tch, tch:cpu or tch:cuda:N"
    )]
    Unknown(String),
    #[error("bad device index in `{0}`: expected a non-negative integer")]
    BadIndex(String),
    #[error(
        "the `{backend}` backend was not compiled into this build; rebuild with `--features {backend}` \
         (for example `cargo build --release --features {backend}`)"
    )]
    NotCompiled { backend: &'static str },
    #[error(
        "`{spec}` asks for CUDA device {index}, but LibTorch sees {found} CUDA device(s) on this \
         machine (a CPU-only LibTorch, no driver, or fewer GPUs); use `tch:cpu` instead"
    )]
    Unavailable {
        spec: String,
        index: usize,
        found: usize,
    },
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
            ["tch"] | ["tch", "cpu"] => Ok(DeviceSpec::Tch(TchDevice::Cpu)),
            ["tch", "cuda"] => Ok(DeviceSpec::Tch(TchDevice::Cuda(0))),
            ["tch", "cuda", n] => Ok(DeviceSpec::Tch(TchDevice::Cuda(parse_index(s, n)?))),
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
            DeviceSpec::Tch(TchDevice::Cpu) => write!(f, "tch:cpu"),
            DeviceSpec::Tch(TchDevice::Cuda(n)) => write!(f, "tch:cuda:{n}"),
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
    if cfg!(feature = "tch") {
        out.push("tch");
    }
    out
}

/// Whether an NVIDIA device node is present (a cheap check that does not initialise CUDA).
pub fn nvidia_device_present() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
}

impl DeviceSpec {
    /// Resolves `auto` to a concrete choice for this build and machine: CUDA device 0 (feature
    /// `cuda` and an NVIDIA device node), else wgpu's default adapter, else `flex`, else — in a
    /// build with `tch` and none of the others — LibTorch on the CPU.
    pub fn resolve(self) -> Result<DeviceSpec, DeviceError> {
        match self {
            DeviceSpec::Auto => {
                if cfg!(feature = "cuda") && nvidia_device_present() {
                    Ok(DeviceSpec::Cuda(0))
                } else if cfg!(feature = "wgpu") {
                    Ok(DeviceSpec::Wgpu(WgpuAdapter::Default))
                } else if cfg!(feature = "flex") {
                    Ok(DeviceSpec::Flex)
                } else if cfg!(feature = "tch") {
                    Ok(DeviceSpec::Tch(TchDevice::Cpu))
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
            DeviceSpec::Tch(device) => tch_device(device),
        }
    }
}

/// Whether `device` (with or without autodiff) is burn's LibTorch backend. Code that works
/// around a LibTorch-specific behaviour asks this; always `false` in a build without `tch`.
pub fn is_libtorch(device: &Device) -> bool {
    libtorch_device(device)
}

#[cfg(feature = "tch")]
fn libtorch_device(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        burn_dispatch::DispatchDevice::LibTorch(_)
    )
}

#[cfg(not(feature = "tch"))]
fn libtorch_device(_device: &Device) -> bool {
    false
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

/// burn's LibTorch device. burn 0.22 marks its LibTorch constructors deprecated (burn-tch is to
/// be removed in a later release); plumbline keeps it as an opt-in backend to compare against.
/// A CUDA index past the devices LibTorch sees is an error here rather than a panic in the
/// first tensor operation.
#[cfg(feature = "tch")]
#[allow(deprecated)]
fn tch_device(device: TchDevice) -> Result<Device, DeviceError> {
    match device {
        TchDevice::Cpu => Ok(Device::libtorch()),
        TchDevice::Cuda(index) => {
            let found = Device::enumerate(burn::tensor::DeviceType::LibTorch)
                .into_vec()
                .len();
            if index >= found {
                return Err(DeviceError::Unavailable {
                    spec: DeviceSpec::Tch(device).to_string(),
                    index,
                    found,
                });
            }
            Ok(Device::libtorch_cuda(index))
        }
    }
}

#[cfg(not(feature = "tch"))]
fn tch_device(_device: TchDevice) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled { backend: "tch" })
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
        assert_eq!("tch".parse(), Ok(DeviceSpec::Tch(TchDevice::Cpu)));
        assert_eq!("tch:cpu".parse(), Ok(DeviceSpec::Tch(TchDevice::Cpu)));
        assert_eq!(" TCH:CPU ".parse(), Ok(DeviceSpec::Tch(TchDevice::Cpu)));
        assert_eq!("tch:cuda".parse(), Ok(DeviceSpec::Tch(TchDevice::Cuda(0))));
        assert_eq!(
            "tch:cuda:1".parse(),
            Ok(DeviceSpec::Tch(TchDevice::Cuda(1)))
        );
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
        assert_eq!(
            "tch:cuda:x".parse::<DeviceSpec>(),
            Err(DeviceError::BadIndex("tch:cuda:x".into()))
        );
        for bad in ["tch:gpu", "tch:cpu:0", "tch:", "tch:cuda:1:2", "torch"] {
            assert_eq!(
                bad.parse::<DeviceSpec>(),
                Err(DeviceError::Unknown(bad.into())),
                "{bad}"
            );
        }
        let msg = DeviceError::Unknown("tpu".into()).to_string();
        for form in ["tch,", "tch:cpu", "tch:cuda:N"] {
            assert!(msg.contains(form), "{msg}");
        }
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
            "tch:cpu",
            "tch:cuda:0",
            "tch:cuda:3",
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

    #[test]
    fn short_tch_forms_display_canonically() {
        let cpu: DeviceSpec = "tch".parse().unwrap();
        assert_eq!(cpu.to_string(), "tch:cpu");
        let cuda: DeviceSpec = "tch:cuda".parse().unwrap();
        assert_eq!(cuda.to_string(), "tch:cuda:0");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn missing_tch_names_the_feature() {
        for spec in [
            DeviceSpec::Tch(TchDevice::Cpu),
            DeviceSpec::Tch(TchDevice::Cuda(0)),
        ] {
            let err = spec.device().unwrap_err();
            assert_eq!(err, DeviceError::NotCompiled { backend: "tch" });
            let msg = err.to_string();
            assert!(msg.contains("--features tch"), "{msg}");
        }
        assert!(!compiled_backends().contains(&"tch"));
        let err = parse_device("tch:cuda:0").unwrap_err();
        assert!(err.to_string().contains("--features tch"), "{err}");
    }

    #[cfg(feature = "tch")]
    #[test]
    fn tch_is_compiled_in_and_opt_in() {
        assert!(compiled_backends().contains(&"tch"));
        assert_eq!(compiled_backends().last(), Some(&"tch"));
        if cfg!(feature = "flex") {
            assert_ne!(
                DeviceSpec::Auto.resolve(),
                Ok(DeviceSpec::Tch(TchDevice::Cpu))
            );
        }
        assert!(DeviceSpec::Tch(TchDevice::Cpu).device().is_ok());
    }

    #[cfg(feature = "flex")]
    #[test]
    fn flex_is_not_libtorch() {
        assert!(!is_libtorch(&Device::flex()));
        assert!(!is_libtorch(&Device::flex().autodiff()));
    }

    #[cfg(feature = "tch")]
    #[test]
    fn libtorch_is_recognized_with_and_without_autodiff() {
        let device = DeviceSpec::Tch(TchDevice::Cpu).device().unwrap();
        assert!(is_libtorch(&device));
        assert!(is_libtorch(&device.autodiff()));
    }

    #[cfg(feature = "tch")]
    #[test]
    fn tch_cuda_past_the_visible_devices_is_an_error() {
        match DeviceSpec::Tch(TchDevice::Cuda(4096)).device() {
            Err(DeviceError::Unavailable { index, found, .. }) => {
                assert_eq!(index, 4096);
                assert!(found < 4096);
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
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
