"""Where training runs: devices, tf.distribute strategy and numeric precision.

``[training] distribute``: "auto" mirrors across GPUs when more than one is visible, "mirrored"
across every local device (GPUs, else the logical CPUs TensorFlow was given), "multiworker"
across machines from ``TF_CONFIG`` (docs/scaling.md). ``[training] precision``: "auto" is
mixed precision on a GPU that computes it natively and float32 elsewhere; the classifier's
softmax stays float32 either way (engine.training.backbones.build_classifier).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from engine.errors import InputError


@dataclass
class Setup:
    """What a run trains on, as the log and results.json's ``environment.devices`` say it."""

    devices: list[dict] = field(default_factory=list)  # {"type", "name", "count"}
    distribute: str = "none"  # the strategy used: none | mirrored | multiworker
    replicas: int = 1
    precision: str = "float32"
    chief: bool = True
    strategy: object | None = None  # tf.distribute.Strategy, None for the default

    def scope(self):
        import contextlib

        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def to_dict(self) -> dict:
        return {"devices": self.devices, "distribute": self.distribute, "replicas": self.replicas,
                "precision": self.precision}

    def describe(self) -> str:
        gpus = [d for d in self.devices if d["type"] == "GPU"]
        if gpus:
            n = sum(d["count"] for d in gpus)
            where = f"{n} GPU{'s' if n > 1 else ''} ({', '.join(d['name'] for d in gpus)})"
        else:
            where = f"CPU ({self.devices[0]['threads']} threads)" if self.devices else "CPU"
        extra = [] if self.distribute == "none" else [f"{self.distribute}, {self.replicas} replicas"]
        extra += [] if self.precision == "float32" else [self.precision]
        return f"training on {where}" + (f" [{'; '.join(extra)}]" if extra else "")


def local_devices() -> list[dict]:
    """GPUs by name and count, else the CPU with the threads TensorFlow may use."""
    import tensorflow as tf

    names: dict[str, int] = {}
    for gpu in tf.config.list_physical_devices("GPU"):
        name = tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
        names[name] = names.get(name, 0) + 1
    if names:
        return [{"type": "GPU", "name": n, "count": c} for n, c in names.items()]
    threads = tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))
    return [{"type": "CPU", "name": _cpu_name(), "count": len(tf.config.list_logical_devices("CPU")),
             "threads": threads}]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def is_chief(tf_config: str | None = None) -> bool:
    """True unless TF_CONFIG names this process a non-chief task (worker 0 is chief when none is)."""
    raw = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    if not raw:
        return True
    try:
        conf = json.loads(raw)
        task, cluster = conf.get("task", {}), conf.get("cluster", {})
    except (ValueError, AttributeError):
        raise InputError("TF_CONFIG is not valid JSON with 'cluster' and 'task' (docs/scaling.md)") from None
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


def make_strategy(mode: str):
    """(strategy or None, name of what is used) for ``training.distribute``."""
    import tensorflow as tf

    if mode == "multiworker":  # first: it must exist before TensorFlow initialises its devices
        if not os.environ.get("TF_CONFIG"):
            raise InputError('training.distribute = "multiworker" needs the TF_CONFIG environment variable '
                             "(cluster and task; docs/scaling.md)")
        return tf.distribute.MultiWorkerMirroredStrategy(), "multiworker"
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices), "mirrored"
    return None, "none"


def precision_policy(mode: str, devices: list[dict]) -> str:
    """The Keras dtype policy for ``training.precision``."""
    if mode != "auto":
        return mode
    import tensorflow as tf

    caps = [tf.config.experimental.get_device_details(g).get("compute_capability")
            for g in tf.config.list_physical_devices("GPU")]
    caps = [c for c in caps if c]
    if not caps:
        return "float32"
    low = min(caps)
    return "mixed_bfloat16" if low >= (8, 0) else "mixed_float16" if low >= (7, 0) else "float32"


def setup(training_cfg) -> Setup:
    """Choose strategy and precision for a run; sets Keras' global dtype policy."""
    import keras

    strategy, used = make_strategy(training_cfg.distribute)
    devices = local_devices()
    precision = precision_policy(training_cfg.precision, devices)
    keras.mixed_precision.set_global_policy(precision)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    return Setup(devices, used, replicas, precision, is_chief(), strategy)
