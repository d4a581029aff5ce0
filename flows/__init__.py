"""Prefect flows: each reads like the DAG it runs; the work is in tasks/ → mumu.* plain functions."""
