//! `plumb data inspect`: record counts, token-length percentiles and a rendered sample of a
//! dataset.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;
use rm_core::chat::ChatTemplate;
use rm_core::data::{generic, gsm8k, hh_rlhf, prm800k};
use rm_core::gguf::GgufFile;
use rm_core::gguf::tokenizer::tokenizer_from_gguf;
use rm_core::paths;
use rm_core::tokenize::TextTokenizer;
use rm_core::types::{PreferencePair, Prompt};

use crate::GlobalArgs;

/// The files of the datasets plumbline knows, for `plumb info`.
pub const KNOWN_FILES: &[(&str, &[&str])] = &[
    (
        "hh-rlhf",
        &[
            "hh-rlhf/harmless-base.train.jsonl",
            "hh-rlhf/harmless-base.dev.jsonl",
        ],
    ),
    ("gsm8k", &["gsm8k/train.jsonl", "gsm8k/test.jsonl"]),
    ("prm800k", &["prm800k/phase1.train.jsonl"]),
];

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Counts, token-length percentiles and one rendered sample of a dataset.
    ///
    /// DATASET is hh-rlhf, gsm8k, prm800k (read from the data dir, sha256-verified) or a path to
    /// your own JSONL (pairs, rankings, unpaired or step-labelled; the shape is detected).
    Inspect {
        dataset: String,
        /// Tokenizer for the length statistics: a tokenizer.json, a model folder holding one, or a
        /// .gguf file (its own tokenizer) [default: <models-dir>/minilm/tokenizer.json].
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Chat template used to render conversation prompts: hh-transcript, chat-ml or plain.
        #[arg(long, default_value = "hh-transcript")]
        template: String,
    },
}

pub fn run(global: &GlobalArgs, cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Inspect {
            dataset,
            tokenizer,
            template,
        } => inspect(global, &dataset, tokenizer.as_deref(), &template),
    }
}

fn parse_template(name: &str) -> Result<ChatTemplate> {
    Ok(match name {
        "hh-transcript" | "hh" => ChatTemplate::HhTranscript,
        "chat-ml" | "chatml" => ChatTemplate::ChatMl,
        "plain" => ChatTemplate::Plain,
        other => bail!("unknown template {other:?}: expected hh-transcript, chat-ml or plain"),
    })
}

fn load_tokenizer(
    global: &GlobalArgs,
    explicit: Option<&Path>,
) -> Result<Option<(PathBuf, TextTokenizer)>> {
    let path = match explicit {
        Some(p) if p.is_dir() => p.join("tokenizer.json"),
        Some(p) => p.to_path_buf(),
        None => {
            let default =
                paths::models_dir(global.models_dir.as_deref()).join("minilm/tokenizer.json");
            if !default.is_file() {
                println!(
                    "(no tokenizer at {}: run `cargo xtask fetch-models` or pass --tokenizer for length statistics)",
                    default.display()
                );
                return Ok(None);
            }
            default
        }
    };
    let tok = if path.extension().is_some_and(|e| e == "gguf") {
        let file = GgufFile::open(&path)?;
        TextTokenizer::new(tokenizer_from_gguf(&file)?)?
    } else {
        TextTokenizer::from_file(&path)?
    };
    Ok(Some((path, tok)))
}

/// Nearest-rank percentiles of `values` (sorted in place).
pub fn percentiles(values: &mut [usize], ps: &[f64]) -> Vec<usize> {
    values.sort_unstable();
    ps.iter()
        .map(|&p| {
            if values.is_empty() {
                return 0;
            }
            let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        })
        .collect()
}

/// A named column of texts whose token lengths are reported.
struct Column {
    name: &'static str,
    texts: Vec<String>,
}

fn print_lengths(tokenizer: Option<&(PathBuf, TextTokenizer)>, columns: &[Column]) -> Result<()> {
    let Some((path, tok)) = tokenizer else {
        return Ok(());
    };
    println!(
        "\ntoken lengths ({}; special tokens included):",
        path.display()
    );
    println!(
        "  {:<22} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "field", "mean", "p50", "p90", "p95", "p99", "max"
    );
    for col in columns {
        let mut lens = col
            .texts
            .iter()
            .map(|t| tok.encode(t, true).map(|ids| ids.len()))
            .collect::<Result<Vec<_>>>()?;
        let mean = lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64;
        let p = percentiles(&mut lens, &[50.0, 90.0, 95.0, 99.0, 100.0]);
        println!(
            "  {:<22} {:>7.1} {:>7} {:>7} {:>7} {:>7} {:>7}",
            col.name, mean, p[0], p[1], p[2], p[3], p[4]
        );
    }
    Ok(())
}

fn prompt_text(template: ChatTemplate, prompt: &Prompt) -> Result<String> {
    match prompt {
        Prompt::Text(t) => Ok(t.clone()),
        Prompt::Conversation(c) => template.render(c, true),
    }
}

fn pair_columns(template: ChatTemplate, pairs: &[PreferencePair]) -> Result<Vec<Column>> {
    let mut prompt = Vec::with_capacity(pairs.len());
    let mut chosen = Vec::with_capacity(pairs.len());
    let mut rejected = Vec::with_capacity(pairs.len());
    for p in pairs {
        let text = prompt_text(template, &p.prompt)?;
        chosen.push(format!("{text}{}", template.render_response(&p.chosen)));
        rejected.push(format!("{text}{}", template.render_response(&p.rejected)));
        prompt.push(text);
    }
    Ok(vec![
        Column {
            name: "prompt",
            texts: prompt,
        },
        Column {
            name: "prompt + chosen",
            texts: chosen,
        },
        Column {
            name: "prompt + rejected",
            texts: rejected,
        },
    ])
}

fn print_pair_sample(template: ChatTemplate, pair: &PreferencePair) -> Result<()> {
    println!("\nsample (first pair, rendered with {template:?}):");
    println!("--- prompt ---\n{}", prompt_text(template, &pair.prompt)?);
    println!("--- chosen ---\n{}", pair.chosen);
    println!("--- rejected ---\n{}", pair.rejected);
    Ok(())
}

fn inspect(
    global: &GlobalArgs,
    dataset: &str,
    tokenizer: Option<&Path>,
    template: &str,
) -> Result<()> {
    let template = parse_template(template)?;
    let data_dir = paths::data_dir(global.data_dir.as_deref());
    let tok = load_tokenizer(global, tokenizer)?;
    match dataset {
        "hh-rlhf" => {
            let mut all = Vec::new();
            for split in [hh_rlhf::Split::Train, hh_rlhf::Split::Dev] {
                let (pairs, report) = hh_rlhf::load(&data_dir, split)?;
                println!(
                    "hh-rlhf {:<5} {} pairs from {} rows  ({}; sha256 verified)",
                    split.name(),
                    report.pairs,
                    report.rows,
                    report.path.display()
                );
                println!(
                    "              prompt mismatches: {} {:?}; responses with invented turns (kept): {} {:?}",
                    report.prompt_mismatches.len(),
                    report.prompt_mismatches,
                    report.responses_with_turn_markers.len(),
                    report.responses_with_turn_markers
                );
                all.extend(pairs);
            }
            print_lengths(tok.as_ref(), &pair_columns(template, &all)?)?;
            print_pair_sample(template, &all[0])?;
        }
        "gsm8k" => {
            let mut all = Vec::new();
            for split in ["train", "test"] {
                let problems = gsm8k::load(&data_dir, split, Default::default())?;
                println!(
                    "gsm8k {split:<5} {} problems, every gold answer numeric (sha256 verified)",
                    problems.len()
                );
                all.extend(problems);
            }
            print_lengths(
                tok.as_ref(),
                &[
                    Column {
                        name: "question",
                        texts: all.iter().map(|p| p.question.clone()).collect(),
                    },
                    Column {
                        name: "solution",
                        texts: all.iter().map(|p| p.solution.clone()).collect(),
                    },
                ],
            )?;
            let p = &all[0];
            println!(
                "\nsample (first train problem):\n--- question ---\n{}\n--- solution ---\n{}\n--- answer ---\n{}",
                p.question, p.solution, p.answer
            );
        }
        "prm800k" => {
            let (solutions, report) = prm800k::load(&data_dir)?;
            println!(
                "prm800k train {} problems, {} completions; ratings {:?} (sha256 verified)",
                report.problems, report.completions, report.ratings
            );
            println!(
                "              steps with several preferred completions: {}; final steps without one: {}",
                report.steps_with_several_preferred, report.final_steps_without_preferred
            );
            let steps: usize = solutions.iter().map(|s| s.steps.len()).sum();
            println!("              {steps} steps on the preferred paths");
            print_lengths(
                tok.as_ref(),
                &[
                    Column {
                        name: "problem",
                        texts: solutions.iter().map(|s| s.prompt.clone()).collect(),
                    },
                    Column {
                        name: "preferred path",
                        texts: solutions
                            .iter()
                            .map(|s| {
                                s.steps
                                    .iter()
                                    .map(|t| t.text.as_str())
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .collect(),
                    },
                ],
            )?;
            let s = &solutions[0];
            println!("\nsample (first problem):\n--- problem ---\n{}", s.prompt);
            for (i, step) in s.steps.iter().enumerate() {
                println!("step {i} [{:?}]: {}", step.label, step.text);
            }
        }
        file => inspect_file(Path::new(file), template, tok.as_ref())?,
    }
    Ok(())
}

fn inspect_file(
    path: &Path,
    template: ChatTemplate,
    tok: Option<&(PathBuf, TextTokenizer)>,
) -> Result<()> {
    if !path.is_file() {
        bail!(
            "{} is neither a known dataset (hh-rlhf, gsm8k, prm800k) nor a file",
            path.display()
        );
    }
    let shape = generic::detect_shape(path)?;
    println!("{}: {shape:?}", path.display());
    match shape {
        generic::Shape::Pairs => {
            let pairs = generic::load_pairs(path)?;
            println!("{} pairs", pairs.len());
            print_lengths(tok, &pair_columns(template, &pairs)?)?;
            if let Some(first) = pairs.first() {
                print_pair_sample(template, first)?;
            }
        }
        generic::Shape::Rankings => {
            let rankings = generic::load_rankings(path)?;
            let responses: usize = rankings.iter().map(|r| r.responses.len()).sum();
            println!("{} rankings, {responses} responses", rankings.len());
            print_lengths(
                tok,
                &[Column {
                    name: "response",
                    texts: rankings.iter().flat_map(|r| r.responses.clone()).collect(),
                }],
            )?;
        }
        generic::Shape::Unpaired => {
            let rows = generic::load_unpaired(path)?;
            let good = rows.iter().filter(|r| r.desirable).count();
            println!(
                "{} examples: {good} desirable, {} undesirable",
                rows.len(),
                rows.len() - good
            );
            print_lengths(
                tok,
                &[Column {
                    name: "completion",
                    texts: rows.iter().map(|r| r.completion.clone()).collect(),
                }],
            )?;
        }
        generic::Shape::StepLabelled => {
            let rows = generic::load_step_labelled(path)?;
            let steps: usize = rows.iter().map(|r| r.steps.len()).sum();
            println!("{} solutions, {steps} steps", rows.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<usize> = (1..=100).rev().collect();
        assert_eq!(
            percentiles(&mut v, &[50.0, 90.0, 99.0, 100.0]),
            [50, 90, 99, 100]
        );
        let mut v = vec![7];
        assert_eq!(percentiles(&mut v, &[50.0, 100.0]), [7, 7]);
        assert_eq!(percentiles(&mut [], &[50.0]), [0]);
    }
}
