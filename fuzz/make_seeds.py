#!/usr/bin/env python3
"""Writes small valid seed files for the fuzz targets (stdlib only):
corpus/gguf_reader/*.gguf, corpus/safetensors_header/*.safetensors, corpus/jsonl_rows/*.jsonl
(the repository's JSONL fixtures plus one row of each shape), corpus/recipe_toml/*.toml (the
shipped recipes), corpus/rm_spec/*.json and corpus/tokenizer_json/*.json.

Run from the fuzz/ folder: python3 make_seeds.py
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", vtype) + payload


def gguf_file(version: int, tensors, with_tokenizer: bool) -> bytes:
    """tensors: list of (name, dims, ggml_type, data bytes)."""
    kvs = [
        gguf_kv("general.architecture", 8, gguf_string("llama")),
        gguf_kv("general.alignment", 4, struct.pack("<I", 32)),
        gguf_kv("llama.context_length", 4, struct.pack("<I", 64)),
        gguf_kv("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
    ]
    if with_tokenizer:
        tokens = ["<|endoftext|>", "H", "e", "l", "o", "He", "ll", "Hell", "Hello", "Ġ", ",", "!"]
        merges = ["H e", "l l", "He ll", "Hell o"]
        arr = lambda items: struct.pack("<IQ", 8, len(items)) + b"".join(gguf_string(t) for t in items)
        kvs += [
            gguf_kv("tokenizer.ggml.model", 8, gguf_string("gpt2")),
            gguf_kv("tokenizer.ggml.pre", 8, gguf_string("smollm")),
            gguf_kv("tokenizer.ggml.tokens", 9, arr(tokens)),
            gguf_kv("tokenizer.ggml.merges", 9, arr(merges)),
            gguf_kv(
                "tokenizer.ggml.token_type",
                9,
                struct.pack("<IQ", 5, len(tokens)) + b"".join(struct.pack("<i", 3 if i == 0 else 1) for i in range(len(tokens))),
            ),
            gguf_kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 0)),
            gguf_kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 0)),
        ]
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    infos = b""
    data = b""
    for name, dims, ggml_type, payload in tensors:
        while len(data) % 32:
            data += b"\0"
        infos += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ggml_type, len(data))
        data += payload
    out = header + infos
    while len(out) % 32:
        out += b"\0"
    return out + data


def q8_0_block(scale: float, qs) -> bytes:
    return struct.pack("<e", scale) + bytes(q & 0xFF for q in qs)


def q4_block(scale: float, minimum, nibbles) -> bytes:
    head = struct.pack("<e", scale) + (struct.pack("<e", minimum) if minimum is not None else b"")
    return head + bytes((nibbles[i] & 0xF) | ((nibbles[i + 16] & 0xF) << 4) for i in range(16))


def safetensors_file(tensors) -> bytes:
    """tensors: list of (name, dtype, shape, data bytes)."""
    header = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    h = json.dumps(header, separators=(",", ":")).encode()
    while len(h) % 8:
        h += b" "
    return struct.pack("<Q", len(h)) + h + data


def write(path: str, content: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def main() -> None:
    g = os.path.join(HERE, "corpus", "gguf_reader")
    f32 = struct.pack("<6f", 1, -2, 3.5, 0, 0.25, -1)
    f16 = struct.pack("<4e", 1, -2, 0.5, 3)
    bf16 = bytes.fromhex("803f0040c0bf0000")
    q8 = q8_0_block(0.5, list(range(-16, 16)))
    q40 = q4_block(0.25, None, [i % 16 for i in range(32)])
    q41 = q4_block(0.25, -1.0, [(3 * i) % 16 for i in range(32)])
    tensors = [
        ("token_embd.weight", [3, 2], 0, f32),
        ("output_norm.weight", [4], 1, f16),
        ("blk.0.attn_norm.weight", [4], 30, bf16),
        ("blk.0.attn_q.weight", [32], 8, q8),
        ("blk.0.attn_k.weight", [32], 2, q40),
        ("blk.0.attn_v.weight", [32], 3, q41),
    ]
    write(os.path.join(g, "tensors_v3.gguf"), gguf_file(3, tensors, False))
    write(os.path.join(g, "tokenizer_v3.gguf"), gguf_file(3, tensors[:1], True))
    write(os.path.join(g, "empty_v2.gguf"), gguf_file(2, [], False))
    s = os.path.join(HERE, "corpus", "safetensors_header")
    write(
        os.path.join(s, "three_dtypes.safetensors"),
        safetensors_file(
            [
                ("embeddings.word_embeddings.weight", "F32", [3, 2], f32),
                ("encoder.layer.0.output.LayerNorm.weight", "F16", [4], f16),
                ("pooler.dense.bias", "BF16", [4], bf16),
            ]
        ),
    )
    write(os.path.join(s, "empty.safetensors"), safetensors_file([]))

    root = os.path.dirname(HERE)
    j = os.path.join(HERE, "corpus", "jsonl_rows")
    fixtures = [os.path.join(root, "datasets", "fixtures"), os.path.join(root, "crates", "bench-harness", "tests", "fixtures")]
    for folder in fixtures:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".jsonl"):
                with open(os.path.join(folder, name), "rb") as src:
                    write(os.path.join(j, name), src.read())
    rows = [
        {"prompt": "p", "chosen": "c", "rejected": "r", "margin": 1.5, "scores": [2, 1], "subset": "s"},
        {"prompt": [{"role": "user", "content": "hi"}], "responses": ["a", "b", "c"], "ranks": [1, 0, 2]},
        {"prompt": "p", "completion": "c", "label": True},
        {"prompt": "p", "steps": ["s1", "s2"], "labels": [1, None]},
        {"prompt": "p", "response": "r"},
        {"prompt": "p", "responses": ["a", "b"]},
        {"id": 3, "prompt": "p", "chosen": ["a", "b"], "rejected": ["c"], "subset": "Ties", "num_correct": 2, "total_completions": 3},
    ]
    body = "\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\r\n\n"
    write(os.path.join(j, "all_shapes.jsonl"), body.encode())
    r = os.path.join(HERE, "corpus", "recipe_toml")
    for name in sorted(os.listdir(os.path.join(root, "recipes"))):
        if name.endswith(".toml"):
            with open(os.path.join(root, "recipes", name), "rb") as src:
                write(os.path.join(r, name), src.read())
    spec = {
        "format_version": 1, "kind": "bert", "base": "/models/minilm", "pooling": "mean",
        "attributes": ["helpful", "safe"], "max_len": 256, "truncation": "left",
        "template": "hh-transcript", "pad_id": 0,
        "lora": None,
        "normalization": {"mean": [0.5, -1.0], "std": [1.0, 2.0], "count": 10},
    }
    write(os.path.join(HERE, "corpus", "rm_spec", "two_attributes.json"), json.dumps(spec, indent=2).encode())
    policy = {
        "format_version": 1, "base": "/work/models/smollm2", "template": "chat-ml", "max_len": 256,
        "lora": {"rank": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    }
    write(os.path.join(HERE, "corpus", "rm_spec", "policy_lora.json"), json.dumps(policy, indent=2).encode())
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", ",", "!", "h", "##ello"]
    wordpiece = {
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 128, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
            for i, t in enumerate(words[:4])
        ],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": {t: i for i, t in enumerate(words)}},
    }
    t = os.path.join(HERE, "corpus", "tokenizer_json")
    write(os.path.join(t, "wordpiece.json"), json.dumps(wordpiece).encode())
    bpe = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {"<|endoftext|>": 0, "H": 1, "e": 2, "l": 3, "o": 4, "He": 5, "ll": 6, "Hell": 7, "Hello": 8, "\u0120": 9, ",": 10, "!": 11},
                  "merges": ["H e", "l l", "He ll", "Hell o"]},
    }
    write(os.path.join(t, "byte_level_bpe.json"), json.dumps(bpe).encode())


if __name__ == "__main__":
    main()
