"""MkDocs hooks (``mkdocs.yml``: ``hooks``): the landing page is README.md and the changelog page
is CHANGELOG.md, each rendered from the file itself.

``docs/index.md`` and ``docs/changelog.md`` are placeholders; their pages are rendered from the
repository files, whose links point into ``docs/`` from the repository root, rewritten to point
from the site's root. One text, two places.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = {"index.md": ROOT / "README.md", "changelog.md": ROOT / "CHANGELOG.md"}


def on_page_markdown(markdown, page, config, files):
    source = SOURCES.get(page.file.src_uri)
    if source is None:
        return markdown
    return re.sub(r"\]\(docs/", "](", source.read_text())
