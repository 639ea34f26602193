"""The node's frame cache: what it costs to build, what a load costs with and without it, and the
memory of concurrent trials (pages shared, not copied).

On generated FloW-like 1920x1080 JPEG frames:

1. build: seconds and bytes on disk of the native-resolution cache (``--threads`` decoders);
2. per frame: ``cv2.imread`` against a copy out of the mapping, and a whole training sample
   (tiles of 320 px, mosaic + mixup, augmentation in the loader) decoding or from the cache;
3. memory: ``--trials`` processes at once, each reading every frame as a trial does, either
   from the cache (each maps the same file) or with ``cache_images`` (each decodes its own RAM
   copy); summed RSS, PSS (shared pages divided among their users) and USS (private), from
   ``/proc`` via psutil. Summed RSS counts a shared page once per process; PSS does not.

    python benchmarks/frame_cache.py --frames 40 --trials 4
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from model.config import TrialConfig
from model.data.augment import AugmentParams, sample_rng, train_sample
from model.data.dataset import load_dataset
from model.data.frame_cache import gib, open_frame_cache
from model.data.loader import training_source
from model.data.synth import generate_flow_like
from model.data.transforms import read_image


def _trial(mode: str, paths, sizes, root, ready, go, out) -> None:
    """One stand-in trial: read every frame as training does, then report its memory."""
    if mode == "frame cache":
        frames = open_frame_cache(paths, sizes, 0, root, progress=False)
        held = [frames.frame(k) for k in range(len(paths))]
        total = sum(int(f[::16, ::16].sum()) + int(f.reshape(-1)[::4096].sum()) for f in held)
    else:  # cache_images: a private decoded copy per trial
        held = [read_image(p) for p in paths]
        total = sum(int(f.reshape(-1)[::4096].sum()) for f in held)
    held_bytes = sum(f.nbytes for f in held)
    for f in held:  # touch every page, as epochs of random crops do
        np.add.reduce(f.reshape(-1)[::4096])
    ready.wait()
    info = psutil.Process().memory_full_info()
    out.put((info.rss, info.pss, info.uss, held_bytes, total))
    go.wait()


def concurrent_memory(mode: str, n: int, paths, sizes, root) -> tuple[int, int, int, int]:
    ctx = multiprocessing.get_context("fork")
    ready, go, out = ctx.Barrier(n + 1), ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_trial, args=(mode, paths, sizes, root, ready, go, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    ready.wait()
    rows = [out.get() for _ in procs]
    go.wait()
    for p in procs:
        p.join()
    rss, pss, uss, held = (sum(r[k] for r in rows) for k in range(4))
    return rss, pss, uss, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="decoders while building")
    ap.add_argument("--samples", type=int, default=40)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_flow_like(Path(tmp) / "flow", n_train=args.frames, n_test=2,
                                  width=1920, height=1080, video=False, progress=False)
        images = load_dataset(root, val_fraction=0.0, progress=False).train.images
        paths = [im["file_name"] for im in images]
        sizes = [(int(im["height"]), int(im["width"])) for im in images]
        jpeg = sum(Path(p).stat().st_size for p in paths)
        cache = Path(tmp) / "cache"
        frames = open_frame_cache(paths, sizes, 0, cache, threads=args.threads, progress=False)
        info = frames.info
        print(f"{len(paths)} FloW-like 1920x1080 JPEG frames ({jpeg / 2**20:.0f} MiB of JPEG)")
        print(f"build: {info.seconds:.1f} s on {args.threads} decoder thread(s), "
              f"{gib(info.bytes)} on disk ({info.bytes / len(paths) / 2**20:.1f} MiB a frame)")

        t0 = time.perf_counter()
        for p in paths:
            read_image(p)
        decode_ms = (time.perf_counter() - t0) * 1000 / len(paths)
        t0 = time.perf_counter()
        for k in range(len(paths)):
            np.array(frames.frame(k))
        copy_ms = (time.perf_counter() - t0) * 1000 / len(paths)
        print(f"one frame: decode {decode_ms:.1f} ms, copy out of the cache {copy_ms:.2f} ms")

        split = load_dataset(root, progress=False).train
        cfg = TrialConfig(input_mode="tiles", tile_size=320, frame_cache_dir=str(cache))
        params = AugmentParams.from_config(cfg)
        for on in (False, True):
            source = training_source(split, TrialConfig(**{**cfg.to_dict(), "frame_cache": on}),
                                     progress=False)
            n = len(source)
            train_sample(source, 0, sample_rng(0, 0, 0), params)
            c0 = time.process_time()
            for k in range(args.samples):
                train_sample(source, k % n, sample_rng(0, 0, k), params)
            ms = (time.process_time() - c0) * 1000 / args.samples
            print(f"training sample (tiles 320, mosaic + mixup, loader): {ms:.1f} ms CPU "
                  f"{'from the cache' if on else 'decoding'}")

        print(f"\n{args.trials} concurrent trials reading all {len(paths)} frames:")
        head = ("frames from", "sum RSS", "sum PSS", "sum USS", "frames held")
        print(f"{head[0]:<16}" + "".join(f"{h:>11}" for h in head[1:4]) + f"{head[4]:>13}")
        for mode in ("frame cache", "cache_images"):
            rss, pss, uss, held = concurrent_memory(mode, args.trials, paths, sizes, str(cache))
            print(f"{mode:<16}{gib(rss):>11}{gib(pss):>11}{gib(uss):>11}{gib(held):>13}")
        print("(RSS counts a shared page in every process that maps it; PSS divides it among "
              "them; USS is each process's private memory)")


if __name__ == "__main__":
    main()
