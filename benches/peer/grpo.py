#!/usr/bin/env python3
"""TRL peer of the `grpo-step-lora` workload of benches/backbones.rs: GRPO steps with TRL's own
GRPOTrainer (trl + peft) on the plumbline side's recipe, prompts and prompt token ids.

Usage: grpo.py WORKLOADS.json   (the spec the Rust bench writes; prints {"seconds": {...},
"tokens": {...}} as JSON, like backbones.py, which also runs this workload through `grpo_step`)

What runs, from the workload's spec (recipes/grpo-smollm2-gsm8k.toml with the bench's overrides,
as plumbline reads it):
- the policy: AutoModelForCausalLM from the same GGUF file (transformers dequantizes it to f32),
  wrapped by GRPOTrainer with a peft LoraConfig of the recipe's rank, alpha, dropout and target
  modules; the reference is TRL's own for PEFT policies: the adapter disabled (beta > 0);
- one GRPO step = one generation of `P × G` completions (`num_generations` = G, the prompts'
  generation batch = the whole step) + one optimizer step over them:
  `per_device_train_batch_size` = the recipe's micro-batch, `gradient_accumulation_steps` =
  buffer / micro-batch, `num_iterations` 1 (TRL then skips the old-policy forward: its ratio is
  computed against the detached current log-probs, which it may since generation and update use
  the same weights; plumbline runs that forward, as verl does, and pays for it);
- sampling: the recipe's temperature / top-k / top-p / min-p / repetition penalty, exactly
  `max_new_tokens` new tokens per completion (`min_new_tokens` = `max_completion_length`: the
  end-of-sequence tokens cannot end a row, as plumbline's `rollout.stop_at_eos = false`);
- the loss: the vanilla clip loss with the recipe's ε_low / ε_high (`epsilon`, `epsilon_high`),
  token-mean aggregation over the whole step (`loss_type = "dapo"`: normalised by the active
  tokens of the global accumulated batch), k3 KL in the loss with the recipe's coefficient
  (`beta`), group-std advantage scaling (`scale_rewards = "group"`); AdamW (TRL's default
  optimizer) with the recipe's lr, betas, eps, weight decay, warm-up, schedule and gradient
  clipping, in f32 (bf16 and gradient checkpointing off, as plumbline runs);
- the rewards: the recipe's `[[reward]]` tables with their weights, as Python ports of
  plumbline's functions (`gsm8k`: the flexible final-answer extraction of
  crates/policy-opt/src/online/rewards/math.rs, 1 if equal to the gold answer else 0; `format`:
  the regex searched in the completion, 1 or 0). Their cost is microseconds either side; they
  only change the advantages' values, not the work;
- the prompts: plumbline's, step k on iteration k's prompts (in order, no shuffling), given as
  the text plumbline rendered with its chat template and tokenized to plumbline's token ids
  (`_tokenize_prompts` returns them; whether the tokenizer alone gives the same ids is logged).

Timing: a TrainerCallback takes the time from on_step_begin to on_step_end of each optimizer step
(generation, reference forward, rewards and advantages, the micro-batches' forward + backward,
clipping, optimizer and scheduler step, zero_grad). The first step is the warm-up; the figure is
the mean time of the next `iters` steps, with the completion tokens those steps generated.
"""
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- plumbline's reward functions (crates/policy-opt/src/online/rewards/{math,format}.rs) ---

NUMBER = r"[-−]?\s?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?|[-−]?\.\d+"
NUMBER_RE = re.compile(NUMBER)
HASHES_RE = re.compile(r"####\s*(?:\\\$|\$)?\s*(" + NUMBER + ")")
ANSWER_IS_RE = re.compile(
    r"(?i)the\s+(?:final\s+)?answer\s+is\s*[:=]?\s*(?:\\\(|\\\[|\$)?\s*(?:\\boxed\{)?\s*(?:\\\$|\$)?\s*("
    + NUMBER
    + ")"
)
FRAC_RE = re.compile(r"([-−]?)\s*\\[dt]?frac\s*\{\s*([-−]?[\d.,]+)\s*\}\s*\{\s*([-−]?[\d.,]+)\s*\}")


def parse_number(text: str):
    m = NUMBER_RE.search(text.strip())
    if m is None:
        return None
    s = "".join(c for c in m.group(0) if c not in ",$ \t\n").replace("−", "-")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            num, den = float(num), float(den)
            if den == 0.0:
                return None
            value = num / den
        else:
            value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def boxed_contents(text: str):
    out, start = [], 0
    while True:
        i = text.find("\\boxed{", start)
        if i < 0:
            return out
        body = i + len("\\boxed{")
        depth, end = 1, None
        for j in range(body, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    end = j
                    break
        if end is None:
            return out
        out.append((i, text[body:end]))
        start = end + 1


def boxed_number(content: str):
    c = FRAC_RE.search(content)
    if c is not None:
        sign = 1.0 if c.group(1) == "" else -1.0
        num, den = parse_number(c.group(2)), parse_number(c.group(3))
        if num is None or den is None or den == 0.0:
            return None
        return sign * num / den
    m = NUMBER_RE.search(content)
    return parse_number(m.group(0)) if m else None


def extract_answer(completion: str, flexible: bool):
    marked = [(m.start(), parse_number(m.group(1))) for m in HASHES_RE.finditer(completion)]
    marked += [(start, boxed_number(content)) for start, content in boxed_contents(completion)]
    marked += [(m.start(), parse_number(m.group(1))) for m in ANSWER_IS_RE.finditer(completion)]
    marked.sort(key=lambda x: x[0])
    for _, value in reversed(marked):
        if value is not None:
            return value
    if not flexible:
        return None
    values = [v for v in (parse_number(m.group(0)) for m in NUMBER_RE.finditer(completion)) if v is not None]
    return values[-1] if values else None


def gold_answer(gold):
    if gold is None:
        return None
    if "####" in gold:
        try:
            return float(gold[gold.rfind("####") + 4 :].strip().replace(",", ""))
        except ValueError:
            return None
    return parse_number(gold)


def make_rewards(specs):
    """TRL reward functions and weights for the recipe's [[reward]] tables; refuses kinds and
    settings without a port here."""
    funcs, weights = [], []
    for spec in specs:
        kind = spec["kind"]
        if spec.get("clip") is not None:
            raise SystemExit(f"grpo: reward {kind}: clip has no port in grpo.py")
        if kind == "gsm8k":
            flexible = spec.get("extraction", "flexible") == "flexible"
            correct, wrong = float(spec.get("correct_score", 1.0)), float(spec.get("format_score", 0.0))

            def gsm8k(completions, answer, flexible=flexible, correct=correct, wrong=wrong, **_):
                out = []
                for text, gold in zip(completions, answer):
                    g = gold_answer(gold)
                    a = extract_answer(text.strip(), flexible)
                    if g is None:
                        out.append(None)  # masked, as plumbline's missing / bad reference
                    elif a is None:
                        out.append(0.0)
                    else:
                        out.append(correct if abs(a - g) <= 1e-6 * max(1.0, abs(g)) else wrong)
                return out

            funcs.append(gsm8k)
        elif kind == "format":
            if spec.get("sections") or spec.get("full_match") or spec.get("partial"):
                raise SystemExit("grpo: format reward: only `pattern` has a port in grpo.py")
            pattern = re.compile("(?s)" + spec["pattern"])

            def fmt(completions, pattern=pattern, **_):
                return [1.0 if pattern.search(text.strip()) else 0.0 for text in completions]

            funcs.append(fmt)
        else:
            raise SystemExit(f"grpo: reward kind {kind!r} has no port in grpo.py")
        weights.append(float(spec.get("weight", 1.0)))
    return funcs, weights


def grpo_step(w, iters: int):
    """Runs the workload `w`; returns (seconds per timed step, completion tokens of the timed
    steps). What Trainer and peft print goes to stderr: stdout carries only the result's JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        return _grpo_step(w, iters)


def _grpo_step(w, iters: int):
    import torch
    import peft
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    folder = w["model"]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0], dtype=torch.float32)
    # As dpo.py: the dequantized GGUF model is plain f32 but marked quantized; drop the marker.
    if {p.dtype for p in model.parameters()} != {torch.float32}:
        raise SystemExit("grpo: the model did not load as f32")
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0])
    pad_id = int(w["pad_id"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad_id

    steps = iters + 1
    groups = w["steps"]
    if len(groups) != steps:
        raise SystemExit(f"grpo: prompts for {len(groups)} steps, expected {steps}")
    g = int(w["group_size"])
    n_new = int(w["max_new_tokens"])
    micro = int(w["micro_batch"])
    batch = int(w["batch_size"])
    prompts_per_step = len(groups[0])
    if batch != prompts_per_step * g or batch % micro != 0:
        raise SystemExit(f"grpo: buffer {batch} vs {prompts_per_step} prompts × {g}, micro-batch {micro}")
    rows = [{"prompt": p["text"], "answer": p["answer"]} for step in groups for p in step]
    ids_of = {}
    for step in groups:
        for p in step:
            ids_of[p["text"]] = list(p["ids"])
    own = tokenizer(text=list(ids_of))["input_ids"]
    same = sum(a == b for a, b in zip(own, ids_of.values()))
    log(f"peer: grpo: the tokenizer gives plumbline's prompt ids for {same} of {len(ids_of)} prompts; the steps use plumbline's")

    lora = w["lora"]
    peft_config = LoraConfig(
        r=int(lora["rank"]),
        lora_alpha=float(lora["alpha"]),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(lora["target_modules"]),
        bias="none",
        task_type="CAUSAL_LM",
    )
    train = w["train"]
    algo = w["algorithm"]
    sampling = w["sampling"]
    schedules = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    ratio = float(train["warmup_ratio"])
    reward_funcs, reward_weights = make_rewards(w["rewards"])
    out_dir = tempfile.mkdtemp(prefix="plumb-bench-grpo-")
    args = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // micro,
        num_generations=g,
        max_completion_length=n_new,
        generation_kwargs={"min_new_tokens": n_new},
        temperature=float(sampling["temperature"]),
        top_k=int(sampling["top_k"]),
        top_p=float(sampling["top_p"]),
        min_p=float(sampling["min_p"]) or None,
        repetition_penalty=float(sampling["repetition_penalty"]),
        num_iterations=1,
        beta=float(algo["beta"]),
        epsilon=float(algo["epsilon"]),
        epsilon_high=float(algo["epsilon_high"]),
        loss_type=algo["loss_type"],
        scale_rewards=algo["scale_rewards"],
        mask_truncated_completions=False,
        reward_weights=reward_weights + [0.0],  # count_tokens below counts, weighs nothing
        shuffle_dataset=False,
        max_steps=steps,
        learning_rate=float(train["lr"]),
        weight_decay=float(train["weight_decay"]),
        warmup_steps=ratio if ratio < 1.0 else steps,
        lr_scheduler_type=schedules[train["schedule"]],
        max_grad_norm=float(train["max_grad_norm"] or 0.0),
        adam_beta1=float(train["beta1"]),
        adam_beta2=float(train["beta2"]),
        adam_epsilon=float(train["eps"]),
        seed=int(train["seed"]),
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []
            self.start = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    # Completion tokens per generation (the reward functions see each generation once).
    generated = []

    def count_tokens(completions, completion_ids, **_):
        generated.append(sum(len(c) for c in completion_ids))
        return [0.0] * len(completions)

    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs + [count_tokens],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    original = trainer._tokenize_prompts

    def plumbline_ids(prompts):
        if not all(isinstance(p, str) and p in ids_of for p in prompts):
            return original(prompts)
        return [ids_of[p] for p in prompts], None, {}

    trainer._tokenize_prompts = plumbline_ids
    trainer.model.print_trainable_parameters()
    log(
        f"peer: grpo: trl {trl.__version__}, peft {peft.__version__}, optimizer {args.optim}, loss_type {args.loss_type}, "
        f"beta {args.beta}; {steps} steps (1 warm-up) of {prompts_per_step} prompts × {g} completions × {n_new} tokens, "
        f"micro-batches of {micro} ({args.gradient_accumulation_steps} per step)"
    )
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if len(timer.times) != steps or len(generated) != steps:
        raise SystemExit(f"grpo: {len(timer.times)} steps timed and {len(generated)} generations, expected {steps}")
    if generated != list(w["step_tokens"]):
        raise SystemExit(f"grpo: completion tokens per step {generated}, plumbline's {w['step_tokens']}")
    for k, (t, n) in enumerate(zip(timer.times, generated)):
        log(f"peer: grpo-step-lora: step {k + 1}{' (warm-up)' if k == 0 else ''}: {n} completion tokens, {t:.3f} s")
    timed = timer.times[1:]
    return sum(timed) / len(timed), sum(generated[1:])


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    threads = int(spec["threads"])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(threads)
    log(f"peer: torch {torch.__version__}, {torch.get_num_threads()} threads")
    seconds, tokens = {}, {}
    for w in spec["workloads"]:
        if w["kind"] != "grpo-step":
            continue
        seconds[w["name"]], tokens[w["name"]] = grpo_step(w, int(spec["iters"]))
        log(f"peer: {w['name']}: {seconds[w['name']]:.3f} s/step")
    json.dump({"seconds": seconds, "tokens": tokens, "torch": torch.__version__}, sys.stdout)


if __name__ == "__main__":
    main()
