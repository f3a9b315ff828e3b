"""The documentation holds together: every link of the README and docs/ reaches a file (and a
heading, where it names one), every repository path they quote exists, and the README stays a
front page (what it is, set-up, quick start, methods, a map)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
QUOTED_PATH = re.compile(r"`((?:docs|scripts|sweeps|tempo_bench|baselines|analysis|benchmarks|tests)/[\w./-]+)`")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text, fence, out = page.read_text(), False, set()
    for line in text.splitlines():
        fence = fence != line.startswith("```")
        if not fence and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def prose(page: Path) -> str:
    """The page without its fenced code blocks (commands there may name files they create)."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_reaches_its_file_and_heading(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_repository_path_exists(page):
    missing = [p for p in QUOTED_PATH.findall(prose(page)) if not (ROOT / p.rstrip(".")).exists()]
    assert not missing, f"{page.name} quotes paths that do not exist: {missing}"


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    setup = [line for line in text.splitlines()[:6] if line.startswith("python3 -m venv")]
    assert len(setup) == 2 and setup[1].endswith("pytest -q"), "the two set-up commands come first"
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", text))
    assert linked == {p.name for p in PAGES[1:]}, "the README's map names every docs page"
