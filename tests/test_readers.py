"""Hospital-data readers (issue 17, first part): DICOM, NIfTI and 16-bit PNG/TIFF behind one interface
(engine/data/readers), and the synthetic hospital set (engine/data/synth_hospital.py, ``synth-data
--format``). The readers are not wired into discovery yet; these tests call them directly.

Each test names, in a comment, the one-line mutation of the engine it was seen to catch.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.data.readers import (FrameRef, ImageMeta, SliceSelection, Windowing, file_kind, frames_of, read_frame,
                                 read_metadata)
from engine.data.readers.dicom import parse_age
from engine.data.synth import CLASSES, KAGGLE_FOLDERS
from engine.data.synth_hospital import PLANTED_FIELDS, TRUTH_FILE, generate_hospital, write_hospital_dataset
from engine.errors import InputError


# ------------------------------------------------------------------------------------------------
# helpers: tiny DICOM files built by hand


def make_dicom(path: Path, pixels, *, photometric="MONOCHROME2", bits_stored=16, **attrs) -> Path:
    """A minimal single- or multi-frame MR object, explicit VR little endian, with ``attrs`` set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    if pixels is not None:
        ds.set_pixel_data(np.asarray(pixels, dtype=np.uint16 if bits_stored > 8 else np.uint8), photometric,
                          bits_stored)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def read_one(path: Path, windowing: Windowing | None = None) -> np.ndarray:
    refs = frames_of(path)
    assert len(refs) == 1
    return read_frame(refs[0], windowing)


def dicom_linear(x: float, center: float, width: float) -> float:
    """PS3.3 C.11.2.1.2.1 (VOI LUT Function LINEAR) onto 0..255, written out by hand."""
    if x <= center - 0.5 - (width - 1) / 2:
        return 0.0
    if x > center - 0.5 + (width - 1) / 2:
        return 255.0
    return ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0


# ------------------------------------------------------------------------------------------------
# 1. DICOM pixels: modality LUT, window, VOI LUT, percentile, MONOCHROME1


def test_rescale_then_window_matches_a_hand_computation(tmp_path):
    # mutations seen to fail: dicom.read `values = apply_modality_lut(arr, view)` -> `values = arr`
    # (rescale skipped); dicom._window `prefer_lut=False), 0.0, 255.0)` -> `..., 0.0, 65535.0)`
    stored = [[0, 100], [200, 300]]
    path = make_dicom(tmp_path / "w.dcm", stored, RescaleSlope=0.5, RescaleIntercept=10, WindowCenter=61,
                      WindowWidth=101)
    modality = [[10.0, 60.0], [110.0, 160.0]]  # 0.5 * stored + 10
    expected = [[round(dicom_linear(v, 61, 101)) for v in row] for row in modality]
    assert expected == [[0, 126], [254, 255]]
    out = read_one(path)
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    assert out.tolist() == expected


def test_percentile_window_when_no_window_is_stored_and_the_modes(tmp_path):
    # mutations seen to fail: common.percentile_window `lo, hi = np.percentile(finite, percentiles)` ->
    # `lo, hi = finite.min(), finite.max()`; dicom._window `if windowing.mode == "percentile" or` -> `if`
    values = np.arange(100, dtype=np.uint16).reshape(10, 10) * 7
    plain = make_dicom(tmp_path / "p.dcm", values)
    windowed = make_dicom(tmp_path / "pw.dcm", values, WindowCenter=300, WindowWidth=50)
    lo, hi = np.percentile(values.astype(float), [10, 90])
    assert (lo, hi) == pytest.approx((69.3, 623.7))
    expected = np.rint(np.clip((values - lo) / (hi - lo) * 255, 0, 255)).astype(np.uint8)
    pct = Windowing(mode="auto", percentiles=(10, 90))
    assert np.array_equal(read_one(plain, pct), expected)  # auto without a stored window: percentile
    assert np.array_equal(read_one(windowed, Windowing("percentile", (10, 90))), expected)  # window ignored
    assert not np.array_equal(read_one(windowed, pct), expected)  # auto uses the stored window
    with pytest.raises(InputError, match=r"p\.dcm.*'dicom' needs a stored window"):
        read_one(plain, Windowing("dicom"))
    # the default percentiles: 0.5 and 99.5
    lo, hi = np.percentile(values.astype(float), [0.5, 99.5])
    assert np.array_equal(read_one(plain), np.rint(np.clip((values - lo) / (hi - lo) * 255, 0, 255)))


def test_monochrome1_is_inverted(tmp_path):
    # mutation seen to fail: dicom.read `if pi == "MONOCHROME1" else out` -> `if False else out`
    stored = np.array([[0, 40], [80, 120]], np.uint16)
    kwargs = dict(WindowCenter=60, WindowWidth=81)
    m2 = read_one(make_dicom(tmp_path / "m2.dcm", stored, **kwargs))
    m1 = read_one(make_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", **kwargs))
    assert m2.tolist() == [[0, 65], [193, 255]]  # hand: ((x - 59.5) / 80 + 0.5) * 255
    assert m2.tolist() == [[round(dicom_linear(v, 60, 81)) for v in row] for row in stored]
    assert np.array_equal(m1, 255 - m2)
    # and with the percentile window
    p2 = read_one(make_dicom(tmp_path / "p2.dcm", stored))
    p1 = read_one(make_dicom(tmp_path / "p1.dcm", stored, photometric="MONOCHROME1"))
    assert p2[0, 0] == 0 and np.array_equal(p1, 255 - p2)


def test_voi_lut_sequence_is_preferred_and_scaled_by_its_bit_depth(tmp_path):
    # mutations seen to fail: dicom._window `return scale_to_uint8(out, 0.0, float(2 ** bits - 1))` ->
    # `... 255.0)`; dicom._window `item.LUTDescriptor = [entries, first, 16]` -> `[entries, first, bits]`
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def lut(descriptor, data):
        item = Dataset()
        item.add_new("LUTDescriptor", "US", descriptor)
        item.add_new("LUTData", "US", data)
        return Sequence([item])

    stored = [[0, 1], [2, 3]]
    twelve = make_dicom(tmp_path / "l12.dcm", stored, VOILUTSequence=lut([4, 0, 12], [0, 1000, 4095, 2048]),
                        WindowCenter=1, WindowWidth=2)  # the LUT wins over the window
    assert read_one(twelve).tolist() == [[0, round(1000 / 4095 * 255)], [255, 128]]
    # an 8-bit LUT longer than 256 entries: pixel 290 maps to entry 290, not to entry 290 - 256
    entries = [i * 255 // 299 for i in range(300)]
    eight = make_dicom(tmp_path / "l8.dcm", [[10, 260], [290, 299]], VOILUTSequence=lut([300, 0, 8], entries))
    assert read_one(eight).tolist() == [[entries[10], entries[260]], [entries[290], 255]]


def test_functional_groups_give_each_frame_its_own_rescale_and_window(tmp_path):
    # mutation seen to fail: dicom._frame_view `zip(_FUNCTIONAL_GROUPS, (0, index))` -> `(0, 0)`
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def group(**values):
        item, inner = Dataset(), Dataset()
        for k, v in values.items():
            setattr(inner, k, v)
        return item, inner

    shared, transform = group(RescaleSlope=2, RescaleIntercept=0)
    shared.PixelValueTransformationSequence = Sequence([transform])
    frames = []
    for center in (100, 200):
        item, voi = group(WindowCenter=center, WindowWidth=101)
        item.FrameVOILUTSequence = Sequence([voi])
        frames.append(item)
    pixels = np.full((2, 2, 2), 50, np.uint16)  # modality value 100 everywhere
    path = make_dicom(tmp_path / "enh.dcm", pixels, SharedFunctionalGroupsSequence=Sequence([shared]),
                      PerFrameFunctionalGroupsSequence=Sequence(frames))
    refs = frames_of(path)
    assert [r.index for r in refs] == [0, 1] and all(r.kind == "dicom" for r in refs)
    assert read_frame(refs[0]).tolist() == [[round(dicom_linear(100, 100, 101))] * 2] * 2  # 128
    assert read_frame(refs[1]).tolist() == [[0, 0], [0, 0]]  # 100 is below the window 200 +- 50


# ------------------------------------------------------------------------------------------------
# 2. the synthetic hospital set read back


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """The same patients (seed 4) as single-frame DICOM, multi-frame DICOM, 16-bit PNG and NIfTI."""
    root = tmp_path_factory.mktemp("hospital")
    kw = dict(patients_per_class=3, slices_per_patient=3, sites=4, size=40, seed=4)
    write_hospital_dataset(root / "dicom", fmt="dicom", **kw)
    write_hospital_dataset(root / "multiframe", fmt="dicom", multiframe=True, **kw)
    write_hospital_dataset(root / "png16", fmt="png16", **kw)
    write_hospital_dataset(root / "nifti", fmt="nifti", **kw)
    return root


def truth_of(root: Path) -> dict:
    return json.loads((root / TRUTH_FILE).read_text(encoding="utf-8"))


def test_multiframe_dicom_gives_one_image_per_frame_equal_to_the_single_frame_files(hospital):
    # mutation seen to fail: readers.frames_of `indices = range(_reader(kind).frames(path))` -> `range(1)`;
    # dicom.read `arr = pixel_array(ds, index=index)` -> `index=0`
    truth = truth_of(hospital / "multiframe")
    checked = 0
    for patient in truth["patients"]:
        for split, (name,) in patient["files"].items():
            refs = frames_of(hospital / "multiframe" / name)
            slices = patient["slices"][split]
            assert len(refs) == len(slices)
            single = [hospital / "dicom" / Path(name).parent / f"{patient['site']}-{patient['key']}-{i:03d}.dcm"
                      for i in slices]
            for ref, one in zip(refs, single):
                assert np.array_equal(read_frame(ref), read_one(one)), (ref, one)
                checked += 1
    assert checked == sum(len(s) for p in truth["patients"] for s in p["slices"].values())


def test_sites_rescale_window_and_monochrome1_give_the_same_picture_as_the_raw_signal(hospital):
    # mutations seen to fail: dicom.read `apply_modality_lut(arr, view)` -> `arr` (S2 rescales);
    # dicom.read the MONOCHROME1 inversion removed (S3 stores inverted pixels)
    from engine.data.synth_hospital import hospital_sites

    sites = {s.code: s for s in hospital_sites(4)}
    truth = truth_of(hospital / "dicom")
    seen = set()
    for patient in truth["patients"]:
        site = sites[patient["site"]]
        if not site.window:
            continue
        for split, names in patient["files"].items():
            for name in (n for n in names if n.endswith(".dcm")):
                from PIL import Image

                signal = np.asarray(Image.open(hospital / "png16" / name.replace(".dcm", ".png")), dtype=float)
                expected = np.clip((signal - site.offset) / site.scale * 255, 0, 255)
                got = read_one(hospital / "dicom" / name).astype(float)
                assert np.abs(got - expected).max() <= 2.0, (name, site.code)
                seen.add(site.code)
    assert seen == {"S1", "S2", "S3"}


def test_the_site_without_a_window_is_percentile_windowed(hospital):
    # mutation seen to fail: dicom._window `if windowing.mode == "percentile" or (windowing.mode == "auto" and
    # kind is None):` -> `if windowing.mode == "percentile":` (auto then never falls back to the percentile window)
    truth = truth_of(hospital / "dicom")
    patient = next(p for p in truth["patients"] if p["site"] == "S4")
    name = next(n for names in patient["files"].values() for n in names if n.endswith(".dcm"))
    ds = pydicom.dcmread(hospital / "dicom" / name)
    assert "WindowCenter" not in ds
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lo, hi = np.percentile(values, [0.5, 99.5])
    expected = np.rint(np.clip((values - lo) / (hi - lo) * 255, 0, 255))
    assert np.array_equal(read_one(hospital / "dicom" / name), expected)


def test_metadata_of_the_synthetic_dicom_and_no_identifying_value_in_it(hospital):
    # mutations seen to fail: dicom.metadata `site=_text(ds, "InstitutionName")` -> `"PatientName"`;
    # common.ImageMeta `patient_id: ... = field(default=None, repr=False)` -> `field(default=None)`
    from engine.data.synth_hospital import hospital_sites

    sites = {s.code: s for s in hospital_sites(4)}
    truth = truth_of(hospital / "dicom")
    for patient in truth["patients"]:
        site, planted = sites[patient["site"]], patient["identifiers"]
        for names in patient["files"].values():
            for name in (n for n in names if n.endswith(".dcm")):
                meta = read_metadata(hospital / "dicom" / name)
                assert meta.site == site.institution and meta.manufacturer == site.manufacturer
                assert meta.model == site.model and meta.field_strength == site.field_strength
                assert meta.sex == patient["sex"] and meta.age == patient["age"]
                assert meta.patient_id == planted["PatientID"]  # raw, to be hashed by the data stage
                assert meta.study == pydicom.dcmread(hospital / "dicom" / name).StudyInstanceUID
                shown = repr(meta)
                kept = [str(v) for v in vars(meta).values() if v is not None]
                for field_name in PLANTED_FIELDS:
                    value = planted[field_name]
                    assert value not in shown, (field_name, shown)
                    if field_name != "PatientID":
                        assert not any(value in v for v in kept), (field_name, kept)
                assert meta.study not in shown


def test_age_strings_and_the_age_from_birth_and_study_dates(tmp_path):
    # mutations seen to fail: dicom.parse_age `"M": n / 12` -> `"M": n`; dicom._age
    # `((seen.month, seen.day) < (born.month, born.day))` -> `... <= ...`
    assert parse_age("045Y") == 45.0
    assert parse_age("006M") == 0.5
    assert parse_age("010W") == round(70 / 365.25, 2)
    assert parse_age("003D") == round(3 / 365.25, 2)
    assert parse_age("45") == 45.0
    assert [parse_age(x) for x in ("", None, "abc", "45Q", "1234Y")] == [None] * 5
    pixels = np.zeros((2, 2), np.uint16)
    day_before = make_dicom(tmp_path / "a.dcm", pixels, PatientBirthDate="19800615", StudyDate="20230614")
    birthday = make_dicom(tmp_path / "b.dcm", pixels, PatientBirthDate="19800615", StudyDate="20230615",
                          PatientSex="X", MagneticFieldStrength="1.5")
    given = make_dicom(tmp_path / "c.dcm", pixels, PatientBirthDate="19800615", StudyDate="20230615",
                       PatientAge="006M")
    assert read_metadata(day_before).age == 42.0
    assert read_metadata(birthday).age == 43.0
    assert read_metadata(birthday).sex is None and read_metadata(birthday).field_strength == 1.5
    assert read_metadata(given).age == 0.5  # PatientAge wins over the dates
    assert "1980" not in repr(read_metadata(birthday))
    assert read_metadata(tmp_path / "a.dcm") == ImageMeta(age=42.0)


# ------------------------------------------------------------------------------------------------
# 3. compressed DICOM: decoded through the pylibjpeg plugins, or unreadable with the reason


def test_jpeg2000_lossless_dicom_decodes_to_the_same_pixels(tmp_path):
    # mutation seen to fail: dicom._check_image `if not decoder.is_available:` -> `if True:` (every
    # compressed syntax listed as unreadable)
    from pydicom.uid import JPEG2000Lossless

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, (32, 32)).astype(np.uint16)
    plain = make_dicom(tmp_path / "plain.dcm", stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    ds = pydicom.dcmread(plain)
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "j2k.dcm").file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(read_one(tmp_path / "j2k.dcm"), read_one(plain))


def test_jpeg_baseline_dicom_decodes_close_to_the_original(tmp_path):
    # mutation seen to fail: same as above (a compressed syntax listed as unreadable)
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    yy, xx = np.mgrid[0:48, 0:48]
    grey = (128 + 100 * np.sin(xx / 6.0) * np.cos(yy / 9.0)).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=95)
    path = make_dicom(tmp_path / "raw8.dcm", grey, bits_stored=8, WindowCenter=128, WindowWidth=256)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    got, raw = read_one(tmp_path / "jpeg.dcm").astype(int), read_one(path).astype(int)
    assert np.abs(got - raw).mean() < 2.0 and np.abs(got - raw).max() < 20


def test_compressed_dicom_without_a_decoder_is_an_input_error_with_the_reason(tmp_path, monkeypatch):
    # mutation seen to fail: dicom._check_image `if not decoder.is_available:` -> `if False:` (pydicom then
    # raises its own error inside read, and frames_of passes)
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless, MPEG2MPML

    stored = np.arange(1024, dtype=np.uint16).reshape(32, 32)
    path = make_dicom(tmp_path / "plain.dcm", stored)
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})  # as if pylibjpeg were not installed
    with pytest.raises(InputError, match=r"j2k\.dcm.*JPEG 2000.*no decoder plugin.*pylibjpeg-openjpeg") as err:
        frames_of(tmp_path / "j2k.dcm")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="no decoder plugin"):
        read_frame(FrameRef(tmp_path / "j2k.dcm", 0, "dicom"))
    # a syntax no decoder exists for at all
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "mpeg.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match=r"mpeg\.dcm.*MPEG2.*no installed DICOM decoder"):
        frames_of(tmp_path / "mpeg.dcm")


# ------------------------------------------------------------------------------------------------
# 4. broken and unsupported files: InputError naming the file, never another exception


def test_garbage_and_broken_files_are_input_errors(tmp_path):
    # mutations seen to fail: common.reading `except Exception as exc:` -> `except ValueError as exc:`;
    # dicom._check_image the "no pixel data" check removed (then pydicom's AttributeError escapes as
    # InputError without the reason)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"this is not a DICOM file at all" * 20)
    for call in (lambda: frames_of(garbage), lambda: read_frame(FrameRef(garbage, 0, "dicom")),
                 lambda: read_metadata(garbage)):
        with pytest.raises(InputError, match=r"garbage\.dcm.*not a DICOM file"):
            call()
    # a DICOM object without pixels, with a planted name: the name never appears in the reason
    report = make_dicom(tmp_path / "report.dcm", None, PatientName="HAWTHORNE^IMOGEN")
    with pytest.raises(InputError, match=r"report\.dcm.*no pixel data") as err:
        frames_of(report)
    assert "HAWTHORNE" not in str(err.value)
    # truncated pixel data: the header is fine, decoding fails
    whole = make_dicom(tmp_path / "whole.dcm", np.ones((64, 64), np.uint16))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-3000])
    with pytest.raises(InputError, match=r"cut\.dcm"):
        read_frame(frames_of(cut)[0])
    with pytest.raises(InputError, match=r"frame 3 asked for, the file has 1"):
        read_frame(FrameRef(whole, 3, "dicom"))
    for name, data in (("notes.txt", b"hello"), ("empty.png", b""), ("trunc.nii.gz", b"\x1f\x8b\x08\x00")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            read_frame(frames_of(tmp_path / name)[0])
    with pytest.raises(InputError, match="missing.dcm"):
        frames_of(tmp_path / "missing.dcm")


def test_file_kind_by_suffix_and_by_the_dicom_marker(tmp_path):
    # mutation seen to fail: readers.file_kind `return "dicom" if path.is_file() and is_dicom_file(path)` ->
    # `return None`
    dcm = make_dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16))
    bare = tmp_path / "IM0001"
    bare.write_bytes(dcm.read_bytes())
    (tmp_path / "readme").write_bytes(b"x" * 200)
    assert file_kind(dcm) == "dicom" and file_kind(bare) == "dicom" and file_kind(tmp_path / "readme") is None
    assert file_kind(Path("v.NII.GZ")) == "nifti" and file_kind(Path("v.nii")) == "nifti"
    assert file_kind(Path("x.PNG")) == "plain" and file_kind(Path("x.tiff")) == "plain"
    assert [r.kind for r in frames_of(bare)] == ["dicom"]


def test_windowing_and_slice_selection_options_are_checked():
    # mutation seen to fail: common.Windowing.__post_init__ `if not (0.0 <= lo < hi <= 100.0)` -> `if False`
    for bad in (dict(mode="window"), dict(percentiles=(50, 10)), dict(percentiles=(-1, 50)),
                dict(percentiles=("a", 2))):
        with pytest.raises(InputError):
            Windowing(**bad)
    assert Windowing(percentiles=[1, 99]).percentiles == (1.0, 99.0)
    assert SliceSelection.parse("all") == SliceSelection() == SliceSelection.parse(None)
    assert SliceSelection.parse([2, 5]).indices(10) == [2, 3, 4]
    assert SliceSelection.parse(3).indices(10) == [0, 3, 6, 9]
    for bad in ([5, 2], 0, "some", [1.5, 3], True):
        with pytest.raises(InputError):
            SliceSelection.parse(bad)


# ------------------------------------------------------------------------------------------------
# 5. NIfTI: slice selection and canonical orientation


def asymmetric_volume(shape=(6, 5, 8)) -> np.ndarray:
    """A canonical (RAS) volume where every voxel differs: value = 100 x + 10 y + z."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (100 * x + 10 * y + z).astype(np.float32)


def save_nifti(path: Path, canon: np.ndarray, axcodes: str, **header) -> Path:
    from nibabel.orientations import axcodes2ornt, ornt_transform

    img = nib.Nifti1Image(canon, np.diag([0.9, 0.9, 5.0, 1.0]))
    img = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(axcodes)))
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def test_nifti_slices_are_canonical_axial_whatever_the_stored_orientation(tmp_path):
    # mutations seen to fail: nifti._canonical_slice `stored = n - 1 - index if reverse else index` ->
    # `stored = index`; nifti.read `.T[::-1, ::-1]` -> `.T`
    from engine.data.readers.nifti import canonical_slice

    canon = asymmetric_volume()
    ras = save_nifti(tmp_path / "ras.nii.gz", canon, "RAS")
    others = [save_nifti(tmp_path / f"{codes}.nii", canon, codes) for codes in ("LPS", "SAR", "PIL")]
    assert nib.load(str(others[1])).shape == (8, 5, 6)  # stored with the axial axis first
    reference = nib.as_closest_canonical(nib.load(str(ras))).get_fdata()
    for path in [ras] + others:
        refs = frames_of(path)
        assert [r.index for r in refs] == list(range(8)) and {r.kind for r in refs} == {"nifti"}
        for k in (0, 3, 7):
            assert np.allclose(canonical_slice(path, k), reference[:, :, k])
            assert np.allclose(canonical_slice(path, k), canon[:, :, k])
            shown = read_frame(refs[k], Windowing("percentile", (0, 100)))
            assert shown.shape == (5, 6)  # rows: y (anterior first), columns: x (patient's right first)
            assert shown[0, 0] == 255 and shown[-1, -1] == 0  # right-anterior top left, left-posterior bottom right
            expected = canon[:, :, k].T[::-1, ::-1]
            lo, hi = expected.min(), expected.max()
            assert np.array_equal(shown, np.rint((expected - lo) / (hi - lo) * 255))


def test_nifti_slice_selection_and_stored_window(tmp_path):
    # mutations seen to fail: common.SliceSelection.indices `stop = n if self.stop is None else min(self.stop, n)`
    # -> `stop = n`; nifti.read `return scale_to_uint8(values, lo, hi)` -> percentile_window
    canon = asymmetric_volume()
    path = save_nifti(tmp_path / "v.nii.gz", canon, "LPS", cal_min=0.0, cal_max=1000.0)
    assert [r.index for r in frames_of(path, [2, 5])] == [2, 3, 4]
    assert [r.index for r in frames_of(path, 3)] == [0, 3, 6]
    assert [r.index for r in frames_of(path, SliceSelection(start=6, stop=20))] == [6, 7]
    assert [r.index for r in frames_of(path, "all")] == list(range(8))
    with pytest.raises(InputError, match=r"v\.nii\.gz.*selects none of its 8 axial slices"):
        frames_of(path, [10, 12])
    ref = frames_of(path, [4, 5])[0]
    expected = np.rint(np.clip(canon[:, :, 4].T[::-1, ::-1] / 1000 * 255, 0, 255))
    assert np.array_equal(read_frame(ref), expected)  # auto: cal_min/cal_max
    assert np.array_equal(read_frame(ref, Windowing("dicom")), expected)
    assert read_frame(ref, Windowing("percentile", (0, 100))).max() == 255
    bare = save_nifti(tmp_path / "bare.nii", canon, "RAS")
    with pytest.raises(InputError, match="cal_min"):
        read_frame(frames_of(bare)[0], Windowing("dicom"))
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), str(four))
    with pytest.raises(InputError, match=r"four\.nii\.gz.*2 volumes"):
        frames_of(four)
    assert read_metadata(path) == ImageMeta()


def test_synthetic_nifti_volumes_show_the_same_slices_as_the_dicom_files(hospital):
    # mutation seen to fail: synth_hospital._nifti_bytes `p.slices[i][0][::-1, ::-1].T` -> `p.slices[i][0].T`
    truth = truth_of(hospital / "nifti")
    lps = 0
    for patient in truth["patients"]:
        for split, (name,) in patient["files"].items():
            path = hospital / "nifti" / name
            lps += nib.aff2axcodes(nib.load(str(path)).affine) == ("L", "P", "S")
            for ref, i in zip(frames_of(path), patient["slices"][split]):
                shown = read_frame(ref, Windowing("percentile", (0, 100))).astype(int)
                dicom_name = f"{Path(name).parent}/{patient['site']}-{patient['key']}-{i:03d}.png"
                from PIL import Image

                signal = np.asarray(Image.open(hospital / "png16" / dicom_name), dtype=float)
                expected = (signal - signal.min()) / (signal.max() - signal.min()) * 255
                assert np.abs(shown - expected).max() <= 2.0, (name, i)
    assert lps > 0  # some volumes are stored LPS and had to be reoriented


# ------------------------------------------------------------------------------------------------
# 6. 16-bit PNG and TIFF


def test_16_bit_png_is_windowed_and_8_bit_images_are_not(tmp_path):
    # mutations seen to fail: plain.read `if im.mode not in _RAW_MODES:` -> `if True:` (16-bit clipped by
    # convert("L")); plain.read `return np.asarray(im.convert("L"), ...)` -> percentile_window(...)
    from PIL import Image

    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 900 + 1000)
    Image.fromarray(values).save(tmp_path / "v16.png")
    assert Image.open(tmp_path / "v16.png").mode == "I;16"
    got = read_one(tmp_path / "v16.png", Windowing("percentile", (0, 100)))
    assert np.array_equal(got, np.rint((values - 1000) / (63 * 900) * 255))
    lo, hi = np.percentile(values.astype(float), [0.5, 99.5])
    assert np.array_equal(read_one(tmp_path / "v16.png"), np.rint(np.clip((values - lo) / (hi - lo) * 255, 0, 255)))
    with pytest.raises(InputError, match=r"v16\.png.*'dicom' needs a stored window"):
        read_one(tmp_path / "v16.png", Windowing("dicom"))
    grey8 = (np.arange(64, dtype=np.uint8).reshape(8, 8) + 50)
    Image.fromarray(grey8).convert("RGB").save(tmp_path / "g8.png")
    assert np.array_equal(read_one(tmp_path / "g8.png"), grey8)  # already grey levels: untouched
    assert np.array_equal(read_one(tmp_path / "g8.png", Windowing("dicom")), grey8)
    assert read_metadata(tmp_path / "g8.png") == ImageMeta()


def test_multi_page_16_bit_tiff_gives_one_frame_per_page(tmp_path):
    # mutation seen to fail: plain.frames `... if im.format == "TIFF" else 1` -> `1`
    from PIL import Image

    pages = [np.full((4, 4), v, np.uint16) for v in (100, 5000)]
    for page in pages:
        page[0, 0] = 0
    first, *rest = (Image.fromarray(p) for p in pages)
    first.save(tmp_path / "pages.tif", save_all=True, append_images=rest)
    refs = frames_of(tmp_path / "pages.tif")
    assert [r.index for r in refs] == [0, 1]
    for ref in refs:
        shown = read_frame(ref, Windowing("percentile", (0, 100)))
        assert shown[0, 0] == 0 and shown[1, 1] == 255
    with pytest.raises(InputError, match="page 2 asked for"):
        read_frame(FrameRef(tmp_path / "pages.tif", 2, "plain"))


# ------------------------------------------------------------------------------------------------
# 7. synth-data --format dicom through the CLI


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_synth_data_dicom_writes_patients_slices_sites_and_planted_headers(tmp_path):
    # mutations seen to fail: synth_hospital._patients `site = site_list[(ci + j) % len(site_list)]` ->
    # `site_list[0]`; synth_hospital._dicom_common `setattr(ds, keyword, value)` -> `pass`;
    # cli.synth_data_cmd `sites=sites,` -> `sites=2,`
    out = tmp_path / "hosp"
    result = invoke("synth-data", out, "--format", "dicom", "--patients-per-class", 4, "--slices-per-patient", 3,
                    "--sites", 3, "--size", 32, "--seed", 2)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    summary = json.loads(result.stderr)
    assert summary["sites"] == ["S1", "S2", "S3"] and summary["leaked_patients"] == 4  # one per class
    truth = truth_of(out)
    assert truth["planted_fields"] == list(PLANTED_FIELDS)
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 4 * 4 * 3  # classes x patients x slices
    by_patient: dict[str, list[Path]] = {}
    institutions, photometric = set(), set()
    for path in files:
        split, folder = path.relative_to(out).parts[:2]
        assert split in ("Training", "Testing") and folder in KAGGLE_FOLDERS.values()
        site, key, _ = path.stem.split("-")
        by_patient.setdefault(key, []).append(path)
        ds = pydicom.dcmread(path)
        institutions.add(ds.InstitutionName)
        photometric.add(ds.PhotometricInterpretation)
        patient = next(p for p in truth["patients"] if p["key"] == key)
        for field_name in PLANTED_FIELDS:  # the planted identifying values are in the headers
            assert str(ds[field_name].value) == patient["identifiers"][field_name]
        assert patient["identifiers"]["PatientID"].startswith("MRN-")
        assert ds.PatientSex in ("F", "M") and ds.PatientAge == f"{patient['age']:03d}Y"
        for value in patient["identifiers"].values():  # file names stay neutral
            assert value not in str(path.relative_to(out))
    assert len(by_patient) == 16 and all(len(v) == 3 for v in by_patient.values())
    assert len(institutions) == 3 and photometric == {"MONOCHROME1", "MONOCHROME2"}
    leaked = [k for k, v in by_patient.items() if len({p.relative_to(out).parts[0] for p in v}) == 2]
    assert sorted(leaked) == sorted(p["key"] for p in truth["patients"] if p["leaked"]) and len(leaked) == 4
    for label in CLASSES:  # every class has patients in both splits and from more than one site
        keys = {p["key"] for p in truth["patients"] if p["class"] == label}
        assert len(keys) == 4 and len({p["site"] for p in truth["patients"] if p["class"] == label}) >= 2
    # the same command again: refused without --force, nothing changed
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = invoke("synth-data", out, "--format", "dicom")
    assert again.exit_code == 2 and "not empty" in again.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_synth_data_hospital_options_are_checked_and_per_class_is_refused(tmp_path):
    # mutation seen to fail: cli.synth_data_cmd `if ctx.get_parameter_source("per_class") != ...DEFAULT` ->
    # `if False` (--per-class would be ignored silently)
    bad = invoke("synth-data", tmp_path / "a", "--format", "nifti", "--per-class", 5)
    assert bad.exit_code == 2 and "--per-class" in bad.output
    assert invoke("synth-data", tmp_path / "b", "--sites", 1).exit_code == 2
    assert invoke("synth-data", tmp_path / "c", "--format", "png16", "--slices-per-patient", 0).exit_code == 2
    assert not any((tmp_path / n).exists() for n in "abc")
    ok = invoke("synth-data", tmp_path / "d", "--format", "png16", "--patients-per-class", 2,
                "--slices-per-patient", 1, "--size", 32)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stderr)["leaked_patients"] == 0  # one slice per patient cannot be split
    assert len(list((tmp_path / "d").rglob("*.png"))) == 4 * 2


def test_hospital_generation_is_deterministic_and_slices_of_a_patient_are_neighbours():
    # mutations seen to fail: synth.render `z = 0.0` as its first line (every slice the same);
    # synth_hospital `uid = lambda what: generate_uid(entropy_srcs=[mrn, key, what])` -> `generate_uid()`
    kw = dict(fmt="dicom", patients_per_class=2, slices_per_patient=5, sites=2, size=48, seed=7, test_fraction=0.25,
              leaked_per_class=1)
    files_a, summary = generate_hospital(**kw)
    files_b, _ = generate_hospital(**kw)
    assert files_a == files_b
    from engine.data.synth import draw_anatomy, render

    anatomy = draw_anatomy("glioma", 48, np.random.default_rng(1))
    slices = [render(anatomy, z)[0] for z in np.linspace(-1, 1, 5)]
    steps = [np.abs(a - b).mean() for a, b in zip(slices, slices[1:])]
    other = render(draw_anatomy("glioma", 48, np.random.default_rng(2)))[0]
    assert all(0 < s < np.abs(slices[2] - other).mean() / 2 for s in steps)
