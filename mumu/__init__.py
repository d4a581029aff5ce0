"""mumu-pipeline: multimodal-prompt data bootstrapping, training and evaluation as one Prefect DAG."""

from pathlib import Path

__version__ = "0.1.0"

# The bundled sample scenes (emoji on backgrounds, MIT art): the default input of build-data and pipeline.
SAMPLES_DIR = Path(__file__).resolve().parent / "samples" / "scenes"
