//! Feeds arbitrary bytes to the `reward_model.json` and `policy.json` parsers and its validation (format version,
//! attributes, max length, pooling, normalization vectors against the head's width and their
//! values). A spec that passes is checked to hold what validation promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rm_core::models::policy_folder::PolicySpec;
use rm_core::models::reward::RewardModelSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = PolicySpec::from_json(text) {
        assert!(policy.max_len >= 4 && policy.base.is_absolute());
        let again = PolicySpec::from_json(&serde_json::to_string(&policy).unwrap()).unwrap();
        assert_eq!(again, policy);
    }
    let Ok(spec) = RewardModelSpec::from_json(text) else {
        return;
    };
    assert!(!spec.attributes.is_empty() && spec.max_len >= 4);
    if let Some(norm) = &spec.normalization {
        assert_eq!(norm.mean.len(), spec.attributes.len());
        assert_eq!(norm.std.len(), spec.attributes.len());
        assert!(norm.std.iter().all(|s| s.is_finite() && *s > 0.0));
    }
    // What is written back parses back to the same spec.
    let again = RewardModelSpec::from_json(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
});
