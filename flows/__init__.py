"""Prefect flows: each reads like the DAG it runs; the work is in tasks/ → mumu.* plain functions."""

# Every stage flow defined here runs as a subflow: of `mumu pipeline` (flows/pipeline.py) and of the benches'
# timing flows. Without this, each subflow's end waits up to 1 s for its heartbeat thread (tasks/prefect_compat.py).
# Applied when the package is imported, i.e. by whatever imports a stage flow (the CLI, the pipeline, the benches,
# the tests); it raises if Prefect is not the release the patch was written against.
from tasks.prefect_compat import subflows_skip_heartbeat_join

subflows_skip_heartbeat_join()
