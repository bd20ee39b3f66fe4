"""``auditrun MANIFEST``: one audit run, manifest -> data -> integrity -> train -> evaluate ->
statistics -> explain -> gates -> report -> history.

This module owns the run directory, the order of the stages, resume and reuse, and the region in
which a signal waits for a batch boundary; every stage's return is recorded by one ``_record_*``
function below. results.json is rewritten (atomically) after every backbone, so a killed run
leaves a readable, resumable record of what finished.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable

from engine import data as data_stage
from engine import compute, evaluation, explain, integrity, interrupts, nightly, tracking, training
from engine.atomic import scratch_folder, write_text
from engine.errors import InputError, RunInterrupted, StorageError
from engine.manifest import Manifest, data_root_source, synthetic_root
from engine.paths import check_output_root, child, safe_name
from engine.progress import Timer
from engine.results import (BackboneResult, BestBackbone, DataInfo, Integrity, Shift, TrainingSetup,
                            read_results)
from engine.workflows.finish import finish_run, stopped
from engine.workflows.context import (FINISHED_STATUSES, Echo, RunContext, RunOutcome, new_results, new_run_id,
                                      quiet_echo)


def run_audit(m: Manifest, *, output_dir: Path | None = None, run_id: str | None = None,
              echo: Echo | None = None, now: Callable[[], datetime] | None = None,
              resume: Path | None = None, warn: Echo | None = None) -> RunOutcome:
    """Run every stage under the experiment's lock. Raises InputError for bad input.

    ``warn``: where a warning goes that the user must see even without progress lines (the tracker's
    one failure line); default ``echo``."""
    echo = echo or quiet_echo()
    warn = warn or (lambda msg: echo(f"warning: {msg}"))
    now = now or (lambda: datetime.now(timezone.utc))
    if synthetic_root(m) is not None:  # manifest.load leaves the writing of the phantoms to the run
        data_stage.prepare_data_root(m)
    # before anything is written: the output and the data must not hold one another
    check_output_root(Path(resume).resolve().parent.parent if resume is not None
                      else Path(output_dir) if output_dir else m.experiment.output_dir,
                      [(data_root_source(), m.data.root)] if m.data.root is not None else [])
    if m.training.distribute == "multiworker":
        if not training.is_chief():
            return _run_as_worker(m, Path(output_dir) if output_dir else m.experiment.output_dir, run_id, echo, now)
    output_root = (Path(resume).resolve().parent.parent if resume is not None
                   else Path(output_dir) if output_dir else m.experiment.output_dir)
    # MLflow missing, or a required tracker down: exit 2 before the run starts
    tracker = tracking.open_tracker(m.tracking, output_root, m.experiment.name, warn=warn)
    if resume is not None:
        exp_dir = Path(resume).resolve().parent
    else:
        output_root.mkdir(parents=True, exist_ok=True)
        exp_dir = child(output_root, m.experiment.name, "experiment.name")
        if run_id is not None:
            safe_name(run_id, "--run-id")
    exp_dir.mkdir(parents=True, exist_ok=True)
    with nightly.experiment_lock(exp_dir, experiment=m.experiment.name), compute.using(m.compute.scheduler, echo):
        return _run_locked(m, exp_dir, run_id, echo, now, resume, tracker)


def _run_as_worker(m: Manifest, output_root: Path, run_id, echo: Echo, now) -> RunOutcome:
    """A non-chief worker trains in step with the chief but keeps nothing: only the chief writes
    artefacts. Its run goes to a hidden temporary folder inside the output root (nothing is
    written outside it), deleted at the end, and it exits 0. It skips Grad-CAM and the report:
    they need no collective step, and their results would be thrown away."""
    import tempfile
    from dataclasses import replace

    m = replace(m, gradcam=replace(m.gradcam, enabled=False), report=replace(m.report, formats=[]),
                tracking=replace(m.tracking, mlflow=False, required=False))
    output_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".worker-", dir=output_root) as tmp:
        echo("multiworker: non-chief worker; training with the chief, writing nothing that stays")
        exp_dir = Path(tmp) / m.experiment.name
        exp_dir.mkdir()
        outcome = _run_locked(m, exp_dir, run_id, echo, now, None)
    return RunOutcome(output_root, outcome.status, worker=True)


def _run_locked(m: Manifest, exp_dir: Path, run_id, echo: Echo, now, resume, tracker=None) -> RunOutcome:
    started = now()
    t_run = time.perf_counter()
    manifest_sha = hashlib.sha256(m.text.encode()).hexdigest()
    previous = None
    if resume is not None:
        run_dir = Path(resume)
        previous = read_results(run_dir)
        if previous["experiment"].get("manifest_sha256") != manifest_sha:
            raise InputError(f"--resume {str(run_dir)!r}: that run used a different manifest; resume it with the "
                             f"manifest copy in {str(run_dir / 'manifest.toml')!r}")
        if previous["run"].get("status") in FINISHED_STATUSES:
            echo(f"run {run_dir.name} already finished (status {previous['run']['status']}); nothing to resume")
            return RunOutcome(run_dir, previous["run"]["status"], already_finished=True)
        started = datetime.fromisoformat(previous["run"]["started_at"])
    else:
        run_id = run_id or new_run_id(started)
        run_dir = child(exp_dir, run_id, "--run-id")
        if run_dir.exists():
            raise InputError(f"run directory {str(run_dir)!r} already exists; choose another --run-id "
                             "(or --resume it)")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "manifest.toml", m.text)
    results = new_results(m, run_dir, started, manifest_sha, resume is not None)
    ctx = RunContext(m, run_dir, exp_dir.parent, echo, now, results, clock_start=t_run,
                     prior_active_s=float((previous or {}).get("run", {}).get("active_s") or 0.0), tracker=tracker)
    if previous is not None:
        results.run.active_s_before_resume = ctx.prior_active_s
    ctx.save()
    echo(f"run directory: {run_dir}")
    if tracker is not None:
        results.tracking = tracking.start_audit(tracker, results, m, previous)
        ctx.save()
    try:
        # Keras builds every .keras archive in the temp folder: it must lie inside the output root.
        with scratch_folder(exp_dir):
            try:
                return _run_stages(ctx, exp_dir, manifest_sha, previous)
            finally:
                if ctx.data is not None:
                    ctx.data.cache.close()  # decoded splits spilled to a temporary folder go with the run
    except (Exception, KeyboardInterrupt, StorageError, RunInterrupted) as exc:
        raise stopped(ctx, exp_dir, exc)


def _run_stages(ctx: RunContext, exp_dir: Path, manifest_sha: str, previous: dict | None) -> RunOutcome:
    m, echo, results = ctx.manifest, ctx.echo, ctx.results
    training.check_model_files(m)
    _record_setup(ctx, training.setup_training(m))
    prepare_data(ctx)
    shift_stage(ctx)
    ctx.save()

    # TensorFlow runs from here on: a signal is acted on at the next batch boundary, never in the
    # middle of Keras' or tf.data's own code (engine.interrupts).
    with interrupts.deferred():
        done = {e["name"]: e for e in (previous or {}).get("backbones", []) if e.get("status") == "ok"}
        source_dir = ctx.run_dir
        if not done and m.experiment.reuse == "if-unchanged":
            done, source_dir = _reusable_entries(ctx, exp_dir, manifest_sha)
        place = training.Place(ctx.run_dir, ctx.echo)
        for cfg in m.backbones:
            names = [cfg.name] + ([f"{cfg.name}_ft"] if cfg.fine_tune else [])
            if all(_finished_in(done, source_dir, n) for n in names):
                verb = "finished in the interrupted run" if source_dir == ctx.run_dir else f"reused from run {source_dir.name}"
                echo(f"backbone {cfg.name}: {verb}; not retrained")
                for n in names:
                    _adopt(ctx, done[n], source_dir)
                continue
            with Timer(echo, f"backbone {cfg.name}"):
                with ctx.training_scope():
                    _record_trained(ctx, *training.train_backbone(m, ctx.data, place, cfg))
            ctx.save()

        ft_best = m.training.fine_tune_best
        if ft_best is not None:
            frozen = [b for b in ctx.backbones if not b.fine_tuned_from]
            best = evaluation.select_best(frozen)
            if best is not None and not any(b.fine_tuned_from == best["name"] for b in ctx.backbones):
                if _finished_in(done, source_dir, f"{best['name']}_ft"):
                    _adopt(ctx, done[f"{best['name']}_ft"], source_dir)
                else:
                    cfg = next(c for c in m.backbones if c.name == best["name"])
                    frozen_best = next(b for b in frozen if b.name == best["name"])
                    echo(f"fine-tuning the best backbone on validation: {cfg.name}")
                    with Timer(echo, f"fine-tune {cfg.name}"):
                        with ctx.training_scope():
                            _record_trained(ctx, training.fine_tune_saved(m, ctx.data, place, cfg, frozen_best,
                                                                          ft_best))
                ctx.save()

        for cfg in m.models:
            with Timer(echo, f"model {cfg.name} (imported)"):
                _record_trained(ctx, training.import_model(m, ctx.data, place, cfg))
            ctx.save()

        best = evaluation.select_best(ctx.backbones)
        results.best_backbone = BestBackbone.from_json(best) if best is not None else None
        run_post_stages(ctx)
    ok = ctx.finished()
    results.run.status = "ok" if len(ok) == len(ctx.backbones) else ("partial" if ok else "failed")
    results.run.finished_at = ctx.now().isoformat(timespec="seconds")
    # On --resume: the interrupted part (up to its last save) plus this one.
    results.run.wall_time_s = round(ctx.active_s(), 1)
    results.timings["total_s"] = results.run.wall_time_s
    gates = finish_run(ctx, exp_dir)
    return RunOutcome(ctx.run_dir, results.run.status, gates)


def prepare_data(ctx: RunContext) -> None:
    ctx.data = data_stage.prepare(ctx.manifest, ctx.output_root, ctx.run_dir, ctx.echo, ctx.results.timings,
                                  check_test=partial(evaluation.check_subgroup_values, ctx.manifest),
                                  audited=partial(_record_audit, ctx), found_ids=partial(_record_redactor, ctx))
    _record_data(ctx, ctx.data)


def shift_stage(ctx: RunContext) -> None:
    shift = integrity.check_shift(ctx.manifest, ctx.data, ctx.echo, ctx.results.timings)
    if shift is not None:
        ctx.results.integrity.shift = Shift.from_json(shift)


def run_post_stages(ctx: RunContext) -> None:
    """Stages that need every backbone's outputs: calibration, uncertainty, comparisons, Grad-CAM."""
    m = ctx.manifest
    ok = [b for b in ctx.finished() if b.name in ctx.outputs]
    _record_statistics(ctx, ok, evaluation.statistics(m, ctx.data, ok, ctx.outputs, ctx.echo, ctx.results.timings))
    ctx.save()
    if m.gradcam.enabled and ok:
        by_name = {b.name: b for b in ok}
        for done in explain.explain(m, ctx.data, ok, ctx.outputs, ctx.run_dir, ctx.echo):
            _record_explained(by_name[done.name], done)
            ctx.save()


# ------------------------------------------------------------------------- where stage returns are recorded


def _record_setup(ctx: RunContext, setup) -> None:
    ctx.training_setup = setup
    ctx.results.environment.training = TrainingSetup.from_json(setup.to_dict())
    ctx.echo(setup.describe())


def _record_audit(ctx: RunContext, audited) -> None:
    from engine.report import add_pair_thumbnails

    ctx.results.integrity = Integrity.from_json(audited.integrity)
    add_pair_thumbnails(ctx.results, ctx.run_dir, data_root=audited.root, windowing=audited.windowing,
                        sources=audited.thumbnail_sources)


def _record_redactor(ctx: RunContext, redact, echo: Echo) -> None:
    ctx.redact, ctx.echo = redact, echo


def _record_data(ctx: RunContext, prepared) -> None:
    ctx.results.data = DataInfo.from_json(prepared.block)


def _record_trained(ctx: RunContext, *trained) -> None:
    for t in trained:
        ctx.backbones.append(t.result)
        if t.outputs is not None:
            ctx.outputs[t.result.name] = t.outputs


def _record_statistics(ctx: RunContext, entries: list[BackboneResult], stats) -> None:
    for res in entries:
        for key, value in vars(stats.per_model[res.name]).items():
            if value is not None:
                res.put(key, value)
    if stats.comparisons is not None:
        ctx.results.put("comparisons", stats.comparisons)
    if stats.comparisons_leakage_free is not None:
        ctx.results.put("comparisons_leakage_free", stats.comparisons_leakage_free)


def _record_explained(res: BackboneResult, done) -> None:
    res.put("gradcam", done.gradcam)
    if done.explanations is not None:
        res.put("explanations", done.explanations)
    if done.localisation is not None:
        res.put("localisation", done.localisation)
    res.timings.update(done.timings)
    if done.method is not None:
        res.explanation_method = done.method


# ------------------------------------------------------------------------- resume and reuse


def _finished_in(done: dict, source_dir: Path, name: str) -> bool:
    return name in done and (source_dir / done[name]["artifacts"]["model"]).is_file()


def _reusable_entries(ctx: RunContext, exp_dir: Path, manifest_sha: str) -> tuple[dict, Path]:
    """Finished entries of the newest run with the same manifest, data and code (reuse = "if-unchanged")."""
    run_id = nightly.reusable_run(exp_dir, ctx.results, manifest_sha)
    if run_id is None:
        ctx.echo("reuse: no earlier run with unchanged manifest, data and code; training")
        return {}, ctx.run_dir
    ctx.results.run.reused_from = run_id
    ctx.echo(f"reuse: manifest, data and code unchanged since run {run_id}; reusing its models")
    return nightly.finished_entries(exp_dir / run_id), exp_dir / run_id


def _adopt(ctx: RunContext, entry: dict, source_dir: Path) -> None:
    """Take a finished entry (and its files) from an interrupted or reused run."""
    res = BackboneResult.from_json(nightly.adopt_entry(entry, source_dir, ctx.run_dir))
    ctx.backbones.append(res)
    ctx.outputs[res.name] = evaluation.read_outputs(ctx.run_dir, res.artifacts, res.input_size, ctx.class_names)
