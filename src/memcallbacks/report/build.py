"""Building the report: one section per run-directory folder, written as PNG figures, HTML and Markdown."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from memcallbacks.report.attack import ATTACK_TITLE, attack_section, shown_path
from memcallbacks.report.canary import CANARY_TITLE, canary_section
from memcallbacks.report.common import Section, titled
from memcallbacks.report.membership import MEMBERSHIP_TITLE, membership_section
from memcallbacks.report.privacy import AUDIT_TITLE, DP_TITLE, PRIVACY_TITLE, privacy_section
from memcallbacks.report.render import render_html, render_markdown
from memcallbacks.report.sequence import SEQUENCE_TITLE, sequence_section
from memcallbacks.report.stopping import STOPPING_TITLE, stopping_section
from memcallbacks.report.trajectory import TRAJECTORY_TITLE, trajectory_section
from memcallbacks.rundir import (
    AUDIT,
    CANARY,
    DP,
    MEMBERSHIP,
    REPORT,
    RUN_FILE,
    SEQUENCE,
    STOPPING_FILE,
    TRAJECTORY,
    RunDirectory,
    RunDirectoryError,
    find_run_dir,
)
from memcallbacks.utilities import fileio

__all__ = ["build_report", "report_dir"]


def report_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where :func:`build_report` writes by default: ``<run directory>/report``.

    ``run_dir`` may be the run directory or a folder above it (see :func:`find_run_dir`).
    """
    return find_run_dir(run_dir) / REPORT


def _prepare_out(out: Path) -> Path:
    if out.is_symlink():  # the report writes into it: never through a link planted in a run directory
        raise NotADirectoryError(
            f"`out` {str(out)!r} is a symbolic link (to {os.readlink(out)!r}); the report is not written "
            "through a link. Pass a real folder (`--out` on the command line), or remove the link"
        )
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"`out` {str(out)!r} is a file; pass a folder for the report (it is created)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"cannot write the report to {str(out)!r} ({e.strerror or e}); pass `out` (`--out` on the command "
            "line) a writable folder"
        ) from e
    return out


_Builder = Callable[[RunDirectory, Path], Section | None]
# a section's builder and the folders (or ``stopping.json``) it reads, to tell which run wrote them
_Entry = tuple[str, _Builder, tuple[str, ...]]


def _build_section(
    title: str, build: _Builder, run: RunDirectory, out_dir: Path
) -> tuple[Section | None, str]:
    """One section, or a note naming the file that could not be read (and the problem, for the caller)."""
    try:
        return build(run, out_dir), ""
    except RunDirectoryError as e:  # one broken file must not hide the rest of the report
        return Section(title, [f"could not be drawn: {e}"]), f"{title}: {e}"
    except Exception as e:  # same: report the section as missing, keep the others
        return Section(
            title, [f"could not be drawn: {type(e).__name__}: {e}"]
        ), f"{title}: {type(e).__name__}: {e}"


def _monitor_builders(run: RunDirectory) -> list[_Entry]:
    """A section per monitor folder, named folders (``<folder>_<name>``) included, in the report's order."""
    builders: list[_Entry] = [(STOPPING_TITLE, stopping_section, (STOPPING_FILE,))]
    per_folder: list[tuple[str, str, Callable[..., Section | None], bool]] = [
        (CANARY, CANARY_TITLE, canary_section, True),
        (MEMBERSHIP, MEMBERSHIP_TITLE, membership_section, True),
        (SEQUENCE, SEQUENCE_TITLE, sequence_section, False),
        (TRAJECTORY, TRAJECTORY_TITLE, trajectory_section, True),
    ]
    for kind, title, section, default in per_folder:
        for sub in run.folders(kind) or ([kind] if default else []):
            builders.append(
                (titled(title, sub), partial(section, subdir=sub, title=titled(title, sub)), (sub,))
            )
    builders.append((PRIVACY_TITLE, partial(privacy_section, title=PRIVACY_TITLE), (DP, AUDIT)))
    for kind, title in ((DP, DP_TITLE), (AUDIT, AUDIT_TITLE)):
        for sub in run.folders(kind):
            if sub != kind:  # the default folders share the section above
                named = titled(title, sub)
                dp_subdir, audit_subdir = (sub, None) if kind == DP else (None, sub)
                section = partial(
                    privacy_section, title=named, dp_subdir=dp_subdir, audit_subdir=audit_subdir
                )
                builders.append((named, section, (sub,)))
    return builders


def _builders(run: RunDirectory, root: Path, attacks: Sequence[str | os.PathLike[str]]) -> list[_Entry]:
    """Every section to build: the monitors' folders, then each attack output (the run's own first).

    Attack outputs read shadow runs, not this run's training: they carry no run to check (``()``).
    """
    builders = _monitor_builders(run)
    sources = [root / sub for sub in run.attack_folders()]
    sources += [Path(a) for a in attacks if Path(a).resolve() not in {p.resolve() for p in sources}]
    figure_names: set[str] = set()
    for source in sources:
        title = f"{ATTACK_TITLE}, `{shown_path(source, root)}`"
        builders.append((title, partial(attack_section, source=source, title=title, names=figure_names), ()))
    return builders


def _written_by(run: RunDirectory, sources: Sequence[str]) -> str | None:
    """The run that wrote a section's folders when it is not the run directory's own run, else ``None``.

    Every folder present must carry the run id of ``run.json``; an unstamped one (an older
    memcallbacks, or a file written outside a ``Trainer``) reads ``"(not recorded)"``.
    """
    info = run.run()
    if info is None:  # a run directory from before run ids: nothing to compare
        return None
    for sub in sources:
        writer = run.written_by(sub)
        if writer is not None and writer != info.run_id:
            return writer or "(not recorded)"
    return None


def _apart(section: Section, writer: str, run_id: str) -> Section:
    """``section`` marked as written by another run, for the report's "From other runs" part."""
    section.title = f"{section.title} (run {writer})"
    section.lines.insert(
        0,
        f"**Written by another run ({writer}), not by run {run_id}** that wrote this run directory last: "
        "these numbers describe a different training. Delete the folder, or give each run its own "
        "folder (a logger, or `run_dir=`)",
    )
    return section


def _build_sections(
    run: RunDirectory, root: Path, out_dir: Path, attacks: Sequence[str | os.PathLike[str]]
) -> tuple[str | None, list[Section], list[Section], list[str]]:
    """``(run id, this run's sections, sections another run wrote, problems)``."""
    try:
        info = run.run()
    except RunDirectoryError as e:
        info = None
        problems = [f"{RUN_FILE}: {e}"]
    else:
        problems = []
    sections: list[Section] = []
    others: list[Section] = []
    for title, build, sources in _builders(run, root, attacks):
        section, problem = _build_section(title, build, run, out_dir)
        if problem:
            problems.append(problem)
        if section is None:
            continue
        try:
            writer = _written_by(run, sources) if info is not None else None
        except Exception:  # an unreadable file: the section itself names it
            writer = None
        if writer is not None and info is not None:
            others.append(_apart(section, writer, info.run_id))
        else:
            sections.append(section)
        problems += [f"{section.title}: {p}" for p in section.problems]
    return (None if info is None else info.run_id), sections, others, problems


def build_report(
    run_dir: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    attacks: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, Any]:
    """Write the figures, ``report.html`` (figures embedded) and ``summary.md`` for a run directory.

    A file that cannot be read does not stop the report: its section says which file and why,
    and the message is returned under ``"problems"``.

    Args:
        run_dir: the folder the callbacks wrote (by default the run's own folder, see
            :func:`memcallbacks.rundir.resolve_run`), or a folder above it
            (the demo's output folder, ``lightning_logs``).
        out: output folder; default ``<run directory>/report``.
        attacks: more ``memcallbacks attack`` output folders (or ``attack.json`` files) to show,
            besides the run directory's own ``attack/`` and ``attack_<x>/`` folders.

    Returns:
        ``{"html": Path, "markdown": Path, "figures": [Path, ...], "problems": [str, ...],
        "run_dir": Path, "run_id": str | None, "other_runs": [str, ...]}``: ``run_id`` is the run that
        wrote the run directory (``run.json``; ``None`` for a run directory from before run ids),
        ``other_runs`` the titles of the sections another run wrote, shown apart under "From other runs".

    Raises:
        FileNotFoundError: ``run_dir`` holds no memcallbacks output.
        NotADirectoryError: ``run_dir`` or ``out`` is a file.
        PermissionError: the output folder cannot be written (pass ``out``).
        ImportError: matplotlib (the ``report`` extra) is not installed.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "the report draws its figures with matplotlib: pip install 'memcallbacks[report]'"
        ) from e

    matplotlib.use("Agg", force=True)

    root = find_run_dir(run_dir)
    out_dir = _prepare_out(Path(out) if out is not None else root / REPORT)
    run = RunDirectory(root)
    run_id, sections, others, problems = _build_sections(run, root, out_dir, attacks)
    if not sections:
        sections.append(Section("Nothing recorded", ["the run directory holds no evaluations yet"]))

    md = render_markdown(root, sections, run_id=run_id, others=others)
    md_path = fileio.atomic_write_bytes(out_dir / "summary.md", md.encode())
    html_path = fileio.atomic_write_bytes(
        out_dir / "report.html", render_html(root, out_dir, sections, run_id=run_id, others=others).encode()
    )
    figures = [out_dir / name for s in sections + others for name, _ in s.figures]
    return {
        "html": html_path,
        "markdown": md_path,
        "figures": figures,
        "problems": problems,
        "run_dir": root,
        "run_id": run_id,
        "other_runs": [s.title for s in others],
    }
