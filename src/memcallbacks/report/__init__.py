"""Offline report: PNG figures, one self-contained HTML page and a Markdown summary.

Reads only the run directory the callbacks wrote (no model, no tracker), through the readers of
:mod:`memcallbacks.rundir`: the ``trajectory/``, ``membership/``, ``sequence/``, ``canary/``,
``audit/`` and ``dp/`` folders and ``stopping.json``, whichever exist. The numbers are the ones the callbacks
wrote (logged AUCs, gaps, bounds); what is drawn but not stored (the ROC curve, the mean exposure
per insertion count) comes from the same functions the callbacks call. Figures (matplotlib, Agg
backend):

- the data map (Swayamdipta et al. 2020): mean loss vs variability per training sample,
  coloured by forgetting events (Toneva et al. 2019) when correctness was recorded, the training
  copies of the canaries and the most memorised samples marked, ranked by the tracker's own
  memorisation score (``meta.json["score_by"]``: ``mean_loss`` for classifiers, ``calibrated_loss``
  or ``min_loss`` for language models);
- exposure vs repetition count, one line per evaluated epoch (Carlini et al. 2019);
- the ROC of the loss-threshold membership attack on log-log axes with TPR at the logged FPRs
  marked (Carlini et al. 2022);
- loss gap and attack AUC over epochs;
- sequence memorisation of language models per epoch: the greedy extraction rate of members and
  non-members (Carlini et al. 2023) and the AUCs of the loss, Min-K% Prob and zlib scores; and the
  (n, p)-discoverable extraction rate against the number of tries n, the greedy rate marked
  (Hayes et al. 2024);
- epsilon over epochs: DP-SGD accountant and the one-run audit lower bound (Steinke et al. 2023);
- attacks across shadow runs (``memcallbacks attack``: loss, LiRA, RMIA): the comparison table
  (AUC, TPR at 0.1% and 1% FPR) and the log-log ROC, as ``attack.json`` and ``roc.png`` hold them,
  from the run directory's ``attack/`` and ``attack_<x>/`` folders and the ``attacks`` given.

A monitor given ``name=`` writes ``<folder>_<name>/``; every such folder gets its own section, titled
with the folder. One module per section (``stopping``, ``canary``, ``membership``, ``trajectory``,
``sequence``, ``privacy``, ``attack``), shared pieces in ``common``, the HTML and Markdown in
``render``, and :func:`build_report` in ``build``.

The report goes to ``<run_dir>/report`` unless ``out`` is given, whichever folder was passed
(the run directory or a folder above it, such as the demo's ``--out``).

Example:
    >>> paths = build_report("lightning_logs/version_0/memcallbacks")  # doctest: +SKIP
    >>> paths["html"]  # doctest: +SKIP
    PosixPath('lightning_logs/version_0/memcallbacks/report/report.html')
"""

from memcallbacks.report.build import build_report, report_dir
from memcallbacks.report.trajectory import CanaryRanking, canary_copies_ranked
from memcallbacks.rundir import find_run_dir

__all__ = ["CanaryRanking", "build_report", "canary_copies_ranked", "find_run_dir", "report_dir"]
