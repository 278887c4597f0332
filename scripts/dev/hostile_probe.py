#!/usr/bin/env python3
"""Hostile-input probe of the release `glimpse` binary (issue 23).

Regenerates a corpus of bad inputs (images, model directories broken field by
field, GGUF files, prompts and flags, eval data, recipes, checkpoints, output
streams), runs the binary over each one under an address-space cap and a
timeout, and prints how each class ended:

    error   one line on stderr starting `error:`, exit 1 (2 for usage faults)
    ok      exit 0 where success is acceptable (the input is odd, not wrong)
    panic   a Rust panic (exit 101 or "panicked at")
    hang    still running at the timeout
    abort   killed by a signal (allocation failure, SIGSEGV, the cap)
    silent  exit 0 on input that must be refused
    unclear a refusal that is not one line, or exits with the wrong code

Dev only, standard library only (no numpy, no Pillow):

    cargo build --release -p glimpse-cli
    python3 scripts/dev/hostile_probe.py                 # all classes
    python3 scripts/dev/hostile_probe.py --only gguf -v  # one class, every case

The table it prints is what docs/reliability.md records. Exit status 1 when
any case ends in panic, hang, abort, silent or unclear.
"""

import argparse
import concurrent.futures as futures
import functools
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VLM = REPO / "models/glimpse-easy-vqa"
CLIP = REPO / "models/glimpse-easy-vqa-clip"
IMAGE = REPO / "examples/easy-vqa/test-0.png"
CACHE = Path(os.environ.get("GLIMPSE_CACHE", Path.home() / ".cache/glimpse"))
SMOLLM2 = CACHE / "smollm2"
EASY_VQA = CACHE / "easy-vqa"

OUTCOMES = ["error", "ok", "panic", "hang", "abort", "silent", "unclear"]
BAD = {"panic", "hang", "abort", "silent", "unclear"}


@dataclass
class Case:
    cls: str  # the table row
    name: str  # what was done to the input
    argv: list  # arguments after the binary
    expect: str = "refuse"  # "refuse" | "any"
    code: int = 1  # the exit status a refusal must have
    stdout: str = "pipe"  # "pipe" | "full" (/dev/full) | "closed"
    timeout: float = 0.0  # 0: the run's default
    cwd: Path = None
    env: dict = field(default_factory=dict)


@dataclass
class Result:
    case: Case
    outcome: str
    rc: int
    seconds: float
    stderr: str


# ---------------------------------------------------------------- running


def classify(case: Case, rc: int, timed_out: bool, stderr: str) -> str:
    if timed_out:
        return "hang"
    if "panicked at" in stderr or rc == 101:
        return "panic"
    if rc < 0 or "memory allocation of" in stderr:
        return "abort"
    if rc == 0:
        return "silent" if case.expect == "refuse" else "ok"
    lines = [l for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:") or l.startswith("error[")]
    # clap's usage errors are several lines (usage + hint); they exit 2 and
    # start with `error:`, which is what a user needs.
    one_line = len(errors) == 1 and (lines[-1] == errors[0] or rc == 2)
    if not one_line:
        return "unclear"
    if case.expect == "refuse" and rc != case.code:
        return "unclear"
    return "error"


def run_case(binary: Path, case: Case, timeout: float, mem_mb: int) -> Result:
    def limits():
        cap = mem_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()

    env = dict(os.environ)
    env.update({"RAYON_NUM_THREADS": "1", "NO_COLOR": "1", "RUST_BACKTRACE": "0"})
    env.update(case.env)
    stdout = subprocess.DEVNULL
    closer = None
    if case.stdout == "full":
        stdout = open("/dev/full", "wb")
    elif case.stdout == "closed":
        r, w = os.pipe()
        os.close(r)  # every write gets EPIPE (Rust ignores SIGPIPE)
        stdout = w
        closer = w
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(binary)] + [str(a) for a in case.argv],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=case.cwd or REPO,
        env=env,
        preexec_fn=limits,
    )
    if closer is not None:
        os.close(closer)
    timed_out = False
    try:
        _, err = proc.communicate(timeout=case.timeout or timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    if case.stdout == "full":
        stdout.close()
    text = err.decode("utf-8", "replace")
    rc = proc.returncode
    return Result(case, classify(case, rc, timed_out, text), rc, time.monotonic() - t0, text)


# ---------------------------------------------------------------- helpers


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def copy_model(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def set_path(obj, path: str, value):
    """Sets `a.b.c` in nested dicts; `value is DELETE` removes it."""
    keys = path.split(".")
    for k in keys[:-1]:
        obj = obj[k]
    if value is DELETE:
        obj.pop(keys[-1], None)
    else:
        obj[keys[-1]] = value


DELETE = object()


def numeric_paths(obj, prefix=""):
    for k, v in obj.items():
        p = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from numeric_paths(v, p + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield p, v


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, extra: bytes = b"", idat: bytes = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if idat is None:
        raw = b"".join(b"\x00" + b"\x80\x20\x20" * width for _ in range(min(height, 64)))
        idat = zlib.compress(raw)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def deflate_zeros(n: int) -> bytes:
    """zlib stream of `n` zero bytes, compressed incrementally (tiny output)."""
    comp = zlib.compressobj(9)
    block = bytes(1 << 20)
    out = []
    left = n
    while left > 0:
        take = min(left, len(block))
        out.append(comp.compress(block[:take]))
        left -= take
    out.append(comp.flush())
    return b"".join(out)


def bmp(width: int, height: int) -> bytes:
    row = (b"\x20\x20\xc0" * width).ljust((width * 3 + 3) // 4 * 4, b"\x00")
    pixels = row * height
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


GIF_1X1 = bytes.fromhex(
    "47494638396101000100800000ff000000000021f90401000000002c00000000010001000002024401003b"
)


# ---------------------------------------------------------------- GGUF


GGUF_TYPES = {"u8": 0, "i8": 1, "u16": 2, "i16": 3, "u32": 4, "i32": 5, "f32": 6, "bool": 7,
              "str": 8, "arr": 9, "u64": 10, "i64": 11, "f64": 12}
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@functools.lru_cache(maxsize=None)
def gguf_read_metadata(path: Path):
    """The (key, type, value) list of a GGUF file's metadata (arrays as (type, list))."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # SmolLM2's metadata (tokenizer) is ~2 MB
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            it = take("<I")
            n = take("<Q")
            return (it, [value(it) for _ in range(n)])
        return take(SCALAR[t])

    assert data[:4] == b"GGUF"
    pos = 8
    _tensors = take("<Q")
    kvs = take("<Q")
    out = []
    for _ in range(kvs):
        k = string()
        t = take("<I")
        out.append((k, t, value(t)))
    return out


def gguf_value(t, v) -> bytes:
    if t == 8:
        b = v.encode("utf-8")
        return struct.pack("<Q", len(b)) + b
    if t == 9:
        it, items = v
        return struct.pack("<IQ", it, len(items)) + b"".join(gguf_value(it, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


@dataclass
class Gguf:
    """A tiny llama GGUF: SmolLM2's tokenizer metadata, 1 layer of width 8."""
    meta: list
    tensors: list  # (name, dims (ne0 first), ggml type, bytes)
    alignment: int = 32
    version: int = 3

    def bytes(self, tensor_count=None, kv_count=None, offsets=None) -> bytes:
        meta = [m for m in self.meta if m[0] != "general.alignment"]
        meta.append(("general.alignment", 4, self.alignment))
        head = b"GGUF" + struct.pack("<I", self.version)
        head += struct.pack("<QQ", len(self.tensors) if tensor_count is None else tensor_count,
                            len(meta) if kv_count is None else kv_count)
        for k, t, v in meta:
            head += gguf_string(k) + struct.pack("<I", t) + gguf_value(t, v)
        # a lying alignment (0, 2^31) is written, not followed
        align = self.alignment if 0 < self.alignment <= 4096 else 32
        body = b""
        infos = b""
        for i, (name, dims, typ, data) in enumerate(self.tensors):
            off = len(body) if offsets is None else offsets[i]
            infos += gguf_string(name) + struct.pack("<I", len(dims))
            infos += b"".join(struct.pack("<Q", d) for d in dims)
            infos += struct.pack("<IQ", typ, off)
            body += data
            body += b"\x00" * ((-len(body)) % align)
        out = head + infos
        out += b"\x00" * ((-len(out)) % align)
        return out + body


def tiny_gguf(rng: random.Random) -> Gguf:
    meta = [m for m in gguf_read_metadata(SMOLLM2_GGUF) if m[0].startswith("tokenizer.")]
    meta = [(k, t, (v[0], list(v[1])) if t == 9 else v) for k, t, v in meta]
    vocab = len(next(v for k, t, v in meta if k == "tokenizer.ggml.tokens")[1])
    h, ff, kv = 8, 16, 4
    meta = [("general.architecture", 8, "llama"), ("general.name", 8, "probe")] + meta + [
        ("llama.context_length", 4, 64),
        ("llama.embedding_length", 4, h),
        ("llama.block_count", 4, 1),
        ("llama.feed_forward_length", 4, ff),
        ("llama.attention.head_count", 4, 2),
        ("llama.attention.head_count_kv", 4, 1),
        ("llama.rope.freq_base", 6, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
    ]

    def f32(*dims):
        n = 1
        for d in dims:
            n *= d
        return (list(dims), 0, struct.pack(f"<{n}f", *(rng.uniform(-0.5, 0.5) for _ in range(n))))

    def ones(d):
        return ([d], 0, struct.pack(f"<{d}f", *([1.0] * d)))

    tensors = [("token_embd.weight",) + f32(h, vocab), ("output_norm.weight",) + ones(h)]
    for name, shape in [("attn_q", (h, h)), ("attn_k", (h, kv)), ("attn_v", (h, kv)),
                        ("attn_output", (h, h)), ("ffn_gate", (h, ff)), ("ffn_up", (h, ff)),
                        ("ffn_down", (ff, h))]:
        tensors.append((f"blk.0.{name}.weight",) + f32(*shape))
    tensors += [("blk.0.attn_norm.weight",) + ones(h), ("blk.0.ffn_norm.weight",) + ones(h)]
    return Gguf(meta, tensors)


SMOLLM2_GGUF = next(iter(sorted(SMOLLM2.glob("*.gguf"))), SMOLLM2 / "missing.gguf")


# ---------------------------------------------------------------- classes
# Each returns the cases of one table row; files go under `work`.


def ask(model, image, question="what shape is in the image?", *extra):
    args = ["ask", "--max-tokens", "4"]
    if model is not None:
        args += ["--model", model]
    if image is not None:
        args += ["--image", image]
    return args + list(extra) + [question]


def classify_cmd(model, image, labels="circle,triangle"):
    return ["classify", "--model", model, image, "--labels", labels]


def images(work: Path, rng: random.Random):
    d = work / "images"
    good = IMAGE.read_bytes()
    cases = []

    def both(name, path, expect="refuse"):
        cases.append(Case("images", f"{name} (classify)", classify_cmd(CLIP, path), expect))
        cases.append(Case("images", f"{name} (ask)", ask(VLM, path), expect))

    for n in [0, 1, 8, 16, 33, 50, 100, 200, len(good) // 2]:
        both(f"PNG cut at {n} bytes", write(d / f"cut-{n}.png", good[:n]))
    # all pixel data present, only (part of) IEND gone: decodable, as in Pillow
    for n in [len(good) - 12, len(good) - 1]:
        both(f"PNG cut at {n} bytes (in IEND)", write(d / f"cut-{n}.png", good[:n]), "any")
    for i in range(20):
        b = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        both(f"PNG with random bytes changed #{i}", write(d / f"flip-{i}.png", bytes(b)), "any")
    both("text file named .png", write(d / "text.png", "hello, not an image\n"))
    both("PNG 100000x100000 header", write(d / "huge-dims.png", png(100000, 100000)))
    both("PNG 0x0 header", write(d / "zero-dims.png", png(0, 0)))
    both("PNG 1x70000 header", write(d / "tall.png", png(1, 70000)))
    iccp = png_chunk(b"iCCP", b"probe\x00\x00" + deflate_zeros(1 << 30))
    both("PNG with a 1 GiB compressed ICC chunk", write(d / "icc-bomb.png", png(2, 2, iccp)))
    ztxt = png_chunk(b"zTXt", b"Comment\x00\x00" + deflate_zeros(1 << 30))
    both("PNG with a 1 GiB zTXt chunk", write(d / "ztxt-bomb.png", png(2, 2, ztxt)), "any")
    idat = deflate_zeros(1 << 30)
    both("PNG 2x2 whose IDAT inflates to 1 GiB", write(d / "idat-bomb.png", png(2, 2, idat=idat)), "any")
    both("BMP 16x16", write(d / "ok.bmp", bmp(16, 16)), "any")
    both("BMP cut", write(d / "cut.bmp", bmp(16, 16)[:70]))
    bigbmp = bytearray(bmp(1, 1))
    struct.pack_into("<ii", bigbmp, 18, 1 << 30, 1 << 30)
    both("BMP header 2^30 x 2^30", write(d / "huge.bmp", bytes(bigbmp)))
    both("GIF 1x1", write(d / "one.gif", GIF_1X1), "any")
    both("GIF cut", write(d / "cut.gif", GIF_1X1[:20]))
    jpg = (REPO / "fixtures/images/rotated.jpg").read_bytes()
    both("JPEG cut in half", write(d / "cut.jpg", jpg[: len(jpg) // 2]), "any")
    both("JPEG header only", write(d / "head.jpg", jpg[:200]))
    both("WebP magic, garbage body", write(d / "bad.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(40)))
    (d / "dir.png").mkdir(parents=True, exist_ok=True)
    both("a directory", d / "dir.png")
    fifo = d / "fifo.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    both("a FIFO (nobody writes)", fifo)
    both("/dev/zero", "/dev/zero")
    both("/dev/null", "/dev/null")
    sparse = d / "sparse-2g.png"
    with open(sparse, "wb") as f:
        f.truncate(2 << 30)
    both("sparse 2 GiB file", sparse)
    big = d / "png-then-3g.png"
    with open(big, "wb") as f:
        f.write(good)
        f.truncate(3 << 30)
    both("valid PNG followed by 3 GiB of zeros", big)
    both("missing file", d / "nope.png")
    loop = d / "loop.png"
    if not loop.is_symlink():
        os.symlink(loop, loop)
    both("symlink to itself", loop)
    noread = write(d / "noread.png", good)
    noread.chmod(0)
    if os.geteuid() != 0:
        both("unreadable file", noread)
    return cases


def config_values():
    return [("0", 0), ("-1", -1), ("2^63", 1 << 63), ("1e10", 10**10), ("1e12", 10**12),
            ("1.5", 1.5), ("a string", "x"), ("null", None)]


# Fields whose mutation a model may accept (ids, thresholds that are only
# read at the edges): any outcome but a crash is fine.
LENIENT = ("bos_token_id", "eos_token_id", "pad_token_id", "image_token_id", "vision_feature_layer",
           "logit_scale_init_value", "rope_theta")


def model_configs(work: Path, rng: random.Random):
    cases = []
    for label, src, cmd in [("vlm", VLM, lambda m: ask(m, IMAGE)),
                            ("clip", CLIP, lambda m: classify_cmd(m, IMAGE))]:
        cfg = json.loads((src / "config.json").read_text())
        for path, _orig in numeric_paths(cfg):
            for vname, v in config_values():
                m = copy_model(src, work / "configs" / f"{label}-{path}-{vname}".replace(" ", "_"))
                c = json.loads(json.dumps(cfg))
                set_path(c, path, v)
                (m / "config.json").write_text(json.dumps(c))
                # null: transformers fills the field's default; eps 0 is legal
                # arithmetic; CLIP reads the top-level projection_dim only
                lenient = path.split(".")[-1] in LENIENT or vname == "null"
                lenient |= "eps" in path and vname in ("0", "1.5", "1e10", "1e12", "2^63")
                lenient |= path == "text_config.projection_dim"
                expect = "any" if lenient else "refuse"
                cases.append(Case("model configs", f"{label} {path} = {vname}", cmd(m), expect))
        for part in ["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"]:
            m = copy_model(src, work / "configs" / f"{label}-fifo-{part}")
            (m / part).unlink()
            os.mkfifo(m / part)
            cases.append(Case("model configs", f"{label} {part} is a FIFO", cmd(m)))
            m = copy_model(src, work / "configs" / f"{label}-dir-{part}")
            (m / part).unlink()
            (m / part).mkdir()
            cases.append(Case("model configs", f"{label} {part} is a directory", cmd(m)))
        for broken, text in [("empty", ""), ("not JSON", "{"), ("a list", "[]"),
                             ("model_type unknown", json.dumps({**cfg, "model_type": "nope"})),
                             ("NaN literal", json.dumps(cfg).replace("1e-05", "NaN", 1))]:
            m = copy_model(src, work / "configs" / f"{label}-whole-{broken}".replace(" ", "_"))
            (m / "config.json").write_text(text)
            cases.append(Case("model configs", f"{label} config.json {broken}", cmd(m)))
        for eps in ["-1e-5"]:
            m = copy_model(src, work / "configs" / f"{label}-eps{eps}")
            c = json.loads(json.dumps(cfg))
            set_path(c, "vision_config.layer_norm_eps", float(eps))
            (m / "config.json").write_text(json.dumps(c))
            cases.append(Case("model configs", f"{label} vision layer_norm_eps = {eps}", cmd(m)))
    return cases


def processor_configs(work: Path, rng: random.Random):
    cases = []
    src_cfg = json.loads((CLIP / "preprocessor_config.json").read_text())
    muts = [
        ("crop_size 100000^2", "crop_size", {"height": 100000, "width": 100000}),
        ("crop_size 0", "crop_size", {"height": 0, "width": 0}),
        ("crop_size -5", "crop_size", {"height": -5, "width": -5}),
        ("size.shortest_edge 100000", "size", {"shortest_edge": 100000}),
        ("size.shortest_edge 0", "size", {"shortest_edge": 0}),
        ("size 2^40 x 2^40", "size", {"height": 1 << 40, "width": 1 << 40}),
        ("size empty", "size", {}),
        ("image_mean of 2", "image_mean", [0.5, 0.5]),
        ("image_mean strings", "image_mean", ["a", "b", "c"]),
        ("image_std zeros", "image_std", [0, 0, 0]),
        ("rescale_factor 1e308", "rescale_factor", 1e308),
        ("rescale_factor string", "rescale_factor", "x"),
        ("resample 99", "resample", 99),
        ("resample -1", "resample", -1),
    ]
    for label, src, cmd in [("clip", CLIP, lambda m: classify_cmd(m, IMAGE)),
                            ("vlm", VLM, lambda m: ask(m, IMAGE))]:
        for name, key, v in muts:
            m = copy_model(src, work / "processor" / f"{label}-{name}".replace(" ", "_").replace("^", ""))
            c = dict(src_cfg)
            c[key] = v
            (m / "preprocessor_config.json").write_text(json.dumps(c))
            cases.append(Case("processor configs", f"{label} {name}", cmd(m)))
        for broken, text in [("empty", ""), ("not JSON", "{{"), ("a number", "7")]:
            m = copy_model(src, work / "processor" / f"{label}-whole-{broken}".replace(" ", "_"))
            (m / "preprocessor_config.json").write_text(text)
            cases.append(Case("processor configs", f"{label} preprocessor_config.json {broken}", cmd(m)))
    return cases


def safetensors_parts(path: Path):
    data = path.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def safetensors_bytes(header: dict, body: bytes, declared_len=None) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h) if declared_len is None else declared_len) + h + body


def weights(work: Path, rng: random.Random):
    cases = []
    for label, src, cmd in [("vlm", VLM, lambda m: ask(m, IMAGE)),
                            ("clip", CLIP, lambda m: classify_cmd(m, IMAGE)),
                            ("clip-embed", CLIP, lambda m: ["embed", "--model", m, "--image", IMAGE])]:
        header, body = safetensors_parts(src / "model.safetensors")
        names = sorted(k for k in header if k != "__metadata__")
        picks = rng.sample(names, 4)

        def variant(name, new_bytes, expect="refuse"):
            m = copy_model(src, work / "weights" / f"{label}-{name}".replace(" ", "_").replace("/", "_"))
            (m / "model.safetensors").write_bytes(new_bytes)
            cases.append(Case("weights", f"{label} {name}", cmd(m), expect))

        for t in picks:
            # `embed --image` runs the vision side only: the text tower's
            # weights may be anything there
            unused = label == "clip-embed" and t.startswith("text_")
            h = json.loads(json.dumps(header))
            del h[t]
            variant(f"without {t}", safetensors_bytes(h, body))
            h = json.loads(json.dumps(header))
            h[t]["shape"] = list(reversed(h[t]["shape"])) + [1]
            variant(f"{t} with a wrong shape", safetensors_bytes(h, body))
            for dt, size in [("U8", 1), ("I32", 4)]:  # refused at load, used or not
                h = json.loads(json.dumps(header))
                start, end = h[t]["data_offsets"]
                h[t]["dtype"] = dt
                h[t]["shape"] = [(end - start) // size]
                variant(f"{t} as {dt} over f32 bytes", safetensors_bytes(h, body))
            h = json.loads(json.dumps(header))
            start, end = h[t]["data_offsets"]
            nan = body[:start] + struct.pack("<f", float("nan")) * ((end - start) // 4) + body[end:]
            variant(f"{t} all NaN", safetensors_bytes(h, nan), "any" if unused else "refuse")
        h = json.loads(json.dumps(header))
        h["extra.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        variant("an unexpected extra tensor", safetensors_bytes(h, body))
        full = (src / "model.safetensors").read_bytes()
        variant("cut in half", full[: len(full) // 2])
        variant("header only", full[: 8 + struct.unpack_from("<Q", full)[0]])
        variant("header length 2^62", safetensors_bytes(header, body, 1 << 62))
        variant("header length past the file", safetensors_bytes(header, body, len(full)))
        variant("header not JSON", struct.pack("<Q", 8) + b"{{{{{{{{" + body)
        variant("empty file", b"")
        h = json.loads(json.dumps(header))
        t = picks[0]
        h[t]["data_offsets"] = [0, 1 << 40]
        variant(f"{t} offsets past the end", safetensors_bytes(h, body))
        h = json.loads(json.dumps(header))
        h[t]["shape"] = [1 << 31, 1 << 31]
        variant(f"{t} shape 2^31 x 2^31", safetensors_bytes(h, body))
    return cases


def tokenizers_and_templates(work: Path, rng: random.Random):
    cases = []
    tok = (VLM / "tokenizer.json").read_text()
    for label, src, cmd in [("vlm", VLM, lambda m: ask(m, IMAGE)),
                            ("clip", CLIP, lambda m: classify_cmd(m, IMAGE))]:
        for name, text in [("empty", ""), ("not JSON", "{"), ("cut in half", tok[: len(tok) // 2]),
                           ("a list", "[]"), ("model null", json.dumps({**json.loads(tok), "model": None}))]:
            m = copy_model(src, work / "tokenizer" / f"{label}-{name}".replace(" ", "_"))
            (m / "tokenizer.json").write_text(text)
            cases.append(Case("tokenizers and templates", f"{label} tokenizer.json {name}", cmd(m)))
    templates = [
        ("nested loops 10^4 x 10^4 x 10^4", "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}x{% endfor %}{% endfor %}{% endfor %}"),
        ("nested loops 10^5 x 10^5 (no output)", "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"),
        ("one loop 10^9", "{% for a in range(1000000000) %}x{% endfor %}"),
        ("string repeat 10^10", "{{ 'x' * 10000000000 }}"),
        ("string doubling", "{% set s = namespace(v='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v }}"),
        ("recursive macro", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
        ("syntax error", "{% for %}"),
        ("undefined call", "{{ nothing() }}"),
        ("raise_exception", "{{ raise_exception('nope') }}"),
        ("empty output", ""),
    ]
    m = copy_model(VLM, work / "template" / "fifo")
    (m / "chat_template.jinja").unlink()
    os.mkfifo(m / "chat_template.jinja")
    cases.append(Case("tokenizers and templates", "chat_template.jinja is a FIFO", ask(m, IMAGE)))
    for name, t in templates:
        m = copy_model(VLM, work / "template" / name.replace(" ", "_").replace("^", ""))
        (m / "chat_template.jinja").write_text(t)
        expect = "any" if name in ("empty output",) else "refuse"
        cases.append(Case("tokenizers and templates", f"chat template: {name}", ask(m, IMAGE), expect,
                          timeout=30))
    return cases


def gguf(work: Path, rng: random.Random):
    if not SMOLLM2_GGUF.is_file():
        raise SystemExit(f"{SMOLLM2_GGUF} is missing: run scripts/fetch_test_data.sh")
    d = work / "gguf"
    cases = []

    def gen(path, expect="refuse", prompt="hello"):
        return Case("GGUF files", path.name, ["generate", "--model", path, "--max-tokens", "4", prompt],
                    expect)

    def make(name, g=None, expect="refuse", **kw):
        g = g or tiny_gguf(random.Random(1))
        cases.append(gen(write(d / f"{name}.gguf", g.bytes(**kw)), expect))

    base = tiny_gguf(random.Random(1))
    seed_path = write(d / "seed-ok.gguf", base.bytes())
    cases.append(gen(seed_path, "any"))
    raw = seed_path.read_bytes()
    for a in [0, 3, 1 << 31]:
        g = tiny_gguf(random.Random(1))
        g.alignment = a
        make(f"alignment-{a}", g)
    for v in [0, 1, 99]:
        g = tiny_gguf(random.Random(1))
        g.version = v
        make(f"version-{v}", g)
    make("tensor-count-2^60", tensor_count=1 << 60)
    make("tensor-count-plus-1", tensor_count=len(base.tensors) + 1)
    make("kv-count-2^60", kv_count=1 << 60)
    make("kv-count-plus-5", kv_count=len(base.meta) + 6)
    make("offsets-misaligned", offsets=[i * 4 + 1 for i in range(len(base.tensors))])
    make("offsets-2^50", offsets=[1 << 50] * len(base.tensors))
    make("offsets-overlapping", offsets=[0] * len(base.tensors))
    # tensor dims and types
    for name, change in [
        ("zero-dims", lambda t: (t[0], [], t[2], t[3])),
        ("dim-0", lambda t: (t[0], [0] + t[1][1:], t[2], t[3])),
        ("five-dims", lambda t: (t[0], t[1] + [1, 1, 1, 1], t[2], t[3])),
        ("dims-2^32-squared", lambda t: (t[0], [1 << 32, 1 << 32], t[2], t[3])),
        ("dims-product-overflows", lambda t: (t[0], [1 << 63, 4], t[2], t[3])),
        ("q4_0-over-f32", lambda t: (t[0], t[1], 2, t[3])),
        ("q8_0-over-f32", lambda t: (t[0], t[1], 8, t[3])),
        ("f16-over-f32", lambda t: (t[0], t[1], 1, t[3])),
        ("type-99", lambda t: (t[0], t[1], 99, t[3])),
        ("q4_0-odd-count", lambda t: (t[0], [5], 2, t[3][:4])),
        ("shape-swapped", lambda t: (t[0], list(reversed(t[1])), t[2], t[3])),
    ]:
        for which in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight"]:
            if name == "shape-swapped" and which != "token_embd.weight":
                continue  # square and 1-D tensors read the same both ways
            g = tiny_gguf(random.Random(1))
            g.tensors = [change(t) if t[0] == which else t for t in g.tensors]
            # 8 f32 weights retyped f16 shrink by 16 bytes, inside the 32-byte
            # alignment padding: the layout is self-consistent, no reader can tell
            lie_in_padding = name == "f16-over-f32" and which == "blk.0.attn_norm.weight"
            make(f"{name}-{which}", g, "any" if lie_in_padding else "refuse")
    g = tiny_gguf(random.Random(1))
    g.tensors = [t for t in g.tensors if t[0] != "blk.0.ffn_up.weight"]
    make("missing-ffn_up", g)
    g = tiny_gguf(random.Random(1))
    g.tensors = g.tensors + [("blk.5.extra.weight", [8], 0, bytes(32))]
    make("extra-tensor", g)
    g = tiny_gguf(random.Random(1))
    nan = struct.pack("<f", float("nan"))
    g.tensors = [(n, dm, ty, nan * (len(b) // 4)) if n == "blk.0.ffn_down.weight" else (n, dm, ty, b)
                 for n, dm, ty, b in g.tensors]
    make("nan-weights", g)
    # metadata values
    for key, t, v in [
        ("llama.embedding_length", 4, 0), ("llama.embedding_length", 10, 1 << 62),
        ("llama.embedding_length", 4, 16), ("llama.block_count", 10, 10**12),
        ("llama.block_count", 4, 0), ("llama.block_count", 4, 2),
        ("llama.feed_forward_length", 10, 1 << 40), ("llama.attention.head_count", 4, 0),
        ("llama.attention.head_count", 4, 3), ("llama.attention.head_count_kv", 4, 0),
        ("llama.attention.head_count_kv", 4, 2), ("llama.context_length", 4, 0),
        ("llama.context_length", 10, 1 << 60), ("llama.attention.layer_norm_rms_epsilon", 6, -1.0),
        ("llama.attention.layer_norm_rms_epsilon", 6, float("nan")), ("llama.rope.freq_base", 6, 0.0),
        ("llama.rope.freq_base", 6, float("inf")), ("llama.vocab_size", 10, 10**10),
        ("llama.attention.key_length", 4, 1 << 20), ("llama.embedding_length", 8, "wide"),
        ("general.architecture", 8, "gpt-j"), ("general.architecture", 4, 7),
        ("tokenizer.ggml.bos_token_id", 4, 1 << 31), ("tokenizer.ggml.eos_token_id", 4, 1 << 31),
        ("tokenizer.ggml.model", 8, "wordpiece"), ("tokenizer.ggml.tokens", 9, (8, [])),
        ("tokenizer.ggml.merges", 9, (8, ["a"])), ("tokenizer.ggml.tokens", 8, "notalist"),
    ]:
        g = tiny_gguf(random.Random(1))
        g.meta = [m for m in g.meta if m[0] != key] + [(key, t, v)]
        ok = (key, v) in [("llama.attention.head_count_kv", 2)]
        make(f"meta-{key}-{v if not isinstance(v, tuple) else 'list'}", g, "any" if ok else "refuse")
    for key in ["llama.embedding_length", "llama.block_count", "general.architecture",
                "tokenizer.ggml.tokens", "tokenizer.ggml.model"]:
        g = tiny_gguf(random.Random(1))
        g.meta = [m for m in g.meta if m[0] != key]
        make(f"without-{key}", g)
    # raw byte damage: lengths that lie, truncation, magic
    first_key_len = 24
    for name, b in [
        ("magic-GGML", b"GGML" + raw[4:]),
        ("empty", b""),
        ("header-only-16", raw[:16]),
        ("cut-in-metadata", raw[: len(raw) // 10]),
        ("cut-in-tensor-data", raw[: len(raw) - 100]),
        ("first-key-length-2^62", raw[:first_key_len] + struct.pack("<Q", 1 << 62) + raw[first_key_len + 8:]),
        ("first-key-length-past-file", raw[:first_key_len] + struct.pack("<Q", len(raw)) + raw[first_key_len + 8:]),
    ]:
        cases.append(gen(write(d / f"raw-{name}.gguf", b)))
    for i in range(25):
        b = bytearray(raw[:200_000])
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cases.append(gen(write(d / f"flip-{i}.gguf", bytes(b) + raw[200_000:]), "any"))
    return cases


def prompts_and_flags(work: Path, rng: random.Random):
    lm = SMOLLM2_GGUF
    cases = []

    def g(name, args, expect="refuse", code=1, **kw):
        cases.append(Case("prompts and flags", name, ["generate", "--model", lm] + args, expect, code, **kw))

    def a(name, args, expect="refuse", code=1, **kw):
        cases.append(Case("prompts and flags", name, args, expect, code, **kw))

    long_prompt = " ".join(rng.choice(["cat", "dog", "sky", "blue"]) for _ in range(9000))
    # a request that cannot fit is the caller's fault: usage, exit 2
    g("prompt over the context (9000 words)", ["--max-tokens", "4", long_prompt], "refuse", 2)
    a("ask: max-tokens 10^12 (ends at the context)", ask(VLM, IMAGE, "what?", "--max-tokens", "1000000000000"),
      "any")
    for flag, vals in [("--temperature", ["NaN", "-1", "inf", "1e309"]),
                       ("--top-p", ["2", "-1", "NaN", "0"]),
                       ("--top-k", ["0", "-3", "99999999999999999999"]),
                       ("--repetition-penalty", ["0", "-1", "NaN", "inf"])]:
        for v in vals:
            ok = (flag, v) in [("--top-k", "0"), ("--top-p", "0")]
            g(f"{flag} {v}", [flag, v, "--max-tokens", "2", "hi"], "any" if ok else "refuse", 2)
    g("--seed 2^64", ["--seed", str(1 << 64), "hi"], "refuse", 2)
    g("--stop ''", ["--stop", "", "--max-tokens", "2", "hi"], "any")
    g("--system without --chat", ["--system", "x", "hi"], "refuse", 2)
    g("--dtype f64", ["--dtype", "f64", "hi"], "refuse", 2)
    g("empty prompt", ["--max-tokens", "2", ""], "any")
    g("prompt of 10^5 newlines", ["--max-tokens", "2", "\n" * 100000], "refuse", 2)
    g("invalid UTF-8 prompt", ["--max-tokens", "2", os.fsdecode(b"\xff\xfe\xfd")], "any", 2)
    g("prompt with control characters", ["--max-tokens", "2", "\x01\x02\x1b[31m"], "any")
    a("generate: model is a directory without config", ["generate", "--model", work, "hi"])
    a("generate: model missing", ["generate", "--model", work / "nope.gguf", "hi"])
    a("generate: model is /dev/zero", ["generate", "--model", "/dev/zero", "hi"])
    # the VLM: context of 128 tokens
    a("ask: question over the VLM's context", ask(VLM, IMAGE, "what " * 400), "refuse", 2)
    a("ask: no image", ask(VLM, None), "any")
    a("ask: 40 images (a chat turn of 40 image parts)", ["ask", "--model", VLM] + ["--image", IMAGE] * 40
      + ["what?"], "any")
    a("ask --raw: two <image> for one image", ask(VLM, IMAGE, "<image><image> what?", "--raw"), "refuse", 2)
    a("ask --raw: <image> without an image", ask(VLM, None, "<image> what?", "--raw"), "refuse", 2)
    a("ask: max-tokens 0", ask(VLM, IMAGE, "what?", "--max-tokens", "0"), "any")
    # the shipped model reads the class token alone: no attention map (usage);
    # the write failures of a map are tested in crates/glimpse-cli/tests
    a("ask: attention map from a class-token model", ask(VLM, IMAGE, "what?", "--attention-map",
                                                         work / "map.png"), "refuse", 2)
    a("ask: model dir missing", ask(work / "nope", IMAGE))
    a("ask: model is a file", ask(IMAGE, IMAGE))
    a("classify: no labels", ["classify", "--model", CLIP, IMAGE, "--labels", ""], "refuse", 2)
    a("classify: 50000 labels", ["classify", "--model", CLIP, IMAGE, "--labels", ",".join(["x"] * 50000)],
      "any")
    a("classify: a label of 10^5 characters", classify_cmd(CLIP, IMAGE, "a" * 100000), "any")
    a("embed: nothing to embed", ["embed", "--model", CLIP], "refuse", 2)
    a("embed: a VLM as CLIP", ["embed", "--model", VLM, "--text", "x"])
    a("classify: a VLM as CLIP", classify_cmd(VLM, IMAGE))
    a("ask: a CLIP as VLM", ask(CLIP, IMAGE))
    a("unknown subcommand", ["frobnicate"], "refuse", 2)
    a("unknown flag", ["ask", "--frobnicate"], "refuse", 2)
    return cases


def eval_data(work: Path, rng: random.Random):
    d = work / "eval"
    cases = []
    img = IMAGE.read_bytes()

    def split(name, questions, images=("0",), raw=None):
        root = d / name
        write(root / "questions.json", raw if raw is not None else json.dumps(questions))
        for i in images:
            write(root / "images" / f"{i}.png", img)
        return root

    q = [["what shape is in the image?", "triangle", 0], ["is there a circle?", "no", 0]]
    kinds = ["vqa", "pope", "zeroshot", "retrieval"]

    def each(name, data, expect="refuse", kinds=kinds):
        for k in kinds:
            model = CLIP if k in ("zeroshot", "retrieval") else VLM
            cases.append(Case("eval data", f"{k}: {name}", ["eval", k, "--model", model, "--data", data],
                              expect, timeout=60))

    each("a valid split of 2 questions", split("ok", q), "any")
    each("empty question list", split("empty", []))
    each("questions.json empty file", split("emptyfile", None, raw=""))
    each("questions.json not JSON", split("notjson", None, raw="[[1,"))
    each("questions.json an object", split("object", None, raw="{}"))
    each("question row of wrong types", split("types", [[1, 2, "x"]]))
    each("question naming a missing image", split("missing", [["what?", "x", 7]]))
    each("question with a negative image id", split("negid", [["what?", "x", -1]]))
    each("question with image id 2^64", split("bigid", None, raw='[["what?", "x", 18446744073709551616]]'))
    each("image that is not an image", split("badimg", q, images=()), "refuse")
    write(d / "badimg/images/0.png", "not a png")
    each("directory without questions.json", d / "nothing")
    (d / "nothing").mkdir(parents=True, exist_ok=True)
    each("data path missing", d / "nope")
    fifo = d / "fifo.json"
    if not fifo.exists():
        os.mkfifo(fifo)
    each("data path a FIFO", fifo)
    each("data path /dev/zero", "/dev/zero")
    sparse = d / "sparse" / "questions.json"
    sparse.parent.mkdir(parents=True, exist_ok=True)
    with open(sparse, "wb") as f:
        f.truncate(3 << 30)
    each("questions.json a 3 GiB sparse file", d / "sparse")
    # LLaVA JSON (vqa, pope) and caption JSONL (retrieval)
    llava = [{"id": "a", "image": str(IMAGE), "conversations": [
        {"from": "human", "value": "<image>\nwhat shape?"}, {"from": "gpt", "value": "triangle"}]}]
    each("LLaVA JSON, valid", write(d / "llava-ok.json", json.dumps(llava)), "any", ["vqa", "pope"])
    each("LLaVA JSON, empty list", write(d / "llava-empty.json", "[]"), "refuse", ["vqa", "pope"])
    bad = json.loads(json.dumps(llava))
    bad[0]["conversations"][0]["value"] = "<image><image> what?"
    each("LLaVA JSON, two <image> for one image", write(d / "llava-2img.json", json.dumps(bad)), "refuse",
         ["vqa", "pope"])
    bad = json.loads(json.dumps(llava))
    bad[0]["conversations"] = "x"
    each("LLaVA JSON, conversations a string", write(d / "llava-str.json", json.dumps(bad)), "refuse",
         ["vqa", "pope"])
    bad = json.loads(json.dumps(llava))
    bad[0]["image"] = str(fifo)
    each("LLaVA JSON, image a FIFO", write(d / "llava-fifo.json", json.dumps(bad)), "refuse", ["vqa"])
    cap = [{"image": str(IMAGE), "caption": "a red triangle"}, {"image": str(IMAGE), "caption": "x"}]
    jl = "\n".join(json.dumps(c) for c in cap)
    each("caption JSONL, valid", write(d / "cap-ok.jsonl", jl), "any", ["retrieval"])
    each("caption JSONL, empty", write(d / "cap-empty.jsonl", ""), "refuse", ["retrieval"])
    each("caption JSONL, a line cut", write(d / "cap-cut.jsonl", jl[:-10]), "refuse", ["retrieval"])
    each("caption JSONL, 10 MB line", write(d / "cap-long.jsonl", json.dumps(
        {"image": str(IMAGE), "caption": "x" * 10_000_000})), "any", ["retrieval"])
    each("caption JSONL, image missing", write(d / "cap-missing.jsonl", json.dumps(
        {"image": "/nonexistent.png", "caption": "x"})), "refuse", ["retrieval"])
    cases.append(Case("eval data", "vqa --limit 0", ["eval", "vqa", "--model", VLM, "--data", d / "ok",
                                                      "--limit", "0"], code=2))
    cases.append(Case("eval data", "vqa --predictions into a missing dir",
                      ["eval", "vqa", "--model", VLM, "--data", d / "ok", "--predictions",
                       d / "no/dir/p.jsonl"]))
    return cases


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return json.dumps(v)


def toml(doc: dict) -> str:
    """Top-level scalars, then [section] / [a.b] tables (what recipes use)."""
    out = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]

    def tables(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                out.append(f"\n[{prefix}{k}]")
                out.extend(f"{kk} = {toml_value(vv)}" for kk, vv in v.items() if not isinstance(vv, dict))
                tables(v, f"{prefix}{k}.")

    tables(doc, "")
    return "\n".join(out) + "\n"


def tiny_recipe() -> dict:
    stage = {"steps": 2, "batch_size": 8, "lr": 3e-3, "log_every": 1}
    return {
        "seed": 0,
        "data": {"easy_vqa": str(EASY_VQA), "train_images": 24, "eval_questions": 8, "eval_images": 8},
        "tokenizer": {"vocab_size": 300},
        "model": {
            "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "intermediate_size": 32},
            "text_encoder": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "intermediate_size": 32, "max_position_embeddings": 16, "projection_dim": 16},
            "decoder": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 128},
            "projector": {"type": "mlp", "compression": "none"},
        },
        "contrastive": dict(stage, save_every=1),
        "instruct": dict(stage, save_every=1),
    }


# A value that is merely unusual for these fields (0 = off, a share of 0...).
RECIPE_ZERO_OK = {"seed", "num_hidden_layers", "warmup_steps", "weight_decay", "grad_clip", "log_every", "eval_every",
                  "save_every", "hard_negatives", "hard_negative_random_share", "shift", "min_lr_ratio",
                  "eval_questions", "eval_images", "feature_layer"}
RECIPE_HUGE_OK = {"seed", "train_images", "eval_questions", "eval_images", "log_every", "eval_every",
                  "save_every", "warmup_steps"}
# Huge values that mean "a long run", not a fault: not probed.
RECIPE_HUGE_SKIP = {"steps", "accumulate"}


def recipes(work: Path, rng: random.Random):
    if not EASY_VQA.is_dir():
        raise SystemExit(f"{EASY_VQA} is missing: run scripts/fetch_test_data.sh")
    d = work / "recipes"
    cases = []
    base = tiny_recipe()

    def case(name, doc_or_text, expect="refuse"):
        slug = "".join(c if c.isalnum() else "_" for c in name)[:80]
        text = doc_or_text if isinstance(doc_or_text, str) else toml(doc_or_text)
        path = write(d / f"{slug}.toml", text)
        shutil.rmtree(d / f"run-{slug}", ignore_errors=True)  # left by an earlier probe
        cases.append(Case("recipes", name, ["train", path, "--out", d / f"run-{slug}"], expect,
                          timeout=90))

    case("the tiny recipe itself", base, "any")
    for path, _ in numeric_paths(base):
        key = path.split(".")[-1]
        values = [("0", 0), ("-1", -1), ("NaN", float("nan")), ("string", "x")]
        if key not in RECIPE_HUGE_SKIP:
            values += [("2^40", 1 << 40), ("1e12", 10**12)]
        for vname, v in values:
            doc = json.loads(json.dumps(base))
            set_path(doc, path, v)
            ok = (vname == "0" and key in RECIPE_ZERO_OK) or (vname in ("2^40", "1e12") and key in RECIPE_HUGE_OK)
            case(f"{path} = {vname}", doc, "any" if ok else "refuse")
    for path, v in [("contrastive.lr", float("inf")), ("instruct.lr", 1e300),
                    ("model.decoder.rope_theta", 0.0), ("model.decoder.rope_theta", -1.0),
                    ("model.projector.type", "transformer"), ("model.projector.compression", "zip"),
                    ("model.vision.feature_select", "all"), ("instruct.augment", "rotate"),
                    ("contrastive.loss", "mse"), ("data.easy_vqa", str(work / "nope")),
                    ("data.easy_vqa", "/dev/zero"),
                    ("model.decoder.num_key_value_heads", 3), ("model.vision.num_attention_heads", 3),
                    ("model.decoder.num_attention_heads", 5),
                    ("model.decoder.hidden_size", 30)]:
        doc = json.loads(json.dumps(base))
        set_path(doc, path, v)
        case(f"{path} = {v}", doc)
    doc = json.loads(json.dumps(base))
    doc["model"]["vision"]["colour"] = "red"
    case("unknown field model.vision.colour", doc)
    doc = json.loads(json.dumps(base))
    doc["dreams"] = {"steps": 1}
    case("unknown section [dreams]", doc)
    doc = json.loads(json.dumps(base))
    del doc["contrastive"], doc["instruct"]
    case("no stages", doc)
    doc = json.loads(json.dumps(base))
    del doc["model"]["decoder"]
    case("no decoder", doc)
    for name, text in [("empty", ""), ("not TOML", "[[[["), ("binary", "\x00\x01\x02"),
                       ("a 10^6-deep array", "x = " + "[" * 100000)]:
        case(f"recipe file {name}", text)
    cases.append(Case("recipes", "recipe is a FIFO", ["train", _fifo(d / "fifo.toml"), "--out", d / "r"]))
    cases.append(Case("recipes", "recipe is /dev/zero", ["train", "/dev/zero", "--out", d / "r"]))
    cases.append(Case("recipes", "recipe missing", ["train", d / "nope.toml", "--out", d / "r"]))
    cases.append(Case("recipes", "--out is a file", ["train", write(d / "outfile.toml", toml(base)),
                                                    "--out", IMAGE]))
    return cases


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.mkfifo(path)
    return path


def checkpoints(work: Path, rng: random.Random, binary: Path):
    """One tiny run stopped part way (its checkpoints are the seed), then
    damaged copies resumed."""
    d = work / "checkpoints"
    base = tiny_recipe()
    base["contrastive"]["steps"] = 4
    base["instruct"]["steps"] = 4
    recipe = write(d / "recipe.toml", toml(base))
    seed_run = d / "seed-run"
    if not (seed_run / "instruct").exists():
        shutil.rmtree(seed_run, ignore_errors=True)
        r = subprocess.run([binary, "train", recipe, "--out", seed_run], capture_output=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"the seed run failed: {r.stderr.decode()[-500:]}")
    cases = []

    def variant(name, damage, expect="refuse", args=(), recipe_path=None):
        run = d / ("run-" + "".join(c if c.isalnum() else "_" for c in name)[:60])
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(seed_run, run, symlinks=True)
        damage(run)
        cases.append(Case("checkpoints", name, ["train", recipe_path or run / "recipe.toml", "--resume",
                                               "--out", run, *args], expect, timeout=120))

    def files(run, pattern):
        return sorted(p for p in run.rglob(pattern) if p.is_file())

    variant("resume a finished run", lambda r: None, "any")

    def cut_metrics(run):
        for m in files(run, "metrics.jsonl"):
            b = m.read_bytes()
            m.write_bytes(b[: len(b) - 7])
    variant("metrics.jsonl cut mid-line", cut_metrics, "any")

    def unfinish(run):
        # pretend the last stage never finished: its final weights gone
        for f in files(run / "instruct", "final.safetensors"):
            f.unlink()
    variant("last stage unfinished", unfinish, "any")

    def unfinish_cut_metrics(run):
        unfinish(run)
        cut_metrics(run)
    variant("unfinished, metrics.jsonl cut mid-line", unfinish_cut_metrics, "any")

    def damage_ckpts(mode):
        def f(run):
            unfinish(run)
            for c in files(run / "instruct", "*.safetensors"):
                b = c.read_bytes()
                if mode == "cut":
                    c.write_bytes(b[: len(b) // 2])
                elif mode == "empty":
                    c.write_bytes(b"")
                elif mode == "garbage":
                    c.write_bytes(bytes(rng.randrange(256) for _ in range(200)))
        return f

    for mode in ["cut", "empty", "garbage"]:
        variant(f"checkpoint tensors {mode}", damage_ckpts(mode), "any")

    def drop(pattern):
        def f(run):
            unfinish(run)
            for p in files(run / "instruct", pattern):
                p.unlink()
        return f
    for pattern in ["*.json", "latest", "*optim*"]:
        variant(f"checkpoint without {pattern}", drop(pattern), "any")

    def changed(path, value):
        def f(run):
            unfinish(run)
            doc = json.loads(json.dumps(base))
            set_path(doc, path, value)
            write(run / "changed.toml", toml(doc))
        return f
    variant("resume with a changed lr", changed("instruct.lr", 1e-2), "refuse",
            recipe_path=None)
    cases[-1].argv[1] = cases[-1].argv[4] / "changed.toml"
    variant("resume with steps below the checkpoint's", changed("instruct.steps", 1), "refuse")
    cases[-1].argv[1] = cases[-1].argv[4] / "changed.toml"
    variant("resume with a changed width", changed("model.decoder.hidden_size", 64), "refuse")
    cases[-1].argv[1] = cases[-1].argv[4] / "changed.toml"

    def garbage_recipe(run):
        unfinish(run)
        (run / "recipe.toml").write_text("[[[[")
    variant("run's recipe.toml garbage", garbage_recipe)
    shutil.rmtree(d / "not-a-run", ignore_errors=True)
    cases.append(Case("checkpoints", "resume a directory that is not a run",
                      ["train", recipe, "--resume", "--out", d / "not-a-run"], timeout=60))
    return cases


def d_small(work: Path) -> Path:
    """A 2-question easy-VQA split (what `eval zeroshot` reads whole)."""
    root = work / "streams" / "split"
    write(root / "questions.json", json.dumps([["what shape?", "triangle", 0], ["circle?", "no", 0]]))
    write(root / "images" / "0.png", IMAGE.read_bytes())
    return root


def output_streams(work: Path, rng: random.Random):
    cases = []
    cmds = [
        ("ask", ask(VLM, IMAGE)),
        ("ask --json", ask(VLM, IMAGE, "what?", "--json")),
        ("classify", classify_cmd(CLIP, IMAGE)),
        ("classify --json", classify_cmd(CLIP, IMAGE) + ["--json"]),
        ("embed", ["embed", "--model", CLIP, "--text", "a red triangle"]),
        ("embed --json", ["embed", "--model", CLIP, "--image", IMAGE, "--json"]),
        ("generate", ["generate", "--model", SMOLLM2_GGUF, "--max-tokens", "4", "hi"]),
        ("eval vqa", ["eval", "vqa", "--model", VLM, "--data", EASY_VQA / "test", "--limit", "4"]),
        ("eval zeroshot", ["eval", "zeroshot", "--model", CLIP, "--data", d_small(work)]),
        ("--help", ["--help"]),
        ("--version", ["--version"]),
    ]
    for name, argv in cmds:
        for mode in ["full", "closed"]:
            cases.append(Case("output streams", f"{name} > {'/dev/full' if mode == 'full' else 'a closed pipe'}",
                              argv, "refuse", 1, stdout=mode, timeout=60))
    return cases


CLASSES = {
    "images": images,
    "model configs": model_configs,
    "processor configs": processor_configs,
    "weights": weights,
    "tokenizers and templates": tokenizers_and_templates,
    "GGUF files": gguf,
    "prompts and flags": prompts_and_flags,
    "eval data": eval_data,
    "recipes": recipes,
    "checkpoints": checkpoints,
    "output streams": output_streams,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=REPO / "target/release/glimpse")
    ap.add_argument("--work", type=Path, default=Path("/tmp/glimpse-probe"))
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case (training cases get more)")
    ap.add_argument("--mem-mb", type=int, default=4096, help="address-space cap per case")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", action="append", help="a class (substring of its name); repeatable")
    ap.add_argument("--json", type=Path, help="write every case's outcome here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case, not only the bad ones")
    args = ap.parse_args()
    binary = args.bin.resolve()
    if not binary.is_file():
        raise SystemExit(f"{binary} is missing: cargo build --release -p glimpse-cli")
    rng = random.Random(23)
    args.work.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, make in CLASSES.items():
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        made = make(args.work, rng, binary) if make is checkpoints else make(args.work, rng)
        cases += made
    print(f"{len(cases)} cases, {args.jobs} at a time, {args.timeout:.0f} s and {args.mem_mb} MiB each",
          file=sys.stderr)
    results = []
    with futures.ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda c: run_case(binary, c, args.timeout, args.mem_mb), cases):
            results.append(r)
            if args.verbose or r.outcome in BAD:
                last = r.stderr.strip().splitlines()[-1:] or [""]
                print(f"{r.outcome:8} {r.case.cls} | {r.case.name} | rc {r.rc} | {r.seconds:.1f}s | {last[0][:200]}",
                      file=sys.stderr)
    table = {}
    for r in results:
        row = table.setdefault(r.case.cls, dict.fromkeys(OUTCOMES, 0))
        row[r.outcome] += 1
    width = max(len(c) for c in table) if table else 10
    print(f"| {'class':{width}} | cases | " + " | ".join(OUTCOMES) + " |")
    print(f"|{'-' * (width + 2)}|------:|" + "|".join("-" * (len(o) + 1) + ":" for o in OUTCOMES) + "|")
    total = dict.fromkeys(OUTCOMES, 0)
    for cls, row in table.items():
        for o in OUTCOMES:
            total[o] += row[o]
        print(f"| {cls:{width}} | {sum(row.values()):5} | " + " | ".join(f"{row[o]:{len(o)}}" for o in OUTCOMES) + " |")
    print(f"| {'total':{width}} | {len(results):5} | " + " | ".join(f"{total[o]:{len(o)}}" for o in OUTCOMES) + " |")
    if args.json:
        args.json.write_text(json.dumps([{"class": r.case.cls, "case": r.case.name, "outcome": r.outcome,
                                          "rc": r.rc, "seconds": round(r.seconds, 2),
                                          "stderr": r.stderr[-2000:]} for r in results], indent=1))
    return 1 if any(r.outcome in BAD for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
