//! Feeds arbitrary bytes to the GGUF reader, then exercises everything a loader does with a file
//! that parsed: metadata lookups, every tensor's dequantization and the tokenizer built from the
//! metadata. Any panic, overflow, out-of-bounds read or oversized allocation is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rm_core::gguf::GgufFile;
use rm_core::gguf::tokenizer::{special_ids, tokenizer_from_gguf};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = file.get_str("general.architecture");
    let _ = file.get_u64("llama.context_length");
    let _ = file.get_str_array("tokenizer.ggml.tokens");
    let names: Vec<String> = file.tensor_infos().iter().map(|t| t.name.clone()).collect();
    for name in names {
        if let Ok((shape, values)) = file.tensor_f32(&name) {
            assert_eq!(shape.iter().product::<usize>(), values.len());
        }
    }
    let _ = special_ids(&file);
    if let Ok(tokenizer) = tokenizer_from_gguf(&file) {
        let _ = tokenizer.encode("Hello, world! 123", false);
    }
});
