"""The resumable per-epoch checkpoint of a stage: `<out>/checkpoint/`, optionally mirrored under an s3:// prefix.

The folder holds the last epoch's weights (with optimizer state), the best epoch's weights, the feature cache
and `state.json` (history, early-stopping state, MLflow run id, the fingerprint of the parameters), written
last. KFP uploads an output artifact only when its step succeeds, so a retried pod on a fresh disk resumes
from the S3 mirror.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from tlpipe.components.common.log import get_logger
from tlpipe.components.train.params import TrainParams

log = get_logger("train")

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"


def checkpoint_uri_for(artifact_uri: str) -> str | None:
    """`<artifact>/checkpoint` for an artifact stored in S3 (s3://), else None (a local disk)."""
    return f"{artifact_uri.rstrip('/')}/{CHECKPOINT_DIR}" if artifact_uri.startswith("s3://") else None


def fingerprint(stage: str, params: TrainParams, classes: list[str], image_size: int) -> dict:
    """What a checkpoint must have been made with to be resumed."""
    return {"stage": stage, "params": json.loads(json.dumps(asdict(params))), "classes": classes,
            "image_size": image_size}


class Checkpoint:
    """The checkpoint folder of one stage run (and its S3 mirror when `checkpoint_uri` is given)."""

    def __init__(self, out_dir: Path, checkpoint_uri: str | None = None):
        self.folder = Path(out_dir) / CHECKPOINT_DIR
        self.mirror = CheckpointMirror(checkpoint_uri) if checkpoint_uri else None

    def load(self, model, fingerprint: dict, epochs: int) -> dict:
        """The last finished epoch's state (its weights loaded into `model`), or a fresh one.

        A checkpoint made with another fingerprint is discarded.
        """
        fresh = {"epoch": 0, "history": [], "best": None, "best_epoch": -1, "wait": 0,
                 "mlflow_run_id": None, "fingerprint": fingerprint, "resumed_from_epoch": 0}
        state_file = self.folder / STATE_FILE
        if not state_file.exists() and self.mirror:
            self.mirror.restore(self.folder)
        if not state_file.exists():
            return fresh
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != fresh["fingerprint"]:
            log.warning("checkpoint in %s was made with other parameters: starting over", self.folder)
            shutil.rmtree(self.folder)
            return fresh
        model.load_weights(self.folder / state["last_weights"])
        state["resumed_from_epoch"] = state["epoch"]
        log.info("resuming %s after epoch %d of %d from %s", fingerprint["stage"], state["epoch"], epochs,
                 self.folder)
        return state

    def save(self, model, state: dict, improved: bool) -> None:
        """Write this epoch's weights (and the best ones), then the state naming them; drop older files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        epoch = state["epoch"]
        last = f"epoch-{epoch:04d}.weights.h5"
        model.save_weights(self.folder / last)
        if improved:
            state["best_weights"] = f"best-{epoch:04d}.weights.h5"
            shutil.copyfile(self.folder / last, self.folder / state["best_weights"])
        state["last_weights"] = last
        tmp = self.folder / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.folder / STATE_FILE)
        keep = {last, state.get("best_weights"), STATE_FILE}
        for path in self.folder.glob("*.weights.h5"):
            if path.name not in keep:
                path.unlink()
        if self.mirror:
            self.mirror.push(self.folder)

    def load_best(self, model, state: dict) -> None:
        model.load_weights(self.folder / state["best_weights"])

    def remove(self) -> None:
        """The stage finished: drop the folder and the mirror."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.mirror:
            self.mirror.remove()


class CheckpointMirror:
    """A copy of the checkpoint folder under an s3:// prefix: a retried pod starts on an empty disk."""

    def __init__(self, uri: str):
        from tlpipe.components.common import s3 as s3lib

        if not s3lib.is_s3_uri(uri):
            raise ValueError(f"checkpoint_uri must be an s3:// URI, got {uri!r}")
        self.s3lib, self.uri, self.client = s3lib, uri.rstrip("/"), s3lib.client()
        self.pushed: set[str] = set()

    def _names(self) -> dict[str, str]:
        return {key.rsplit("/", 1)[-1]: key for key in self.s3lib.iter_keys(self.client, self.uri + "/")}

    def restore(self, folder: Path) -> None:
        """Download the mirrored checkpoint when it is complete (its state.json is written last)."""
        if STATE_FILE in self._names():
            count = self.s3lib.download_dir(self.client, self.uri, folder)
            self.pushed = {p.name for p in folder.iterdir()}
            log.info("checkpoint: restored %d files from %s", count, self.uri)

    def push(self, folder: Path) -> None:
        """Upload new files, then state.json, then delete what the folder no longer holds."""
        files = {p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".tmp")}
        for name in sorted(files - self.pushed - {STATE_FILE}) + [STATE_FILE]:
            self.s3lib.upload_file(self.client, folder / name, f"{self.uri}/{name}")
        self.pushed = files
        self.remove(keep=files)

    def remove(self, keep: set[str] = frozenset()) -> None:
        bucket = self.s3lib.split_uri(self.uri)[0]
        for name, key in self._names().items():
            if name not in keep:
                self.client.remove_object(bucket, key)
