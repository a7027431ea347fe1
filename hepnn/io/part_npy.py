"""ParT / weaver NumPy jet folders: validated reading and conversion to a NanoAOD-like ROOT tree.

>>> jets = read_part_npy("samples/toptag")          # validated arrays
>>> jets.vectors.shape, jets.n_jets
((1600, 4, 128), 1600)
>>> conv = convert_part_npy("samples/toptag", cache_dir)
>>> conv.root_path, conv.treename                    # readable by coffea's Runner
(PosixPath('.../part_3f2a....root'), 'Events')

Folder layout (``<prefix>`` e.g. ``tl``), float32 unless noted, ``P`` slots per jet,
constituents sorted by pT, padded slots 0:

========================  ===========  ===============================================
file                      shape        content
========================  ===========  ===============================================
``<prefix>_pf_vectors``   (N, 4, P)    constituent (px, py, pz, E) in GeV
``<prefix>_pf_points``    (N, 2, P)    (Δη·sign(η_jet), Δφ) w.r.t. the jet axis
``<prefix>_pf_mask``      (N, 1, P)    1 real constituent, 0 padding
``<prefix>_labels``       (N,)         integer class label
========================  ===========  ===============================================

Δη sign convention: ParT (weaver's ``part_deta``) stores
``(η - η_jet) * sign(η_jet)``, i.e. Δη measured *away from the beam-line centre*,
which makes the features symmetric under η → -η. It is **not** the plain Δη. The
converted tree keeps it as ``PFCand_deta`` (verbatim) and also has the absolute
``PFCand_eta`` from the 4-vectors, so the plain Δη is ``PFCand_eta - FatJet_eta``
(checked on the top-tagging folder: ``points[0]`` equals
``(η - η_jet)·sign(η_jet)`` with η_jet from the summed constituents to 4e-7).

The tree (``Events``, one jet per event, written with ``mktree`` so branch names
are NanoAOD's, readable with ``NanoAODSchema`` and by
:func:`hepnn.jets.nanoaod.fatjet_constituents`):

- ``run`` = ``luminosityBlock`` = 1 (uint32; NanoAODSchema requires them),
  ``event`` (uint64, the jet's row in the arrays), ``label`` (int32);
- ``nFatJet`` = 1, ``FatJet_pt/eta/phi/mass`` (sum of the real constituents'
  4-vectors), ``FatJet_nConstituents`` (int32), ``FatJet_label`` (int32);
- ``nPFCand``, ``PFCand_pt/eta/phi/mass/energy`` (from the 4-vector; mass =
  sqrt(max(E² - p², 0))), ``PFCand_deta/dphi`` (the ``pf_points`` verbatim);
- ``nFatJetPFCand``, ``FatJetPFCand_jetIdx`` (0) / ``FatJetPFCand_pfCandIdx``:
  the NanoAOD v15 link table.

Conversions are cached in ``cache_dir`` under the SHA-256 of the four files'
bytes (and :data:`CONVERTER_VERSION`), written to a temporary file and renamed
into place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from hepnn.errors import InputError
from hepnn.files import atomic_path, write_json
from hepnn.io.nano import TREENAME, nano_tree

#: Bump when the converted file's content changes: old cache entries are then ignored.
CONVERTER_VERSION = 1
#: Roles and the expected (channels, ...) of the array files.
ROLES = ("pf_vectors", "pf_points", "pf_mask", "labels")
#: Jets written per ``TTree.extend`` call (bounds memory for big folders).
CHUNK_JETS = 100_000


@dataclass(frozen=True)
class PartJets:
    """Validated arrays of a ParT folder (see the module docstring for shapes)."""

    vectors: np.ndarray
    points: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    files: dict[str, Path]
    prefix: str

    @property
    def n_jets(self) -> int:
        return len(self.labels)

    @property
    def n_slots(self) -> int:
        return self.vectors.shape[2]


@dataclass(frozen=True)
class ConvertedPartNpy:
    """A ParT folder converted into a ROOT file (see :func:`convert_part_npy`)."""

    root_path: Path
    n_events: int
    prefix: str
    sha256: str
    treename: str = TREENAME


def find_files(source: str | os.PathLike[str]) -> tuple[str, dict[str, Path]]:
    """``(prefix, {role: path})`` of a ParT folder, or of the folder of one of its files."""
    src = Path(source)
    if not src.exists():
        msg = f"{src}: no such file or folder"
        raise InputError(msg)
    folder = src if src.is_dir() else src.parent
    if src.is_dir():
        prefixes = sorted(
            p.name[: -len("_pf_vectors.npy")] for p in folder.glob("*_pf_vectors.npy")
        )
    else:
        name = src.name
        role = next((r for r in ROLES if name.endswith(f"_{r}.npy")), None)
        if role is None:
            msg = f"{src}: not a ParT array file (expected <prefix>_{{{','.join(ROLES)}}}.npy)"
            raise InputError(msg)
        prefixes = [name[: -len(f"_{role}.npy")]]
    if len(prefixes) != 1:
        found = ", ".join(prefixes) if prefixes else "none"
        msg = f"{folder}: expected exactly one <prefix>_pf_vectors.npy, found prefixes: {found}"
        raise InputError(msg)
    prefix = prefixes[0]
    files = {role: folder / f"{prefix}_{role}.npy" for role in ROLES}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        msg = f"{folder}: missing ParT file(s): {', '.join(missing)}"
        raise InputError(msg)
    return prefix, files


def _load(path: Path) -> np.ndarray:
    try:
        # allow_pickle=False: a .npy must never execute code; mmap keeps memory flat.
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        msg = f"{path}: not a readable .npy array ({err})"
        raise InputError(msg) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        msg = f"{path}: expected a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}"
        raise InputError(msg)
    return arr


def _first_bad_jet(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


def read_part_npy(source: str | os.PathLike[str], *, chunk_jets: int = CHUNK_JETS) -> PartJets:
    """Read and validate a ParT folder.

    Checks: the four files exist and load without pickles; shapes ``(N, 4, P)``,
    ``(N, 2, P)``, ``(N, 1, P)``, ``(N,)`` with the same ``N`` and ``P``; mask
    only 0/1; no NaN/inf in vectors or points; integer labels; every real
    constituent has pT > 0 (η would be infinite). Values in padded slots are
    ignored (the mask decides).

    Raises
    ------
    InputError
        Naming the file and, for value errors, the first bad jet index.
    """
    prefix, files = find_files(source)
    arrs = {role: _load(path) for role, path in files.items()}
    vec, pts, msk, lab = (arrs[r] for r in ROLES)
    n = vec.shape[0] if vec.ndim == 3 else -1
    p = vec.shape[2] if vec.ndim == 3 else -1
    expected = {
        "pf_vectors": (n, 4, p),
        "pf_points": (n, 2, p),
        "pf_mask": (n, 1, p),
        "labels": (n,),
    }
    if vec.ndim != 3 or vec.shape[1] != 4:
        msg = f"{files['pf_vectors']}: shape {vec.shape}, expected (N, 4, P) = (jets, px/py/pz/E, slots)"
        raise InputError(msg)
    for role, shape in expected.items():
        if arrs[role].shape != shape:
            msg = (
                f"{files[role]}: shape {arrs[role].shape}, expected {shape} "
                f"(N={n} jets and P={p} slots from {files['pf_vectors'].name})"
            )
            raise InputError(msg)
    if lab.dtype.kind == "f" and not (
        np.isfinite(lab).all() and np.array_equal(lab, np.round(lab))
    ):
        j = int(np.flatnonzero(~np.isfinite(lab) | (lab != np.round(lab)))[0])
        msg = f"{files['labels']}: label of jet {j} is {lab[j]!r}, expected an integer"
        raise InputError(msg)
    # Value checks chunk by chunk (the arrays are memory-mapped).
    for start in range(0, n, chunk_jets):
        sl = slice(start, start + chunk_jets)
        m = np.asarray(msk[sl])
        bad = (m != 0) & (m != 1)
        if bad.any():
            j = start + _first_bad_jet(bad)
            msg = f"{files['pf_mask']}: jet {j} has mask values other than 0 and 1"
            raise InputError(msg)
        for role, arr in (("pf_vectors", vec), ("pf_points", pts)):
            a = np.asarray(arr[sl])
            bad = ~np.isfinite(a)
            if bad.any():
                j = start + _first_bad_jet(bad)
                msg = f"{files[role]}: jet {j} has NaN or infinite values"
                raise InputError(msg)
        v = np.asarray(vec[sl])
        zero_pt = (v[:, 0] == 0) & (v[:, 1] == 0) & (m[:, 0] != 0)
        if zero_pt.any():
            j = start + _first_bad_jet(zero_pt)
            msg = f"{files['pf_vectors']}: jet {j} has a real constituent (mask 1) with pT = 0"
            raise InputError(msg)
    return PartJets(vec, pts, msk, np.asarray(lab).astype(np.int64), files, prefix)


def content_hash(files: dict[str, Path]) -> str:
    """SHA-256 over the four files' bytes (role-tagged) and the converter version."""
    h = hashlib.sha256(f"hepnn-part-npy-v{CONVERTER_VERSION}".encode())
    for role in ROLES:
        h.update(f"\0{role}\0".encode())
        with files[role].open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _jet_columns(
    vectors: np.ndarray, points: np.ndarray, mask: np.ndarray, labels: np.ndarray, first: int
) -> dict[str, Any]:
    """Branch contents (awkward) for one chunk of jets."""
    m = mask[:, 0, :] != 0
    counts = m.sum(axis=1)
    v = vectors.astype(np.float64)
    px, py, pz, e = (v[:, i][m] for i in range(4))
    pt = np.hypot(px, py)
    p2 = px * px + py * py + pz * pz
    cand = {
        "pt": pt,
        "eta": np.arcsinh(pz / pt),
        "phi": np.arctan2(py, px),
        "mass": np.sqrt(np.maximum(e * e - p2, 0.0)),
        "energy": e,
        "deta": points[:, 0][m].astype(np.float64),
        "dphi": points[:, 1][m].astype(np.float64),
    }
    jv = np.where(m[:, None, :], v, 0.0).sum(axis=2)  # (N, 4) summed 4-vector
    jpt = np.hypot(jv[:, 0], jv[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        jeta = np.where(jpt > 0, np.arcsinh(jv[:, 2] / np.where(jpt > 0, jpt, 1.0)), 0.0)
    jmass = np.sqrt(np.maximum(jv[:, 3] ** 2 - (jv[:, :3] ** 2).sum(axis=1), 0.0))
    one = np.ones(len(counts), dtype=np.int64)
    starts = np.cumsum(counts) - counts
    local_index = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    lab = labels.astype(np.int32)

    def jag(x: np.ndarray, c: np.ndarray, dtype: Any) -> ak.Array:
        return ak.unflatten(x.astype(dtype), c)

    return {
        # NanoAODSchema insists on the event-ID triplet; MC convention run = lumi = 1.
        "run": np.ones(len(counts), dtype=np.uint32),
        "luminosityBlock": np.ones(len(counts), dtype=np.uint32),
        "event": np.arange(first, first + len(counts), dtype=np.uint64),
        "label": lab,
        "FatJet": ak.zip(
            {
                "pt": jag(jpt, one, np.float32),
                "eta": jag(jeta, one, np.float32),
                "phi": jag(np.arctan2(jv[:, 1], jv[:, 0]), one, np.float32),
                "mass": jag(jmass, one, np.float32),
                "nConstituents": jag(counts, one, np.int32),
                "label": jag(lab, one, np.int32),
            }
        ),
        "PFCand": ak.zip({k: jag(x, counts, np.float32) for k, x in cand.items()}),
        "FatJetPFCand": ak.zip(
            {
                "jetIdx": jag(np.zeros(int(counts.sum())), counts, np.int32),
                "pfCandIdx": jag(local_index, counts, np.int32),
            }
        ),
    }


def convert_part_npy(
    source: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    chunk_jets: int = CHUNK_JETS,
) -> ConvertedPartNpy:
    """Convert a ParT folder into a NanoAOD-like ROOT ``Events`` tree, once per content.

    Parameters
    ----------
    source
        The folder (or one of its ``.npy`` files).
    cache_dir
        Directory for converted files (created if needed); the file is
        ``part_<sha256[:16]>.root`` with a JSON sidecar.
    chunk_jets
        Jets per ``extend`` call (memory bound; does not change the content).

    Returns
    -------
    ConvertedPartNpy
    """
    if chunk_jets < 1:
        msg = f"chunk_jets must be >= 1, got {chunk_jets}"
        raise ValueError(msg)
    prefix, files = find_files(source)
    digest = content_hash(files)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    root_path = cache / f"part_{digest[:16]}.root"
    meta_path = cache / f"part_{digest[:16]}.json"
    cached = _cached(root_path, meta_path, digest)
    if cached is not None:
        return cached

    jets = read_part_npy(source, chunk_jets=chunk_jets)
    with atomic_path(root_path) as tmp, uproot.recreate(tmp) as f:
        tree = None
        for start in range(0, jets.n_jets, chunk_jets):
            sl = slice(start, start + chunk_jets)
            cols = _jet_columns(
                np.asarray(jets.vectors[sl]),
                np.asarray(jets.points[sl]),
                np.asarray(jets.mask[sl]),
                jets.labels[sl],
                start,
            )
            if tree is None:
                tree = nano_tree(f, cols)
            tree.extend(cols)
        if tree is None:
            msg = f"{files['labels']}: no jets"
            raise InputError(msg)
    meta = {
        "converter_version": CONVERTER_VERSION,
        "sha256": digest,
        "prefix": prefix,
        "source": str(Path(source).resolve()),
        "n_events": jets.n_jets,
        "treename": TREENAME,
    }
    write_json(meta_path, meta)
    return ConvertedPartNpy(root_path, jets.n_jets, prefix, digest)


def _cached(root_path: Path, meta_path: Path, digest: str) -> ConvertedPartNpy | None:
    if not (root_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("sha256") != digest or meta.get("converter_version") != CONVERTER_VERSION:
            return None
        return ConvertedPartNpy(root_path, int(meta["n_events"]), str(meta["prefix"]), digest)
    except (OSError, ValueError, KeyError, TypeError):
        return None
