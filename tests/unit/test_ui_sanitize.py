"""The sanitiser on its own: what hostile HTML loses, what newsletters keep."""

from __future__ import annotations

import pytest

from improvmx_archive.ui.sanitize import clean_html, clean_style

INLINE = "https://archive.test/ui/emails/E/inline/G/3"


def clean(html: str) -> str:
    return clean_html(html, lambda cid: INLINE if cid == "logo@example.org" else None).html


@pytest.mark.parametrize("hostile", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<body onload=alert(1)>",
    "<a href=\"javascript:alert(1)\">x</a>",
    "<a href=\" JaVaScRiPt:alert(1)\">x</a>",
    "<a href=\"data:text/html,<script>alert(1)</script>\">x</a>",
    "<form action=\"https://evil.example/\"><input name=p><button>go</button></form>",
    "<iframe src=\"https://evil.example/\"></iframe>",
    "<object data=\"x.swf\"></object><embed src=\"x.swf\">",
    "<base href=\"https://evil.example/\">",
    "<meta http-equiv=\"refresh\" content=\"0;url=https://evil.example/\">",
    "<link rel=stylesheet href=\"https://evil.example/a.css\">",
    "<svg><script>alert(1)</script><image href=\"https://evil.example/p.png\"/></svg>",
    "<math><mtext><img src=x onerror=alert(1)></mtext></math>",
    "<div style=\"background:url(https://evil.example/p.png)\">x</div>",
    "<style>@import 'https://evil.example/a.css'; body{background:url(https://evil.example/p)}</style>",
    "<video poster=\"https://evil.example/p.png\"></video><audio src=\"https://evil.example/a\"></audio>",
    "<input type=image src=\"https://evil.example/p.png\">",
    "<table background=\"https://evil.example/p.png\"><tr><td>x</td></tr></table>",
    "<img srcset=\"https://evil.example/p.png 1x\">",
])
def test_nothing_that_runs_or_fetches_survives(hostile):
    cleaned = clean(hostile).lower()
    for marker in ("<script", "onerror", "onload", "javascript:", "<form", "<input", "<iframe", "<object",
                   "<embed", "<base", "<meta", "<link", "<svg", "url(", "@import", "evil.example", "srcset",
                   "poster", "background="):
        assert marker not in cleaned, (hostile, cleaned)


def test_script_and_title_content_is_dropped_not_shown_as_text():
    assert clean("<title>T</title><script>x=1</script><p>hi</p>") == "<p>hi</p>"


def test_style_blocks_become_checked_style_attributes():
    html = ("<html><head><style>@import url(https://evil.example/a.css);"
            "@font-face { font-family: X; src: url(https://evil.example/f.woff) }"
            "p { color: #c00; background: url(https://evil.example/p.png); padding: 4px }"
            "@media (max-width: 600px) { p { color: blue } }</style>"
            '<link rel="stylesheet" href="https://evil.example/b.css"></head>'
            '<body><p style="margin: 0">hi</p></body></html>')
    assert clean(html) == '<p style="color: #c00; padding: 4px; margin: 0">hi</p>'


def test_unreadable_css_is_dropped_with_its_block():
    assert clean("<style>p{{{ color: red</style><p>hi</p>") == "<p>hi</p>"


def test_newsletter_layout_survives():
    html = ('<table width="600" cellpadding="0" style="border-collapse: collapse; background-color: #fafafa">'
            '<tr><td align="center" style="padding: 12px 24px; font-family: Arial, sans-serif; color: #333">'
            '<font color="#ff0000">Sale</font></td></tr></table>')
    cleaned = clean(html)
    for kept in ('width="600"', 'cellpadding="0"', "border-collapse: collapse", "background-color: #fafafa",
                 'align="center"', "padding: 12px 24px", "font-family: Arial, sans-serif", '<font color="#ff0000">'):
        assert kept in cleaned, kept


@pytest.mark.parametrize("value", [
    "background: url(https://evil.example/p.png)",
    "background: URL( 'https://evil.example/p.png' )",
    "background: u\\72l(https://evil.example/p.png)",
    "width: expression(alert(1))",
    "width: expr/**/ession(alert(1))",
    "width: exp\\ression(alert(1))",
    "background-image: image-set('https://evil.example/p.png' 1x)",
    "background-image: -webkit-image-set('https://evil.example/p.png' 1x)",
    "list-style: cross-fade(url(a), url(b))",
    "behavior: url(x.htc)",
    "-moz-binding: url(x.xml#xss)",
    "@import 'https://evil.example/a.css'",
    "--x: url(https://evil.example/p.png)",
    "background: var(--x)",
])
def test_style_declarations_that_fetch_or_run_are_dropped(value):
    assert clean_style(f"color: red; {value}; margin: 0") == "color: red; margin: 0"


def test_style_filter_output_is_escaped_in_the_attribute():
    cleaned = clean('<p style="font-family: &quot;x&quot;&gt;&lt;script&gt;">t</p>')
    assert "<script" not in cleaned


def test_links_open_a_new_tab_without_opener_or_referrer():
    cleaned = clean('<a href="https://example.org/offer">offer</a><a href="mailto:a@example.org">mail</a>')
    assert cleaned.count('target="_blank"') == 2
    assert cleaned.count('rel="noopener noreferrer"') == 2
    assert 'href="https://example.org/offer"' in cleaned and 'href="mailto:a@example.org"' in cleaned


def test_relative_links_are_dropped():
    assert "href" not in clean('<a href="/ui/logout">x</a><a href="../x">y</a>')


def test_cid_images_point_at_the_archive_and_unknown_cids_are_dropped():
    cleaned = clean('<img src="cid:logo@example.org"><img src="cid:other@example.org">')
    assert cleaned == f'<img src="{INLINE}"><img>'


def test_remote_images_lose_their_src_until_the_reader_asks():
    html = '<img src="https://tracker.example/p.gif" alt="logo"><img src="http://t.example/q">'
    blocked = clean_html(html, lambda cid: None)
    assert blocked.remote_images == 2
    assert blocked.html == '<img alt="logo"><img>'
    shown = clean_html(html, lambda cid: None, remote=True)
    assert shown.remote_images == 2
    assert 'src="https://tracker.example/p.gif"' in shown.html and 'src="http://t.example/q"' in shown.html


# Every way HTML can make a browser fetch something, for the check below.
FETCHING_HTML = """<html><head><link rel="stylesheet" href="https://evil.example/l.css">
<link rel="preload" as="image" href="https://evil.example/preload.png"><link rel="prefetch" href="https://evil.example/pf">
<style>@import url(https://evil.example/i.css); body { background: url(https://evil.example/b.png) }
@font-face { font-family: F; src: url(https://evil.example/f.woff) } p { font-family: F }</style></head>
<body background="https://evil.example/body.png">
<img src="https://evil.example/a.png" srcset="https://evil.example/b.png 2x" lowsrc="https://evil.example/low.png">
<img src="//evil.example/protocol-relative.png"><img src=" HTTPS://evil.example/upper.png">
<picture><source srcset="https://evil.example/s.png"><img src="https://evil.example/p.png"></picture>
<video poster="https://evil.example/poster.png" src="https://evil.example/v.mp4"><track src="https://evil.example/t.vtt"></video>
<audio src="https://evil.example/a.mp3"></audio><input type="image" src="https://evil.example/in.png">
<table background="https://evil.example/t.png"><tr><td background="https://evil.example/td.png">x</td></tr></table>
<div style="background-image: url('https://evil.example/div.png')">x</div>
<div style="background: src('https://evil.example/src.png')">x</div>
<div style="list-style-image: image-set('https://evil.example/set.png' 1x)">x</div>
<div style="background-image: attr(data-u type(&lt;url&gt;))" data-u="https://evil.example/attr.png">x</div>
<svg><image href="https://evil.example/svg.png"/><use href="https://evil.example/use.svg#a"/>
<feImage href="https://evil.example/fe.png"/></svg><math href="https://evil.example/math">m</math>
<iframe src="https://evil.example/if"></iframe><object data="https://evil.example/o"></object>
<embed src="https://evil.example/e"><a ping="https://evil.example/ping" href="https://example.org/ok">link</a>
<meta http-equiv="refresh" content="0;url=https://evil.example/refresh"><base href="https://evil.example/">
</body></html>"""


def test_without_remote_content_no_attribute_names_another_server():
    """The sanitised HTML alone fetches nothing remote: the only URL left is a link's href,
    which a browser follows only when clicked."""
    from html.parser import HTMLParser

    found: list[tuple[str, str, str]] = []

    class Attributes(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend((tag, name, value or "") for name, value in attrs)

    result = clean_html(FETCHING_HTML, lambda cid: None)
    Attributes().feed(result.html)
    assert result.remote_images >= 3
    remote = [(tag, name, value) for tag, name, value in found
              if "evil.example" in value or "//" in value and not (tag == "a" and name == "href")]
    assert remote == []
    assert "evil.example" not in result.html
    assert [value for tag, name, value in found if name == "href"] == ["https://example.org/ok"]


def test_only_data_urls_of_raster_images_are_kept():
    result = clean('<img src="data:image/png;base64,iVBORw0KGgo="><img src="data:image/svg+xml,<svg onload=alert(1)>">'
                   '<img src="data:text/html;base64,PHNjcmlwdD4=">')
    assert result == '<img src="data:image/png;base64,iVBORw0KGgo="><img><img>'


def test_stylesheets_named_by_link_are_never_read(tmp_path):
    sheet = tmp_path / "local.css"
    sheet.write_text("p { color: green }")
    for href in (f"file://{sheet}", str(sheet), "https://evil.example/remote.css"):
        assert clean(f'<link rel="stylesheet" href="{href}"><style>b {{ color: red }}</style><p>x</p>') == "<p>x</p>"
