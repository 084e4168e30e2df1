"""One directory walk for every tool: regular files only, each real folder once (symlink loops cut)."""
from __future__ import annotations

import os
import stat

__all__ = ["walk_files"]


def walk_files(top: str) -> list[tuple[str, list[str]]]:
    """(folder, sorted names of the regular files in it) for `top` and every folder below, sorted by folder path
    (the order of ``sorted(os.walk(top, followlinks=True))``).

    Links are followed, but a folder reached a second time (a symlink loop, or two links to one folder)
    is visited once, where it is first met; FIFOs, sockets and devices are left out (opening a FIFO
    named like an image would block the reader forever). Hidden entries are the caller's business.
    """
    seen: set[tuple[int, int]] = set()
    found: list[tuple[str, list[str]]] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue  # a dangling link to a folder
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        files, folders = [], []
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    mode = entry.stat().st_mode  # follows links
                except OSError:
                    continue  # a dangling link
                if stat.S_ISDIR(mode):
                    folders.append(entry.path)
                elif stat.S_ISREG(mode):
                    files.append(entry.name)
        found.append((folder, sorted(files)))
        stack.extend(sorted(folders, reverse=True))
    return sorted(found)
