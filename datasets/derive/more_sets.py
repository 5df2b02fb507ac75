#!/usr/bin/env python3
"""Two preference sets that disagree, derived from HH-RLHF harmless-base train, for MORE
(recipes/rm-more-minilm-hh.toml):

  harmless-a.jsonl  pairs 0-899 as labelled (the harmlessness preference)
  longer-b.jsonl    pairs 900-1,799 relabelled "the longer final response wins" (a verbosity
                    preference, like an annotator pool that rewards length)
  mix.jsonl         both, for plain Bradley-Terry on the same pairs
  longer-train.jsonl, longer-dev.jsonl
                    all train / dev pairs relabelled "the longer final response wins": a
                    preference a small encoder learns well, for label-noise studies

Rows are plumbline's generic pairs JSONL: {"prompt": [{"role", "content"}, ...], "chosen",
"rejected"}. Transcripts whose two sides differ before the last assistant turn are skipped.

  python3 datasets/derive/more_sets.py [--data-dir ../shared/datasets] [--out runs/more-data]
"""

import argparse
import json
import os
import re
import sys


def turns(transcript):
    parts = re.split(r"\n\n(Human|Assistant): ", transcript)
    return [
        {"role": "user" if parts[i] == "Human" else "assistant", "content": parts[i + 1].strip()}
        for i in range(1, len(parts), 2)
    ]


def pair(row):
    chosen, rejected = turns(row["chosen"]), turns(row["rejected"])
    if (
        not chosen
        or not rejected
        or chosen[:-1] != rejected[:-1]
        or chosen[-1]["role"] != "assistant"
        or rejected[-1]["role"] != "assistant"
    ):
        return None
    return {"prompt": chosen[:-1], "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}


def read(data_dir, split):
    path = os.path.join(data_dir, "hh-rlhf", f"harmless-base.{split}.jsonl")
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        sys.exit(f"{path}: {e} (pass --data-dir, or set PLUMB_DATA_DIR)")


def longer_wins(p):
    """Relabels the pair so the longer response is chosen; True when it swapped them."""
    if len(p["rejected"]) > len(p["chosen"]):
        p["chosen"], p["rejected"] = p["rejected"], p["chosen"]
        return True
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("PLUMB_DATA_DIR", "../shared/datasets"))
    ap.add_argument("--out", default="runs/more-data")
    ap.add_argument("--split-at", type=int, default=900)
    args = ap.parse_args()
    rows = read(args.data_dir, "train")
    first, second, skipped, relabelled = [], [], 0, 0
    for i, row in enumerate(rows):
        p = pair(row)
        if p is None:
            skipped += 1
            continue
        if i < args.split_at:
            first.append(p)
            continue
        relabelled += longer_wins(p)
        second.append(p)
    os.makedirs(args.out, exist_ok=True)
    for name, pairs in [("harmless-a.jsonl", first), ("longer-b.jsonl", second), ("mix.jsonl", first + second)]:
        with open(os.path.join(args.out, name), "w") as f:
            for p in pairs:
                f.write(json.dumps(p) + "\n")
    for split in ["train", "dev"]:
        pairs = [p for p in map(pair, read(args.data_dir, split)) if p is not None]
        for p in pairs:
            longer_wins(p)
        with open(os.path.join(args.out, f"longer-{split}.jsonl"), "w") as f:
            for p in pairs:
                f.write(json.dumps(p) + "\n")
    print(
        f"{args.out}: harmless-a {len(first)} pairs, longer-b {len(second)} pairs "
        f"({relabelled} relabelled to the longer response), {skipped} transcripts skipped"
    )


if __name__ == "__main__":
    main()
