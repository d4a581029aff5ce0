"""Models, each built from a typed config: data-stage models (captioner, detector, segmenter) and the
multimodal-prompt generator (encoder → connector → UNet/VAE)."""
