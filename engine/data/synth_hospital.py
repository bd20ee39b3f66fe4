"""A synthetic hospital export: patients with several slices, sites with their own scanners and
intensity profiles, written as DICOM, NIfTI, 16-bit PNG or 8-bit PNG.

Layout (Kaggle style)::

    OUT/Training/<class folder>/<site>-<patient key>-<slice>.dcm   (+ .txt YOLO box for tumour slices)
    OUT/Testing/<class folder>/...
    OUT/.auditrun-hospital.json   the ground truth: patients, sites, splits, leaked patients and,
                                  for DICOM, the identifying values planted in the headers
    OUT/.auditrun-synth.json      what synth-data wrote (``--force`` replaces only these files)

``<patient key>`` is a random token drawn for the patient, not derived from any identifier, so file
names never carry identifying values. NIfTI writes one volume per patient and split
(``<site>-<key>.nii.gz``, slices along z); multi-frame DICOM one file per patient and split.

Every patient's slices are neighbouring slices of one phantom (``synth.render`` at z in [-1, 1]):
the head and the tumour change slowly from slice to slice. The first ``round(N * test_fraction)``
patients of each class are in Testing, the rest in Training, except ``leaked_per_class`` patients
per class whose first half of slices is in Testing and the rest in Training: patient-level leakage
that a slice-level split cannot see (counted as ``leaked_patients``).

Sites differ the way scanners do: signal scale and offset, noise, RescaleSlope/RescaleIntercept,
whether a window is stored, and one site (the third) stores MONOCHROME1 (inverted) pixels.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, replace
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path
from typing import Mapping

import numpy as np

from engine.data.synth import CLASSES, KAGGLE_FOLDERS, Box, draw_anatomy, render, write_files
from engine.errors import InputError

FORMATS = ("png", "png16", "dicom", "nifti")
TRUTH_FILE = ".auditrun-hospital.json"
#: Header fields that identify a patient, planted with made-up values in every synthetic DICOM file
#: so that tests can search everything auditrun writes for them.
PLANTED_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName")
PIXEL_SPACING_MM = 0.9
SLICE_THICKNESS_MM = 5.0
BITS_STORED = 12


@dataclass(frozen=True)
class Site:
    code: str  # in file names: S1, S2, ...
    institution: str  # InstitutionName
    manufacturer: str
    model: str
    field_strength: float  # MagneticFieldStrength, tesla
    scale: float  # signal of phantom intensity 1 above ``offset``
    offset: float  # signal of phantom intensity 0
    noise: float  # noise sd as a fraction of ``scale``
    slope: float  # RescaleSlope: stored = (signal - intercept) / slope
    intercept: float  # RescaleIntercept
    window: bool  # WindowCenter/WindowWidth stored (else readers use the percentile window)
    monochrome1: bool  # pixels stored inverted
    lift8: float  # 8-bit PNG: grey = 255 * (lift8 + gain8 * intensity)
    gain8: float

    def modality(self, signal: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(stored uint16 pixels, window centre, window width) of a signal image, in DICOM terms."""
        raw = (signal - self.intercept) / self.slope
        top = 2 ** BITS_STORED - 1
        center, width = self.offset + 0.5 * self.scale, self.scale
        if self.monochrome1:  # modality value = slope * (top - raw) + intercept = top' - signal
            raw = top - raw
            center = self.slope * top + 2 * self.intercept - center
        return np.clip(np.rint(raw), 0, top).astype(np.uint16), center, width


_BASE_SITES = (
    Site("S1", "Northbridge General Hospital", "SIEMENS", "MAGNETOM Skyra", 3.0,
         scale=1000.0, offset=40.0, noise=0.02, slope=1.0, intercept=0.0, window=True, monochrome1=False,
         lift8=0.0, gain8=1.0),
    Site("S2", "St Aldric Medical Centre", "GE MEDICAL SYSTEMS", "SIGNA Architect", 1.5,
         scale=2600.0, offset=300.0, noise=0.04, slope=2.0, intercept=-100.0, window=True, monochrome1=False,
         lift8=0.10, gain8=0.80),
    Site("S3", "Lakeshore University Clinic", "Philips Medical Systems", "Ingenia", 3.0,
         scale=1800.0, offset=100.0, noise=0.03, slope=1.0, intercept=0.0, window=True, monochrome1=True,
         lift8=0.02, gain8=0.92),
    Site("S4", "Harrow Valley Imaging", "Canon Medical Systems", "Vantage Orian", 1.5,
         scale=700.0, offset=20.0, noise=0.05, slope=0.5, intercept=0.0, window=False, monochrome1=False,
         lift8=0.15, gain8=0.70),
)


def hospital_sites(n: int) -> list[Site]:
    """``n`` sites: the four profiles above in turn, later rounds with a larger signal scale."""
    out = []
    for i in range(n):
        base, round_ = _BASE_SITES[i % len(_BASE_SITES)], i // len(_BASE_SITES)
        if round_ == 0:
            out.append(base)
            continue
        out.append(replace(base, code=f"S{i + 1}", institution=f"{base.institution} Annex {round_ + 1}",
                           scale=base.scale * (1 + 0.15 * round_), offset=base.offset * (1 + 0.5 * round_)))
    return out


def _with_noise(site_list: list[Site], site_noise: Mapping[str, float]) -> list[Site]:
    codes = [s.code for s in site_list]
    for code, noise in site_noise.items():
        if code not in codes:
            raise InputError(f"synth-data: site {code!r} (site noise) is not one of {', '.join(codes)}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 10:
            raise InputError(f"synth-data: noise of site {code} must be a number in [0, 10], got {noise!r}")
    return [replace(s, noise=float(site_noise[s.code])) if s.code in site_noise else s for s in site_list]


_SURNAMES = ("ABERNETHY", "BLACKWOOD", "CARRINGTON", "DELACROIX", "ELLINGHAM", "FAIRWEATHER", "GALLOWAY",
             "HAWTHORNE", "INGLEBY", "JARROW", "KINGSLEY", "LOCKHART", "MONTAGUE", "NORTHCOTE", "OAKENSHAW",
             "PEMBERTON", "QUENNELL", "RAVENSWORTH", "SUTHERLAND", "THISTLEWOOD")
_GIVEN = ("ADELAIDE", "BARTHOLOMEW", "CORDELIA", "DESMOND", "EUDORA", "FITZGERALD", "GWENDOLYN", "HORATIO",
          "IMOGEN", "JASPER", "LAVINIA", "MORTIMER", "OPHELIA", "PERCIVAL", "ROSALIND", "SERAPHINA",
          "THADDEUS", "WINIFRED")


@dataclass
class _Patient:
    key: str
    label: str
    site: Site
    sex: str
    age: int
    study_date: date
    identifiers: dict[str, str]  # PLANTED_FIELDS -> value
    study_uid: str
    series_uid: str
    frame_uid: str
    slices: list[tuple[np.ndarray, Box | None]]  # (signal image, box) per slice, in z order
    split_of: list[str]  # "Training" | "Testing" per slice


def write_hospital_dataset(out: Path, *, fmt: str = "dicom", patients_per_class: int = 6,
                           slices_per_patient: int = 4, sites: int = 2, size: int = 64, seed: int = 0,
                           test_fraction: float = 0.25, leaked_per_class: int = 1, multiframe: bool = False,
                           site_noise: Mapping[str, float] | None = None, force: bool = False) -> dict:
    """Write the synthetic hospital set under ``out`` (module docstring); return its summary:
    format, image counts and patient counts per split and class, site codes, leaked_patients.

    ``site_noise`` ({site code: noise sd as a fraction of the signal scale}) replaces those sites'
    noise: a planted site effect (``{"S2": 0.8}`` makes S2's phantoms much harder to read), for
    testing subgroup gaps. A non-empty ``out`` is refused unless ``force`` (as ``synth.write_dataset``).
    """
    if fmt not in FORMATS:
        raise InputError(f"synth-data: format {fmt!r} is not one of {', '.join(FORMATS)}")
    if patients_per_class < 2 or slices_per_patient < 1 or sites < 2 or size < 32:
        raise InputError("synth-data: need at least 2 patients per class, 1 slice per patient, 2 sites and 32 px")
    if multiframe and fmt != "dicom":
        raise InputError("synth-data: multi-frame files are DICOM only")
    files, summary = generate_hospital(fmt=fmt, patients_per_class=patients_per_class,
                                       slices_per_patient=slices_per_patient, sites=sites, size=size, seed=seed,
                                       test_fraction=test_fraction, leaked_per_class=leaked_per_class,
                                       multiframe=multiframe, site_noise=site_noise)
    write_files(Path(out), files, force=force)
    return summary


def _patients(*, patients_per_class, slices_per_patient, site_list, size, rng, test_fraction,
              leaked_per_class) -> list[_Patient]:
    from pydicom.uid import generate_uid

    n, k = patients_per_class, slices_per_patient
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    n_leak = max(0, min(leaked_per_class, n - n_test - 1)) if k >= 2 else 0
    zs = np.linspace(-1.0, 1.0, k) if k > 1 else np.zeros(1)
    patients, seen = [], set()
    for ci, label in enumerate(CLASSES):
        for j in range(n):
            site = site_list[(ci + j) % len(site_list)]
            while True:  # unique key and MRN per dataset
                key = f"{int(rng.integers(0, 16 ** 10)):010x}"
                mrn = f"MRN-{int(rng.integers(10 ** 7, 10 ** 8))}"
                if key not in seen and mrn not in seen:
                    seen |= {key, mrn}
                    break
            sex = str(rng.choice(["F", "M"]))
            age = int(rng.integers(18, 86))
            study_date = date(2023, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
            born = study_date.replace(year=study_date.year - age) - timedelta(days=int(rng.integers(1, 300)))
            name = f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}"
            referrer = f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}^^DR"
            identifiers = {"PatientName": name, "PatientID": mrn, "PatientBirthDate": born.strftime("%Y%m%d"),
                           "AccessionNumber": f"ACC{int(rng.integers(10 ** 8, 10 ** 9))}",
                           "ReferringPhysicianName": referrer}
            anatomy = draw_anatomy(label, size, rng)
            slices = []
            for z in zs:
                img, box = render(anatomy, float(z))
                signal = site.offset + site.scale * img + rng.normal(0, site.noise * site.scale, img.shape)
                slices.append((np.clip(signal, 0.0, None), box))
            if j < n_test:
                split_of = ["Testing"] * k
            elif j < n_test + n_leak:
                split_of = ["Testing"] * (k // 2) + ["Training"] * (k - k // 2)
            else:
                split_of = ["Training"] * k
            uid = lambda what: generate_uid(entropy_srcs=[mrn, key, what])  # noqa: E731 - deterministic
            patients.append(_Patient(key, label, site, sex, age, study_date, identifiers, uid("study"),
                                     uid("series"), uid("frame"), slices, split_of))
    return patients


def generate_hospital(*, fmt: str, patients_per_class: int, slices_per_patient: int, sites: int, size: int,
                      seed: int, test_fraction: float, leaked_per_class: int, multiframe: bool = False,
                      site_noise: Mapping[str, float] | None = None) -> tuple[dict[str, bytes], dict]:
    """The dataset's files in memory ({relative path: bytes}, the truth file included) and its summary."""
    rng = np.random.default_rng(seed)
    site_list = _with_noise(hospital_sites(sites), site_noise or {})
    patients = _patients(patients_per_class=patients_per_class, slices_per_patient=slices_per_patient,
                         site_list=site_list, size=size, rng=rng, test_fraction=test_fraction,
                         leaked_per_class=leaked_per_class)
    files: dict[str, bytes] = {}
    counts = {s: {c: 0 for c in CLASSES} for s in ("Training", "Testing")}
    patient_counts = {s: {c: 0 for c in CLASSES} for s in ("Training", "Testing")}
    truth_patients = []
    for p in patients:
        written: dict[str, list[str]] = {}
        for split in ("Training", "Testing"):
            idx = [i for i, s in enumerate(p.split_of) if s == split]
            if not idx:
                continue
            folder = f"{split}/{KAGGLE_FOLDERS[p.label]}"
            stem = f"{folder}/{p.site.code}-{p.key}"
            if fmt == "nifti":
                files[f"{stem}.nii.gz"] = _nifti_bytes(p, idx, site_list.index(p.site))
                names = [f"{stem}.nii.gz"]
            elif fmt == "dicom" and multiframe:
                files[f"{stem}.dcm"] = _dicom_multiframe_bytes(p, idx, size)
                names = [f"{stem}.dcm"]
            else:
                names = []
                for i in idx:
                    signal, box = p.slices[i]
                    name = f"{stem}-{i:03d}.{'dcm' if fmt == 'dicom' else 'png'}"
                    if fmt == "dicom":
                        files[name] = _dicom_slice_bytes(p, i, size)
                    else:
                        files[name] = _png_bytes(signal, p.site, fmt)
                    if box is not None:
                        files[name.rsplit(".", 1)[0] + ".txt"] = box.yolo(CLASSES.index(p.label)).encode("utf-8")
                    names.append(name)
            written[split] = names
            counts[split][p.label] += len(idx)
            patient_counts[split][p.label] += 1
        entry = {"key": p.key, "class": p.label, "site": p.site.code, "sex": p.sex, "age": p.age,
                 "slices": {s: [i for i, x in enumerate(p.split_of) if x == s] for s in written},
                 "leaked": len(written) == 2, "files": written}
        if fmt == "dicom":
            entry["identifiers"] = dict(p.identifiers)
        truth_patients.append(entry)
    summary = {
        "format": fmt, "multiframe": bool(multiframe), "seed": seed, "size": size,
        "patients_per_class": patients_per_class, "slices_per_patient": slices_per_patient,
        "sites": [s.code for s in site_list],
        "leaked_patients": sum(e["leaked"] for e in truth_patients),
        "images": counts, "patients": patient_counts,
    }
    truth = dict(summary)
    truth["site_profiles"] = [
        {"code": s.code, "institution": s.institution, "manufacturer": s.manufacturer, "model": s.model,
         "field_strength": s.field_strength, "photometric": "MONOCHROME1" if s.monochrome1 else "MONOCHROME2",
         "window_stored": s.window, "rescale": [s.slope, s.intercept], "noise": s.noise} for s in site_list]
    truth["planted_fields"] = list(PLANTED_FIELDS) if fmt == "dicom" else []
    truth["patients"] = truth_patients
    files[TRUTH_FILE] = (json.dumps(truth, indent=1, sort_keys=True) + "\n").encode("utf-8")
    return files, summary


def _png_bytes(signal: np.ndarray, site: Site, fmt: str) -> bytes:
    from PIL import Image

    buf = BytesIO()
    if fmt == "png16":
        Image.fromarray(np.clip(np.rint(signal), 0, 65535).astype(np.uint16)).save(buf, format="PNG")
    else:  # 8-bit RGB, as exported by a viewer with the site's own brightness and contrast
        intensity = (signal - site.offset) / site.scale
        grey = np.clip(np.rint(255 * (site.lift8 + site.gain8 * intensity)), 0, 255).astype(np.uint8)
        Image.fromarray(grey).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _nifti_bytes(p: _Patient, idx: list[int], site_index: int) -> bytes:
    """One volume (x, y, z) of the patient's slices ``idx``; every other site stores it LPS rather
    than RAS, so readers must reorient."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, ornt_transform

    # a displayed slice D (anterior up, patient's right on the left) is canonical (x, y) = D[::-1, ::-1].T
    vol = np.stack([p.slices[i][0][::-1, ::-1].T for i in idx], axis=2).astype(np.float32)
    affine = np.diag([PIXEL_SPACING_MM, PIXEL_SPACING_MM, SLICE_THICKNESS_MM, 1.0])
    affine[:3, 3] = [-vol.shape[0] / 2 * PIXEL_SPACING_MM, -vol.shape[1] / 2 * PIXEL_SPACING_MM,
                     idx[0] * SLICE_THICKNESS_MM]
    img = nib.Nifti1Image(vol, affine)
    if site_index % 2 == 1:
        img = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("LPS")))
    img.set_data_dtype(np.int16)  # nibabel stores scl_slope/scl_inter for the float signal
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), mtime=0)


def _dicom_common(p: _Patient, sop_uid: str, sop_class: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyDate = ds.SeriesDate = p.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = "093000"
    ds.Modality = "MR"
    ds.Manufacturer, ds.ManufacturerModelName = p.site.manufacturer, p.site.model
    ds.InstitutionName = p.site.institution
    ds.MagneticFieldStrength = p.site.field_strength
    for keyword, value in p.identifiers.items():
        setattr(ds, keyword, value)
    ds.PatientSex, ds.PatientAge = p.sex, f"{p.age:03d}Y"
    ds.StudyDescription, ds.SeriesDescription = "MRI BRAIN WITH CONTRAST", "AX T1 POST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = p.study_uid, p.series_uid, p.frame_uid
    ds.StudyID, ds.SeriesNumber = "1", 3
    return ds


def _position(i: int, size: int) -> list[float]:
    return [-size / 2 * PIXEL_SPACING_MM, -size / 2 * PIXEL_SPACING_MM, i * SLICE_THICKNESS_MM]


def _photometric(site: Site) -> str:
    return "MONOCHROME1" if site.monochrome1 else "MONOCHROME2"


def _save(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_slice_bytes(p: _Patient, i: int, size: int) -> bytes:
    from pydicom.uid import MRImageStorage, generate_uid

    stored, center, width = p.site.modality(p.slices[i][0])
    ds = _dicom_common(p, generate_uid(entropy_srcs=[p.study_uid, str(i)]), MRImageStorage)
    ds.InstanceNumber = i + 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = _position(i, size), [1, 0, 0, 0, 1, 0]
    ds.SliceLocation, ds.SliceThickness = i * SLICE_THICKNESS_MM, SLICE_THICKNESS_MM
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.set_pixel_data(stored, _photometric(p.site), BITS_STORED, generate_instance_uid=False)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = p.site.intercept, p.site.slope, "US"
    if p.site.window:
        ds.WindowCenter, ds.WindowWidth = round(center, 2), round(width, 2)
    return _save(ds)


def _dicom_multiframe_bytes(p: _Patient, idx: list[int], size: int) -> bytes:
    """An Enhanced MR object: one frame per slice, rescale and window in the shared functional groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedMRImageStorage, generate_uid

    pixels = [p.site.modality(p.slices[i][0]) for i in idx]
    ds = _dicom_common(p, generate_uid(entropy_srcs=[p.study_uid, "multiframe", str(idx[0])]),
                       EnhancedMRImageStorage)
    ds.InstanceNumber = 1
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [PIXEL_SPACING_MM, PIXEL_SPACING_MM], SLICE_THICKNESS_MM
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = p.site.intercept, p.site.slope, "US"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    if p.site.window:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = round(pixels[0][1], 2), round(pixels[0][2], 2)
        shared.FrameVOILUTSequence = Sequence([voi])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for n, i in enumerate(idx):
        item, position, content = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = _position(i, size)
        content.InStackPositionNumber = n + 1
        item.PlanePositionSequence, item.FrameContentSequence = Sequence([position]), Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.set_pixel_data(np.stack([px[0] for px in pixels]), _photometric(p.site), BITS_STORED,
                      generate_instance_uid=False)
    return _save(ds)
