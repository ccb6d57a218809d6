"""Every relative link in the documentation reaches a file, and every #anchor a heading.

The README points into docs/ and the pages point at each other and at launch/, tokenizer/ and
the package READMEs; a moved section or renamed heading breaks such links silently on GitHub.
Pure file reading, so it runs in well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), target without spaces, optional "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def documentation_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "launch" / "README.md", ROOT / "tokenizer" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "megadyt").rglob("README.md"))
    return files


def _prose(text: str) -> str:
    """The text outside fenced blocks and code spans, where a link is a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(_prose(text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lowercased, punctuation dropped, spaces
    to hyphens (so "3. The Pile" is "3-the-pile" and "RMSNorm → DyT/Derf" "rmsnorm--dytderf")."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in links(path.read_text()):
        if SCHEME.match(target):
            continue  # a web address or mailto: not a file of this repository
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            bad.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            bad.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return bad


@pytest.mark.parametrize(
    "path", documentation_files(), ids=lambda path: str(path.relative_to(ROOT))
)
def test_every_relative_link_resolves(path):
    assert path.exists(), f"{path} is listed as documentation but missing"
    bad = broken_links(path)
    assert not bad, f"{path.relative_to(ROOT)}:\n" + "\n".join(bad)


def test_the_readme_links_into_every_docs_page():
    targets = {t.partition("#")[0] for t in links((ROOT / "README.md").read_text())}
    into_docs = {t for t in targets if t.startswith("docs/") and t.endswith(".md")}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if p.name != "README.md"}
    assert len(into_docs) >= 8, into_docs
    assert pages <= into_docs, f"docs pages the README never links: {sorted(pages - into_docs)}"


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "page.md").write_text("# Page\n\n## RMSNorm → DyT/Derf\n\n## 3. The Pile\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](page.md#rmsnorm--dytderf) ![ok](page.md#3-the-pile) [self](#top)\n"
        "[gone](missing.md) [bad anchor](page.md#reliability) `[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n# Top\n[web](https://example.org/x.md)\n"
    )
    assert broken_links(doc) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "page.md#reliability: no heading with anchor #reliability in page.md",
    ]
