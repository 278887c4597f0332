#!/usr/bin/env python3
"""Writes fixtures/smollm2/reference.json: what llama.cpp and transformers do with the real
SmolLM2-135M-Instruct Q4_1 GGUF (dev-only, run by hand).

    GGUF=$(scripts/fetch_smollm2.sh)
    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_smollm2_reference.py "$GGUF"

(the argument defaults to ${GLIMPSE_CACHE:-~/.cache/glimpse}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).
Versions are pinned in scripts/dev/requirements.txt (llama-cpp-python builds llama.cpp from
source: set CMAKE_BUILD_PARALLEL_LEVEL=2).

reference.json:
    gguf{file, sha256, size, chat_template, metadata}
                                              chat_template: metadata tokenizer.chat_template;
                                              metadata: a few scalar GGUF keys, plus the
                                              ggml types per tensor kind (blk.N.<kind>)
    versions{torch, transformers, tokenizers, gguf, llama_cpp_python}
    prompt{messages, text, ids}               the single user message rendered with the GGUF's
                                              template by transformers' GGUF tokenizer
                                              (add_generation_prompt=True), and its ids
    llama_cpp{n_threads, n_ctx, seed, max_new_tokens, generated_ids, tokens, text,
              stopped_at_eos, steps[{top2_ids, top2_logits, margin}],
              chat_completion_text}
                                              greedy from exactly prompt.ids (argmax of the
                                              logits llama.cpp returns after each eval);
                                              tokens = per-token text pieces
    transformers{dtype, max_new_tokens, generated_ids, tokens, text, stopped_at_eos,
                 steps[{top2_ids, top2_logits, margin}], first_step_top20{ids, logits}}
                                              AutoModelForCausalLM.from_pretrained(gguf_file=,
                                              dtype=float32) i.e. dequantised weights,
                                              model.generate(do_sample=False)
    agree_prefix_len                          how many leading generated ids (a) and (b) share
    tokenize[{text, ids_no_special, ids_with_special, tokens_no_special, decoded,
              llama_cpp_ids_no_special, llama_cpp_ids_with_bos, llama_cpp_agrees}]
                                              transformers' GGUF tokenizer, and llama.cpp's
                                              tokenizer on the same strings
    eos_token_id{tokenizer, generation_config}
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "smollm2"
DEFAULT_GGUF = Path(os.environ.get("GLIMPSE_CACHE", Path.home() / ".cache" / "glimpse")) / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MAX_NEW_TOKENS = 32
SEED = 1234
N_CTX = 512
N_THREADS = 2

TOKENIZE_TEXTS = [
    "The capital of France is Paris.",
    "  leading and trailing spaces  ",
    "12345",
    "def f(x):\n\treturn x + 1\n",
    "café 中文 🙂",
    "<|im_start|>user\nHi<|im_end|>",
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def gguf_field(reader: gguf.GGUFReader, key: str):
    field = reader.fields[key]
    return field.contents()


def step_info(logits) -> dict:
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    v, i = torch.topk(logits, 2)
    return {"top2_ids": [int(i[0]), int(i[1])], "top2_logits": [float(v[0]), float(v[1])], "margin": float(v[0] - v[1])}


def load_llama_cpp(path: Path):
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=N_CTX, n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=SEED,
        logits_all=True, verbose=False,
    )


def run_llama_cpp(llm, prompt_ids, eos_ids, tok):
    llm.reset()
    llm.eval(prompt_ids)
    generated, steps = [], []
    for _ in range(MAX_NEW_TOKENS):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        info = step_info(logits)
        steps.append(info)
        nxt = int(np.argmax(logits))
        assert nxt == info["top2_ids"][0]
        generated.append(nxt)
        if nxt in eos_ids:
            break
        llm.eval([nxt])
    # llama.cpp's own greedy sampler on the same ids must pick the same tokens.
    llm.reset()
    sampled = []
    for t in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        sampled.append(int(t))
        if t in eos_ids or len(sampled) >= MAX_NEW_TOKENS:
            break
    chat = llm.create_chat_completion(
        messages=MESSAGES, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=MAX_NEW_TOKENS,
        seed=SEED,
    )
    return {
        "n_threads": N_THREADS,
        "n_ctx": N_CTX,
        "seed": SEED,
        "max_new_tokens": MAX_NEW_TOKENS,
        "generated_ids": generated,
        "tokens": [tok.decode([t]) for t in generated],
        "text": tok.decode(generated, skip_special_tokens=True),
        "llama_cpp_detokenized": llm.detokenize(generated).decode("utf-8", errors="replace"),
        "stopped_at_eos": generated[-1] in eos_ids,
        "steps": steps,
        "sampler_top_k1_ids": sampled,
        "sampler_matches_argmax": sampled == generated,
        "chat_completion_text": chat["choices"][0]["message"]["content"],
        "chat_completion_finish_reason": chat["choices"][0]["finish_reason"],
    }


def run_transformers(directory: Path, name: str, prompt_ids, tok, eos_ids):
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    x = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
            return_dict_in_generate=True, output_logits=True,
        )
    generated = [int(t) for t in out.sequences[0, len(prompt_ids) :]]
    steps = [step_info(l[0]) for l in out.logits]
    v, i = torch.topk(out.logits[0][0].float(), 20)
    return {
        "dtype": "float32",
        "max_new_tokens": MAX_NEW_TOKENS,
        "generated_ids": generated,
        "tokens": [tok.decode([t]) for t in generated],
        "text": tok.decode(generated, skip_special_tokens=True),
        "stopped_at_eos": generated[-1] in eos_ids,
        "steps": steps,
        "first_step_top20": {"ids": i.tolist(), "logits": v.tolist()},
        "generation_config_eos_token_id": model.generation_config.eos_token_id,
    }


def main():
    path = Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF).resolve()
    directory, name = path.parent, path.name

    reader = gguf.GGUFReader(str(path))
    chat_template = gguf_field(reader, "tokenizer.chat_template")
    metadata = {
        k: gguf_field(reader, k)
        for k in [
            "general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.add_space_prefix", "llama.rope.dimension_count",
            "llama.context_length", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
            "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "general.file_type",
        ]
        if k in reader.fields
    }
    tensor_types = {}
    for t in reader.tensors:
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else t.name.rsplit(".", 1)[0]
        tensor_types.setdefault(kind, set()).add(t.tensor_type.name)
    metadata["tensor_types"] = {k: sorted(v) for k, v in sorted(tensor_types.items())}
    metadata["tensor_count"] = len(reader.tensors)

    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert prompt_ids == tok(text, add_special_tokens=False)["input_ids"]
    eos_ids = {tok.eos_token_id}

    print(f"prompt {text!r} -> {len(prompt_ids)} ids", file=sys.stderr)
    tf = run_transformers(directory, name, prompt_ids, tok, eos_ids)
    print(f"transformers: {tf['text']!r}", file=sys.stderr)
    llm = load_llama_cpp(path)
    lc = run_llama_cpp(llm, prompt_ids, eos_ids, tok)
    print(f"llama.cpp:    {lc['text']!r}", file=sys.stderr)
    print(f"llama.cpp chat completion: {lc['chat_completion_text']!r}", file=sys.stderr)

    agree = 0
    for a, b in zip(lc["generated_ids"], tf["generated_ids"]):
        if a != b:
            break
        agree += 1

    toks = []
    for t in TOKENIZE_TEXTS:
        no_sp = tok(t, add_special_tokens=False)["input_ids"]
        with_sp = tok(t, add_special_tokens=True)["input_ids"]
        # llama.cpp's own tokenizer on the same file (special=True: parse <|...|> as special tokens).
        lc_no_sp = llm.tokenize(t.encode(), add_bos=False, special=True)
        lc_with_sp = llm.tokenize(t.encode(), add_bos=True, special=True)
        toks.append(
            {
                "text": t,
                "ids_no_special": no_sp,
                "ids_with_special": with_sp,
                "tokens_no_special": tok.convert_ids_to_tokens(no_sp),
                "decoded": tok.decode(no_sp),
                "llama_cpp_ids_no_special": lc_no_sp,
                "llama_cpp_ids_with_bos": lc_with_sp,
                "llama_cpp_agrees": lc_no_sp == no_sp,
            }
        )

    ref = {
        "gguf": {"file": name, "sha256": sha256(path), "size": path.stat().st_size, "chat_template": chat_template,
                 "metadata": metadata},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "gguf": getattr(gguf, "__version__", None) or __import__("importlib.metadata").metadata.version("gguf"),
            "llama_cpp_python": llama_cpp.__version__,
        },
        "special": {
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        },
        "prompt": {"messages": MESSAGES, "text": text, "ids": prompt_ids},
        "llama_cpp": lc,
        "transformers": tf,
        "agree_prefix_len": agree,
        "tokenize": toks,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {(OUT / 'reference.json').relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
