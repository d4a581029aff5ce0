"""Evaluation: metrics (metrics.py), subject benchmarks (benchmarks.py), the chunked resumable runner
(runner.py) and the report (report.py). Plain functions; no Prefect imports."""
