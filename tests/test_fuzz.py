"""Fuzzing (issue 14, item 10): no manifest and no image file gets a traceback out of auditrun.

Generated manifests - valid ones and mutations of them (wrong types, missing and unknown keys,
odd strings and paths, out-of-range numbers, wrong nesting, broken TOML text) - go through
``manifest.load`` and ``auditrun check-data``; generated image files (random bytes, truncated and
bit-flipped real JPEG/PNG files, decompression-bomb headers, wrong extensions) go through the
integrity audit, ``data.readable`` and the training decode path. The one acceptable failure is the
project's own ``InputError`` (exit 2) with a one-line message.

Hypothesis is derandomized and keeps no example database, so every CI run sees the same examples:
650 generated manifests (500 through load, 150 through check-data) and 300 generated files. An
edge sweep adds every key of a full manifest at every edge value of its kind (~2,600 manifests),
so the rare slots a random search may miss are tried on every run. About 20 s on 2 cores (budget:
a minute); FUZZ_SCALE=10 searches ten times as long. Regressions found are plain tests at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import json
import math
import os
import shutil
import struct
import types
import typing
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.data import discovery as data_mod
from engine import manifest
from engine.training.backbones import REGISTRY
from engine.cli import main
from engine.errors import InputError
from engine.paths import name_problem
from engine.integrity.audit import IntegrityConfig, audit

#: Examples per CI run. FUZZ_SCALE=10 runs ten times as many, for a deeper search by hand.
SCALE = float(os.environ.get("FUZZ_SCALE", 1))
N_LOAD = int(500 * SCALE)  # manifest.load
N_CHECK_DATA = int(150 * SCALE)  # `auditrun check-data`: discovery and the audit per example, slower
N_FILES = int(300 * SCALE)  # image files

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")
KAGGLE_FOLDERS = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
PER_CLASS = 4  # synthetic images per class (3 training, 1 test)


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------- environment


@dataclass
class Env:
    base: Path
    kaggle: Path  # Training/ + Testing/ phantoms
    imagefolder: Path  # one folder per class
    keras_file: Path  # stands in for a backbone file (load only checks that it exists)
    cache: Path  # check-data --output-dir, shared so unchanged files are fingerprinted once
    n_kaggle: int
    n_imagefolder: int

    def tokens(self, work: Path) -> dict[str, str]:
        """Placeholders the strategies use for paths that only exist at test time.

        Absolute paths outside the test's folders are only ones that exist or cannot be created:
        with [data.synthetic], check-data writes a dataset at a missing data.root, and tests run as root.
        """
        return {
            "@kaggle": str(self.kaggle),
            "@kaggle_rel": os.path.relpath(self.kaggle, work),
            "@kaggle_dotted": os.path.relpath(self.kaggle, work) + "/./../" + self.kaggle.name,
            "@imagefolder": str(self.imagefolder),
            "@via_symlink": str(self.base / "link-to-data"),
            "@loop": str(self.base / "loop"),
            "@dangling": str(self.base / "dangling"),
            "@file": str(self.keras_file),
            "@through_file": str(self.keras_file / "sub"),
            "@missing": str(work / "missing"),
            "@keras": str(self.keras_file),
            "@keras_rel": os.path.relpath(self.keras_file, work),
            "@output": str(work / "out"),
        }


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    from engine.data.synth import write_dataset

    base = tmp_path_factory.mktemp("fuzz")
    kaggle = base / "kaggle"
    write_dataset(kaggle, per_class=PER_CLASS, size=32, seed=5)
    # Class folders with canonical names, 10 images each: any test_fraction in [0.1, 0.5] then
    # holds out at least one image per class.
    write_dataset(base / "if-source", per_class=11, size=32, seed=6, test_fraction=0.05, kaggle_names=False)
    imagefolder = base / "imagefolder"
    (base / "if-source" / "Training").rename(imagefolder)
    (base / "link-to-data").symlink_to(kaggle, target_is_directory=True)
    (base / "loop").symlink_to(base / "loop")
    (base / "dangling").symlink_to(base / "nowhere" / "at-all")
    keras_file = base / "backbone.keras"
    keras_file.write_bytes(b"not a real model")
    n_kaggle = sum(1 for p in kaggle.rglob("*.png"))
    n_if = sum(1 for p in imagefolder.rglob("*.png"))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(manifest.DATA_ROOT_ENV, raising=False)  # it would override every data.root
        # A mutated data.root with [data.synthetic] writes 240 phantoms at the default per_class,
        # each flushed to disk by engine.atomic: durability is not under test, time is.
        mp.setattr("engine.atomic.os.fsync", lambda fd: None)
        yield Env(base, kaggle, imagefolder, keras_file, base / "cache", n_kaggle, n_if)


# ------------------------------------------------------------------------- manifest strategies

PATH_KEYS = {"root", "output_dir", "file"}

ODD_STRINGS = ["", " ", ".", "..", "/", "//", "\\", "\0", "a\0b", "\n", "\t", "x" * 300, "é" * 5000,
               "\u202eevil", "😀", "~", "C:\\data", "file:///x", "glioma", "Training", "none", "NaN",
               "-1", "true", "[x]", "'", '"', "a/b", "../" * 10]

# Odd values for path keys: absolute ones exist or cannot be created (see Env.tokens).
ODD_PATHS = ["", " ", ".", "..", "/", "//", "~", "/dev/null", "/proc/self/root", "\0", "a\0b", "x" * 300,
             ("y" * 200 + "/") * 25, "\n", "😀/ü", "C:\\data", "file:///x", "../" * 60,
             "@loop", "@dangling", "@file", "@through_file", "@missing", "@via_symlink", "@kaggle",
             "@imagefolder", "@keras"]

ODD_INTS = [0, -1, 1, 2, 31, 2**31, 2**32, -(2**31), 2**63 - 1, -(2**63), 10**30]
ODD_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, -1.0, 1.0, 1.5, 1e308, 5e-324, 0.9, 1e-300]


# Strategies are built once: hypothesis spends most of its time constructing them otherwise.
# Free text under the manifest's folder: no leading '/' or '~' and no '..' (see Env.tokens).
RELATIVE_TEXT = st.text(max_size=40).filter(lambda s: not s.startswith(("/", "~")) and ".." not in s)
ODD_PATH = st.one_of(st.sampled_from(ODD_PATHS), RELATIVE_TEXT)
SCALAR = st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=30), st.datetimes(), st.dates(),
                   st.times())
ANY_VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=8)), inner,
                                            max_size=3)),
    max_leaves=6,
)
#: Anything TOML can hold, biased to the awkward: half the draws are curated edge values.
ODD_VALUE = st.one_of(st.sampled_from(ODD_INTS + ODD_FLOATS + ODD_STRINGS + [True, False, [], {}, [1, "a"],
                                                                             {"x": 1}, [{}]]), ANY_VALUE)
ODD_NON_STRING = ODD_VALUE.filter(lambda v: not isinstance(v, str))
ODD_PATH_VALUE = st.one_of(st.sampled_from(ODD_PATHS), ODD_PATH, ODD_NON_STRING)
# A missing data.root with a huge valid per_class legitimately writes that many phantoms.
ODD_PER_CLASS = st.one_of(st.integers(max_value=3), ODD_VALUE.filter(lambda v: not isinstance(v, int)
                                                                   or isinstance(v, bool) or v <= 3))


def unit_float(lo=0.0, hi=1.0, **kw):
    return st.floats(lo, hi, allow_nan=False, **kw)


def opt(d: dict) -> st.SearchStrategy:
    """A table with a random subset of ``d``'s keys (every key is optional in a manifest)."""
    return st.fixed_dictionaries({}, optional=d)


FINE_TUNE = opt({
    "layers": st.integers(-1, 300),
    "learning_rate": unit_float(1e-6, 1e-2),
    "epochs": st.integers(1, 5),
    "schedule": st.sampled_from(["cosine", "constant"]),
    "warmup_epochs": unit_float(0.0, 1.0, exclude_max=True),  # below any epochs >= 1
})
BACKBONE_COMMON = {
    "weights": st.sampled_from(["imagenet", "none"]),
    "weights_fallback": st.sampled_from(["error", "random"]),
    "fine_tune": FINE_TUNE,
    "gradcam_layer": st.text(max_size=20),
    "train_backbone": st.booleans(),
}
REGISTRY_BACKBONE = opt(BACKBONE_COMMON | {"input_size": st.integers(75, 512),  # InceptionV3 needs 75
                                           "preprocessing": st.just("auto")})
FILE_BACKBONE = opt(BACKBONE_COMMON | {
    "input_size": st.integers(32, 512),
    "preprocessing": st.sampled_from(["auto", "none", "tf", "torch", "caffe", "unit"]),
}).flatmap(lambda t: st.sampled_from(["@keras", "@keras_rel"]).map(lambda f: t | {"file": f}))
EXPERIMENT = opt({
    "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_. -]{0,29}[A-Za-z0-9_]", fullmatch=True),
    "description": st.text(max_size=60),
    "seed": st.integers(0, 2**32 - 1),
    "output_dir": st.sampled_from(["reports", "out/nightly", "@output"]),
    "reuse": st.sampled_from(["never", "if-unchanged"]),
    "keep_last": st.integers(0, 100),
})
DATA = opt({
    "validation_fraction": unit_float(0.05, 0.5),
    "test_fraction": unit_float(0.1, 0.5),
    "cache": st.booleans(),
    "cache_max_age_days": st.integers(0, 3650),
    "synthetic": opt({"per_class": st.integers(2, 3), "size": st.integers(32, 40),
                      "seed": st.integers(0, 2**32 - 1), "test_fraction": unit_float(0.1, 0.5)}),
})
ALIASES = st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda s: s.lower() not in KAGGLE_FOLDERS),
                          st.sampled_from(CLASSES), max_size=3)
TRAINING = opt({
    "epochs": st.integers(1, 100),
    "batch_size": st.integers(1, 512),
    "learning_rate": unit_float(1e-6, 1.0, exclude_min=True),
    "class_weights": st.sampled_from(["balanced", "none"]),
    "early_stopping_patience": st.integers(0, 20),
    "head_units": st.integers(1, 1024),
    "dropout": unit_float(0.0, 0.9),
    "augmentation": opt({"enabled": st.booleans(), "flip": st.booleans(),
                         "rotation": unit_float(0, 0.5), "shift": unit_float(0, 0.5),
                         "zoom": unit_float(0, 0.5), "brightness": unit_float(0, 0.5),
                         "contrast": unit_float(0, 0.5), "augment_head": st.booleans()}),
    "fine_tune_best": FINE_TUNE,
})
INTEGRITY = st.integers(2, 24).flatmap(lambda hs: opt({
    "enabled": st.booleans(),
    "hash_size": st.just(hs),
    "near_threshold": st.integers(0, min(12, hs * hs // 2 - 1)),
    "fail_on_unreadable": st.booleans(),
    "group_validation_split": st.booleans(),
    "shift": st.booleans(),
}).map(lambda t: t if t.get("hash_size", 16) >= 6 or "near_threshold" in t
       # The default near_threshold (12) needs at least 6 x 6 hash bits.
       else t | {"near_threshold": hs * hs // 2 - 1}))
GRADCAM = opt({"enabled": st.booleans(), "images_per_class": st.integers(0, 10),
               "layer": st.text(max_size=20), "max_pointing_images": st.integers(0, 1000)})
EVALUATION = opt({"ece_bins": st.integers(1, 50), "temperature_scaling": st.booleans(),
                  "bootstrap_resamples": st.integers(0, 5000),
                  "confidence": unit_float(0.5, 0.999), "tta_flip": st.booleans()})
REPORT = opt({"formats": st.lists(st.sampled_from(["html", "pdf"]), unique=True),
              "title": st.text(max_size=60), "author": st.text(max_size=30),
              "trend_window": st.integers(1, 100),
              "checklists": st.lists(st.sampled_from(["claim-2024", "tripod-ai"]), unique=True)})
STUDY = opt({key: st.text(max_size=40) for key in ("objectives", "intended_use", "reference_standard", "annotators",
                                                   "registration", "funding", "data_availability")})
GATES = opt({
    "min_accuracy": unit_float(), "min_macro_f1": unit_float(), "max_macro_f1_drop": unit_float(),
    "max_leakage_fraction": unit_float(), "max_subgroup_gap": unit_float(),
    "min_recall": st.dictionaries(st.sampled_from(CLASSES), unit_float(), max_size=4),
    "warn_only": st.lists(st.sampled_from(["min_accuracy", "min_macro_f1", "min_recall", "max_macro_f1_drop",
                                           "max_leakage_fraction", "min_recall.glioma", "max_subgroup_gap"]),
                          max_size=3),
    "applies_to": st.sampled_from(["best", "all"]),
})
SUBGROUPS = opt({"by": st.lists(st.sampled_from(["site", "scanner", "sex", "age_band"]), unique=True),
                 "age_bands": st.lists(st.integers(0, 150), min_size=2, unique=True).map(sorted),
                 "min_n": st.integers(1, 1000)})
COMPUTE = opt({"scheduler": st.just("local")})  # an address would wait for a scheduler: test_compute_dask.py
SECTIONS = {"experiment": EXPERIMENT, "training": TRAINING, "integrity": INTEGRITY, "gradcam": GRADCAM,
            "evaluation": EVALUATION, "report": REPORT, "gates": GATES, "subgroups": SUBGROUPS, "compute": COMPUTE,
            "study": STUDY}


@st.composite
def valid_manifest(draw):
    """A manifest ``load`` must accept: every key optional but data.root and one backbone name."""
    doc = {}
    for name, strategy in SECTIONS.items():
        table = draw(strategy)
        if table or draw(st.booleans()):  # an omitted section is as valid as an empty one
            doc[name] = table
    kaggle = draw(st.booleans())
    data = draw(DATA)
    data["root"] = draw(st.sampled_from(["@kaggle", "@kaggle_rel", "@kaggle_dotted", "@via_symlink"]
                                        if kaggle else ["@imagefolder"]))
    if draw(st.booleans()):
        data["layout"] = draw(st.sampled_from(["auto", "kaggle" if kaggle else "imagefolder"]))
    if draw(st.booleans()):
        data["classes"] = list(draw(st.permutations(CLASSES)))
    if draw(st.booleans()):
        data["aliases"] = draw(ALIASES)
    doc["data"] = data
    doc["backbones"] = []
    for i in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            taken = {b["name"] for b in doc["backbones"]}
            name = draw(st.sampled_from(sorted(set(REGISTRY) - taken)))
            doc["backbones"].append({"name": name} | draw(REGISTRY_BACKBONE))
        else:
            # A file backbone may be called anything that is one plain file name (engine.paths);
            # the suffix keeps names unique.
            name = draw(st.text(min_size=1, max_size=20).filter(lambda t: name_problem(t + "#") is None)) + f"#{i}"
            doc["backbones"].append({"name": name} | draw(FILE_BACKBONE))
    return doc


def _tables(doc, prefix=()):
    """Paths of every table in ``doc`` (the top level included), array-of-tables entries too."""
    yield prefix
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _tables(v, prefix + (k,))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    yield from _tables(item, prefix + (k, i))


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _kind(tp):
    """(edge kind, nested dataclass or None) of a manifest field's type."""
    tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_origin(tp) in (
        typing.Union, types.UnionType) else tp
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "literal", None
    if origin in (list, dict):
        item = typing.get_args(tp)[-1]
        return ("list" if origin is list else "dict"), (item if dataclasses.is_dataclass(item) else None)
    if dataclasses.is_dataclass(tp):
        return "table", tp
    return tp, None


def schema(cls=manifest.Manifest, path=()):
    """(table path, key, edge kind) for every key load knows, read off its dataclasses so a key
    added later is swept too."""
    hints = manifest.type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("path", "text"):
            continue
        kind, sub = _kind(hints[f.name])
        yield path, f.name, kind
        if sub is not None:
            yield from schema(sub, path + ((f.name, 0) if kind == "list" else (f.name,)))


#: Keys ``load`` knows in each section, so a mutation can also set a key the valid draw left out.
KNOWN_KEYS: dict[tuple, list[str]] = {}
for _path, _key, _ in schema():
    KNOWN_KEYS.setdefault(tuple(p for p in _path if isinstance(p, str)), []).append(_key)


def _known_keys(path) -> list[str]:
    return KNOWN_KEYS.get(tuple(p for p in path if isinstance(p, str)), [])


def _value_for(path, key):
    if key == "per_class" and path[-1:] == ("synthetic",):
        return ODD_PER_CLASS
    if key in PATH_KEYS:
        return ODD_PATH_VALUE
    return ODD_VALUE


EXTRA_KEY = st.one_of(st.sampled_from(ODD_STRINGS + ["path", "text", "Root", "epochs ", "min_image_size"]),
                      st.text(max_size=12))
WRONG_NESTING = ["list", "table", "two", "string", "empty list", "empty table"]


ODD_NUMBER = st.one_of(st.sampled_from(ODD_INTS + ODD_FLOATS), st.integers(), st.floats())


@st.composite
def mutation(draw, doc):
    """Apply one mutation to ``doc`` in place; return the key it touched (dotted).

    The kind is drawn first so that rare slots (the three path keys, the numbers) get their share.
    """
    slots = [(path, key) for path in _tables(doc)
             for key in sorted(set(_get(doc, path)) | set(_known_keys(path)), key=str)]
    kind = draw(st.sampled_from(["path", "path", "number", "number", "type", "type", "delete", "extra", "nest"]))
    if kind == "path":
        slots = [(p, k) for p, k in slots if k in PATH_KEYS] or slots
    elif kind == "number":
        slots = [(p, k) for p, k in slots if k in _get(doc, p) and type(_get(doc, p)[k]) in (int, float)] or slots
    elif kind == "delete":
        slots = [(p, k) for p, k in slots if k in _get(doc, p)]
    path, key = draw(st.sampled_from(slots))
    table = _get(doc, path)
    if kind == "delete":
        del table[key]
    elif kind == "extra":
        key = draw(EXTRA_KEY)
        table[key] = draw(ODD_VALUE)
    elif kind == "nest":
        # Wrong nesting: a table as an array of tables or a string, a value wrapped in a table.
        old = table.get(key, {})
        how = draw(st.sampled_from(WRONG_NESTING))
        table[key] = {"list": [old], "table": {"value": old}, "two": [old, old], "string": str(old)[:50],
                      "empty list": [], "empty table": {}}[how]
    elif kind == "number" and not (key == "per_class" and path[-1:] == ("synthetic",)):
        table[key] = draw(ODD_NUMBER)
    else:
        table[key] = draw(_value_for(path, key))
    return ".".join(map(str, path + (key,)))


def _substitute(value, tokens):
    if isinstance(value, str):
        return tokens.get(value, value)
    if isinstance(value, list):
        return [_substitute(v, tokens) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, tokens) for k, v in value.items()}
    return value


TEXT_SNIPPETS = ["[", "]", "=", '"', "'''", '"""', "\n[data]\n", "\n[[backbones]]\n", "\\", "#", "\0",
                 "a.b.c = 1\n", "{", "}", ",", "\n", "\r", "\ufeff", "x = 1979-05-27T07:32:00Z\n",
                 "inf", "nan", "0x", "1__0", "\n[data.root]\n"]


@st.composite
def text_mutation(draw, text: str) -> bytes:
    """Break the serialised TOML: invalid TOML text is a fuzz input too."""
    kind = draw(st.sampled_from(["truncate", "delete", "insert", "duplicate", "deep", "bytes"]))
    i = draw(st.integers(0, len(text)))
    if kind == "truncate":
        text = text[:i]
    elif kind == "delete":
        text = text[:i] + text[i + draw(st.integers(1, 20)):]
    elif kind == "insert":
        text = text[:i] + draw(st.one_of(st.sampled_from(TEXT_SNIPPETS), st.text(max_size=5))) + text[i:]
    elif kind == "duplicate":
        lines = text.splitlines(keepends=True) or [""]
        k = draw(st.integers(0, len(lines) - 1))
        text = "".join(lines[: k + 1] + lines[k:])
    elif kind == "deep":
        depth = draw(st.sampled_from([50, 1000, 5000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a=", "}")]))
        text += f"\nzz = {opener * depth}1{closer * depth}\n"
    else:
        return text.encode() + draw(st.sampled_from([b"\xff\xfe", b"\x80", b"\xc3", b"\xed\xa0\x80"])) \
            + text.encode()
    return text.encode()


@st.composite
def manifest_case(draw):
    """(doc, mutated keys, "text" or None): a valid manifest, mutated 0-3 times, maybe then broken as
    text. Mostly one mutation: the first error load meets hides any other."""
    doc = draw(valid_manifest())
    touched = [draw(mutation(doc)) for _ in range(draw(st.sampled_from([0, 1, 1, 1, 1, 2, 3])))]
    raw = draw(st.sampled_from([None, None, None, None, "text"]))
    return doc, touched, raw


def write_doc(doc: dict, env: Env, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "manifest.toml"
    path.write_text(tomli_w.dumps(_substitute(doc, env.tokens(work))), encoding="utf-8")
    return path


def assert_project_error(exc: InputError, path: Path) -> None:
    msg = str(exc)
    assert str(path) in msg, msg  # names the manifest
    assert len(msg.splitlines()) == 1 and len(msg.strip()) > len(str(path)) + 2, msg


_counter = iter(range(10**9))


def _fresh(env: Env) -> Path:
    return env.base / "work" / f"m{next(_counter)}"


def _floats(obj):
    """Every float in a loaded manifest's dataclasses."""
    if isinstance(obj, float):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _floats(getattr(obj, f.name))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _floats(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)


def _round_trips(m: manifest.Manifest, doc: dict) -> None:
    """A valid manifest's values arrive unchanged (validation neither rejects nor rewrites them)."""
    for section in SECTIONS:
        for key, value in doc.get(section, {}).items():
            got = getattr(getattr(m, section), key)
            if key not in PATH_KEYS and not dataclasses.is_dataclass(got):  # sub-tables not compared
                assert got == value, f"{section}.{key}"
    assert [b.name for b in m.backbones] == [b["name"] for b in doc["backbones"]]
    for key in ("classes", "aliases", "validation_fraction", "test_fraction", "layout"):
        if key in doc["data"]:
            assert getattr(m.data, key) == doc["data"][key], key
    assert m.data.root.is_dir()


# ------------------------------------------------------------------------------ manifest tests


def load_or_input_error(path: Path) -> manifest.Manifest | None:
    """The property: ``load`` returns a sound Manifest or raises InputError naming the manifest."""
    try:
        m = manifest.load(path)
    except InputError as exc:
        assert_project_error(exc, path)
        return None
    assert isinstance(m, manifest.Manifest)
    assert all(math.isfinite(v) for v in _floats(m)), "load accepted a NaN or inf"
    return m


@pytest.mark.slow
def test_fuzz_manifest_load(env):
    """Every generated manifest loads or raises InputError naming the manifest, in one line."""
    seen = {"valid": 0, "mutated": 0, "rejected": 0}

    @fuzz_settings(N_LOAD)
    @given(case=manifest_case(), data=st.data())
    def run(case, data):
        doc, touched, raw = case
        work = _fresh(env)
        try:
            work.mkdir(parents=True)
            text = tomli_w.dumps(_substitute(doc, env.tokens(work)))
            if raw == "text":
                raw = data.draw(text_mutation(text))
            path = work / "manifest.toml"
            path.write_bytes(raw if raw is not None else text.encode())
            m = load_or_input_error(path)
            if not touched and raw is None:
                assert m is not None, "a valid manifest was rejected"
                _round_trips(m, doc)
                seen["valid"] += 1
            else:
                seen["mutated"] += 1
            seen["rejected"] += m is None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    run()
    assert seen["valid"] + seen["mutated"] >= N_LOAD
    # The generator must reach both sides: valid manifests and ones load rejects.
    assert seen["valid"] >= N_LOAD // 10 and seen["rejected"] >= N_LOAD // 4, seen


# ------------------------------------------------------------------------ edge sweep (no luck)
# Hypothesis finds combinations; whether it tries the 300-character data.root in a given run is
# luck. The sweep below sets every key of a full manifest to every edge value of its kind, deletes
# it and adds an unknown neighbour, so each edge is tried on every run.

FULL = {
    "experiment": {"name": "fuzz", "description": "d", "seed": 7, "output_dir": "@output", "reuse": "never",
                   "keep_last": 3},
    "data": {"root": "@kaggle", "layout": "auto", "train_dir": "Training", "test_dir": "Testing",
             "classes": list(CLASSES), "aliases": {"tumour_g": "glioma"}, "validation_fraction": 0.2,
             "test_fraction": 0.2, "cache": True, "cache_max_age_days": 30, "image_memory_bytes": 2**31,
             "synthetic": {"per_class": 2, "size": 32, "seed": 1, "test_fraction": 0.25}},
    "training": {"epochs": 2, "batch_size": 8, "learning_rate": 0.001, "class_weights": "balanced",
                 "early_stopping_patience": 2, "head_units": 16, "dropout": 0.5,
                 "augmentation": {"enabled": True, "flip": True, "rotation": 0.03, "shift": 0.05, "zoom": 0.1,
                                  "brightness": 0.1, "contrast": 0.1, "augment_head": False},
                 "fine_tune_best": {"layers": 5, "learning_rate": 1e-4, "epochs": 2, "schedule": "cosine",
                                    "warmup_epochs": 0.5}},
    "backbones": [{"name": "VGG16", "weights": "none", "weights_fallback": "random", "input_size": 64,
                   "preprocessing": "auto", "gradcam_layer": "block5_conv3", "train_backbone": False,
                   "fine_tune": {"layers": 5, "learning_rate": 1e-4, "epochs": 2, "schedule": "constant",
                                 "warmup_epochs": 0.0}},
                  {"name": "mine", "file": "@keras", "preprocessing": "unit", "input_size": 32}],
    "models": [{"name": "vendor", "file": "@keras", "input_size": 32, "preprocess": "unit", "channels": "rgb",
                "layout": "nhwc", "output": "probabilities", "class_order": list(CLASSES)}],
    "integrity": {"enabled": True, "near_threshold": 12, "hash_size": 16, "fail_on_unreadable": False,
                  "group_validation_split": True, "shift": True},
    "gradcam": {"enabled": True, "images_per_class": 2, "layer": "x", "max_pointing_images": 10},
    "evaluation": {"ece_bins": 15, "temperature_scaling": True, "bootstrap_resamples": 100, "confidence": 0.95,
                   "tta_flip": False},
    "report": {"formats": ["html"], "title": "t", "author": "a", "trend_window": 5,
               "checklists": ["claim-2024", "tripod-ai"]},
    "study": {key: "stated by the authors" for key in (
        "objectives", "intended_use", "intended_users", "clinical_setting", "study_design", "data_source",
        "eligibility", "population", "acquisition", "de_identification", "reference_standard",
        "reference_standard_rationale", "annotators", "annotation_method", "annotation_disagreements", "sample_size",
        "health_inequalities", "limitations", "ethics_approval", "registration", "protocol", "funding",
        "conflicts_of_interest", "patient_involvement", "data_availability", "code_availability")},
    "gates": {"min_accuracy": 0.5, "min_macro_f1": 0.5, "min_recall": {"glioma": 0.8}, "max_macro_f1_drop": 0.1,
              "max_leakage_fraction": 0.5, "max_subgroup_gap": 0.2, "warn_only": ["min_recall"],
              "applies_to": "best"},
    "subgroups": {"by": ["site", "age_band"], "age_bands": [0, 40, 60, 200], "min_n": 20},
    "compute": {"scheduler": "local"},
    "tracking": {"mlflow": False, "experiment": "fuzz", "required": False, "register_as": "", "log_models": True,
                 "retries": 3, "timeout_s": 10.0},
}

WRONG_TYPES = [True, "1", [], {}, [{}], datetime.date(2024, 1, 1)]
EDGES = {
    int: ODD_INTS + [1.0, -0.0],
    float: ODD_FLOATS + [0, -1, 2**63 - 1, 10**30],
    bool: [0, 1, "true"],
    str: ODD_STRINGS,
    Path: ODD_PATHS,
    "literal": ODD_STRINGS + ["Auto", "HTML", "imagenet ", "none\0"],
    "list": [[], [[]], [1], ["glioma", "glioma"], [""] * 2, ["\n", "x"], list(ODD_STRINGS[:12]), "html"],
    "dict": [{"": 1}, {"": "glioma"}, {"\n": "glioma"}, {"a.b": "glioma"}, {"glioma": 1.5},
             {"glioma": math.nan}, {"glioma": {"b": 1}}, {"x" * 300: "glioma"}],
    "table": [{"unknown": 1}, {"": 1}, [{}], "table"],
}


def _around(section: str) -> dict:
    """FULL cut down to ``section`` and what other keys are checked against (a third of the TOML to parse)."""
    return copy.deepcopy({k: v for k, v in FULL.items() if k in ("data", "backbones", "gates", section)})


def edge_cases():
    """(label, doc) for FULL with one key set to an edge value, deleted, or given an unknown sibling."""
    for path, key, kind in schema():
        section = str(path[0]) if path else key
        for value in EDGES[kind] + WRONG_TYPES:
            doc = _around(section)
            _get(doc, path)[key] = value
            yield f"{path}.{key} = {value!r}"[:120], doc
        doc = _around(section)
        _get(doc, path).pop(key, None)
        yield f"{path}.{key} deleted", doc
    for path in _tables(FULL):
        for extra in ("unknown", "", "\n", "path"):
            doc = copy.deepcopy(FULL)
            _get(doc, path)[extra] = 1
            yield f"{path} + {extra!r}", doc


@pytest.mark.slow
def test_edge_sweep_manifest_load(env):
    """Every key of a full manifest at every edge value: load returns or raises InputError."""
    cases = list(edge_cases())
    work = _fresh(env)
    path = write_doc(FULL, env, work)
    assert manifest.load(path).data.synthetic is not None  # else every edge would fail for FULL's sake
    for label, doc in cases:
        path.write_text(tomli_w.dumps(_substitute(doc, env.tokens(work))), encoding="utf-8")
        try:
            load_or_input_error(path)
        except Exception as exc:  # noqa: BLE001 - name the case, not only the exception
            raise AssertionError(f"{label}: {type(exc).__name__}: {exc}") from exc
        assert len(os.listdir(work)) == 1, f"{label}: load wrote {os.listdir(work)}"  # the parser writes nothing
    assert len(cases) > 2000


DIR_NAMES = st.sampled_from(ODD_STRINGS + ["Testing", "Training/glioma_tumor", "../kaggle/Training", "/tmp"])
#: check-data reads these keys beyond load's validation; its mutations aim at them.
CHECK_DATA_KEYS = {
    ("data", "root"): ODD_PATH_VALUE,
    ("data", "layout"): st.one_of(st.sampled_from(["kaggle", "imagefolder", "auto"]), ODD_VALUE),
    ("data", "train_dir"): st.one_of(DIR_NAMES, ODD_VALUE),
    ("data", "test_dir"): st.one_of(DIR_NAMES, ODD_VALUE),
    ("data", "classes"): st.one_of(st.lists(st.sampled_from(ODD_STRINGS + list(CLASSES)), max_size=5),
                                   st.permutations(CLASSES + ("extra",)).map(list), ODD_VALUE),
    ("data", "aliases"): st.one_of(st.dictionaries(st.sampled_from(ODD_STRINGS + list(KAGGLE_FOLDERS)),
                                                   st.sampled_from(CLASSES + ("Glioma", "")), max_size=3),
                                   ODD_VALUE),
    ("data", "test_fraction"): st.one_of(ODD_NUMBER, unit_float(0.0, 0.9)),
    ("experiment", "seed"): ODD_NUMBER,
    # Not 10,000: without the bound it exhausts memory (regression test_regression_hash_size_...).
    ("integrity", "hash_size"): st.one_of(st.sampled_from([0, 1, 2, 3, 5, 64, 65, 2**31, 2**63 - 1]),
                                          ODD_VALUE),
    ("integrity", "near_threshold"): ODD_NUMBER,
    ("integrity", "fail_on_unreadable"): ODD_VALUE,
    ("data", "synthetic"): st.one_of(opt({"per_class": ODD_PER_CLASS, "size": ODD_NUMBER, "seed": ODD_NUMBER,
                                          "test_fraction": ODD_NUMBER}), ODD_VALUE),
}


#: (section, key, the dataset its edges matter on, a valid value): the keys check-data reads beyond
#: load's validation (the seed and test_fraction only split an imagefolder dataset).
CHECK_DATA_SWEEP = [
    ("data", "root", "@kaggle", "@kaggle"), ("data", "layout", "@kaggle", "kaggle"),
    ("data", "train_dir", "@kaggle", "Training"), ("data", "test_dir", "@kaggle", "Testing"),
    ("data", "classes", "@kaggle", list(CLASSES)), ("data", "classes", "@imagefolder", list(CLASSES)),
    ("data", "aliases", "@kaggle", {"tumour_g": "glioma"}), ("data", "test_fraction", "@imagefolder", 0.2),
    ("experiment", "seed", "@imagefolder", 7), ("integrity", "hash_size", "@kaggle", 8),
    ("integrity", "near_threshold", "@kaggle", 3), ("integrity", "fail_on_unreadable", "@kaggle", True),
    ("experiment", "output_dir", "@kaggle", "@output"),
]
SWEEP_EXTRAS = {"train_dir": ["Testing", "Training/glioma_tumor", "../kaggle/Training", "/tmp", "Training/"],
                "test_dir": ["Training", "Testing/.", "../kaggle/Testing", "/tmp"],
                "classes": [["glioma", "no_tumor"], list(CLASSES) + ["extra"], ["a", "b", "c"],
                            [c.upper() for c in CLASSES]],
                "aliases": [{"glioma_tumor": "no_tumor"}, {"Training": "glioma"}, {"GLIOMA_TUMOR": "glioma"}],
                "test_fraction": [0.01, 0.05, 0.1, 0.5, 0.89]}


@pytest.mark.slow
def test_edge_sweep_check_data(env):
    """check-data with each key it reads at each edge value: exit 0 with JSON or 2, one line."""
    runner = CliRunner()
    kinds = {(path, key): kind for path, key, kind in schema()}
    work = _fresh(env)
    n = 0
    for section, key, root, valid in CHECK_DATA_SWEEP:
        values = [valid] + EDGES[kinds[(section,), key]] + WRONG_TYPES + SWEEP_EXTRAS.get(key, [])
        for i, value in enumerate(values):
            doc = {"data": {"root": root}, "backbones": [{"name": "VGG16"}]}
            doc.setdefault(section, {})[key] = value
            path = write_doc(doc, env, work)
            output = None if key == "output_dir" else env.cache  # output_dir is read without --output-dir
            try:
                block = check_data_or_input_error(runner, path, output)
            except Exception as exc:  # noqa: BLE001 - name the case, not only the exception
                raise AssertionError(f"{section}.{key} = {value!r}: {type(exc).__name__}: {exc}") from exc
            # The valid value passes: what fails below is the edge, not the manifest around it.
            assert i or block is not None, f"{section}.{key} = {value!r} was refused"
            shutil.rmtree(work)
            n += 1
    assert n > 250


@st.composite
def check_data_case(draw):
    """(doc, mutated keys, whether --output-dir is given)."""
    doc = draw(valid_manifest())
    touched = []
    kind = draw(st.sampled_from(["none", "targeted", "targeted", "targeted", "targeted", "targeted", "any",
                                 "any"]))
    if kind == "targeted":
        section, key = draw(st.sampled_from(sorted(CHECK_DATA_KEYS)))
        doc.setdefault(section, {})[key] = draw(CHECK_DATA_KEYS[section, key])
        touched.append(f"{section}.{key}")
    elif kind == "any":
        touched.append(draw(mutation(doc)))
    # Without --output-dir the fingerprint cache goes to experiment.output_dir, also an odd one.
    own_output = draw(st.sampled_from([True, True, True, False]))
    if not own_output and isinstance(doc.get("experiment", {}), dict):
        doc.setdefault("experiment", {})["output_dir"] = draw(st.sampled_from(
            ["@output", "@through_file", "@file", "x" * 300, "@loop", "@dangling", "out/ü 😀"]))
        touched.append("experiment.output_dir")
    return doc, touched, own_output


def check_data_or_input_error(runner: CliRunner, path: Path, output_dir: Path | None) -> dict | None:
    """The property: `auditrun check-data` exits 0 with sound JSON or 2 with a one-line error."""
    args = ["check-data", str(path), "--quiet"] + (["--output-dir", str(output_dir)] if output_dir else [])
    result = runner.invoke(main, args, catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.stderr}")
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        err = result.stderr.strip()
        assert err.startswith("auditrun: error: ") and len(err.splitlines()) == 1, err
        return None
    block = json.loads(result.stdout)["integrity"]
    # Every image of the test datasets is fine: an option that fails them is a bug.
    assert block["n_files"] >= 4 and block["unreadable"] == [], block["unreadable"][:1]
    return block


@pytest.mark.slow
def test_fuzz_check_data(env):
    """`auditrun check-data` on generated manifests: never a traceback."""
    runner = CliRunner()
    seen = {"ok": 0, "error": 0}

    @fuzz_settings(N_CHECK_DATA)
    @given(case=check_data_case())
    def run(case):
        doc, touched, own_output = case
        work = _fresh(env)
        try:
            path = write_doc(doc, env, work)
            block = check_data_or_input_error(runner, path, env.cache if own_output else None)
            seen["error" if block is None else "ok"] += 1
            if not touched:
                assert block is not None, "check-data refused a valid manifest"
                kaggle = doc["data"]["root"] != "@imagefolder"
                assert block["n_files"] == (env.n_kaggle if kaggle else env.n_imagefolder)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    run()
    # Both outcomes must be exercised often. The error share follows the manifest's key set (the
    # strategies draw over it): 19-30 % as keys were added, so the floor is a tenth, not a quarter.
    assert seen["ok"] >= N_CHECK_DATA // 10 and seen["error"] >= N_CHECK_DATA // 10, seen


# ------------------------------------------------------------------------------- image files

MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def _texture(seed: int, size=(48, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)


@lru_cache(maxsize=None)
def seed_files() -> dict[str, bytes]:
    """Real image files of the formats and modes a dataset holds, made with PIL."""
    rgb = Image.fromarray(_texture(1))
    out = {}

    def save(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: decode_image's exif_transpose reads it
    save("jpeg", rgb, "JPEG", quality=90)
    save("jpeg_progressive", rgb, "JPEG", progressive=True)
    save("jpeg_exif", rgb, "JPEG", exif=exif.tobytes())
    save("jpeg_grey", rgb.convert("L"), "JPEG")
    save("png", rgb, "PNG")
    save("png_grey", rgb.convert("L"), "PNG")
    save("png_palette", rgb.convert("P"), "PNG")
    save("png_rgba", rgb.convert("RGBA"), "PNG")
    save("png_16bit", Image.fromarray((np.arange(48 * 40).reshape(40, 48) * 30).astype(np.uint16)), "PNG")
    save("gif", rgb.convert("P"), "GIF")
    save("bmp", rgb, "BMP")
    save("tiff", rgb, "TIFF")
    save("webp", rgb, "WEBP")
    return out


def png_with_size(width: int, height: int, idat: bytes = b"", fix_crc: bool = True) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (8-bit grey), with ``idat`` as its data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) if fix_crc else 0
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """The seed JPEG with its frame header (SOF0) rewritten to ``width`` x ``height``."""
    data = bytearray(seed_files()["jpeg"])
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"GIF89a", b"BM",
          b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 "]
# Dimensions either side of PIL's decompression-bomb limit (and its 2x hard limit).
BOMB_SIDES = [0, 1, 7, 65535, 100000, 2**31 - 1, int(math.isqrt(MAX_PIXELS)) + 1, 1 << 16]


def bit_positions(n: int) -> st.SearchStrategy[list[int]]:
    """1-8 positions in range(n). Hypothesis favours small integers, which here means the header;
    half the draws are uniform (from a drawn seed) so the body of a file gets its share."""
    uniform = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 8)).map(
        lambda t: np.random.default_rng(t[0]).integers(0, n, t[1]).tolist())
    return st.one_of(st.lists(st.integers(0, n - 1), min_size=1, max_size=8), uniform)


@st.composite
def image_file(draw):
    """(bytes, suffix, must_be_unreadable): one fuzzed file and whether no decoder may accept it."""
    kind = draw(st.sampled_from(["random", "magic", "zero", "truncate", "flip", "overwrite", "splice",
                                 "png_size", "jpeg_size", "valid"]))
    seeds = seed_files()
    name = draw(st.sampled_from(sorted(seeds)))
    src = seeds[name]
    must_fail = False
    if kind == "random":
        # No oracle: PIL also reads formats without a signature (TGA), so noise can be an image.
        data = draw(st.binary(min_size=1, max_size=2048))
    elif kind == "magic":
        data = draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=512))
    elif kind == "zero":
        data, must_fail = b"", True
    elif kind == "truncate":
        cut = draw(st.integers(0, len(src) - 1))
        data = src[:cut]
        # Cut inside the first half: no full image can be there. (The tail of a file can be trailer.)
        must_fail = cut < len(src) // 2
    elif kind == "flip":
        buf = bytearray(src)
        for pos in draw(bit_positions(len(src) * 8)):
            buf[pos // 8] ^= 1 << (pos % 8)
        data = bytes(buf)
    elif kind == "overwrite":
        at = draw(bit_positions(len(src)))[0]
        junk = draw(st.binary(min_size=1, max_size=64))
        data = src[:at] + junk + src[at + len(junk):]
    elif kind == "splice":
        other = seeds[draw(st.sampled_from(sorted(seeds)))]
        data = src[: draw(st.integers(0, 64))] + other[draw(st.integers(0, 64)):]
    elif kind == "png_size":
        w, h = draw(st.sampled_from(BOMB_SIDES)), draw(st.sampled_from(BOMB_SIDES))
        idat = draw(st.sampled_from([b"", zlib.compress(b"\0" * 64), b"garbage"]))
        fix_crc = draw(st.booleans())
        data = png_with_size(w, h, idat, fix_crc=fix_crc)
        # Refused as a bomb, for a broken header checksum or for pixel data that is not there. (Too few
        # rows in a complete zlib stream pass: PIL fills the rest with black, without complaint.)
        must_fail = w * h > MAX_PIXELS or not fix_crc or idat != zlib.compress(b"\0" * 64) or w * h == 0
    elif kind == "jpeg_size":
        w, h = draw(st.sampled_from([s for s in BOMB_SIDES if s < 65536])), draw(st.sampled_from([1, 65535]))
        data = jpeg_with_size(w, h)
        must_fail = w * h > MAX_PIXELS
    else:
        data = src
    suffix = draw(st.sampled_from(sorted(data_mod.IMAGE_SUFFIXES) + [".JPG", ".PNG", ".Jpeg"]))
    return data, suffix, must_fail


@pytest.fixture(scope="module")
def image_dir(env) -> Path:
    folder = env.base / "files" / "glioma"
    folder.mkdir(parents=True)
    return folder


def test_fuzz_image_files(image_dir):
    """Each file is either fine everywhere or listed unreadable with a reason; decoding it for
    training gives the pixels or an InputError naming it - the audit, data.readable and the decoder
    agree on which."""
    seen = {"readable": 0, "unreadable": 0}
    good = image_dir / "good.png"
    good.write_bytes(seed_files()["png"])

    @fuzz_settings(N_FILES)
    @given(case=image_file())
    def run(case):
        data, suffix, must_fail = case
        path = image_dir / f"fuzz {next(_counter)}{suffix}"
        path.write_bytes(data)
        try:
            recs = [data_mod.ImageRecord(path, "train", "glioma"), data_mod.ImageRecord(good, "test", "glioma")]
            report = audit(recs, IntegrityConfig(), workers=1)
            listed = {u.path: u.reason for u in report.unreadable}
            assert good not in listed
            ok, skipped = data_mod.readable(recs[:1], min_size=IntegrityConfig().min_image_size)
            if path in listed:
                reason = listed[path]
                assert reason.strip() and len(reason.splitlines()) == 1, reason
                assert [s["path"] for s in skipped] == [str(path)], "data.readable kept a file the audit refused"
                seen["unreadable"] += 1
            else:
                assert not must_fail, "an impossible file was listed as readable"
                assert ok and not skipped, f"data.readable refused a file the audit accepts: {skipped}"
                seen["readable"] += 1
            try:
                arr = data_mod.decode_image(path, 32)
            except InputError as exc:
                assert str(path) in str(exc) and len(str(exc).splitlines()) == 1, exc
                assert path in listed, f"the audit accepted a file training cannot decode: {exc}"
                with pytest.raises(InputError):  # what training calls
                    data_mod.ImageCache(None).load(recs[:1], 32)
            else:
                assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
                # A readable image below integrity.min_image_size decodes; the run skips it before
                # training, as listed by the audit (and by readable() with the same min_size).
                assert path not in listed or "smaller than integrity.min_image_size" in listed[path], \
                    f"training decodes a file the audit refused: {listed[path]}"
                assert np.array_equal(data_mod.ImageCache(None).load(recs[:1], 32)[0], arr)
        finally:
            path.unlink()

    run()
    assert seen["unreadable"] >= N_FILES // 4 and seen["readable"] >= 10, seen


def test_check_data_lists_each_bad_file_as_unreadable(env, tmp_path):
    """Bad files inside a class folder: check-data exits 0 and names each one with a reason."""
    root = tmp_path / "data"
    shutil.copytree(env.kaggle, root)
    folder = root / "Training" / "glioma_tumor"
    seeds = seed_files()
    bad = {
        "zero.png": b"",
        "random.jpg": bytes(np.random.default_rng(0).integers(0, 256, 700, dtype=np.uint8)),
        "truncated.jpg": seeds["jpeg"][: len(seeds["jpeg"]) // 3],
        "truncated.png": seeds["png"][: len(seeds["png"]) // 2],
        "bomb.png": png_with_size(100000, 100000),
        "bomb-header.jpg": jpeg_with_size(65535, 65535),
        "png-named.gif": png_with_size(40, 40, b"garbage"),
        "ünïcode 😀 name.png": b"\x89PNG\r\n\x1a\n",
        "newline\nin name.png": b"GIF89a",
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    # A name that is not UTF-8 (Linux allows any bytes): JSON and the summary must still print.
    (folder / os.fsdecode(b"latin-1 \xe9.png")).write_bytes(b"\x00" * 10)
    (folder / "a directory.png").mkdir()  # not a file, not an image
    # a .dcm file is DICOM to discovery (issue 17): one that is not is listed with the reader's reason
    (folder / "scan.dcm").write_bytes(seeds["png"])
    manifest_path = tmp_path / "m.toml"
    manifest_path.write_text(f'[data]\nroot = "{root}"\n[[backbones]]\nname = "VGG16"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["check-data", str(manifest_path), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    block = json.loads(result.stdout)["integrity"]
    unreadable = {Path(u["path"]).name: u["reason"] for u in block["unreadable"]}
    assert set(unreadable) == set(bad) | {os.fsdecode(b"latin-1 \xe9.png"), "scan.dcm"}
    assert all(reason.strip() and len(reason.splitlines()) == 1 for reason in unreadable.values())
    assert block["n_readable"] == env.n_kaggle and block["n_files"] == env.n_kaggle + len(bad) + 2


# ------------------------------------------------------------------------------- regressions
# Examples the fuzzer (or the edge sweep) failed on, each once a traceback or a misleading error.

MINIMAL = '[data]\nroot = "{root}"\n[[backbones]]\nname = "VGG16"\n'


def _load_error(tmp_path: Path, body: str) -> str:
    path = tmp_path / "m.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(InputError) as err:
        manifest.load(path)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    return msg


def test_regression_deeply_nested_toml_is_an_input_error(env, tmp_path):
    # tomllib raised RecursionError.
    body = MINIMAL.format(root=env.kaggle) + "zz = " + "[" * 5000 + "1" + "]" * 5000 + "\n"
    assert "nested too deeply" in _load_error(tmp_path, body)


def test_regression_odd_key_is_quoted_on_one_line(env, tmp_path):
    # The unknown key "\n" split the message over two lines; an alias key too.
    body = '"\\n" = 0\n' + MINIMAL.format(root=env.kaggle)
    assert "unknown manifest key '\"\\n\"'" in _load_error(tmp_path, body)
    body = MINIMAL.format(root=env.kaggle).replace("[[backbones]]", '[data.aliases]\n"a\\nb" = "nope"\n[[backbones]]')
    assert "data.aliases.\"a\\nb\"" in _load_error(tmp_path, body)


@pytest.mark.parametrize("root", ["dangling", "loop", "/dev/null", "file/sub", "x" * 300, "a\0b"])
def test_regression_unusable_data_root_with_synthetic(env, tmp_path, root):
    # With [data.synthetic] the phantom writer raised FileExistsError, OSError (ELOOP, ENAMETOOLONG),
    # NotADirectoryError or ValueError (NUL); without it, a 300-character name raised OSError.
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "at-all")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file").write_text("x")
    escaped = json.dumps(root)[1:-1]
    for extra in ("[data.synthetic]\nper_class = 2\nsize = 32\n", ""):
        body = MINIMAL.format(root=escaped).replace("[[backbones]]", extra + "[[backbones]]")
        assert "data.root" in (_prepare_error(tmp_path, body) if extra else _load_error(tmp_path, body))


def _prepare_error(tmp_path: Path, body: str) -> str:
    """The error of load, else of the data stage that writes [data.synthetic] (the parser writes nothing)."""
    from engine.data.synth import prepare_data_root

    path = tmp_path / "m.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(InputError) as err:
        prepare_data_root(manifest.load(path))
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    return msg


def test_regression_backbone_file_name_too_long(env, tmp_path):
    # pathlib's is_file raised OSError (ENAMETOOLONG) instead of answering False.
    body = MINIMAL.format(root=env.kaggle) + f'file = "{"x" * 300}.keras"\n'
    assert "backbones[0].file" in _load_error(tmp_path, body)


@pytest.mark.parametrize("line", ["[training]\nlearning_rate = inf", "[evaluation]\nconfidence = nan",
                                  "[training.augmentation]\nzoom = -inf"])
def test_regression_nan_and_inf_are_refused(env, tmp_path, line):
    # Accepted before: inf passes "> 0", and nothing checked confidence or augmentation at all.
    msg = _load_error(tmp_path, MINIMAL.format(root=env.kaggle) + line + "\n")
    assert "finite" in msg and line.split("\n")[1].split(" ")[0] in msg


@pytest.mark.parametrize("body, key", [("per_class = 2\nsize = 0", "data.synthetic.size"),
                                       ("per_class = 2\nsize = 100000000", "data.synthetic.size"),
                                       ("per_class = 2\nseed = -1", "data.synthetic.seed"),
                                       ("per_class = 2\ntest_fraction = 1.5", "data.synthetic.test_fraction")])
def test_regression_synthetic_values_are_checked(tmp_path, body, key):
    # A missing data.root is generated from these: size 0 raised ValueError in the phantom code,
    # a negative seed ValueError in numpy, a huge size MemoryError.
    manifest_body = MINIMAL.format(root="missing").replace("[[backbones]]", f"[data.synthetic]\n{body}\n[[backbones]]")
    assert key in _load_error(tmp_path, manifest_body)
    assert not (tmp_path / "missing").exists()


def _check_data(tmp_path: Path, body: str, *args: str):
    path = tmp_path / "m.toml"
    path.write_text(body, encoding="utf-8")
    return CliRunner().invoke(main, ["check-data", str(path), "-q", *args])


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_regression_experiment_seed_out_of_sklearn_range(env, tmp_path, seed):
    # An imagefolder split raised sklearn's InvalidParameterError (a ValueError).
    result = _check_data(tmp_path, f"[experiment]\nseed = {seed}\n" + MINIMAL.format(root=env.imagefolder),
                         "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 2 and "experiment.seed" in result.stderr


def test_regression_small_imagefolder_split(tmp_path):
    # 3 images per class and the default test_fraction (0.2): 3 test images for 4 classes made
    # train_test_split raise ValueError.
    from engine.data.synth import write_dataset

    write_dataset(tmp_path / "src", per_class=4, size=32, seed=0, test_fraction=0.25, kaggle_names=False)
    result = _check_data(tmp_path, MINIMAL.format(root=tmp_path / "src" / "Training"),
                         "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 2 and "data.test_fraction" in result.stderr, result.output


def test_regression_unwritable_cache_folder(env, tmp_path):
    # experiment.output_dir through a file: FingerprintCache.save raised NotADirectoryError.
    (tmp_path / "file").write_text("x")
    result = _check_data(tmp_path, f'[experiment]\noutput_dir = "file/sub"\n' + MINIMAL.format(root=env.kaggle))
    assert result.exit_code == 2 and "file/sub" in result.stderr and "integrity cache" in result.stderr


@pytest.mark.parametrize("hash_size", [65, 2**31])
def test_regression_hash_size_has_an_upper_bound(env, tmp_path, hash_size):
    # 2**31 listed every image as "corrupt image data (OverflowError ...)". (10,000 got the process
    # killed for memory: not tried here, a regression would take the test run down with it.)
    result = _check_data(tmp_path, f"[integrity]\nhash_size = {hash_size}\n" + MINIMAL.format(root=env.kaggle),
                         "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 2 and "integrity.hash_size" in result.stderr


@pytest.mark.parametrize("dirs", ['train_dir = "Testing"', 'test_dir = "Training"', 'test_dir = "linked"'])
def test_regression_same_folder_as_train_and_test(env, tmp_path, dirs):
    # The audit raised ValueError("record listed twice") for a file discovery listed in both splits.
    root = tmp_path / "data"
    shutil.copytree(env.kaggle, root)
    (root / "linked").symlink_to(root / "Training")
    body = MINIMAL.format(root=root).replace("[[backbones]]", f"{dirs}\n[[backbones]]")
    result = _check_data(tmp_path, body, "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 2 and "found twice" in result.stderr, result.output


def test_regression_class_folder_linked_twice(env, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(env.kaggle, root)
    (root / "Training" / "glioma").symlink_to(root / "Training" / "glioma_tumor")
    result = _check_data(tmp_path, MINIMAL.format(root=root), "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 2 and "found twice" in result.stderr, result.output


def test_regression_train_dir_name_too_long(env, tmp_path):
    # pathlib raised OSError (ENAMETOOLONG) from discovery.
    body = MINIMAL.format(root=env.kaggle).replace("[[backbones]]", f'train_dir = "{"x" * 300}"\n[[backbones]]')
    result = _check_data(tmp_path, body, "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 2 and "File name too long" in result.stderr, result.output


def test_regression_training_decoder_keeps_the_audits_pixel_limit(tmp_path, monkeypatch):
    # PIL only warns between its limit and twice it: the audit listed such a file as unreadable
    # while data.readable kept it and decode_image decoded it (an 88 KB PNG of 9500 x 9500 took
    # 600 MB). The limit is lowered here so that a 40 x 40 image stands in for it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.new("L", (40, 40)).save(path)
    rec = data_mod.ImageRecord(path, "train", "glioma")
    assert [u.path for u in audit([rec], IntegrityConfig(), workers=1).unreadable] == [path]
    assert data_mod.readable([rec])[0] == []
    with pytest.raises(InputError, match="decompression-bomb limit"):
        data_mod.decode_image(path, 32)


def test_regression_class_names_are_quoted_in_discovery_errors(env, tmp_path):
    # data.classes = ["\n", "x"]: the list of known folder names broke the message over two lines.
    body = MINIMAL.format(root=env.kaggle).replace("[[backbones]]", 'classes = ["\\n", "x"]\n[[backbones]]')
    result = _check_data(tmp_path, body, "--output-dir", str(tmp_path / "out"))
    # Class names are file names too (engine.paths): the manifest now refuses it before discovery.
    assert result.exit_code == 2 and "data.classes[0]" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("fraction, groups", [(0.15, False), (0.15, True), (0.5, True)])
def test_regression_validation_split_of_too_few_images(fraction, groups):
    # Not reachable from check-data but from `auditrun run` on a small dataset: sklearn raised
    # ValueError (2 validation images for 4 classes; 7 folds of 3 images; 2 folds of 1 image).
    per_class = 1 if fraction == 0.5 else 3
    recs = [data_mod.ImageRecord(Path(f"/x/{c}/{i}.png"), "train", c) for c in CLASSES for i in range(per_class)]
    group_ids = {r.key: i for i, r in enumerate(recs)} if groups else None
    with pytest.raises(InputError, match="data.validation_fraction"):
        data_mod.split_validation(recs, fraction, 0, group_ids)


@pytest.mark.parametrize("name", ["..", ".", "a\\u0000b"])  # TOML text: the last holds a NUL
def test_regression_experiment_name_is_a_folder_name(env, tmp_path, name):
    # Accepted by load: ".." put the experiment folder (runs, history, retention) beside output_dir,
    # and a NUL made the pipeline's mkdir raise ValueError.
    body = f'[experiment]\nname = "{name}"\n' + MINIMAL.format(root=env.kaggle)
    assert "experiment.name" in _load_error(tmp_path, body)
