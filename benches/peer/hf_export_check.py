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
A PRM (`plumb train-prm`) exports to TRL's PRM layout (LlamaForTokenClassification, 2 labels); its
step probabilities softmax(logits)[1] at each step end are compared with `plumb score-prm`.

usage: hf_export_check.py --plumb target/release/plumb --work runs/hf-export-check \
           --minilm-rm DIR --smollm2-rm DIR --policy DIR --prm DIR [--only NAME ...]
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


PRM_ROWS = [
    ("How many seconds are in 7.8 minutes?",
     ["7.8 minutes is 7 minutes and 0.8 minutes.", "7 minutes is 7 * 60 = 420 seconds.",
      "0.8 minutes is 0.8 * 60 = 48 seconds.", "So 420 + 48 = 468 seconds.", "# Answer\n\n468"]),
    ("What is 2 + 3 * 4?", ["Multiplication first: 3 * 4 = 12.", "Then 2 + 12 = 15."]),
    ("What is 2 + 3 * 4?", ["Add first: 2 + 3 = 5.", "Then 5 * 4 = 20.", "# Answer\n\n20"]),
    ("Solve for x: 2x + 6 = 10.", ["Subtract 6 from both sides: 2x = 4.", "Divide by 2: x = 2.  "]),
    ("hi", ["Hello!"]),
]


def plumb_score_prm(args, prm: str, rows_path: str) -> list[list[float]]:
    out = run([args.plumb, "score-prm", "--prm", prm, "--input", rows_path])
    return [json.loads(line)["step_probs"] for line in out.splitlines() if line.strip()]


def prm_ids(tok, prompt: str, steps: list[str], sep: str) -> tuple[list[int], list[int]]:
    """The ids plumbline reads (and the model card describes): the chat-templated prompt with the
    generation prompt opened, special tokens added, then each `step + sep`; the step ends."""
    prefix = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok(prefix, add_special_tokens=True)["input_ids"]
    ends = []
    for step in steps:
        ids = ids + tok(step + sep, add_special_tokens=False)["input_ids"]
        ends.append(len(ids) - 1)
    return ids, ends


def token_classification_probs(model, tok, seqs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
    """p(correct) = softmax(logits)[1] at each step end, in one right-padded batch."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    n = max(len(ids) for ids, _ in seqs)
    input_ids = torch.tensor([ids + [pad] * (n - len(ids)) for ids, _ in seqs])
    mask = torch.tensor([[1] * len(ids) + [0] * (n - len(ids)) for ids, _ in seqs])
    with torch.no_grad():
        probs = model(input_ids=input_ids, attention_mask=mask).logits.double().softmax(-1)[..., 1]
    return [[float(probs[r, e]) for e in ends] for r, (_, ends) in enumerate(seqs)]


def trl_tokenize_row():
    """TRL's PRMTrainer.tokenize_row. trl 1.16 (the pinned peer) no longer ships PRMTrainer; an
    older trl put first on PYTHONPATH provides it, e.g.
    `pip install --no-deps --target /tmp/oldtrl trl==0.21.0` and `PYTHONPATH=/tmp/oldtrl`."""
    for module in ("trl", "trl.experimental.prm", "trl.trainer.prm_trainer"):
        try:
            return getattr(__import__(module, fromlist=["PRMTrainer"]), "PRMTrainer").tokenize_row
        except (ImportError, AttributeError):
            continue
    return None


def check_prm(args, rows_path: str) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    out = os.path.join(args.work, "prm-trl")
    plumb_export(args, args.prm, out)
    source = plumb_score_prm(args, args.prm, rows_path)
    reloaded = plumb_score_prm(args, out, rows_path)
    record("prm", "plumbline source vs plumbline on the export (step probabilities)", max_diff(sum(source, []), sum(reloaded, [])), REWARD_TOL)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForTokenClassification.from_pretrained(out, dtype=torch.float32).eval()
    sep = model.config.step_separator
    print(f"  {type(model).__name__}, num_labels {model.config.num_labels}, step_separator {sep!r} (tokenizer_config: {tok.init_kwargs.get('step_separator')!r})")
    seqs = [prm_ids(tok, p, steps, sep) for p, steps in PRM_ROWS]
    probs = token_classification_probs(model, tok, seqs)
    print(f"  transformers step probs: {[[round(x, 4) for x in r] for r in probs]}")
    print(f"  plumbline step probs:    {[[round(x, 4) for x in r] for r in source]}")
    record("prm", "LlamaForTokenClassification softmax[1] at the step ends vs plumb score-prm", max_diff(sum(probs, []), sum(source, [])), REWARD_TOL)
    # TRL's own tokenization (PRMTrainer.tokenize_row: prompt, then each step and the separator
    # tokenized apart, BOS prepended when the tokenizer has one), read where its labels are.
    tokenize_row = trl_tokenize_row()
    if tokenize_row is None:
        print("  (this trl has no PRMTrainer: TRL's tokenize_row not compared; see trl_tokenize_row)")
        return
    trl_seqs, same, same_but_bos = [], 0, 0
    for (p, steps), (ids, _) in zip(PRM_ROWS, seqs):
        prefix = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        row = tokenize_row({"prompt": prefix, "completions": steps, "labels": [True] * len(steps)}, tok, sep,
                           None, None, None, False, True)
        ends = [i for i, l in enumerate(row["labels"]) if l != -100]
        trl_seqs.append((row["input_ids"], ends))
        same += row["input_ids"] == ids
        # TRL prepends the BOS id to a prompt the chat template already opens with it (SmolLM2's
        # bos_token is <|im_start|>), so its rows can start with it twice.
        same_but_bos += row["input_ids"][0] == tok.bos_token_id and row["input_ids"][1:] == ids
    print(f"  TRL PRMTrainer.tokenize_row gives plumbline's ids for {same} of {len(seqs)} solutions, and {same_but_bos} more but for one extra leading BOS (bos_token {tok.bos_token!r})")
    trl_probs = token_classification_probs(model, tok, trl_seqs)
    d = max_diff(sum(trl_probs, []), sum(source, []))
    print(f"  TRL-tokenized step probs vs plumbline: max abs diff {d:.3e} (information: differs only where the ids differ)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plumb", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--minilm-rm")
    ap.add_argument("--smollm2-rm")
    ap.add_argument("--policy")
    ap.add_argument("--prm")
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
    prm_rows_path = os.path.join(args.work, "prm_rows.jsonl")
    with open(prm_rows_path, "w") as f:
        for p, steps in PRM_ROWS:
            f.write(json.dumps({"prompt": p, "steps": steps}) + "\n")
    want = lambda n: args.only is None or n in args.only  # noqa: E731
    if args.minilm_rm and want("minilm-rm"):
        check_minilm(args, rows_path)
    if args.smollm2_rm and want("smollm2-rm"):
        check_smollm2_rm(args, rows_path)
    if args.policy and want("policy"):
        check_policy(args, texts_path)
    if args.prm and want("prm"):
        check_prm(args, prm_rows_path)
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
