"""Typed explanation blocks of a backbone entry: the Grad-CAM gallery (``gradcam``) and the
explanation checks per method (``explanations``, docs/explanations.md)."""

from __future__ import annotations

from engine.results.record import Record, items, keyed, record


@record
class GalleryItem(Record):
    image: str | None = None
    true_class: str | None = None
    predicted_class: str | None = None
    explained_class: str | None = None
    probability: float | None = None
    correct: bool | None = None
    peak: list[float] | None = None
    top20_area_fraction: float | None = None
    peak_in_box: bool | None = None
    box_area_fraction: float | None = None
    #: {"original" | "heatmap" | "overlay": path relative to the run directory}
    files: dict[str, str] = items(dict)

    def file(self, kind: str) -> str | None:
        return self.files.get(kind) if isinstance(self.files, dict) else None


@record
class PointingGame(Record):
    """The gallery's pointing game (engine.explain.gradcam.pointing_game), overall and per class."""

    hits: int | None = None
    total: int | None = None
    rate: float | None = None
    chance_rate: float | None = None
    explained_class: str | None = None
    per_class: dict[str, "PointingGame"] = items(dict)


@record
class Gradcam(Record):
    """The gallery block (engine.explain.gallery.explain_backbone), or ``{"error", "method"}``."""

    layer: str | None = None
    method: str | None = None
    error: str | None = None
    images_per_class: int | None = None
    items: list[GalleryItem] = items()
    pointing_game: PointingGame | None = None
    #: the same game on boxed validation images, to tune Grad-CAM settings without the test split
    pointing_game_validation: PointingGame | None = None


@record
class LocalisationExample(Record):
    image: str | None = None
    cls: str | None = keyed("class")
    rank: str | None = None
    hit: bool | None = None
    tolerant_hit: bool | None = None
    energy: float | None = None
    coverage: float | None = None
    iou: float | None = None


@record
class Localisation(Record):
    """Localisation against the tumour outlines (engine.explain.localisation.summarise): strict and
    tolerant pointing games, energy, coverage and IoU with intervals and chance values. A backbone's
    ``localisation`` entries add the method, the sample and the best/worst figure
    (engine.explain.localise); runs before issue 30 carried the first scores only, in
    ``explanations[].pointing_game``."""

    method: str | None = None
    error: str | None = None
    layer: str | None = None
    explained_class: str | None = None
    n_annotated: int | None = None
    n_images: int | None = None
    sample_limit: int | None = None
    sampled: bool | None = None
    annotation_kinds: dict[str, int] = items(dict)
    coverage_top_percent: float | None = None
    iou_threshold: float | None = None
    coverage: float | None = None
    iou: float | None = None
    coverage_ci: list[float | None] | None = None
    iou_ci: list[float | None] | None = None
    chance: dict[str, dict[str, float | None]] = items(dict)
    beats_centre: dict[str, bool] | None = None
    per_class: dict[str, dict] = items(dict)
    examples: list[LocalisationExample] = items()
    figure: "Figure | None" = None
    seconds: dict[str, float | None] = items(dict)
    rate: float | None = None
    hits: int | None = None
    total: int | None = None
    tolerance_px: float | None = None
    tolerant_rate: float | None = None
    tolerant_hits: int | None = None
    energy: float | None = None
    chance_rate: float | None = None
    tolerant_chance_rate: float | None = None
    rate_ci: list[float | None] | None = None
    tolerant_rate_ci: list[float | None] | None = None
    energy_ci: list[float | None] | None = None
    beats_chance: dict[str, bool] | None = None

    @property
    def rate_beats_chance(self) -> bool | None:
        """The explain stage's verdict on the hit rate against chance; None where it made none."""
        return self.beats_chance.get("rate") if isinstance(self.beats_chance, dict) else None


@record
class CascadeStep(Record):
    name: str | None = None
    layers: list[str] = items()
    spearman_median: float | None = None
    ssim_median: float | None = None
    blank_fraction: float | None = None


@record
class Randomisation(Record):
    """The model-randomisation test (Adebayo et al. 2018, engine.explain.randomisation)."""

    spearman_median: float | None = None
    spearman_ci: list[float | None] | None = None
    ssim_median: float | None = None
    ssim_ci: list[float | None] | None = None
    passed: bool | None = None
    threshold: float | None = None
    steps: list[CascadeStep] = items()

    #: the threshold of engine.explain.randomisation, assumed where results.json does not record one
    DEFAULT_THRESHOLD = 0.5

    @property
    def pass_threshold(self) -> float | None:
        if self.threshold is None and "threshold" in self._absent:
            return self.DEFAULT_THRESHOLD
        return self.threshold


@record
class Faithfulness(Record):
    """Deletion and insertion curves against random and centre baselines (engine.explain.faithfulness)."""

    deletion_auc: float | None = None
    deletion_auc_ci: list[float | None] | None = None
    insertion_auc: float | None = None
    insertion_auc_ci: list[float | None] | None = None
    random_deletion_auc: float | None = None
    random_deletion_auc_ci: list[float | None] | None = None
    random_insertion_auc: float | None = None
    random_insertion_auc_ci: list[float | None] | None = None
    centre_deletion_auc: float | None = None
    centre_deletion_auc_ci: list[float | None] | None = None
    centre_insertion_auc: float | None = None
    centre_insertion_auc_ci: list[float | None] | None = None
    beats: dict[str, bool] = items(dict)
    beats_baselines: bool | None = None
    steps: int | None = None
    baseline: str | None = None
    n_images: int | None = None

    def beat(self, baseline: str) -> bool:
        """Whether the map beat ``baseline`` (``random_deletion``, ``centre_insertion``, ...)."""
        return bool(self.beats.get(baseline)) if isinstance(self.beats, dict) else False


@record
class Figure(Record):
    path: str | None = None
    alt: str | None = None
    caption: str | None = None


@record
class Explanation(Record):
    """One ``[gradcam] method``'s checks (engine.explain.reliability), or ``{"method", "error"}``."""

    method: str | None = None
    layer: str | None = None
    n_images: int | None = None
    error: str | None = None
    pointing_game: Localisation | None = None
    randomisation: Randomisation | None = None
    faithfulness: Faithfulness | None = None
    seconds: dict[str, float | None] = items(dict)
    figure: Figure | None = None
