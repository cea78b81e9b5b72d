"""HTML pages that show crop boxes over photos: `procrop crop`'s contact sheet and the report
of `main --mode=eval`.

Pages are plain HTML and CSS, no script: a box is an absolutely positioned frame whose place is
given in percent of the photo, so one drawing fits a thumbnail of any size.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence
import urllib.parse

import numpy as np
from PIL import Image

COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#ff9500")
FACE_COLOUR = "#00a39b"  # Faces found: dashed teal frames, apart from the crops' colours.
STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;background:#f4f4f4;color:#222}
h1{font-size:1.3em} h2{font-size:1.1em} .item{background:#fff;margin:0 0 1em;padding:.8em;
border-radius:6px;display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}
.photo{position:relative;display:inline-block;line-height:0}
.photo img{max-width:420px;max-height:320px}
.box{position:absolute;border:2px solid;box-sizing:border-box} .box span{position:absolute;
left:0;top:0;font-size:11px;line-height:1.3;color:#fff;padding:0 3px}
.box span.below{top:auto;bottom:0}
.crops{display:flex;gap:.6em;flex-wrap:wrap} .crops figure{margin:0;text-align:center}
.crops img{max-height:160px;max-width:240px;display:block;border:3px solid}
figcaption{font-size:12px;color:#555} .error{color:#b00020} .path{font-weight:600;
word-break:break-all;width:100%}
table{border-collapse:collapse;background:#fff;margin:0 0 1em} td,th{padding:.2em .8em;
border-bottom:1px solid #ddd;text-align:right} td:first-child,th:first-child{text-align:left}
.grid{display:flex;gap:1em;flex-wrap:wrap} .grid figure{background:#fff;margin:0;padding:.5em;
border-radius:6px}
"""


def url(path: str) -> str:
  """A relative file path as a link target."""
  return urllib.parse.quote(path)


def jpeg_data_uri(pixels: np.ndarray, *, max_side: int = 420, quality: int = 85) -> str:
  """uint8 [H, W, 3] pixels as an embedded JPEG (`data:` URI), at most max_side pixels wide
  and tall: the page then needs no file beside it."""
  image = Image.fromarray(pixels)
  image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=quality)
  return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def box(xyxy: Sequence[float], size: tuple[int, int], colour: str, label: str, *,
        label_below: bool = False, dashed: bool = False) -> str:
  """A labelled frame at pixel box [x1, y1, x2, y2] of a (width, height) photo; goes inside
  `photo`. The label sits in its top-left corner, or bottom-left (two boxes that share a
  corner keep both labels readable). A dashed frame marks a face."""
  width, height = size
  x1, y1, x2, y2 = (float(v) for v in xyxy)
  style = (f"left:{100 * x1 / width:.3f}%;top:{100 * y1 / height:.3f}%;"
           f"width:{100 * (x2 - x1) / width:.3f}%;height:{100 * (y2 - y1) / height:.3f}%;"
           f"border-color:{colour}" + (";border-style:dashed" if dashed else ""))
  where = " class=below" if label_below else ""
  return (f"<div class=box style='{style}'><span{where} style='background:{colour}'>"
          f"{html.escape(label)}</span></div>")


def photo(src: str, boxes: Sequence[str]) -> str:
  """An image (a link or a data URI) with `box` frames drawn over it."""
  return f"<div class=photo><img loading=lazy src='{src}'>{''.join(boxes)}</div>"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A table of already formatted cells (escaped here)."""
  cells = lambda tag, row: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)
  return ("<table><tr>" + cells("th", header) + "</tr>"
          + "".join(f"<tr>{cells('td', row)}</tr>" for row in rows) + "</table>")


def page(title: str, body: Sequence[str]) -> str:
  """A whole HTML document with the shared style."""
  return "\n".join([f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
                    f"<style>{STYLE}</style>", *body]) + "\n"
