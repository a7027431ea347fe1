"""Remote inputs: ``root://``, ``http(s)://`` and ``file://`` URLs beside local paths.

A samples file or a coffea fileset may name files by URL. ROOT files are read by
uproot's fsspec source (``http(s)://`` through ``aiohttp``, ``root://`` through the
``fsspec-xrootd`` plugin of the ``xrootd`` extra), chunk by chunk like a local file,
with the same retries and skip accounting (:mod:`hepnn.execution`). ``file://`` URLs
are turned into local paths when the samples file is read.

What identifies a file for checkpoints and training digests
(:func:`file_identity`): a local file's size and modification time; a URL's size
and whatever the server says about its version (``ETag``, ``Last-Modified``,
XRootD's ``mtime``), so a file changed on the server gets new keys. A URL is
never passed to :func:`os.stat`.

Checks and downloads give up after :data:`TIMEOUT` seconds without an answer (aiohttp
would wait 300 s; the XRootD client forever).

A CSV given by URL (format ``higgs-csv``) is downloaded once into the cache
(:func:`fetch_to_cache`), checked against the size the server announced, and then
converted like a local file.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from hepnn.errors import InputError

#: URL schemes accepted in samples files and filesets.
SCHEMES = ("root", "http", "https", "file")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: Bytes per read when a file is downloaded into the cache.
DOWNLOAD_BLOCK = 1 << 20


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is written as a URL (``scheme://...``); a :class:`Path` never is."""
    return isinstance(path, str) and _URL.match(path) is not None


def url_scheme(url: str) -> str:
    """The lower-case scheme of a URL (``"https"``), ``""`` for a path."""
    m = _URL.match(url)
    return m.group(1).lower() if m else ""


def file_url_path(url: str) -> Path:
    """The local path of a ``file://`` URL (``file:///abs/x.root`` or ``file://localhost/...``).

    Raises
    ------
    InputError
        A ``file://`` URL naming another host.
    """
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        msg = f"{url}: a file:// URL must name a local path (file:///abs/path), not host {parsed.netloc!r}"
        raise InputError(msg)
    return Path(unquote(parsed.path))


def check_scheme(url: str) -> None:
    """Refuse a URL scheme hepnn cannot read, with the extra that would read it.

    Raises
    ------
    InputError
        Unknown scheme, or the package that reads it is not installed.
    """
    scheme = url_scheme(url)
    if scheme not in SCHEMES:
        msg = f"{url}: unsupported URL scheme {scheme!r} (use {', '.join(s + '://' for s in SCHEMES)})"
        raise InputError(msg)
    if scheme == "root":
        try:
            import fsspec_xrootd  # noqa: F401
        except ImportError:
            msg = f"{url}: reading root:// URLs needs fsspec-xrootd: pip install 'hepnn[xrootd]'"
            raise InputError(msg) from None
    elif scheme in ("http", "https"):
        try:
            import aiohttp  # noqa: F401
        except ImportError:  # pragma: no cover - aiohttp is a dependency
            msg = f"{url}: reading http(s):// URLs needs aiohttp: pip install aiohttp"
            raise InputError(msg) from None


#: Seconds before a check or a download of a URL gives up (aiohttp's default is 300).
TIMEOUT = 60


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    scheme = url_scheme(url)
    if scheme in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=TIMEOUT, sock_read=TIMEOUT)
        return fsspec.core.url_to_fs(url, client_kwargs={"timeout": timeout})
    if scheme == "root":
        return fsspec.core.url_to_fs(url, timeout=TIMEOUT)
    return fsspec.core.url_to_fs(url)


def describe_error(err: BaseException) -> str:
    """``Type: first line`` of an exception (unwrapping fsspec/aiohttp wrappers), short."""
    text = " ".join(str(err).split())
    status = getattr(err, "status", None)
    if status is not None and str(status) not in text:
        text = f"HTTP {status} {text}".strip()
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


@functools.lru_cache(maxsize=1024)
def remote_info(url: str) -> tuple[int, str]:
    """``(size in bytes, version tag)`` of a URL, asked from its server once per process.

    The version tag joins what the server gives (``ETag``, ``Last-Modified``, XRootD's
    ``mtime``); it is empty when the server gives none (the URL and size then identify
    the file).

    Raises
    ------
    InputError
        One line naming the URL and what failed (unreachable host, 404, no size...).
    """
    check_scheme(url)
    try:
        fs, path = _filesystem(url)
        info = fs.info(path)
    except FileNotFoundError as err:
        cause = err.__cause__ or err.__context__  # fsspec's http wraps every failure so
        status = getattr(cause, "status", None)
        if cause is None or status == 404 or isinstance(cause, FileNotFoundError):
            msg = f"{url}: cannot open: not found on the server"
        else:
            msg = f"{url}: cannot open ({describe_error(cause)})"
        raise InputError(msg) from None
    except Exception as err:  # aiohttp / XRootD raise many types for a network failure
        msg = f"{url}: cannot open ({describe_error(err)})"
        raise InputError(msg) from None
    size = info.get("size")
    if size is None:
        msg = f"{url}: cannot open: the server gives no size (Content-Length) for it"
        raise InputError(msg)
    if info.get("type", "file") == "directory":
        msg = f"{url}: is a directory, expected a file"
        raise InputError(msg)
    tags = [
        f"{k}={info[k]}" for k in ("ETag", "Last-Modified", "Content-MD5", "mtime") if info.get(k)
    ]
    return int(size), ";".join(tags)


def file_identity(path: str | Path) -> tuple[int, int | str]:
    """``(size, version)`` of a local file (mtime in ns) or a URL (:func:`remote_info`).

    Used for checkpoint keys and the cache of training-input digests.
    """
    if is_url(path):
        return remote_info(str(path))
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns


def url_digest(url: str) -> str:
    """sha256 identifying a URL's content without reading it: URL, size and version tag."""
    size, tag = remote_info(url)
    return hashlib.sha256(f"{url}\0{size}\0{tag}".encode()).hexdigest()


def fetch_to_cache(url: str, cache_dir: Path) -> Path:
    """Download a URL once into ``cache_dir/downloads`` (streamed), checked by size.

    The cached copy is named by the URL and the server's size and version tag, so a
    file changed on the server is fetched again; an interrupted download never leaves
    a file under the final name.

    Raises
    ------
    InputError
        The URL cannot be opened, or fewer/more bytes arrived than the server announced.
    """
    size, _ = remote_info(url)
    name = Path(urlparse(url).path).name or "download"
    folder = Path(cache_dir) / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{url_digest(url)[:16]}-{name}"
    if target.is_file() and target.stat().st_size == size:
        return target
    tmp = target.with_name(target.name + ".part")
    got = 0
    try:
        fs, path = _filesystem(url)
        with fs.open(path, "rb", block_size=DOWNLOAD_BLOCK) as src, tmp.open("wb") as dst:
            while block := src.read(DOWNLOAD_BLOCK):
                dst.write(block)
                got += len(block)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        msg = f"{url}: download failed after {got} of {size} bytes ({describe_error(err)})"
        raise InputError(msg) from None
    if got != size:
        tmp.unlink(missing_ok=True)
        msg = f"{url}: download incomplete: {got} bytes received, the server announced {size}"
        raise InputError(msg)
    tmp.replace(target)
    return target
