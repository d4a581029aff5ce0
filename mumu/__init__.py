"""mumu-pipeline: multimodal-prompt data bootstrapping, training and evaluation as one Prefect DAG."""

from pathlib import Path

__version__ = "0.1.0"

# The bundled sample scenes (emoji on backgrounds, MIT art): the default input of build-data, and the tests'.
SAMPLES_DIR = Path(__file__).resolve().parent / "samples" / "scenes"
# The default run's training set: 256 scenes of 1-3 of the first 8 emoji, enough for the tiny model to learn
# to draw the subjects its prompts reference, alone and together (mumu/samples/README.md). The default input of `mumu pipeline`.
TRAIN_SAMPLES_DIR = Path(__file__).resolve().parent / "samples" / "train"
# All 390 Fluent Emoji 3D of the project's data set (MIT; its LICENSE beside them): subjects for the task of
# subjects never trained on (mumu/eval/unseen.py), most trained on, some held out of all training.
FLUENT_EMOJI_DIR = Path(__file__).resolve().parent / "samples" / "fluent-emoji-3d"
