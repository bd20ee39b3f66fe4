"""Issue 17: real DICOM files from elsewhere are read, or listed as unreadable with a clear reason;
none crashes the run.

The files are the ones pydicom ships (``pydicom/data/test_files``: CT, MR, CR, RT, SR, DICOMDIR,
every common transfer syntax, colour, palette, multi-frame, broken ones) plus any DICOM file the
installed pylibjpeg plugins ship. Only what is on disk is used: pydicom lists further files as
downloads, and tests have no internet. Every file must give (H, W) uint8 frames or raise
``InputError`` with one line that names it; any other exception is a reader bug.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.data.discovery import discover, readable
from engine.data.readers import frames_of, read_frame, read_metadata
from engine.errors import InputError

from conftest import write_manifest

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: Header fields that identify a patient; no reason may quote them (docs/data.md, identity policy).
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName",
               "OtherPatientIDs", "InstitutionAddress", "StudyInstanceUID")


def _plugin_files() -> list[Path]:
    import importlib.util

    found = []
    for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                found += [p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() == ".dcm"]
    return found


ALL_FILES = sorted(p for p in TEST_FILES.rglob("*") if p.is_file()) + sorted(_plugin_files())


def test_pydicom_ships_the_files_this_module_relies_on():
    # the parametrised test below is only as good as its input: a pydicom that stopped shipping its
    # test files would turn it into a handful of cases
    assert len(ALL_FILES) > 150
    for name in ("MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "image_dfl.dcm", "examples_palette.dcm",
                 "dicomdirtests/77654033/CR1/6154"):
        assert (TEST_FILES / name).is_file(), name


def identifying_values(path: Path) -> set[str]:
    """The identifying header values of ``path`` as pydicom reads them (force: whatever parses),
    with a person name's parts; short values (a sex, an initial) are left out."""
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - what does not parse cannot be quoted from its header either
        return set()
    values = set()
    for keyword in IDENTIFYING:
        try:
            value = ds.get(keyword)
        except Exception:  # noqa: BLE001
            continue
        for text in ([str(value)] if value is not None else []):
            values |= {text.strip(), *text.replace("=", "^").split("^")}
    return {v.strip() for v in values if len(v.strip()) >= 4}


def check_failure(exc: InputError, path: Path) -> str:
    """The one line names the file; the rest (the reason) quotes no identifying header value."""
    message = str(exc)
    assert "\n" not in message and message.strip() == message
    assert str(path) in message, message
    reason = message.replace(repr(str(path)), "").replace(str(path), "")
    assert reason.strip(" :"), message
    quoted = [v for v in identifying_values(path) if v in reason]
    assert not quoted, f"{message!r} quotes header values {quoted}"
    return reason


def read_everything(path: Path) -> list[np.ndarray]:
    """Metadata, every frame reference, and the first, middle and last frames; InputError is fine."""
    try:
        read_metadata(path)
    except InputError as exc:
        check_failure(exc, path)
    try:
        refs = frames_of(path)
    except InputError as exc:
        check_failure(exc, path)
        return []
    assert refs and [r.index for r in refs] == list(range(len(refs)))
    frames = []
    for i in sorted({0, len(refs) // 2, len(refs) - 1}):
        try:
            frame = read_frame(refs[i])
        except InputError as exc:
            check_failure(exc, path)
            continue
        assert frame.dtype == np.uint8 and frame.ndim == 2 and frame.size > 0, (path, frame.dtype, frame.shape)
        frames.append(frame)
    return frames


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.relative_to(TEST_FILES).as_posix()
                         if p.is_relative_to(TEST_FILES) else p.name)
def test_every_shipped_file_is_read_or_refused_with_one_line(path):
    read_everything(path)


def frame(name: str, index: int = 0) -> np.ndarray:
    return read_frame(frames_of(TEST_FILES / name)[index])


def reason_of(name: str) -> str:
    path = TEST_FILES / name
    with pytest.raises(InputError) as err:
        for ref in frames_of(path):
            read_frame(ref)
    return check_failure(err.value, path)


# transfer syntax -> a shipped file that uses it; every one must decode
DECODED = {
    "explicit VR little endian": "MR_small.dcm",
    "implicit VR little endian": "MR_small_implicit.dcm",
    "explicit VR big endian": "MR_small_bigendian.dcm",
    "deflated explicit VR little endian": "image_dfl.dcm",
    "RLE lossless": "MR_small_RLE.dcm",
    "JPEG baseline (process 1), YBR_FULL": "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG baseline, YBR_FULL_422": "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "JPEG extended (process 2 and 4), 12 bit": "JPGExtended.dcm",
    "JPEG lossless (process 14, SV1)": "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-LS lossless": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-LS near-lossless, 16 bit": "JPEGLSNearLossless_16.dcm",
    "JPEG 2000 lossless": "MR_small_jp2klossless.dcm",
    "JPEG 2000": "JPEG2000.dcm",
    "JPEG 2000, YBR_RCT": "examples_jpeg2k.dcm",
    "uncompressed YBR_FULL_422": "SC_ybr_full_422_uncompressed.dcm",
    "uncompressed RGB": "examples_rgb_color.dcm",
}


@pytest.mark.parametrize("syntax", sorted(DECODED))
def test_each_transfer_syntax_decodes_to_a_grey_frame_with_content(syntax):
    # mutation: drop the pylibjpeg plugins or the colour branch -> InputError or a 3-D array here
    image = frame(DECODED[syntax])
    ds = pydicom.dcmread(TEST_FILES / DECODED[syntax], stop_before_pixels=True)
    assert image.shape == (ds.Rows, ds.Columns) and image.dtype == np.uint8
    assert image.std() > 5  # a real picture, not a flat field


def test_lossless_encodings_of_one_image_decode_to_the_same_pixels():
    # MR_small.dcm re-encoded by pydicom's authors in every lossless syntax: one image, one result
    reference = frame("MR_small.dcm")
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm",
                 "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"):
        np.testing.assert_array_equal(frame(name), reference, err_msg=name)


def test_multi_frame_files_give_every_frame():
    for name, n in (("rtdose.dcm", 15), ("examples_ybr_color.dcm", 30), ("SC_rgb_rle_2frame.dcm", 2)):
        refs = frames_of(TEST_FILES / name)
        assert len(refs) == n
        first, last = read_frame(refs[0]), read_frame(refs[-1])
        assert first.shape == last.shape
    # the frames of a cine loop differ
    assert not np.array_equal(frame("examples_ybr_color.dcm", 0), frame("examples_ybr_color.dcm", 29))


def test_a_real_monochrome1_radiograph_is_inverted(tmp_path):
    # CR1/6154 is a computed radiograph stored MONOCHROME1 (0 = white). The same file relabelled
    # MONOCHROME2 must give the exact complement; and bright output must come from low stored values.
    # mutation: drop the `255 - out` for MONOCHROME1 -> the sum is not 255 and the correlation positive
    source = TEST_FILES / "dicomdirtests/77654033/CR1/6154"
    assert pydicom.dcmread(source, stop_before_pixels=True).PhotometricInterpretation == "MONOCHROME1"
    data = source.read_bytes()
    assert data.count(b"MONOCHROME1") == 1
    relabelled = tmp_path / "cr_mono2.dcm"
    relabelled.write_bytes(data.replace(b"MONOCHROME1", b"MONOCHROME2"))
    inverted, plain = frame("dicomdirtests/77654033/CR1/6154"), read_frame(frames_of(relabelled)[0])
    np.testing.assert_array_equal(inverted.astype(int) + plain.astype(int), 255)
    stored = pydicom.dcmread(source).pixel_array.astype(float)
    assert np.corrcoef(stored.ravel(), inverted.ravel().astype(float))[0, 1] < -0.5


@pytest.mark.parametrize("name, expected", [
    ("examples_palette.dcm", "photometric interpretation 'PALETTE COLOR' is not supported"),
    ("rtplan.dcm", "no pixel data"),
    ("test-SR.dcm", "no pixel data"),
    ("waveform_ecg.dcm", "no pixel data"),
    ("dicomdirtests/DICOMDIR", "no pixel data"),
    ("MR_truncated.dcm", "less than expected"),
    ("no_meta.dcm", "not a DICOM file"),
    ("rtstruct.dcm", "not a DICOM file"),
])
def test_files_without_a_readable_image_say_why(name, expected):
    assert expected in reason_of(name)


def test_a_corrupt_frame_count_or_size_is_refused_at_once(tmp_path):
    # mutation: drop _check_frames_fit -> frames_of lists 99,999,999 frames (minutes, gigabytes), and
    # a 65535 x 65535 RLE frame allocates 8 GB before its decoder notices the data is 4 kB
    cases = [("rtdose.dcm", {"NumberOfFrames": "99999999"}, "NumberOfFrames is 99999999"),
             ("JPEG2000.dcm", {"NumberOfFrames": "2147483647"}, "NumberOfFrames is 2147483647"),
             ("MR_small.dcm", {"NumberOfFrames": "0"}, "NumberOfFrames is 0"),
             ("MR_small_RLE.dcm", {"Rows": 65535, "Columns": 65535}, "decompression-bomb limit")]
    for name, changes, expected in cases:
        ds = pydicom.dcmread(TEST_FILES / name)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        path = tmp_path / f"{name}.{'-'.join(changes)}.dcm"
        ds.save_as(path)
        started = time.perf_counter()
        with pytest.raises(InputError) as err:
            for ref in frames_of(path):
                read_frame(ref)
        assert expected in check_failure(err.value, path)
        assert time.perf_counter() - started < 5


TRUNCATED = ("MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
             "MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm",
             "MR_small_bigendian.dcm", "examples_ybr_color.dcm", "rtdose.dcm", "dicomdirtests/77654033/CR1/6154")


@pytest.mark.parametrize("name", TRUNCATED)
def test_files_cut_anywhere_are_refused_with_a_reason(name, tmp_path):
    data = (TEST_FILES / name).read_bytes()
    n = len(data)
    offsets = sorted({0, 1, 64, 128, 131, 132, 140, 200, 400, n // 4, n // 2, 3 * n // 4, n - 64, n - 2, n - 1})
    refused = 0
    for offset in (o for o in offsets if 0 <= o < n):
        path = tmp_path / f"cut{offset}.dcm"
        path.write_bytes(data[:offset])
        frames = read_everything(path)
        refused += not frames
    assert refused >= len(offsets) - 3  # a cut inside trailing padding may leave a complete image


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["MR_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm",
                             "rtdose.dcm", "image_dfl.dcm"]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12),
       header_only=st.booleans())
def test_random_byte_damage_never_escapes_as_anything_but_input_error(tmp_path, name, edits, header_only):
    data = bytearray((TEST_FILES / name).read_bytes())
    end = min(len(data), 1500) if header_only else len(data)
    for where, value in edits:
        data[132 + int(where * (end - 132))] = value
    path = tmp_path / "damaged.dcm"
    path.write_bytes(bytes(data))
    read_everything(path)


# ------------------------------------------------------------------------------ a data root of real files

ALIASES = {"glioma_tumor": "glioma", "meningioma_tumor": "meningioma", "no_tumor": "no_tumor",
           "pituitary_tumor": "pituitary"}
READABLE = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
            "CT_small.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm", "JPEG2000.dcm",
            "dicomdirtests/77654033/CR1/6154"]  # the CR is MONOCHROME1 (and 16 px: too small to use)
BROKEN = {"examples_palette.dcm": "PALETTE COLOR", "rtplan.dcm": "no pixel data", "MR_truncated.dcm": "less than",
          "rtstruct.dcm": "not a DICOM file"}


def real_root(tmp_path: Path) -> Path:
    """Kaggle layout: every class folder gets a few real files (renamed, at some depth, one without a
    suffix), the broken ones, a truncated copy, garbage named .dcm and an empty .dcm."""
    root = tmp_path / "data"
    for k, cls in enumerate(ALIASES):
        for split, names in (("Training", READABLE[k::2]), ("Testing", READABLE[k + 1::4])):
            folder = root / split / cls / "series"
            folder.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(names):
                target = folder / (f"IM{i:04d}" if i == 0 else f"{Path(name).stem}.dcm")
                shutil.copy(TEST_FILES / name, target)
    broken = root / "Training" / "glioma_tumor"
    for name in BROKEN:
        shutil.copy(TEST_FILES / name, broken / Path(name).name)
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    (broken / "cut.dcm").write_bytes(data[: len(data) // 2])
    (broken / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4)
    (broken / "empty.dcm").write_bytes(b"")
    return root


def test_check_data_lists_real_broken_files_with_reasons_and_no_traceback(tmp_path):
    root = real_root(tmp_path)
    (tmp_path / "none.keras").write_bytes(b"")  # check-data loads no model; the manifest needs the file
    manifest = write_manifest(tmp_path / "m.toml", f"""
[experiment]
name = "real-dicom"
output_dir = "{tmp_path / 'out'}"
[data]
root = "{root}"
[[backbones]]
name = "tiny"
file = "{tmp_path / 'none.keras'}"
input_size = 32
""")
    result = CliRunner().invoke(main, ["check-data", str(manifest)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output
    integrity = json.loads(result.stdout)["integrity"]
    unreadable = integrity["unreadable"]
    reasons = [u["reason"] for u in unreadable]
    for expected in list(BROKEN.values()) + ["zero-byte file", "smaller than integrity.min_image_size"]:
        assert any(expected in r for r in reasons), (expected, reasons)
    # every broken file, and every copy of the 16 px radiograph, and nothing else
    n_small = sum(1 for p in root.rglob("*") if p.is_file() and p.read_bytes() == (TEST_FILES / READABLE[-1]).read_bytes())
    assert len(unreadable) == len(BROKEN) + 3 + n_small
    assert integrity["n_readable"] == integrity["n_files"] - len(unreadable) > 0
    for u in unreadable:  # paths relative to the data root (or neutral references), reasons without paths
        assert not Path(u["path"]).is_absolute() and str(tmp_path) not in u["reason"]
    assert str(tmp_path) not in result.stdout


def test_discovery_and_readable_take_real_files(tmp_path):
    root = real_root(tmp_path)
    _, records = discover(root, layout="kaggle", train_dir="Training", test_dir="Testing",
                          classes=list(ALIASES.values()), aliases=ALIASES, test_fraction=0.25, seed=0,
                          pseudonymizer=lambda: (lambda pid: "p-" + str(len(pid))))
    assert len(records) == sum(1 for p in root.rglob("*") if p.is_file())  # the suffix-less IM files too
    ok, skipped = readable(records, min_size=32)
    assert len(ok) + len(skipped) == len(records) and ok
    names = {Path(s["path"]).name: s["reason"] for s in skipped}
    for name, expected in BROKEN.items():
        assert expected in names[Path(name).name]
    assert "zero-byte" in names["empty.dcm"] and names["cut.dcm"] and names["garbage.dcm"]
    # patients come from the real headers (where the header is readable)
    assert {r.patient for r in ok} - {None}


def test_reading_broken_files_warns_and_logs_nothing_that_names_them(tmp_path, recwarn, caplog):
    # pydicom warns "End of file reached before delimiter found in file <path>" and, validating
    # values, "Invalid value for VR UI: '<value>'": a file named after a patient, or a header
    # value, would reach stderr and the run's log. mutation: drop the warning filter and the logger
    # level in dicom._pydicom -> the folder's name is in a warning and a log record
    import logging

    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "FAIRWEATHER_ROSALIND"
    folder.mkdir()
    data = (TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) - 500])
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    ds.StudyInstanceUID = "1.2.3.4"
    ds.save_as(folder / "uid.dcm")
    raw = (folder / "uid.dcm").read_bytes()
    (folder / "uid.dcm").write_bytes(raw.replace(b"1.2.3.4\x00", b"ROSALIND"))
    for path in sorted(folder.iterdir()):
        read_everything(path)
    said = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records]
    assert not [s for s in said if "FAIRWEATHER" in s or "ROSALIND" in s], said
