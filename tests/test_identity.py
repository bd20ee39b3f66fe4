"""Patient pseudonyms and their key (engine.data.identity, issue 17)."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import pickle
import random
import stat
import time
from pathlib import Path

import pytest

from engine.data import identity
from engine.data.identity import (
    KEY_ENV,
    Pseudonymizer,
    default_key_dir,
    experiment_key,
    experiment_pseudonymizer,
    load_key,
    pseudonym,
)
from engine.errors import InputError

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture(autouse=True)
def no_hospital_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_pseudonym_is_a_truncated_hmac_sha256_deterministic_for_a_key():
    p = pseudonym("PAT-000123", KEY_A)
    assert p == pseudonym("PAT-000123", KEY_A)
    assert p == "p-" + hmac.new(KEY_A, b"PAT-000123", hashlib.sha256).hexdigest()[:16]
    assert p != pseudonym("PAT-000124", KEY_A)


def test_pseudonyms_differ_across_keys():
    ids = [f"PAT-{i:06d}" for i in range(200)]
    under_a = {pseudonym(i, KEY_A) for i in ids}
    under_b = {pseudonym(i, KEY_B) for i in ids}
    assert len(under_a) == len(under_b) == len(ids)
    assert not under_a & under_b


def test_the_raw_id_never_appears_in_the_pseudonym():
    # ids that are themselves hex-like, short or long: nothing of them survives in the output
    for patient_id in ["0123456789abcdef", "abcd1234", "p-1", "1" * 64, "Müller, Anna 1957-03-02"]:
        out = pseudonym(patient_id, KEY_A)
        assert out.startswith("p-") and len(out) == 18
        assert patient_id not in out and patient_id[:8] not in out
        assert out != pseudonym(patient_id, KEY_B)
    # and it is not an unkeyed hash of the id either
    assert pseudonym("PAT-1", KEY_A)[2:] not in hashlib.sha256(b"PAT-1").hexdigest()


def test_pseudonym_refuses_empty_ids_and_wrong_keys_without_showing_the_key():
    with pytest.raises(ValueError):
        pseudonym("", KEY_A)
    with pytest.raises(ValueError) as info:
        pseudonym("PAT-1", b"short secret key")
    assert "short secret key" not in str(info.value) and "16" in str(info.value)


def test_key_file_is_created_once_with_mode_0600_outside_the_run(tmp_path):
    root = tmp_path / "reports"
    key_dir = default_key_dir(root)
    first = experiment_key(key_dir, "baseline", run_dir=root / "baseline" / "run-1")
    path = key_dir / "baseline.key"
    assert path.read_bytes() == first and len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) & 0o077 == 0
    mtime = path.stat().st_mtime_ns
    assert experiment_key(key_dir, "baseline") == first  # read back, never rewritten
    assert path.stat().st_mtime_ns == mtime
    assert experiment_key(key_dir, "other-experiment") != first
    # no temporary files left behind
    assert sorted(p.name for p in key_dir.iterdir()) == ["baseline.key", "other-experiment.key"]


def test_a_key_inside_the_run_directory_is_refused(tmp_path, monkeypatch):
    run_dir = tmp_path / "reports" / "baseline" / "run-1"
    with pytest.raises(InputError, match="inside the run directory"):
        experiment_key(run_dir / ".keys", "baseline", run_dir=run_dir)
    assert not (run_dir / ".keys").exists()
    hospital = run_dir / "hospital.key"
    hospital.parent.mkdir(parents=True)
    hospital.write_bytes(KEY_A)
    monkeypatch.setenv(KEY_ENV, str(hospital))
    with pytest.raises(InputError, match=KEY_ENV):
        experiment_key(tmp_path / ".keys", "baseline", run_dir=run_dir)


def test_the_second_creator_keeps_the_first_key(tmp_path, monkeypatch):
    """The race in slow motion: a creator that saw no key, but publishes after another one did,
    must return the published key and leave it in place."""
    key_dir = tmp_path / ".keys"
    first = experiment_key(key_dir, "baseline")
    monkeypatch.setattr(Path, "exists", lambda self: False)  # the second creator looked too early
    assert experiment_key(key_dir, "baseline") == first
    assert (key_dir / "baseline.key").read_bytes() == first
    assert sorted(p.name for p in key_dir.iterdir()) == ["baseline.key"]


def _create_at_once(key_dir: str, barrier, out) -> None:
    barrier.wait()  # every process asks for the key at the same moment
    # the child reports a hash of the key, never the key
    out.put(hashlib.sha256(experiment_key(Path(key_dir), "baseline")).hexdigest())


def test_concurrent_creators_agree_on_one_key(tmp_path, monkeypatch):
    real_urandom = os.urandom

    def slow_urandom(n):  # widen the window between "no key yet" and the key's file appearing
        time.sleep(0.05 * random.random())
        return real_urandom(n)

    monkeypatch.setattr(identity.os, "urandom", slow_urandom)  # inherited by the forked children
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):  # five fresh races
        key_dir = str(tmp_path / f"try{attempt}" / ".keys")
        barrier, out = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_create_at_once, args=(key_dir, barrier, out)) for _ in range(8)]
        for p in procs:
            p.start()
        digests = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert all(p.exitcode == 0 for p in procs)
        assert len(set(digests)) == 1, f"attempt {attempt}: {len(set(digests))} different keys"
        stored = (Path(key_dir) / "baseline.key").read_bytes()
        assert digests[0] == hashlib.sha256(stored).hexdigest()


def test_without_hard_links_the_exclusive_create_still_gives_one_key(tmp_path, monkeypatch):
    def no_links(*_):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(identity.os, "link", no_links)
    key_dir = tmp_path / ".keys"
    first = experiment_key(key_dir, "baseline")
    identity._create_key(key_dir / "baseline.key")
    assert experiment_key(key_dir, "baseline") == first
    assert stat.S_IMODE((key_dir / "baseline.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in key_dir.iterdir()) == ["baseline.key"]


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"0123456789abcdef" * 4 + b"\n"])
def test_a_key_file_of_the_wrong_length_names_the_file_not_its_content(tmp_path, monkeypatch, content):
    path = tmp_path / "hospital.key"
    path.write_bytes(content)
    monkeypatch.setenv(KEY_ENV, str(path))
    with pytest.raises(InputError) as info:
        experiment_key(tmp_path / ".keys", "baseline")
    message = str(info.value)
    assert str(path) in message and f"holds {len(content)} bytes" in message
    if content:
        assert content.decode().strip() not in message and "0123456789abcdef" not in message
    # the experiment's own key is not created behind the hospital's back
    assert not (tmp_path / ".keys").exists()


def test_a_wrong_length_experiment_key_is_an_input_error_too(tmp_path):
    key_dir = tmp_path / ".keys"
    key_dir.mkdir()
    (key_dir / "baseline.key").write_bytes(b"k" * 40)
    with pytest.raises(InputError, match=r"baseline\.key.*holds 40 bytes"):
        experiment_key(key_dir, "baseline")


def test_the_hospital_key_wins_and_must_exist(tmp_path, monkeypatch):
    path = tmp_path / "hospital.key"
    monkeypatch.setenv(KEY_ENV, str(path))
    with pytest.raises(InputError, match="does not exist"):
        experiment_key(tmp_path / ".keys", "baseline")
    path.write_bytes(KEY_B)
    assert experiment_key(tmp_path / ".keys", "baseline") == KEY_B
    assert load_key(path) == KEY_B
    assert not (tmp_path / ".keys").exists()


def test_experiment_name_is_one_path_component(tmp_path):
    with pytest.raises(InputError):
        experiment_key(tmp_path / ".keys", "../escape")
    assert not (tmp_path / "escape.key").exists()


def test_pseudonymizer_never_shows_its_key(tmp_path):
    p = experiment_pseudonymizer(tmp_path, "baseline")
    key = (tmp_path / ".keys" / "baseline.key").read_bytes()
    assert p("PAT-1") == pseudonym("PAT-1", key)
    for text in (repr(p), str(p), f"{p}", repr([p]), repr({"p": p})):
        assert key.hex() not in text and repr(key) not in text and str(key) not in text
        assert "baseline.key" in text and p.key_id in text
    assert not hasattr(p, "__dict__") and not hasattr(p, "key")
    with pytest.raises(TypeError):
        pickle.dumps(p)
    assert p.key_id != Pseudonymizer(KEY_A, "x").key_id
    assert key.hex() not in p.key_id


def test_no_key_bytes_in_a_failed_creation_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="cannot create the pseudonym key folder"):
        experiment_key(blocker / ".keys", "baseline")
    assert os.listdir(tmp_path) == ["file"]
