#!/usr/bin/env python3
"""PyTorch + transformers peer of plumbline's reward-model trainer (`plumb train-rm`).

Reads the same TOML recipe as the Rust trainer (e.g. recipes/rm-minilm-hh.toml) and trains the
same Bradley–Terry reward model on HH-RLHF harmless-base, then scores the dev split.

Usage:
  rm_bt.py --recipe FILE [--data-dir DIR] [--threads N] [--limit N] [--out FILE.json]

- data: <data_dir>/hh-rlhf/harmless-base.{train,dev}.jsonl, rows {"chosen", "rejected"}; the text
  scored is the full transcript string as stored in the file; --limit N keeps the first N pairs of
  each split;
- model: BertModel (no pooler) from the recipe's HF folder, mean (attention-mask) or CLS pooling,
  head nn.Linear(hidden, len(attributes)) (a scalar when there is one attribute; weights
  N(0, model.head_init_std = 0.02), bias 0, as plumbline), dropout as in config.json during
  training; with several attributes the pair is compared on the summed reward;
- tokenization: the tokenizer.json's own padding/truncation switched off, then `truncation=True,
  max_length=max_len`, truncation side from the recipe, special tokens added, right padding to the
  longest sequence of the micro-batch;
- objective: mean(-logsigmoid(r_chosen - r_rejected)); chosen and rejected of a micro-batch go
  through one forward (concatenated);
- optimizer: AdamW(lr, weight_decay, betas (0.9, 0.999), eps 1e-8) over all parameters, warmup of
  ceil(warmup_ratio * total_steps) steps then linear / cosine / constant (transformers'
  get_*_schedule_with_warmup), clip_grad_norm_(max_grad_norm), gradient accumulation over
  micro-batches (each micro-batch's loss scaled by its share of the step's pairs), a seeded
  shuffle each epoch.

Prints one JSON object (also written to --out): dev accuracy (chosen strictly greater), train wall
seconds and pairs/s (training loop only), dev scoring pairs/s (eval mode, inference_mode, batches of
micro_batch_size pairs, scoring wall time only), final train loss, torch version, threads, pairs.
"""
import argparse
import json
import math
import os
import sys
import time
import tomllib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def from_root(path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


def load_pairs(path: str, limit: int | None) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            pairs.append((row["chosen"], row["rejected"]))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True, help="TOML recipe (the one `plumb train-rm` reads)")
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("PLUMB_DATA_DIR", "../shared/datasets"),
        help="datasets root; default $PLUMB_DATA_DIR or ../shared/datasets",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--limit", type=int, default=None, help="keep only the first N pairs of each split")
    ap.add_argument("--out", default=None, help="also write the JSON figures here")
    args = ap.parse_args()

    threads = max(1, args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from transformers import (
        BertModel,
        PreTrainedTokenizerFast,
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    torch.set_num_threads(threads)

    with open(args.recipe, "rb") as f:
        recipe = tomllib.load(f)
    m, d, o, t = recipe["model"], recipe["data"], recipe.get("objective", {}), recipe["train"]
    if o.get("kind", "bradley-terry") != "bradley-terry":
        sys.exit(f"rm_bt.py: objective.kind {o.get('kind')!r} is not supported (bradley-terry only)")
    for part in ("train", "eval"):
        if d[part].get("source") != "hh-rlhf":
            sys.exit(f"rm_bt.py: data.{part} source {d[part].get('source')!r} is not supported (hh-rlhf only)")
    pooling = m.get("pooling", "mean")
    if pooling not in ("mean", "cls"):
        sys.exit(f"rm_bt.py: pooling {pooling!r} is not supported (mean | cls)")
    schedule = t.get("schedule", "linear")
    if schedule not in ("linear", "cosine", "constant"):
        sys.exit(f"rm_bt.py: schedule {schedule!r} is not supported (linear | cosine | constant)")
    max_len = int(m.get("max_len", 256))
    head_init_std = float(m.get("head_init_std", 0.02))
    truncation_side = m.get("truncation", "left")
    attributes = list(m.get("attributes", ["reward"]))
    epochs = int(t.get("epochs", 1))
    batch_size = int(t["batch_size"])
    micro = int(t.get("micro_batch_size", batch_size))
    lr = float(t["lr"])
    weight_decay = float(t.get("weight_decay", 0.0))
    warmup_ratio = float(t.get("warmup_ratio", 0.0))
    max_grad_norm = float(t.get("max_grad_norm", 0.0))
    seed = int(t.get("seed", 0))

    log(f"peer: torch {torch.__version__}, {torch.get_num_threads()} threads, recipe {args.recipe}")
    torch.manual_seed(seed)

    # Data.
    # A relative --data-dir is taken from the working directory when it exists there, else from
    # the repo root (so the default ../shared/datasets works from anywhere).
    data_dir = args.data_dir if os.path.isdir(args.data_dir) else from_root(args.data_dir)
    hh = os.path.join(data_dir, "hh-rlhf")
    def source_limit(part):
        # The recipe's data.<part>.limit (0 = all) and --limit: the smaller one that is set.
        limits = [x for x in (int(d[part].get("limit", 0)), args.limit or 0) if x > 0]
        return min(limits) if limits else None

    train = load_pairs(os.path.join(hh, f"harmless-base.{d['train']['split']}.jsonl"), source_limit("train"))
    dev = load_pairs(os.path.join(hh, f"harmless-base.{d['eval']['split']}.jsonl"), source_limit("eval"))
    log(f"peer: {len(train)} train pairs, {len(dev)} dev pairs from {hh}")

    # Tokenizer: the file's own fixed padding / truncation off; per-call settings below.
    backbone = from_root(m["backbone"])
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(backbone, "tokenizer.json"),
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    tok._tokenizer.no_padding()
    tok._tokenizer.no_truncation()
    tok.truncation_side = truncation_side
    tok.padding_side = "right"

    def encode(texts: list[str]):
        return tok(
            texts,
            truncation=True,
            max_length=max_len,
            add_special_tokens=True,
            padding="longest",
            return_tensors="pt",
        )

    # Model.
    class RewardModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(backbone, add_pooling_layer=False, dtype=torch.float32)
            self.head = nn.Linear(self.bert.config.hidden_size, len(attributes))
            # As plumbline: weights ~ N(0, head_init_std), bias 0.
            nn.init.normal_(self.head.weight, mean=0.0, std=head_init_std)
            nn.init.zeros_(self.head.bias)

        def forward(self, enc) -> torch.Tensor:
            mask = enc["attention_mask"]
            h = self.bert(
                input_ids=enc["input_ids"],
                attention_mask=mask,
                token_type_ids=enc.get("token_type_ids"),
            ).last_hidden_state
            if pooling == "cls":
                pooled = h[:, 0]
            else:
                w = mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
            r = self.head(pooled)
            return r.squeeze(-1) if r.shape[-1] == 1 else r

    model = RewardModel()
    if len(attributes) > 1:
        # Several attributes: the pair's preference is judged on the summed reward.
        def reward(r: torch.Tensor) -> torch.Tensor:
            return r.sum(-1)
    else:
        def reward(r: torch.Tensor) -> torch.Tensor:
            return r

    def pair_rewards(batch: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [c for c, _ in batch] + [r for _, r in batch]
        out = reward(model(encode(texts)))
        n = len(batch)
        return out[:n], out[n:]

    steps_per_epoch = math.ceil(len(train) / batch_size)
    total_steps = steps_per_epoch * epochs
    warmup_steps = math.ceil(warmup_ratio * total_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    if schedule == "linear":
        sched = get_linear_schedule_with_warmup(opt, warmup_steps, total_steps)
    elif schedule == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, warmup_steps, total_steps)
    else:
        sched = get_constant_schedule_with_warmup(opt, warmup_steps)
    log(f"peer: {total_steps} steps ({steps_per_epoch}/epoch x {epochs}), warmup {warmup_steps}, {schedule}")

    # Training loop.
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    pairs_done = 0
    final_loss = float("nan")
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            n_step = len(idx)
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for k in range(0, n_step, micro):
                mb = [train[i] for i in idx[k : k + micro]]
                rc, rr = pair_rewards(mb)
                loss = -F.logsigmoid(rc - rr).mean()
                (loss * (len(mb) / n_step)).backward()
                step_loss += loss.item() * len(mb) / n_step
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            pairs_done += n_step
            final_loss = step_loss
            if step % 10 == 0 or step == total_steps:
                el = time.perf_counter() - t0
                log(
                    f"peer: epoch {epoch + 1} step {step}/{total_steps} loss {step_loss:.4f} "
                    f"lr {sched.get_last_lr()[0]:.3e} {pairs_done / el:.2f} pairs/s"
                )
    train_s = time.perf_counter() - t0

    # Dev scoring.
    model.eval()
    correct = 0
    t1 = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(dev), micro):
            rc, rr = pair_rewards(dev[k : k + micro])
            correct += int((rc > rr).sum().item())
    score_s = time.perf_counter() - t1

    figures = {
        "recipe": args.recipe,
        "dev_accuracy": correct / len(dev) if dev else float("nan"),
        "dev_pairs": len(dev),
        "train_pairs": len(train),
        "pairs_trained": pairs_done,
        "steps": step,
        "epochs": epochs,
        "train_wall_s": train_s,
        "train_pairs_per_s": pairs_done / train_s if train_s > 0 else float("nan"),
        "score_wall_s": score_s,
        "score_pairs_per_s": len(dev) / score_s if score_s > 0 else float("nan"),
        "final_train_loss": final_loss,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(figures, indent=2)
    print(text, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
