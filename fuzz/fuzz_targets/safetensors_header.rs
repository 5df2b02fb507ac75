//! Feeds arbitrary bytes to the safetensors path the backbones load through: header parsing
//! (length prefix, JSON, offsets, dtypes, shapes) and then every tensor decoded to f32. Any panic,
//! overflow, out-of-bounds read or oversized allocation is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rm_core::models::safetensors::SafetensorsWeights;
use rm_core::models::weights::WeightSource;

fuzz_target!(|data: &[u8]| {
    let Ok(weights) = SafetensorsWeights::from_bytes("fuzz.safetensors", data.to_vec()) else {
        return;
    };
    for name in weights.names() {
        if let Ok(t) = weights.tensor(&name) {
            assert_eq!(t.shape.iter().product::<usize>(), t.values.len());
        }
    }
});
