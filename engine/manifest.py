"""Experiment manifest (TOML) -> typed, validated configuration.

Every section is a dataclass; validation walks the dataclass fields, so an unknown key, a wrong
type or a value outside its allowed set is reported with its full key path (``training.epochs``)
before any training starts. Relative paths resolve against the manifest's folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from engine.errors import InputError
from engine.paths import folder_key, name_problem

#: Environment variable that overrides ``data.root`` (useful on CI or a cluster where the data
#: lives elsewhere than the manifest says).
DATA_ROOT_ENV = "AUDITRUN_DATA_ROOT"

CANONICAL_CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")

#: Folder names seen in public releases of the brain-tumour MRI data, mapped to canonical names.
DEFAULT_ALIASES: dict[str, str] = {
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "glioma_tumour": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "meningioma_tumour": "meningioma",
    "no_tumor": "no_tumor",
    "notumor": "no_tumor",
    "no_tumour": "no_tumor",
    "no": "no_tumor",
    "healthy": "no_tumor",
    "normal": "no_tumor",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
    "pituitary_tumour": "pituitary",
}


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    description: str = ""
    seed: int = 42
    #: Default "reports" is relative to the working directory; a value given in the manifest is
    #: relative to the manifest.
    output_dir: Path = Path("reports")
    #: "if-unchanged" reuses the last run's models when manifest, data and code are unchanged.
    reuse: Literal["never", "if-unchanged"] = "never"
    #: Keep the last N run directories per experiment (0 keeps all); history is always kept.
    keep_last: int = 0


@dataclass
class SyntheticConfig:
    """Generate a phantom dataset at data.root when it is absent (smoke tests, demos)."""

    per_class: int = 60
    size: int = 64
    seed: int = 0
    test_fraction: float = 0.25


@dataclass
class DataConfig:
    root: Path | None = None
    layout: Literal["auto", "kaggle", "imagefolder", "csv"] = "auto"
    train_dir: str = "Training"
    test_dir: str = "Testing"
    classes: list[str] = field(default_factory=lambda: list(CANONICAL_CLASSES))
    #: Extra folder-name -> class mappings, merged over DEFAULT_ALIASES.
    aliases: dict[str, str] = field(default_factory=dict)
    #: A CSV of image paths, labels and metadata ("csv" layout): relative to the data root (not to
    #: the manifest, so it moves with AUDITRUN_DATA_ROOT), or absolute.
    labels: str | None = None
    #: CSV role (path, label, split, patient, ...; engine.data.labels_csv.ROLES) -> column name.
    columns: dict[str, str] = field(default_factory=dict)
    validation_fraction: float = 0.15
    #: imagefolder layout (and csv without a split column): fraction of images held out as the test split.
    test_fraction: float = 0.2
    #: Cache decoded, resized images on disk under <output_dir>/.cache between runs.
    cache: bool = True
    #: Delete cached image arrays no run has used for this many days (0 keeps them forever).
    #: A nightly audit would otherwise leave one array per dataset version and input size.
    cache_max_age_days: int = 30
    #: Bytes of decoded images a run holds in RAM (engine.data.ImageCache); a split that would take
    #: it over is decoded to disk a chunk at a time and read in batches. The log says which went.
    image_memory_bytes: int = 2 * 1024**3
    synthetic: SyntheticConfig | None = None
    #: How DICOM frames and NIfTI slices become 8-bit grey (engine.data.readers.Windowing): "auto"
    #: the stored window (VOI LUT, WindowCenter/Width, NIfTI cal_min/cal_max) else the percentile
    #: window, "dicom" the stored window only, "percentile" always the percentile window.
    windowing: Literal["auto", "dicom", "percentile"] = "auto"
    window_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    #: NIfTI axial slices (and frames of a multi-frame DICOM) that become images: "all",
    #: [start, stop] (stop exclusive) or k (every k-th slice from 0).
    slices: str | int | list[int] = "all"


@dataclass
class AugmentationConfig:
    enabled: bool = False
    flip: bool = True
    rotation: float = 0.03  # fraction of a full turn (keras RandomRotation factor)
    shift: float = 0.05
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    #: Also augment while only the head trains on a frozen backbone. Off by default: without
    #: augmentation, frozen features are computed once instead of once per epoch.
    augment_head: bool = False


@dataclass
class FineTuneConfig:
    #: Number of backbone layers (counted from the top) to unfreeze; 0 or "all" style via -1.
    layers: int = 20
    #: Peak learning rate (reached after the warm-up when schedule = "cosine").
    learning_rate: float = 1e-4
    epochs: int = 3
    #: "cosine": linear warm-up from 0, then cosine decay to 0 over the remaining steps;
    #: "constant": learning_rate throughout. Adam's first steps on a converged head are
    #: full-size whatever the gradient, which knocked a 0.0004 training loss up to 1.4 in one step.
    schedule: Literal["cosine", "constant"] = "cosine"
    #: Length of the warm-up in epochs (fractions allowed); cosine schedule only.
    warmup_epochs: float = 0.25


@dataclass
class TrainingConfig:
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    class_weights: Literal["balanced", "none"] = "balanced"
    early_stopping_patience: int = 3
    head_units: int = 128
    dropout: float = 0.5
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    #: When set, the backbone that scored best on validation is also fine-tuned (as in the study).
    fine_tune_best: FineTuneConfig | None = None
    #: Bytes of backbone activations fine-tuning may cache (engine.training.activations); the layers
    #: below the unfrozen ones then run once per image instead of once per epoch. 0 turns it off.
    activation_cache_bytes: int = 4 * 1024**3
    #: "auto" (MirroredStrategy when more than one GPU is visible), "none", "mirrored" (every local
    #: device) or "multiworker" (MultiWorkerMirroredStrategy from TF_CONFIG; docs/scaling.md).
    distribute: Literal["auto", "none", "mirrored", "multiworker"] = "auto"
    #: "auto": mixed_bfloat16 / mixed_float16 on a GPU that supports it, float32 on CPU.
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"


@dataclass
class BackboneConfig:
    name: str = ""
    #: A local .keras backbone file (feature extractor without classifier). Overrides keras.applications.
    file: Path | None = None
    weights: Literal["imagenet", "none"] = "imagenet"
    #: What to do when ImageNet weights cannot be downloaded: "error" or train from "random" init.
    weights_fallback: Literal["error", "random"] = "error"
    input_size: int = 224
    #: Input scaling for a file backbone: "none" (model takes 0..255), "tf" (-1..1), "torch", "caffe", "unit" (0..1).
    preprocessing: Literal["auto", "none", "tf", "torch", "caffe", "unit"] = "auto"
    fine_tune: FineTuneConfig | None = None
    #: Grad-CAM target layer; default: the backbone's last 4-D feature map.
    gradcam_layer: str | None = None
    #: Train the backbone too in the head stage (implied when weights are random).
    train_backbone: bool = False


@dataclass
class ModelConfig:
    """An already-trained classifier to audit (``[[models]]``; engine.training.imported)."""

    name: str = ""
    #: A .keras file, a SavedModel folder or an .onnx file.
    file: Path | None = None
    #: Square input side; read from the model where its input size is fixed.
    input_size: int | None = None
    #: What the model expects of 0..255 pixels (engine.training.imported.PRESETS), or explicit
    #: ``scale``, ``offset`` (x * scale + offset), then ``mean``, ``std`` per channel.
    preprocess: Literal["none", "unit", "minus_one_one", "imagenet_caffe", "imagenet_torch"] | None = None
    scale: float | None = None
    offset: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    #: Channel order the model takes (default "rgb"; "bgr" with imagenet_caffe).
    channels: Literal["rgb", "bgr", "gray"] | None = None
    #: "auto": from the model's input shape (a channel axis of 1 or 3 first means "nchw").
    layout: Literal["auto", "nhwc", "nchw"] = "auto"
    output: Literal["probabilities", "logits"] = "probabilities"
    #: The model's output index -> class name (aliases of [data.aliases] apply).
    class_order: list[str] = field(default_factory=list)


@dataclass
class IntegritySection:
    """``[integrity]`` as written; integrity_options turns it into the stage's own validated
    engine.integrity.audit.IntegrityConfig (one name per class: the two were easy to mix up)."""

    enabled: bool = True
    #: Perceptual-hash Hamming distance at or below which two images count as near duplicates
    #: (bits of a hash_size x hash_size pHash; see engine.integrity.audit.IntegrityConfig for why 12 of 256).
    near_threshold: int = 12
    hash_size: int = 16
    fail_on_unreadable: bool = False
    #: Images narrower or shorter than this many pixels are listed as unusable and skipped.
    min_image_size: int = 32
    #: Keep near-duplicate groups on one side of the train/validation split.
    group_validation_split: bool = True
    #: Measure how far leakage-free test images lie from training images of their class (engine.integrity.shift).
    shift: bool = True


#: Cap on boxed tumour images scored for the pointing game (a seeded sample beyond it): the one
#: default of the run's explain stage and of ``auditrun evaluate``.
POINTING_MAX_IMAGES = 200
#: Cap on annotated tumour images scored for localisation (engine.explain.localise), per model and method.
LOCALISATION_IMAGES = 500


@dataclass
class GradcamConfig:
    enabled: bool = True
    images_per_class: int = 2
    layer: str | None = None
    #: Cap on annotated validation images scored for the validation pointing game (seeded sample beyond it).
    max_pointing_images: int = POINTING_MAX_IMAGES
    #: Cap on annotated tumour images scored for localisation per model and method, on the test
    #: split and in ``auditrun evaluate`` (a seeded sample beyond it, stated in the output).
    localisation_images: int = LOCALISATION_IMAGES
    #: Localisation's coverage: share of the outline among the map's top this-many percent pixels.
    coverage_top_percent: float = 20.0
    #: Localisation's IoU: the map thresholded at this fraction of its maximum (the overlays' dashed contour).
    iou_threshold: float = 0.5
    #: Explanation method(s) whose maps get the three checks of docs/explanations.md: a name
    #: registered in engine.explain.methods.METHODS or a list of them (the first is the primary one the gates read).
    method: str | list[str] = "gradcam"
    #: Radius of the tolerant pointing game, in pixels of the ORIGINAL image (Zhang et al. 2016: 15).
    tolerance_px: float = 15.0
    #: Test images the checks run on (boxed ones first); 0 turns the checks off. About 3.4 s per
    #: image and backbone for Grad-CAM on Lite0 at 224 px on 2 cores: 12 keeps two backbones < 2 min.
    check_images: int = 12
    #: Randomisation cascade steps (head, then the top blocks) and faithfulness curve steps.
    cascade_steps: int = 4
    faithfulness_steps: int = 8

    @property
    def methods(self) -> list[str]:
        """``method`` as a list, primary first."""
        return [self.method] if isinstance(self.method, str) else list(self.method)


@dataclass
class EvaluationConfig:
    ece_bins: int = 15
    temperature_scaling: bool = True
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    tta_flip: bool = False


@dataclass
class ReportConfig:
    formats: list[Literal["html", "pdf"]] = field(default_factory=lambda: ["html", "pdf"])
    title: str = ""
    author: str = "auditrun"
    trend_window: int = 10
    #: reporting checklists filled from the run (CLAIM 2024, TRIPOD+AI); [] writes none
    checklists: list[Literal["claim-2024", "tripod-ai"]] = field(default_factory=lambda: ["claim-2024"])




# --------------------------------------------------------------------------------------------
# Names the stages define. The manifest imports no stage at module level (tests/test_architecture.py):
# each registry is imported when a manifest is checked, and none of these modules loads TensorFlow.


def gate_registry():
    """engine.nightly.gates.GATES: the gate names ``[gates] warn_only`` takes."""
    from engine.nightly.gates import GATES

    return GATES


def method_registry():
    """engine.explain.methods.METHODS: the names ``[gradcam] method`` takes."""
    from engine.explain.methods import METHODS

    return METHODS


def subgroup_attributes() -> tuple[str, ...]:
    """engine.evaluation.subgroups.SUBGROUP_ATTRIBUTES: the names ``[subgroups] by`` takes."""
    from engine.evaluation.subgroups import SUBGROUP_ATTRIBUTES

    return SUBGROUP_ATTRIBUTES


@dataclass
class SubgroupsConfig:
    """Performance by subgroup of the test images (engine.evaluation.subgroups); off while ``by`` is empty.

    by: attributes to split by, from engine.evaluation.subgroups.SUBGROUP_ATTRIBUTES (site, scanner, sex,
        age_band).
    age_bands: edges of the age bands in years, e.g. [0, 40, 60, 200] -> <40, 40-59, 60+.
    min_n: groups with fewer test images are pooled into "other".
    """

    by: list[str] = field(default_factory=list)
    age_bands: list[int] = field(default_factory=lambda: list(_subgroup_defaults()[0]))
    min_n: int = field(default_factory=lambda: _subgroup_defaults()[1])


@dataclass
class ComputeConfig:
    """Where the data-parallel stages run (engine.compute): "local" (this machine's cores) or a Dask
    scheduler address such as "tcp://host:8786" (``auditrun[dask]``; ``--scheduler`` overrides)."""

    scheduler: str = "local"


@dataclass
class TrackingConfig:
    """Where the audit is logged in an experiment tracker (engine.tracking, ``auditrun[mlflow]``).

    ``mlflow``: false (no tracking), true (a local store under the output root,
    ``sqlite:///<output_root>/mlflow.db``, artefacts beside it) or a tracking URI (``http://host:5000``,
    ``databricks``, ``file:/path``); ``--tracking-uri`` overrides it."""

    mlflow: bool | str = False
    #: The MLflow experiment; empty: the manifest's ``experiment.name``.
    experiment: str = ""
    #: An unreachable tracker stops the audit (exit 2) before training, instead of one warning.
    required: bool = False
    #: Register the best backbone's logged model under this name in the model registry.
    register_as: str = ""
    #: Log each trained model with MLflow's Keras flavour (an imported model's file as an artefact).
    log_models: bool = True
    #: Retries of a refused or failed call, with exponential back-off, and each request's timeout.
    retries: int = 3
    timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.mlflow is not False


@dataclass
class Manifest:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    backbones: list[BackboneConfig] = field(default_factory=list)
    models: list[ModelConfig] = field(default_factory=list)
    integrity: IntegritySection = field(default_factory=IntegritySection)
    gradcam: GradcamConfig = field(default_factory=GradcamConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    study: StudyConfig = field(default_factory=lambda: _stage_types()["StudyConfig"]())  # engine.report.study
    gates: GatesConfig = field(default_factory=lambda: _stage_types()["GatesConfig"]())  # engine.nightly.gates
    subgroups: SubgroupsConfig = field(default_factory=SubgroupsConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    #: Where the manifest was read from (not a TOML key).
    path: Path | None = None
    text: str = ""


# --------------------------------------------------------------------------------------------
# Generic dataclass validation


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(prefix: str, key: str) -> str:
    """``prefix.key`` as TOML writes it. Any other key (a newline, a dot, nothing) is quoted and
    escaped: the path stays unambiguous and the message naming it stays on one line."""
    shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{prefix}.{shown}" if prefix else shown


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {Path: "path string", bool: "true/false", int: "integer", float: "number", str: "string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        errors = []
        for arg in args:
            try:
                return _convert(value, arg, key, base)
            except InputError as exc:
                errors.append(exc)
        if len(args) > 1:  # "must be a string", when an integer would do too, would mislead
            raise InputError(f"manifest key '{key}' must be a {_type_name(tp)}, got {value!r}")
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise InputError(
                f"manifest key '{key}': {value!r} is not allowed; use one of {', '.join(map(repr, allowed))}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"manifest key '{key}' must be a {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", base) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"manifest key '{key}' must be a table, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, _dotted(key, str(k)), base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"manifest key '{key}' must be a table, got {value!r}")
        return _build(tp, value, key, base)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise InputError(f"manifest key '{key}' must be a path string, got {value!r}")
        if "\0" in value:  # no file system takes it; os calls would raise ValueError later
            raise InputError(f"manifest key '{key}' must not contain a NUL character, got {value!r}")
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"manifest key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"manifest key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"manifest key '{key}' must be a number, got {value!r}")
        # TOML has nan and inf; no rate, fraction or threshold here means anything by them, and
        # NaN passes no range check by failing every comparison the wrong way.
        if not math.isfinite(value):
            raise InputError(f"manifest key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"manifest key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported manifest type {tp!r} for {key}")  # programming error


def _subgroup_defaults() -> tuple[tuple[int, ...], int]:
    """engine.evaluation.subgroups' default age-band edges and smallest group (the stage owns them)."""
    from engine.evaluation.subgroups import DEFAULT_AGE_BANDS, DEFAULT_MIN_N

    return DEFAULT_AGE_BANDS, DEFAULT_MIN_N


def _stage_types() -> dict[str, type]:
    """Sections whose schema their stage owns, so a new gate's threshold is one module's change
    (engine.nightly.gates). Imported here, not at the top, so the gates may import the manifest's
    names and no cycle forms."""
    from engine.nightly.gates import GatesConfig
    from engine.report.study import StudyConfig

    return {"GatesConfig": GatesConfig, "StudyConfig": StudyConfig}


def type_hints(cls: type) -> dict[str, Any]:
    """The field types of a manifest section (a stage-owned section's class resolved too)."""
    return typing.get_type_hints(cls, localns=_stage_types())


def _build(cls: type, table: dict, prefix: str, base: Path):
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("path", "text")]
    kwargs = {}
    for key, value in table.items():
        full = _dotted(prefix, key)
        if key not in names:
            raise InputError(
                f"unknown manifest key '{full}'; allowed keys{' in [' + prefix + ']' if prefix else ''}: "
                + ", ".join(names)
            )
        kwargs[key] = _convert(value, hints[key], full, base)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------


def _need(cond: bool, key: str, what: str) -> None:
    if not cond:
        raise InputError(f"manifest key '{key}' {what}")


def _check_ranges(m: Manifest, finished_run: bool = False) -> None:
    """Values the types allow but the engine cannot use, each named by its key. A finished run's
    settings skip what the run's own models need (engine.manifest.run_settings)."""
    _check_numbers(m)
    _check_synthetic(m.data.synthetic)
    _check_names(m)
    _check_fine_tunes(m)
    if not finished_run:
        _need(bool(m.backbones or m.models), "backbones",
              "must list at least one [[backbones]] entry with a name (or [[models]] to audit)")
        _check_backbones(m.backbones)
        _check_models(m)
    _check_subgroups(m.subgroups)
    _check_labels(m.data)
    _check_gradcam(m.gradcam)
    _check_tracking(m.tracking)
    _need(len(set(m.report.checklists)) == len(m.report.checklists), "report.checklists",
          "must not repeat a checklist")


def _check_gradcam(g: GradcamConfig) -> None:
    methods, methods_known = g.methods, method_registry()
    _need(bool(methods), "gradcam.method", "must name at least one method")
    for i, name in enumerate(methods):
        key = "gradcam.method" if isinstance(g.method, str) else f"gradcam.method[{i}]"
        _need(name in methods_known, key,
              f"{name!r} is not an explanation method; use one of {', '.join(map(repr, methods_known))}")
    _need(len(set(methods)) == len(methods), "gradcam.method", "must not repeat a method")
    _need(g.tolerance_px >= 0, "gradcam.tolerance_px", "must be >= 0")
    _need(g.check_images >= 0, "gradcam.check_images", "must be >= 0")
    _need(g.localisation_images >= 1, "gradcam.localisation_images", "must be >= 1")
    _need(0 < g.coverage_top_percent <= 100, "gradcam.coverage_top_percent", "must be in (0, 100]")
    _need(0 < g.iou_threshold < 1, "gradcam.iou_threshold", "must be in (0, 1)")
    _need(g.cascade_steps >= 1, "gradcam.cascade_steps", "must be at least 1")
    _need(g.faithfulness_steps >= 2, "gradcam.faithfulness_steps", "must be at least 2")


def _check_tracking(t: TrackingConfig) -> None:
    if isinstance(t.mlflow, str):
        _need(bool(t.mlflow.strip()), "tracking.mlflow", "must be true, false or a tracking URI")
    _need(0 <= t.retries <= 10, "tracking.retries", "must be between 0 and 10")
    _need(0 < t.timeout_s <= 600, "tracking.timeout_s", "must be in (0, 600] seconds")
    _need(not t.required or t.enabled, "tracking.required", "needs tracking.mlflow = true or a tracking URI")
    _need(not t.register_as or t.enabled, "tracking.register_as", "needs tracking.mlflow = true or a tracking URI")
    _need(t.register_as == t.register_as.strip() and "\n" not in t.register_as, "tracking.register_as",
          "must be a model name without surrounding spaces or newlines")


def _check_numbers(m: Manifest) -> None:
    need = _need
    need(0.0 < m.data.validation_fraction < 0.9, "data.validation_fraction", "must be between 0 and 0.9")
    need(0.0 < m.data.test_fraction < 0.9, "data.test_fraction", "must be between 0 and 0.9")
    need(m.training.epochs >= 1, "training.epochs", "must be at least 1")
    need(m.training.batch_size >= 1, "training.batch_size", "must be at least 1")
    need(m.training.learning_rate > 0, "training.learning_rate", "must be positive")
    need(0.0 <= m.training.dropout < 1.0, "training.dropout", "must be in [0, 1)")
    need(m.training.early_stopping_patience >= 0, "training.early_stopping_patience", "must be >= 0")
    need(m.training.activation_cache_bytes >= 0, "training.activation_cache_bytes", "must be >= 0 (0 turns it off)")
    integrity_options(m.integrity)  # raises InputError naming integrity.* keys
    need(m.evaluation.bootstrap_resamples >= 0, "evaluation.bootstrap_resamples", "must be >= 0")
    need(m.gradcam.images_per_class >= 0, "gradcam.images_per_class", "must be >= 0")
    need(m.experiment.keep_last >= 0, "experiment.keep_last", "must be >= 0")
    # sklearn's random_state and numpy's legacy seeding (keras.utils.set_random_seed) take 32 bits.
    need(0 <= m.experiment.seed < 2**32, "experiment.seed", f"must be in [0, {2**32 - 1}]")
    need(m.data.cache_max_age_days >= 0, "data.cache_max_age_days", "must be >= 0")
    need(m.data.image_memory_bytes >= 0, "data.image_memory_bytes", "must be >= 0 (0 reads every split from disk)")
    windowing_options(m.data)  # InputError naming data.windowing / data.window_percentiles
    from engine.compute import check_address

    check_address(m.compute.scheduler)  # InputError naming compute.scheduler
    slice_selection(m.data)  # InputError naming data.slices


def _check_synthetic(syn: SyntheticConfig | None) -> None:
    if syn is None:
        return
    # The limits of `auditrun synth-data`; above 2048 px a phantom's float32 work arrays run to GBs.
    _need(syn.per_class >= 2, "data.synthetic.per_class", "must be at least 2")
    _need(32 <= syn.size <= 2048, "data.synthetic.size", "must be between 32 and 2048 pixels")
    _need(syn.seed >= 0, "data.synthetic.seed", "must be >= 0")
    _need(0.0 < syn.test_fraction < 1.0, "data.synthetic.test_fraction", "must be between 0 and 1")


def _check_names(m: Manifest) -> None:
    # Names that become folder or file names: one checked path component each (engine.paths).
    for key, name in [("experiment.name", m.experiment.name)] + [
            (f"data.classes[{i}]", c) for i, c in enumerate(m.data.classes)] + [
            (f"backbones[{i}].name", b.name) for i, b in enumerate(m.backbones) if b.name]:
        problem = name_problem(name)
        _need(problem is None, key, f"{problem}, got {name!r}")
    classes = m.data.classes
    _need(len(classes) >= 2, "data.classes", "must list at least two classes")
    _need(len(set(classes)) == len(classes), "data.classes", "must not repeat a class")
    for alias, target in m.data.aliases.items():
        _need(target in classes, _dotted("data.aliases", alias),
              f"maps to {target!r}, which is not in data.classes {classes}")
    for cls in m.gates.min_recall:
        _need(cls in classes, _dotted("gates.min_recall", cls), f"is not a class; classes: {classes}")


def _check_labels(data: DataConfig) -> None:
    from engine.data.labels_csv import ROLES

    _need(data.labels != "", "data.labels", "must name the labels CSV, got an empty string")
    _need("\0" not in (data.labels or ""), "data.labels", "must not contain a NUL character")
    if data.labels is not None:
        _need(data.layout in ("auto", "csv"), "data.layout",
              f"is {data.layout!r}, but data.labels takes the labels from a CSV; use \"csv\" or \"auto\"")
    else:
        _need(data.layout != "csv", "data.layout", "is \"csv\": set data.labels to the CSV of images and labels")
        _need(not data.columns, "data.columns", "maps CSV columns, which needs data.labels")
    for role, column in data.columns.items():
        _need(role in ROLES, _dotted("data.columns", role), f"is not a column role; use one of {', '.join(ROLES)}")
        _need(bool(column.strip()), _dotted("data.columns", role), "must name a column, got an empty string")


def _check_subgroups(sub: SubgroupsConfig) -> None:
    from engine.evaluation.subgroups import age_bands_problem

    attributes = subgroup_attributes()
    for i, name in enumerate(sub.by):
        _need(name in attributes, f"subgroups.by[{i}]",
              f"is {name!r}, not a subgroup attribute; use one of {', '.join(attributes)}")
    _need(len(set(sub.by)) == len(sub.by), "subgroups.by", "must not repeat an attribute")
    problem = age_bands_problem(sub.age_bands)
    _need(problem is None, "subgroups.age_bands", f"{problem}")
    _need(sub.min_n >= 1, "subgroups.min_n", "must be at least 1")


def _check_fine_tunes(m: Manifest) -> None:
    fine_tunes = [("training.fine_tune_best", m.training.fine_tune_best)] + [
        (f"backbones[{i}].fine_tune", b.fine_tune) for i, b in enumerate(m.backbones)]
    for key, ft in fine_tunes:
        if ft is None:
            continue
        _need(ft.epochs >= 1, f"{key}.epochs", "must be at least 1")
        _need(ft.learning_rate > 0, f"{key}.learning_rate", "must be positive")
        _need(0 <= ft.warmup_epochs < ft.epochs, f"{key}.warmup_epochs", "must be >= 0 and below epochs")


def _check_models(m: Manifest) -> None:
    names = {b.name for b in m.backbones} | {f"{b.name}_ft" for b in m.backbones}
    for i, cfg in enumerate(m.models):
        key = f"models[{i}]"
        _need(bool(cfg.name), f"{key}.name", "is required")
        problem = name_problem(cfg.name)
        _need(problem is None, f"{key}.name", f"{problem}, got {cfg.name!r}")
        _need(cfg.name not in names, f"{key}.name", f"repeats {cfg.name!r}; backbone and model names must be unique")
        names.add(cfg.name)
        _need(cfg.file is not None, f"{key}.file", "is required: a .keras file, a SavedModel folder or an .onnx file")
        _need(_is_file(cfg.file) or _is_dir(cfg.file), f"{key}.file",
              f"points to {str(cfg.file)!r}, which does not exist")
        _need(cfg.input_size is None or cfg.input_size >= 8, f"{key}.input_size", "must be at least 8")
        _need(bool(cfg.class_order), f"{key}.class_order",
              "is required: the class name of each model output, in output order")
        explicit = [k for k in ("scale", "offset", "mean", "std") if getattr(cfg, k) is not None]
        _need(cfg.preprocess is not None or bool(explicit), f"{key}.preprocess",
              "is required (none, unit, minus_one_one, imagenet_caffe, imagenet_torch) unless scale/offset/"
              "mean/std say how the model scales 0..255 pixels")
        _need(cfg.preprocess is None or not explicit, f"{key}.preprocess",
              f"and {', '.join(explicit)} both set the scaling; keep one")
        for k in ("mean", "std"):
            v = getattr(cfg, k)
            _need(v is None or len(v) in (1, 3), f"{key}.{k}", "must hold 1 or 3 numbers (one per channel)")
        _need(not cfg.std or all(s > 0 for s in cfg.std), f"{key}.std", "must be positive")


def _check_backbones(backbones: list[BackboneConfig]) -> None:
    seen = set()
    for i, b in enumerate(backbones):
        key = f"backbones[{i}]"
        _need(bool(b.name), f"{key}.name", "is required")
        _need(b.name not in seen, f"{key}.name", f"repeats {b.name!r}; backbone names must be unique")
        seen.add(b.name)
        _need(b.input_size >= 32, f"{key}.input_size", "must be at least 32")
        if b.file is not None:
            _need(_is_file(b.file), f"{key}.file", f"points to {str(b.file)!r}, which does not exist")
            continue
        from engine.training.backbones import REGISTRY  # late import: keeps manifest free of TensorFlow

        _need(b.name in REGISTRY, f"{key}.name",
              f"{b.name!r} is not a known backbone; use one of {', '.join(sorted(REGISTRY))}, "
              "or give any name with file = a local .keras backbone")
        spec = REGISTRY[b.name]
        _need(b.input_size >= spec.min_size, f"{key}.input_size", f"must be at least {spec.min_size} for {b.name}")
        _need(b.preprocessing == "auto", f"{key}.preprocessing",
              f"is fixed by keras.applications for {b.name} ({spec.preprocessing}); remove the key")


def windowing_options(data: DataConfig | Mapping[str, Any]):
    """``engine.data.readers.Windowing`` from ``[data]`` (a ``DataConfig`` or the raw TOML table of a
    run's manifest copy); InputError naming ``data.windowing`` or ``data.window_percentiles``."""
    from engine.data.readers import WINDOW_MODES, Windowing

    get = data.get if isinstance(data, Mapping) else (lambda key, default: getattr(data, key, default))
    mode, percentiles = get("windowing", "auto"), get("window_percentiles", [0.5, 99.5])
    if mode not in WINDOW_MODES:
        raise InputError(f"manifest key 'data.windowing': {mode!r} is not allowed; use one of "
                         f"{', '.join(map(repr, WINDOW_MODES))}")
    if (not isinstance(percentiles, (list, tuple)) or len(percentiles) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in percentiles)):
        raise InputError(f"manifest key 'data.window_percentiles' must be two numbers [low, high], got {percentiles!r}")
    try:
        return Windowing(mode, tuple(percentiles))
    except InputError:
        raise InputError(f"manifest key 'data.window_percentiles' must satisfy 0 <= low < high <= 100, "
                         f"got {list(percentiles)!r}") from None


def slice_selection(data: DataConfig | Mapping[str, Any]):
    """``engine.data.readers.SliceSelection`` from ``[data] slices`` (``DataConfig`` or raw table);
    InputError naming ``data.slices``."""
    from engine.data.readers import SliceSelection

    value = data.get("slices", "all") if isinstance(data, Mapping) else data.slices
    try:
        return SliceSelection.parse(value)
    except InputError as exc:
        raise InputError(f"manifest key 'data.slices': {exc}; e.g. \"all\", [10, 60] (slices 10 to 59) or 2 "
                         "(every second slice)") from None


def integrity_options(cfg: IntegritySection):
    """The integrity stage's own (validated) options from the manifest section."""
    from engine.integrity.audit import IntegrityConfig as Options

    return Options(enabled=cfg.enabled, near_threshold=cfg.near_threshold, hash_size=cfg.hash_size,
                   fail_on_unreadable=cfg.fail_on_unreadable, min_image_size=cfg.min_image_size)


def _is_dir(path: Path) -> bool:
    # pathlib answers False for most reasons a path is unusable but raises for a name too long.
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def data_root_source() -> str:
    """What set the data root, as messages name it: the environment variable or the manifest key."""
    return DATA_ROOT_ENV if os.environ.get(DATA_ROOT_ENV) else "data.root"


def synthetic_root(m: Manifest) -> Path | None:
    """Where ``[data.synthetic]`` is to write its phantoms before the data is read: ``data.root`` when
    it is missing; None when there is nothing to write. Never the path of ``$AUDITRUN_DATA_ROOT``,
    which must hold real data. The writing is the data stage's (engine.data.synth.prepare_data_root):
    parsing a manifest writes nothing."""
    root = m.data.root
    if m.data.synthetic is None or os.environ.get(DATA_ROOT_ENV) or root is None or _is_dir(root):
        return None
    return root


def manifest_error(m: Manifest, message: str) -> InputError:
    """``message`` as ``load`` words an error of the manifest file: prefixed with its path."""
    return InputError(f"{m.path}: {message}" if m.path is not None else message)


def resolve_data_root(m: Manifest) -> Path:
    """The data root: ``$AUDITRUN_DATA_ROOT`` wins over ``data.root``; it must exist."""
    env = os.environ.get(DATA_ROOT_ENV)
    root = Path(env) if env else m.data.root
    if root is None:
        raise InputError(
            f"manifest key 'data.root' is required (or set {DATA_ROOT_ENV}); it names the dataset folder"
        )
    if not _is_dir(root):
        source = f"environment variable {DATA_ROOT_ENV}" if env else "manifest key 'data.root'"
        if _is_file(root):
            raise InputError(f"{source} points to {str(root)!r}, which is a file; the data root is the folder "
                             "that holds the images (Training/ and Testing/, or one folder per class)")
        raise InputError(
            f"{source} points to {str(root)!r}, which does not exist. Provide the dataset: put it there, "
            f"set {DATA_ROOT_ENV}=/path/to/dataset, or download it with "
            "`auditrun fetch-data DEST` (needs internet and kagglehub; see README)."
        )
    return root.resolve()


def loads(text: str, *, base: Path, path: Path | None = None, check_data: bool = True) -> Manifest:
    """Parse and validate manifest text. Raises InputError naming the offending key.

    Writes nothing. ``check_data``: the data root must exist, unless ``[data.synthetic]`` is to
    generate it (``synthetic_root``); the caller then runs engine.data.synth.prepare_data_root.
    """
    where = str(path) if path else "manifest"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively, with no depth limit of its own.
        raise InputError(f"{where} is not valid TOML: arrays or inline tables nested too deeply") from None
    m = _build(Manifest, raw, "", base)
    m.path, m.text = path, text
    _check_ranges(m)
    # A root that [data.synthetic] is to generate is checked once it is written (prepare_data_root).
    if check_data and synthetic_root(m) is None:
        m.data.root = resolve_data_root(m)
    return m


def run_settings(run_dir: Path) -> Manifest:
    """The settings a finished run used, from its copy ``RUN_DIR/manifest.toml``: what ``auditrun
    evaluate`` applies to other images (aliases, image size, windowing, TTA, the explanation checks).

    The copy need not list ``[[backbones]]`` or ``[[models]]`` (the run's results.json names its
    models, and their files need not be where the manifest said); unset keys take their defaults,
    and a copy that is missing or is not TOML gives every default. A value the manifest would
    refuse is an InputError naming its key, as it was when the run started.
    """
    run_dir = Path(run_dir)
    try:
        text = (run_dir / "manifest.toml").read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError):
        return Manifest()
    m = _build(Manifest, raw, "", run_dir)
    m.path, m.text = run_dir / "manifest.toml", text
    _check_ranges(m, finished_run=True)
    return m


def load(path: Path | str, *, check_data: bool = True) -> Manifest:
    path = Path(path)
    if not _is_file(path):
        raise InputError(f"manifest file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest {str(path)!r}: {exc}") from None
    try:
        return loads(text, base=path.resolve().parent, path=path, check_data=check_data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def class_aliases(m: Manifest) -> dict[str, str]:
    """Folder name (lower-cased) -> canonical class, restricted to the manifest's classes."""
    return folder_aliases(m.data.classes, m.data.aliases)


def folder_aliases(classes: Sequence[str], extra: Mapping[str, str]) -> dict[str, str]:
    """Folder name (lower-cased) -> canonical class: the ``DEFAULT_ALIASES`` of ``classes``, each
    class's own name, then ``extra`` (``[data.aliases]``), later entries winning."""
    mapping = {k: v for k, v in DEFAULT_ALIASES.items() if v in classes}
    mapping.update({folder_key(c): c for c in classes})
    mapping.update({folder_key(k): v for k, v in extra.items()})
    return mapping

