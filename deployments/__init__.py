"""Operating the pipeline on a Prefect server: events that chain the stage deployments, the input watcher.

The deployments themselves are declared in prefect.yaml at the repository root; docs/operations.md
says how to start a server and a worker and deploy them.
"""
