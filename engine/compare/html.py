"""`compare --html`: report.md as one self-contained HTML page, the charts embedded as data URIs, to
attach to a pull request or mail. The markdown is `compare`'s own (headings, paragraphs, pipe
tables, lists, quotes, images, `code`), so a small converter suffices: no markdown library."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}tr:nth-child(even){background:#fafafa}
code{background:#f3f3f3;padding:0 3px}img{max-width:100%}blockquote{color:#555;border-left:3px solid #ccc;
margin:0;padding-left:1em}"""

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _image(alt: str, src: str, base: Path) -> str:
    path = base / src
    if path.is_file() and path.suffix.lower() == ".png":
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'
    return f"<p>[{html.escape(alt)}: {html.escape(src)} not found]</p>"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def report_html(markdown: str, base: Path, title: str) -> str:
    """The page for `markdown` (report.md's text); images are read from `base` and embedded."""
    body: list[str] = []
    para: list[str] = []
    table: list[list[str]] = []
    items: list[str] = []

    def flush() -> None:
        if para:
            body.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if table:
            head, *rows = table
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
            table.clear()

    for line in markdown.splitlines():
        stripped = line.strip()
        heading = re.match(r"(#{1,6}) (.*)", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            n = len(heading.group(1))
            body.append(f"<h{n}>{_inline(heading.group(2))}</h{n}>")
        elif stripped.startswith("|"):
            if not re.fullmatch(r"\|[\s:|-]+\|?", stripped):  # not the |---| row
                table.append(_cells(stripped))
        elif (image := _IMAGE.fullmatch(stripped)) is not None:
            flush()
            body.append(_image(image.group(1), image.group(2), base))
        elif stripped.startswith("- "):
            items.append(stripped[2:])
        elif stripped.startswith("> "):
            flush()
            body.append(f"<blockquote>{_inline(stripped[2:])}</blockquote>")
        else:
            para.append(stripped)
    flush()
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
