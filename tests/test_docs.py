"""The README and docs/*.md stay true to the tree: links resolve, named configs exist, the annotated config is
the real one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CONFIG_PATH = re.compile(r"(?<![\w/.])(configs/[\w./-]+\.yaml)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page`` (lower case, punctuation dropped, spaces to dashes)."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            anchors.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(target)
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_config_named_exists(page: Path) -> None:
    missing = [path for path in CONFIG_PATH.findall(page.read_text()) if not (REPO / path).is_file()]
    assert not missing, f"{page.name}: {missing}"


def test_the_readmes_annotated_config_is_the_quickstart_config() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## One config, annotated"):]
    block = section[section.index("```yaml") + len("```yaml"):]
    block = block[:block.index("```")]
    assert yaml.safe_load(block) == yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
