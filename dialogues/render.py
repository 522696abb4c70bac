"""How every report is written out: a report is a title, a summary line and groups of tables, each table a
(title, header, rows, note); this module writes them as Markdown and as one self-contained HTML page
(the chart embedded as a data URI, nothing to fetch). The reports compute; this renders."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable

Table = tuple[str, list[str], list[list[str]], str]  # title, header, rows, note
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}"
    "th{background:#f4f4f4}img{max-width:100%}.note{color:#555;font-size:.9em}"
)


def markdown(title: str, summary: str, groups: Iterable[tuple[str | None, list[Table]]]) -> str:
    """`# title`, the summary, then each group (`## heading`, when it has one) of tables."""
    lines = [f"# {title}", "", summary, ""]
    for heading, tables in groups:
        depth = "###" if heading else "##"
        if heading:
            lines += [f"## {heading}", ""]
        for name, header, rows, note in tables:
            lines += [f"{depth} {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows] or ["| " + " | ".join(["-"] * len(header)) + " |"]
            lines += ["", note, ""]
    return "\n".join(lines)


def html_page(
    title: str, summary: str, chart: bytes, alt: str, groups: Iterable[tuple[str | None, list[Table]]], footer: str
) -> str:
    """One self-contained page: the title, the summary, the chart (PNG bytes) and every table."""
    e = html.escape
    png = base64.b64encode(chart).decode()
    parts = [f"<h1>{e(title)}</h1>", f"<p>{e(summary)}</p>", f'<img alt="{e(alt)}" src="data:image/png;base64,{png}">']
    for heading, tables in groups:
        depth = "h3" if heading else "h2"
        if heading:
            parts.append(f"<h2>{e(heading)}</h2>")
        for name, header, rows, note in tables:
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            body = (
                "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                or f'<tr><td colspan="{len(header)}">none yet</td></tr>'
            )
            parts.append(
                f"<{depth}>{e(name)}</{depth}><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<p class=note>{e(note)}</p>"
            )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} - limachat</title>'
        f"<style>{STYLE}</style></head><body>{''.join(parts)}<p class=note>{e(footer)}</p></body></html>\n"
    )
