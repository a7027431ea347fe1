"""Analysis configuration: one YAML per analysis, validated with pydantic.

A config names a workflow, the samples it runs over, how to execute, and the
networks it trains and applies. ``--set key.sub=value`` overrides any key;
values are parsed as YAML scalars (``yaml.safe_load``), never evaluated.
The *resolved* config (defaults filled in, paths absolute) is saved beside the
outputs, and its sha256 keys caches and checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from hepnn.errors import ConfigError
from hepnn.files import sha256_json
from hepnn.nets.spec import OLD_FORM_HELP, NetworkMap, old_form
from hepnn.paths import SAFE_NAME_HELP, is_safe_name

#: Upper bound of ``executor.retries``: a broken file must not keep a run busy for ever.
MAX_RETRIES = 10
#: Seeds are non-negative and fit in 32 bits (numpy, torch and the split hash take them).
MAX_SEED = 2**32 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExecutorConfig(_Strict):
    """How chunks are processed: by coffea's iterative, futures or dask executor."""

    name: Literal["iterative", "futures", "dask"] = "iterative"
    workers: int = Field(2, ge=1, description="processes (futures) or dask workers")
    threads_per_worker: int = Field(1, ge=1)
    chunksize: int = Field(
        100_000, ge=1, description="entries per chunk (rounded up to a multiple of block_size)"
    )
    block_size: int = Field(
        10_000,
        ge=1,
        description="entries per accumulation block: histograms are bitwise identical "
        "for every chunksize that is a multiple of it",
    )
    scheduler: str | None = Field(None, description="address of an existing dask scheduler")
    retries: int = Field(
        3, ge=0, le=MAX_RETRIES, description=f"retries of a failed chunk (at most {MAX_RETRIES})"
    )
    skip_bad_files: bool = Field(
        False, description="skip (and record) chunks that cannot be read instead of failing"
    )


class OutputConfig(_Strict):
    """What a run writes besides ``hists.pkl`` and ``manifest.json``."""

    plots: bool = True
    plot_formats: list[Literal["png", "pdf", "svg"]] = ["png", "pdf"]
    hists_root: bool = True


class PlotConfig(_Strict):
    """How the histograms are drawn (hepnn.plotting); ``outputs.plots`` turns plots on/off.

    ``experiment`` picks the mplhep style and label (``cms``, ``atlas``; none: mplhep's
    ROOT style and a plain ``hepnn`` label); ``label`` is the text after the experiment
    name (e.g. ``Simulation``, ``Preliminary``, ``Open Data``).
    """

    experiment: Literal["cms", "atlas"] | None = None
    label: str = Field("", max_length=80, description="text after the experiment name")
    log: bool = Field(False, strict=True, description="logarithmic y axis of the 1D histograms")
    categories: bool = Field(
        True, strict=True, description="one plot per bin of each extra categorical axis besides the sum"
    )


class MCDropoutConfig(_Strict):
    """MC dropout: ``samples`` thinned networks with masks drawn from ``seed``."""

    samples: int = Field(50, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="default: the config seed")


class EnsembleConfig(_Strict):
    """Deep ensemble: the network trained with ``members`` seeds (member 0 is the nominal)."""

    members: int = Field(3, ge=2)


class UncertaintyConfig(_Strict):
    """Bands on every network score histogram; both off unless configured."""

    mc_dropout: MCDropoutConfig | None = None
    ensemble: EnsembleConfig | None = None


class TaylorConfig(_Strict):
    """Taylor ranking of each network's inputs (hepnn.taylor, arXiv:1803.08782)."""

    orders: list[int] = Field([1, 2], description="orders ranked together (1, 2, 3)")
    events: int = Field(20_000, ge=1, description="events ranked (seeded subsample)")
    output: Literal["sigmoid", "logit"] = "sigmoid"
    use_weights: bool = False
    top: int | None = Field(None, ge=1, description="rows in the tables (default all)")
    plot_top: int = Field(20, ge=1)
    monitor_every: int = Field(1, ge=0, description="epochs between history points; 0 = off")
    monitor_events: int = Field(2000, ge=1)
    inputs: Literal["standardised", "unscaled"] = Field(
        "standardised",
        description="derivatives in the network's standardised inputs, or in the original "
        "units (times 1/sigma_i per derivative in feature i)",
    )
    bootstrap: int = Field(
        200, ge=0, description="event-bootstrap replicas for err_stat (seeded); 0 = none"
    )


class CrossValidationConfig(_Strict):
    """K-fold cross-validated evaluation of the networks and baselines (hepnn.nets.cv).

    Row ids are hashed into ``folds`` folds from ``seed``; fold k is tested by
    models trained on the other folds (fold k+1 for early stopping). Evaluation
    only: the deployed networks keep their own split.
    """

    folds: int = Field(5, description="folds (>= 3: one tests, one validates, the rest train)")
    bootstrap: int = Field(1000, ge=10, description="paired bootstrap resamples of the jets")
    seed: int | None = Field(
        None, ge=0, description="fold assignment and bootstrap; default: the config seed"
    )

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v < 3:
            msg = "must be at least 3: fold k tests, fold k+1 validates, the other folds train"
            raise ValueError(msg)
        return v


class SystematicConfig(_Strict):
    """One input variation (``systematics: {<name>: ...}``; hepnn.systematics).

    ``scale`` multiplies the feature by ``up`` / ``down``; ``shift`` adds them (in the
    feature's unit). Never applied to data datasets (``metadata.is_data: true``).
    """

    feature: str = Field(
        ..., min_length=1, description="the varied column, e.g. PRI_tau_pt, FatJet_pt"
    )
    kind: Literal["scale", "shift"] = "scale"
    up: float = Field(..., description="factor (scale) or offset (shift) of the Up variation")
    down: float = Field(..., description="factor (scale) or offset (shift) of the Down variation")
    datasets: list[str] | None = Field(
        None, description="datasets it applies to (default: all simulated)"
    )
    processes: list[str] | None = Field(None, description="processes it applies to (default: all)")

    @model_validator(mode="after")
    def _sizes(self) -> SystematicConfig:
        nothing = 1.0 if self.kind == "scale" else 0.0
        if self.kind == "scale" and not (self.up > 0 and self.down > 0):
            msg = "a scale needs positive up and down factors"
            raise ValueError(msg)
        if self.up == nothing and self.down == nothing:
            msg = f"up and down are both {nothing:g}: the variation changes nothing"
            raise ValueError(msg)
        return self


def _check_systematics(v: dict[str, SystematicConfig] | None) -> dict[str, SystematicConfig] | None:
    import re

    for name in v or {}:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name == "nominal":
            msg = f"systematic name {name!r}: letters, digits and _ only (it names ROOT histograms), not 'nominal'"
            raise ValueError(msg)
        if name.endswith(("Up", "Down")):
            msg = f"systematic name {name!r} must not end in Up/Down (they are appended)"
            raise ValueError(msg)
    return v


#: Names of the config's ``schema:`` (coffea schemas, mapped in :mod:`hepnn.processors`).
SchemaName = Literal[
    "nanoaod",
    "pfnano",
    "scouting",
    "base",
    "physlite",
    "delphes",
    "treemaker",
    "edm4hep",
    "fcc",
    "pdune",
]


class MismodelConfig(_Strict):
    """A deliberate mismodelling of one input in the pseudo-data: ``x -> scale * x + shift``."""

    feature: str = Field(..., min_length=1, description="a flat input of the network")
    scale: float = Field(1.0, gt=0)
    shift: float = 0.0


class PseudoDataConfig(_Strict):
    """Pseudo-data drawn from the simulation (hepnn.review.pseudo): a closure test."""

    fraction: float = Field(0.5, gt=0, lt=1, description="share of events (by id hash) in the pool")
    seed: int | None = Field(None, ge=0, description="default: the config seed")
    mismodel: MismodelConfig | None = None


class ReviewConfig(_Strict):
    """``review/``: input-space goodness of fit, overtraining test, one document (hepnn.review)."""

    top: int = Field(20, ge=1, description="ranked terms compared with data, per flat network")
    min_expected: float = Field(20.0, ge=5, description="expected data events per bin at least")
    max_bins: int = Field(20, ge=2, description="bins per term at most (a pair: unrolled)")
    flag_p: float = Field(0.01, gt=0, lt=1, description="p-value below which a test is flagged")
    pseudo_data: PseudoDataConfig | None = Field(
        None, description="compare with pseudo-data from the simulation instead of is_data datasets"
    )
    overtraining: bool = True


class Config(_Strict):
    """The validated content of one ``configs/*.yaml``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, serialize_by_alias=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    workflow: str = Field(..., description="workflow name, entry point or path.py:Class")
    samples: Path = Field(..., description="samples YAML, relative to the config file")
    seed: int = Field(1234, ge=0, le=MAX_SEED, description="seed of every random step")
    executor: ExecutorConfig = ExecutorConfig()
    outputs: OutputConfig = OutputConfig()
    options: dict[str, Any] = Field(
        default_factory=dict, description="free options passed to the workflow"
    )
    networks: NetworkMap = Field(
        default_factory=dict, description="networks to train and apply (hepnn.nets.spec)"
    )
    taylor: TaylorConfig | None = None
    cross_validation: CrossValidationConfig | None = Field(
        None, description="k-fold evaluation of the networks (off unless configured)"
    )
    uncertainty: UncertaintyConfig = UncertaintyConfig()
    lumi: float | None = Field(
        None, gt=0, allow_inf_nan=False, strict=True,
        description="integrated luminosity in pb^-1: simulation is scaled by xsec x lumi / sum(w)",
    )  # fmt: skip
    sqrt_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, strict=True, description="centre-of-mass energy in TeV"
    )
    plots: PlotConfig = PlotConfig()
    systematics: dict[str, SystematicConfig] | None = Field(
        None, description="input variations propagated through the networks (off unless configured)"
    )
    schema_: SchemaName | None = Field(
        None,
        alias="schema",
        description="coffea schema of a processor that names none (hepnn.processors)",
    )
    review: ReviewConfig | None = Field(
        None, description="review/: GoF against data, overtraining, README (off unless configured)"
    )
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, v: str) -> str:
        if not is_safe_name(v):  # it names the default output folder outputs/<name>
            msg = f"must be a safe file name ({SAFE_NAME_HELP})"
            raise ValueError(msg)
        return v

    @field_validator("workflow")
    @classmethod
    def _workflow_not_empty(cls, v: str) -> str:
        if not v.strip():
            msg = "must name a workflow"
            raise ValueError(msg)
        return v

    @field_validator("systematics")
    @classmethod
    def _systematics_names(
        cls, v: dict[str, SystematicConfig] | None
    ) -> dict[str, SystematicConfig] | None:
        return _check_systematics(v)

    @model_validator(mode="after")
    def _review_mismodels_an_input(self) -> Config:
        pd = self.review.pseudo_data if self.review is not None else None
        if pd is not None and pd.mismodel is not None:
            flat = [f for n in self.networks.values() if n.kind == "flat" for f in n.inputs.features]
            if flat and pd.mismodel.feature not in flat:
                msg = f"review.pseudo_data.mismodel.feature: {pd.mismodel.feature!r} is not a flat input of any network"
                raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _cross_validation_needs_networks(self) -> Config:
        if self.cross_validation is not None and not any(n.train for n in self.networks.values()):
            msg = "cross_validation needs at least one network to train (networks: ...)"
            raise ValueError(msg)
        return self


def _set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            msg = f"{source}: --set {key}: {part!r} is not a mapping"
            raise ConfigError(msg)
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are YAML scalars (``yaml.safe_load``)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            msg = f"--set {item!r}: expected key=value (e.g. executor.chunksize=5000)"
            raise ConfigError(msg)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            msg = f"--set {item!r}: value is not valid YAML ({err.__class__.__name__})"
            raise ConfigError(msg) from None
        parsed.append((key.strip(), value))
    return parsed


def format_validation_error(err: ValidationError, source: str) -> str:
    """The first error of a pydantic validation as one line, prefixed with ``source``."""
    first = err.errors()[0]
    loc = ".".join(str(p) if str(p).isprintable() else repr(p) for p in first["loc"]) or "<top level>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {loc!r}"
    if first["type"] == "missing":
        return f"{source}: missing required key {loc!r}"
    got = first.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {first['msg']}{got_s}{more}"


def _refuse_old_form(data: dict[str, Any], source: str) -> None:
    """One line saying how to migrate a hepnn 0.1 config (``taggers:``, ``training.features``)."""
    if "taggers" in data:
        msg = f"{source}: taggers: {OLD_FORM_HELP}"
        raise ConfigError(msg)
    networks = data.get("networks")
    if isinstance(networks, dict):
        for name, entry in networks.items():
            where = old_form(str(name), entry)
            if where is not None:
                msg = f"{source}: {where}: {OLD_FORM_HELP}"
                raise ConfigError(msg)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` and a one-line error naming the file."""
    if not path.is_file():
        msg = f"{path}: file not found"
        raise ConfigError(msg)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        msg = f"{path}:{where} invalid YAML: {problem}"
        raise ConfigError(msg) from None
    if not isinstance(data, dict):
        msg = f"{path}: expected a mapping at the top level, got {type(data).__name__}"
        raise ConfigError(msg)
    return data


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, override and validate a config; relative paths resolve against its folder.

    Raises
    ------
    ConfigError
        One line naming the file and the offending key.
    """
    path = Path(path)
    data = read_yaml(path)
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value, str(path))
    _refuse_old_form(data, str(path))
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None
    base = path.resolve().parent
    samples = cfg.samples if cfg.samples.is_absolute() else (base / cfg.samples).resolve()
    if not samples.is_file():
        msg = f"{path}: samples: file not found: {samples}"
        raise ConfigError(msg)
    cfg.samples = samples
    cfg._source = path.resolve()
    return cfg


def config_source(cfg: Config) -> Path | None:
    """The file a config was loaded from (None when built in code)."""
    return cfg._source


def resolved_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain JSON-able data."""
    data = json.loads(cfg.model_dump_json())
    if data.get("review") is None:  # keeps configs without a review section hashed as before
        data.pop("review", None)
    return data


def config_hash(cfg: Config) -> str:
    """sha256 of the resolved config (canonical JSON)."""
    return sha256_json(resolved_dict(cfg))
