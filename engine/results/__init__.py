"""results.json, the run's one record and the report's only input: a typed tree of dataclasses
(``RunResults``), its JSON Schema check, and its one reader and writer.

Every block is a ``Record`` (engine.results.record): it reads itself from the JSON object a stage
wrote and writes itself back unchanged, so the report and nightly read attributes, not ``.get``
chains. docs/results-schema.md documents the keys.
"""

from engine.results.backbone import (GALLERY_METHOD_NAMES, METHOD_LABELS, OPTIONAL_BLOCKS, BackboneResult, Epoch, Imported,
                                     Parameters, TrainingStage, WeightsInfo, as_backbone_result,
                                     gallery_method_name, method_label)
from engine.results.explain import (CascadeStep, Explanation, Faithfulness, Figure, GalleryItem, Gradcam,
                                    Localisation, LocalisationExample, PointingGame, Randomisation)
from engine.results.integrity import (CrossSplitPair, DataInfo, DuplicateGroup, ExamplePair, FileRef, Integrity,
                                      LabelConflict, NeighbouringSlices, Shift, ShiftClass, SkippedImage,
                                      WithinSplit)
from engine.results.history import (CodeVersion, HistoryBackbone, HistoryHeadline, HistoryRecord,
                                    as_history_record)
from engine.results.metrics import (Bootstrap, Calibration, ClassMetrics, Estimate, Interval, LargestGap, Metrics,
                                    ReliabilityBin, RocAuc, Subgroup, SubgroupGap, SubgroupGapEntry,
                                    SubgroupIntervals, SubgroupSide, Uncertainty, ValidationMetrics)
from engine.results.nightly import (Comparison, External, ExternalBackbone, GateCounts, GateEntry, Gates, Headline,
                                    InputsChanged, Trend, TrendBackbone, TrendChange, TrendChanges, TrendPoint,
                                    TrendRun)
from engine.results.record import Record, optional, record
from engine.results.run import (BestBackbone, ChecklistBlock, ChecklistEntry, Device, Environment, Experiment, RunInfo, RunResults, Tracking, TrainingSetup,
                                as_run_results)
from engine.results.schema import (MAX_MAGNITUDE, SCHEMA_VERSION, json_path, load_schema, number, number_problem,
                                   read_results, schema_problem, validate_results, write_results)

__all__ = [name for name in dir() if not name.startswith("_")]
