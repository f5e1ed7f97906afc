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
Histograms carry no exact extreme without that opt-in: their bins span the 1% and 99% quantiles
rounded outward, and no ``min``/``max`` is sent (:func:`~memcallbacks.loggers.rendering.coarse_histogram`).

Failures of the scalar path: Lightning itself calls each logger's ``log_metrics`` (for every
``self.log`` and every ``mem/*`` scalar), and an exception there ends training. Wrap the
loggers with :func:`contain_failures` to contain those too: each failing call of
``log_metrics``, ``log_hyperparams``, ``log_graph``, ``save``, ``finalize`` or
``after_save_checkpoint`` is counted (``logger.failures``), warned about once per logger
(:class:`TrackerWarning`), and training continues. See ``docs/hardening.md`` for what is and
is not contained.

Modules: :mod:`~memcallbacks.loggers.records` (the record types and limits),
:mod:`~memcallbacks.loggers.dispatch` (:func:`emit`, :func:`emit_to`, the privacy gate),
:mod:`~memcallbacks.loggers.contained` (:func:`contain_failures`), one module per backend
(``wandb_backend``, ``tensorboard_backend``, ``mlflow_backend``) and
:mod:`~memcallbacks.loggers.rendering` (figures, Markdown tables, log-log ROC axes),
:mod:`~memcallbacks.loggers.runs` (opening tracker runs outside training: :func:`make_loggers`).

Example:
    >>> from memcallbacks import loggers
    >>> record = loggers.Histogram("mem/traj/loss", values=[0.1, 0.5, 2.0], epoch=3)
    >>> loggers.emit(trainer, record)  # doctest: +SKIP
    >>> trainer = pl.Trainer(logger=loggers.contain_failures([WandbLogger(), CSVLogger(".")]))  # doctest: +SKIP
"""

from memcallbacks.loggers.contained import ContainedLogger, contain_failures
from memcallbacks.loggers.dispatch import TrackerWarning, emit, emit_to, takes_records
from memcallbacks.loggers.records import (
    MAX_CURVE_POINTS,
    MAX_HISTOGRAM_BINS,
    MAX_TABLE_ROWS,
    Alert,
    Figure,
    Histogram,
    LineSeries,
    Record,
    RocCurve,
    Table,
)
from memcallbacks.loggers.rendering import log_log_roc_axes, markdown_table, render_figure
from memcallbacks.loggers.runs import TRACKERS, close_loggers, make_loggers

__all__ = [
    "MAX_CURVE_POINTS",
    "MAX_HISTOGRAM_BINS",
    "MAX_TABLE_ROWS",
    "TRACKERS",
    "Alert",
    "ContainedLogger",
    "Figure",
    "Histogram",
    "LineSeries",
    "Record",
    "RocCurve",
    "Table",
    "TrackerWarning",
    "close_loggers",
    "contain_failures",
    "emit",
    "emit_to",
    "log_log_roc_axes",
    "make_loggers",
    "markdown_table",
    "render_figure",
    "takes_records",
]
