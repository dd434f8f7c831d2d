"""The documentation site builds strictly and renders: served on 127.0.0.1 (an ephemeral port, no
network), every page answers 200 and every internal link (``href``/``src``, anchors included)
resolves; the API reference has what a Keras user looks up first."""

from __future__ import annotations

import functools
import html.parser
import http.server
import pathlib
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip(
    "mkdocs",
    reason='the `docs` extra is not installed (pip install -e ".[docs]"): the documentation site cannot be built',
)
pytest.importorskip("mkdocstrings_handlers.python", reason="the `docs` extra is not installed (mkdocstrings-python)")

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)
            if name == "id" and value:
                self.ids.add(value)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_every_page_and_internal_link_resolves(served, site):
    """A crawl from the home page over every internal link: each answers 200, each anchor exists."""
    pages, ids, seen, queue, broken = {}, {}, set(), [served + "index.html"], []
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        status, body = _get(url)
        if status != 200:
            broken.append((url, status))
            continue
        if url.endswith(".html"):
            parser = _Links()
            parser.feed(body.decode("utf-8"))
            pages[url], ids[url] = parser.links, parser.ids
            for link in parser.links:
                target = urllib.parse.urljoin(url, link)
                if target.startswith(served):
                    queue.append(urllib.parse.urldefrag(target).url)
    missing_anchors = []
    for url, links in pages.items():
        for link in links:
            target, fragment = urllib.parse.urldefrag(urllib.parse.urljoin(url, link))
            if (
                fragment
                and target.startswith(served)
                and target in ids
                and urllib.parse.unquote(fragment) not in ids[target]
            ):
                missing_anchors.append((url, link))
    assert not broken, broken
    assert not missing_anchors, missing_anchors[:20]
    built = {p.relative_to(site).as_posix() for p in site.rglob("*.html") if p.name != "404.html"}
    crawled = {u[len(served) :] for u in pages}
    assert built <= crawled, f"pages no link reaches: {sorted(built - crawled)}"
    docs = {
        p.relative_to(ROOT / "docs").with_suffix(".html").as_posix()
        for p in (ROOT / "docs").rglob("*.md")
        if "_ext" not in p.parts
    }
    assert docs <= crawled


@pytest.mark.parametrize(
    "page, anchor, argument",
    [
        ("api/rnnjax.html", "rnnjax.LSTM", "recurrent_dropout"),
        ("api/keras.html", "rnnjax.keras.load_keras", "cudnn"),
        ("api/nnx.html", "rnnjax.nnx.LSTM", "rngs"),
    ],
)
def test_reference_has_what_keras_users_look_up(served, page, anchor, argument):
    """LSTM's recurrent_dropout, load_keras's cudnn= and rnnjax.nnx.LSTM's rngs, each in its own
    entry's parameter table (with a description), linked from the home page."""
    status, body = _get(served + page)
    assert status == 200
    text = body.decode("utf-8")
    start = text.index(f'id="{anchor}"')
    end = text.find('class="doc doc-heading"', start + 100)  # the next entry (or the page's end)
    entry = text[start:] if end < 0 else text[start:end]
    assert f"<code>{argument}</code>" in entry, f"{anchor}: {argument} is not in its parameter table"
    _, home = _get(served + "index.html")
    assert f'href="{page}#{anchor}"' in home.decode("utf-8")
