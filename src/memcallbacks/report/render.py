"""The report as Markdown (``summary.md``) and as one self-contained HTML page (figures embedded)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from memcallbacks.loggers import markdown_table
from memcallbacks.report.common import (
    Section,
)

__all__ = ["render_html", "render_markdown"]


# -- rendering ------------------------------------------------------------------------------
_OTHERS = "From other runs"
_OTHERS_NOTE = (
    "These folders of the run directory were written by other runs than the one above (runs that shared "
    "the folder): they do not describe its training."
)


def render_markdown(
    root: Path, sections: list[Section], *, run_id: str | None = None, others: Sequence[Section] = ()
) -> str:
    """The report as Markdown (``summary.md``): one ``##`` heading per section, figures linked by file name.

    ``others`` (sections another run wrote) follow under a ``# From other runs`` heading.
    """
    out = ["# memcallbacks report", "", f"Run directory: `{root}`", ""]
    if run_id is not None:
        out += [f"Run: `{run_id}`", ""]
    out += _markdown_sections(sections)
    if others:
        out += [f"# {_OTHERS}", "", _OTHERS_NOTE, ""] + _markdown_sections(others)
    out.append("Per-sample values stay in the run directory; nothing here was sent to a tracker.")
    return "\n".join(out) + "\n"


def _markdown_sections(sections: Sequence[Section]) -> list[str]:
    out: list[str] = []
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [f"- {line}" for line in s.lines]
        out.append("")
        for header, rows in s.tables:
            out += [markdown_table(header, rows), ""]
        out += [f"![{cap}]({name})" for name, cap in s.figures]
        out.append("")
    return out


def render_html(
    root: Path,
    out_dir: Path,
    sections: list[Section],
    *,
    run_id: str | None = None,
    others: Sequence[Section] = (),
) -> str:
    """The report as one self-contained HTML page (``report.html``), the figures of ``out_dir`` embedded.

    ``others`` (sections another run wrote) follow under a "From other runs" heading.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>memcallbacks report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "figure{display:inline-block;margin:0.5em}img{max-width:460px}figcaption{font-size:0.85em;color:#555}"
        "h2{border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:right}td:first-child{text-align:left}"
        "</style></head><body>",
        "<h1>memcallbacks report</h1>",
        f"<p>Run directory: <code>{html.escape(str(root))}</code></p>",
    ]
    if run_id is not None:
        parts.append(f"<p>Run: <code>{html.escape(run_id)}</code></p>")
    parts += _html_sections(out_dir, sections)
    if others:
        parts += [f"<h1>{_OTHERS}</h1>", f"<p>{html.escape(_OTHERS_NOTE)}</p>"] + _html_sections(
            out_dir, others
        )
    parts.append(
        "<p><small>Generated from the run directory alone; per-sample values never leave it.</small></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_sections(out_dir: Path, sections: Sequence[Section]) -> list[str]:
    parts: list[str] = []
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2><ul>")
        for line in s.lines:
            parts.append(f"<li>{html.escape(line).replace('**', '')}</li>")
        parts.append("</ul>")
        for header, rows in s.tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for cells in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            parts.append("</table>")
        for name, cap in s.figures:
            data = base64.b64encode((out_dir / name).read_bytes()).decode()
            parts.append(
                f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
                f"src='data:image/png;base64,{data}'><figcaption>{html.escape(cap)} "
                f"(<code>{html.escape(name)}</code>)</figcaption></figure>"
            )
    return parts
