"""Any coffea processor under hepnn: construction, schema, ``postprocess`` and its outputs.

hepnn runs a plain coffea :class:`~coffea.processor.ProcessorABC` unchanged, beside
its own :class:`~hepnn.workflow.Workflow` subclasses:

* **Construction** (:func:`make_processor`): a ``Workflow`` subclass gets the
  :class:`~hepnn.workflow.WorkflowContext`; any other processor is called with no
  positional argument, and with the config's ``options`` entries whose names are
  parameters of its ``__init__`` as keywords (``__init__(self)`` and
  ``__init__(self, year="2018")`` both work). A required parameter that ``options``
  does not give is a one-line :class:`~hepnn.errors.ConfigError` (``hepnn validate``
  constructs the processor too).
* **Schema** (:func:`resolve_schema`): the processor's ``schema`` attribute (a coffea
  schema class, or one of :data:`SCHEMA_NAMES`), else the config's ``schema:`` (a name
  of :data:`SCHEMA_NAMES`, looked up in :mod:`coffea.nanoevents`, never evaluated),
  else ``NanoAODSchema``. A tree the schema cannot read (``NanoAODSchema`` on a flat
  tree) fails its chunk, not retried, with one line naming the file, the entries, the
  schema, coffea's reason and what to set
  (:func:`hepnn.execution.task.schema_failure`; exit status 3).
* **Accumulation**: block outputs are added with coffea's own
  :func:`coffea.processor.accumulate` (nested dicts, ``hist.Hist``, ``defaultdict(int)``
  cutflows, ``column_accumulator``, ``value_accumulator``, sets, numbers, lists
  concatenated) along hepnn's fixed block tree (:mod:`hepnn.execution.merge`), so the
  result does not depend on chunking, executor or completion order.
* **postprocess** (:func:`postprocess_output`): called once, on the merged output, in the
  main process, as coffea's ``Runner`` does (a ``None`` return keeps the accumulator it
  may have modified in place). ``Workflow.postprocess`` returns its input unchanged.
* **Outputs** (:func:`split_output`): every ``hist.Hist`` of the output, at any depth,
  goes to ``hists.pkl`` / ``hists.root`` / plots under its key path joined by ``/``;
  when the output holds anything else, the whole postprocessed output is pickled to
  ``outputs.pkl`` and its numbers (cutflows, counters) written to ``cutflow.json``
  (:func:`hepnn.outputs.write_other_outputs`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import hist

from hepnn.errors import ConfigError, HepnnError
from hepnn.workflow import Workflow, WorkflowContext

#: Config ``schema:`` names → class names in :mod:`coffea.nanoevents`.
SCHEMA_NAMES: dict[str, str] = {
    "nanoaod": "NanoAODSchema",
    "pfnano": "PFNanoAODSchema",
    "scouting": "ScoutingNanoAODSchema",
    "base": "BaseSchema",
    "physlite": "PHYSLITESchema",
    "delphes": "DelphesSchema",
    "treemaker": "TreeMakerSchema",
    "edm4hep": "EDM4HEPSchema",
    "fcc": "FCCSchema",
    "pdune": "PDUNESchema",
}

#: Schema of a processor that names none, with no ``schema:`` in the config.
DEFAULT_SCHEMA = "nanoaod"


class PostprocessError(HepnnError):
    """The processor's ``postprocess`` raised (exit status 3, like a failed chunk)."""

    exit_code = 3


# ------------------------------------------------------------- construction
def make_processor(cls: type, context: WorkflowContext, origin: str = "") -> Any:
    """An instance of the processor class ``cls`` (see the module docstring).

    Parameters
    ----------
    cls
        A coffea ``ProcessorABC`` subclass.
    context
        What a hepnn :class:`~hepnn.workflow.Workflow` is built from; a plain
        processor gets the ``options`` entries named like its ``__init__`` parameters.
    origin
        Where the class was found, for error messages.

    Raises
    ------
    ConfigError
        The constructor needs arguments hepnn cannot give, or raised.
    """
    where = f"{origin}: " if origin else ""
    name = getattr(cls, "__name__", repr(cls))
    if isinstance(cls, type) and issubclass(cls, Workflow):
        args: tuple[Any, ...] = (context,)
        kwargs: dict[str, Any] = {}
    else:
        try:
            params = list(inspect.signature(cls).parameters.values())
        except (TypeError, ValueError):
            params = []
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        args = ()
        kwargs = {
            p.name: context.options[p.name]
            for p in params
            if p.kind in named and p.name in context.options
        }
        missing = [
            p.name
            for p in params
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            and p.name not in kwargs
        ]
        if missing:
            msg = (
                f"{where}cannot construct processor {name}: __init__ needs {', '.join(missing)}; "
                "give them under the config's options: (a hepnn Workflow subclass gets the WorkflowContext)"
            )
            raise ConfigError(msg)
    try:
        return cls(*args, **kwargs)
    except HepnnError:
        raise
    except Exception as err:
        text = " ".join(str(err).split())[:200]
        msg = f"{where}cannot construct processor {name}: {type(err).__name__}: {text}"
        raise ConfigError(msg) from err


# ------------------------------------------------------------------- schema
def schema_class(name: str) -> type:
    """The coffea schema class of a config ``schema:`` name (:data:`SCHEMA_NAMES`)."""
    import coffea.nanoevents

    key = name.lower()
    if key not in SCHEMA_NAMES:
        msg = f"schema: unknown schema {name!r}, expected one of {', '.join(SCHEMA_NAMES)}"
        raise ConfigError(msg)
    return getattr(coffea.nanoevents, SCHEMA_NAMES[key])


def resolve_schema(cls: type, config_schema: str | None = None) -> tuple[type, str]:
    """The schema to read events with, and where it came from (``processor``, ``config``, ``default``)."""
    own = getattr(cls, "schema", None)
    if isinstance(own, str):
        return schema_class(own), "processor"
    if own is not None:
        return own, "processor"
    if config_schema:
        return schema_class(config_schema), "config"
    return schema_class(DEFAULT_SCHEMA), "default"


# ------------------------------------------------------------------ outputs
def postprocess_output(processor: Any, output: Any) -> Any:
    """``processor.postprocess(output)`` once, coffea's way (a ``None`` return keeps ``output``)."""
    post = getattr(processor, "postprocess", None)
    if not callable(post):
        return output
    try:
        result = post(output)
    except HepnnError:
        raise
    except Exception as err:
        text = " ".join(str(err).split())[:200]
        msg = f"{type(processor).__name__}.postprocess: {type(err).__name__}: {text}"
        raise PostprocessError(msg) from err
    return output if result is None else result


def _walk_hists(prefix: tuple[str, ...], value: Any, hists: dict[str, hist.Hist]) -> bool:
    """Collect hists under ``prefix``; True when a non-hist leaf was met."""
    if isinstance(value, hist.Hist):
        hists["/".join(prefix)] = value
        return False
    if isinstance(value, Mapping):
        other = False
        for key, sub in value.items():
            other |= _walk_hists((*prefix, str(key)), sub, hists)
        return other
    return True


def hepnn_columns(output: Any) -> dict[str, Any]:
    """hepnn's per-dataset columns under the output's ``columns`` key, else ``{}``.

    Each is a :class:`~hepnn.columns.Columns` (in memory) or, in a run that spilled them,
    a :class:`~hepnn.columns.ColumnParts`.
    """
    from hepnn.columns import ColumnParts, Columns

    cols = output.get("columns") if isinstance(output, Mapping) else None
    if (
        isinstance(cols, Mapping)
        and cols
        and all(isinstance(c, Columns | ColumnParts) for c in cols.values())
    ):
        return dict(cols)
    return {}


def split_output(output: Any) -> tuple[dict[str, hist.Hist], bool]:
    """The histograms of a (postprocessed) output, and whether it holds anything else.

    Parameters
    ----------
    output
        The merged, postprocessed accumulator: usually a dict, possibly nested.

    Returns
    -------
    hists
        Every ``hist.Hist`` at any depth, in the output's order, keyed by its key path
        joined with ``/`` (a top-level histogram keeps its name).
    other
        True when the output holds values that are not histograms (or is not a mapping):
        the run then writes ``outputs.pkl`` and ``cutflow.json``.
    """
    hists: dict[str, hist.Hist] = {}
    if not isinstance(output, Mapping):
        return hists, output is not None
    other = False
    for key, value in output.items():
        if key == "columns" and hepnn_columns(output):
            continue  # hepnn's per-event columns: written as parquet
        other |= _walk_hists((str(key),), value, hists)
    return hists, other


def numbers_of(output: Any) -> Any:
    """The numeric leaves of an output as JSON data (cutflows, counters), else ``None``.

    Mappings keep their keys (as strings) and only the branches that hold numbers;
    ``value_accumulator`` s give their value; numpy scalars become Python numbers.
    """
    import numbers

    import numpy as np

    if isinstance(output, bool):
        return None
    if isinstance(output, numbers.Integral | np.integer):
        return int(output)
    if isinstance(output, numbers.Real | np.floating):
        return float(output)
    if isinstance(output, Mapping):
        out = {}
        for key, value in output.items():
            sub = numbers_of(value)
            if sub is not None:
                out[str(key)] = sub
        return out or None
    value = getattr(output, "value", None)
    if value is not None and type(output).__name__ == "value_accumulator":
        return numbers_of(value)
    return None
