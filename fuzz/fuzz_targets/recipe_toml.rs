//! Feeds arbitrary bytes to the reward-model recipe path: TOML, then the `[model]` and `[train]`
//! sections deserialized as [`RewardModelConfig`] and [`TrainConfig`] (unknown fields are
//! errors). The `--set` overrides are not reached yet: their parser lives in the `plumb` binary
//! crate (`crates/plumb/src/recipe.rs`), which this crate cannot depend on; once it moves to
//! `rm_core::recipe::parse(text, origin, overrides)`, this target feeds it the text and the
//! lines after the first NUL byte as overrides.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rm_core::models::reward::RewardModelConfig;
use rm_core::train::TrainConfig;
use serde::Deserialize;

/// The sections of a recipe this crate knows; the others are ignored here.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Sections {
    model: Option<RewardModelConfig>,
    train: Option<TrainConfig>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return;
    };
    let Ok(sections) = Sections::deserialize(toml::Value::Table(table)) else {
        return;
    };
    if let Some(model) = sections.model {
        // What parsed is written back and reads back the same.
        // (Compared as text: a NaN field is not equal to itself.)
        let text = toml::to_string(&model).unwrap();
        let again: RewardModelConfig = toml::from_str(&text).unwrap();
        assert_eq!(toml::to_string(&again).unwrap(), text);
        if model.validate().is_ok() {
            assert!(model.head_init_std.is_finite() && !model.attributes.is_empty());
        }
    }
});
