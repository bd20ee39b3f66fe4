"""Archive scale (issue 28, item 2): decoded splits over ``data.image_memory_bytes`` live on disk,
are written a chunk at a time, and every stage reads them a batch at a time with the same result
as from memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.data import discovery
from engine.data.image_store import DiskImages, as_images, write_npy
from engine.data.records import ImageRecord
from engine.errors import InputError


def _npy(tmp_path, arr):
    path = tmp_path / "a.npy"
    np.save(path, arr)
    return path


ARR = np.arange(7 * 3 * 2 * 3, dtype=np.uint8).reshape(7, 3, 2, 3)

keys = st.one_of(
    st.integers(-7, 6),
    st.builds(slice, st.none() | st.integers(-9, 9), st.none() | st.integers(-9, 9),
              st.none() | st.integers(1, 3) | st.integers(-3, -1)),
    st.lists(st.integers(-7, 6), max_size=12).map(np.array),
    st.lists(st.booleans(), min_size=7, max_size=7).map(np.array),
)


@settings(max_examples=200, deadline=None)
@given(key=keys, rest=st.sampled_from([(), (0,), (slice(None), slice(None, None, -1)), (1, 0, 2)]))
def test_disk_images_index_like_the_array(tmp_path_factory, key, rest):
    path = _npy(tmp_path_factory.mktemp("npy"), ARR)
    disk = DiskImages(path)
    full = (key, *rest) if rest else key
    if isinstance(key, np.ndarray) and key.dtype != bool and key.size == 0:
        key = key.astype(np.int64)
        full = (key, *rest) if rest else key
    expected = ARR[full]
    got = disk[full]
    assert np.array_equal(np.asarray(got), expected) and np.asarray(got).shape == expected.shape


def test_disk_images_refuse_what_the_array_refuses(tmp_path):
    disk = DiskImages(_npy(tmp_path, ARR))
    for bad in (7, -8, np.array([0, 7]), np.array([True, False])):
        with pytest.raises(IndexError):
            disk[bad]
    assert len(disk) == 7 and disk.shape == ARR.shape and disk.nbytes == ARR.nbytes
    assert np.array_equal(np.asarray(disk), ARR)  # an explicit full read still works
    assert as_images(disk) is disk and as_images([[1]]).shape == (1, 1)


def test_a_truncated_or_mismatched_file_is_not_taken_for_a_cache(tmp_path):
    path = _npy(tmp_path, ARR)
    with pytest.raises(ValueError, match="shape"):
        DiskImages(path, (6, 3, 2, 3))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="shorter"):
        DiskImages(path)
    with pytest.raises(ValueError, match="wrote"):
        write_npy(tmp_path / "b.npy", (2, 2), np.uint8, lambda f: f.write(b"abc"))


def _records(tmp_path, n=7):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(p)
        recs.append(ImageRecord(p, "train", "glioma"))
    return recs


def test_a_split_over_the_budget_is_decoded_to_disk_a_chunk_at_a_time(tmp_path, monkeypatch):
    recs = _records(tmp_path)
    in_memory = discovery.ImageCache(None).load(recs, 16)
    assert isinstance(in_memory, np.ndarray)

    chunks = []
    real = discovery.decode_records
    monkeypatch.setattr(discovery, "decode_records", lambda r, *a, **k: chunks.append(len(r)) or real(r, *a, **k))
    monkeypatch.setattr(discovery, "DISK_CHUNK", 3)
    log = []
    cache = discovery.ImageCache(tmp_path / "cache", memory_bytes=0, progress=log.append)
    on_disk = cache.load(recs, 16, "training")
    assert isinstance(on_disk, DiskImages) and chunks == [3, 3, 1]  # never the whole split at once
    assert np.array_equal(np.asarray(on_disk), in_memory)
    assert any("to disk" in line and "data.image_memory_bytes" in line for line in log)
    assert cache.held_bytes == 0

    again = discovery.ImageCache(tmp_path / "cache", memory_bytes=0, progress=log.append).load(recs, 16, "training")
    assert chunks == [3, 3, 1] and isinstance(again, DiskImages)  # the next run reads the file, no decoding
    assert np.array_equal(np.asarray(again), in_memory)
    # a run with room in memory loads the same file whole
    assert isinstance(discovery.ImageCache(tmp_path / "cache").load(recs, 16), np.ndarray)


def test_the_budget_counts_what_is_held_and_spills_without_a_cache_into_the_output_root(tmp_path):
    recs = _records(tmp_path)
    one = 16 * 16 * 3  # bytes of one image
    cache = discovery.ImageCache(None, memory_bytes=one * 5, spill_dir=tmp_path / "out" / ".cache")
    first = cache.load(recs[:4], 16)
    second = cache.load(recs[4:], 16)  # 4 held + 3 would be 7 images: over a budget of 5
    assert isinstance(first, np.ndarray) and isinstance(second, DiskImages)
    assert cache.held_bytes == one * 4
    spilled = list((tmp_path / "out" / ".cache").rglob("images-*.npy"))
    assert len(spilled) == 1 and spilled[0] == second.path
    cache.close()
    assert not list((tmp_path / "out" / ".cache").rglob("*.npy"))  # the spill folder went with the cache


def test_shift_descriptors_in_blocks_equal_one_pass(monkeypatch):
    from engine.integrity import shift

    x = np.random.default_rng(1).integers(0, 255, (11, 24, 24, 3), dtype=np.uint8)
    whole = shift.image_descriptors(x)
    monkeypatch.setattr(shift, "DESCRIBE_BATCH", 3)
    assert np.array_equal(shift._descriptors(x), whole)


def test_disk_batches_draw_the_in_memory_order(tmp_path):
    """Full-network training over a split on disk sees the batches it sees from memory."""
    from engine.training.train import _dataset

    x = np.random.default_rng(2).integers(0, 255, (23, 4, 4, 3), dtype=np.uint8)
    y = np.arange(23) % 4
    disk = DiskImages(_npy(tmp_path, x))
    for shuffle in (False, True):
        a = [(bx.numpy(), by.numpy()) for bx, by in _dataset(x, y, 5, shuffle=shuffle, seed=7)]
        b = [(bx.numpy(), by.numpy()) for bx, by in _dataset(disk, y, 5, shuffle=shuffle, seed=7)]
        assert len(a) == len(b) == 5
        assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))


def test_bad_memory_and_scheduler_keys_name_themselves(tmp_path):
    from engine import manifest

    base = '[experiment]\nname = "x"\n[data]\nroot = "d"\n[[backbones]]\nname = "EfficientNetB0"\n'
    for extra, key in (("[data]\nimage_memory_bytes = -1\n", "data.image_memory_bytes"),
                       ('[compute]\nscheduler = "host:8786"\n', "compute.scheduler")):
        text = base.replace("[data]\n", extra if extra.startswith("[data]") else "[data]\n") + \
            ("" if extra.startswith("[data]") else extra)
        with pytest.raises(InputError, match=key.replace(".", r"\.")):
            manifest.loads(text, base=tmp_path, check_data=False)
