"""Training stages: frozen backbone, fine-tuning, from-scratch baseline; and the offline ImageNet weights import."""
