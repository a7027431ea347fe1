"""Open each local ROOT file once per process (and thread), for counting and for reading.

Opening a ROOT file is cheap; reading its TTree's metadata is not: the shipped
NanoAOD file (2,656 branches) takes 1.4-1.7 s to give ``f["Events"]``, and uproot then
keeps the parsed tree in the file's object cache (a second ``f["Events"]`` takes 0.1
ms). Counting the entries when the samples are resolved and reading every chunk of
the file each paid that price again when each opened the file anew. :func:`open_root`
keeps the last :data:`MAX_OPEN` files open, per thread (uproot file objects are not
shared between threads), keyed on path, size and modification time, so a file that
changes on disk is opened again; arrays are not cached (``array_cache=None``: memory
stays bounded by what the chunks read). URLs are opened anew every time (a remote
file's version is only known by asking the server). A chunk that fails to read
closes and forgets its file (:func:`forget`), so a retry opens it again.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import uproot

from hepnn.io.remote import is_url

__all__ = ["MAX_OPEN", "count_entries", "forget", "open_root"]

#: Files kept open per thread (a parsed NanoAOD tree holds ~30 MB: the chunks of one file
#: follow each other, so a few suffice; counting does not parse, see count_entries).
MAX_OPEN = 4
#: TTree class versions whose streamed header is TNamed, TAttLine, TAttFill, TAttMarker,
#: then fEntries (ROOT 5.26 to 6.x; uproot's Model_TTree_v16 ... v20).
_HEADER_VERSIONS = range(16, 21)
_INT64 = struct.Struct(">q")

_LOCAL = threading.local()


def _cache() -> OrderedDict[tuple[str, int, int], Any]:
    files = getattr(_LOCAL, "files", None)
    if files is None:
        files = _LOCAL.files = OrderedDict()
    return files


def open_root(path: str | Path, *, timeout: float = 60) -> Any:
    """An open uproot file for ``path``: the same object while the file is unchanged.

    Do not close it (``with`` on it would): it stays open for the next count or chunk.
    A URL gives a new file object each time; close that one yourself.
    """
    name = str(path)
    if is_url(name):
        return uproot.open({name: None}, timeout=timeout)
    st = Path(name).stat()
    key = (name, st.st_size, st.st_mtime_ns)
    files = _cache()
    f = files.get(key)
    if f is not None and not f.closed:
        files.move_to_end(key)
        return f
    f = uproot.open({name: None}, timeout=timeout, array_cache=None)
    files[key] = f
    while len(files) > MAX_OPEN:
        files.popitem(last=False)[1].close()
    return f


def forget(path: str | Path) -> None:
    """Close and drop this thread's open file for ``path`` (after a read failed)."""
    files = _cache()
    for key in [k for k in files if k[0] == str(path)]:
        files.pop(key).close()


def count_entries(f: Any, treename: str) -> int | None:
    """The entries of ``f[treename]`` read from the tree's header only, or None.

    uproot gives ``num_entries`` only after parsing the whole TTree with every branch
    (1.6 s for the shipped 2,656-branch NanoAOD file); the entry count is the first member
    after the tree's four base classes. This decompresses the tree's record and reads
    those bases with uproot's own models, then ``fEntries`` (2 ms). None when the key is
    not a plain ``TTree`` of a known version, or anything is unexpected: the caller then
    parses the tree (the same number, slowly). Tested against ``num_entries`` on every
    shipped ROOT file.
    """
    from uproot.deserialization import numbytes_version

    try:
        key = f.key(treename)
        if key.fClassName != "TTree":
            return None
        chunk, cursor = key.get_uncompressed_chunk_cursor()
        context: dict[str, Any] = {"breadcrumbs": (), "TKey": key}
        _, version, memberwise = numbytes_version(chunk, cursor, context)
        if memberwise or version not in _HEADER_VERSIONS:
            return None
        for base, base_version in (
            ("TNamed", 1),
            ("TAttLine", 2),
            ("TAttFill", 2),
            ("TAttMarker", 2),
        ):
            f.file.class_named(base, base_version).read(
                chunk, cursor, context, f.file, f.file.detached, None
            )
        entries = int(cursor.field(chunk, _INT64, context))
    except Exception:  # any surprise: fall back to uproot's full parse
        return None
    return entries if entries >= 0 else None
