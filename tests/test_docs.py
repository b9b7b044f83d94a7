"""The README and docs/ stay true: their links resolve, and their commands use real flags."""

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SRC

ROOT = SRC.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?:^|[\s(])charnn\s+([a-z][a-z-]*)")
COMMAND_END = re.compile(r"\s(?:#|\|\|?|;|&&|>|<)")
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", path.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # a web address: not checked offline
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def commands(page: Path):
    """Each `charnn COMMAND --flag ...` in the page's shell and text code blocks."""
    for language, code in FENCE.findall(page.read_text(encoding="utf-8")):
        if language.strip() not in ("", "bash", "sh", "text", "console"):
            continue
        for line in code.replace("\\\n", " ").splitlines():
            for match in COMMAND.finditer(line):
                rest = line[match.end() :]
                end = COMMAND_END.search(rest)
                yield match[1], FLAG.findall(rest[: end.start()] if end else rest)


@functools.cache
def help_text(command: str | None) -> str:
    arguments = [command, "--help"] if command else ["--help"]
    done = subprocess.run([sys.executable, "-m", "charnn", *arguments], env=dict(os.environ, PYTHONPATH=str(SRC)),
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("page", [page for page in PAGES if page.name != "log.md"], ids=lambda page: page.name)
def test_commands_use_real_flags(page):
    """The log keeps commands as they were run; every other page must match today's CLI."""
    known = set(re.findall(r"^    ([a-z][a-z-]*)", help_text(None), re.M))
    wrong = []
    for command, flags in commands(page):
        if command not in known:
            wrong.append(f"charnn {command}")
            continue
        listed = set(FLAG.findall(help_text(command)))
        wrong += [f"charnn {command} {flag}" for flag in flags if flag not in listed]
    assert not wrong, f"{page.name}: not in --help: {wrong}"


def test_every_page_is_checked():
    assert any(command == "train" for page in PAGES for command, _ in commands(page))
    assert "results.md" in {page.name for page in PAGES}
