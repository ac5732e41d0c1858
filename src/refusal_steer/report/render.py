"""Markdown to one self-contained HTML page (Python-Markdown, tables + fenced code, inline CSS).

Raw HTML in the Markdown is *not* passed through: the report quotes model output, prompts and dataset
names, and a completion such as ``<script>alert(1)</script>`` must show as text. The report puts such
text in code spans or fenced blocks (which Python-Markdown escapes anyway); switching off raw HTML
makes any that slips through into a paragraph escaped too.
"""

from __future__ import annotations

import html

import markdown as _markdown

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;max-width:62em;margin:2em auto;padding:0 1em;
     line-height:1.45;color:#1d1d1f;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.2em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #eee;padding-bottom:.15em}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.9em;background:#f3f3f3;padding:0 .2em;
     border-radius:3px}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:.5em .7em;white-space:pre-wrap;
    overflow-wrap:anywhere;margin:.3em 0 .8em}
pre code{background:none;padding:0;font-size:.88em}
img{max-width:100%;height:auto}
blockquote{margin:.8em 0;padding:.3em .9em;border-left:4px solid #e0a800;background:#fff8e1}
""".strip()


def markdown_to_html(text: str, title: str) -> str:
    """Render the report's Markdown as a complete HTML document with inline CSS (images stay relative)."""
    md = _markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists"], output_format="html")
    md.preprocessors.deregister("html_block")  # raw HTML blocks are escaped, not passed through
    md.inlinePatterns.deregister("html")  # and so is inline raw HTML
    body = md.convert(text)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def code_span(text: str) -> str:
    """``text`` as an inline code span, with a fence longer than any backtick run inside it."""
    text = " ".join(str(text).split())  # a code span cannot hold a newline
    longest = current = 0
    for char in text:
        current = current + 1 if char == "`" else 0
        longest = max(longest, current)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}" if text else "`(empty)`"


def code_block(text: str, info: str = "text") -> str:
    """``text`` as a fenced code block whose fence no line of ``text`` can close."""
    longest = 0
    for line in text.splitlines():
        stripped = line.strip()
        for char in "`~":
            if stripped.startswith(char * 3):
                longest = max(longest, len(stripped) - len(stripped.lstrip(char)))
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"
