//! Feeds arbitrary bytes to the `tokenizer.json` loader ([`TextTokenizer::from_json_bytes`]:
//! the `tokenizers` parser, then plumbline's own setup: truncation and padding off, the pad id
//! found and checked against the vocabulary), then tokenizes, truncates, pads and decodes a few
//! texts with what loaded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rm_core::tokenize::{EncodeOptions, TextTokenizer, TruncationSide};

const TEXTS: [&str; 3] = ["Hello, world!", "\n\nHuman: 2+2?\n\nAssistant: 4", ""];

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = TextTokenizer::from_json_bytes(data) else {
        return;
    };
    assert!(tok.check_id("pad", tok.pad_id()).is_ok());
    let options = EncodeOptions {
        max_len: Some(6),
        truncation: TruncationSide::Left,
        ..Default::default()
    };
    for text in TEXTS {
        if let Ok(ids) = tok.encode(text, true) {
            let _ = tok.decode(&ids, false);
            assert!(ids.iter().all(|&id| id <= tok.max_token_id()));
        }
        if let Ok(seq) = tok.encode_text(text, &options) {
            assert!(seq.len() <= 6);
        }
        let _ = tok.encode_pair(text, "ok", &options);
    }
    let _ = tok.encode_batch(&TEXTS, &options);
});
