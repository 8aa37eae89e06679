"""Listing the prefix page by page and reading every object in a bounded thread pool (docs/DESIGN.md §1).

Each listed key becomes a `Listed` record: its label from the class folder, the `ImageInfo` of its bytes, or
the reason it is rejected; hidden and system files (`is_ignored`, shared with upload) are only counted. Memory
holds one small record per object; at most 4×max_workers are queued, and the images being decoded hold at most
`memory_budget_mb` (their encoded bytes plus `imaging.decode_bytes`, estimated from the header before decoding).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice

from minio import Minio
from minio.error import S3Error
from PIL import Image

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.log import get_logger
from tlpipe.components.ingest.imaging import ImageInfo, RejectedObject, inspect_image

log = get_logger("ingest")

LIST_PAGE = 1000
M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter
# System files and folders that are not data (names compared case-insensitively), besides names starting with ".".
SYSTEM_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})


def is_ignored(parts: Sequence[str]) -> bool:
    """True for a path (its names below the dataset root) with a hidden name (starting with '.', other than '.' and
    '..' themselves, which are unsafe) or a SYSTEM_NAMES one: never uploaded, never listed as data, only counted."""
    return any((p.startswith(".") and p not in (".", "..")) or p.casefold() in SYSTEM_NAMES for p in parts)


class MemoryBudget:
    """Bytes that the readers may hold at once. `hold(n)` waits its turn (first come, first served) until n more
    bytes fit; a request larger than the whole budget waits until nothing else is held, then runs alone."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._turns: deque[object] = deque()
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        n = min(n, self.limit)
        turn = object()
        with self._cond:
            self._turns.append(turn)
            self._cond.wait_for(lambda: self._turns[0] is turn and self.used + n <= self.limit)
            self._turns.popleft()
            self.used += n
            self._cond.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


def mmap_large_allocations() -> None:
    """Have glibc mmap every allocation of 1 MiB or more, so that freeing a decoded image returns it to the OS at once.

    By default the threshold rises as large blocks are freed (up to 32 MB), and Pillow's 16 MB blocks then stay in the
    malloc arena of the thread that freed them, up to one image per thread: 4 huge PNGs decoded one after another in
    4 threads peaked at 1.06 GB, 0.38 GB with this. A no-op where the C library is not glibc.
    """
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 2**20)
    except (OSError, AttributeError):
        pass


@dataclass
class Listed:
    key: str
    size: int
    label: str = ""
    info: ImageInfo | None = None
    reason: str = ""
    detail: str = ""


def iter_listing(s3: Minio, endpoint: str, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under `prefix`, one page at a time; a failed page is retried from the last key."""
    last = None
    while True:
        page = s3lib.retry(
            lambda after=last: list(islice(s3.list_objects(bucket, prefix=prefix, recursive=True, start_after=after),
                                           LIST_PAGE)),
            what=f"list s3://{bucket}/{prefix}", endpoint=endpoint, bucket=bucket)
        for obj in page:
            yield obj.object_name, obj.size or 0
        if len(page) < LIST_PAGE:
            return
        last = page[-1].object_name


def _check_object(s3: Minio, endpoint: str, bucket: str, item: Listed, max_image_pixels: int,
                  budget: MemoryBudget) -> Listed:
    try:
        data = s3lib.read_object(s3, bucket, item.key, endpoint=endpoint)
    except S3Error as exc:
        if exc.code != "NoSuchKey":
            raise
        item.reason, item.detail = "vanished", "listed but gone when read (deleted during ingest?)"
        return item
    item.size = len(data)  # the bytes actually hashed, even if the object was replaced after listing
    try:
        item.info = inspect_image(data, max_image_pixels, lambda n: budget.hold(len(data) + n))
    except RejectedObject as exc:
        item.reason, item.detail = exc.reason, str(exc)
    return item


def _classify(item: Listed, prefix: str, max_object_bytes: int) -> bool:
    """Set the label from the key, or a rejection that needs no read; True if the object must be read."""
    parts = item.key[len(prefix):].split("/")
    if any(part in (".", "..") for part in parts):
        item.reason, item.detail = "unsafe_key", "key has a '.' or '..' path segment (could escape a local folder)"
    elif len(parts) < 2:
        item.reason, item.detail = "not_in_class_folder", "object directly under the prefix, not in a <class>/ folder"
    elif not parts[0]:
        item.reason, item.detail = "bad_class_folder", "empty class folder name (a '//' in the key)"
    elif item.size > max_object_bytes:
        item.reason, item.detail = "too_large", f"{item.size:,} bytes exceeds max_object_bytes={max_object_bytes:,}"
    else:
        item.label = parts[0]
        return True
    return False


def read_all(s3: Minio, endpoint: str, bucket: str, prefix: str, max_workers: int, max_object_bytes: int,
             max_image_pixels: int, memory_budget_mb: int) -> tuple[list[Listed], int, int]:
    """Stream the listing into a bounded pool that reads and checks each object.

    Returns (items, folder markers, ignored hidden/system objects); neither of the last two is in `items`.
    """
    if not s3lib.retry(lambda: s3.bucket_exists(bucket), what=f"check bucket {bucket}", endpoint=endpoint,
                       bucket=bucket):
        raise s3lib.S3AccessError(f"S3 at {endpoint} refused bucket {bucket!r}: bucket does not exist (NoSuchBucket)")
    items: list[Listed] = []
    markers = ignored = 0
    budget = MemoryBudget(memory_budget_mb * 2**20)
    pending: set[Future] = set()
    done_count = 0
    last_log = time.monotonic()
    started = last_log
    mmap_large_allocations()
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # inspect_image applies max_image_pixels itself, before decoding
    try:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ingest") as pool:
            def drain(block_until: int) -> None:
                nonlocal pending, done_count, last_log
                while len(pending) > block_until:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()  # re-raises S3 access errors at once
                    done_count += len(finished)
                    if time.monotonic() - last_log > 5:
                        last_log = time.monotonic()
                        log.info("checked %d of %d listed objects (%.0f/s)", done_count, len(items),
                                 done_count / (last_log - started))

            try:
                for key, size in iter_listing(s3, endpoint, bucket, prefix):
                    if key.endswith("/"):
                        markers += 1  # a "folder" placeholder some tools create, not an object
                        continue
                    if is_ignored(key[len(prefix):].split("/")):
                        ignored += 1
                        continue
                    item = Listed(key, size)
                    items.append(item)
                    if _classify(item, prefix, max_object_bytes):
                        pending.add(pool.submit(_check_object, s3, endpoint, bucket, item, max_image_pixels,
                                                budget))
                        drain(4 * max_workers)
                drain(0)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    if ignored:
        log.info("ignored %d hidden or system objects (names starting with '.', %s)", ignored,
                 ", ".join(sorted(SYSTEM_NAMES)))
    return items, markers, ignored
