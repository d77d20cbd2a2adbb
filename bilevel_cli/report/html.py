"""The report as one self-contained HTML file: styles inline, figures as data: URIs, no script, nothing fetched,
so it opens the same from a laptop, an archive or an e-mail."""

import base64
from datetime import datetime
from html import escape
from pathlib import Path

from bilevel_cli.report.plots import Figure
from bilevel_cli.report.runs import Run
from bilevel_cli.report.table import FOOTNOTE, Row, needs_footnote, table_cells

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ccc; padding: 0.3em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code { background: #f3f3f3; padding: 0 0.2em; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
"""


def render(paths: list[Path], rows: list[Row], keys: list[str], common: dict[str, str], paper: bool,
           figures_: list[Figure], unfinished: list[Run]) -> str:
    parts = ["<h1>bilevel compare</h1>",
             f"<p class='note'>{escape(', '.join(str(path) for path in paths))}; written "
             f"{datetime.now():%Y-%m-%d %H:%M}</p>"]
    if common:
        settings = " ".join(f"<code>{escape(key)}={escape(value)}</code>" for key, value in common.items())
        parts.append(f"<p>Shared by every run: {settings}</p>")
    parts.append(_table(rows, keys, paper))
    if needs_footnote(rows):
        parts.append(f"<p class='note'>{escape(FOOTNOTE)}</p>")
    if unfinished:
        items = "".join(f"<li><code>{escape(str(run.path))}</code></li>" for run in unfinished)
        parts.append(f"<p>Unfinished runs (no summary.json): plotted, not in the table's figures:</p><ul>{items}</ul>")
    for figure in figures_:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{escape(figure.caption)}'>"
                     f"<figcaption>{escape(figure.caption)} ({escape(figure.name)})</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>bilevel compare</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _table(rows: list[Row], keys: list[str], paper: bool) -> str:
    header, lines = table_cells(rows, keys, paper)
    head = "<tr>" + "".join(f"<th>{escape(cell)}</th>" for cell in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in line) + "</tr>" for line in lines)
    return f"<table id='comparison'><thead>{head}</thead><tbody>{body}</tbody></table>"
