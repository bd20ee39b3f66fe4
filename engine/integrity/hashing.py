"""Per-image fingerprints for the integrity audit, an on-disk cache for them, and a
vectorised Hamming search over perceptual hashes.

Three fingerprints per file:
  * ``file_sha256``  - sha256 of the bytes: byte-identical copies.
  * ``pixel_sha256`` - sha256 of the decoded pixels (canonical mode, size in the key): a
    re-saved file with the same pixels (other container, other compression) is exact too.
  * ``phash``        - ``imagehash.phash`` (DCT perceptual hash, ``hash_size**2`` bits) packed
    into uint64 words: resized / re-encoded copies sit at a small Hamming distance.

A DICOM frame or NIfTI slice (``(path, frame)`` in ``fingerprint_files``) is decoded by
``engine.data.readers`` with the run's windowing; its ``file_sha256`` is the file's for frame 0 and
derived from it and the frame otherwise (``frame_sha256``).

No TensorFlow here; PIL + numpy + imagehash only (the readers load pydicom / nibabel on demand).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import imagehash
import numpy as np
import PIL
from PIL import Image, ImageFile, UnidentifiedImageError

from engine.atomic import write_text
from engine.data.formats import UnreadableImage, check_pixel_limit, is_nifti_path, reader_kind, strict_decoding
from engine.errors import InputError

log = logging.getLogger(__name__)

#: Bump when the fingerprint definition changes: old cache files are then ignored.
FINGERPRINT_VERSION = 1
PHASH_ALGORITHM = "imagehash.phash"

# Modes whose pixels survive a lossless trip through RGB(A): hashed after that conversion so an
# L image re-saved as RGB (same grey levels) is still pixel-identical.
_RGB_COMPATIBLE = {"1", "L", "P", "RGB", "LA", "PA", "RGBA", "RGBX"}


@dataclass(frozen=True)
class ImageFingerprint:
    """Everything the audit needs from one decoded file (so a cached file is never decoded)."""

    file_sha256: str
    file_bytes: int
    pixel_sha256: str
    phash_hex: str  # packed phash bits, big-endian, zero-padded to whole uint64 words
    width: int
    height: int
    mode: str
    format: str

    def phash_words(self) -> np.ndarray:
        return np.frombuffer(bytes.fromhex(self.phash_hex), dtype=">u8").astype(np.uint64)


def n_words(hash_size: int) -> int:
    """uint64 words needed for a ``hash_size x hash_size`` bit hash."""
    return -(-(hash_size * hash_size) // 64)


def pack_bits(bits: np.ndarray) -> str:
    """Boolean hash -> hex of its bits packed big-endian and padded to whole uint64 words."""
    raw = np.packbits(np.asarray(bits, dtype=bool).ravel()).tobytes()
    return (raw + b"\0" * ((-len(raw)) % 8)).hex()


def _gray8(img: Image.Image) -> Image.Image:
    """8-bit greyscale for the perceptual hash. High-bit-depth images (16-bit MRI PNG, float)
    are min-max scaled: PIL's plain convert("L") would clip them to a white frame."""
    if img.mode in _RGB_COMPATIBLE or img.mode in {"CMYK", "YCbCr", "LAB", "HSV"}:
        return img.convert("L")
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def _pixel_sha256(img: Image.Image) -> str:
    if img.mode in _RGB_COMPATIBLE:
        has_alpha = img.mode in {"LA", "PA", "RGBA"} or "transparency" in img.info
        canon = img.convert("RGBA" if has_alpha else "RGB")
    else:
        canon = img  # 16-bit / float / CMYK: hash as stored, the mode is part of the key
    h = hashlib.sha256(f"{canon.mode}:{canon.width}x{canon.height}:".encode())
    h.update(canon.tobytes())
    return h.hexdigest()


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint_bytes(data: bytes, hash_size: int, *, sha256: str | None = None) -> ImageFingerprint:
    """Decode ``data`` and fingerprint it. Raises ``UnreadableImage`` with a reason on any failure
    (zero bytes, unknown format, truncated or corrupt data)."""
    if not data:
        raise UnreadableImage("zero-byte file")
    sha = sha256 or file_sha256(data)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped PIL's global switch: truncated files would decode half-grey and pass.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; the audit needs it False")


    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or "unknown"
            width, height = img.size
            check_pixel_limit(img)
            img.load()
            mode = img.mode
            pixel_sha = _pixel_sha256(img)
            phash = imagehash.phash(_gray8(img), hash_size=hash_size)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncation as OSError("image file is truncated ...") and broken
        # headers as SyntaxError/ValueError depending on the plugin.
        raise UnreadableImage(f"truncated or corrupt image data: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - plugins leak struct.error/IndexError on garbage
        raise UnreadableImage(f"corrupt image data ({type(exc).__name__}: {exc})") from None
    return ImageFingerprint(
        file_sha256=sha,
        file_bytes=len(data),
        pixel_sha256=pixel_sha,
        phash_hex=pack_bits(phash.hash),
        width=width,
        height=height,
        mode=mode,
        format=fmt,
    )


def frame_sha256(file_sha: str, frame: int) -> str:
    """The "file" hash of one frame: the file's own for frame 0, a derived one for frame k > 0, so
    that two frames of one volume are never byte-identical twins while a byte copy of a volume pairs
    frame for frame."""
    return file_sha if frame == 0 else hashlib.sha256(f"{file_sha}#frame{frame}".encode()).hexdigest()


def fingerprint_frame(path: Path, frame: int, n_bytes: int, hash_size: int, *, sha256: str,
                      windowing=None) -> ImageFingerprint:
    """Fingerprint DICOM frame (or NIfTI axial slice) ``frame`` of ``path``, read through
    ``engine.data.readers`` with ``windowing`` (default "auto"): the pixel hash and the perceptual
    hash are of the windowed 8-bit grey frame. Raises ``UnreadableImage`` with the reader's reason."""
    from engine.data.discovery import read_volume_frame

    if not n_bytes:
        raise UnreadableImage("zero-byte file")
    try:
        grey = read_volume_frame(Path(path), frame, windowing)
    except InputError as exc:
        raise UnreadableImage(reader_reason(str(exc), path)) from None
    img = Image.fromarray(grey, mode="L")
    return ImageFingerprint(
        file_sha256=frame_sha256(sha256, frame),
        file_bytes=n_bytes,
        pixel_sha256=_pixel_sha256(img),
        phash_hex=pack_bits(imagehash.phash(img, hash_size=hash_size).hash),
        width=img.width,
        height=img.height,
        mode="L",
        format="NIfTI" if is_nifti_path(Path(path)) else "DICOM",
    )


def reader_reason(message: str, path: Path) -> str:
    """The reader's one-line message without its "cannot read ... '<path>': " prefix (the audit lists
    the path beside the reason)."""
    marker = f"{str(path)!r}: "
    return message.split(marker, 1)[1] if marker in message else message


# --------------------------------------------------------------------------------------- cache


def _environment_key(hash_size: int) -> str:
    # phash depends on PIL's resampling and imagehash's DCT: a library upgrade invalidates it.
    return (
        f"v{FINGERPRINT_VERSION}|hash_size={hash_size}|pillow={PIL.__version__}"
        f"|imagehash={imagehash.__version__}"
    )


class FingerprintCache:
    """Fingerprints on disk keyed by file sha256, so nightly re-runs read bytes but never decode.
    A DICOM frame or NIfTI slice is keyed by its kind, the file's sha256, the frame and the
    windowing (``fingerprint_files``): its pixels depend on all four.

    One JSON file per hash size. Unreadable files are cached too (their reason), since the same
    bytes fail the same way. The file is only trusted when its environment key matches.
    """

    def __init__(self, cache_dir: Path | None, hash_size: int):
        self.path = None if cache_dir is None else Path(cache_dir) / f"integrity-fingerprints-hs{hash_size}.json"
        self.key = _environment_key(hash_size)
        self.entries: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0
        self._dirty = False
        self._lock = threading.Lock()  # fingerprint_files calls get/put from worker threads
        if self.path is not None:
            try:
                blob = json.loads(self.path.read_text(encoding="utf-8"))
                if blob.get("key") == self.key and isinstance(blob.get("entries"), dict):
                    self.entries = blob["entries"]
                else:
                    log.info("integrity cache %s is from another version; rebuilding", self.path)
            except FileNotFoundError:
                pass  # the first run
            except (OSError, ValueError) as exc:
                # Also an unusable folder (a name too long, a file on the way): save() says so.
                log.warning("integrity cache %s unreadable (%s); rebuilding", self.path, exc)

    def get(self, sha: str) -> ImageFingerprint | UnreadableImage | None:
        with self._lock:
            entry = self.entries.get(sha)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
        try:
            if "unreadable" in entry:
                return UnreadableImage(str(entry["unreadable"]))
            return ImageFingerprint(**entry)
        except TypeError:  # a hand-edited or foreign entry: recompute rather than trust it
            return None

    def put(self, sha: str, value: ImageFingerprint | UnreadableImage) -> None:
        entry = {"unreadable": value.reason} if isinstance(value, UnreadableImage) else asdict(value)
        with self._lock:
            self.entries[sha] = entry
            self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        text = json.dumps({"key": self.key, "entries": self.entries}, sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, text)  # tmp file + os.replace: a killed run leaves the old cache
        except OSError as exc:
            # The folder comes from the user (output folder option or manifest): an input error.
            raise InputError(f"cannot write the integrity cache {str(self.path)!r}: {exc.strerror or exc}; "
                             "choose another output folder") from None
        self._dirty = False


def fingerprint_files(
    paths: Iterable[Path | tuple[Path, int]],
    hash_size: int,
    *,
    cache: FingerprintCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    windowing=None,
) -> list[ImageFingerprint | UnreadableImage]:
    """Fingerprint every path, in order; an item ``(path, frame)`` is one frame of a DICOM file or
    one axial slice of a NIfTI volume, decoded with ``windowing`` (``engine.data.readers.Windowing``,
    default "auto"). A file that cannot be read at all (permissions, vanished) becomes
    ``UnreadableImage`` like a corrupt one. PIL decoding and hashlib release the GIL, so a small
    thread pool uses the cores without pickling images between processes."""
    items = [(Path(p[0]), int(p[1])) if isinstance(p, tuple) else (Path(p), 0) for p in paths]
    with strict_decoding():
        return _fingerprint_files(items, hash_size, cache=cache, progress=progress, workers=workers,
                                  windowing=windowing)


class _FileHashes:
    """sha256 and size of each file, read once however many of its frames are fingerprinted."""

    def __init__(self):
        self._known: dict[Path, tuple[str, int] | UnreadableImage] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> tuple[str, int] | UnreadableImage:
        with self._lock:
            known = self._known.get(path)
        if known is None:
            try:
                data = path.read_bytes()
                known = (file_sha256(data), len(data)) if data else UnreadableImage("zero-byte file")
            except OSError as exc:
                known = UnreadableImage(f"cannot read file: {exc.strerror or exc}")
            with self._lock:
                self._known[path] = known
        return known


def _entry_of(item: tuple[Path, int], hashes: _FileHashes, window: str):
    """(cache entry key, kind, bytes or None, sha256, size) of one item, or UnreadableImage."""
    path, frame = item
    kind = reader_kind(path)
    if kind is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return UnreadableImage(f"cannot read file: {exc.strerror or exc}")
        if not data:
            return UnreadableImage("zero-byte file")
        sha, n_bytes = file_sha256(data), len(data)
    else:
        known = hashes.get(path)
        if isinstance(known, UnreadableImage):
            return known
        data, (sha, n_bytes) = None, known
    # DICOM and NIfTI bytes are read by another reader (windowed, one frame of several): their
    # entries get their own key, so the same bytes under a .png name and under a .dcm name are
    # never confused, and another windowing or frame is decoded afresh.
    return (f"{kind}:{sha}:{frame}:{window}" if kind else sha), kind, data, sha, n_bytes


def _compute(item: tuple[Path, int], kind, data, sha: str, n_bytes: int, hash_size: int,
             windowing) -> ImageFingerprint | UnreadableImage:
    try:
        if kind:
            return fingerprint_frame(item[0], item[1], n_bytes, hash_size, sha256=sha, windowing=windowing)
        return fingerprint_bytes(data, hash_size, sha256=sha)
    except UnreadableImage as exc:
        return exc


def fingerprint_chunk(items: list[tuple[Path, int]], hash_size: int, windowing=None,
                      known: frozenset | set = frozenset()) -> list[tuple[str | None, object]]:
    """One Dask task of ``fingerprint_files``: per item ``(entry, fingerprint)``, or ``(entry, None)``
    where ``entry`` is in ``known`` (the client's cache has it), or ``(None, UnreadableImage)``.
    A plain function of its arguments: a worker reads the files from the same paths."""
    from engine.data.discovery import windowing_key

    hashes, window, out = _FileHashes(), windowing_key(windowing), []
    with strict_decoding():
        for item in items:
            e = _entry_of(item, hashes, window)
            if isinstance(e, UnreadableImage):
                out.append((None, e))
            elif e[0] in known:
                out.append((e[0], None))
            else:
                out.append((e[0], _compute(item, *e[1:], hash_size, windowing)))
    return out


#: Items per Dask task: large enough that a task's overhead (~1 ms) is small beside its decoding.
CHUNK_ITEMS = 256


def _fingerprint_files(items: list[tuple[Path, int]], hash_size: int, *, cache, progress, workers, windowing):
    from concurrent.futures import ThreadPoolExecutor

    from engine import compute
    from engine.data.discovery import windowing_key

    total = len(items)
    hashes = _FileHashes()
    window = windowing_key(windowing)

    def one(item: tuple[Path, int]) -> ImageFingerprint | UnreadableImage:
        e = _entry_of(item, hashes, window)
        if isinstance(e, UnreadableImage):
            return e
        entry = e[0]
        if cache is not None:
            cached = cache.get(entry)
            if cached is not None:
                return cached
        result = _compute(item, *e[1:], hash_size, windowing)
        if cache is not None:
            cache.put(entry, result)
        return result

    cluster = compute.current()
    if cluster is not None:
        return _fingerprint_on(cluster, items, hash_size, cache, progress, windowing, one)
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    out: list[ImageFingerprint | UnreadableImage] = []
    if n_workers <= 1:
        for k, item in enumerate(items, 1):
            out.append(one(item))
            if progress is not None:
                progress(k, total)
        return out
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for k, result in enumerate(pool.map(one, items), 1):
            out.append(result)
            if progress is not None:
                progress(k, total)
    return out


def _fingerprint_on(cluster, items, hash_size: int, cache, progress, windowing, one):
    """``_fingerprint_files`` on a Dask cluster: chunks fingerprinted by the workers, which skip the
    entries the client's cache already holds (its keys go to every worker once); the client
    keeps the cache and the order."""
    from engine import compute

    known = frozenset(cache.entries) if cache is not None else frozenset()
    chunks = compute.chunks(items, CHUNK_ITEMS)
    out: list[ImageFingerprint | UnreadableImage] = []
    tick = (lambda n: progress(n, len(items))) if progress is not None else None
    results = compute.map_ordered(fingerprint_chunk, chunks, cluster=cluster, progress=tick,
                                  hash_size=hash_size, windowing=windowing, known=known)
    for chunk, answers in zip(chunks, results):
        for item, (entry, result) in zip(chunk, answers):
            if entry is not None and result is None:
                result = cache.get(entry) or one(item)  # a hand-edited entry is recomputed here
            elif entry is not None and cache is not None:
                # counted as the local path counts them: a second copy of a file in the same
                # run finds the first one's entry (the workers computed both)
                if cache.get(entry) is None:
                    cache.put(entry, result)
            out.append(result)
    return out


# ------------------------------------------------------------------------------ Hamming search


def _popcount_u64(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


#: Below this many hash comparisons (n x m) the all-pairs XOR is faster than building the index.
ALL_PAIRS_LIMIT = 4_000_000
#: The narrowest chunk ("auto") indexes: 256-bit hashes up to a threshold of 15 bits.
MIN_CHUNK_BITS = 16


def hamming_pairs(
    a: np.ndarray,
    b: np.ndarray | None = None,
    *,
    max_distance: int,
    max_block_elements: int = 1 << 22,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of packed bit hashes within ``max_distance`` bits.

    ``method``: ``"all-pairs"`` (XOR every pair, O(n*m)), ``"pigeonhole"`` (a multi-index over
    ``max_distance + 1`` or more bit chunks: two hashes within ``max_distance`` bits agree exactly
    on at least one chunk, so only hashes sharing a chunk are compared; near-linear on spread-out
    hashes) or ``"auto"`` (the index above ``ALL_PAIRS_LIMIT`` comparisons while its chunks are at
    least ``MIN_CHUNK_BITS`` wide, all-pairs otherwise). Every method returns the same pairs.

    Parameters
    ----------
    a : (n, w) uint64 array, one hash of ``w`` words per row.
    b : (m, w) uint64 array, or None to compare ``a`` with itself (pairs ``i < j`` only).
    max_distance : largest Hamming distance (number of differing bits) to report, >= 0.
    max_block_elements : XOR block size cap (rows x m x w), bounding memory to ~8 bytes each.

    Returns
    -------
    (i, j, d) : int64 row indices into ``a`` and ``b`` (or ``a``) and the uint16 distances,
    sorted by ``i`` then ``j``.

    Equivalent to ``scipy.spatial.distance.cdist(bits_a, bits_b, "hamming") * n_bits <= max_distance``
    on unpacked bits, in O(n*m*w) word operations instead of O(n*m*bits) and without the n x m
    float matrix: XOR then popcount, ``block`` rows at a time.
    """
    a = np.ascontiguousarray(a, dtype=np.uint64)
    if a.ndim == 1:
        a = a[:, None]
    self_join = b is None
    b = a if self_join else np.ascontiguousarray(b, dtype=np.uint64)
    if b.ndim == 1:
        b = b[:, None]
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"hash widths differ: {a.shape[1]} vs {b.shape[1]} words")
    if max_distance < 0:
        raise ValueError("max_distance must be >= 0")
    if method not in ("auto", "all-pairs", "pigeonhole"):
        raise ValueError(f"method must be 'auto', 'all-pairs' or 'pigeonhole', got {method!r}")
    n, w = a.shape
    m = b.shape[0]
    # Chunks narrower than MIN_CHUNK_BITS match by chance so often that the index compares
    # nearly every pair anyway (a threshold above 15 of 256 bits): all-pairs is then faster.
    indexable = 64 * w // (max_distance + 1) >= MIN_CHUNK_BITS
    # t + 1 chunks need t + 1 bits: a threshold of every bit or more leaves nothing to index
    possible = max_distance < 64 * w
    if possible and (method == "pigeonhole" or (method == "auto" and n * m > ALL_PAIRS_LIMIT and indexable)):
        return _pigeonhole_pairs(a, None if self_join else b, max_distance)
    block = max(1, max_block_elements // max(1, m * w))
    found_i, found_j, found_d = [], [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        # Self-join: row r only needs columns > r, so skip the columns left of this block.
        col0 = start + 1 if self_join else 0
        if col0 >= m:
            break
        xor = a[start:stop, None, :] ^ b[None, col0:, :]
        dist = _popcount_u64(xor).sum(axis=-1, dtype=np.uint16)
        if self_join:
            # Column c (absolute col0 + c) pairs with row r only if it is right of r.
            rows = np.arange(start, stop)[:, None]
            cols = np.arange(col0, m)[None, :]
            hit = (dist <= max_distance) & (cols > rows)
        else:
            hit = dist <= max_distance
        r, c = np.nonzero(hit)
        found_i.append(r + start)
        found_j.append(c + col0)
        found_d.append(dist[r, c])
    if not found_i:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy(), np.empty(0, dtype=np.uint16)
    return (
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_d).astype(np.uint16),
    )


def _chunk_keys(words: np.ndarray, bounds: list[tuple[int, int]], rows: int = 65536) -> np.ndarray:
    """(n, k) uint64: bits ``[lo, hi)`` of each hash as one integer per chunk (each chunk <= 64 bits)."""
    n = words.shape[0]
    keys = np.empty((n, len(bounds)), dtype=np.uint64)
    for start in range(0, n, rows):
        bits = np.unpackbits(words[start:start + rows].view(np.uint8), axis=1, bitorder="little")
        for c, (lo, hi) in enumerate(bounds):
            packed = np.packbits(bits[:, lo:hi], axis=1, bitorder="little")
            padded = np.zeros((packed.shape[0], 8), dtype=np.uint8)
            padded[:, :packed.shape[1]] = packed
            keys[start:start + rows, c] = padded.view(np.uint64)[:, 0]
    return keys


def _group_pairs(order: np.ndarray, sorted_keys: np.ndarray, side: np.ndarray | None):
    """Index pairs of the elements ``order`` lists that share a key (runs of ``sorted_keys``).

    ``side`` None: pairs within one set (first < second position); else only pairs whose first
    element is from set 0 and second from set 1 (``side`` per sorted position)."""
    boundary = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate(([0], boundary))
    ends = np.concatenate((boundary, [len(sorted_keys)]))
    big = ends - starts > 1
    starts, ends = starts[big], ends[big]
    if not len(starts):
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    # each position p of a run pairs with the positions after it in the run
    sizes = ends - starts
    pos = np.repeat(starts, sizes) + (np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    run_end = np.repeat(ends, sizes)
    after = run_end - pos - 1
    first = np.repeat(pos, after)
    offsets = np.arange(after.sum()) - np.repeat(np.cumsum(after) - after, after)
    second = first + 1 + offsets
    if side is not None:
        keep = side[first] != side[second]
        first, second = first[keep], second[keep]
        swap = side[first] == 1
        first[swap], second[swap] = second[swap], first[swap]
    return order[first], order[second]


def _pigeonhole_pairs(a: np.ndarray, b: np.ndarray | None, max_distance: int):
    """hamming_pairs through a chunk multi-index (Norouzi et al. 2012, multi-index hashing)."""
    self_join = b is None
    words = a if self_join else np.concatenate([a, b])
    n_bits = words.shape[1] * 64
    k = min(n_bits, max(max_distance + 1, -(-n_bits // 64)))
    edges = [round(i * n_bits / k) for i in range(k + 1)]
    keys = _chunk_keys(words, list(zip(edges[:-1], edges[1:])))
    side = None if self_join else np.concatenate([np.zeros(len(a), np.int8), np.ones(len(b), np.int8)])
    n_b = len(b) if b is not None else len(a)
    codes = []
    for c in range(k):
        order = np.argsort(keys[:, c], kind="stable")
        i, j = _group_pairs(order, keys[order, c], side[order] if side is not None else None)
        if self_join:
            i, j = np.minimum(i, j), np.maximum(i, j)
        else:
            j = j - len(a)
        codes.append(i * n_b + j)
    code = np.unique(np.concatenate(codes)) if codes else np.empty(0, dtype=np.int64)
    i, j = code // n_b, code % n_b
    other = a if self_join else b
    dist = np.empty(len(i), dtype=np.uint16)
    for start in range(0, len(i), 1 << 20):
        sl = slice(start, start + (1 << 20))
        dist[sl] = _popcount_u64(a[i[sl]] ^ other[j[sl]]).sum(axis=-1, dtype=np.uint16)
    hit = dist <= max_distance
    return i[hit].astype(np.int64), j[hit].astype(np.int64), dist[hit]
