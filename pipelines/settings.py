"""The one place where container images are named: change the registry prefix and tag here (or with
`tlpipe compile --image-prefix/--image-tag`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

# Image family of each pipeline step (Dockerfiles in docker/<family>/).
STEP_IMAGE_FAMILY = {
    "ingest": "base",
    "preprocess": "spark",
    "tune": "train",
    "train-frozen": "train",
    "finetune": "train",
    "train-scratch": "train",
    "validate-parameters": "base",
    "evaluate": "train",
    "register": "train",
    "deploy": "base",  # mlflow, kubernetes and the kserve SDK's models (requirements-nodeps.txt) are in base-deps
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


# Kubernetes quantities as KFP accepts them: CPU in cores ("2", "1.5") or millicores ("500m"); memory as an
# integer with a unit, binary (Ki, Mi, Gi, Ti, Pi, Ei: powers of 1024) or decimal (K, M, G, T, P, E: powers of
# 1000; KFP wants "K" where Kubernetes writes "k"). KFP reads a bare number as bytes and refuses decimals.
CPU_QUANTITY = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+|[0-9]+m)$")
MEMORY_QUANTITY = re.compile(r"^[0-9]+(?:[KMGTPE]i|[KMGTPE])$")


def check_cpu(flag: str, value: str) -> str:
    """`value` if it is a CPU quantity above zero, else a ValueError naming `flag`."""
    value = str(value).strip()
    if not CPU_QUANTITY.match(value) or float(value.rstrip("m")) <= 0:
        raise ValueError(f"{flag} {value!r}: CPU is a number of cores above 0, e.g. 2, 1.5 or 500m")
    return value


def check_memory(flag: str, value: str) -> str:
    """`value` if it is a memory quantity with a unit, else a ValueError naming `flag` and saying what to write."""
    value = str(value).strip()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", value):
        raise ValueError(f"{flag} {value}: memory needs a unit, e.g. {value}Gi or {value}G")
    if re.fullmatch(r"[0-9]*\.[0-9]+(?:[KMGTPE]i?)", value):
        raise ValueError(f"{flag} {value}: KFP takes whole numbers only, e.g. 1536Mi for 1.5Gi")
    if value.endswith("k"):
        raise ValueError(f"{flag} {value}: write kilobytes as {value[:-1]}K or {value[:-1]}Ki (KFP wants a capital K)")
    if not MEMORY_QUANTITY.match(value) or not int(re.match(r"[0-9]+", value).group()):
        raise ValueError(f"{flag} {value!r}: memory is a whole number with a unit above 0, e.g. 16Gi, 512Mi or 16G")
    return value


# The deploy step only talks to the MLflow and Kubernetes APIs (about 220 MB resident): a fixed small size.
DEPLOY_CPU, DEPLOY_MEMORY = "500m", "1Gi"


@dataclass(frozen=True)
class ResourceSettings:
    """CPU/memory of the steps that get requests, and whether training gets a GPU, fixed at compile time
    (`tlpipe compile --train-cpu 8 --train-memory 16Gi --gpu`): requests equal limits. Values are
    Kubernetes quantities (CPU_QUANTITY, MEMORY_QUANTITY above); each field is the flag of the same name."""

    preprocess_cpu: str = "4"
    preprocess_memory: str = "8G"
    train_cpu: str = "8"
    train_memory: str = "16G"
    evaluate_cpu: str = "2"
    evaluate_memory: str = "4Gi"
    register_cpu: str = "2"
    register_memory: str = "4Gi"
    gpu: bool = False

    def __post_init__(self):
        for f in fields(self):
            flag = "--" + f.name.replace("_", "-")
            if f.name.endswith("_cpu"):
                object.__setattr__(self, f.name, check_cpu(flag, getattr(self, f.name)))
            elif f.name.endswith("_memory"):
                object.__setattr__(self, f.name, check_memory(flag, getattr(self, f.name)))
