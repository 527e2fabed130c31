"""How tall the message frame should be, estimated on the server from the cleaned HTML.

The frame is sandboxed without scripts or same-origin access, so neither it nor the page can
measure its content; an estimate sizes it instead: text wrapped at an assumed width, images
by their declared size, block margins, rounded up to one of a few heights the stylesheet
knows (`fh-n-*` for narrow screens, `fh-w-*` from 800 px up), and capped there at most of the
window, beyond which the frame scrolls as before. Overestimating is the safe side: a short
message gets a short frame, a long one the full height. Pure functions, no I/O.
"""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

# Content widths (CSS px) the frame's text wraps at: a phone, and a narrow desktop window.
NARROW_WIDTH, WIDE_WIDTH = 320, 720
CHAR_WIDTH = 8.0  # average advance of the frame's 16 px system-ui text, rounded up
LINE_HEIGHT = 20  # "normal" line height of 16 px text in common sans fonts, rounded up
PRE_LINE_HEIGHT = 16  # 13 px monospace
HEADING_LINE = {"h1": 38, "h2": 29, "h3": 23}
BLOCK_MARGIN = 16  # <p>, <ul>, headings: about 1em above and below, collapsed
FRAME_PADDING = 12 * 2 + 8  # the frame body's margin, and room for a rounding error
SAFETY = 1.05  # estimates err on the tall side: white space beats a second scrollbar
UNKNOWN_IMAGE = 120  # an image without a declared height
# The heights (px) the stylesheet defines, smallest first; taller estimates get FULL.
HEIGHTS = (96, 144, 192, 256, 320, 400, 480, 560, 640, 800)
FULL = "full"

_BLOCKS = {"p", "div", "li", "tr", "table", "blockquote", "pre", "ul", "ol", "dl", "dt", "dd", "h1", "h2",
           "h3", "h4", "h5", "h6", "hr", "center", "section", "article", "header", "footer", "figure",
           "figcaption", "caption", "details", "summary", "nav", "aside", "td", "th"}
_MARGINS = {"p", "ul", "ol", "dl", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "figure", "hr"}
_VOID = {"br", "img", "hr", "col", "wbr"}
_NUMBER = re.compile(r"^\s*(\d{1,5})(?:px)?\s*$")
_PADDING = re.compile(r"padding(-top|-bottom)?\s*:\s*([^;]+)", re.I)
_PX = re.compile(r"(\d{1,4})(?:\.\d+)?px")


def _pixels(value: str | None) -> int | None:
    match = _NUMBER.match(value or "")
    return int(match.group(1)) if match else None


def _vertical_padding(style: str | None) -> int:
    """Top plus bottom padding (px) a style attribute declares, roughly."""
    total = 0
    for side, value in _PADDING.findall(style or ""):
        sizes = [int(number) for number in _PX.findall(value)]
        if side:
            total += sizes[0] if sizes else 0
        elif sizes:
            total += sizes[0] + (sizes[2] if len(sizes) > 2 else sizes[0])
    return total


class _Layout(HTMLParser):
    """Walks the cleaned HTML once, adding up block heights for one content width. Elements
    that declare a wider width (a 600 px newsletter table on a phone) overflow rather than
    wrap, so their content is laid out at that width."""

    def __init__(self, width: int):
        super().__init__(convert_charrefs=True)
        self.height = 0.0
        self.widths: list[tuple[str, int]] = [("", width)]
        self.line_chars = 0  # characters of the block being filled
        self.line_height = LINE_HEIGHT
        self.line_images = 0.0  # tallest image on the current line
        self.pre = 0

    @property
    def width(self) -> int:
        return self.widths[-1][1]

    def _close_line(self) -> None:
        if self.line_chars or self.line_images:
            per_line = max(1, int(self.width / CHAR_WIDTH))
            lines = math.ceil(self.line_chars / per_line) if self.line_chars else 0
            self.height += max(lines * self.line_height, self.line_images)
        self.line_chars, self.line_images = 0, 0.0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "br":
            self.line_chars = self.line_chars or 1  # an empty line still takes its height
            self._close_line()
        elif tag == "img":
            width, height = _pixels(attributes.get("width")), _pixels(attributes.get("height"))
            if height is not None:  # declared: the box is kept even while the image is blocked
                shown = height * min(1.0, self.width / width) if width else height
            elif attributes.get("src") is None:
                shown = LINE_HEIGHT if attributes.get("alt") else 0  # a blocked image shows its alt text
            else:
                shown = UNKNOWN_IMAGE
            self.line_images = max(self.line_images, shown)
        elif tag in _BLOCKS:
            self._close_line()
            self.height += (BLOCK_MARGIN if tag in _MARGINS else 0) + _vertical_padding(attributes.get("style"))
            self.line_height = HEADING_LINE.get(tag, LINE_HEIGHT)
            if tag == "pre":
                self.pre += 1
                self.line_height = PRE_LINE_HEIGHT
        declared = _pixels(attributes.get("width"))
        if tag not in _VOID and declared:
            self.widths.append((tag, max(self.width if tag in ("td", "th") else declared, declared)))

    def handle_endtag(self, tag):
        if tag in _BLOCKS:
            self._close_line()
            self.line_height = LINE_HEIGHT
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        if len(self.widths) > 1 and self.widths[-1][0] == tag:
            self.widths.pop()

    def handle_data(self, data):
        if self.pre:
            lines = data.split("\n")
            for line in lines[:-1]:
                self.line_chars += len(line) or 1
                self._close_line()
            self.line_chars += len(lines[-1])
        else:
            self.line_chars += len(" ".join(data.split()))

    def total(self) -> int:
        self.close()
        self._close_line()
        return int(self.height * SAFETY) + FRAME_PADDING


def estimated_height(html: str, width: int) -> int:
    """The content height (px) of cleaned HTML laid out at `width` CSS px, roughly."""
    layout = _Layout(width)
    layout.feed(html)
    return layout.total()


def _bucket(height: int) -> str:
    return next((str(index) for index, limit in enumerate(HEIGHTS) if height <= limit), FULL)


def frame_classes(html: str) -> str:
    """The frame's size classes for this cleaned HTML, e.g. "fh-n-3 fh-w-1"."""
    return f"fh-n-{_bucket(estimated_height(html, NARROW_WIDTH))} fh-w-{_bucket(estimated_height(html, WIDE_WIDTH))}"
