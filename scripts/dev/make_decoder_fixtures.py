#!/usr/bin/env python3
"""Writes the tiny Llama-family decoder parity fixtures under fixtures/decoders/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_decoder_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. The output is deterministic
(fixed seeds, f32, eager attention on CPU) and committed, so CI compares
against it without Python.

Each fixtures/decoders/<name>/ is an HF model directory written by
save_pretrained (config.json, model.safetensors, generation_config.json,
tokenizer.json, tokenizer_config.json, chat_template.jinja) plus:

reference.safetensors (all f32):
    batch_logits    (B, T, V)  forward pass over all prompts, left-padded
                               (logits at pad positions are meaningless: compare
                               only where batch.attention_mask is 1)
    logits_<i>      (1, T_i, V) forward pass over prompt i alone, unpadded

reference.json:
    model, versions{torch, transformers, tokenizers}
    special{bos_token, bos_token_id, eos_token, eos_token_id, pad_token,
            pad_token_id, generation_eos_token_id}  (the last as written in
            generation_config.json: an int or a list)
    prompts               [str]; the prompts as text
    prompt_ids            [[int]]; tokenizer(prompt) ids, special tokens
                          included (llama: leading <s>; qwen2: none)
    batch{input_ids, attention_mask, position_ids, pad_token_id}
                          the left-padded batch of all prompts;
                          position_ids = clamp(cumsum(mask) - 1, min=0), passed
                          explicitly to the forward pass
    greedy{max_new_tokens, eos_token_id, min_margin,
           single: [{generated_ids, stopped_at_eos, margins, top2_ids}],
           batch: {generated_ids (raw, B x steps, rows that hit eos are
                   continued with pad_token_id), trimmed (each row cut after
                   its first eos), margins (B x steps), equals_single}}
                          model.generate(do_sample=False); generated ids only
                          (prompt excluded); margins = top1 - top2 of the raw
                          logits at each step
    chat[{name, messages, add_generation_prompt, text, ids}] or
        [{name, messages, add_generation_prompt, error}] when the template
                          raised (llama: roles that do not alternate);
                          ids = apply_chat_template(tokenize=True), i.e. the
                          rendered text tokenised without adding specials
    tokenize[{text, ids_with_special, ids_no_special, tokens_no_special,
              decoded, decoded_skip_special}]
                          decoded = decode(ids_with_special), keeping specials;
                          decoded_skip_special skips them
    min_greedy_margin     the minimum top-2 margin over every greedy step
"""

import json
import sys
from pathlib import Path

import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "decoders"

MAX_NEW_TOKENS = 24

# Weight seeds, chosen so that the smallest top-2 logit margin over all greedy steps is well above
# f32 noise (see min_greedy_margin in each reference.json).
STD = 0.35  # weight std (also written as initializer_range)
SEEDS = {"llama-gqa-tied": 2, "llama-untied-llama3": 2, "qwen2": 1}

CORPUS = """
The old lighthouse stood at the end of the harbour wall, and every evening the keeper climbed
its spiral stairs to light the lamp. Ships that passed in the night saw the beam sweep across
the water, slow and steady, and they knew that the rocks were close. In winter the storms came
from the north, and the waves broke over the wall with a sound like thunder.

A small village lay behind the harbour. There was a bakery that opened before dawn, a school
with a red door, and a market on Saturday mornings where farmers sold apples, cheese, bread and
honey. The children ran along the beach after school, looking for shells and pieces of green
glass polished by the sea.

Learning to write a computer program is a little like learning a new language. At first the
rules seem strange, and every small mistake stops the whole thing from working. Then, slowly,
the patterns become familiar: a function takes some input and returns an output, a loop repeats
a step until a condition is met, and a variable holds a value that can change over time.

What is the capital of France? The capital of France is Paris. What is the largest planet in
the solar system? It is Jupiter, a giant made mostly of hydrogen and helium. How many days are
there in a week? There are seven days in a week, and twelve months in a year.

Please answer the question. Can you help me with my homework? Of course, I would be happy to
help. Thank you very much! You are welcome. Hello, how are you today? I am fine, thanks.
Numbers such as 1, 2, 3, 10, 42, 100 and 2024 appear in text too, along with symbols like
(parentheses), "quotes", commas, colons: and semicolons; as well as questions?
""".strip()

PROMPTS = [
    "Hello",
    "What is the capital of France?",
    "In winter the storms came from the north, and the waves broke over the wall.",
]

TOKENIZE_TEXTS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "Numbers: 12345 and 3.14",
    "line one\nline two\tindented",
    "café au lait",
    "中文 text",
    "emoji 🙂 here",
]

# A Llama-2-flavoured template: bos_token, an optional system block, a
# raise_exception() when roles do not alternate, `| trim` and `.strip()`, and
# add_generation_prompt.
LLAMA_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'].strip() -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- if system_message -%}"
    "{{- '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' + message['content'] | trim + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' + message['content'] | trim + eos_token + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- 'ASSISTANT:' -}}"
    "{%- endif -%}"
)

# ChatML as Qwen2 writes it, with Qwen2's default system message when the
# conversation has none.
QWEN2_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

CONVERSATIONS = [
    ("single_user", [{"role": "user", "content": "What is the capital of France?"}], True),
    (
        "system_user",
        [
            {"role": "system", "content": "  You are a lighthouse keeper.  "},
            {"role": "user", "content": "Is the lamp lit?"},
        ],
        True,
    ),
    (
        "multi_turn",
        [
            {"role": "user", "content": "Hello, how are you today?"},
            {"role": "assistant", "content": "I am fine, thanks. "},
            {"role": "user", "content": "  Can you help me with my homework?"},
        ],
        True,
    ),
    (
        "no_generation_prompt",
        [
            {"role": "user", "content": "How many days are there in a week?"},
            {"role": "assistant", "content": "There are seven days in a week."},
        ],
        False,
    ),
]
LLAMA_BAD_CONVERSATION = (
    "roles_not_alternating",
    [{"role": "user", "content": "Hello"}, {"role": "user", "content": "Hello again"}],
    True,
)


def corpus_lines():
    return [line for line in CORPUS.splitlines() if line.strip()]


def llama_tokenizer(vocab_size: int):
    """SentencePiece-style BPE like Llama 2's: '▁' word marker prepended to the first word,
    <0xNN> byte tokens for anything outside the vocabulary, <unk>/<s>/</s> at ids 0/1/2, and a
    post-processor that adds <s>."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    # Train merges on the corpus, then lay out the vocabulary the Llama way.
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(byte_tokens), special_tokens=specials, show_progress=False)
    trained.train_from_iterator(corpus_lines(), trainer)
    spec = json.loads(trained.to_str())["model"]
    pieces = sorted(((i, p) for p, i in spec["vocab"].items() if p not in specials))
    vocab = {p: i for i, p in enumerate(specials + byte_tokens + [p for _, p in pieces])}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok


# Qwen2's pre-tokenisation split (the GPT-4-style pattern with single digits).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def qwen2_tokenizer(vocab_size: int):
    """Byte-level BPE like Qwen2's: NFC, the Qwen2 split regex, no BOS, and the special tokens
    <|endoftext|>, <|im_start|>, <|im_end|> added after the BPE vocabulary."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 3, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def random_init(model, std, seed):
    """Weights large enough that logits are far from uniform, so greedy decoding is not decided by
    near-ties. Norm weights and biases get non-trivial values too (HF initialises them to 1 / 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def to_tensor(x):
    return x.detach().contiguous().float().clone()


def top2(logits_row):
    v, i = torch.topk(logits_row.double(), 2)
    return float(v[0] - v[1]), [int(i[0]), int(i[1])]


def greedy(model, input_ids, attention_mask, eos_ids):
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    gen = out.sequences[:, input_ids.shape[1] :]
    steps = torch.stack(out.logits, dim=1)  # (B, steps, V)
    rows = []
    for b in range(gen.shape[0]):
        ids = [int(x) for x in gen[b]]
        margins, top_ids = [], []
        for s in range(len(ids)):
            m, t = top2(steps[b, s])
            margins.append(m)
            top_ids.append(t)
        trimmed = []
        for tok_id in ids:
            trimmed.append(tok_id)
            if tok_id in eos_ids:
                break
        rows.append({"raw": ids, "trimmed": trimmed, "margins": margins, "top2_ids": top_ids})
    return rows


def encode_all(tok, texts):
    return [tok(t)["input_ids"] for t in texts]


def build(name, arch, cfg_kwargs, tokenizer, template, tok_kwargs, generation_eos, seed, std):
    path = OUT / name
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.iterdir():
        stale.unlink()

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **tok_kwargs)
    fast.chat_template = template
    fast.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)  # what users (and the references) see
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))  # what the Rust side reads

    torch.manual_seed(seed)
    cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = cfg_cls(
        vocab_size=len(tok),
        initializer_range=std,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **cfg_kwargs,
    )
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).eval()
    random_init(model, std, seed)
    model.generation_config.eos_token_id = generation_eos
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.do_sample = False
    model.generation_config._from_model_config = False  # generation_config.json is authoritative
    model.save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    assert model.generation_config.eos_token_id == generation_eos, model.generation_config
    eos_ids = set(generation_eos if isinstance(generation_eos, list) else [generation_eos])

    ref = {
        "model": name,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "special": {
            "bos_token": tok.bos_token,
            "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token,
            "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token,
            "pad_token_id": tok.pad_token_id,
            "generation_eos_token_id": generation_eos,
        },
        "prompts": PROMPTS,
    }
    tensors = {}

    prompt_ids = encode_all(tok, PROMPTS)
    for p, ids in zip(PROMPTS, prompt_ids):
        assert raw.encode(p).ids == ids, (name, p)
    ref["prompt_ids"] = prompt_ids

    # Left-padded batch, explicit position ids.
    T = max(len(x) for x in prompt_ids)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (T - len(x)) + x for x in prompt_ids])
    mask = torch.tensor([[0] * (T - len(x)) + [1] * len(x) for x in prompt_ids])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    ref["batch"] = {
        "input_ids": input_ids.tolist(),
        "attention_mask": mask.tolist(),
        "position_ids": position_ids.tolist(),
        "pad_token_id": pad,
    }
    with torch.no_grad():
        batch_logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).logits
        tensors["batch_logits"] = batch_logits
        for i, ids in enumerate(prompt_ids):
            logits = model(input_ids=torch.tensor([ids])).logits
            tensors[f"logits_{i}"] = logits
            diff = (batch_logits[i, T - len(ids) :] - logits[0]).abs().max().item()
            assert diff < 1e-4, (name, i, diff)

        singles = []
        for ids in prompt_ids:
            x = torch.tensor([ids])
            singles.append(greedy(model, x, torch.ones_like(x), eos_ids)[0])
        batch_rows = greedy(model, input_ids, mask, eos_ids)
    all_margins = [m for r in singles for m in r["margins"]] + [m for r in batch_rows for m in r["margins"][: len(r["trimmed"])]]
    min_margin = min(all_margins)
    ref["greedy"] = {
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": generation_eos,
        "min_margin": min_margin,
        "single": [
            {
                "generated_ids": r["raw"],
                "stopped_at_eos": r["raw"][-1] in eos_ids,
                "text": tok.decode(r["raw"]),
                "margins": r["margins"],
                "top2_ids": r["top2_ids"],
            }
            for r in singles
        ],
        "batch": {
            "generated_ids": [r["raw"] for r in batch_rows],
            "trimmed": [r["trimmed"] for r in batch_rows],
            "margins": [r["margins"] for r in batch_rows],
            "equals_single": [r["trimmed"] == s["raw"] for r, s in zip(batch_rows, singles)],
        },
    }

    chats = []
    conversations = CONVERSATIONS + ([LLAMA_BAD_CONVERSATION] if arch == "llama" else [])
    for conv_name, messages, add_gen in conversations:
        entry = {"name": conv_name, "messages": messages, "add_generation_prompt": add_gen}
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_gen)
        except Exception as e:  # jinja2 TemplateError raised by raise_exception()
            entry["error"] = str(e)
            entry["error_type"] = type(e).__name__
        else:
            ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_gen, return_dict=False)
            assert ids == raw.encode(text, add_special_tokens=False).ids, (name, conv_name)
            entry["text"] = text
            entry["ids"] = ids
        chats.append(entry)
    ref["chat"] = chats

    toks = []
    texts = TOKENIZE_TEXTS + ["<|im_start|>user\nHi<|im_end|>" if arch == "qwen2" else "<s>Hi</s> there"]
    for text in texts:
        with_sp = tok(text)["input_ids"]
        no_sp = tok(text, add_special_tokens=False)["input_ids"]
        assert raw.encode(text).ids == with_sp and raw.encode(text, add_special_tokens=False).ids == no_sp, (name, text)
        toks.append(
            {
                "text": text,
                "ids_with_special": with_sp,
                "ids_no_special": no_sp,
                "tokens_no_special": tok.convert_ids_to_tokens(no_sp),
                "decoded": tok.decode(with_sp),
                "decoded_skip_special": tok.decode(with_sp, skip_special_tokens=True),
            }
        )
    ref["tokenize"] = toks
    ref["min_greedy_margin"] = min_margin

    save_file({k: to_tensor(v) for k, v in tensors.items()}, str(path / "reference.safetensors"))
    (path / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    size = sum(f.stat().st_size for f in path.iterdir())
    lengths = [len(x) for x in prompt_ids]
    early = [s["stopped_at_eos"] for s in ref["greedy"]["single"]]
    print(
        f"wrote {path.relative_to(ROOT)}: {size / 1024:.0f} KiB, vocab {len(tok)}, prompt lengths {lengths}, "
        f"min margin {min_margin:.4f}, stopped at eos {early}, batch==single {ref['greedy']['batch']['equals_single']}"
    )
    return path, min_margin


def to_v4_rope_config(path: Path):
    """Rewrites config.json the way transformers 4.x wrote it: top-level rope_theta and
    rope_scaling instead of rope_parameters. Both styles exist in released checkpoints."""
    cfg = json.loads((path / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    assert rope == {"rope_theta": 10000.0, "rope_type": "default"}, rope
    out = {}
    for k, v in cfg.items():
        out[k] = v
        if k == "rms_norm_eps":
            out["rope_scaling"] = None
            out["rope_theta"] = rope["rope_theta"]
    (path / "config.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


def main():
    llama_common = dict(hidden_size=64, intermediate_size=128, max_position_embeddings=256, rms_norm_eps=1e-5)
    path, _ = build(
        "llama-gqa-tied",
        "llama",
        dict(llama_common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
        llama_tokenizer(384),
        LLAMA_TEMPLATE,
        dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"),
        2,
        seed=SEEDS["llama-gqa-tied"],
        std=STD,
    )
    to_v4_rope_config(path)
    # The 4.x-style config must load to the same model.
    cfg = LlamaConfig.from_pretrained(path)
    assert cfg.rope_parameters["rope_theta"] == 10000.0, cfg.rope_parameters

    build(
        "llama-untied-llama3",
        "llama",
        dict(
            llama_common,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            tie_word_embeddings=False,
            attention_bias=False,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
        llama_tokenizer(384),
        LLAMA_TEMPLATE,
        dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"),
        2,
        seed=SEEDS["llama-untied-llama3"],
        std=STD,
    )

    qwen_tok = qwen2_tokenizer(384)
    build(
        "qwen2",
        "qwen2",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
        qwen_tok,
        QWEN2_TEMPLATE,
        dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None),
        [qwen_tok.token_to_id("<|im_end|>"), qwen_tok.token_to_id("<|endoftext|>")],
        seed=SEEDS["qwen2"],
        std=STD,
    )


if __name__ == "__main__":
    sys.exit(main())
