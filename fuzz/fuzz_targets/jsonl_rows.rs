//! Feeds arbitrary bytes to the JSONL reader (line splitting, BOM, UTF-8, JSON) and every row
//! parser plumbline has: generic pairs, rankings, unpaired and step-labelled rows, reward-bench
//! v1 and v2 rows and plumbline's pairs as evaluation rows, shape and format detection. Any
//! panic, overflow or oversized allocation is a finding; a bad row must be an error naming its
//! line.
#![no_main]

use std::path::Path;

use bench_harness::data::{parse_pair_row, parse_v1, parse_v2};
use libfuzzer_sys::fuzz_target;
use rm_core::data::generic::{parse_pair, parse_ranking, parse_steps, parse_unpaired};
use rm_core::data::{JsonlReader, Row};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.jsonl");
    let mut last_line = 0;
    for item in JsonlReader::from_reader(path, data) {
        let (loc, value) = match item {
            Ok(row) => row,
            Err(e) => {
                // Every error names the file.
                assert!(e.to_string().starts_with("fuzz.jsonl"), "{e}");
                continue;
            }
        };
        assert!(loc.line > last_line, "lines go forward");
        last_line = loc.line;
        let row = Row::new(&loc, &value);
        if let Ok(r) = parse_ranking(&row) {
            assert_eq!(r.ranks.len(), r.responses.len());
        }
        if let Ok(s) = parse_steps(&row) {
            assert!(s.alternatives.is_empty());
        }
        let _ = parse_pair(&row);
        let _ = parse_unpaired(&row);
        let _ = parse_v1(&row);
        if let Ok(r) = parse_v2(&row) {
            assert!(!r.chosen.is_empty() && !r.rejected.is_empty());
        }
        let _ = parse_pair_row(&row, "fuzz");
        for e in [parse_pair(&row).err(), parse_v2(&row).err()]
            .into_iter()
            .flatten()
        {
            assert!(
                e.to_string()
                    .starts_with(&format!("fuzz.jsonl:{}", loc.line)),
                "{e}"
            );
        }
    }
});
