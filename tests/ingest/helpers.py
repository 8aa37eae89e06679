"""Shared helpers of the ingest tests: images as bytes, PUTs, a fault-injecting S3 proxy."""

from __future__ import annotations

import http.client
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from PIL import Image

from tlpipe.components.common.synthetic import class_image


def image_bytes(class_index: int, seed: int, fmt: str = "PNG", size: int = 64, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    class_image(class_index, 3, seed, size).convert(mode).save(buf, fmt)
    return buf.getvalue()


def put(s3, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(bucket, key, io.BytesIO(data), len(data))


def put_dataset(s3, bucket: str, prefix: str, classes: int = 3, per_class: int = 6, order=None) -> dict[str, bytes]:
    """A clean class-folder dataset of distinct PNGs; `order` can permute the upload order."""
    objects = {f"{prefix}/class_{k}/img_{i:03d}.png": image_bytes(k, 100 * k + i)
               for k in range(classes) for i in range(per_class)}
    keys = order(list(objects)) if order else list(objects)
    for key in keys:
        put(s3, bucket, key, objects[key])
    return objects


def flipped(data: bytes, transpose: Image.Transpose) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        buf = io.BytesIO()
        img.transpose(transpose).save(buf, "PNG")
    return buf.getvalue()


class FaultyProxy:
    """A real HTTP proxy in front of an S3 endpoint that answers every `every`-th request (0: none) with 503
    SlowDown, and every request whose path contains `deny` (when given) with 403 AccessDenied.

    Requests are forwarded verbatim (Host header included, so SigV4 signatures stay valid).
    """

    def __init__(self, upstream: str, every: int = 5, deny: str = ""):
        self.upstream = urlparse(upstream)
        self.every = every
        self.deny = deny
        self.requests = 0
        self.injected = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests += 1
                    fail = bool(proxy.every) and proxy.requests % proxy.every == 0
                    denied = bool(proxy.deny) and proxy.deny in self.path
                    proxy.injected += fail or denied
                if fail or denied:
                    code = b"AccessDenied" if denied else b"SlowDown"
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>' + code + b"</Code>"
                               b"<Message>injected fault</Message></Error>")
                    self.send_response(403 if denied else 503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        conn.putheader(name, value)
                    conn.endheaders(body or None)
                    response = conn.getresponse()
                    payload = response.read()
                finally:
                    conn.close()
                self.send_response(response.status, response.reason)
                dropped = ("transfer-encoding", "connection") + (() if self.command == "HEAD" else ("content-length",))
                for name, value in response.getheaders():
                    if name.lower() not in dropped:
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)
