//! Where reports go: a JSON file and its Markdown sibling, never one over the other, never over
//! the input.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The JSON and Markdown paths of a report asked for as `out`: `x.json` / `x.md` /
/// `x` all give `(x.json, x.md)`; any other extension is an error (so `--out x.md` cannot
/// replace the JSON, nor `--out x.txt` get a surprise sibling).
pub fn report_paths(out: &Path) -> Result<(PathBuf, PathBuf)> {
    match out.extension().and_then(|e| e.to_str()) {
        Some("json") | Some("md") | None => {
            Ok((out.with_extension("json"), out.with_extension("md")))
        }
        Some(other) => bail!(
            "--out {}: a report is written as FILE.json and FILE.md; give a .json or .md path (not .{other})",
            out.display()
        ),
    }
}

/// Refuses an output path that is the input file.
pub fn refuse_output_over_input(output: &Path, input: &Path) -> Result<()> {
    let same = match (output.canonicalize(), input.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => output == input,
    };
    if same {
        bail!(
            "--out {} is the input file: choose another output path",
            output.display()
        );
    }
    Ok(())
}

/// Writes a report's JSON to `json_path` and its Markdown beside it (see [`report_paths`]),
/// each atomically.
pub fn write_report_pair(
    json_path: &Path,
    json: &str,
    markdown: &str,
) -> Result<(PathBuf, PathBuf)> {
    let (json_path, md_path) = report_paths(json_path)?;
    rm_core::checkpoint::write_bytes_atomically(&json_path, json.as_bytes())?;
    rm_core::checkpoint::write_bytes_atomically(&md_path, markdown.as_bytes())?;
    Ok((json_path, md_path))
}

/// Writes a run's `out_dir/summary.json` (pretty-printed, atomically).
pub fn write_summary(out_dir: &Path, summary: &serde_json::Value) -> Result<()> {
    rm_core::checkpoint::write_bytes_atomically(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )
}

/// Draws `out_dir/curves.png` from a run's metrics: the path, or why it could not be drawn (a
/// missing plot never fails a run).
pub fn draw_curves(metrics: &Path, out_dir: &Path) -> (Option<PathBuf>, Option<String>) {
    match rm_core::plot::plot_metrics(metrics, &out_dir.join("curves.png")) {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_path_never_names_its_sibling_or_the_input() {
        for out in ["r.json", "r.md", "r"] {
            let (j, m) = report_paths(Path::new(out)).unwrap();
            assert_eq!(
                (j, m),
                (PathBuf::from("r.json"), PathBuf::from("r.md")),
                "{out}"
            );
        }
        assert!(report_paths(Path::new("r.txt")).is_err());
        let dir = std::env::temp_dir().join(format!("plumbline-reports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("rows.jsonl");
        std::fs::write(&input, "{}").unwrap();
        assert!(refuse_output_over_input(&input, &input).is_err());
        assert!(refuse_output_over_input(&dir.join("./rows.jsonl"), &input).is_err());
        refuse_output_over_input(&dir.join("out.jsonl"), &input).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
