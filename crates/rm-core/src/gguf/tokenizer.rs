//! The tokenizer stored in GGUF metadata, rebuilt as a `tokenizers` [`Tokenizer`].
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with `tokenizer.ggml.tokens`,
//! `tokenizer.ggml.merges` and `tokenizer.ggml.token_type` (type 3, control, becomes a special
//! token matched before pre-tokenization, e.g. ChatML's `<|im_start|>`). The pre-tokenizer is the
//! one `tokenizer.ggml.pre` names:
//! - `gpt2` / `default`: GPT-2's byte-level regex;
//! - `smollm`: every digit on its own, then GPT-2's byte-level regex (SmolLM/SmolLM2);
//! - anything else is an error rather than a silent mis-tokenization.
//!
//! No BOS is added (SmolLM2 sets `tokenizer.ggml.add_bos_token = false`; a file asking for a BOS
//! gets it from the caller). [`Tokenizer::save`] writes the result as `tokenizer.json`.

use anyhow::{Context, Result, bail};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::GgufFile;

/// ggml token type of control tokens.
const CONTROL: i64 = 3;
/// ggml token type of user-defined tokens.
const USER_DEFINED: i64 = 4;

/// Builds the tokenizer described by `file`'s metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!("tokenizer.ggml.model {model:?} is not supported (only \"gpt2\", byte-level BPE)");
    }
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let merges = file
        .get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .with_context(|| format!("tokenizer.ggml.merges[{i}] = {m:?} is not \"a b\""))
        })
        .collect::<Result<Vec<_>>>()?;
    let types: Vec<i64> = match file.metadata().get("tokenizer.ggml.token_type") {
        Some(_) => file
            .get_array("tokenizer.ggml.token_type")?
            .iter()
            .map(|v| v.as_i64().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    check_special_ids(file, tokens.len())?;
    if types.len() != tokens.len() {
        bail!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        );
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    if vocab.len() != tokens.len() {
        bail!("tokenizer.ggml.tokens holds duplicate tokens");
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("building the BPE model: {e}"))?;

    let byte_level = ByteLevel::new(false, true, true);
    let pre: PreTokenizerWrapper = match file.get_str("tokenizer.ggml.pre").unwrap_or("default") {
        "gpt2" | "default" => byte_level.into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        other => bail!(
            "tokenizer.ggml.pre {other:?} is not supported (gpt2, default and smollm are); \
             tokenizing with the wrong pre-tokenizer would silently change token ids"
        ),
    };
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
        .map(|(tok, t)| AddedToken::from(tok.to_string(), *t == CONTROL))
        .collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}

/// The metadata keys of the special token ids.
const SPECIAL_ID_KEYS: [&str; 4] = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.unknown_token_id",
];

/// Every special token id the file declares is an integer below the vocabulary size `n_tokens`
/// (an id past the table would otherwise reach an embedding lookup out of bounds).
fn check_special_ids(file: &GgufFile, n_tokens: usize) -> Result<()> {
    for key in SPECIAL_ID_KEYS {
        if !file.metadata().contains_key(key) {
            continue;
        }
        let id = file
            .get_u64(key)
            .with_context(|| format!("{key}: expected a non-negative integer token id"))?;
        if id >= n_tokens as u64 {
            bail!(
                "{key} = {id} is outside the vocabulary of {n_tokens} tokens (tokenizer.ggml.tokens)"
            );
        }
    }
    Ok(())
}

/// The BOS/EOS/pad ids the file declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// Reads `tokenizer.ggml.{bos,eos,padding}_token_id` ([`tokenizer_from_gguf`] has checked that
/// each is inside the vocabulary).
pub fn special_ids(file: &GgufFile) -> SpecialIds {
    let id = |k: &str| file.get_u64(k).ok().and_then(|v| u32::try_from(v).ok());
    SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        pad: id("tokenizer.ggml.padding_token_id"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Builder;
    use super::*;

    #[test]
    fn a_tiny_byte_level_vocabulary() {
        let bytes = Builder::new()
            .kv_str("tokenizer.ggml.model", "gpt2")
            .kv_str("tokenizer.ggml.pre", "smollm")
            .kv_str_array(
                "tokenizer.ggml.tokens",
                &["<|x|>", "a", "b", "ab", "Ġ", "1", "2", "Ġab"],
            )
            .kv_str_array("tokenizer.ggml.merges", &["a b", "Ġ ab"])
            .build();
        let mut file = GgufFile::from_bytes(bytes).unwrap();
        // No token types: add one control token by hand through the metadata map.
        file.metadata.insert(
            "tokenizer.ggml.token_type".into(),
            super::super::GgufValue::Array(
                [3, 1, 1, 1, 1, 1, 1, 1]
                    .iter()
                    .map(|&t| super::super::GgufValue::I32(t))
                    .collect(),
            ),
        );
        let tok = tokenizer_from_gguf(&file).unwrap();
        let enc = tok.encode("ab<|x|> ab 12", false).unwrap();
        assert_eq!(enc.get_ids(), [3, 0, 7, 4, 5, 6]);
        assert_eq!(tok.decode(&[3, 7], false).unwrap(), "ab ab");

        let unknown = Builder::new()
            .kv_str("tokenizer.ggml.model", "gpt2")
            .kv_str("tokenizer.ggml.pre", "qwen2")
            .kv_str_array("tokenizer.ggml.tokens", &["a"])
            .kv_str_array("tokenizer.ggml.merges", &[])
            .build();
        let err = tokenizer_from_gguf(&GgufFile::from_bytes(unknown).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"qwen2\" is not supported"), "{err}");
    }

    #[test]
    fn special_ids_outside_the_vocabulary_are_an_error() {
        let base = || {
            Builder::new()
                .kv_str("tokenizer.ggml.model", "gpt2")
                .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"])
                .kv_str_array("tokenizer.ggml.merges", &["a b"])
        };
        let ok =
            GgufFile::from_bytes(base().kv_u32("tokenizer.ggml.eos_token_id", 2).build()).unwrap();
        assert!(tokenizer_from_gguf(&ok).is_ok());
        assert_eq!(special_ids(&ok).eos, Some(2));
        for key in SPECIAL_ID_KEYS {
            let file = GgufFile::from_bytes(base().kv_u32(key, 3).build()).unwrap();
            let err = tokenizer_from_gguf(&file).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("{key} = 3 is outside the vocabulary of 3 tokens (tokenizer.ggml.tokens)")
            );
        }
        let file = GgufFile::from_bytes(
            base()
                .kv_str("tokenizer.ggml.padding_token_id", "0")
                .build(),
        )
        .unwrap();
        let err = format!("{:#}", tokenizer_from_gguf(&file).unwrap_err());
        assert!(
            err.starts_with("tokenizer.ggml.padding_token_id: expected a non-negative integer"),
            "{err}"
        );
    }
}
