"""The figure files ``memcallbacks report`` writes, for the report tests."""

from __future__ import annotations

#: one figure per section of a run with every monitor (``tests/report/conftest.py``'s run)
FIGURES = {
    "exposure_vs_repetitions.png",
    "mia_roc.png",
    "gap_auc.png",
    "data_map.png",
    "epsilon.png",
    "sequence_epochs.png",
    "extraction_vs_tries.png",
}

#: the demo also draws its second sequence monitor (``name="canaries"``)
DEMO_FIGURES = FIGURES | {"sequence_epochs_canaries.png", "extraction_vs_tries_canaries.png"}
