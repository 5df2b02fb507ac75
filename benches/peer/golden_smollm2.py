"""Golden values of `plumb logprobs` for extra texts, computed by transformers itself.

Writes a file in the layout of `../shared/golden/smollm2.json` (see its README): for each text the
ids of the GGUF tokenizer (no BOS), `token_logprobs[i]` = log p(ids[i+1] | ids[..=i]) and the
argmax next token after the last id. Used for the committed `tests/golden/smollm2_extra.json`
(one-token texts, which the shared file lacks), so the parity test covers them against the peer.

    benches/peer/.venv/bin/python benches/peer/golden_smollm2.py models/smollm2 \
        tests/golden/smollm2_extra.json "Hello" "<|im_start|>" "The"
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    folder, out, *texts = sys.argv[1:]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0])
    model.eval()
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        token_logprobs = [logprobs[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
        rows.append(
            {
                "text": text,
                "ids": ids,
                "token_logprobs": token_logprobs,
                "argmax_next_token": int(logits[-1].argmax().item()),
            }
        )
    golden = {
        "model": f"{ggufs[0]} dequantized to float32 by transformers' GGUF loader",
        "reference": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}",
        "note": "written by benches/peer/golden_smollm2.py; layout of ../shared/golden/smollm2.json",
        "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
