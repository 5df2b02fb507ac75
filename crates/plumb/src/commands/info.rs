//! `plumb info`: what this build and machine offer.

use std::path::Path;

use anyhow::Result;
use rm_core::device::{DeviceSpec, TchDevice, WgpuAdapter, compiled_backends};
use rm_core::paths;

use crate::GlobalArgs;

/// Tries a tiny computation on `spec`; any panic inside the backend is caught and reported.
fn probe(spec: DeviceSpec) -> Result<String, String> {
    let device = spec.device().map_err(|e| e.to_string())?;
    let outcome = std::panic::catch_unwind(move || {
        let t = rm_core::burn::tensor::Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
        t.sum().into_scalar::<f32>()
    });
    match outcome {
        Ok(6.0) => Ok(format!("{spec}: usable")),
        Ok(v) => Err(format!("{spec}: wrong result {v} for 1+2+3")),
        Err(_) => Err(format!(
            "{spec}: failed to initialise (see the message above)"
        )),
    }
}

fn size(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("{:.1} MB", m.len() as f64 / 1e6),
        Err(_) => "missing".into(),
    }
}

pub fn run(global: &GlobalArgs) -> Result<()> {
    println!("plumb {}", env!("CARGO_PKG_VERSION"));
    println!("\nbackends compiled in: {}", compiled_backends().join(", "));
    let requested: DeviceSpec = global.device;
    println!(
        "--device {} resolves to {}",
        global.device,
        requested.resolve()?
    );

    println!("\ndevices:");
    let mut candidates = vec![DeviceSpec::Flex];
    if cfg!(feature = "wgpu") {
        candidates.push(DeviceSpec::Wgpu(WgpuAdapter::Default));
    }
    if cfg!(feature = "cuda") {
        if rm_core::device::nvidia_device_present() {
            candidates.push(DeviceSpec::Cuda(0));
        } else {
            println!("  cuda: compiled in, but no NVIDIA device node (/dev/nvidia0)");
        }
    }
    if cfg!(feature = "tch") {
        candidates.push(DeviceSpec::Tch(TchDevice::Cpu));
        if rm_core::device::nvidia_device_present() {
            candidates.push(DeviceSpec::Tch(TchDevice::Cuda(0)));
        }
    }
    for spec in candidates {
        match probe(spec) {
            Ok(line) | Err(line) => println!("  {line}"),
        }
    }

    let models = paths::models_dir(global.models_dir.as_deref());
    println!("\nmodels in {}:", models.display());
    let mut any = false;
    if let Ok(entries) = std::fs::read_dir(&models) {
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for dir in entries.into_iter().filter(|p| p.is_dir()) {
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = files.flatten().map(|e| e.path()).collect();
            files.sort();
            let weights: Vec<_> = files
                .iter()
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "safetensors" || e == "gguf")
                })
                .collect();
            if weights.is_empty() {
                continue;
            }
            any = true;
            println!("  {}", dir.display());
            for w in weights {
                println!(
                    "    {} ({})",
                    w.file_name().unwrap_or_default().to_string_lossy(),
                    size(w)
                );
            }
        }
    }
    if !any {
        println!("  none found: run `cargo xtask fetch-models`");
    }

    let data = paths::data_dir(global.data_dir.as_deref());
    println!("\ndatasets in {}:", data.display());
    for (name, files) in super::data::KNOWN_FILES {
        for file in *files {
            let path = data.join(file);
            println!("  {name:<8} {} ({})", path.display(), size(&path));
        }
    }
    Ok(())
}
