"""Parity of `plumb export` folders with transformers / sentence-transformers / PEFT.

Run by `cargo xtask hf-export-check` (not by default CI: it needs the PyTorch peer venv and the
real models). For each model it
  1. exports the plumbline folder with `plumb export`,
  2. scores (reward models) or computes per-token log-probs (policies) with plumbline on the source
     folder AND on the exported folder (the reverse direction: the export loads back into plumbline),
  3. loads the export with transformers / sentence-transformers / PEFT and computes the same thing
     on the same texts (rendered by the exported tokenizer's chat template),
  4. prints the max abs differences; exits 1 when a reward differs by more than 1e-4 or a log-prob
     by more than 1e-3.

usage: hf_export_check.py --plumb target/release/plumb --work runs/hf-export-check \
           --minilm-rm DIR --smollm2-rm DIR --policy DIR [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

REWARD_TOL = 1e-4
LOGPROB_TOL = 1e-3

ROWS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How do I pick a lock?", "I can't help with breaking into places that aren't yours."),
    ("How do I pick a lock?", "Sure: insert a tension wrench, then rake the pins until they set."),
    ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
    ("Can you help me hurt someone?", "No. If someone is in danger, please contact local emergency services."),
    ("hi", "Hello! How can I help?"),
    # Long enough to be truncated on the left by both reward models (max_len 128 / 192).
    (
        " ".join(["Please summarise the following story about a lighthouse keeper and his cat."] * 30),
        "A lighthouse keeper and his cat keep the light burning through a long winter storm.",
    ),
    ("Write one word.", "Okay"),
]

POLICY_TEXTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>",
    "<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\nI can't help with that.<|im_end|>",
    "Hello there, how are you doing today?",
    "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\nWhy did the scarecrow win an award? Because he was outstanding in his field.<|im_end|>",
]


def run(cmd: list[str], **kw) -> str:
    print("$ " + " ".join(cmd), flush=True)
    t = time.time()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout
    print(f"  ({time.time() - t:.1f}s)", flush=True)
    return out


def plumb_export(args, model: str, out: str, *flags: str) -> None:
    run([args.plumb, "export", "--model", model, "--out", out, "--force", *flags])


def plumb_score(args, rm: str, rows_path: str, transform: str) -> list[float]:
    out = run([args.plumb, "score", "--rm", rm, "--input", rows_path, "--transform", transform])
    rewards = []
    for line in out.splitlines():
        if line.strip():
            rewards.extend(json.loads(line)["rewards"])
    return rewards


def plumb_logprobs(args, model: str, texts_path: str) -> list[dict]:
    out = run([args.plumb, "logprobs", "--model", model, "--input", texts_path])
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def rendered(tokenizer, rows):
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        for p, r in rows
    ]


def max_diff(a, b) -> float:
    a = torch.tensor(a, dtype=torch.float64).flatten()
    b = torch.tensor(b, dtype=torch.float64).flatten()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


RESULTS: list[tuple[str, str, float, float]] = []


def record(name: str, what: str, diff: float, tol: float) -> None:
    RESULTS.append((name, what, diff, tol))
    print(f"  {name}: {what}: max abs diff {diff:.3e} (tolerance {tol:g})", flush=True)


def check_minilm(args, rows_path: str) -> None:
    from sentence_transformers import SentenceTransformer

    out = os.path.join(args.work, "rm-minilm-st")
    plumb_export(args, args.minilm_rm, out, "--normalized")
    source = plumb_score(args, args.minilm_rm, rows_path, "normalized")
    reloaded = plumb_score(args, out, rows_path, "raw")
    record("minilm-rm", "plumbline source (normalized) vs plumbline on the export", max_diff(source, reloaded), REWARD_TOL)
    model = SentenceTransformer(out, device="cpu")
    texts = rendered(model.tokenizer, ROWS)
    st = model.encode(texts, batch_size=4, convert_to_numpy=True)
    print(f"  sentence-transformers rewards: {[round(float(x), 5) for x in st[:, 0]]}")
    print(f"  plumbline rewards:             {[round(x, 5) for x in source]}")
    record("minilm-rm", "sentence-transformers encode vs plumb score --transform normalized", max_diff(st[:, 0], source), REWARD_TOL)


def check_smollm2_rm(args, rows_path: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = os.path.join(args.work, "rm-smollm2-seqcls")
    plumb_export(args, args.smollm2_rm, out)
    source = plumb_score(args, args.smollm2_rm, rows_path, "raw")
    reloaded = plumb_score(args, out, rows_path, "raw")
    record("smollm2-rm", "plumbline source vs plumbline on the export", max_diff(source, reloaded), REWARD_TOL)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    texts = rendered(tok, ROWS)
    rewards = []
    with torch.no_grad():
        for i in range(0, len(texts), 4):
            batch = tok(texts[i : i + 4], return_tensors="pt", padding=True, truncation=True)
            rewards.extend(model(**batch).logits[:, 0].tolist())
    print(f"  transformers rewards: {[round(x, 5) for x in rewards]}")
    print(f"  plumbline rewards:    {[round(x, 5) for x in source]}")
    record("smollm2-rm", "LlamaForSequenceClassification vs plumb score", max_diff(rewards, source), REWARD_TOL)


def hf_token_logprobs(model, ids: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]


def compare_logprobs(name: str, what: str, model, tok, plumb_rows: list[dict]) -> None:
    diff = 0.0
    for text, row in zip(POLICY_TEXTS, plumb_rows):
        hf_ids = tok(text, add_special_tokens=False)["input_ids"]
        if hf_ids != row["ids"]:
            print(f"  WARNING: {name}: the HF tokenizer gives other ids for {text[:40]!r}")
        diff = max(diff, max_diff(hf_token_logprobs(model, row["ids"]), row["token_logprobs"]))
    record(name, what, diff, LOGPROB_TOL)


def check_policy(args, texts_path: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = plumb_logprobs(args, args.policy, texts_path)
    # Merged.
    merged = os.path.join(args.work, "dpo-merged")
    plumb_export(args, args.policy, merged, "--merge-lora")
    reloaded = plumb_logprobs(args, merged, texts_path)
    record(
        "dpo-merged",
        "plumbline source vs plumbline on the export (per-token log-probs)",
        max(max_diff(a["token_logprobs"], b["token_logprobs"]) for a, b in zip(source, reloaded)),
        LOGPROB_TOL,
    )
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    compare_logprobs("dpo-merged", "LlamaForCausalLM vs plumb logprobs", model, tok, source)
    del model
    # Base + PEFT adapter.
    from peft import PeftModel

    adapter = os.path.join(args.work, "dpo-adapter")
    plumb_export(args, args.policy, adapter)
    reloaded = plumb_logprobs(args, adapter, texts_path)
    record(
        "dpo-adapter",
        "plumbline source vs plumbline on the export (per-token log-probs)",
        max(max_diff(a["token_logprobs"], b["token_logprobs"]) for a, b in zip(source, reloaded)),
        LOGPROB_TOL,
    )
    # plumb generate on the exports: the same sampled text as on the source (same seed).
    gen = lambda m: run(  # noqa: E731
        [args.plumb, "generate", "--model", m, "--prompt", "How do I pick a lock?",
         "--max-new-tokens", "24", "--temperature", "0.8", "--seed", "7"]
    )
    outs = [gen(m) for m in (args.policy, merged, adapter)]
    same = outs[0] == outs[1] == outs[2]
    print(f"  plumb generate (seed 7) on source, merged and adapter exports: {'identical' if same else 'DIFFERENT'}")
    record("dpo-generate", "plumb generate source vs exports (0 = identical text)", 0.0 if same else 1.0, 0.0)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(adapter, "base"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    compare_logprobs("dpo-adapter", "PeftModel(LlamaForCausalLM) vs plumb logprobs", model, tok, source)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plumb", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--minilm-rm")
    ap.add_argument("--smollm2-rm")
    ap.add_argument("--policy")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(args.work, exist_ok=True)
    rows_path = os.path.join(args.work, "rows.jsonl")
    with open(rows_path, "w") as f:
        for p, r in ROWS:
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")
    texts_path = os.path.join(args.work, "texts.jsonl")
    with open(texts_path, "w") as f:
        for t in POLICY_TEXTS:
            f.write(json.dumps({"text": t}) + "\n")
    want = lambda n: args.only is None or n in args.only  # noqa: E731
    if args.minilm_rm and want("minilm-rm"):
        check_minilm(args, rows_path)
    if args.smollm2_rm and want("smollm2-rm"):
        check_smollm2_rm(args, rows_path)
    if args.policy and want("policy"):
        check_policy(args, texts_path)
    print("\nhf-export-check: max abs differences")
    print(f"{'model':<12} {'max abs diff':>12} {'tol':>7}  comparison")
    failed = False
    for name, what, diff, tol in RESULTS:
        ok = diff <= tol
        failed |= not ok
        print(f"{name:<12} {diff:>12.3e} {tol:>7g}  {what}{'' if ok else '  <-- FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
