"""The names ``auditrun MANIFEST`` had here before each command got its workflow module
(engine.workflows.run) and each stage its typed function: kept for callers that import them."""

from engine.failures import failure_message, save_traceback
from engine.paths import slug
from engine.progress import Timer
from engine.workflows.context import (FINISHED_STATUSES, TRACEBACK_FILE, RunContext, RunOutcome, new_run_id,
                                      resume_command)
from engine.workflows.finish import finish_run, render_stage
from engine.workflows.run import prepare_data, run_audit, run_post_stages, shift_stage

__all__ = ["FINISHED_STATUSES", "TRACEBACK_FILE", "RunContext", "RunOutcome", "Timer", "failure_message",
           "finish_run", "new_run_id", "prepare_data", "render_stage", "resume_command", "run_audit",
           "run_post_stages", "save_traceback", "shift_stage", "slug"]
