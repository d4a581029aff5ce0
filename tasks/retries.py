"""When a failed task run is tried again: transient failures are, the user's mistakes are not.

The rule every task carries (tasks/options.py) and the profile's retry count and delay, which flows put on
their tasks with `task.with_options(**retry_options(runtime))`.
"""

from __future__ import annotations

from typing import Any

from mumu.config.runtime import RuntimeConfig
from mumu.errors import UserError


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures, not the user's mistakes: those fail the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


def retry_options(runtime: RuntimeConfig) -> dict[str, Any]:
    """`task.with_options(**retry_options(runtime))`: the profile's retry count and delay."""
    return dict(retries=runtime.task_retries, retry_delay_seconds=runtime.task_retry_delay_seconds)
