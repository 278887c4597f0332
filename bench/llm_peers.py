#!/usr/bin/env python3
"""Decoder side-by-side: prompt processing and decode tokens/s of one GGUF in
llama.cpp (llama-cpp-python), transformers (the GGUF dequantised to f32) and
glimpse (its CLI as a child process), the same prompt ids and threads for all.
One JSON line per run set; bench/run_llm.sh interleaves the engines.

    python bench/llm_peers.py --impl llamacpp|transformers|glimpse --gguf FILE \
        [--prompt-tokens 128] [--new-tokens 128] [--runs N] [--threads 2] \
        [--glimpse target/release/glimpse]

Prompt: a fixed English text, tokenized by llama.cpp (no BOS: SmolLM2 adds
none) and cut to exactly --prompt-tokens ids; its detokenized text must
tokenize back to the same ids. llama.cpp and transformers get those ids,
glimpse gets the text (and must count the same number of tokens).

Timing, the same for all three: "new tokens" N = 1 token from the prompt
pass plus N - 1 single-token decode steps (glimpse's own `generate` loop).
prompt tok/s = prompt ids / time of the one prompt forward; decode tok/s =
(N - 1) / time inside the decode forwards (greedy argmax outside the clock,
no eos stop). llama.cpp and transformers warm up once per process and then
run --runs times; glimpse runs --runs fresh processes (model load is not in
its timers but is in its RSS).

Peak RSS: llama.cpp and transformers report ru_maxrss of their own Python
process (interpreter, libraries, and for llama.cpp the llama_cpp module; torch
is not imported there); glimpse reports the child's max RSS from
/usr/bin/time when present, else getrusage(RUSAGE_CHILDREN) of this
(torch-free) process.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

TEXT = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of salt and wind. "
    "Every evening the keeper climbed the narrow spiral stairs, one hundred and twelve steps, to light the lamp "
    "that warned ships away from the rocks below. He had done this for thirty years, through storms that shook "
    "the windows and calm nights when the sea lay flat as glass. The village below had changed in that time: "
    "the fishing boats were fewer, the harbour had been rebuilt, and the children he once watched playing on the "
    "beach now brought their own children to see the light. One autumn a letter arrived from the coastal "
    "authority. The lighthouse was to be automated, the letter said, and his services would no longer be needed "
    "after the end of the year. He read it twice, folded it carefully, and put it in the drawer of his desk. "
    "That night he climbed the stairs as always, but he stayed at the top long after the lamp was lit, watching "
    "the beam sweep across the dark water and thinking about all the ships that had passed safely because of it."
)


def rss_mib_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompt_ids(gguf: str, n: int):
    """(ids, text): the first n llama.cpp ids of TEXT, and their text."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    ids = vocab.tokenize(TEXT.encode(), add_bos=False, special=False)
    if len(ids) < n:
        sys.exit(f"the fixed text has only {len(ids)} tokens, fewer than --prompt-tokens {n}")
    ids = ids[:n]
    text = vocab.detokenize(ids).decode()
    back = vocab.tokenize(text.encode(), add_bos=False, special=False)
    if back != ids:
        sys.exit(f"prompt does not round-trip: {len(ids)} ids -> {len(back)} ids")
    del vocab
    return ids, text


def run_llamacpp(a, ids):
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=a.gguf, n_threads=a.threads, n_threads_batch=a.threads,
                          n_ctx=512, n_batch=512, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits():
        # Without logits_all only the batch's last row is computed and returned.
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def once():
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - t
        tok = int(np.argmax(last_logits()))
        out, decode = [tok], 0.0
        for _ in range(a.new_tokens - 1):
            t = time.perf_counter()
            llm.eval([tok])
            decode += time.perf_counter() - t
            tok = int(np.argmax(last_logits()))
            out.append(tok)
        return len(ids) / prefill, (a.new_tokens - 1) / decode, out

    once()  # warm-up
    runs = [once() for _ in range(a.runs)]
    return {
        "impl": "llama.cpp",
        "version": f"llama-cpp-python {llama_cpp.__version__}",
        "prompt_tok_per_s": [r[0] for r in runs],
        "decode_tok_per_s": [r[1] for r in runs],
        "tokens": runs[-1][2],
        "peak_rss_mib": rss_mib_self(),
    }


def run_transformers(a, ids):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    d, name = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    prompt = torch.tensor([ids])

    def once():
        with torch.inference_mode():
            t = time.perf_counter()
            o = model(input_ids=prompt, use_cache=True)
            prefill = time.perf_counter() - t
            past = o.past_key_values
            tok = int(o.logits[0, -1].argmax())
            out, decode = [tok], 0.0
            for _ in range(a.new_tokens - 1):
                t = time.perf_counter()
                o = model(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
                decode += time.perf_counter() - t
                past = o.past_key_values
                tok = int(o.logits[0, -1].argmax())
                out.append(tok)
        return len(ids) / prefill, (a.new_tokens - 1) / decode, out

    once()  # warm-up
    runs = [once() for _ in range(a.runs)]
    return {
        "impl": "transformers",
        "version": f"transformers {transformers.__version__}, torch {torch.__version__}, f32",
        "prompt_tok_per_s": [r[0] for r in runs],
        "decode_tok_per_s": [r[1] for r in runs],
        "tokens": runs[-1][2],
        "peak_rss_mib": rss_mib_self(),
    }


def run_glimpse(a, ids, text):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), CANDLE_NUM_THREADS=str(a.threads))
    cmd = [a.glimpse, "generate", "--model", a.gguf, "--max-tokens", str(a.new_tokens), "--ignore-eos", "--json", text]
    timer = shutil.which("time", path="/usr/bin")
    prompt, decode, rss, out = [], [], [], None
    for _ in range(a.runs):
        with tempfile.NamedTemporaryFile("r") as f:
            full = [timer, "-f", "%M", "-o", f.name, *cmd] if timer else cmd
            p = subprocess.run(full, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"glimpse failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
            rss.append(int(f.read().split()[-1]) / 1024 if timer
                       else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        out = json.loads(p.stdout.strip().splitlines()[-1])
        if abs(out["prompt_tokens"] - len(ids)) > 2:
            sys.exit(f"glimpse counts {out['prompt_tokens']} prompt tokens, llama.cpp {len(ids)}")
        prompt.append(out["prompt_tok_per_s"])
        decode.append(out["decode_tok_per_s"])
    return {
        "impl": "glimpse",
        "version": subprocess.run([a.glimpse, "--version"], capture_output=True, text=True).stdout.strip(),
        "glimpse_prompt_tokens": out["prompt_tokens"],
        "prompt_tok_per_s": prompt,
        "decode_tok_per_s": decode,
        "tokens": out["tokens"],
        "peak_rss_mib": max(rss),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impl", required=True, choices=["llamacpp", "transformers", "glimpse"])
    p.add_argument("--gguf", required=True)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--glimpse", default="target/release/glimpse")
    a = p.parse_args()
    if a.new_tokens < 2:
        sys.exit("--new-tokens must be at least 2 (one decode step)")
    ids, text = prompt_ids(a.gguf, a.prompt_tokens)
    if a.impl == "llamacpp":
        r = run_llamacpp(a, ids)
    elif a.impl == "transformers":
        r = run_transformers(a, ids)
    else:
        r = run_glimpse(a, ids, text)
    r.update(threads=a.threads, prompt_tokens=len(ids), new_tokens=a.new_tokens, runs=a.runs)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
