"""The report document as Markdown and as one self-contained HTML page (inline CSS and a small script to
sort tables; images are files next to it, no external URL)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

from harness.report.doc import Block, Code, Document, Figure, Section, Table, Text


# ------------------------------------------------------------------------------------------- Markdown
def markdown(doc: Document) -> str:
    parts = [f"# {doc.title}", *([f"*{doc.subtitle}*"] if doc.subtitle else []), *(_md_block(b) for b in doc.intro)]
    for section in doc.sections:
        parts.append(f"{'#' * section.level} {section.title}")
        parts += [_md_block(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"


def _md_block(block: Block) -> str:
    if isinstance(block, Text):
        return block.text
    if isinstance(block, Table):
        return _md_table(block)
    if isinstance(block, Figure):
        caption = f"\n\n*{block.caption}*" if block.caption else ""
        return f"![{block.title}]({block.path}){caption}"
    return f"<details><summary>{block.summary}</summary>\n\n```{block.language}\n{block.text}\n```\n\n</details>"


def _md_table(table: Table) -> str:
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---:" if table.numeric(i) else "---" for i in range(len(table.columns))]
    lines = [f"**{table.title}**", "", row(table.columns), "| " + " | ".join(align) + " |", *map(row, table.rows)]
    if table.note:
        lines += ["", f"*{table.note}*"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- HTML
def html_page(doc: Document) -> str:
    ids = _Ids()
    anchors = [ids.of(s.title) for s in doc.sections]
    nav = "".join(f'<li><a href="#{anchor}">{html.escape(s.title)}</a></li>'
                  for s, anchor in zip(doc.sections, anchors, strict=True) if s.level == 2)
    body = "\n".join(_html_section(s, anchor) for s, anchor in zip(doc.sections, anchors, strict=True))
    intro = "\n".join(_html_block(b) for b in doc.intro)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(doc.title)}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
</head>
<body>
<header><h1>{html.escape(doc.title)}</h1><p class="meta">{_inline(doc.subtitle)}</p></header>
<nav><ul>{nav}</ul></nav>
<main>
{intro}
{body}
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


class _Ids:
    """Unique anchor ids from titles, in order."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def of(self, title: str) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        self.seen[slug] = self.seen.get(slug, 0) + 1
        return slug if self.seen[slug] == 1 else f"{slug}-{self.seen[slug]}"


def _html_section(section: Section, anchor: str) -> str:
    tag = f"h{section.level}"
    blocks = "\n".join(_html_block(b) for b in section.blocks)
    heading = f"<{tag}>{html.escape(section.title)}</{tag}>"
    return f'<section id="{anchor}" class="level{section.level}">{heading}\n{blocks}</section>'


def _html_block(block: Block) -> str:
    render: dict[type, Callable] = {Text: _html_text, Table: _html_table, Figure: _html_figure, Code: _html_code}
    return render[type(block)](block)


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_text(block: Text) -> str:
    return f"<p>{_inline(block.text)}</p>"


def _html_table(table: Table) -> str:
    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="num"' if table.numeric(i) else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", i, c) for i, c in enumerate(table.columns))
    rows = "\n".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in table.rows)
    note = f'<p class="note">{_inline(table.note)}</p>' if table.note else ""
    return (f'<div class="table"><p class="caption">{_inline(table.title)}</p>'
            f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>{note}</div>')


def _html_figure(figure: Figure) -> str:
    caption = f"<figcaption>{_inline(figure.caption)}</figcaption>" if figure.caption else ""
    return (f'<figure><a href="{html.escape(figure.path)}"><img src="{html.escape(figure.path)}" '
            f'alt="{html.escape(figure.title)}"></a>{caption}</figure>')


def _html_code(block: Code) -> str:
    return (f"<details><summary>{_inline(block.summary)}</summary>"
            f"<pre><code>{html.escape(block.text)}</code></pre></details>")


_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --accent: #2a5db0; --zebra: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header, nav, main { max-width: 1280px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); font-size: 21px; }
h3 { margin: 24px 0 8px; font-size: 17px; }
.meta, .note, figcaption { color: var(--muted); font-size: 13px; }
nav ul { list-style: none; padding: 8px 0; margin: 0; display: flex; flex-wrap: wrap; gap: 4px 18px;
  border-bottom: 1px solid var(--line); }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; background: var(--zebra); padding: 1px 4px;
  border-radius: 3px; }
.table { overflow-x: auto; margin: 12px 0 20px; }
.caption { font-weight: 600; margin: 0 0 4px; }
table { border-collapse: collapse; font-size: 13.5px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: #eef1f5; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[data-order="asc"]::after { content: " \\25B2"; font-size: 10px; }
th[data-order="desc"]::after { content: " \\25BC"; font-size: 10px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: var(--zebra); }
tbody tr:hover { background: #e8eefb; }
figure { margin: 16px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
pre { background: var(--zebra); padding: 12px; overflow-x: auto; font-size: 12.5px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
"""

_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.title = "sort";
    th.addEventListener("click", function () {
      var asc = th.dataset.order !== "asc";
      table.querySelectorAll("thead th").forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = asc ? "asc" : "desc";
      var key = function (row) {
        var text = row.cells[col].textContent.trim(), n = parseFloat(text.replace(/[,+%x]/g, ""));
        return isNaN(n) ? text : n;
      };
      var body = table.tBodies[0];
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b), c;
        if (typeof x === typeof y) { c = x < y ? -1 : x > y ? 1 : 0; } else { c = typeof x === "number" ? -1 : 1; }
        return asc ? c : -c;
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""
