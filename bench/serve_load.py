#!/usr/bin/env python3
"""Streaming load generator for an OpenAI-compatible chat server (`glimpse
serve`, llama-cpp-python's server): N concurrent clients, each sending
streamed chat completions back to back for a bounded time. Standard library
only (asyncio, HTTP/1.1 and server-sent events by hand), so it runs on any
python3 and costs the server's CPUs as little as possible.

    python3 bench/serve_load.py --base-url http://127.0.0.1:8080/v1 [--model ID] \
        --clients 8 --duration 30 [--max-tokens 128] [--prompt-set text|image] \
        [--images examples/easy-vqa] [--pid SERVER_PID] [--out result.json]

Each client loops: POST /chat/completions with stream true,
stream_options.include_usage, temperature 0, max_tokens; it times the request
start -> first non-empty content delta (TTFT) and the gaps between content
deltas (ITL), and counts output tokens from the final usage chunk
(usage.completion_tokens; the number of content deltas where the server sends
none). No request starts after --duration; those in flight then finish, up to
--drain-cap seconds more, after which they are cut (counted apart, and as
failures). A request fails on a connection error, a status other than 200, an
error event, a malformed event, a stream that ends without [DONE] or without a
finish_reason, or --request-timeout.

Prompt sets: text cycles a fixed list of varied prompts (each client starts at
its own offset); image sends [question, data-URI PNG] user messages, cycling
the PNGs of --images and three easy-VQA questions.

Output (--out, and the last line of stdout): one JSON object with requests
ok/failed/cut and the first error messages, output_tok_per_s = completion
tokens of finished requests / wall time (first request start -> last request
end), window_tok_per_s = content deltas received inside the --duration window /
duration, TTFT and ITL p50/p99 (ms), end-to-end latency, and with --pid the
server's VmRSS every second (min, after --warmup seconds, max, last), its CPU
seconds, and the share of the machine's CPU that others (neither the server
nor this client) used meanwhile.
"""
import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import time
import urllib.parse

TEXT_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works, step by step, to a ten-year-old.",
    "List ten ideas for a rainy weekend and say why each one is fun.",
    "Describe the water cycle in detail.",
    "What are the main differences between cats and dogs as pets?",
    "Write a poem about autumn leaves falling in a quiet park.",
    "Give me a recipe for a simple vegetable soup, with the steps.",
    "Tell me about the history of the bicycle.",
    "Why is the sky blue? Give a thorough explanation.",
    "Write a letter to a friend describing your summer holiday by the sea.",
    "Explain what a computer program is and how it runs.",
    "Describe a busy market in a small town on a Saturday morning.",
]
IMAGE_QUESTIONS = ["what shape is in the image?", "what color is the shape?", "is there a circle?"]

MAX_REQUESTS_PER_CLIENT = 1_000_000  # a bound; the time limit ends the loop long before
MAX_EVENTS_PER_REQUEST = 100_000
MAX_ERROR_BODY = 4096
LOCAL_HOSTS = ("127.0.0.1", "localhost")


class RequestFailed(Exception):
    pass


def percentile(xs, q):
    """q-th percentile (0..100), linear interpolation between order statistics."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ms(x):
    return None if x is None else round(x * 1000, 3)


def proc_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def machine_busy_s():
    """CPU seconds all CPUs spent busy (not idle, iowait or steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, _steal = v
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Target:
    def __init__(self, base_url, api_key):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or u.hostname not in LOCAL_HOSTS:
            sys.exit(f"--base-url must be http://127.0.0.1:PORT/...: got {base_url!r}")
        self.host = "127.0.0.1"
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        self.api_key = api_key

    def head(self, method, path, length, accept):
        h = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Accept: {accept}",
             "Connection: close", "User-Agent: glimpse-serve-load"]
        if length is not None:
            h += ["Content-Type: application/json", f"Content-Length: {length}"]
        if self.api_key:
            h.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(h) + "\r\n\r\n").encode()


async def http_request(target, method, path, body, accept, on_data):
    """One HTTP/1.1 request on a fresh connection; on_data(bytes, t) gets the
    decoded body as it arrives (chunked, Content-Length or until close).
    Returns the status; for a status other than 200 raises RequestFailed with
    the start of the body."""
    reader, writer = await asyncio.open_connection(target.host, target.port, limit=1 << 20)
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        writer.write(target.head(method, path, len(payload) if body is not None else None, accept) + payload)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise RequestFailed(f"bad status line {status_line[:100]!r}")
        status = int(parts[1])
        headers = {}
        for _ in range(200):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        else:
            raise RequestFailed("more than 200 response headers")
        sink = on_data
        err = bytearray()
        if status != 200:
            def sink(data, _t):
                if len(err) < MAX_ERROR_BODY:
                    err.extend(data[: MAX_ERROR_BODY - len(err)])
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readline()
                if not size_line:
                    raise RequestFailed("connection closed inside a chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size)
                await reader.readexactly(2)
                if sink(data, time.perf_counter()):
                    break
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if n:
                sink(await reader.readexactly(n), time.perf_counter())
        else:
            while data := await reader.read(1 << 16):
                if sink(data, time.perf_counter()):
                    break
        if status != 200:
            raise RequestFailed(f"HTTP {status}: {err.decode('utf-8', 'replace').strip()[:300]}")
        return status
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, asyncio.CancelledError):
            pass


class SseRequest:
    """Parses one streamed chat completion as it arrives."""

    def __init__(self):
        self.buf = b""
        self.data_lines = []
        self.events = 0
        self.done = False
        self.finish_reason = None
        self.usage_tokens = None
        self.prompt_tokens = None
        self.delta_times = []  # arrival time of each non-empty content delta
        self.chars = 0

    def feed(self, data, t):
        """Returns True once [DONE] arrived (stop reading)."""
        self.buf += data
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                break
            line, self.buf = self.buf[:i].rstrip(b"\r"), self.buf[i + 1:]
            if not line:
                if self.data_lines:
                    self.event(b"\n".join(self.data_lines), t)
                    self.data_lines = []
                    if self.done:
                        return True
            elif line.startswith(b"data:"):
                self.data_lines.append(line[5:].lstrip(b" "))
            # comments (": ping"), event:, id:, retry: lines are ignored
        return False

    def event(self, data, t):
        self.events += 1
        if self.events > MAX_EVENTS_PER_REQUEST:
            raise RequestFailed(f"more than {MAX_EVENTS_PER_REQUEST} events")
        if data.strip() == b"[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            raise RequestFailed(f"malformed event {data[:200]!r}") from None
        if not isinstance(obj, dict):
            raise RequestFailed(f"malformed event {data[:200]!r}")
        if "error" in obj:
            raise RequestFailed(f"error event: {json.dumps(obj['error'])[:300]}")
        for ch in obj.get("choices") or []:
            delta = ch.get("delta") or {}
            content = delta.get("content")
            if content:
                self.delta_times.append(t)
                self.chars += len(content)
            if ch.get("finish_reason"):
                self.finish_reason = ch["finish_reason"]
        usage = obj.get("usage")
        if usage:
            self.usage_tokens = usage.get("completion_tokens")
            self.prompt_tokens = usage.get("prompt_tokens")


def build_prompts(a):
    if a.prompt_set == "text":
        return [[{"role": "user", "content": p}] for p in TEXT_PROMPTS]
    pngs = sorted(os.path.join(a.images, f) for f in os.listdir(a.images) if f.lower().endswith(".png"))
    if not pngs:
        sys.exit(f"no PNG in {a.images}")
    uris = []
    for p in pngs[:256]:
        with open(p, "rb") as f:
            uris.append("data:image/png;base64," + base64.b64encode(f.read()).decode())
    out = []
    for i in range(max(len(uris), len(IMAGE_QUESTIONS)) * len(IMAGE_QUESTIONS)):
        out.append([{"role": "user", "content": [
            {"type": "text", "text": IMAGE_QUESTIONS[(i // len(uris)) % len(IMAGE_QUESTIONS)]},
            {"type": "image_url", "image_url": {"url": uris[i % len(uris)]}},
        ]}])
    return out


class Run:
    def __init__(self, a, target, prompts):
        self.a, self.target, self.prompts = a, target, prompts
        self.results = []  # per finished request
        self.errors = []
        self.failed = 0
        self.cut = 0
        self.t0 = None
        self.t_end = None

    def body(self, messages):
        return {"model": self.a.model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0, "max_tokens": self.a.max_tokens}

    async def one(self, messages):
        sse = SseRequest()
        start = time.perf_counter()
        await asyncio.wait_for(
            http_request(self.target, "POST", "/chat/completions", self.body(messages), "text/event-stream", sse.feed),
            self.a.request_timeout)
        end = time.perf_counter()
        if not sse.done:
            raise RequestFailed("the stream ended without [DONE]")
        if sse.finish_reason is None:
            raise RequestFailed(f"the stream ended without a finish_reason ({len(sse.delta_times)} content deltas)")
        return sse, start, end

    def note_error(self, msg):
        self.failed += 1
        if len(self.errors) < self.a.keep_errors:
            self.errors.append(f"{time.perf_counter() - self.t0:.1f}s: {msg}")

    async def client(self, cid):
        k = cid
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.perf_counter() >= self.t_end:
                return
            messages = self.prompts[k % len(self.prompts)]
            k += 1
            try:
                sse, start, end = await self.one(messages)
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                self.note_error(f"no complete response within --request-timeout {self.a.request_timeout} s")
                continue
            except (RequestFailed, OSError, asyncio.IncompleteReadError, ValueError) as e:
                self.note_error(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.05)  # no hot loop against a server that refuses at once
                continue
            dt = sse.delta_times
            self.results.append({
                "client": cid, "start": start - self.t0, "end": end - self.t0,
                "ttft": (dt[0] - start) if dt else None,
                "itl": [b - a for a, b in zip(dt, dt[1:])],
                "deltas_in_window": sum(1 for t in dt if t < self.t_end),
                "deltas": len(dt),
                "tokens": sse.usage_tokens if sse.usage_tokens is not None else len(dt),
                "usage": sse.usage_tokens is not None,
                "prompt_tokens": sse.prompt_tokens,
                "finish_reason": sse.finish_reason,
            })

    async def sample_rss(self, out, stop):
        while not stop.is_set():
            rss = proc_rss_kib(self.a.pid)
            if rss is not None:
                out.append((round(time.perf_counter() - self.t0, 2), rss))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def main(self):
        a = self.a
        for i in range(a.warmup_requests):  # not timed: first-request costs (lazy init, page-in)
            try:
                await self.one(self.prompts[i % len(self.prompts)])
            except Exception as e:  # noqa: BLE001 - a warm-up failure is reported, the run goes on
                print(f"warm-up request failed: {type(e).__name__}: {e}", file=sys.stderr)
        rss, stop = [], asyncio.Event()
        cpu0 = proc_cpu_s(a.pid) if a.pid else None
        busy0 = machine_busy_s()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.perf_counter()
        self.t_end = self.t0 + a.duration
        sampler = asyncio.ensure_future(self.sample_rss(rss, stop)) if a.pid else None
        tasks = [asyncio.ensure_future(self.client(i)) for i in range(a.clients)]
        done, pending = await asyncio.wait(tasks, timeout=a.duration + a.drain_cap)
        for t in pending:
            t.cancel()
        self.cut = len(pending)
        for _ in range(self.cut):
            self.note_error(f"cut: still running {a.drain_cap} s after the end of the run (--drain-cap)")
        if pending:
            await asyncio.wait(pending, timeout=10)
        for t in done:
            if t.exception() is not None:
                self.note_error(f"client crashed: {t.exception()!r}")
        wall_end = time.perf_counter()
        cpu1 = proc_cpu_s(a.pid) if a.pid else None
        busy1 = machine_busy_s()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        if sampler:
            stop.set()
            await sampler
        last_end = max((r["end"] for r in self.results), default=wall_end - self.t0)
        out = self.report(rss, last_end, cpu0, cpu1, ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
        if busy0 is not None and busy1 is not None and cpu0 is not None and cpu1 is not None:
            # the share of the machine that neither the server nor this client used meanwhile
            span = wall_end - self.t0
            others = (busy1 - busy0) - (cpu1 - cpu0) - out["client_cpu_s"]
            out["others_cpu_share"] = round(max(0.0, others) / (span * (os.cpu_count() or 1)), 4)
        return out

    def report(self, rss, wall, cpu0, cpu1, client_cpu):
        a, res = self.a, self.results
        tokens = sum(r["tokens"] for r in res)
        ttft = [r["ttft"] for r in res if r["ttft"] is not None]
        itl = [x for r in res for x in r["itl"]]
        e2e = [r["end"] - r["start"] for r in res]
        per_req = [(r["deltas"] - 1) / sum(r["itl"]) for r in res if r["deltas"] > 1 and sum(r["itl"]) > 0]
        out = {
            "base_url": a.base_url, "model": a.model, "clients": a.clients, "duration_s": a.duration,
            "max_tokens": a.max_tokens, "prompt_set": a.prompt_set, "label": a.label,
            "requests_ok": len(res), "requests_failed": self.failed, "requests_cut": self.cut,
            "errors": self.errors,
            "finish_reasons": {k: sum(1 for r in res if r["finish_reason"] == k)
                               for k in sorted({r["finish_reason"] for r in res})},
            "usage_reported": sum(1 for r in res if r["usage"]),
            "output_tokens": tokens,
            "output_deltas": sum(r["deltas"] for r in res),
            "prompt_tokens_mean": (sum(r["prompt_tokens"] for r in res if r["prompt_tokens"])
                                   / max(1, sum(1 for r in res if r["prompt_tokens"]))),
            "wall_s": round(wall, 3),
            "output_tok_per_s": round(tokens / wall, 3) if wall > 0 else None,
            "window_tok_per_s": round(sum(r["deltas_in_window"] for r in res) / a.duration, 3),
            "ttft_ms": {"p50": ms(percentile(ttft, 50)), "p99": ms(percentile(ttft, 99)), "max": ms(max(ttft, default=None))},
            "itl_ms": {"p50": ms(percentile(itl, 50)), "p99": ms(percentile(itl, 99)), "max": ms(max(itl, default=None))},
            "e2e_ms": {"p50": ms(percentile(e2e, 50)), "p99": ms(percentile(e2e, 99))},
            "per_request_decode_tok_per_s_p50": percentile(per_req, 50),
            "client_cpu_s": round(client_cpu, 3),
            # per finished request: start and end (s from the run's start), TTFT (s), output tokens, finish_reason
            "requests": [[round(r["start"], 3), round(r["end"], 3), None if r["ttft"] is None else round(r["ttft"], 3),
                          r["tokens"], r["finish_reason"]] for r in sorted(res, key=lambda r: r["start"])],
        }
        if a.pid:
            vals = [kib for _, kib in rss]
            after = [kib for t, kib in rss if t >= a.warmup]
            out["server_pid"] = a.pid
            out["server_cpu_s"] = None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2)
            out["rss_mib"] = {
                "min": round(min(vals) / 1024, 1) if vals else None,
                "after_warmup": round(after[0] / 1024, 1) if after else None,
                "max": round(max(vals) / 1024, 1) if vals else None,
                "last": round(vals[-1] / 1024, 1) if vals else None,
                "growth_after_warmup": round((vals[-1] - after[0]) / 1024, 1) if after else None,
                "warmup_s": a.warmup,
            }
            out["rss_samples"] = [[t, round(kib / 1024, 1)] for t, kib in rss]
        return out


def fetch_model(target):
    got = bytearray()

    def sink(data, _t):
        got.extend(data)

    asyncio.run(asyncio.wait_for(http_request(target, "GET", "/models", None, "application/json", sink), 30))
    ids = [m["id"] for m in json.loads(got)["data"]]
    if not ids:
        sys.exit("GET /models lists no model")
    return ids[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="http://127.0.0.1:PORT/v1")
    ap.add_argument("--model", default=None, help="model id (default: the first of GET /models)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--duration", type=float, required=True, help="seconds during which requests start")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-set", choices=["text", "image"], default="text")
    ap.add_argument("--images", default="examples/easy-vqa", help="folder of PNGs for --prompt-set image")
    ap.add_argument("--pid", type=int, default=None, help="server pid: sample its VmRSS every second")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the 'after warm-up' RSS (default: 20%% of --duration)")
    ap.add_argument("--warmup-requests", type=int, default=1, help="untimed requests before the run")
    ap.add_argument("--drain-cap", type=float, default=300.0, help="max seconds for in-flight requests after --duration")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--keep-errors", type=int, default=5)
    ap.add_argument("--label", default=None, help="free text kept in the JSON (engine name)")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    a = ap.parse_args()
    if not 1 <= a.clients <= 1024:
        sys.exit("--clients must be 1..1024")
    if not 0 < a.duration <= 86400:
        sys.exit("--duration must be in (0, 86400]")
    if a.warmup is None:
        a.warmup = 0.2 * a.duration
    target = Target(a.base_url, a.api_key)
    if a.model is None:
        a.model = fetch_model(target)
    run = Run(a, target, build_prompts(a))
    out = asyncio.run(run.main())
    r = out
    print(f"{a.label or a.base_url} clients={a.clients}: ok {r['requests_ok']} failed {r['requests_failed']} "
          f"| {r['output_tok_per_s']} tok/s (window {r['window_tok_per_s']}) | TTFT p50 {r['ttft_ms']['p50']} "
          f"p99 {r['ttft_ms']['p99']} ms | ITL p50 {r['itl_ms']['p50']} p99 {r['itl_ms']['p99']} ms"
          + (f" | RSS {r['rss_mib']['after_warmup']} -> {r['rss_mib']['last']} MiB" if a.pid else ""),
          file=sys.stderr)
    for e in r["errors"]:
        print(f"  error: {e}", file=sys.stderr)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k not in ("rss_samples", "requests")}))


if __name__ == "__main__":
    main()
