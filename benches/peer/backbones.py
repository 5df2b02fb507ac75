#!/usr/bin/env python3
"""PyTorch + transformers peer of benches/backbones.rs: the same workloads on the same token ids.

Usage: backbones.py WORKLOADS.json   (written by the Rust bench; prints {"seconds": {...}} as JSON)

Workload kinds:
- lm-fwd-bwd: AutoModelForCausalLM loaded from the same GGUF file (transformers dequantizes it to
  f32), summed next-token log-probs of every position, backward → seconds per iteration;
- lm-sample: greedy generate() with the KV cache, exactly `new_tokens` new tokens (no early stop);
- bert-encode: BertModel forward + attention-mask mean pooling under inference_mode;
- dpo-step: TRL's DPOTrainer with a peft LoRA adapter on the same pairs' token ids (dpo.py, which
  also counts the real tokens it trained on: "tokens" in the output);
- grpo-step: TRL's GRPOTrainer with a peft LoRA adapter on the same prompts' token ids (grpo.py,
  which also counts the completion tokens it generated: "tokens" in the output).

Timing matches the Rust side: one warm-up, then the median of `iters` iterations (dpo-step, grpo-step:
one warm-up step, then the mean of `iters` steps).
"""
import json
import os
import statistics
import sys
import time


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    threads = int(spec["threads"])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, BertModel

    torch.set_num_threads(threads)
    log(f"peer: torch {torch.__version__}, {torch.get_num_threads()} threads")
    iters = int(spec["iters"])

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    lm_cache = {}

    def causal_lm(folder: str):
        if folder not in lm_cache:
            ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0], dtype=torch.float32)
            lm_cache[folder] = model
        return lm_cache[folder]

    seconds, tokens = {}, {}
    for w in spec["workloads"]:
        name, kind = w["name"], w["kind"]
        if kind == "dpo-step":
            from dpo import dpo_step

            seconds[name], tokens[name] = dpo_step(w, iters)
            log(f"peer: {name}: {seconds[name]:.3f} s/step")
            continue
        if kind == "grpo-step":
            from grpo import grpo_step

            seconds[name], tokens[name] = grpo_step(w, iters)
            log(f"peer: {name}: {seconds[name]:.3f} s/step")
            continue
        ids = torch.tensor(w["ids"], dtype=torch.long)
        mask = torch.ones_like(ids)
        if kind == "lm-fwd-bwd":
            model = causal_lm(w["model"])
            model.train(False)  # no dropout in either implementation

            def step():
                model.zero_grad(set_to_none=True)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                logp = torch.log_softmax(logits.float(), dim=-1)
                picked = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
                picked.sum().backward()

            seconds[name] = timed(step)
        elif kind == "lm-sample":
            model = causal_lm(w["model"])
            model.eval()
            n = int(w["new_tokens"])

            def sample():
                with torch.inference_mode():
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        do_sample=False,
                        max_new_tokens=n,
                        min_new_tokens=n,
                        use_cache=True,
                        pad_token_id=0,
                    )
                assert out.shape[1] == ids.shape[1] + n, out.shape

            seconds[name] = timed(sample)
        elif kind == "bert-encode":
            model = BertModel.from_pretrained(w["model"], dtype=torch.float32, add_pooling_layer=False)
            model.eval()

            def encode():
                with torch.inference_mode():
                    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                    m = mask[..., None].float()
                    (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

            seconds[name] = timed(encode)
        else:
            raise SystemExit(f"unknown workload kind {kind}")
        log(f"peer: {name}: {seconds[name]:.3f} s/iteration")
    json.dump({"seconds": seconds, "tokens": tokens, "torch": torch.__version__}, sys.stdout)


if __name__ == "__main__":
    main()
