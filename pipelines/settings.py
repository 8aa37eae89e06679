"""The one place where container images are named: change the registry prefix and tag here (or with
`tlpipe compile --image-prefix/--image-tag`)."""

from __future__ import annotations

from dataclasses import dataclass

# Image family of each pipeline step (Dockerfiles in docker/<family>/).
STEP_IMAGE_FAMILY = {
    "ingest": "base",
    "preprocess": "spark",
    "train-frozen": "train",
    "finetune": "train",
    "train-scratch": "train",
    "skip-stage": "base",
    "evaluate": "train",
    "register": "train",
}
IMAGE_FAMILIES = ("base", "spark", "train", "train-gpu")


@dataclass(frozen=True)
class ImageSettings:
    """Registry prefix and tag applied to every image family: `<prefix>/<family>:<tag>`."""

    prefix: str = "tlpipe"
    tag: str = "0.1.0"

    def image(self, family: str) -> str:
        if family not in IMAGE_FAMILIES:
            raise ValueError(f"unknown image family {family!r}; known: {IMAGE_FAMILIES}")
        return f"{self.prefix.rstrip('/')}/{family}:{self.tag}"

    def for_step(self, step: str, gpu: bool = False) -> str:
        family = STEP_IMAGE_FAMILY[step]
        return self.image("train-gpu" if gpu and family == "train" else family)


@dataclass(frozen=True)
class ResourceSettings:
    """CPU/memory of the heavy steps and whether training gets a GPU, fixed at compile time
    (`tlpipe compile --train-cpu 8 --train-memory 16G --gpu`): requests equal limits."""

    preprocess_cpu: str = "4"
    preprocess_memory: str = "8G"
    train_cpu: str = "8"
    train_memory: str = "16G"
    gpu: bool = False
