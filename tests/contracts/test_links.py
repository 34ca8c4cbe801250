"""Every document the contracts and the docs cite exists.

Checked: the ``.proto`` files under ``protos/``, ``README.md`` and every
Markdown file under ``docs/``. In each, every relative Markdown link
(``[text](target)``, resolved against the citing file's folder, anchors
ignored) and every ``docs/...`` path written in the text (resolved against the
repository root, as the README and the proto comments use them) must name a
file or folder that exists. Web links are not fetched, and links that leave
the repository (the README's ``../shared/`` design and specification, which
live beside the checkout) are not this repository's to keep.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_DOCS_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*[\w/]")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)


def citing_files() -> list[Path]:
    """The files whose citations are checked."""
    files = [*sorted(ROOT.glob("protos/**/*.proto")), ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md"))]
    return [path for path in files if path.is_file()]


def citations(path: Path) -> list[tuple[int, str, Path]]:
    """(line number, as written, resolved target) of every local document ``path`` cites."""
    found: list[tuple[int, str, Path]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for match in _LINK.finditer(line):
            target = match.group(1)
            if _EXTERNAL.match(target):
                continue
            local = target.split("#", 1)[0].split("?", 1)[0]
            if local:
                found.append((number, target, (path.parent / local).resolve()))
        for match in _DOCS_PATH.finditer(line):
            found.append((number, match.group(0), (ROOT / match.group(0)).resolve()))
    return found


def _inside(target: Path) -> bool:
    return target == ROOT or ROOT in target.parents


@pytest.mark.parametrize("path", citing_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_document_exists(path: Path) -> None:
    missing = [
        f"{path.relative_to(ROOT)}:{number}: {written} -> {target.relative_to(ROOT)} does not exist"
        for number, written, target in citations(path)
        if _inside(target) and not target.exists()
    ]
    assert not missing, "\n".join(missing)


def test_the_checker_sees_links_and_docs_paths(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text(
        "See [the protocol](sync-protocol.md#acks), [web](https://example.com), [here](#top)\n"
        "and docs/sync-protocol.md, or `docs/runbooks/` (mydocs/x.md is not one).\n"
    )
    written = [(number, text) for number, text, _target in citations(sample)]
    assert written == [(1, "sync-protocol.md#acks"), (2, "docs/sync-protocol.md"), (2, "docs/runbooks/")]


def test_the_sync_protocol_is_documented_and_linked() -> None:
    assert (ROOT / "docs" / "sync-protocol.md").is_file()
    cited = {target for path in citing_files() for _n, _w, target in citations(path)}
    assert (ROOT / "docs" / "sync-protocol.md").resolve() in cited
