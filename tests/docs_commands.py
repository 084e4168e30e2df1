"""The shell commands shown in README.md and docs/*.md, as a reader would type them.

A command is a line (with its `\\` continuations) of a ```bash or ```sh block, or a `$ ` line of a ```console
block (the lines after it are its output); ```text blocks are output only. A command that cannot run on one
CPU machine says why on the line before it (`# needs: gpu`) or in the comment at the end of its line
(`# ...; needs: gpu`): `gpu` (CUDA, DALI on a GPU, several GPUs), `cluster` (several nodes, a scheduler),
`network` (a package index or a tracking server), `imagenet` (the full ImageNet validation set, e.g. its
50,000 ReaL labels).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
NEEDS = ("gpu", "cluster", "network", "imagenet")
SHELL_LANGUAGES = ("bash", "sh", "console")
_FENCE = re.compile(r"^```(\S*)\s*$")
_NEEDS = re.compile(r"#.*\bneeds:\s*(\w+)")  # `# needs: gpu` before the command, or `needs: gpu` in its comment


@dataclass
class Command:
    page: str  # relative to the checkout, e.g. docs/validate.md
    line: int  # 1-based line of its first line
    block: int  # 1-based line of the block's fence
    text: str  # the command, continuations joined
    needs: Optional[str] = None  # the reason it is not run here, from its `# needs: X` mark
    output: list[str] = field(default_factory=list)  # console blocks: the lines shown after it

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks(text: str):
    """(fence line, language, lines) of each fenced block of a Markdown page."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        yield i + 1, match.group(1), lines[i + 1:end]
        i = end + 1


def page_commands(path: str) -> list[Command]:
    """Every command of the shell blocks of one page, in order."""
    page = os.path.relpath(path, ROOT)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found: list[Command] = []
    for fence, language, lines in _blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        console = language == "console"
        pending_mark: Optional[str] = None
        current: Optional[Command] = None
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            if console and not line.startswith("$ "):
                if current is not None:
                    current.output.append(line)
                i += 1
                continue
            if console:
                line = line[2:]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            stripped = line.strip()
            if not stripped:
                continue
            mark = _NEEDS.search(stripped)
            if stripped.startswith("#"):
                pending_mark = mark.group(1) if mark else pending_mark
                continue
            current = Command(page, fence + 1 + start, fence, stripped, mark.group(1) if mark else pending_mark)
            found.append(current)
            pending_mark = None
    return found


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in page_commands(page)]
