//! What the pipeline's integration tests share: scratch folders, a train request on the test
//! device, and a pairs file with a pattern the tiny model can learn.

use std::path::{Path, PathBuf};

use rm_core::train::RunMode;
use rm_pipeline::TrainRequest;

/// A fresh, empty scratch folder named for the test binary's `name`.
pub fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("plumbline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A request reading data and models from `root`, on the test device, without progress bars.
pub fn request(root: &Path, mode: RunMode) -> TrainRequest {
    TrainRequest {
        data_dir: root.to_path_buf(),
        models_dir: root.to_path_buf(),
        device: rm_core::device::test_device(),
        mode,
        progress: false,
    }
}

/// Pairs whose chosen response has more `w7`s (a pattern a model can pick up).
pub fn write_pairs(path: &Path, n: usize) {
    let rows: String = (0..n)
        .map(|i| {
            let filler = format!("w{}", 10 + i % 30);
            format!(
                "{{\"prompt\": \"w3 w4 {filler}\", \"chosen\": \"w7 w7 {filler}\", \"rejected\": \"w8 {filler} w9 w12 w13\"}}\n"
            )
        })
        .collect();
    std::fs::write(path, rows).unwrap();
}
