"""The `examples` artifact of docs/DESIGN.md §3: TFRecord shards of `tf.train.Example` plus `schema.json`.

Writing needs no TensorFlow (Spark executors and tests use it as is): an Example is encoded with the
protobuf wire format by hand and framed as TFRecord (length, masked CRC32C, data, masked CRC32C).
Reading uses tf.data (`load_split`), imported lazily.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import google_crc32c

SPLITS = ("train", "val", "test")
SCHEMA_FILE = "schema.json"


# ----- writing (TensorFlow-free) ----------------------------------------------------------------
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature_bytes(value: bytes) -> bytes:
    return _field(1, _field(1, value))  # Feature.bytes_list(1) -> BytesList.value(1)


def _feature_int64(value: int) -> bytes:
    return _field(3, _field(1, _varint(value)))  # Feature.int64_list(3) -> packed Int64List.value(1)


def encode_example(image: bytes, label: int, sha256: bytes) -> bytes:
    """Serialize a tf.train.Example with features `image` (bytes), `label` (int64), `sha256` (bytes)."""
    features = {"image": _feature_bytes(image), "label": _feature_int64(label), "sha256": _feature_bytes(sha256)}
    entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, v)) for k, v in sorted(features.items()))
    return _field(1, entries)  # Example.features(1) -> Features.feature map entries(1)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord: uint64 length, masked CRC32C of the length, the bytes, masked CRC32C of the bytes."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def write_tfrecord(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Write records to `path` atomically (a temporary name, then rename); returns the record count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with open(tmp, "wb") as fh:
        for record in records:
            fh.write(tfrecord_frame(record))
            count += 1
    os.replace(tmp, path)
    return count


def shard_name(index: int) -> str:
    return f"part-{index:05d}.tfrecord"


def write_schema(examples_dir: str | os.PathLike, **fields) -> dict:
    """Write schema.json (image_size, channels, num_examples, classes, num_shards, plus any extra fields)."""
    required = {"image_size", "channels", "num_examples", "classes", "num_shards"}
    missing = required - fields.keys()
    if missing:
        raise ValueError(f"schema.json needs {sorted(missing)}")
    Path(examples_dir, SCHEMA_FILE).write_text(json.dumps(fields, indent=2, sort_keys=True))
    return fields


# ----- reading ----------------------------------------------------------------------------------
def read_schema(examples_dir: str | os.PathLike) -> dict:
    path = Path(examples_dir, SCHEMA_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {examples_dir} is not an `examples` artifact (docs/DESIGN.md §3)")
    return json.loads(path.read_text())


def split_files(examples_dir: str | os.PathLike, split: str) -> list[str]:
    """The shard files of one split, sorted."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = sorted(str(p) for p in Path(examples_dir, split).glob("part-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards for split {split!r} under {examples_dir}")
    return files


def parse_example(serialized):
    """tf.train.Example -> (uint8 image HxWx3, int64 label, sha256 bytes) as tensors."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "sha256": tf.io.FixedLenFeature([], tf.string),
    })
    return decode_jpeg(parsed["image"]), parsed["label"], parsed["sha256"]


def decode_jpeg(data):
    """An example's JPEG bytes (or string tensor) -> its uint8 HxWx3 tensor, decoded as training reads it.

    The served model decodes a request image with this too: another decoder (Pillow's) differs by up to 11
    levels in most pixels, which can change the label.
    """
    import tensorflow as tf

    return tf.io.decode_jpeg(data, channels=3)


def load_split(examples_dir: str | os.PathLike, split: str):
    """A tf.data.Dataset of (image uint8 [S,S,3], label int64) for one split, in file order (unbatched)."""
    import tensorflow as tf

    size = int(read_schema(examples_dir)["image_size"])
    files = split_files(examples_dir, split)
    return tf.data.TFRecordDataset(files).map(
        lambda s: _with_shape(parse_example(s), size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _with_shape(parsed, size: int):
    image, label, _ = parsed
    image.set_shape([size, size, 3])
    return image, label


def iter_records(path: str | os.PathLike) -> Iterator[bytes]:
    """The raw records of one TFRecord file, with both CRCs checked (no TensorFlow)."""
    with open(path, "rb") as fh:
        while header := fh.read(12):
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if _masked_crc(length_bytes) != length_crc:
                raise ValueError(f"{path}: corrupt record length")
            data = fh.read(struct.unpack("<Q", length_bytes)[0])
            if _masked_crc(data) != struct.unpack("<I", fh.read(4))[0]:
                raise ValueError(f"{path}: corrupt record data")
            yield data
