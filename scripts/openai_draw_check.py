#!/usr/bin/env python3
"""Real-client check of `POST /v1/images/generations` on `glimpse serve`
with a discrete-token model: drives it with the official `openai` Python
package (pinned by scripts/setup_openai_venv.sh).

    PY=$(bash scripts/setup_openai_venv.sh)
    "$PY" scripts/openai_draw_check.py --base-url http://127.0.0.1:8080/v1 \
        --model ID --prompt "a red circle" --seed 7 --n 2 --size 32x32

Checks (the first failure prints `FAIL: <what>` and exits 1):
  1. images.generate(model, prompt, n, size, response_format="b64_json",
     extra_body={"seed", "cfg"}) gives n images, each a base64 PNG.
  2. size="1024x1024" -> BadRequestError (400) naming --size.
  3. response_format="url" -> BadRequestError (400).
Then one JSON line on stdout, {"openai_version", "b64": [...]}, for the
caller to compare byte for byte; exit 0. A watchdog bounds the run
(--deadline, 55 s); the client has a 60 s timeout and no retries.
"""
import argparse
import base64
import json
import signal
import sys

try:
    import openai
    from openai import OpenAI
except ImportError:
    print("FAIL: the openai package is not importable: run this with PY=$(bash scripts/setup_openai_venv.sh)", flush=True)
    sys.exit(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fail(what):
    print(f"FAIL: {what}", flush=True)
    sys.exit(1)


def expect_400(what, needle, call):
    try:
        call()
    except openai.BadRequestError as e:
        msg = str(e)
        if needle.lower() not in msg.lower():
            fail(f"{what}: the 400's message should mention {needle!r}: {msg}")
        return
    except openai.APIError as e:
        fail(f"{what}: expected BadRequestError, got {type(e).__name__}: {e}")
    fail(f"{what}: expected BadRequestError, the call succeeded")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--size", required=True, help="the model's size, e.g. 32x32")
    ap.add_argument("--deadline", type=float, default=55.0)
    a = ap.parse_args()

    signal.signal(signal.SIGALRM, lambda *_: fail(f"not done within {a.deadline:.0f} s"))
    signal.setitimer(signal.ITIMER_REAL, a.deadline)
    client = OpenAI(base_url=a.base_url, api_key="none", timeout=60, max_retries=0)

    def generate(**kw):
        args = dict(model=a.model, prompt=a.prompt, n=a.n, size=a.size,
                    response_format="b64_json", extra_body={"seed": a.seed, "cfg": a.cfg})
        args.update(kw)
        return client.images.generate(**args)

    try:
        r = generate()
    except openai.APIError as e:
        fail(f"images.generate: {type(e).__name__}: {e}")
    if len(r.data) != a.n:
        fail(f"images.generate: {len(r.data)} images, asked for {a.n}")
    b64 = []
    for i, img in enumerate(r.data):
        if not img.b64_json or not base64.b64decode(img.b64_json).startswith(PNG_MAGIC):
            fail(f"image {i}: b64_json is not a base64 PNG")
        if img.url:
            fail(f"image {i}: a url was sent with b64_json")
        b64.append(img.b64_json)
    if not r.created:
        fail("created is missing")

    expect_400("size 1024x1024", a.size, lambda: generate(size="1024x1024"))
    expect_400("response_format url", "b64_json", lambda: generate(response_format="url"))

    print(json.dumps({"openai_version": openai.__version__, "b64": b64}), flush=True)


if __name__ == "__main__":
    main()
