"""The MLflow side of tracking: where the store is, and every call to it under one fault policy.

The tracker never costs the audit. A call that fails is retried with exponential back-off (bounded
by ``[tracking] retries``, each request by ``timeout_s``); a call that still fails, or one the server
refuses, gives one warning line and turns the tracker off for the rest of the command, so a server
that is down is waited for once, not once per metric. Only ``check`` (``required = true``) raises.

MLflow is imported here and nowhere else, on first use (``auditrun[mlflow]``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from engine.errors import InputError

INSTALL_HINT = 'pip install "auditrun[mlflow]"'
#: The embedded store's database and artefact folder, in the output root.
EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"
#: MLflow error codes that no retry changes: the server understood the call and refused it.
_REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED",
            "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE"}
#: Seconds before the first retry; each further one waits twice as long.
BACKOFF_S = 0.5

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where an audit is logged."""

    uri: str  # what MLflow is given
    shown: str  # what is printed and stored: no credentials, the embedded store relative to the output root
    embedded: bool
    artifact_location: str | None  # where a new experiment keeps its artefacts (the embedded store's folder)
    experiment: str


def embedded_uri(output_root: Path) -> str:
    return f"sqlite:///{(Path(output_root).resolve() / EMBEDDED_DB).as_posix()}"


def shown_uri(uri: str) -> str:
    """``uri`` without a user, password or query string (a token in a URL is a credential)."""
    parts = urlsplit(uri)
    if not parts.scheme or parts.scheme in ("sqlite", "file"):
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def target(setting: bool | str, output_root: Path, experiment: str) -> Target | None:
    """The store ``[tracking] mlflow`` names: None for false; true: the embedded SQLite store under
    the output root, its artefacts beside it; a URI: that server or store."""
    if setting is False:
        return None
    if setting is True:
        root = Path(output_root).resolve()
        return Target(embedded_uri(root), f"sqlite:///{EMBEDDED_DB} (in the output root)", True,
                      (root / EMBEDDED_ARTIFACTS).as_uri(), experiment)
    uri = str(setting)
    # MLflow would put a SQLite store's artefacts in ./mlruns of whatever folder the audit ran from
    beside = (Path(uri.removeprefix("sqlite:///")).parent / EMBEDDED_ARTIFACTS).as_uri() \
        if uri.startswith("sqlite:///") else None
    return Target(uri, shown_uri(uri), False, beside, experiment)


def mlflow_module():
    """``import mlflow``, or an InputError naming the extra that brings it."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise InputError(f"[tracking] asks for MLflow, which is not installed; install it with: {INSTALL_HINT}") from None
    for name in ("mlflow", "alembic", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.ERROR)  # migrations and "View run at" lines are not ours
    return mlflow


def _refused(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", None)
    return isinstance(code, str) and code in _REFUSED


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class Tracker:
    """One command's connection to the tracker. ``failed``: a call gave up; later calls do nothing."""

    def __init__(self, where: Target, *, retries: int = 3, timeout_s: float = 10.0, warn: Echo | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        mlflow = mlflow_module()
        # One retry policy, this one: MLflow's own HTTP retries (7 by default, minutes apart) would
        # multiply it. Its request timeout is the manifest's.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(timeout_s)))
        self.target, self.retries, self.warn, self.sleep = where, retries, warn or (lambda _m: None), sleep
        if where.embedded:  # SQLite creates the database file, not the folder it lies in
            Path(where.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = mlflow.MlflowClient(tracking_uri=where.uri, registry_uri=where.uri)
        self.failed: str | None = None
        self._experiment_id: str | None = None

    # ----------------------------------------------------------------------------- the fault policy

    def _attempts(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, retried; raises the last error."""
        for attempt in range(self.retries + 1):
            try:
                with _quiet():
                    return fn()
            except Exception as exc:  # noqa: BLE001 - whatever MLflow, requests or SQLite raise
                if _refused(exc) or attempt == self.retries:
                    raise
                self.sleep(BACKOFF_S * 2 ** attempt)

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` under the policy: its value, or None once the tracker has failed."""
        if self.failed is not None:
            return None
        try:
            return self._attempts(what, fn)
        except Exception as exc:  # noqa: BLE001
            self.failed = f"{what}: {_reason(exc)}"
            self.warn(f"tracking: MLflow at {self.target.shown} failed ({self.failed}); the audit goes on "
                      "without it")
            return None

    def check(self) -> None:
        """Raise InputError unless the tracker answers (``[tracking] required = true``)."""
        try:
            self._attempts("connect", lambda: self.client.search_experiments(max_results=1))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"[tracking] required = true, and MLflow at {self.target.shown} does not answer "
                             f"({_reason(exc)}); start it, or set tracking.required = false to audit without "
                             "it") from None

    # ----------------------------------------------------------------------------- the calls

    def experiment_id(self) -> str | None:
        if self._experiment_id is None:
            self._experiment_id = self.call("experiment", self._get_or_create_experiment)
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.target.experiment)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(self.target.experiment, artifact_location=self.target.artifact_location)

    def create_run(self, name: str, tags: dict[str, str], parent: str | None = None) -> str | None:
        eid = self.experiment_id()
        if eid is None:
            return None
        tags = dict(tags, **({"mlflow.parentRunId": parent} if parent else {}))
        run = self.call(f"create run {name}", lambda: self.client.create_run(eid, tags=tags, run_name=name))
        return run.info.run_id if run is not None else None

    def reopen(self, run_id: str) -> None:
        """A resumed audit continues its run."""
        self.call("reopen run", lambda: self.client.update_run(run_id, status="RUNNING"))

    def log(self, run_id: str, *, metrics: dict[str, float] | None = None, params: dict[str, str] | None = None,
            tags: dict[str, str] | None = None, steps: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """Metrics (step 0), stepped metrics, params and tags, in MLflow's batch limits."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        entities = [Metric(k, v, now, 0) for k, v in (metrics or {}).items()]
        entities += [Metric(k, v, now, step) for k, points in (steps or {}).items() for step, v in points]
        for i in range(0, len(entities), 1000):
            chunk = entities[i:i + 1000]
            self.call("log metrics", lambda c=chunk: self.client.log_batch(run_id, metrics=c))
        for name, values, cls in (("params", params, Param), ("tags", tags, RunTag)):
            items = [cls(k, v) for k, v in (values or {}).items()]
            for i in range(0, len(items), 100):
                chunk = items[i:i + 100]
                kwargs = {name: chunk}
                self.call(f"log {name}", lambda kw=kwargs: self.client.log_batch(run_id, **kw))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.call(f"log {path.name}/", lambda: self.client.log_artifacts(run_id, str(path), artifact_path))
        elif path.is_file():
            self.call(f"log {path.name}", lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_dict(self, run_id: str, data: dict, file: str) -> None:
        self.call(f"log {file}", lambda: self.client.log_dict(run_id, data, file))

    def log_keras_model(self, run_id: str, model, signature, metadata: dict, registered_as: str | None) -> str | None:
        """The model with MLflow's Keras flavour in ``run_id``; its model URI."""
        mlflow = mlflow_module()

        def log():
            mlflow.set_tracking_uri(self.target.uri)
            mlflow.set_registry_uri(self.target.uri)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.keras.log_model(model, name="model", signature=signature, metadata=metadata,
                                              registered_model_name=registered_as or None)
            return info.model_uri

        return self.call("log model", log)

    def set_status(self, run_id: str, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        self.call("end run", lambda: self.client.set_terminated(run_id, status=status))

    def find_run(self, experiment: str, run_id_tag: str) -> str | None:
        """The audit's run of ``experiment`` tagged with auditrun run id ``run_id_tag``."""
        def find():
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                return None
            runs = self.client.search_runs([exp.experiment_id], f"tags.`auditrun.run_id` = '{run_id_tag}' and "
                                           "tags.`auditrun.experiment` != ''", max_results=1,
                                           order_by=["attributes.start_time DESC"])
            return runs[0].info.run_id if runs else None

        return self.call("find run", find)

    def children(self, parent: str) -> dict[str, str]:
        """{run name: run id} of the runs nested in ``parent``."""
        def find():
            run = self.client.get_run(parent)
            runs = self.client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
            return {r.info.run_name: r.info.run_id for r in runs}

        return self.call("find nested runs", find) or {}


@contextlib.contextmanager
def _quiet():
    """MLflow's warnings (deprecations, "model logged without an input example") are not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
