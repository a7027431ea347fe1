"""Build ``review/`` for the networks of a run: GoF against data, overtraining, the document.

>>> block, files = write_review(cfg, networks, reader, outdir, formats=("png",))
>>> block["dnn"]["overtraining"]["flagged"]

Datasets with ``metadata: {is_data: true}`` are **data**; every other dataset is
simulation (weighted by the network's ``weight`` branch when the files have it).
Data are never trained on and never enter the network metrics (see
:mod:`hepnn.nets.data`). With ``review.pseudo_data`` the comparison is made with
pseudo-data drawn from the simulation instead (:mod:`hepnn.review.pseudo`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepnn.errors import ConfigError, InputError
from hepnn.files import atomic_text, write_json
from hepnn.nets.apply import get_network
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.inputs import make_builder
from hepnn.review.gof import GofResult, Sample, Term, read_ranking, term_gof
from hepnn.review.overtraining import overtraining_test, plot_overtraining
from hepnn.review.plots import file_stem, plot_term
from hepnn.review.pseudo import pseudo_data

if TYPE_CHECKING:
    from hepnn.config import Config, ReviewConfig
    from hepnn.nets.data import DataReader
    from hepnn.nets.lifecycle import PreparedNetwork
    from hepnn.nets.spec import NetworkSpec
    from hepnn.nets.store import LoadedNetwork
    from hepnn.samples import Dataset

#: Columns of ``review/gof.csv`` (the first six are stable).
GOF_COLUMNS = ("term", "order", "rank", "chi2", "ndf", "p_value", "n_bins", "n_data", "n_sim",
               "defined_data", "defined_sim", "flagged", "network")  # fmt: skip


def is_data(dataset: Dataset) -> bool:
    """A dataset is collision data when its samples entry says ``metadata: {is_data: true}``."""
    return bool(dataset.metadata.get("is_data", False))


@dataclass
class NetworkReview:
    """Everything ``review/README.md`` says about one network."""

    name: str
    meta: dict[str, Any]
    terms_from: str = ""
    compared_with: str = ""
    gof: list[GofResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (term, reason)
    gof_note: str = ""
    overtraining: dict[str, Any] | None = None
    overtraining_note: str = ""
    plots: dict[str, str] = field(default_factory=dict)  # term / "overtraining" -> file name


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=GOF_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _samples(
    name: str, spec: NetworkSpec, reader: DataReader, settings: ReviewConfig, seed: int
) -> tuple[Sample, Sample, str] | str:
    """(simulation, data, what the data are), or why there is nothing to compare.

    The simulation is the network's own training rows (read once per run by the
    :class:`~hepnn.nets.data.DataReader`: every non-data dataset unless the network
    names its ``datasets``); data rows are read from the ``is_data`` datasets.
    """
    features = list(spec.inputs.features)
    train = reader.training_data(name, spec)
    w = train.weights if train.weights is not None else np.ones(len(train))
    sim = Sample(train.raw, features, w)
    pd = settings.pseudo_data
    if pd is not None:
        mm = pd.mismodel
        rest, data = pseudo_data(
            sim, train.ids, fraction=pd.fraction, seed=seed if pd.seed is None else pd.seed,
            feature=mm.feature if mm else None, scale=mm.scale if mm else 1.0,
            shift=mm.shift if mm else 0.0,
        )  # fmt: skip
        what = "pseudo-data"
        if mm is not None and (mm.scale != 1.0 or mm.shift != 0.0):
            what += f" ({mm.feature} → {mm.scale:g} · {mm.feature} + {mm.shift:g}, deliberately mismodelled)"
        else:
            what += " (no input mismodelled: every flag is a false alarm)"
        return rest, data, what
    data_names = [n for n, d in reader.datasets.items() if is_data(d)]
    if not data_names:
        return "no data: mark collision-data datasets with metadata: {is_data: true}, or configure review.pseudo_data"
    builder = make_builder(spec.inputs)
    raw = builder.raw(reader.read_columns(data_names, features, []))
    return sim, Sample(raw, features, np.ones(len(raw))), "data (" + ", ".join(data_names) + ")"


def _input_features(spec: NetworkSpec) -> list[str]:
    """The features that are network inputs (all but an ``inputs.symmetry`` φ reference)."""
    builder = make_builder(spec.inputs)
    return (
        builder.input_features if isinstance(builder, FlatBuilder) else list(spec.inputs.features)
    )


def _as_inputs(spec: NetworkSpec, *samples: Sample) -> tuple[Sample, ...]:
    """The samples as the network sees them: ``inputs.symmetry`` applied (Δφ, signed η).

    The review compares what the network is a function of: with a symmetry the ranked
    ``PRI_lep_phi`` is Δφ(ℓ, τ), so simulation and data are compared in that, not in the
    absolute angle. Pseudo-data are mismodelled before (in the raw feature, as data would be).
    """
    builder = make_builder(spec.inputs)
    if not isinstance(builder, FlatBuilder) or builder.settings.symmetry is None:
        return samples
    return tuple(Sample(builder.symmetric(s.raw), s.features, s.weights) for s in samples)


def review_gof(
    name: str, spec: NetworkSpec, loaded: LoadedNetwork, reader: DataReader, settings: ReviewConfig,
    outdir: Path,
    *, seed: int, formats: tuple[str, ...], files: list[Path] | None = None,
) -> NetworkReview:  # fmt: skip
    """The input-space comparison of one flat network (plots to ``outdir/review/plots``)."""
    rev = NetworkReview(name, loaded.meta)
    ranking = outdir / "ranking" / f"{name}.csv"
    if ranking.is_file():
        terms = read_ranking(ranking, settings.top, spec.inputs.features)
        rev.terms_from = f"the top {settings.top} terms of `ranking/{name}.csv` (missing-value flags and third order left out)"
    else:
        inputs = _input_features(spec)
        terms = [Term(f, 1, i + 1) for i, f in enumerate(inputs[: settings.top])]
        rev.terms_from = f"no ranking (`ranking/{name}.csv` absent: add a `taylor` section): the first {len(terms)} inputs in config order"
    if settings.pseudo_data is not None and settings.pseudo_data.mismodel is not None:
        feat = settings.pseudo_data.mismodel.feature
        if feat not in spec.inputs.features:
            msg = (
                f"review.pseudo_data.mismodel.feature: {feat!r} is not an input of network {name!r}"
            )
            raise ConfigError(msg)
    got = _samples(name, spec, reader, settings, seed)
    if isinstance(got, str):
        rev.gof_note = got
        return rev
    sim, data, rev.compared_with = (*_as_inputs(spec, got[0], got[1]), got[2])
    label = "pseudo-data" if settings.pseudo_data is not None else "data"
    plot_dir = outdir / "review" / "plots"
    for term in terms:
        try:
            res = term_gof(term, sim, data, min_expected=settings.min_expected,
                           max_bins=settings.max_bins, flag_p=settings.flag_p)  # fmt: skip
        except InputError as err:
            rev.skipped.append((term.name, str(err)))
            continue
        rev.gof.append(res)
        if formats:
            written = plot_term(name, res, sim, plot_dir, formats, data_label=label)
            if files is not None:
                files += written
            rev.plots[term.name] = f"plots/{file_stem(name, term.name)}.{formats[0]}"
    return rev


def _trained_here(loaded: LoadedNetwork, files: list[dict[str, Any]]) -> bool:
    trained = {f["digest"] for f in loaded.meta.get("training_data", [])}
    return bool(trained) and trained == {f["digest"] for f in files}


def write_review(
    cfg: Config, networks: Mapping[str, PreparedNetwork], reader: DataReader, outdir: Path,
    *, formats: tuple[str, ...] = ("png", "pdf"),
) -> tuple[dict[str, Any], list[Path]]:  # fmt: skip
    """Write ``outdir/review/`` (gof.csv, gof.md, overtraining.json, plots, README.md).

    Returns
    -------
    block, files
        Per network ``{"overtraining": ...}`` (for ``metrics.json``) and every file written.
    """
    from hepnn.config import ReviewConfig
    from hepnn.review.document import gof_markdown, write_readme

    settings = cfg.review or ReviewConfig()
    rdir = outdir / "review"
    rdir.mkdir(parents=True, exist_ok=True)
    reviews: list[NetworkReview] = []
    files: list[Path] = []
    block: dict[str, Any] = {}
    for name, net in networks.items():
        loaded = get_network(net.path)
        if loaded.kind == "flat":
            rev = review_gof(
                name,
                net.spec,
                loaded,
                reader,
                settings,
                outdir,
                seed=cfg.seed,
                formats=formats,
                files=files,
            )
        else:
            rev = NetworkReview(
                name, loaded.meta, gof_note="jet network: no flat inputs to compare"
            )
        if settings.overtraining:
            data = reader.training_data(name, net.spec)
            if _trained_here(loaded, data.files):
                summary, arrays = overtraining_test(loaded, data, flag_p=settings.flag_p)
                rev.overtraining = summary
                block[name] = {"overtraining": summary}
                if formats:
                    stem = rdir / "plots" / f"overtraining_{name}"
                    files += plot_overtraining(name, summary, arrays, stem, formats)
                    rev.plots["overtraining"] = f"plots/overtraining_{name}.{formats[0]}"
            else:
                rev.overtraining_note = "the samples of this run are not the files the network was trained on (model.json digests)"
        reviews.append(rev)
    rows = [{**r.row(), "network": rev.name} for rev in reviews for r in rev.gof]
    atomic_text(rdir / "gof.csv", _csv_text(rows))
    atomic_text(rdir / "gof.md", gof_markdown(reviews, settings))
    write_json(rdir / "overtraining.json", {n: b["overtraining"] for n, b in block.items()})
    write_readme(rdir / "README.md", outdir, reviews, settings)
    files += [rdir / n for n in ("gof.csv", "gof.md", "overtraining.json", "README.md")]
    return block, files
