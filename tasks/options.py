"""The Prefect options every task of the pipeline is declared with: `@task(name=..., **TASK_OPTIONS)`.

Task inputs hold decoded images and models' outputs: Prefect never hashes them for its cache nor persists them
as results. Retries are on by default (the rule in tasks/retries.py); flows raise them to the profile's count.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

from tasks.retries import retry_unless_user_error

TASK_OPTIONS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1,
                                    retry_condition_fn=retry_unless_user_error)
