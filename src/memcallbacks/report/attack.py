"""The section of ``memcallbacks attack`` results (loss, LiRA, RMIA across shadow runs), from ``attack.json``."""

from __future__ import annotations

import math
from pathlib import Path

from memcallbacks.metrics.membership import format_fpr
from memcallbacks.report.common import (
    Section,
    fmt,
    safe_name,
)
from memcallbacks.rundir import (
    ATTACK,
    AttackFiles,
    RunDirectory,
    RunDirectoryError,
    read_attack,
)
from memcallbacks.utilities import fileio

__all__ = ["ATTACK_TITLE", "attack_section", "shown_path"]


ATTACK_TITLE = "Attacks across shadow runs (loss, LiRA, RMIA)"


def shown_path(path: Path, root: Path) -> str:
    """``path`` relative to the run directory when it is inside it."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def attack_section(
    run: RunDirectory, out_dir: Path, *, source: Path, title: str, names: set[str]
) -> Section | None:
    """The table, settings and ROC figure of one ``attack.json`` (the figure copied under a name new to ``names``)."""
    att: AttackFiles = read_attack(source)
    s = Section(title)
    st = att.settings
    mode = "offline: references that did not train on the sample" if st.get("offline") else "online"
    s.lines.append(
        f"{st.get('num_runs')} shadow runs, pool of {st.get('pool_size')} samples, scores "
        f"{st.get('score_kind')}; each run in turn the target, the others its references ({mode}); "
        "scores of every target pooled into one ROC, members positive"
    )
    s.lines.append(
        f"LiRA variance {'global' if st.get('fixed_variance') else 'per sample'}; RMIA a = {st.get('a')}, "
        f"gamma = {st.get('gamma')} (Carlini et al. 2022; Zarifzadeh et al. 2024)"
    )
    header = ["attack", "AUC", *(f"TPR@{format_fpr(x)}FPR" for x in att.fprs), "AUC per target (min-max)"]
    rows = []
    for row in att.rows:
        finite = [v for v in row.per_target_auc if math.isfinite(v)]
        spread = f"{fmt(min(finite), 4)}-{fmt(max(finite), 4)}" if finite else "n/a"
        rows.append([row.label, fmt(row.auc, 4), *(fmt(row.tpr_at_fpr[x], 4) for x in att.fprs), spread])
    s.tables.append((header, rows))
    n_non = att.rows[0].n_nonmembers
    low = min(att.fprs, default=0.001)
    s.lines.append(
        f"{att.rows[0].n_members} member and {n_non} non-member scores pooled: FPR {format_fpr(low)} allows "
        f"{int(n_non * low)} false positive(s), so TPR there is {'coarse' if n_non * low < 10 else 'resolved'}"
    )
    s.lines.append(f"numbers read from {att.folder / 'attack.json'}")
    try:
        png = att.figure_png()  # confined to the folder, no link followed, checked against attack.json
    except RunDirectoryError as e:
        png, note = None, f"the ROC figure is left out: {e}"
    else:
        note = f"{str(att.figure or att.folder / 'roc.png')!r} is missing: re-run `memcallbacks attack` to draw the ROC"
    if png is None:
        s.lines.append(note)
        s.problems.append(note)
        return s
    tail = att.folder.name[len(ATTACK) + 1 :] if att.folder.name.startswith(ATTACK + "_") else att.folder.name
    stem = "attack_roc" + ("" if att.folder.name == ATTACK else "_" + safe_name(tail))
    name, k = f"{stem}.png", 2
    while name in names:
        name, k = f"{stem}_{k}.png", k + 1
    names.add(name)
    fileio.atomic_write_bytes(out_dir / name, png)
    s.figures.append(
        (name, "ROC of each attack on log-log axes, every target pooled (roc.png of the attack)")
    )
    return s
