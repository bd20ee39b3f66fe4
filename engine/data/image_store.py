"""Decoded images on disk, read in batches.

An archive's decoded images do not fit in memory (150 KB an image at 224 px: 100,000 images are
15 GB), so above the run's image budget ``ImageCache`` writes them into a ``.npy`` file a chunk at a
time and hands stages a :class:`DiskImages`, which reads the rows a batch asks for with
``os.pread``. The bytes pass through the kernel's page cache, which the kernel gives back under
pressure; a ``np.memmap`` would count every page it ever touched in the process's resident set
until the map is dropped, so a full pass over the file would hold it all.

``DiskImages`` indexes like the array it stands for (ints, slices, integer and boolean arrays,
and a trailing index on the other axes); ``np.asarray`` reads the whole file, which stages avoid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np


class DiskImages:
    """A read-only ``(n, h, w, c)`` array in a ``.npy`` file."""

    def __init__(self, path: Path, shape: tuple[int, ...] | None = None):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape_read, fortran, dtype = read_header(f)
            self._offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{self.path}: not a C-ordered plain array")
        if shape is not None and tuple(shape) != tuple(shape_read):
            raise ValueError(f"{self.path}: shape {shape_read}, expected {tuple(shape)}")
        self.shape, self.dtype = tuple(int(s) for s in shape_read), dtype
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        expected = self._offset + self._row * self.shape[0]
        if os.path.getsize(self.path) < expected:
            raise ValueError(f"{self.path}: {os.path.getsize(self.path)} bytes, shorter than its header says")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    # the ndarray surface stages use
    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape, dtype=np.int64)))
    nbytes = property(lambda self: self._row * self.shape[0])

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DiskImages({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None):
        out = self._rows(0, len(self))
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        scalar = isinstance(key, (int, np.integer))
        if scalar:
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of bounds for {len(self)} images")
            out = self._rows(i % len(self), i % len(self) + 1)[0]
        elif isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                out = self._rows(start, max(start, stop))
            else:
                out = self._take(np.arange(start, stop, step))
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} images")
                idx = np.flatnonzero(idx)
            elif idx.size == 0:
                idx = idx.astype(np.int64)
            elif not np.issubdtype(idx.dtype, np.integer):
                raise IndexError(f"cannot index images with {idx.dtype} values")
            out = self._take(idx)
        if not rest:
            return out
        return out[rest] if scalar else out[(slice(None), *rest)]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        buf = bytearray(n * self._row)
        view, done = memoryview(buf), 0
        while done < len(buf):  # pread may return fewer bytes than asked
            got = os.preadv(self._fd, [view[done:]], self._offset + start * self._row + done)
            if got == 0:
                raise OSError(f"{self.path}: unexpected end of file")
            done += got
        return np.frombuffer(buf, dtype=self.dtype).reshape((n, *self.shape[1:]))

    def _take(self, idx: np.ndarray) -> np.ndarray:
        idx = idx.astype(np.int64).ravel()
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of bounds for {len(self)} images")
        idx = idx % max(len(self), 1)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        if not len(idx):
            return out
        # one read per run of consecutive rows (a sorted batch, a block of a split)
        order = np.argsort(idx, kind="stable")
        s = idx[order]
        breaks = np.flatnonzero(np.diff(s) != 1) + 1
        for run in np.split(np.arange(len(s)), breaks):
            a, b = int(s[run[0]]), int(s[run[-1]]) + 1
            out[order[run]] = self._rows(a, b)
        return out


def write_npy(path: Path, shape: tuple[int, ...], dtype, fill: Callable[[BinaryIO], None]) -> None:
    """Write a ``.npy`` header for ``shape``/``dtype``, then let ``fill`` write the rows in order.

    Raises ValueError when ``fill`` wrote another number of bytes than the shape needs, so a short
    file never passes for a cache."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
        start = f.tell()
        fill(f)
        wrote = f.tell() - start
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if wrote != need:
        raise ValueError(f"{path}: wrote {wrote} bytes of rows, the shape needs {need}")


def as_images(x):
    """``x`` as an indexable image array: an ndarray or a DiskImages as it is (no full read), anything
    else (lists, tensors) through ``np.asarray``."""
    return x if isinstance(x, (np.ndarray, DiskImages)) else np.asarray(x)
