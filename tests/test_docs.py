"""The user docs: README.md and docs/*.md link only to files that exist, and the README stays short and
keeps its two commands (a contract with CI, see .ci/run)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = [
    "./setup.sh && . .venv/bin/activate && shufflenet train",
    "./setup.sh --test && . .venv/bin/activate && ruff check src tests benchmarks && pytest -q",
]
# [text](target) or ![alt](target), with an optional "title"; the text may not span brackets
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
EXTERNAL = ("http://", "https://", "mailto:")


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [target for target in targets if not target.lower().startswith(EXTERNAL)]


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(path):
    missing = []
    for target in relative_links(path):
        file_part = target.split("#", 1)[0]
        if not file_part:  # an anchor in the same file
            continue
        if not (path.parent / file_part).exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_docs_have_links():
    assert relative_links(README), "the README should link to docs/"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_keeps_the_two_commands(command):
    assert command in README.read_text(encoding="utf-8")
