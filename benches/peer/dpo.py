#!/usr/bin/env python3
"""TRL peer of the `dpo-step-lora` workload of benches/backbones.rs: DPO training steps with TRL's
own DPOTrainer (trl + peft) on the plumbline side's recipe, pairs and token ids.

Usage: dpo.py WORKLOADS.json   (the spec the Rust bench writes; prints {"seconds": {...},
"tokens": {...}} as JSON, like backbones.py, which also runs this workload through `dpo_step`)

What runs, from the workload's spec (recipes/dpo-smollm2-hh.toml as plumbline reads it):
- the policy: AutoModelForCausalLM from the same GGUF file (transformers dequantizes it to f32),
  wrapped by DPOTrainer with a peft LoraConfig of the recipe's rank, alpha, dropout and target
  modules; the reference is TRL's own for PEFT policies: the same model with the adapter
  disabled;
- the objective: the recipe's [objective] (TRL DPOConfig field names, e.g. loss_type sigmoid,
  beta 0.1), max_length, and AdamW (TRL's default optimizer) with the recipe's lr, betas, eps,
  weight decay, warm-up, schedule and gradient clipping, in f32 (bf16 and gradient
  checkpointing off, as plumbline runs);
- the data: one micro-batch of pairs per optimizer step (no gradient accumulation), the pairs in
  order (sequential sampler), step k on pairs k*B .. (k+1)*B. Each batch holds plumbline's token
  ids (ChatML prompt rendered by plumbline, prompt-first truncation to max_len), laid out as TRL's
  DataCollatorForPreference lays out a batch: the B chosen rows, then the B rejected rows, right
  padded, attention mask on the real tokens, completion mask on the response tokens. (TRL's own
  tokenization of the same pairs with the model's chat template is also run, and how many tokens
  it would give is logged: SmolLM2's template adds a default system turn and a newline after
  each <|im_end|>, and TRL truncates completions rather than prompts.)

Timing: a TrainerCallback takes the time from on_step_begin to on_step_end of each optimizer step
(policy forward, reference forward, loss, backward, clipping, optimizer and scheduler step,
zero_grad). The first step is the warm-up; the figure is the total time of the next `iters`
steps, reported as seconds per step, with the real (non-pad) tokens those steps trained on.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class SequenceCollator:
    """Batches plumbline's encoded pairs in DataCollatorForPreference's layout (see the module
    docs), each sequence with its own prompt length (plumbline's prompt-first truncation can
    shorten the chosen and the rejected prompt differently). Records the real tokens of each
    batch it makes."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.tokens = []

    def __call__(self, examples):
        import torch

        seqs = [(e["chosen_ids"], e["chosen_prompt_len"]) for e in examples]
        seqs += [(e["rejected_ids"], e["rejected_prompt_len"]) for e in examples]
        width = max(len(ids) for ids, _ in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        completion_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, (ids, prompt_len) in enumerate(seqs):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
            completion_mask[row, prompt_len : len(ids)] = 1
        self.tokens.append(int(attention_mask.sum()))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def _rows(w):
    rows = []
    for p in w["pairs"]:
        rows.append(
            {
                "chosen_ids": p["chosen"]["ids"],
                "chosen_prompt_len": p["chosen"]["prompt_len"],
                "rejected_ids": p["rejected"]["ids"],
                "rejected_prompt_len": p["rejected"]["prompt_len"],
            }
        )
    return rows


def _check_layout(rows, pad_id, max_length, micro):
    """For the batches whose chosen and rejected prompts are the same tokens, the batch must be
    exactly what TRL's DataCollatorForPreference makes of (prompt_ids, chosen_ids, rejected_ids)."""
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    ours = SequenceCollator(pad_id)
    trl = DataCollatorForPreference(pad_token_id=pad_id, max_length=max_length)
    checked = 0
    for start in range(0, len(rows), micro):
        batch = rows[start : start + micro]
        examples = []
        for r in batch:
            prompt = r["chosen_ids"][: r["chosen_prompt_len"]]
            if prompt != r["rejected_ids"][: r["rejected_prompt_len"]]:
                break
            examples.append(
                {
                    "prompt_ids": prompt,
                    "chosen_ids": r["chosen_ids"][len(prompt) :],
                    "rejected_ids": r["rejected_ids"][len(prompt) :],
                }
            )
        else:
            a, b = ours(batch), trl(examples)
            for key in ("input_ids", "attention_mask", "completion_mask"):
                if not torch.equal(a[key], b[key]):
                    raise SystemExit(f"dpo: batch at pair {start}: {key} differs from DataCollatorForPreference's")
            checked += 1
    return checked


def dpo_step(w, iters: int):
    """Runs the workload `w`; returns (seconds per timed step, real tokens of the timed steps).
    What Trainer and peft print goes to stderr: stdout carries only the result's JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        return _dpo_step(w, iters)


def _dpo_step(w, iters: int):
    import torch
    import peft
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    folder = w["model"]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0], dtype=torch.float32)
    # transformers dequantizes the GGUF file into plain f32 nn.Linear weights, but keeps the model
    # marked as GGUF-quantized, which Trainer refuses to train: drop the marker.
    if {p.dtype for p in model.parameters()} != {torch.float32}:
        raise SystemExit("dpo: the model did not load as f32")
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0])
    micro = int(w["micro_batch"])
    max_length = int(w["max_length"])
    pad_id = int(w["pad_id"])
    steps = iters + 1
    rows = _rows(w)
    if len(rows) != steps * micro:
        raise SystemExit(f"dpo: {len(rows)} pairs for {steps} steps of {micro}")
    checked = _check_layout(rows, pad_id, max_length, micro)
    log(f"peer: dpo: {checked} of {steps} batches checked equal to DataCollatorForPreference's")

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
    schedules = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    ratio = float(train["warmup_ratio"])
    dpo_fields = {f.name for f in dataclasses.fields(DPOConfig)}
    objective = {k: v for k, v in w["objective"].items() if k in dpo_fields}
    ignored = sorted(set(w["objective"]) - dpo_fields)
    if ignored:
        raise SystemExit(f"dpo: objective fields TRL's DPOConfig does not have: {ignored}")
    out_dir = tempfile.mkdtemp(prefix="plumb-bench-dpo-")
    args = DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=1,
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
        max_length=max_length,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **objective,
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []
            self.start = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    collator = SequenceCollator(pad_id)
    # The pairs as text (conversational: the prompt's turns, the final assistant turn as the
    # completion): DPOTrainer tokenizes them with the model's chat template, for the log below.
    text = Dataset.from_list(w["text_pairs"])
    trainer = DPOTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=text,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    own = trainer.train_dataset
    own_tokens = [
        min(len(r["prompt_ids"]) + len(r["chosen_ids"]), max_length)
        + min(len(r["prompt_ids"]) + len(r["rejected_ids"]), max_length)
        for r in own
    ]
    given = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    log(
        f"peer: dpo: TRL's own tokenization (the model's chat template) of these {len(rows)} pairs: "
        f"{len(own)} pairs kept, {sum(own_tokens)} tokens; the timed steps use plumbline's ids: {given} tokens"
    )
    # Train on the plumbline side's token ids.
    trainer.train_dataset = Dataset.from_list(rows)
    trainer.model.print_trainable_parameters()
    log(
        f"peer: dpo: trl {trl.__version__}, peft {peft.__version__}, optimizer {args.optim}, "
        f"{steps} steps of {micro} pairs (1 warm-up)"
    )
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if len(timer.times) != steps or len(collator.tokens) != steps:
        raise SystemExit(f"dpo: {len(timer.times)} steps timed and {len(collator.tokens)} batches made, expected {steps}")
    if collator.tokens != list(w["step_tokens"]):
        raise SystemExit(f"dpo: real tokens per step {collator.tokens}, plumbline's {w['step_tokens']}")
    for k, (t, n) in enumerate(zip(timer.times, collator.tokens)):
        log(f"peer: dpo-step-lora: step {k + 1}{' (warm-up)' if k == 0 else ''}: {n} tokens, {t:.3f} s")
    timed = timer.times[1:]
    return sum(timed) / len(timed), sum(collator.tokens[1:])


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
        if w["kind"] != "dpo-step":
            continue
        seconds[w["name"]], tokens[w["name"]] = dpo_step(w, int(spec["iters"]))
        log(f"peer: {w['name']}: {seconds[w['name']]:.3f} s/step")
    json.dump({"seconds": seconds, "tokens": tokens, "torch": torch.__version__}, sys.stdout)


if __name__ == "__main__":
    main()
