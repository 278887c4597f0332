#!/usr/bin/env python3
"""Writes the tiny video fixtures under fixtures/videos/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_video_fixtures.py

Versions are pinned in scripts/dev/requirements.txt (Pillow encodes, numpy and transformers give
the expected sampled indices). The output is deterministic and committed, so CI checks glimpse's
video input (crates/glimpse-data/tests/video.rs) without Python.

Every frame is 8x6 RGB, frame k's pixel (x, y) = (20k + 3x, 30y + k, 255 - 15k): 48 colours per
frame, so GIF's 256-colour palette holds each frame exactly, and every frame differs from the
others (Pillow merges identical consecutive GIF frames). The Rust test computes the same formula.

fixtures/videos/tiny.gif       12 frames, 100 ms each (10 fps)
fixtures/videos/tiny.webp      10 frames, lossless, durations WEBP_DURATIONS_MS (not uniform:
                               timestamps are the sum of the delays before a frame), every frame
                               a key frame (stored whole, no blending)
fixtures/videos/tiny-blend.webp  the same frames as libwebp stores them by default: frames after
                               the first alpha-blended over the canvas (the image-webp 0.2.4
                               decoder's blend is off by one level on opaque pixels, which libwebp
                               copies unblended; the Rust test pins that within one level)
fixtures/videos/frames/        the GIF's 12 frames as frame1.png .. frame12.png (1-based names, so
                               a plain string sort would put frame10 before frame2)
fixtures/videos/expected.json  {formula, gif {frames, duration_ms}, webp {frames, durations_ms},
                               sampling [{total, num_frames, indices}] from transformers'
                               default_sample_indices_fn (the rule BaseVideoProcessor.sample_frames
                               uses), and fps_sampling [{total, video_fps, fps, num_frames,
                               indices}] likewise with fps=}
"""

import json
from pathlib import Path

import numpy as np
import PIL
import transformers
from PIL import Image
from transformers.video_utils import VideoMetadata, default_sample_indices_fn

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "videos"
W, H = 8, 6
GIF_FRAMES = 12
GIF_DURATION_MS = 100
WEBP_DURATIONS_MS = [40, 40, 80, 40, 120, 40, 40, 200, 40, 60]

# (total frames, frames asked for): small, equal, prime and awkward ratios
SAMPLING_CASES = [(12, 1), (12, 4), (12, 5), (12, 12), (10, 3), (10, 7), (17, 7), (300, 8), (301, 16)]
# (total frames, video fps, sampling fps)
FPS_CASES = [(12, 10.0, 2.0), (12, 10.0, 3.0), (300, 30.0, 1.0), (10, 25.0, 0.1)]


def frame(k: int) -> Image.Image:
    pixels = np.zeros((H, W, 3), dtype=np.uint8)
    for y in range(H):
        for x in range(W):
            pixels[y, x] = (20 * k + 3 * x, 30 * y + k, 255 - 15 * k)
    return Image.fromarray(pixels, "RGB")


def indices(total: int, num_frames=None, fps=None, video_fps=None) -> list[int]:
    meta = VideoMetadata(total_num_frames=total, fps=video_fps)
    return [int(i) for i in default_sample_indices_fn(meta, num_frames=num_frames, fps=fps)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    gif = [frame(k) for k in range(GIF_FRAMES)]
    # optimize=False and disposal 1 (keep): each frame is stored whole, so
    # the file does not depend on Pillow's frame-difference heuristics
    gif[0].save(
        OUT / "tiny.gif",
        save_all=True,
        append_images=gif[1:],
        duration=GIF_DURATION_MS,
        loop=0,
        optimize=False,
        disposal=1,
    )
    webp = [frame(k) for k in range(len(WEBP_DURATIONS_MS))]
    # kmax=1: every frame a key frame, stored whole without blending;
    # libwebp's default blends later frames over the canvas (tiny-blend.webp)
    for file, keyframes in [("tiny.webp", {"kmin": 0, "kmax": 1}), ("tiny-blend.webp", {})]:
        webp[0].save(
            OUT / file,
            save_all=True,
            append_images=webp[1:],
            duration=WEBP_DURATIONS_MS,
            loop=0,
            lossless=True,
            exact=True,
            **keyframes,
        )
    folder = OUT / "frames"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for k, img in enumerate(gif):
        img.save(folder / f"frame{k + 1}.png")

    # the files must round-trip exactly through Pillow, or the test's
    # formula would be checking the encoder
    for path, count in [
        (OUT / "tiny.gif", GIF_FRAMES),
        (OUT / "tiny.webp", len(WEBP_DURATIONS_MS)),
        (OUT / "tiny-blend.webp", len(WEBP_DURATIONS_MS)),
    ]:
        with Image.open(path) as im:
            assert im.n_frames == count, (path, im.n_frames)
            for k in range(count):
                im.seek(k)
                assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(frame(k))), (path, k)

    expected = {
        "versions": {"pillow": PIL.__version__, "numpy": np.__version__, "transformers": transformers.__version__},
        "formula": "frame k, pixel (x, y) = (20k + 3x, 30y + k, 255 - 15k)",
        "width": W,
        "height": H,
        "gif": {"file": "tiny.gif", "frames": GIF_FRAMES, "duration_ms": GIF_DURATION_MS},
        "webp": {
            "files": ["tiny.webp", "tiny-blend.webp"],
            "frames": len(WEBP_DURATIONS_MS),
            "durations_ms": WEBP_DURATIONS_MS,
        },
        "folder": {"dir": "frames", "frames": GIF_FRAMES},
        "sampling": [
            {"total": t, "num_frames": n, "indices": indices(t, num_frames=n)} for t, n in SAMPLING_CASES
        ],
        "fps_sampling": [
            {
                "total": t,
                "video_fps": vf,
                "fps": f,
                "indices": indices(t, fps=f, video_fps=vf),
            }
            for t, vf, f in FPS_CASES
        ],
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(OUT.rglob("*")) if p.is_file()}
    print(json.dumps(sizes))


if __name__ == "__main__":
    main()
