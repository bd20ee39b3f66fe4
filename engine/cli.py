"""Command line: ``auditrun MANIFEST`` runs an audit; subcommands do the rest.

Exit codes: 0 ok, 1 an audit gate failed, 2 usage / manifest / input error.
stdout carries only results (the run directory as the last line, JSON for check-data/evaluate);
progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from engine.errors import INTERNAL_ERROR_EXIT, AuditrunError, InputError, RunInterrupted, StorageError, os_error_message



def _silence_tensorflow() -> None:
    """Retracing warnings and absl banners drown the progress lines users need.

    Called by the commands that load TensorFlow, before they import it; importing engine.cli
    changes nothing process-wide.
    """
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner off stderr

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


class _Echo:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            click.echo(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", err=True)


def _fail(exc: AuditrunError | StorageError) -> None:
    click.echo(f"auditrun: error: {exc}", err=True)
    sys.exit(exc.exit_code)


def _internal_error(exc: BaseException, ctx: click.Context) -> None:
    """A bug in auditrun: one line for the user, the whole traceback in a file they can send us."""
    import tempfile
    import traceback

    saved = getattr(exc, "auditrun_traceback", None)
    if saved is None:
        text = "".join(traceback.format_exception(exc))
        name = f"auditrun-traceback-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.txt"
        for folder in (ctx.meta.get("auditrun.output"), tempfile.gettempdir()):
            if folder is None:
                continue
            try:
                saved = Path(folder) / name
                saved.write_text(text, encoding="utf-8")
                break
            except OSError:
                saved = None
    where = f"full traceback in {str(saved)!r}" if saved else "the traceback could not be saved"
    click.echo(f"auditrun: internal error (a bug in auditrun, not in your input): {type(exc).__name__}: {exc}; "
               f"{where}. Please report it.", err=True)
    sys.exit(INTERNAL_ERROR_EXIT)


def _closest_command(name: str, commands) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(commands), n=1, cutoff=0.6)
    return match[0] if match else None


class AuditGroup(click.Group):
    """``auditrun MANIFEST`` (no subcommand name) runs the ``run`` command.

    It is also the one place where errors become exit codes: every command's input and file-system
    errors exit 2 with one line, a bug exits INTERNAL_ERROR_EXIT, and no traceback reaches stderr.
    """

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            # A mistyped command name (``chek-data``) is no manifest: say so instead of running it.
            guess = _closest_command(args[0], self.commands)
            if guess is not None and guess != "run" and not Path(args[0]).exists():
                raise click.UsageError(f"no such command {args[0]!r}; did you mean {guess!r}?", ctx)
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except AuditrunError as exc:
            _fail(exc)
        except StorageError as exc:  # a full or read-only output disk: the user's to fix
            _fail(exc)
        except RunInterrupted as exc:
            click.echo(f"auditrun: {exc}" + (f"; {exc.hint}" if getattr(exc, "hint", None) else ""), err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("auditrun: interrupted (Ctrl-C)", err=True)
            sys.exit(128 + signal.SIGINT)
        except OSError as exc:
            _fail(InputError(os_error_message(exc)))
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never a raw traceback
            _internal_error(exc, ctx)

    def format_usage(self, ctx, formatter):
        formatter.write_usage("auditrun", "MANIFEST [OPTIONS]  |  auditrun COMMAND [ARGS]...")


def _warn(msg: str) -> None:
    """A warning the user sees even with --quiet."""
    click.echo(f"auditrun: warning: {msg}", err=True)


def _tracking_uri(ctx, param, value):
    if value is not None and not value.strip():
        raise click.BadParameter("must be a tracking URI (http://host:5000, databricks, file:/path)")
    return value


#: ``--tracking-uri`` of the commands that log to MLflow (engine.tracking).
_tracking_option = click.option(
    "--tracking-uri", "tracking_uri", metavar="URI", callback=_tracking_uri,
    help="Log to this MLflow tracking server or store (http://host:5000, databricks, file:/path); overrides "
         "[tracking] mlflow. Needs auditrun[mlflow].")


#: ``--scheduler`` of the commands whose data-parallel stages can run on Dask (engine.compute).
_scheduler_option = click.option(
    "--scheduler", metavar="ADDRESS",
    help="Dask scheduler (tcp://host:8786) for the data-parallel stages; overrides [compute] scheduler "
         "(\"local\": this machine).")


@click.group(cls=AuditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="auditrun", prog_name="auditrun")
def main():
    """Audit brain-tumour MRI classifiers from a TOML experiment manifest.

    \b
    auditrun experiments/baseline.toml        train, evaluate, explain, report
    auditrun check-data experiments/x.toml    data-integrity audit only (JSON on stdout)
    auditrun render reports/exp/RUN_ID        re-render report.html / report.pdf
    auditrun synth-data data/synth            write a synthetic phantom dataset
    auditrun synth-data data/h --format dicom  ... a DICOM hospital set (patients, sites)

    Exit codes: 0 ok, 1 an audit gate failed, 2 usage or input error, 70 internal error (a bug),
    128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM; the run is marked interrupted).
    Set AUDITRUN_DATA_ROOT to point every manifest's data.root elsewhere.
    """


@main.command("run")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output root (default: the manifest's experiment.output_dir, usually reports/).")
@click.option("--run-id", help="Name of the run folder (default: UTC timestamp, e.g. 20261126T020000Z).")
@click.option("--resume", "resume", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Continue an interrupted run directory; finished backbones are not retrained.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the gate results as JUnit XML to this file.")
@_scheduler_option
@_tracking_option
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def run_cmd(manifest: Path, output_dir, run_id, resume, junit, scheduler, tracking_uri, quiet):
    """Run the audit described by MANIFEST; print the run directory last."""
    from engine import manifest as manifest_mod
    from engine import interrupts
    from engine.pipeline import run_audit

    from engine.nightly import gates as gates_mod
    from engine.atomic import write_text

    echo = _Echo(quiet)
    _silence_tensorflow()
    if junit is not None:
        _check_writable_file(junit, "--junit")  # before an hour of training, not after
    m = manifest_mod.load(manifest)
    _use_scheduler(m, scheduler)
    if tracking_uri is not None:
        m.tracking.mlflow = tracking_uri
    click.get_current_context().meta["auditrun.output"] = output_dir or m.experiment.output_dir
    # SIGTERM and SIGINT mark the run interrupted and release the lock on the way out; the
    # default SIGTERM would kill the process with the run left "running" and the lock held.
    with interrupts.installed():
        outcome = run_audit(m, output_dir=output_dir, run_id=run_id, echo=echo, resume=resume, warn=_warn)
    if outcome.already_finished:
        click.echo(str(outcome.run_dir))
        return
    if outcome.worker:  # its gates and artefacts are the chief's to report
        echo("multiworker: this worker is done; the chief writes the run directory")
        return
    for line in gates_mod.gates_summary_lines(outcome.gates, include_pass=not quiet):
        click.echo(line, err=True)
    click.echo(str(outcome.run_dir))
    junit_error = None
    if junit is not None:
        try:
            write_text(junit, gates_mod.gates_to_junit(outcome.gates, m.experiment.name))
        except OSError as exc:
            junit_error = f"--junit: could not write the gate results: {os_error_message(exc)}"
    if outcome.gate_failed:
        click.echo("auditrun: audit gate FAILED; the run directory is complete", err=True)
    if junit_error:
        click.echo(f"auditrun: error: {junit_error}", err=True)
    if outcome.gate_failed:
        sys.exit(1)
    if junit_error:
        sys.exit(2)


def _use_scheduler(m, scheduler: str | None) -> None:
    """``--scheduler`` over the manifest's ``[compute] scheduler`` (InputError for a bad address)."""
    from engine.compute import check_address

    if scheduler is not None:
        m.compute.scheduler = check_address(scheduler, "--scheduler")


def _check_writable_file(path: Path, option: str) -> None:
    """InputError unless ``path`` can be created or replaced: its folder exists and is writable."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{option} {str(path)!r} is a folder; give a file path")
    if not folder.is_dir():
        raise InputError(f"{option} {str(path)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{option} {str(path)!r}: not writable (check the permissions of {str(folder)!r})")


def _manifest_records(manifest: Path, output_dir: Path | None, m=None):
    """(manifest, output root, discovered records, redactor) for the data commands: the same
    discovery as a run's (engine.data.found), patients pseudonymised with the experiment's key under
    the output root. ``m``: the manifest already loaded from ``manifest``, if the caller has it."""
    from engine import manifest as manifest_mod
    from engine.data.found import find_images
    from engine.data.synth import prepare_data_root
    from engine.paths import check_output_root

    m = m or manifest_mod.load(manifest)
    prepare_data_root(m)
    root = Path(output_dir) if output_dir else m.experiment.output_dir
    check_output_root(root, [(manifest_mod.data_root_source(), m.data.root)])
    found = find_images(m, root)
    return m, root, found.records, found.redact


@main.command("check-data")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the fingerprint cache lives (default: the manifest's experiment.output_dir).")
@_scheduler_option
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
def check_data_cmd(manifest: Path, output_dir, scheduler, quiet):
    """Audit the data of MANIFEST only: duplicates, leakage, label conflicts, unreadable files.

    Prints {"integrity": {...}} as JSON on stdout and a short summary on stderr. No model is
    trained or loaded.
    """
    from engine.integrity import audit as integrity
    from engine import manifest as manifest_mod
    from engine import compute
    from engine.atomic import dumps_json

    m = manifest_mod.load(manifest)
    _use_scheduler(m, scheduler)
    m, root, records, redact = _manifest_records(manifest, output_dir, m)
    try:
        from engine.progress import counted

        with compute.using(m.compute.scheduler, _Echo(quiet)), counted(_Echo(quiet), "fingerprints") as progress:
            report = integrity.audit(records, manifest_mod.integrity_options(m.integrity), cache_dir=root / ".cache",
                                     class_names=m.data.classes, windowing=manifest_mod.windowing_options(m.data),
                                     progress=progress)
    except InputError as exc:  # fail_on_unreadable names the files: by reference when patients are in them
        raise InputError(redact(str(exc))) from None
    if not quiet:
        click.echo(integrity.summary_text(report), err=True)
    click.echo(dumps_json({"integrity": report.to_dict(root=m.data.root.resolve())}), nl=False)


@main.command("locate")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("references", nargs=-1, required=True)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the experiment's key folder (.keys) lives (default: the manifest's experiment.output_dir).")
def locate_cmd(manifest: Path, references, output_dir):
    """Print the file behind each neutral file REFERENCE of MANIFEST's data.

    When the data holds patient ids, artefacts name files by reference (``p-.../f-....dcm``,
    docs/data.md) because paths often carry the patient's name. On the machine that holds the data
    and the experiment's key, this turns a reference from a report back into the path (relative to
    the data root), one line per reference: ``REFERENCE<TAB>PATH``. The paths may identify patients:
    they go to the terminal only. An unknown reference exits 2.
    """
    import re

    from engine import manifest as manifest_mod
    from engine.data.identity import default_key_dir, key_file
    from engine.data.synth import prepare_data_root
    from engine.paths import relative_to_root

    m = manifest_mod.load(manifest)
    prepare_data_root(m)
    key = key_file(default_key_dir(Path(output_dir) if output_dir else m.experiment.output_dir), m.experiment.name)
    if not key.is_file():  # a new key would find nothing, and would be left behind
        raise InputError(f"no pseudonym key at {str(key)!r}: references are found under the key of the run that "
                         "made them; give the output root that holds its .keys folder (--output-dir) or set "
                         "AUDITRUN_PSEUDONYM_KEY_FILE")
    m, root, records, _ = _manifest_records(manifest, output_dir, m)
    found = {}
    for r in records:
        if r.ref:
            found.setdefault(r.ref, relative_to_root(r.path, m.data.root))
    # A reference as artefacts write it, with the frame of a multi-image file: "p-.../f-....dcm [slice 3]".
    shape = re.compile(r"((?:p-[0-9a-f]{16}/)?f-[0-9a-f]{16}(?:\.[A-Za-z]{2,5})?)(?: \[(?:slice|frame) \d+\])?")
    parsed = {ref: (match.group(1) if (match := shape.fullmatch(ref)) else None) for ref in references}
    unknown = [ref for ref in references if parsed[ref] not in found]
    for ref in references:
        if ref not in unknown:
            click.echo(f"{ref}\t{found[parsed[ref]]}")
    if unknown:
        raise InputError(f"no file of {str(m.data.root)!r} has the reference(s) {', '.join(map(repr, unknown))} "
                         "under this experiment's key (a reference reads p-<16 hex>/f-<16 hex>.<suffix>, "
                         "with [slice N] or [frame N] for an image inside a file)")


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Labelled folder: one sub-folder per class (run's class aliases apply), any image size.")
@click.option("--backbone", help="Evaluate only this backbone of the run (default: every finished one).")
@click.option("--localisation-images", "localisation_images", type=click.IntRange(min=1), metavar="N",
              help="Score localisation on at most N annotated images per model and method, a seeded sample "
                   "(default: the run's [gradcam] localisation_images, 500).")
@_scheduler_option
@_tracking_option
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def evaluate_cmd(run_dir: Path, data: Path, backbone, localisation_images, scheduler, tracking_uri, quiet):
    """External validation: run RUN_DIR's saved models on another labelled folder.

    Prints {"backbones": [{name, accuracy, balanced_accuracy, macro_f1, per_class,
    confusion_matrix, n_images[, localisation, explanations]}], "annotations": {annotated, kinds,
    problems}, "skipped": [{path, reason}]} as JSON on stdout and stores it under
    RUN_DIR/external/, so `auditrun render RUN_DIR` adds an "External validation" section.
    A run logged to MLflow ([tracking]) gets the metrics as external_<folder>_<metric> on its runs.
    Tumour outlines beside the images (YOLO boxes or polygons in <image>.txt, <image>_mask.png or
    masks/<image>.png, NIfTI label volumes, boxes.csv) give each model one localisation block per
    explanation method: pointing games, energy, coverage and IoU with their intervals and chance
    values. Unreadable images and images below the run's integrity.min_image_size are skipped,
    and unreadable annotations listed, each warned about on stderr; the rest are evaluated.
    """
    from engine.atomic import dumps_json
    from engine.workflows.evaluate import evaluate_external

    _silence_tensorflow()
    click.get_current_context().meta["auditrun.output"] = run_dir
    # skipped images are reported even with --quiet: the figures leave them out
    from engine.atomic import scratch_folder

    with scratch_folder(run_dir):  # Keras unpacks each saved model in the temp folder
        report = evaluate_external(run_dir, data, backbone, echo=_Echo(quiet), warn=_warn, scheduler=scheduler,
                                   localisation_images=localisation_images, tracking_uri=tracking_uri)
    click.echo(dumps_json({"backbones": report["backbones"], "data": report["data"], "counts": report["counts"],
                           "annotations": report["annotations"], "skipped": report["skipped"]}), nl=False)


@main.command("history")
@click.argument("experiment_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def history_cmd(experiment_dir: Path, fmt: str):
    """Print the run history of EXPERIMENT_DIR (e.g. reports/baseline): one row per run and backbone."""
    from engine.nightly import history

    path = experiment_dir / "history.jsonl"
    if not path.is_file():
        raise InputError(f"{str(path)!r} does not exist: no finished run of this experiment yet")
    records = history.read_history(experiment_dir, validate=True)
    click.echo(history.history_table(records, fmt), nl=False)


@main.command("render")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--format", "formats", type=click.Choice(["html", "pdf"]), multiple=True,
              help="Formats to write (default: the run manifest's report.formats, else both).")
def render_cmd(run_dir: Path, formats):
    """Re-render report.html / report.pdf of RUN_DIR from its results.json and stored figures.

    Needs no model and no TensorFlow: any copied run directory can be re-rendered.
    """
    from engine.report import render_report

    click.get_current_context().meta["auditrun.output"] = run_dir
    if not formats:
        formats = _manifest_formats(run_dir)
    from engine.atomic import scratch_folder

    from engine.manifest import run_settings

    try:  # the run's manifest copy fills the reporting checklists ([study], [report] checklists)
        settings = run_settings(run_dir)
    except InputError as exc:
        click.echo(f"warning: {run_dir / 'manifest.toml'}: {exc}; the report shows the checklists results.json "
                   "holds", err=True)
        settings = None
    with scratch_folder(run_dir):  # the renderer's temporary files stay inside the run
        written = render_report(run_dir, tuple(formats), settings=settings)
    for path in written.values():
        click.echo(str(path))


def _manifest_formats(run_dir: Path) -> tuple[str, ...]:
    import tomllib

    try:
        raw = tomllib.loads((run_dir / "manifest.toml").read_text(encoding="utf-8"))
        return tuple(raw.get("report", {}).get("formats", ("html", "pdf"))) or ("html", "pdf")
    except (OSError, tomllib.TOMLDecodeError):
        return ("html", "pdf")


@main.command("synth-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", default=40, show_default=True, help="Images per class (train + test).")
@click.option("--size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--test-fraction", default=0.25, show_default=True, help="Share of each class written to Testing/.")
@click.option("--format", "fmt", type=click.Choice(["png", "png16", "dicom", "nifti"]), default="png",
              show_default=True,
              help="png: 8-bit RGB PNG; png16: 16-bit grey PNG; dicom: 16-bit DICOM with planted identifying "
                   "header values; nifti: one .nii.gz volume per patient. Any format but png, or any of the "
                   "three options below, writes the hospital set (patients, slices, sites; docs/data.md).")
@click.option("--patients-per-class", type=int, help="Hospital set: patients per class (default 6).")
@click.option("--slices-per-patient", type=int, help="Hospital set: neighbouring slices per patient (default 4).")
@click.option("--sites", type=int, help="Hospital set: sites with their own scanner and intensity profile (default 2).")
@click.option("--site-noise", "site_noise", multiple=True, metavar="SITE=NOISE",
              help="Hospital set: replace a site's noise (sd as a fraction of its signal scale), e.g. S2=0.8 "
                   "for a planted site effect; repeatable.")
@click.option("--force", is_flag=True,
              help="Add to a non-empty OUT; only files synth-data wrote there itself (unchanged) are replaced.")
def synth_data_cmd(out: Path, per_class: int, size: int, seed: int, test_fraction: float, fmt: str,
                   patients_per_class, slices_per_patient, sites, site_noise: tuple[str, ...], force: bool):
    """Write a synthetic Kaggle-layout dataset of brain-like phantoms to OUT.

    glioma, meningioma and pituitary images carry a tumour of their own typical shape and place
    and a YOLO box file (<image>.txt); no_tumor images have none.

    The hospital set (--format dicom|nifti|png16, or --patients-per-class/--slices-per-patient/--sites)
    writes several slices per patient from two or more sites, some patients split across Training
    and Testing, and OUT/.auditrun-hospital.json with the ground truth.
    """
    ctx = click.get_current_context()
    hospital = fmt != "png" or bool(site_noise) or any(v is not None for v in (patients_per_class,
                                                                                 slices_per_patient, sites))
    if not hospital:
        from engine.data.synth import write_dataset

        if per_class < 2 or size < 32:
            raise click.BadParameter("need --per-class >= 2 and --size >= 32")
        if not 0.0 < test_fraction < 1.0:
            raise click.BadParameter("must be between 0 and 1", param_hint="--test-fraction")
        ctx.meta["auditrun.output"] = out if out.is_dir() else None
        counts = write_dataset(out, per_class=per_class, size=size, seed=seed, test_fraction=test_fraction,
                               force=force)
        click.echo(json.dumps(counts), err=True)
        click.echo(str(out))
        return

    from engine.data.synth_hospital import write_hospital_dataset

    if ctx.get_parameter_source("per_class") != click.core.ParameterSource.DEFAULT:
        raise click.BadParameter("is for the plain phantom set; the hospital set counts --patients-per-class "
                                 "and --slices-per-patient", param_hint="--per-class")
    patients_per_class = 6 if patients_per_class is None else patients_per_class
    slices_per_patient = 4 if slices_per_patient is None else slices_per_patient
    sites = 2 if sites is None else sites
    if patients_per_class < 2:
        raise click.BadParameter("need at least 2", param_hint="--patients-per-class")
    if slices_per_patient < 1:
        raise click.BadParameter("need at least 1", param_hint="--slices-per-patient")
    if sites < 2:
        raise click.BadParameter("need at least 2", param_hint="--sites")
    if size < 32:
        raise click.BadParameter("need at least 32", param_hint="--size")
    if not 0.0 < test_fraction < 1.0:
        raise click.BadParameter("must be between 0 and 1", param_hint="--test-fraction")
    noise = _site_noise(site_noise)
    ctx.meta["auditrun.output"] = out if out.is_dir() else None
    summary = write_hospital_dataset(out, fmt=fmt, patients_per_class=patients_per_class,
                                     slices_per_patient=slices_per_patient, sites=sites, size=size, seed=seed,
                                     test_fraction=test_fraction, site_noise=noise, force=force)
    click.echo(json.dumps(summary), err=True)
    click.echo(str(out))


def _site_noise(values: tuple[str, ...]) -> dict[str, float]:
    """``("S2=0.8", ...)`` -> ``{"S2": 0.8}``; the site codes and ranges are checked by the writer."""
    out: dict[str, float] = {}
    for value in values:
        code, sep, number = value.partition("=")
        try:
            out[code.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep or not code.strip():
            raise click.BadParameter(f"{value!r} is not SITE=NOISE (e.g. S2=0.8)", param_hint="--site-noise")
    return out


@main.command("fetch-data")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def fetch_data_cmd(dest: Path):
    """Download the public Sartaj brain-tumour MRI dataset to DEST (needs internet + kagglehub).

    Then point a manifest at it with data.root = "DEST" or AUDITRUN_DATA_ROOT=DEST.
    """
    from engine.data.fetch import fetch

    click.echo(str(fetch(dest)))


if __name__ == "__main__":  # pragma: no cover
    main()
