#!/usr/bin/env python3
"""Real-client check of an OpenAI-compatible server (`glimpse serve`): drives
it with the official `openai` Python package, pinned by
scripts/setup_openai_venv.sh, and asserts what that client relies on.

    PY=$(bash scripts/setup_openai_venv.sh)
    "$PY" scripts/openai_client_check.py --base-url http://127.0.0.1:8080/v1 \
        --chat-model ID --embed-model ID --image examples/easy-vqa/test-0.png \
        --expect triangle [--api-key KEY]

Checks, in order (the first failure prints `FAIL: <what>` and exits 1):
  1. models.list() holds both ids.
  2. Chat, not streamed: one user message with content parts [text, image_url
     data URI], temperature 0, max_tokens 16: the answer contains --expect
     (case-insensitive), finish_reason is stop or length, usage counts > 0.
  3. The same, streamed with stream_options include_usage: the first chunk
     with choices has delta.role "assistant", every chunk has the same id,
     the joined deltas equal the non-streamed answer exactly, the last choice
     chunk has finish_reason (the same as 2's), and a final usage chunk with
     choices == [] carries the same usage as 2.
  4. A system message and two turns (user with the image, assistant, user):
     a non-empty answer.
  5. Embeddings: two texts with encoding_format="float" give two vectors of
     L2 norm 1 (within 1e-3); the default (base64: the client asks for it and
     decodes the float32 bytes itself) gives a base64 string on the wire and
     the same vectors within 1e-6; a data-URI image as the input string gives
     one unit vector of the same length.
  6. Errors, as the client types them: n=2 -> BadRequestError (400); an
     unknown model -> NotFoundError (404); max_tokens 100000 ->
     BadRequestError whose message mentions the context length. Error bodies
     are OpenAI's {"error": {"message": ...}}.
  7. Only with --api-key: a wrong key -> AuthenticationError (401).
Then one JSON summary line on stdout, exit 0. A watchdog bounds the whole run
(--deadline, 55 s); each request has the client's 60 s timeout and no retries.
"""
import argparse
import base64
import json
import math
import signal
import sys
import time

try:
    import openai
    from openai import OpenAI
except ImportError:
    print("FAIL: the openai package is not importable: run this with PY=$(bash scripts/setup_openai_venv.sh)", flush=True)
    sys.exit(1)

PROMPT = "what shape is in the image?"


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def fail(what):
    print(f"FAIL: {what}", flush=True)
    sys.exit(1)


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def max_abs_diff(a, b):
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--chat-model", required=True)
    ap.add_argument("--embed-model", required=True)
    ap.add_argument("--image", required=True, help="a PNG the chat model is asked about")
    ap.add_argument("--expect", required=True, help="a word the answer about --image must contain")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--deadline", type=float, default=55.0, help="seconds for the whole check")
    a = ap.parse_args()

    step = "start"

    def on_alarm(_sig, _frm):
        fail(f"the check did not finish within {a.deadline:.0f} s (step: {step})")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, a.deadline)

    t0 = time.monotonic()
    try:
        with open(a.image, "rb") as f:
            png = f.read()
    except OSError as e:
        fail(f"--image: {e}")
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    client = OpenAI(base_url=a.base_url, api_key=a.api_key or "none", timeout=60, max_retries=0)
    summary = {"openai_version": openai.__version__, "base_url": a.base_url}

    try:
        # 1. models
        step = "models.list"
        ids = [m.id for m in client.models.list()]
        check(a.chat_model in ids, f"models.list(): {a.chat_model!r} not in {ids}")
        check(a.embed_model in ids, f"models.list(): {a.embed_model!r} not in {ids}")
        summary["models"] = ids

        # 2. chat, not streamed
        step = "chat"
        messages = [{
            "role": "user",
            "content": [
                {"type": "text", "text": PROMPT},
                {"type": "image_url", "image_url": {"url": data_uri}},
            ],
        }]
        r = client.chat.completions.create(model=a.chat_model, messages=messages, temperature=0, max_tokens=16)
        check(len(r.choices) == 1, f"chat: {len(r.choices)} choices, expected 1")
        msg = r.choices[0].message
        content = msg.content
        check(msg.role == "assistant", f"chat: message.role {msg.role!r}")
        check(isinstance(content, str), f"chat: message.content is {content!r}")
        check(a.expect.lower() in content.lower(), f"chat: answer {content!r} does not contain {a.expect!r}")
        finish = r.choices[0].finish_reason
        check(finish in ("stop", "length"), f"chat: finish_reason {finish!r}")
        check(r.usage is not None, "chat: no usage")
        check(r.usage.prompt_tokens > 0, f"chat: usage.prompt_tokens {r.usage.prompt_tokens}")
        check(r.usage.completion_tokens > 0, f"chat: usage.completion_tokens {r.usage.completion_tokens}")
        summary["chat"] = {"content": content, "finish_reason": finish, "prompt_tokens": r.usage.prompt_tokens,
                           "completion_tokens": r.usage.completion_tokens}

        # 3. the same, streamed
        step = "chat stream"
        stream = client.chat.completions.create(model=a.chat_model, messages=messages, temperature=0, max_tokens=16,
                                                stream=True, stream_options={"include_usage": True})
        chunks = []
        for c in stream:
            chunks.append(c)
            check(len(chunks) <= 10_000, "chat stream: more than 10000 chunks")
        check(chunks, "chat stream: no chunks")
        with_choices = [c for c in chunks if c.choices]
        check(with_choices, "chat stream: no chunk with choices")
        check(with_choices[0].choices[0].delta.role == "assistant",
              f"chat stream: first chunk's delta.role is {with_choices[0].choices[0].delta.role!r}")
        sid = chunks[0].id
        check(sid, "chat stream: empty chunk id")
        check(all(c.id == sid for c in chunks), f"chat stream: chunk ids differ: {sorted({c.id for c in chunks})}")
        check(all(c.object == "chat.completion.chunk" for c in chunks),
              f"chat stream: chunk objects {sorted({c.object for c in chunks})}")
        joined = "".join(c.choices[0].delta.content or "" for c in with_choices)
        check(joined == content, f"chat stream: joined deltas {joined!r} != non-streamed {content!r}")
        sfinish = with_choices[-1].choices[0].finish_reason
        check(sfinish is not None, "chat stream: the last chunk with choices has no finish_reason")
        check(sfinish == finish, f"chat stream: finish_reason {sfinish!r}, non-streamed {finish!r}")
        check(all(c.choices[0].finish_reason is None for c in with_choices[:-1]),
              "chat stream: finish_reason set before the last chunk with choices")
        usage_chunks = [c for c in chunks if c.usage is not None]
        check(usage_chunks, "chat stream: no usage chunk (stream_options.include_usage)")
        last = chunks[-1]
        check(last.usage is not None and last.choices == [],
              f"chat stream: the last chunk is not a usage chunk with choices == [] ({last.choices!r}, {last.usage!r})")
        check(len(usage_chunks) == 1, f"chat stream: {len(usage_chunks)} chunks carry usage, expected 1")
        su = last.usage
        check((su.prompt_tokens, su.completion_tokens) == (r.usage.prompt_tokens, r.usage.completion_tokens),
              f"chat stream: usage {su.prompt_tokens}/{su.completion_tokens} != non-streamed "
              f"{r.usage.prompt_tokens}/{r.usage.completion_tokens}")
        summary["stream"] = {"chunks": len(chunks), "content_chunks": sum(1 for c in with_choices
                                                                           if c.choices[0].delta.content)}

        # 4. system + two turns
        step = "chat multi-turn"
        turns = [
            {"role": "system", "content": "You are a helpful assistant. Answer in one word."},
            messages[0],
            {"role": "assistant", "content": content},
            {"role": "user", "content": "what color is the shape?"},
        ]
        r4 = client.chat.completions.create(model=a.chat_model, messages=turns, temperature=0, max_tokens=16)
        check(r4.choices and isinstance(r4.choices[0].message.content, str) and r4.choices[0].message.content.strip(),
              f"chat multi-turn: empty answer ({r4.choices!r})")
        summary["multi_turn"] = r4.choices[0].message.content

        # 5. embeddings
        step = "embeddings"
        texts = ["a red triangle", "a blue circle"]
        ef = client.embeddings.create(model=a.embed_model, input=texts, encoding_format="float")
        check(len(ef.data) == 2, f"embeddings: {len(ef.data)} vectors for 2 inputs")
        check([d.index for d in ef.data] == [0, 1], f"embeddings: indices {[d.index for d in ef.data]}")
        vf = [d.embedding for d in ef.data]
        check(all(isinstance(v, list) and v and all(isinstance(x, float) for x in v) for v in vf),
              "embeddings: encoding_format=float did not give lists of floats")
        dim = len(vf[0])
        check(len(vf[1]) == dim, f"embeddings: lengths {len(vf[0])} and {len(vf[1])}")
        for i, v in enumerate(vf):
            check(abs(norm(v) - 1) <= 1e-3, f"embeddings: text {i} has L2 norm {norm(v):.6f}")
        check(max_abs_diff(vf[0], vf[1]) > 1e-4, "embeddings: the two texts give the same vector")
        check(ef.usage is not None and ef.usage.prompt_tokens > 0, f"embeddings: usage {ef.usage!r}")

        step = "embeddings base64"
        raw = client.embeddings.with_raw_response.create(model=a.embed_model, input=texts)
        wire = raw.http_response.json()
        check(all(isinstance(d.get("embedding"), str) for d in wire.get("data", [])) and len(wire["data"]) == 2,
              "embeddings: the default request (encoding_format base64) did not get base64 strings on the wire")
        vb = [d.embedding for d in raw.parse().data]
        for i, (x, y) in enumerate(zip(vf, vb)):
            check(len(y) == dim, f"embeddings base64: text {i} has {len(y)} values, float gave {dim}")
            check(max_abs_diff(x, y) <= 1e-6, f"embeddings base64: text {i} differs from float by {max_abs_diff(x, y):.3g}")

        step = "embeddings image"
        ei = client.embeddings.create(model=a.embed_model, input=[data_uri], encoding_format="float")
        check(len(ei.data) == 1, f"embeddings image: {len(ei.data)} vectors for 1 input")
        vi = ei.data[0].embedding
        check(len(vi) == dim, f"embeddings image: length {len(vi)}, the texts' is {dim}")
        check(abs(norm(vi) - 1) <= 1e-3, f"embeddings image: L2 norm {norm(vi):.6f}")
        summary["embeddings"] = {"dim": dim, "cos_text_text": sum(x * y for x, y in zip(*vf)),
                                 "cos_image_text": [sum(x * y for x, y in zip(vi, v)) for v in vf]}

        # 6. errors
        def expect_error(what, cls, status, **kw):
            try:
                client.chat.completions.create(model=kw.pop("model", a.chat_model), messages=kw.pop("msgs"), **kw)
            except cls as e:
                check(e.status_code == status, f"{what}: status {e.status_code}, expected {status}")
                check(isinstance(e.body, dict) and isinstance(e.body.get("message"), str) and e.body["message"],
                      f"{what}: error body is not OpenAI's {{\"error\": {{\"message\": ...}}}}: {e.body!r}")
                return e.body["message"]
            except openai.APIError as e:
                raise CheckFailed(f"{what}: expected {cls.__name__} ({status}), got {type(e).__name__}: {e}")
            raise CheckFailed(f"{what}: expected {cls.__name__} ({status}), the request succeeded")

        text_msgs = [{"role": "user", "content": "hello"}]
        step = "error n=2"
        e_n = expect_error("n=2", openai.BadRequestError, 400, msgs=text_msgs, n=2, max_tokens=4)
        step = "error unknown model"
        e_model = expect_error("unknown model", openai.NotFoundError, 404, model="no-such-model-xyz",
                               msgs=text_msgs, max_tokens=4)
        step = "error max_tokens"
        e_ctx = expect_error("max_tokens 100000", openai.BadRequestError, 400, msgs=text_msgs, max_tokens=100000)
        check("context" in e_ctx.lower(), f"max_tokens 100000: message does not mention the context length: {e_ctx!r}")
        summary["errors"] = {"n2": e_n, "unknown_model": e_model, "max_tokens": e_ctx}

        # 7. a wrong key, when the server has one
        if a.api_key:
            step = "wrong api key"
            bad = OpenAI(base_url=a.base_url, api_key=a.api_key + "-wrong", timeout=60, max_retries=0)
            try:
                bad.models.list()
                raise CheckFailed("wrong api key: models.list() succeeded")
            except openai.AuthenticationError as e:
                check(e.status_code == 401, f"wrong api key: status {e.status_code}")
            except openai.APIError as e:
                raise CheckFailed(f"wrong api key: expected AuthenticationError (401), got {type(e).__name__}: {e}")
    except CheckFailed as e:
        fail(str(e))
    except Exception as e:  # an API error or a malformed response where a check expected success
        fail(f"{step}: {type(e).__name__}: {e}")

    signal.setitimer(signal.ITIMER_REAL, 0)
    summary["ok"] = True
    summary["elapsed_s"] = round(time.monotonic() - t0, 3)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
