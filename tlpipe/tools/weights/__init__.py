"""Offline pretrained weights: `tlpipe weights import mobilenet_v2` (torchvision checkpoint -> Keras)."""
