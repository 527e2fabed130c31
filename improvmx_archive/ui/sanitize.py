"""Clean a sender's HTML before it is shown: the first of the UI's layers against hostile mail.

A `<style>` block is first folded into the elements' style attributes by css-inline, with
remote and local stylesheets never loaded, so a newsletter keeps its look; the attributes
then pass the same checks as any other. nh3 (the Rust ammonia sanitiser) then keeps only
listed tags and attributes. What it cannot be
told is done in its attribute filter: links only to http(s) and mailto, images from data:
image types or from the message's own parts (cid: rewritten), http(s) images only once the
reader asks for remote content (until then their src is dropped and counted, so the HTML
itself loads nothing remote even where the frame's CSP is lost), and style attributes rebuilt declaration
by declaration without anything that could fetch (url(), image-set(), @import) or run
(expression(), behaviours). nh3 checks schemes before the filter and never re-checks what
the filter returns, so the filter returns only values it has built or fully checked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import css_inline
import nh3

TAGS = (set(nh3.ALLOWED_TAGS) - {"map", "area"}) | {"font", "tfoot"}
# Content that must not surface as text either (the sanitiser removes script/style already).
CLEAN_CONTENT_TAGS = {"script", "style", "title", "noscript", "template", "textarea", "select"}
_LAYOUT = {"style", "align", "valign", "width", "height", "bgcolor", "dir", "lang", "title", "border",
           "cellpadding", "cellspacing"}
ATTRIBUTES = {
    "*": _LAYOUT,
    "a": {"href", "name"},
    "img": {"src", "alt"},
    "font": {"color", "face", "size"},
    "td": {"colspan", "rowspan", "nowrap"},
    "th": {"colspan", "rowspan", "nowrap", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start", "type"},
    "ul": {"type"},
}
# What nh3 lets through to the filter; the filter narrows per attribute.
URL_SCHEMES = {"http", "https", "mailto", "cid", "data"}
_DATA_IMAGE = re.compile(r"^data:image/(?:png|gif|jpeg|webp);base64,[a-z0-9+/=\s]*$", re.I)
_PROPERTY = re.compile(r"^[a-z][a-z-]*$")
# Anything in a declaration value that can load a resource, run code or hide either.
_UNSAFE_VALUE = re.compile(r"url\(|src\(|attr\(|image-set|image\(|cross-fade|element\(|var\(|expression|javascript|vbscript|"
                           r"behavior|binding|@import|[\\@<>]|/\*", re.I)
_STYLE_LENGTH_LIMIT = 4000


_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False, keep_link_tags=False)


@dataclass
class CleanedHtml:
    html: str
    remote_images: int  # http(s) images: their src is kept only when the reader asks (remote=True)


@functools.lru_cache(maxsize=4096)  # newsletters repeat a few style strings hundreds of times
def clean_style(value: str) -> str | None:
    """The declarations of a style attribute that fetch and run nothing, rebuilt one by one."""
    kept = []
    for declaration in value[:_STYLE_LENGTH_LIMIT].split(";"):
        name, colon, raw = declaration.partition(":")
        name, raw = name.strip().lower(), raw.strip()
        if not colon or not raw or not _PROPERTY.match(name) or _UNSAFE_VALUE.search("".join(raw.split())):
            continue
        kept.append(f"{name}: {raw}")
    return "; ".join(kept) or None


def inline_style_blocks(html: str) -> str:
    """The HTML with its <style> rules written into style attributes (what no attribute can
    hold, like @media, @font-face and @import, is dropped); unchanged if it has no <style>
    or its CSS cannot be read."""
    if "<style" not in html.lower():
        return html
    try:
        return _INLINER.inline(html)
    except css_inline.InlineError:
        return html


def _scheme(value: str) -> str:
    head, colon, _ = value.partition(":")
    return head.strip().lower() if colon else ""


def clean_html(html: str, inline_url: Callable[[str], str | None], remote: bool = False) -> CleanedHtml:
    """Sanitised HTML for the message frame. inline_url maps a Content-ID to the URL of the
    message's own part (None when the message has no such inline, and the image is dropped).
    Remote (http/https) images keep their src only with remote=True; otherwise the result
    holds no URL a browser would fetch from another server."""
    remote_found = 0

    def attribute_filter(tag: str, attribute: str, value: str) -> str | None:
        nonlocal remote_found
        if attribute == "style":
            return clean_style(value)
        if attribute == "href":
            return value if _scheme(value) in {"http", "https", "mailto"} else None
        if attribute == "src":
            scheme = _scheme(value)
            if tag != "img":
                return None
            if scheme == "cid":
                return inline_url(value.split(":", 1)[1].strip().strip("<>"))
            if scheme in {"http", "https"}:
                remote_found += 1
                return value if remote else None
            return value if scheme == "data" and _DATA_IMAGE.match(value) else None
        return value

    cleaned = nh3.clean(
        inline_style_blocks(html),
        tags=TAGS,
        clean_content_tags=CLEAN_CONTENT_TAGS,
        attributes=ATTRIBUTES,
        attribute_filter=attribute_filter,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes=URL_SCHEMES,
        url_relative="deny",
    )
    return CleanedHtml(cleaned, remote_found)
