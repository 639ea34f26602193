"""The node's decoded-frame cache: every training frame decoded once, memory-mapped by everyone.

Why: a 1920x1080 JPEG costs several milliseconds to decode, every sample of a mosaic decodes
four (five with mixup), and every trial of a study decodes the same frames again every epoch.
With ``frame_cache: true`` the frames are decoded once per machine into one uint8 file; every
trial and every loader worker maps it read-only, so the kernel's page cache holds one copy that
all of them share (the pages are shared, not copied: ``cache_images`` instead keeps a private
copy per trial). A load is then a slice of the mapping, no decode.

Files in ``root`` (``frame_cache_dir``, default ``frames/`` in the embedded dataset's cache root),
one set per cache, named ``frames-<digest>-<fit>``:

- ``.npy``: uint8, one flat array, every frame's ``(h, w, 3)`` BGR bytes one after the other;
- ``.index.npy``: int64 ``(N, 5)``: byte offset, h, w, and the frame's original h, w;
- ``.json``: the manifest, written last (its presence marks a complete cache): the content
  digest of each frame in storage order, the build time and the bytes.

``<digest>`` is a BLAKE2b over the sorted content digests of the image files (their bytes, not
their paths: a copied dataset finds its cache), the decoder's version and the format version;
``<fit>`` is ``full`` (native resolution: what tiles need, and what serves any trial) or ``S``
(each frame resized to fit ``S``, exactly the pixels :class:`model.data.loader.SplitImages`
computes for ``img_size: S``). A trial finds a cache holding all of its frames (one built by the
study over train and validation is a superset of each trial's split), at its own fit or full.

Safety: both arrays are read with ``np.load(..., allow_pickle=False)`` (the data file with
``mmap_mode="r"``), the manifest is JSON: nothing is ever unpickled. A cache is built into
temporary files beside it, moved into place with ``os.replace``, under an exclusive file lock,
so concurrent trials build it once and a killed build leaves no half cache. Before building,
the disk is checked (:class:`FrameCacheSpaceError` names the bytes needed and free, and the fix).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from model.data.embedded import cache_root
from model.data.raw import DataError
from model.data.transforms import fit_ratio, read_image, resize_to_fit

FORMAT_VERSION = 1
SUBDIR = "frames"
SPACE_MARGIN = 512 * 2**20  # bytes left free on the disk after a build
FULL = 0  # fit of a native-resolution cache


class FrameCacheError(DataError):
    """The frame cache cannot be built or read; the message says why and what to do."""


class FrameCacheSpaceError(FrameCacheError):
    """The disk cannot hold the cache: ``needed`` and ``free`` bytes in ``root``."""

    def __init__(self, root: Path, needed: int, free: int) -> None:
        self.root, self.needed, self.free = root, needed, free
        super().__init__(
            f"the decoded-frame cache needs {gib(needed)} (plus {gib(SPACE_MARGIN)} kept free) "
            f"but {root} has {gib(free)} free; set frame_cache_dir to a folder on a larger disk, "
            "or frame_cache: false (each load then decodes its JPEG)"
        )


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def default_root() -> Path:
    """``frames/`` in ``$YOLOX_FLOW_CACHE`` (or ``~/.cache/yolox-flow-study``)."""
    return cache_root() / SUBDIR


def fit_name(fit: int) -> str:
    return "full" if fit == FULL else str(fit)


def fitted_size(h: int, w: int, fit: int) -> tuple[int, int]:
    """``(h, w)`` of a frame stored at ``fit`` (``resize_to_fit``'s truncation)."""
    if fit == FULL:
        return h, w
    r = fit_ratio(h, w, fit)
    return int(h * r), int(w * r)


def estimate_bytes(sizes: Sequence[tuple[int, int]], fit: int) -> int:
    """Bytes of a cache of frames with original ``sizes`` ((h, w) each) stored at ``fit``."""
    return sum(3 * int(np.prod(fitted_size(h, w, fit))) for h, w in sizes)


def file_digest(path: str | Path) -> str:
    """BLAKE2b-128 of a file's bytes (hex)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_name(digests: Sequence[str], fit: int) -> str:
    """``frames-<digest>-<fit>``: the digest over the sorted frame digests, decoder, format."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"v{FORMAT_VERSION} opencv {cv2.__version__}\n".encode())
    for d in sorted(set(digests)):
        h.update(d.encode())
    return f"frames-{h.hexdigest()}-{fit_name(fit)}"


@dataclass(frozen=True)
class BuildInfo:
    """What a cache cost: ``seconds`` to build (0 when it existed), ``bytes`` on disk."""

    name: str
    frames: int
    bytes: int
    seconds: float
    built: bool


class FrameStore:
    """One cache, opened read-only: ``frame(i)`` is a read-only ``(h, w, 3)`` uint8 view of the
    mapping (callers must not write to it), ``position(digest)`` where a frame is.

    Pickled (a spawned worker, a Ray task) it travels as its path and maps the file again."""

    def __init__(self, base: Path) -> None:
        self.base = base
        manifest = json.loads(base.with_suffix(".json").read_text())
        self.fit = int(manifest["fit"])
        self.digests: list[str] = list(manifest["digests"])
        self.nbytes = int(manifest["bytes"])
        self.build_s = float(manifest["build_s"])
        self.index = np.load(_index_path(base), allow_pickle=False)  # (N, 5) int64
        self.data = np.load(_data_path(base), mmap_mode="r", allow_pickle=False)
        if self.index.shape != (len(self.digests), 5) or self.data.dtype != np.uint8:
            raise FrameCacheError(f"{base}: the cache files do not match; delete them to rebuild")
        self._position = {d: i for i, d in enumerate(self.digests)}

    def __reduce__(self) -> tuple:
        return (FrameStore, (self.base,))

    def __len__(self) -> int:
        return len(self.digests)

    def position(self, digest: str) -> int | None:
        return self._position.get(digest)

    def frame(self, i: int) -> np.ndarray:
        off, h, w = (int(v) for v in self.index[i, :3])
        return self.data[off : off + h * w * 3].reshape(h, w, 3)

    def original_size(self, i: int) -> tuple[int, int]:
        return int(self.index[i, 3]), int(self.index[i, 4])


class CachedFrames:
    """The frames of one path list, served from a :class:`FrameStore` by their content digest:
    ``frame(k)`` is path ``k``'s frame (at the store's ``fit``), ``original_size(k)`` its size."""

    def __init__(self, store: FrameStore, positions: Sequence[int], info: BuildInfo) -> None:
        self.store = store
        self.positions = np.asarray(positions, dtype=np.int64)
        self.info = info

    @property
    def fit(self) -> int:
        return self.store.fit

    def __len__(self) -> int:
        return len(self.positions)

    def frame(self, k: int) -> np.ndarray:
        return self.store.frame(int(self.positions[k]))

    def original_size(self, k: int) -> tuple[int, int]:
        return self.store.original_size(int(self.positions[k]))


def _data_path(base: Path) -> Path:
    return base.with_name(base.name + ".npy")


def _index_path(base: Path) -> Path:
    return base.with_name(base.name + ".index.npy")


def _complete(base: Path) -> bool:
    return base.with_suffix(".json").is_file()


def _find(root: Path, digests: Sequence[str], fits: Sequence[int]) -> FrameStore | None:
    """A complete cache in ``root`` at one of ``fits`` (in that order) holding every digest."""
    wanted = set(digests)
    for fit in fits:
        exact = root / cache_name(digests, fit)
        candidates = [exact] + sorted(
            p.with_suffix("") for p in root.glob(f"frames-*-{fit_name(fit)}.json")
        )
        for base in candidates:
            if not _complete(base):
                continue
            if base != exact:
                held = json.loads(base.with_suffix(".json").read_text()).get("digests", [])
                if not wanted <= set(held):
                    continue
            return FrameStore(base)
    return None


@contextlib.contextmanager
def _locked(root: Path, name: str, progress: bool) -> Iterator[None]:
    with open(root / f"{name}.lock", "a") as lock:  # closing the file releases the lock
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another process building {root / name}", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def check_space(root: Path, needed: int) -> None:
    """Raise :class:`FrameCacheSpaceError` unless ``root``'s disk holds ``needed`` bytes and
    :data:`SPACE_MARGIN` more."""
    free = shutil.disk_usage(root).free
    if needed + SPACE_MARGIN > free:
        raise FrameCacheSpaceError(root, needed, free)


def _build(
    root: Path,
    name: str,
    paths: Sequence[str],
    digests: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    fit: int,
    threads: int,
    progress: bool,
) -> BuildInfo:
    """Decode ``paths`` (one per distinct digest) into the cache ``name``; atomic."""
    start = time.perf_counter()
    shapes = [fitted_size(h, w, fit) for h, w in sizes]
    offsets = np.cumsum([0] + [3 * h * w for h, w in shapes])
    total = int(offsets[-1])
    check_space(root, total)
    base = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    tmp_data, tmp_index, tmp_json = (
        _data_path(tmp), _index_path(tmp), tmp.with_suffix(".json")
    )
    try:
        data = np.lib.format.open_memmap(tmp_data, mode="w+", dtype=np.uint8, shape=(total,))
        index = np.zeros((len(paths), 5), dtype=np.int64)

        def decode(k: int) -> None:
            img = read_image(paths[k])
            if img.shape[:2] != tuple(sizes[k]):
                raise FrameCacheError(
                    f"{paths[k]}: decoded {img.shape[1]}x{img.shape[0]} but the dataset says "
                    f"{sizes[k][1]}x{sizes[k][0]}; check the dataset (python -m model.data check)"
                )
            if fit != FULL:
                img, _ = resize_to_fit(img, fit)
            h, w = shapes[k]
            data[offsets[k] : offsets[k + 1]] = img.reshape(-1)
            index[k] = (offsets[k], h, w, *sizes[k])

        workers = max(1, threads or (os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:  # OpenCV releases the GIL while decoding
            done = pool.map(decode, range(len(paths)))
            for _ in tqdm(done, total=len(paths), desc="frame cache", unit="frame",
                          disable=not progress):
                pass
        data.flush()
        np.save(tmp_index, index, allow_pickle=False)
        seconds = time.perf_counter() - start
        manifest = {
            "format": FORMAT_VERSION, "fit": fit, "decoder": f"opencv {cv2.__version__}",
            "frames": len(paths), "bytes": total, "build_s": round(seconds, 3),
            "digests": list(digests),
        }  # fmt: skip
        tmp_json.write_text(json.dumps(manifest))
        os.replace(tmp_data, _data_path(base))
        os.replace(tmp_index, _index_path(base))
        os.replace(tmp_json, base.with_suffix(".json"))  # last: the cache is complete
    finally:
        for leftover in (tmp_data, tmp_index, tmp_json):
            leftover.unlink(missing_ok=True)
    return BuildInfo(name, len(paths), total, seconds, True)


def open_frame_cache(
    paths: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    fit: int,
    root: str | Path | None = None,
    *,
    accept_full: bool = True,
    threads: int = 0,
    progress: bool = True,
) -> CachedFrames:
    """The frames of ``paths`` (original ``sizes``, (h, w) each) from the cache in ``root``
    (default :func:`default_root`), built first when no cache holds them.

    ``fit``: 0 for native resolution, else the letterbox size ``S``; with ``accept_full`` a
    native-resolution cache serves a ``fit`` request too (the caller resizes). Building decodes
    on ``threads`` threads (0 = every core). Raises :class:`FrameCacheSpaceError` when the disk
    cannot hold a cache that must be built.
    """
    if len(paths) != len(sizes):
        raise ValueError(f"{len(paths)} paths but {len(sizes)} sizes")
    root = Path(root).expanduser() if root else default_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FrameCacheError(
            f"cannot create the frame cache folder {root} ({e}); set frame_cache_dir to a "
            "writable folder, or frame_cache: false"
        ) from e
    digests = [file_digest(p) for p in paths]
    fits = [fit, FULL] if accept_full and fit != FULL else [fit]
    store = _find(root, digests, fits)
    info = None
    if store is None:
        name = cache_name(digests, fit)
        with _locked(root, name, progress):
            store = _find(root, digests, fits)  # another process may have built it meanwhile
            if store is None:
                first = {d: k for k, d in reversed(list(enumerate(digests)))}  # distinct frames
                order = sorted(first.values())
                info = _build(
                    root, name, [paths[k] for k in order], [digests[k] for k in order],
                    [tuple(sizes[k]) for k in order], fit, threads, progress,
                )  # fmt: skip
                store = FrameStore(root / name)
    if info is None:
        info = BuildInfo(store.base.name, len(store), store.nbytes, store.build_s, False)
    positions = [store.position(d) for d in digests]
    return CachedFrames(store, positions, info)  # type: ignore[arg-type]  # all found
