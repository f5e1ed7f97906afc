"""The one place that turns a record into the right call for each Lightning logger.

Scalars travel through ``pl_module.log_dict`` (they reach every logger and
``trainer.callback_metrics``). What scalars cannot carry — histograms, tables, line plots,
ROC curves, figures, alerts — is described by a small record and handed to :func:`emit`,
which calls each attached logger's adapter (W&B, TensorBoard, MLflow; CSV and unknown
loggers get nothing beyond scalars). A logger call that raises is caught, warned about
once per logger (:class:`TrackerWarning`), and training continues. Only global rank 0 emits.

What each logger receives (the epoch is the x axis everywhere):

======================  ===========================  ==========================  ==============================
record                  ``WandbLogger``              ``TensorBoardLogger``       ``MLFlowLogger``
======================  ===========================  ==========================  ==============================
:class:`Histogram`      ``wandb.Histogram`` (<=512   ``add_histogram``           JSON artifact (bin edges,
                        bins)                                                    counts, summary statistics)
:class:`Table`          ``wandb.Table``              ``add_text`` (Markdown)     JSON artifact (``log_dict``)
:class:`LineSeries`     ``wandb.plot.line_series``   ``add_figure``              ``log_figure`` + JSON artifact
:class:`RocCurve`       ``wandb.plot.line`` (fpr,    ``add_figure`` (log-log)    ``log_figure`` + JSON artifact
                        tpr)
:class:`Figure`         ``wandb.Image``              ``add_figure``              ``log_figure``
:class:`Alert`          ``run.alert`` (falls back    ``add_text``                text artifact + tag
                        to a logged text)
======================  ===========================  ==========================  ==============================

W&B (docs/loggers.md): records are logged through the logger's run with ``epoch`` in
the same call and ``commit=False``, so they join the row Lightning commits next (the
epoch's scalars) instead of adding rows; ``run.define_metric("mem/*", step_metric="epoch")``
is called once per run, and ``step=`` is never passed. Tables are logged as given: callers
log a fixed-size summary each epoch and a snapshot at the end, never an ever-growing table.

Privacy (docs/loggers.md): records flagged ``per_sample=True`` or ``secret=True`` are
sent to third-party trackers only when the emitting callback was built with
``log_per_sample=True`` / ``log_secrets=True``; the callback passes that choice here.

Failures of the scalar path: Lightning itself calls each logger's ``log_metrics`` (for every
``self.log`` and every ``mem/*`` scalar), and an exception there ends training. Wrap the
loggers with :func:`contain_failures` to contain those too: each failing call of
``log_metrics``, ``log_hyperparams``, ``log_graph``, ``save``, ``finalize`` or
``after_save_checkpoint`` is counted (``logger.failures``), warned about once per logger
(:class:`TrackerWarning`), and training continues. See ``docs/hardening.md`` for what is and
is not contained.

Example:
    >>> from memcallbacks import trackers
    >>> record = loggers.Histogram("mem/traj/loss", values=[0.1, 0.5, 2.0], epoch=3)
    >>> loggers.emit(trainer, record)  # doctest: +SKIP
    >>> trainer = pl.Trainer(logger=loggers.contain_failures([WandbLogger(), CSVLogger(".")]))  # doctest: +SKIP
"""

from __future__ import annotations

import abc
import json
import math
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ContainedLogger",
    "contain_failures",
    "Histogram",
    "Table",
    "LineSeries",
    "RocCurve",
    "Figure",
    "Alert",
    "Record",
    "TrackerWarning",
    "emit",
    "emit_to",
    "MAX_HISTOGRAM_BINS",
]

#: W&B drops histograms with more bins than this; every backend gets at most this many.
MAX_HISTOGRAM_BINS = 512
#: Rows sent to a tracker per table at most (W&B refuses tables above 200,000 rows).
MAX_TABLE_ROWS = 10_000
#: Points of a ROC curve or line series sent to a tracker at most (the run directory keeps all).
MAX_CURVE_POINTS = 2_000


class TrackerWarning(UserWarning):
    """A tracker (logger) call failed; training continues and the run directory still gets the numbers."""


@dataclass(frozen=True)
class Histogram:
    """Distribution of values (e.g. this epoch's per-sample losses). Aggregate: no opt-in needed.

    Non-finite values are dropped before binning; ``num_bins`` is capped at 512.
    """

    key: str
    values: Any  # 1-D array-like
    epoch: int
    num_bins: int = 64


@dataclass(frozen=True)
class Table:
    """Rows of values. ``per_sample``/``secret`` mark membership signals that need opt-in.

    Log a fixed-size table (e.g. the top-k samples) per epoch or a snapshot at the end; never
    re-log a table that grows every epoch. At most ``MAX_TABLE_ROWS`` rows reach a tracker.
    """

    key: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    epoch: int
    per_sample: bool = False
    secret: bool = False


@dataclass(frozen=True)
class LineSeries:
    """Several named series over a shared x axis (e.g. exposure vs repetition count per epoch)."""

    key: str
    xs: Sequence[float]
    ys: Mapping[str, Sequence[float]]
    epoch: int
    title: str = ""
    xname: str = "x"
    yname: str = "y"
    per_sample: bool = False
    secret: bool = False


@dataclass(frozen=True)
class RocCurve:
    """A ROC curve (false-positive rate, true-positive rate) of a membership attack.

    Drawn on log-log axes where the backend takes a figure (Carlini et al. 2022).
    """

    key: str
    fpr: Any
    tpr: Any
    epoch: int
    title: str = ""


@dataclass(frozen=True)
class Figure:
    """A matplotlib figure. ``emit`` does not close it; the caller does."""

    key: str
    figure: Any
    epoch: int
    per_sample: bool = False
    secret: bool = False


@dataclass(frozen=True)
class Alert:
    """A human-readable alert (e.g. the leakage early-stopping decision)."""

    title: str
    text: str
    epoch: int
    level: str = "WARN"
    extra: dict[str, Any] = field(default_factory=dict)


Record = Histogram | Table | LineSeries | RocCurve | Figure | Alert

_Adapter = Callable[[Any, Any], None]


def emit(
    trainer: Any, record: Record, *, allow_per_sample: bool = False, allow_secrets: bool = False
) -> None:
    """Send ``record`` to every logger of ``trainer`` that supports its kind (rank 0 only).

    Each logger in ``trainer.loggers`` gets its own form (see the module docstring); loggers
    without an adapter (``CSVLogger``, custom ones) get nothing. A logger call that raises
    is caught and reported once per logger as a :class:`TrackerWarning`.

    Args:
        trainer: the running ``Trainer``.
        record: one of :class:`Histogram`, :class:`Table`, :class:`LineSeries`,
            :class:`RocCurve`, :class:`Figure`, :class:`Alert`.
        allow_per_sample: the user opted in to sending per-sample values (``log_per_sample=True``).
        allow_secrets: the user opted in to sending canary secrets (``log_secrets=True``).

    Raises:
        TypeError: ``record`` is not one of the record types.

    Example:
        >>> emit(trainer, Alert("Leakage", "mem/canary/exposure_max = 18.2 bits > 15.0", epoch=7))  # doctest: +SKIP
    """
    _check_record(record)
    if not getattr(trainer, "is_global_zero", True):
        return
    emit_to(
        getattr(trainer, "loggers", None) or [],
        record,
        allow_per_sample=allow_per_sample,
        allow_secrets=allow_secrets,
    )


def emit_to(
    loggers: Sequence[Any], record: Record, *, allow_per_sample: bool = False, allow_secrets: bool = False
) -> int:
    """:func:`emit` without a Trainer: send ``record`` to each of ``loggers`` (e.g. after training).

    Returns:
        How many loggers failed (each failure is warned about once per logger, never raised);
        a record withheld by the privacy opt-ins counts as no failure.

    Raises:
        TypeError: ``record`` is not one of the record types.

    Example:
        >>> emit_to([TensorBoardLogger("tb_logs")], Figure("attack/roc", fig, epoch=0))  # doctest: +SKIP
        0
    """
    _check_record(record)
    if (getattr(record, "per_sample", False) and not allow_per_sample) or (
        getattr(record, "secret", False) and not allow_secrets
    ):
        return 0
    failed = 0
    for logger in loggers:
        adapter = _adapter_for(logger)
        if adapter is None:
            continue
        try:
            adapter(logger, record)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            _warn_once(logger, record, e)
            failed += 1
    return failed


def _check_record(record: Any) -> None:
    if not isinstance(record, (Histogram, Table, LineSeries, RocCurve, Figure, Alert)):
        raise TypeError(
            f"`record` must be a memcallbacks.loggers record (Histogram, Table, LineSeries, RocCurve, "
            f"Figure, Alert), got {type(record).__name__}"
        )


# -- containing the failures of Lightning's own logger calls ----------------------------------------
_CONTAINED_METHODS = (
    "log_metrics",
    "log_hyperparams",
    "log_graph",
    "save",
    "finalize",
    "after_save_checkpoint",
)


class ContainedLogger(abc.ABC):  # noqa: B024 - a marker, filled by register()
    """What the loggers returned by :func:`contain_failures` are (use it in ``isinstance`` checks).

    A contained logger is still an instance of its own class (a ``TensorBoardLogger`` stays one,
    so ``trainer.log_dir``, checkpoint folders and memcallbacks' rich records are unchanged); the
    calls Lightning makes on it (``log_metrics``, ``log_hyperparams``, ``log_graph``, ``save``,
    ``finalize``, ``after_save_checkpoint``) never raise: a failure is counted in ``failures``,
    the latest is in ``last_failure``, the first is warned about as a :class:`TrackerWarning`,
    and the call is dropped.
    """


def _record_failure(logger: Any, base: type, method: str, error: Exception) -> None:
    count = int(logger.__dict__.get("_memcallbacks_failures", 0)) + 1
    logger.__dict__["_memcallbacks_failures"] = count
    logger.__dict__["_memcallbacks_last_failure"] = f"{method}: {type(error).__name__}: {error}"
    if count == 1:
        from pytorch_lightning.utilities import rank_zero_warn

        rank_zero_warn(
            f"memcallbacks.contain_failures: {base.__name__}.{method} failed ({type(error).__name__}: {error}); "
            "training continues and the run directory still gets memcallbacks' numbers. Further failures "
            "of this logger are counted in `logger.failures`, not reported.",
            category=TrackerWarning,
        )


def _contained_method(base: type, name: str) -> Callable[..., Any]:
    original = getattr(base, name)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            _record_failure(self, base, name, e)
            return None

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``{base.__name__}.{name}``; a failure is counted and warned about once, never raised."
    return method


def _failures(self: Any) -> int:
    return int(self.__dict__.get("_memcallbacks_failures", 0))


def _last_failure(self: Any) -> str | None:
    return self.__dict__.get("_memcallbacks_last_failure")


def _reduce_ex(self: Any, protocol: Any) -> Any:
    # pickled (ddp_spawn) as the logger's own class, contained again when unpickled
    contained = type(self)
    self.__class__ = contained.__bases__[0]
    try:
        reduced = self.__reduce_ex__(protocol)
    finally:
        self.__class__ = contained
    return (_rebuild_contained, (reduced,))


_CONTAINED_CLASSES: dict[type, type] = {}


def _contained_class(base: type) -> type:
    cls = _CONTAINED_CLASSES.get(base)
    if cls is None:
        namespace: dict[str, Any] = {
            name: _contained_method(base, name) for name in _CONTAINED_METHODS if hasattr(base, name)
        }
        namespace.update(
            __slots__=(),  # no new storage: the logger's class can be swapped in place
            __module__=base.__module__,
            __reduce_ex__=_reduce_ex,
            failures=property(_failures, doc="How many calls of this logger failed (and were dropped)."),
            last_failure=property(_last_failure, doc="The latest failure: 'method: Type: message'."),
        )
        cls = type(f"Contained{base.__name__}", (base,), namespace)
        ContainedLogger.register(cls)
        _CONTAINED_CLASSES[base] = cls
    return cls


def _rebuild_contained(reduced: Any) -> Any:
    func, args, *rest = reduced
    obj = func(*args)
    state = rest[0] if rest else None
    if state is not None:
        if hasattr(obj, "__setstate__"):
            obj.__setstate__(state)
        else:
            obj.__dict__.update(state[0] if isinstance(state, tuple) else state)
    return contain_failures(obj)


def contain_failures(loggers: Any) -> Any:
    """Make Lightning loggers never stop training: each failing call is counted, warned once, dropped.

    Lightning calls ``logger.log_metrics`` for every scalar (``self.log``, memcallbacks'
    ``mem/*`` keys); a logger that raises there (W&B unreachable, a full disk under
    TensorBoard, a custom logger's bug) ends ``fit``. This changes each logger *in place*
    into a :class:`ContainedLogger` of its own class (so ``isinstance(logger,
    TensorBoardLogger)``, ``trainer.log_dir`` and your other references to it still hold) and
    returns what it was given.

    Args:
        loggers: a Lightning logger or a list/tuple of them (``None``, ``True`` and ``False``
            are returned as given).

    Returns:
        ``loggers``, contained.

    Raises:
        TypeError: an item is not a Lightning ``Logger``.

    Example:
        >>> from pytorch_lightning.loggers import CSVLogger
        >>> logger = contain_failures(CSVLogger("logs"))
        >>> isinstance(logger, CSVLogger), isinstance(logger, ContainedLogger), logger.failures
        (True, True, 0)
    """
    if loggers is None or isinstance(loggers, bool):
        return loggers
    if isinstance(loggers, (list, tuple)):
        contained = [contain_failures(logger) for logger in loggers]
        return type(loggers)(contained) if isinstance(loggers, tuple) else contained
    if type(loggers) in _CONTAINED_CLASSES.values():
        return loggers
    if not callable(getattr(loggers, "log_metrics", None)) or not hasattr(loggers, "save"):
        raise TypeError(
            f"`loggers` must be Lightning loggers (with log_metrics), got {type(loggers).__name__}; pass "
            "e.g. contain_failures([WandbLogger(...), CSVLogger(...)])"
        )
    loggers.__class__ = _contained_class(type(loggers))
    return loggers


# -- dispatch --------------------------------------------------------------------------------------
def _class_names(obj: Any) -> set[str]:
    # Match by class name so both ``pytorch_lightning.loggers`` and ``lightning.pytorch.loggers``
    # (distinct classes) and user subclasses are recognised, without importing optional packages.
    return {cls.__name__ for cls in type(obj).__mro__}


def _adapter_for(logger: Any) -> _Adapter | None:
    names = _class_names(logger)
    if "WandbLogger" in names:
        return _wandb_emit
    if "TensorBoardLogger" in names:
        return _tensorboard_emit
    if "MLFlowLogger" in names:
        return _mlflow_emit
    return None


_warned: weakref.WeakSet[Any] = weakref.WeakSet()
_warned_ids: set[int] = set()


def _warn_once(logger: Any, record: Any, error: Exception) -> None:
    try:
        if logger in _warned:
            return
        _warned.add(logger)
    except TypeError:  # not weak-referenceable
        if id(logger) in _warned_ids:
            return
        _warned_ids.add(id(logger))
    from pytorch_lightning.utilities import rank_zero_warn

    rank_zero_warn(
        f"memcallbacks: {type(logger).__name__} failed to record {type(record).__name__} "
        f"{getattr(record, 'key', getattr(record, 'title', ''))!r}: {type(error).__name__}: {error}. "
        "Training continues and the run directory still gets the numbers; further failures of this "
        "logger are not reported.",
        category=TrackerWarning,
    )


# -- shared helpers --------------------------------------------------------------------------------
def _finite_values(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def _bins(record: Histogram) -> int:
    return max(1, min(int(record.num_bins), MAX_HISTOGRAM_BINS))


def _histogram_summary(record: Histogram) -> dict[str, Any] | None:
    values = _finite_values(record.values)
    if values.size == 0:
        return None
    counts, edges = np.histogram(values, bins=_bins(record))
    return {
        "key": record.key,
        "epoch": int(record.epoch),
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "bin_edges": edges.tolist(),
        "counts": counts.tolist(),
    }


def _plain(value: Any) -> Any:
    """A JSON/W&B-friendly cell: numpy and torch scalars unwrapped, arrays as lists, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    elif hasattr(value, "detach"):
        value = value.detach().cpu().tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _table_rows(record: Table) -> list[list[Any]]:
    return [[_plain(v) for v in row] for row in list(record.rows)[:MAX_TABLE_ROWS]]


def _thin(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` points of a curve of ``n``, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def _roc_points(record: RocCurve) -> tuple[np.ndarray, np.ndarray]:
    fpr = np.asarray(_finite_or_raw(record.fpr), dtype=np.float64).reshape(-1)
    tpr = np.asarray(_finite_or_raw(record.tpr), dtype=np.float64).reshape(-1)
    if fpr.shape != tpr.shape:
        raise ValueError(f"RocCurve {record.key!r}: fpr has {fpr.size} points, tpr {tpr.size}")
    keep = _thin(fpr.size)
    return fpr[keep], tpr[keep]


def _finite_or_raw(values: Any) -> Any:
    if hasattr(values, "detach"):
        return values.detach().float().cpu().numpy()
    return values


def _series(record: LineSeries) -> tuple[list[float], dict[str, list[float]]]:
    xs = [float(x) for x in _finite_or_raw(record.xs)]
    ys = {str(name): [float(y) for y in _finite_or_raw(values)] for name, values in record.ys.items()}
    for name, values in ys.items():
        if len(values) != len(xs):
            raise ValueError(
                f"LineSeries {record.key!r}: series {name!r} has {len(values)} points, xs {len(xs)}"
            )
    return xs, ys


def log_log_roc_axes(ax: Any, floor: float) -> None:
    """Sets a matplotlib ``ax`` up for a ROC curve: log-log from ``floor`` to 1, both axes labelled.

    Log scales show the low false-positive region where membership attacks are judged.
    """
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, 1.0)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")


def _render(record: LineSeries | RocCurve) -> Any:
    """A matplotlib figure (Agg canvas, no pyplot state) for backends without a native form."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(5, 4), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if isinstance(record, RocCurve):
        fpr, tpr = _roc_points(record)
        ax.plot(fpr, tpr, label="attack")
        floor = min(0.5, max(1e-5, float(fpr[fpr > 0].min()) if np.any(fpr > 0) else 1e-5))
        ax.plot([floor, 1.0], [floor, 1.0], linestyle="--", color="grey", label="chance")
        log_log_roc_axes(ax, floor)
    else:
        xs, ys = _series(record)
        for name, values in ys.items():
            ax.plot(xs, values, marker="o", label=name)
        ax.set_xlabel(record.xname)
        ax.set_ylabel(record.yname)
    ax.set_title(f"{record.title or record.key} (epoch {record.epoch})")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def markdown_table(columns: Sequence[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in columns) + " |"
    rule = "|" + "---|" * len(columns)
    return "\n".join([head, rule, *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)])


def _artifact_path(key: str, epoch: int, suffix: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.\-/]+", "_", key).strip("/") or "record"
    return f"memcallbacks/{safe}/epoch_{int(epoch):04d}{suffix}"


# -- Weights & Biases ------------------------------------------------------------------------------
_wandb_defined: weakref.WeakSet[Any] = weakref.WeakSet()
_wandb_defined_ids: set[str] = set()


def _wandb_define_axes(run: Any) -> None:
    try:
        if run in _wandb_defined:
            return
        _wandb_defined.add(run)
    except TypeError:
        run_id = str(getattr(run, "id", id(run)))
        if run_id in _wandb_defined_ids:
            return
        _wandb_defined_ids.add(run_id)
    run.define_metric("epoch")
    run.define_metric("mem/*", step_metric="epoch")


def _wandb_emit(logger: Any, record: Record) -> None:
    import wandb  # WandbLogger itself requires wandb; imported here so memcallbacks does not

    run = logger.experiment
    if not hasattr(run, "log"):  # Lightning's DummyExperiment off rank 0
        return
    _wandb_define_axes(run)
    payload: dict[str, Any]
    if isinstance(record, Histogram):
        values = _finite_values(record.values)
        if values.size == 0:
            return
        payload = {record.key: wandb.Histogram(values.tolist(), num_bins=_bins(record))}
    elif isinstance(record, Table):
        payload = {
            record.key: wandb.Table(columns=[str(c) for c in record.columns], data=_table_rows(record))
        }
    elif isinstance(record, LineSeries):
        xs, ys = _series(record)
        payload = {
            record.key: wandb.plot.line_series(
                xs=xs,
                ys=list(ys.values()),
                keys=list(ys),
                title=record.title or record.key,
                xname=record.xname,
            )
        }
    elif isinstance(record, RocCurve):
        fpr, tpr = _roc_points(record)
        table = wandb.Table(columns=["fpr", "tpr"], data=[[float(a), float(b)] for a, b in zip(fpr, tpr)])
        payload = {record.key: wandb.plot.line(table, "fpr", "tpr", title=record.title or record.key)}
    elif isinstance(record, Figure):
        payload = {record.key: wandb.Image(record.figure)}
    else:
        _wandb_alert(run, record)
        return
    run.log({**payload, "epoch": int(record.epoch)}, commit=False)


def _wandb_alert(run: Any, record: Alert) -> None:
    import wandb

    try:
        level = getattr(wandb.AlertLevel, str(record.level).upper(), wandb.AlertLevel.WARN)  # type: ignore[attr-defined]
        run.alert(title=record.title, text=record.text, level=level)
    except Exception:  # noqa: BLE001 - alerts need a server; offline runs may refuse them
        text = wandb.Html(f"<b>{record.title}</b>: {record.text}")
        run.log({"mem/alert": text, "epoch": int(record.epoch)}, commit=False)


# -- TensorBoard -----------------------------------------------------------------------------------
def _tensorboard_emit(logger: Any, record: Record) -> None:
    writer = logger.experiment
    if not hasattr(writer, "add_histogram"):  # DummyExperiment off rank 0
        return
    step = int(record.epoch)
    if isinstance(record, Histogram):
        values = _finite_values(record.values)
        if values.size == 0:
            return
        counts, edges = np.histogram(values, bins=_bins(record))
        writer.add_histogram_raw(
            record.key,
            min=float(values.min()),
            max=float(values.max()),
            num=int(values.size),
            sum=float(values.sum()),
            sum_squares=float((values**2).sum()),
            bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
        )
    elif isinstance(record, Table):
        writer.add_text(record.key, markdown_table(record.columns, _table_rows(record)), global_step=step)
    elif isinstance(record, (LineSeries, RocCurve)):
        writer.add_figure(record.key, _render(record), global_step=step, close=False)
    elif isinstance(record, Figure):
        writer.add_figure(record.key, record.figure, global_step=step, close=False)
    else:
        writer.add_text("mem/alerts", f"**{record.title}** ({record.level}): {record.text}", global_step=step)
    writer.flush()


# -- MLflow ----------------------------------------------------------------------------------------
def _mlflow_emit(logger: Any, record: Record) -> None:
    client = logger.experiment
    run_id = logger.run_id
    if run_id is None or not hasattr(client, "log_dict"):
        return
    epoch = int(record.epoch)
    if isinstance(record, Histogram):
        summary = _histogram_summary(record)
        if summary is not None:
            client.log_dict(run_id, summary, _artifact_path(record.key, epoch, ".json"))
    elif isinstance(record, Table):
        data = {"columns": [str(c) for c in record.columns], "data": _table_rows(record), "epoch": epoch}
        client.log_dict(
            run_id, json.loads(json.dumps(data, default=str)), _artifact_path(record.key, epoch, ".json")
        )
    elif isinstance(record, LineSeries):
        xs, ys = _series(record)
        client.log_dict(
            run_id, {"epoch": epoch, "x": xs, "y": ys}, _artifact_path(record.key, epoch, ".json")
        )
        client.log_figure(run_id, _render(record), _artifact_path(record.key, epoch, ".png"))
    elif isinstance(record, RocCurve):
        fpr, tpr = _roc_points(record)
        data = {"epoch": epoch, "fpr": fpr.tolist(), "tpr": tpr.tolist()}
        client.log_dict(run_id, data, _artifact_path(record.key, epoch, ".json"))
        client.log_figure(run_id, _render(record), _artifact_path(record.key, epoch, ".png"))
    elif isinstance(record, Figure):
        client.log_figure(run_id, record.figure, _artifact_path(record.key, epoch, ".png"))
    else:
        text = f"[{record.level}] {record.title}: {record.text}"
        client.log_text(run_id, text + "\n", _artifact_path("mem/alerts", epoch, ".txt"))
        client.set_tag(run_id, "memcallbacks.alert", text[:4900])
