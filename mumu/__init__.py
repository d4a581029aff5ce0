"""mumu-pipeline: multimodal-prompt data bootstrapping, training and evaluation as one Prefect DAG."""

__version__ = "0.1.0"
