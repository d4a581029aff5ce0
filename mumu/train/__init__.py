"""Training: data loading (data.py), augmentation (augment.py) and the trainer; no Prefect imports."""
