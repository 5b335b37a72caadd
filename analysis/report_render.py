"""The report's blocks as small typed values, and their two renderings: Markdown (figures linked)
and one self-contained HTML file (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

# Wide tables scroll inside their own box (.scroll) instead of running past the window; figures
# scale to the text width; long words (paths, run names) wrap instead of widening the page.
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:anywhere}.scroll{overflow-x:auto;max-width:100%;margin:.5em 0 1em}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right;overflow-wrap:normal}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{font-size:13px;color:#555}
code{background:#f5f5f5;padding:0 3px}pre{overflow-x:auto}.missing{color:#a00}"""


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str  # **bold** and `code` are kept in Markdown and turned into tags in HTML


@dataclass(frozen=True)
class Items:
    items: list[str]
    css: str = ""  # an HTML class for the list (``missing`` shows it in red)


@dataclass(frozen=True)
class Table:
    name: str  # the CSV the table is also written as, ``<name>.csv``
    frame: pd.DataFrame
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    png: Path  # the PDF lies beside it with the same stem
    caption: str


Block = Union[Heading, Paragraph, Items, Table, Figure]


@dataclass
class Document:
    """A title and its blocks, in order; the ``heading`` ... ``figure`` helpers append one each."""

    title: str
    out: Path  # the report's folder: figure links in the Markdown are relative to it
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Heading(text, level))

    def text(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def items(self, items: list[str], css: str = "") -> None:
        if items:
            self.blocks.append(Items(items, css))

    def table(self, name: str, df: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(Table(name, df, caption))

    def figure(self, paths: list[Path] | None, caption: str, data: str | None = None) -> None:
        """A figure (its PNG) when it was drawn; ``data`` names the CSV it was drawn from, shown in the caption."""
        if paths:
            self.blocks.append(Figure(paths[0], caption + (f" (data: {data}.csv)" if data else "")))

    def markdown(self) -> str:
        return render_markdown(self)

    def html(self) -> str:
        return render_html(self)


# ---- cells --------------------------------------------------------------------------------------


def format_cell(column: str, value: Any) -> str:
    """A table cell: ``-`` for missing, yes/no, one decimal for percentages, integers without one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool,)) or type(value).__name__ == "bool_":
        return "yes" if value else "no"
    if isinstance(value, float):
        if column.endswith(("_pct", "_pp")):
            return f"{value:.1f}"
        if value.is_integer() and abs(value) < 1e6 and not column.endswith(("ratio_vs_ref", "_frac", "schedule")):
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "_(no rows)_"
    cols = list(df.columns)

    def cell(c, v):
        return format_cell(c, v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(cols, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><em>(no rows)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(c, v))}</td>" for c, v in zip(df.columns, row)) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _inline_html(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


# ---- the two renderings -------------------------------------------------------------------------


def _markdown_block(block: Block, out: Path) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + block.text, ""]
    if isinstance(block, Paragraph):
        return [block.text, ""]
    if isinstance(block, Items):
        return [f"- {i}" for i in block.items] + [""]
    if isinstance(block, Table):
        caption = [f"*{block.caption}* (`{block.name}.csv`)", ""] if block.caption else []
        return caption + [markdown_table(block.frame), ""]
    if isinstance(block, Figure):
        rel = block.png.relative_to(out).as_posix()
        pdf = Path(rel).with_suffix(".pdf").as_posix()
        return [f"![{block.caption}]({rel})", "", f"*{block.caption}* ([PDF]({pdf}))", ""]
    raise TypeError(f"not a report block: {block!r}")


def _html_block(block: Block) -> list[str]:
    if isinstance(block, Heading):
        return [f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"]
    if isinstance(block, Paragraph):
        return [f"<p>{_inline_html(block.text)}</p>"]
    if isinstance(block, Items):
        cls = f" class='{block.css}'" if block.css else ""
        return [f"<ul{cls}>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>"]
    if isinstance(block, Table):
        caption = (
            [f"<p><em>{html.escape(block.caption)}</em> (<code>{html.escape(block.name)}.csv</code>)</p>"]
            if block.caption
            else []
        )
        return caption + [html_table(block.frame)]
    if isinstance(block, Figure):
        data = base64.b64encode(block.png.read_bytes()).decode("ascii")
        return [
            f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
        ]
    raise TypeError(f"not a report block: {block!r}")


def render_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", ""]
    for block in doc.blocks:
        lines += _markdown_block(block, doc.out)
    return "\n".join(lines)


def render_html(doc: Document) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(doc.title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(doc.title)}</h1>"
    ]
    for block in doc.blocks:
        parts += _html_block(block)
    parts.append("</body></html>")
    return "\n".join(parts)
