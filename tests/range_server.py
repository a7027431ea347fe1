"""A small threaded HTTP server with byte ranges, started by the tests that read URLs.

Serves a folder read-only: ``HEAD`` and ``GET`` with ``Content-Length``, ``ETag``,
``Last-Modified`` and ``Accept-Ranges``, and single ``Range: bytes=a-b`` requests
answered with ``206`` (what uproot's fsspec source and fsspec's ``HTTPFileSystem``
send). Faults for the tests: ``server.fail_ranges[name] = (k, n)`` lets the next ``k``
range requests for that file through and answers the ``n`` after them with ``503``; every request is logged in
``server.log`` as ``(method, path, range header)``.
"""

from __future__ import annotations

import email.utils
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root).resolve()
        self.fail_ranges: dict[str, tuple[int, int]] = {}
        self.log: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def _file(self) -> Path | None:
        rel = unquote(urlparse(self.path).path).lstrip("/")
        path = (self.server.root / rel).resolve()
        if self.server.root not in path.parents or not path.is_file():
            return None
        return path

    def _empty(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _headers(self, code: int, path: Path, length: int) -> None:
        st = path.stat()
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))

    def do_HEAD(self) -> None:
        with self.server.lock:
            self.server.log.append(("HEAD", self.path, ""))
        path = self._file()
        if path is None:
            self._empty(404)
            return
        self._headers(200, path, path.stat().st_size)
        self.end_headers()

    def do_GET(self) -> None:
        header = self.headers.get("Range", "")
        with self.server.lock:
            self.server.log.append(("GET", self.path, header))
        path = self._file()
        if path is None:
            self._empty(404)
            return
        size = path.stat().st_size
        m = _RANGE.match(header.strip())
        if header and m:
            with self.server.lock:
                skip, left = self.server.fail_ranges.get(path.name, (0, 0))
                if skip:
                    self.server.fail_ranges[path.name] = (skip - 1, left)
                elif left:
                    self.server.fail_ranges[path.name] = (0, left - 1)
            if left and not skip:
                self._empty(503)
                return
            a, b = m.groups()
            if a == "":  # suffix range: the last b bytes
                start, stop = max(0, size - int(b)), size
            else:
                start, stop = int(a), min(size, int(b) + 1 if b else size)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._headers(206, path, stop - start)
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            self.end_headers()
            with path.open("rb") as fh:
                fh.seek(start)
                self.wfile.write(fh.read(stop - start))
            return
        self._headers(200, path, size)
        self.end_headers()
        self.wfile.write(path.read_bytes())


@contextmanager
def serve(root: Path) -> Iterator[RangeServer]:
    """A :class:`RangeServer` on a free port of 127.0.0.1, serving ``root``, stopped after."""
    server = RangeServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
