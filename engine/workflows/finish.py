"""The end of an audit run: gates against the previous run, the trend, the report, then the
history, the latest pointer and retention; or, for a run that stopped early, its status."""

from __future__ import annotations

import signal
from pathlib import Path

from engine import nightly, tracking
from engine.errors import InputError, RunInterrupted, StorageError, os_error_message
from engine.failures import save_traceback
from engine.progress import Timer
from engine.results import RunResults
from engine.workflows.context import TRACEBACK_FILE, RunContext, resume_command


def finish_run(ctx: RunContext, exp_dir: Path) -> list:
    """Gates against the previous run, trend, report, then history, latest pointer and retention."""
    m, results = ctx.manifest, ctx.results
    run_id = results.run.id
    records = [r for r in nightly.read_history(exp_dir) if r.get("run_id") != run_id]
    gates = nightly.evaluate_gates(results, m.gates, nightly.previous_record(records, run_id))
    results.put("gates", nightly.gates_to_dict(gates))
    record = nightly.record_from_results(results)
    results.put("trend", nightly.trend(records + [record], run_id, last_n=m.report.trend_window))
    ctx.save()
    render_stage(ctx)
    nightly.append_record(exp_dir, nightly.record_from_results(results))
    nightly.write_latest(exp_dir, run_id)
    protect = {run_id} | ({results.run.reused_from} if results.run.reused_from else set())
    for pruned in nightly.prune_runs(exp_dir, m.experiment.keep_last, protect, experiment=m.experiment.name):
        ctx.echo(f"retention: removed old run {pruned.name} (keep_last = {m.experiment.keep_last})")
    if m.data.cache:
        stale = nightly.prune_cache(ctx.output_root / ".cache", m.data.cache_max_age_days)
        if stale:
            ctx.echo(f"retention: removed {len(stale)} cached image arrays unused for "
                     f"{m.data.cache_max_age_days} days")
    track_stage(ctx)
    return gates


def track_stage(ctx: RunContext) -> None:
    """The audit in the experiment tracker, once its own records (report, history) are written: the
    tracker never costs them. results.json is saved with the nested runs' ids before it is logged."""
    tracker, block = ctx.tracker, ctx.results.tracking
    if tracker is None or block is None:
        return
    with Timer(ctx.echo, "tracking"):  # not in results.json: MLflow holds that file as it was logged
        ctx.results.tracking = tracking.open_model_runs(tracker, block, ctx.results.to_json())
        ctx.save()
        ctx.results.tracking = tracking.logged(tracker, tracking.log_audit(
            tracker, ctx.results.tracking, ctx.run_dir, ctx.results.to_json(), ctx.manifest))
        ctx.save()
        ctx.results.tracking = tracking.close_audit(tracker, ctx.results.tracking, ctx.run_dir, ctx.results.to_json())
        if ctx.results.tracking.status == "failed":  # results.json says so, though MLflow's copy could not
            ctx.save()
    if ctx.results.tracking.status == "logged":
        ctx.echo(f"tracking: MLflow run {ctx.results.tracking.run_id} in experiment "
                 f"{ctx.results.tracking.experiment!r} at {ctx.results.tracking.uri}")


def render_stage(ctx: RunContext) -> None:
    formats = list(ctx.manifest.report.formats)
    if not formats:
        return
    from engine.report import render_report

    with Timer(ctx.echo, "report", ctx.results.timings, "report_s"):
        # the run's clock dates the report; its manifest fills the reporting checklists
        written = render_report(ctx.run_dir, formats, now=ctx.now(), settings=ctx.manifest)
    # the renderer filled results.json's checklists block: keep it in the tree a later save writes
    ctx.results.put("checklists", RunResults.read(ctx.run_dir).to_json().get("checklists"))
    for fmt, path in written.items():
        ctx.echo(f"report: {path}")


def record_end(ctx: RunContext, exp_dir: Path, status: str, error: str) -> None:
    """Mark a run that stopped early as ``failed`` or ``interrupted``, in results.json and the history.

    Best effort on top of an error already on its way to the user: a second failure here (a full
    disk, say) must not replace the first.
    """
    run = ctx.results.run
    run.status, run.error = status, error
    run.finished_at, run.wall_time_s = ctx.now().isoformat(timespec="seconds"), round(ctx.active_s(), 1)
    try:
        try:
            ctx.save()
        except StorageError:
            # No room for the temporary copy an atomic write needs: the file's own blocks, compact.
            # A run left saying "running" would be resumed as if it had been interrupted.
            ctx.save(in_place=True)
        nightly.append_record(exp_dir, nightly.record_from_results(ctx.results))
    except (OSError, ValueError, StorageError) as exc:
        ctx.echo(f"warning: could not record the run as {status}: {exc}")
    if ctx.tracker is not None and ctx.results.tracking is not None:
        tracking.end_audit(ctx.tracker, ctx.results.tracking, status, error)


def stopped(ctx: RunContext, exp_dir: Path, exc: BaseException) -> BaseException:
    """Record the run as stopped by ``exc`` and give what the CLI is to see: the same exception,
    or (for the user's input or file system, and Ctrl-C) the one that names it for the user."""
    if isinstance(exc, StorageError):  # the output's disk is full or read-only: the CLI exits 2
        exc.args = (ctx.redact(str(exc)),)
        record_end(ctx, exp_dir, "failed", str(exc))
        return exc
    if isinstance(exc, (InputError, OSError)):  # the user's input or file system: the CLI exits 2
        message = ctx.redact(str(exc) if isinstance(exc, InputError) else os_error_message(exc))
        record_end(ctx, exp_dir, "failed", message)
        return _without_context(InputError(message))
    if isinstance(exc, (RunInterrupted, KeyboardInterrupt)):
        stop = exc if isinstance(exc, RunInterrupted) else RunInterrupted(signal.SIGINT)
        ctx.results.run.resume_command = resume_command(ctx.manifest, ctx.run_dir)
        record_end(ctx, exp_dir, "interrupted", str(stop))
        stop.hint = f"run marked interrupted; continue it with: {ctx.results.run.resume_command}"
        return stop if stop is exc else _without_context(stop)
    # A bug, not the user's input: keep the whole traceback where the user will look for it.
    trace = save_traceback(ctx.run_dir, TRACEBACK_FILE, exc)
    if trace is not None:
        exc.auditrun_traceback = trace  # type: ignore[attr-defined]
    where = f"traceback in {TRACEBACK_FILE}" if trace else "the traceback could not be saved"
    record_end(ctx, exp_dir, "failed", ctx.redact(f"internal error {type(exc).__name__}: {exc} ({where})"))
    return exc


def _without_context(exc: BaseException) -> BaseException:
    """``exc`` raised as ``raise exc from None`` would: the exception it replaces is not shown."""
    exc.__cause__, exc.__suppress_context__ = None, True
    return exc
