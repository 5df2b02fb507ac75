//! Tokenization on the `tokenizers` crate, with plumbline in charge of truncation and padding.
//!
//! A `tokenizer.json` may carry its own truncation and padding (all-MiniLM-L6-v2's pads and
//! truncates to 128); [`TextTokenizer`] switches both off and applies the caller's
//! [`EncodeOptions`] instead:
//! - truncation to `max_len` tokens, from the left (dialogues: keep the end) or the right;
//! - padding to the longest sequence of the batch, on the left (generation) or the right;
//! - attention masks, and prompt/completion masks so that only completion tokens count in
//!   log-prob losses.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// Which end of a sequence loses tokens when it is too long.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruncationSide {
    /// Drop tokens from the start (keeps the end of a dialogue: the latest turns).
    #[default]
    Left,
    /// Drop tokens from the end.
    Right,
}

/// Which side pad tokens go on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    /// Pads after the tokens (encoders, training).
    #[default]
    Right,
    /// Pads before the tokens (batched generation with a KV cache).
    Left,
}

/// How to turn texts into model inputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeOptions {
    /// Longest sequence kept, in tokens (special tokens included). `None`: no truncation.
    pub max_len: Option<usize>,
    pub truncation: TruncationSide,
    pub padding: PaddingSide,
    /// Whether the tokenizer's post-processor adds its special tokens (BERT's `[CLS]`/`[SEP]`).
    pub add_special_tokens: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            max_len: None,
            truncation: TruncationSide::Left,
            padding: PaddingSide::Right,
            add_special_tokens: true,
        }
    }
}

/// A padded batch of token ids with its masks, on the host.
///
/// All matrices are row-major `[batch, seq_len]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u8>,
    /// 1 for completion tokens (the ones a log-prob loss counts), 0 for prompt and padding. All
    /// zeros for batches built from plain texts.
    pub completion_mask: Vec<u8>,
    /// Unpadded length of each row.
    pub lengths: Vec<usize>,
    pub padding: PaddingSide,
}

/// One tokenized sequence before padding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// Parallel to `ids`: whether each token belongs to the completion.
    pub completion: Vec<bool>,
}

impl Sequence {
    pub fn from_ids(ids: Vec<u32>) -> Self {
        let completion = vec![false; ids.len()];
        Self { ids, completion }
    }

    /// `prompt` followed by `completion`, the completion's tokens flagged.
    pub fn prompt_completion(prompt: &[u32], completion: &[u32]) -> Self {
        let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
        let mut flags = vec![false; prompt.len()];
        flags.resize(ids.len(), true);
        Self {
            ids,
            completion: flags,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Drops tokens from `side` until at most `max_len` remain.
pub fn truncate<T>(tokens: &mut Vec<T>, max_len: usize, side: TruncationSide) {
    if tokens.len() <= max_len {
        return;
    }
    match side {
        TruncationSide::Left => {
            tokens.drain(..tokens.len() - max_len);
        }
        TruncationSide::Right => tokens.truncate(max_len),
    }
}

impl TokenBatch {
    /// Pads `sequences` to the longest one with `pad_id`. An empty batch is an error.
    pub fn pad(sequences: &[Sequence], pad_id: u32, side: PaddingSide) -> Result<Self> {
        if sequences.is_empty() {
            bail!("cannot build a token batch from zero sequences");
        }
        let seq_len = sequences.iter().map(Sequence::len).max().unwrap_or(0);
        if seq_len == 0 {
            bail!("every sequence of the batch is empty");
        }
        let batch_size = sequences.len();
        let mut input_ids = vec![pad_id; batch_size * seq_len];
        let mut attention_mask = vec![0u8; batch_size * seq_len];
        let mut completion_mask = vec![0u8; batch_size * seq_len];
        for (row, seq) in sequences.iter().enumerate() {
            let offset = match side {
                PaddingSide::Right => 0,
                PaddingSide::Left => seq_len - seq.len(),
            };
            let base = row * seq_len + offset;
            input_ids[base..base + seq.len()].copy_from_slice(&seq.ids);
            attention_mask[base..base + seq.len()].fill(1);
            for (i, &c) in seq.completion.iter().enumerate() {
                completion_mask[base + i] = c as u8;
            }
        }
        Ok(Self {
            batch_size,
            seq_len,
            input_ids,
            attention_mask,
            completion_mask,
            lengths: sequences.iter().map(Sequence::len).collect(),
            padding: side,
        })
    }

    /// `input_ids` as an int tensor `[batch, seq_len]`.
    pub fn ids_tensor(&self, device: &Device) -> Tensor<2, Int> {
        int_matrix(&self.input_ids, self.batch_size, self.seq_len, device)
    }

    /// `attention_mask` as an int tensor `[batch, seq_len]` (1 real, 0 pad).
    pub fn attention_tensor(&self, device: &Device) -> Tensor<2, Int> {
        int_matrix(&self.attention_mask, self.batch_size, self.seq_len, device)
    }

    /// `completion_mask` as an int tensor `[batch, seq_len]`.
    pub fn completion_tensor(&self, device: &Device) -> Tensor<2, Int> {
        int_matrix(&self.completion_mask, self.batch_size, self.seq_len, device)
    }

    /// Row `i`'s unpadded ids.
    pub fn row_ids(&self, i: usize) -> &[u32] {
        let row = &self.input_ids[i * self.seq_len..(i + 1) * self.seq_len];
        match self.padding {
            PaddingSide::Right => &row[..self.lengths[i]],
            PaddingSide::Left => &row[self.seq_len - self.lengths[i]..],
        }
    }
}

fn int_matrix<T: Copy + Into<i64>>(
    values: &[T],
    rows: usize,
    cols: usize,
    device: &Device,
) -> Tensor<2, Int> {
    let data: Vec<i64> = values.iter().map(|&v| v.into()).collect();
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

/// A `tokenizers` tokenizer whose truncation and padding plumbline controls.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// Pad-token names tried, in order, when the tokenizer does not declare one.
const PAD_CANDIDATES: &[&str] = &[
    "[PAD]",
    "<pad>",
    "<|pad|>",
    "<|endoftext|>",
    "</s>",
    "<|im_end|>",
];

impl TextTokenizer {
    /// Loads a `tokenizer.json`, switching off its built-in truncation and padding.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            bail!("tokenizer file {} does not exist", path.display());
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        Self::from_json_bytes(&bytes)
            .with_context(|| format!("reading tokenizer {}", path.display()))
    }

    /// Parses the bytes of a `tokenizer.json` ([`TextTokenizer::new`] then checks its pad id).
    ///
    /// `tokenizers` 0.22 panics on some malformed files instead of returning an error (a JSON
    /// syntax error inside `decoder`, a `Precompiled` normalizer whose fields do not parse) or
    /// later, when encoding (a `TemplateProcessing` template naming a special token it does not
    /// define): found by the `tokenizer_json` fuzz target. Those inputs are refused here first,
    /// and any other panic while parsing is turned into an error.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).context("not a tokenizer.json: invalid JSON")?;
        check_known_panics(&value)?;
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes))
            .map_err(|_| anyhow::anyhow!("not a tokenizer.json: the tokenizers parser panicked"))?;
        let inner = parsed.map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::new(inner)
    }

    /// Wraps a tokenizer, switching off its built-in truncation and padding. The pad id is the
    /// tokenizer's own padding id if it declares one, else the first known pad-like token, else 0.
    pub fn new(mut inner: Tokenizer) -> Result<Self> {
        let declared = inner.get_padding().map(|p| p.pad_id);
        inner
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("disabling truncation: {e}"))?;
        inner.with_padding(None);
        let pad_id = declared
            .or_else(|| PAD_CANDIDATES.iter().find_map(|t| inner.token_to_id(t)))
            .unwrap_or(0);
        let tokenizer = Self { inner, pad_id };
        if tokenizer.vocab_size() == 0 {
            bail!("the tokenizer has an empty vocabulary");
        }
        tokenizer.check_id("the padding id the tokenizer declares", pad_id)?;
        tokenizer.check_special_token_ids()?;
        Ok(tokenizer)
    }

    /// An error unless the special tokens the post-processor inserts (a `TemplateProcessing`'s
    /// `special_tokens` ids, BERT's `cls`/`sep`, …) are tokens of the vocabulary: `tokenizers`
    /// takes their ids as written, so an id past the vocabulary would reach the embedding lookup
    /// (found by the `tokenizer_json` fuzz target). Probed by encoding an empty text and an empty
    /// pair with special tokens, which holds for every kind of post-processor.
    fn check_special_token_ids(&self) -> Result<()> {
        let single = self.inner.encode("", true);
        let pair = self.inner.encode(("", ""), true);
        for encoding in [single, pair] {
            let encoding = encoding.map_err(|e| anyhow::anyhow!("probing special tokens: {e}"))?;
            for (&id, token) in encoding.get_ids().iter().zip(encoding.get_tokens()) {
                self.check_id(
                    &format!("the post-processor's special token {token:?}: its id"),
                    id,
                )?;
            }
        }
        Ok(())
    }

    /// Overrides the pad id (unchecked; [`TextTokenizer::try_with_pad_id`] checks it against
    /// the vocabulary).
    pub fn with_pad_id(mut self, pad_id: u32) -> Self {
        self.pad_id = pad_id;
        self
    }

    /// Overrides the pad id, which must be inside the vocabulary; `what` names where it came
    /// from in the error (e.g. "config.json pad_token_id").
    pub fn try_with_pad_id(self, pad_id: u32, what: &str) -> Result<Self> {
        self.check_id(what, pad_id)?;
        Ok(self.with_pad_id(pad_id))
    }

    /// The largest id the tokenizer can produce (base vocabulary and added tokens).
    pub fn max_token_id(&self) -> u32 {
        self.inner
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// An error unless `id` (named by `what`) is one of the tokenizer's ids.
    pub fn check_id(&self, what: &str, id: u32) -> Result<()> {
        if self.inner.id_to_token(id).is_none() {
            bail!(
                "{what} {id} is not a token of the tokenizer (vocabulary of {} tokens, ids up to {})",
                self.vocab_size(),
                self.max_token_id()
            );
        }
        Ok(())
    }

    /// An error unless every id the tokenizer produces, and the pad id, index a table of
    /// `rows` rows (a model's embedding matrix, named by `table`): an id past it would make the
    /// embedding lookup read out of bounds.
    pub fn check_fits(&self, rows: usize, table: &str) -> Result<()> {
        let max = self.max_token_id();
        if max as usize >= rows {
            bail!(
                "the tokenizer produces ids up to {max}, but {table} has {rows} rows: the tokenizer does not belong to this model"
            );
        }
        if self.pad_id as usize >= rows {
            bail!(
                "the pad id {} is outside {table} ({rows} rows)",
                self.pad_id
            );
        }
        Ok(())
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text` (no truncation).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizing {:?}: {e}", preview(text)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow::anyhow!("decoding {} ids: {e}", ids.len()))
    }

    /// Tokenizes one text into a [`Sequence`] truncated per `options`. Truncation keeps the
    /// tokenizer's special tokens at their ends (BERT's `[CLS]`… `[SEP]`): the body is truncated,
    /// then re-wrapped.
    pub fn encode_text(&self, text: &str, options: &EncodeOptions) -> Result<Sequence> {
        let ids = self.encode(text, options.add_special_tokens)?;
        let ids = match options.max_len {
            Some(max_len) if ids.len() > max_len => {
                let (head, tail) = if options.add_special_tokens {
                    self.special_affixes()?
                } else {
                    (0, 0)
                };
                if head + tail >= max_len {
                    bail!("max_len {max_len} leaves no room beside {head}+{tail} special tokens");
                }
                let mut body = ids[head..ids.len() - tail].to_vec();
                truncate(&mut body, max_len - head - tail, options.truncation);
                let mut out = ids[..head].to_vec();
                out.extend(body);
                out.extend_from_slice(&ids[ids.len() - tail..]);
                out
            }
            _ => ids,
        };
        Ok(Sequence::from_ids(ids))
    }

    /// How many special tokens the post-processor puts before and after a single text.
    fn special_affixes(&self) -> Result<(usize, usize)> {
        let enc = self
            .inner
            .encode("", true)
            .map_err(|e| anyhow::anyhow!("probing special tokens: {e}"))?;
        let n = enc.get_ids().len();
        // BERT-style: [CLS] [SEP] → one each side; Llama-style BOS → one before.
        let plain = self
            .inner
            .encode("", false)
            .map_err(|e| anyhow::anyhow!("probing special tokens: {e}"))?
            .get_ids()
            .len();
        let added = n.saturating_sub(plain);
        Ok(match added {
            0 => (0, 0),
            1 => (1, 0),
            k => (k - 1, 1),
        })
    }

    /// Tokenizes `prompt` followed by `completion`: the ids are the prompt's then the
    /// completion's (tokenized separately, no special tokens added), with the completion marked.
    /// When the total exceeds `max_len`, the prompt loses tokens first (from `truncation`'s side),
    /// then the completion loses tokens from its end, keeping at least one completion token.
    pub fn encode_pair(
        &self,
        prompt: &str,
        completion: &str,
        options: &EncodeOptions,
    ) -> Result<Sequence> {
        let mut prompt_ids = self.encode(prompt, false)?;
        let mut completion_ids = self.encode(completion, false)?;
        if completion_ids.is_empty() {
            bail!(
                "the completion {:?} tokenizes to zero tokens",
                preview(completion)
            );
        }
        if let Some(max_len) = options.max_len {
            if max_len == 0 {
                bail!("max_len must be at least 1");
            }
            let total = prompt_ids.len() + completion_ids.len();
            if total > max_len {
                let prompt_budget = max_len.saturating_sub(completion_ids.len());
                truncate(&mut prompt_ids, prompt_budget, options.truncation);
                let completion_budget = max_len - prompt_ids.len();
                truncate(
                    &mut completion_ids,
                    completion_budget,
                    TruncationSide::Right,
                );
            }
        }
        let mut completion = vec![false; prompt_ids.len()];
        completion.extend(std::iter::repeat_n(true, completion_ids.len()));
        prompt_ids.extend(completion_ids);
        Ok(Sequence {
            ids: prompt_ids,
            completion,
        })
    }

    /// Tokenizes and pads a batch of plain texts.
    pub fn encode_batch(&self, texts: &[&str], options: &EncodeOptions) -> Result<TokenBatch> {
        let seqs = texts
            .iter()
            .map(|t| self.encode_text(t, options))
            .collect::<Result<Vec<_>>>()?;
        TokenBatch::pad(&seqs, self.pad_id, options.padding)
    }

    /// Tokenizes and pads a batch of (prompt, completion) pairs with completion masks.
    pub fn encode_pair_batch(
        &self,
        pairs: &[(&str, &str)],
        options: &EncodeOptions,
    ) -> Result<TokenBatch> {
        let seqs = pairs
            .iter()
            .map(|(p, c)| self.encode_pair(p, c, options))
            .collect::<Result<Vec<_>>>()?;
        TokenBatch::pad(&seqs, self.pad_id, options.padding)
    }
}

/// Refuses the parts of a `tokenizer.json` on which `tokenizers` unwraps instead of returning
/// an error: a `Precompiled` normalizer that does not deserialize, and a `TemplateProcessing`
/// post-processor whose `single`/`pair` templates name a special token missing from its
/// `special_tokens` (the parser does not check it; encoding then panics), whatever its `type`
/// string says.
fn check_known_panics(value: &serde_json::Value) -> Result<()> {
    match value {
        serde_json::Value::Object(map) => {
            match map.get("type").and_then(|t| t.as_str()) {
                Some("Precompiled") => {
                    serde_json::from_value::<tokenizers::normalizers::Precompiled>(value.clone())
                        .context("not a tokenizer.json: a Precompiled normalizer does not parse")?;
                }
                // `tokenizers` reads post-processors as an untagged enum and does not check a
                // template's `type` string: any object with `single`/`pair` templates is read as
                // a `TemplateProcessing` (a fuzzed `"DemplateProcessing"` was), so the shape,
                // not the name, decides.
                _ if map.contains_key("single") || map.contains_key("pair") => {
                    let defined = map.get("special_tokens").and_then(|t| t.as_object());
                    for field in ["single", "pair"] {
                        let pieces = map.get(field).and_then(|p| p.as_array());
                        for piece in pieces.into_iter().flatten() {
                            let Some(id) = piece
                                .get("SpecialToken")
                                .and_then(|t| t.get("id"))
                                .and_then(|i| i.as_str())
                            else {
                                continue;
                            };
                            if !defined.is_some_and(|d| d.contains_key(id)) {
                                bail!(
                                    "not a tokenizer.json: the post-processor's {field} template uses the special token {id:?}, which its special_tokens do not define"
                                );
                            }
                        }
                    }
                }
                _ => {}
            }
            map.values().try_for_each(check_known_panics)
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(check_known_panics),
        _ => Ok(()),
    }
}

fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn truncation_sides() {
        let mut v = vec![1, 2, 3, 4, 5];
        truncate(&mut v, 3, TruncationSide::Left);
        assert_eq!(v, [3, 4, 5]);
        let mut v = vec![1, 2, 3, 4, 5];
        truncate(&mut v, 3, TruncationSide::Right);
        assert_eq!(v, [1, 2, 3]);
        let mut v = vec![1, 2];
        truncate(&mut v, 3, TruncationSide::Right);
        assert_eq!(v, [1, 2]);
    }

    fn seq(ids: &[u32], completion_from: usize) -> Sequence {
        Sequence {
            ids: ids.to_vec(),
            completion: (0..ids.len()).map(|i| i >= completion_from).collect(),
        }
    }

    #[test]
    fn right_padding_builds_masks() {
        let b =
            TokenBatch::pad(&[seq(&[5, 6, 7], 1), seq(&[8], 0)], 0, PaddingSide::Right).unwrap();
        assert_eq!((b.batch_size, b.seq_len), (2, 3));
        assert_eq!(b.input_ids, [5, 6, 7, 8, 0, 0]);
        assert_eq!(b.attention_mask, [1, 1, 1, 1, 0, 0]);
        assert_eq!(b.completion_mask, [0, 1, 1, 1, 0, 0]);
        assert_eq!(b.row_ids(1), [8]);
    }

    #[test]
    fn left_padding_builds_masks() {
        let b = TokenBatch::pad(&[seq(&[5, 6, 7], 2), seq(&[8], 0)], 9, PaddingSide::Left).unwrap();
        assert_eq!(b.input_ids, [5, 6, 7, 9, 9, 8]);
        assert_eq!(b.attention_mask, [1, 1, 1, 0, 0, 1]);
        assert_eq!(b.completion_mask, [0, 0, 1, 0, 0, 1]);
        assert_eq!(b.row_ids(1), [8]);
        assert_eq!(b.row_ids(0), [5, 6, 7]);
    }

    #[test]
    fn empty_batches_are_errors() {
        assert!(TokenBatch::pad(&[], 0, PaddingSide::Right).is_err());
        assert!(TokenBatch::pad(&[Sequence::default()], 0, PaddingSide::Right).is_err());
    }

    /// A word-level tokenizer built in code: every word of the vocabulary is one token.
    pub(crate) fn word_tokenizer() -> TextTokenizer {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
        let words = ["<pad>", "<unk>", "a", "b", "c", "d", "e", "f", "g", "h"];
        let vocab = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(WhitespaceSplit));
        TextTokenizer::new(tok).unwrap()
    }

    #[test]
    fn pair_truncation_keeps_the_end_of_the_prompt_and_the_start_of_the_completion() {
        let tok = word_tokenizer();
        assert_eq!(tok.pad_id(), 0);
        let opts = EncodeOptions {
            max_len: Some(5),
            ..Default::default()
        };
        // prompt a b c d (2..=5), completion e f (6, 7): the prompt keeps its last 3 tokens.
        let s = tok.encode_pair("a b c d", "e f", &opts).unwrap();
        assert_eq!(s.ids, [3, 4, 5, 6, 7]);
        assert_eq!(s.completion, [false, false, false, true, true]);
        // A completion longer than max_len keeps its first tokens and no prompt.
        let s = tok.encode_pair("a", "b c d e f g h", &opts).unwrap();
        assert_eq!(s.ids, [3, 4, 5, 6, 7]);
        assert!(s.completion.iter().all(|&c| c));
        // Right truncation of the prompt keeps its start.
        let opts = EncodeOptions {
            max_len: Some(4),
            truncation: TruncationSide::Right,
            ..Default::default()
        };
        let s = tok.encode_pair("a b c d", "e f", &opts).unwrap();
        assert_eq!(s.ids, [2, 3, 6, 7]);
    }

    #[test]
    fn text_truncation_and_batches() {
        let tok = word_tokenizer();
        let opts = EncodeOptions {
            max_len: Some(2),
            truncation: TruncationSide::Left,
            padding: PaddingSide::Left,
            add_special_tokens: true,
        };
        let b = tok.encode_batch(&["a b c", "d"], &opts).unwrap();
        assert_eq!(b.input_ids, [3, 4, 0, 5]);
        assert_eq!(b.attention_mask, [1, 1, 0, 1]);
        assert!(tok.encode_pair("a", "", &opts).is_err());
    }

    #[test]
    fn batch_tensors_have_the_batch_shape() {
        let device = Device::default();
        let tok = word_tokenizer();
        let b = tok
            .encode_pair_batch(&[("a b", "c"), ("d", "e f g")], &EncodeOptions::default())
            .unwrap();
        let ids = b.ids_tensor(&device);
        assert_eq!(ids.dims(), [2, 4]);
        let mask = b.completion_tensor(&device);
        let sum: i64 = mask.sum().into_scalar::<i64>();
        assert_eq!(sum, 4);
    }

    #[test]
    fn pad_ids_and_vocabularies_are_checked_against_their_tables() {
        let tok = word_tokenizer();
        assert_eq!((tok.vocab_size(), tok.max_token_id()), (10, 9));
        assert!(tok.check_fits(10, "the embedding").is_ok());
        let err = tok.check_fits(9, "the embedding").unwrap_err().to_string();
        assert_eq!(
            err,
            "the tokenizer produces ids up to 9, but the embedding has 9 rows: the tokenizer does not belong to this model"
        );
        let err = tok
            .clone()
            .try_with_pad_id(10, "config.json pad_token_id")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config.json pad_token_id 10 is not a token of the tokenizer (vocabulary of 10 tokens, ids up to 9)"
        );
        assert_eq!(tok.clone().try_with_pad_id(1, "pad").unwrap().pad_id(), 1);
        let err = tok
            .with_pad_id(12)
            .check_fits(12, "t")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "the pad id 12 is outside t (12 rows)");

        // A tokenizer.json declaring a padding id past its vocabulary is refused on load.
        let mut inner = word_tokenizer().inner().clone();
        inner.with_padding(Some(tokenizers::PaddingParams {
            pad_id: 99,
            ..Default::default()
        }));
        let err = TextTokenizer::new(inner).unwrap_err().to_string();
        assert!(
            err.starts_with("the padding id the tokenizer declares 99 is not a token"),
            "{err}"
        );
    }

    /// Inputs on which `tokenizers` 0.22.2 panics (found by the `tokenizer_json` fuzz target) are
    /// errors.
    #[test]
    fn malformed_tokenizer_json_is_an_error_not_a_panic() {
        let good = word_tokenizer().inner().to_string(false).unwrap();
        assert!(TextTokenizer::from_json_bytes(good.as_bytes()).is_ok());
        // A syntax error inside "decoder" (tokenizers: `.expect("Helper")`).
        let bad =
            r#"{"version": "1.0", "decoder": {"type": "ByteLevel", "trim_offsets": tru false}}"#;
        let err = format!(
            "{:#}",
            TextTokenizer::from_json_bytes(bad.as_bytes()).unwrap_err()
        );
        assert!(
            err.starts_with("not a tokenizer.json: invalid JSON"),
            "{err}"
        );
        // A Precompiled normalizer whose charsmap is not one (`.expect("Precompiled")`).
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["normalizer"] = serde_json::json!({"type": "Precompiled", "precompiled_charsmap": 5});
        let err = format!(
            "{:#}",
            TextTokenizer::from_json_bytes(v.to_string().as_bytes()).unwrap_err()
        );
        assert!(
            err.starts_with("not a tokenizer.json: a Precompiled normalizer does not parse"),
            "{err}"
        );
    }

    #[test]
    fn a_template_naming_an_undefined_special_token_is_an_error() {
        let mut v: serde_json::Value =
            serde_json::from_str(&word_tokenizer().inner().to_string(false).unwrap()).unwrap();
        v["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {},
        });
        let err = TextTokenizer::from_json_bytes(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "not a tokenizer.json: the post-processor's single template uses the special token \"[CLS]\", which its special_tokens do not define"
        );
        v["post_processor"]["special_tokens"] =
            serde_json::json!({"[CLS]": {"id": "[CLS]", "ids": [0], "tokens": ["<pad>"]}});
        let tok = TextTokenizer::from_json_bytes(v.to_string().as_bytes()).unwrap();
        assert_eq!(tok.encode("a b", true).unwrap(), [0, 2, 3]);
    }

    /// The fuzzer's third find (`tokenizer_json`, after about 580 s): a template's special token
    /// whose id is outside the vocabulary would be inserted as it is.
    #[test]
    fn a_special_token_id_outside_the_vocabulary_is_an_error() {
        let mut v: serde_json::Value =
            serde_json::from_str(&word_tokenizer().inner().to_string(false).unwrap()).unwrap();
        v["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [72], "tokens": ["<s>"]}},
        });
        let err = TextTokenizer::from_json_bytes(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("the post-processor's special token \"<s>\": its id 72 is not a token of the tokenizer (vocabulary of 10 tokens"),
            "{err}"
        );
        v["post_processor"]["special_tokens"]["<s>"]["ids"] = serde_json::json!([9]);
        let tok = TextTokenizer::from_json_bytes(v.to_string().as_bytes()).unwrap();
        assert_eq!(tok.encode("a", true).unwrap(), [9, 2]);
    }

    /// The fuzzer's second find (`tokenizer_json`, after 71 s): the parser reads a template under
    /// a misspelt `type` as a `TemplateProcessing` all the same, so the check must not trust the
    /// name.
    #[test]
    fn a_template_under_any_type_name_is_checked() {
        let mut v: serde_json::Value =
            serde_json::from_str(&word_tokenizer().inner().to_string(false).unwrap()).unwrap();
        v["post_processor"] = serde_json::json!({
            "type": "DemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[UNK]", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [0], "tokens": ["<pad>"]}},
        });
        let err = TextTokenizer::from_json_bytes(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "not a tokenizer.json: the post-processor's single template uses the special token \"[UNK]\", which its special_tokens do not define"
        );
        // The same template with the token defined loads and encodes under the misspelt name.
        v["post_processor"]["special_tokens"]["[UNK]"] =
            serde_json::json!({"id": "[UNK]", "ids": [1], "tokens": ["<unk>"]});
        let tok = TextTokenizer::from_json_bytes(v.to_string().as_bytes()).unwrap();
        assert_eq!(tok.encode("a b", true).unwrap(), [2, 3, 1]);
    }
}
