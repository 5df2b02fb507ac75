//! Reading the texts a command works on: `--text` (repeatable) or a JSONL file whose rows hold a
//! `text` field (or a field named by `--field`). A bad row is an error naming file:line.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

/// Where the texts come from.
#[derive(Args, Debug, Clone)]
pub struct TextInput {
    /// A text to process (repeat for a batch).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// A JSONL file; each row's `--field` (default `text`) is processed.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The JSONL field holding the text.
    #[arg(long, default_value = "text")]
    pub field: String,
}

impl TextInput {
    /// Every text, `--text` values first, then the file's rows.
    pub fn read(&self) -> Result<Vec<String>> {
        let mut out = self.texts.clone();
        if let Some(path) = &self.input {
            out.extend(read_jsonl_field(path, &self.field)?);
        }
        if out.is_empty() {
            bail!("no input: pass --text \"…\" (repeatable) or --input FILE.jsonl");
        }
        Ok(out)
    }
}

fn read_jsonl_field(path: &Path, field: &str) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| format!("{}:{line_no}: reading", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{line_no}: invalid JSON", path.display()))?;
        match value.get(field) {
            Some(serde_json::Value::String(s)) => out.push(s.clone()),
            Some(_) => bail!(
                "{}:{line_no}: field \"{field}\": expected a string",
                path.display()
            ),
            None => bail!("{}:{line_no}: field \"{field}\" is missing", path.display()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_texts_and_reports_bad_rows_by_line() {
        let dir = std::env::temp_dir().join(format!("plumb-texts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(&good, "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n").unwrap();
        let input = TextInput {
            texts: vec!["z".into()],
            input: Some(good),
            field: "text".into(),
        };
        assert_eq!(input.read().unwrap(), ["z", "a", "b"]);

        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"text\": \"a\"}\n{\"text\": 3}\n").unwrap();
        let err = read_jsonl_field(&bad, "text").unwrap_err().to_string();
        assert!(
            err.ends_with("bad.jsonl:2: field \"text\": expected a string"),
            "{err}"
        );
        std::fs::write(&bad, "{\"text\": \"a\"}\n{oops\n").unwrap();
        let err = format!("{:#}", read_jsonl_field(&bad, "text").unwrap_err());
        assert!(err.contains("bad.jsonl:2: invalid JSON"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
