"""Command line: ``auditrun MANIFEST`` runs an audit; subcommands do the rest.

Exit codes: 0 ok, 1 an audit gate failed, 2 usage / manifest / input error.
stdout carries only results (the run directory as the last line, JSON for check-data/evaluate);
progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from engine.errors import AuditrunError, InputError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner off stderr


def _silence_tensorflow() -> None:
    """Retracing warnings and absl banners drown the progress lines users need."""
    import logging

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


def _fail(exc: AuditrunError) -> None:
    click.echo(f"auditrun: error: {exc}", err=True)
    sys.exit(exc.exit_code)


class AuditGroup(click.Group):
    """``auditrun MANIFEST`` (no subcommand name) runs the ``run`` command."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage("auditrun", "MANIFEST [OPTIONS]  |  auditrun COMMAND [ARGS]...")


@click.group(cls=AuditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="auditrun", prog_name="auditrun")
def main():
    """Audit brain-tumour MRI classifiers from a TOML experiment manifest.

    \b
    auditrun experiments/baseline.toml        train, evaluate, explain, report
    auditrun check-data experiments/x.toml    data-integrity audit only (JSON on stdout)
    auditrun render reports/exp/RUN_ID        re-render report.html / report.pdf
    auditrun synth-data data/synth            write a synthetic phantom dataset

    Exit codes: 0 ok, 1 an audit gate failed, 2 usage or input error.
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
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def run_cmd(manifest: Path, output_dir, run_id, resume, junit, quiet):
    """Run the audit described by MANIFEST; print the run directory last."""
    from engine import manifest as manifest_mod
    from engine.pipeline import run_audit

    from engine import gates as gates_mod
    from engine.atomic import write_text

    echo = _Echo(quiet)
    _silence_tensorflow()
    try:
        m = manifest_mod.load(manifest)
        outcome = run_audit(m, output_dir=output_dir, run_id=run_id, echo=echo, resume=resume)
    except AuditrunError as exc:
        _fail(exc)
    if junit is not None:
        write_text(junit, gates_mod.gates_to_junit(outcome.gates, m.experiment.name))
    for line in gates_mod.gates_summary_lines(outcome.gates, include_pass=not quiet):
        click.echo(line, err=True)
    click.echo(str(outcome.run_dir))
    if outcome.gate_failed:
        click.echo("auditrun: audit gate FAILED; the run directory is complete", err=True)
        sys.exit(1)


@main.command("check-data")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the fingerprint cache lives (default: the manifest's experiment.output_dir).")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
def check_data_cmd(manifest: Path, output_dir, quiet):
    """Audit the data of MANIFEST only: duplicates, leakage, label conflicts, unreadable files.

    Prints {"integrity": {...}} as JSON on stdout and a short summary on stderr. No model is
    trained or loaded.
    """
    from engine import data as data_mod
    from engine import integrity
    from engine import manifest as manifest_mod
    from engine.atomic import dumps_json

    try:
        m = manifest_mod.load(manifest)
        _, records = data_mod.discover(
            m.data.root, layout=m.data.layout, train_dir=m.data.train_dir, test_dir=m.data.test_dir,
            classes=m.data.classes, aliases=manifest_mod.class_aliases(m), test_fraction=m.data.test_fraction,
            seed=m.experiment.seed)
        root = Path(output_dir) if output_dir else m.experiment.output_dir
        report = integrity.audit(records, manifest_mod.integrity_options(m.integrity), cache_dir=root / ".cache",
                                 class_names=m.data.classes)
    except AuditrunError as exc:
        _fail(exc)
    if not quiet:
        click.echo(integrity.summary_text(report), err=True)
    click.echo(dumps_json({"integrity": report.to_dict(root=m.data.root.resolve())}), nl=False)


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Labelled folder: one sub-folder per class (run's class aliases apply), any image size.")
@click.option("--backbone", help="Evaluate only this backbone of the run (default: every finished one).")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def evaluate_cmd(run_dir: Path, data: Path, backbone, quiet):
    """External validation: run RUN_DIR's saved models on another labelled folder.

    Prints {"backbones": [{name, accuracy, balanced_accuracy, macro_f1, per_class,
    confusion_matrix, n_images[, pointing_game]}], "skipped": [{path, reason}]} as JSON on stdout
    and stores it under RUN_DIR/external/, so `auditrun render RUN_DIR` adds an "External
    validation" section. Unreadable images and images below the run's integrity.min_image_size
    are skipped, listed and warned about on stderr; the rest are evaluated.
    """
    from engine.atomic import dumps_json
    from engine.external import evaluate_external

    _silence_tensorflow()
    try:
        # skipped images are reported even with --quiet: the figures leave them out
        report = evaluate_external(run_dir, data, backbone, echo=_Echo(quiet),
                                   warn=lambda msg: click.echo(f"auditrun: warning: {msg}", err=True))
    except AuditrunError as exc:
        _fail(exc)
    click.echo(dumps_json({"backbones": report["backbones"], "data": report["data"], "counts": report["counts"],
                           "skipped": report["skipped"]}), nl=False)


@main.command("history")
@click.argument("experiment_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def history_cmd(experiment_dir: Path, fmt: str):
    """Print the run history of EXPERIMENT_DIR (e.g. reports/baseline): one row per run and backbone."""
    from engine import history

    path = experiment_dir / "history.jsonl"
    if not path.is_file():
        _fail(InputError(f"{str(path)!r} does not exist: no finished run of this experiment yet"))
    click.echo(history.history_table(history.read_history(experiment_dir), fmt), nl=False)


@main.command("render")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--format", "formats", type=click.Choice(["html", "pdf"]), multiple=True,
              help="Formats to write (default: the run manifest's report.formats, else both).")
def render_cmd(run_dir: Path, formats):
    """Re-render report.html / report.pdf of RUN_DIR from its results.json and stored figures.

    Needs no model and no TensorFlow: any copied run directory can be re-rendered.
    """
    from engine.report import render_report
    from engine.results import read_results

    try:
        read_results(run_dir)
        if not formats:
            formats = _manifest_formats(run_dir)
        written = render_report(run_dir, tuple(formats))
    except AuditrunError as exc:
        _fail(exc)
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
def synth_data_cmd(out: Path, per_class: int, size: int, seed: int, test_fraction: float):
    """Write a synthetic Kaggle-layout dataset of brain-like phantoms to OUT.

    glioma, meningioma and pituitary images carry a tumour of their own typical shape and place
    and a YOLO box file (<image>.txt); no_tumor images have none.
    """
    from engine.synth import write_dataset

    if per_class < 2 or size < 32:
        raise click.BadParameter("need --per-class >= 2 and --size >= 32")
    counts = write_dataset(out, per_class=per_class, size=size, seed=seed, test_fraction=test_fraction)
    click.echo(json.dumps(counts), err=True)
    click.echo(str(out))


@main.command("fetch-data")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def fetch_data_cmd(dest: Path):
    """Download the public Sartaj brain-tumour MRI dataset to DEST (needs internet + kagglehub).

    Then point a manifest at it with data.root = "DEST" or AUDITRUN_DATA_ROOT=DEST.
    """
    from engine.fetch import fetch

    try:
        click.echo(str(fetch(dest)))
    except AuditrunError as exc:
        _fail(exc)


def entrypoint():  # pragma: no cover - console script shim
    main()


if __name__ == "__main__":  # pragma: no cover
    main()
