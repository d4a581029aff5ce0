"""The data stage as plain functions (no Prefect): ingest → caption → entities → detect → segment → compose → write.

See mumu/data/stages.py for the per-shard pipeline and data_schemas/README.md for the output format.
"""
