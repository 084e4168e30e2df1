"""The config reference: every `section.key` with its type, default, allowed values and meaning.

Generated from the dataclasses in t2t/config.py (types, defaults, range checks and the comments beside
each field), so it cannot drift from what `load_config` accepts. `t2t-train --help-config` prints it;
docs/config.md is the same text:

    python -m t2t.config_help --write docs/config.md    # regenerate the page
    python -m t2t.config_help --check docs/config.md    # exit 1 if the page is stale
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from typing import Any, Optional, Sequence

from . import config as config_module
from .config import Config
from .outputs import atomic_output

__all__ = ["HelpConfigAction", "config_reference", "main"]

_HEADER = """# Config reference

Every key of a run's config, by section. A recipe (`-c NAME` or a YAML file) sets some of them; any key
can be overridden on the command line as `section.key=value` (`t2t-train -c demo train.epochs=3`).
Defaults < recipe < command line; `t2t-train -c NAME --print-config` shows the result. Unknown keys and
values out of range are refused with the key, the value and where it came from.

This page is generated from the config dataclasses (`python -m t2t.config_help --write docs/config.md`);
`t2t-train --help-config` prints the same text.
"""


def _type_name(tp: Any) -> str:
    """`tp` as a reader writes it: int, float or null, [float, float], one of ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "string"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    return {str: "string", bool: "bool", int: "int", float: "float"}.get(tp, getattr(tp, "__name__", str(tp)))


def _allowed(f: dataclasses.Field, tp: Any) -> str:
    check = f.metadata.get("check")
    if check is not None:
        return check.expected
    literals = [a for a in (typing.get_args(t) for t in [tp, *typing.get_args(tp)]
                            if typing.get_origin(t) is typing.Literal) for a in a]
    if literals:
        return ", ".join(str(v) for v in literals)
    return ""


def _default(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return _short(value)


def _short(value: Any) -> str:
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.7g}"
    return text if any(c in text for c in ".en") else text + ".0"


def field_comments(cls: type) -> dict[str, str]:
    """The comments beside each field of dataclass `cls` in its source: the lines above and the end of its line."""
    source = inspect.getsource(cls)
    comments: dict[str, str] = {}
    pending: list[str] = []
    line_comment: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line_comment[token.start[0]] = token.string.lstrip("#").strip()
    for number, line in enumerate(source.splitlines(), start=1):
        text = line.strip()
        if text.startswith("#"):
            pending.append(line_comment.get(number, text.lstrip("# ")))
            continue
        name = text.split(":", 1)[0].strip() if ":" in text and not text.startswith(("class", "def", '"')) else ""
        if name.isidentifier() and line.startswith("    ") and not line.startswith("     "):
            parts = pending + ([line_comment[number]] if number in line_comment else [])
            comments[name] = " ".join(parts)
        pending = []
    return comments


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """The reference as Markdown: one table per section (key, type, default, allowed values, meaning)."""
    out = io.StringIO()
    out.write(_HEADER)
    hints = typing.get_type_hints(Config, vars(config_module))
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        doc = inspect.getdoc(cls) or ""
        doc = "" if doc.startswith(f"{cls.__name__}(") else doc  # dataclasses' generated signature
        out.write(f"\n## {section.name}\n\n")
        if doc:
            out.write(doc.splitlines()[0] + "\n\n")
        out.write("| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n")
        types = typing.get_type_hints(cls, vars(config_module))
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            tp = types[f.name]
            row = (f"`{section.name}.{f.name}`", _type_name(tp), f"`{_default(f)}`", _allowed(f, tp),
                   comments.get(f.name, ""))
            out.write("| " + " | ".join(_cell(c) for c in row) + " |\n")
    return out.getvalue()


class HelpConfigAction(argparse.Action):
    """`--help-config`: print the config reference and exit, as --help does."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        sys.stdout.write(config_reference())
        parser.exit()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2t.config_help", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="PAGE", help="write the reference to PAGE (docs/config.md)")
    action.add_argument("--check", metavar="PAGE", help="exit 1 if PAGE differs from the generated reference")
    args = parser.parse_args(argv)
    text = config_reference()
    if args.write:
        with atomic_output(args.write) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.write}")
    elif args.check:
        try:
            with open(args.check, encoding="utf-8") as f:
                current = f.read()
        except OSError as e:
            current = f"unreadable: {e}"
        if current != text:
            print(f"{args.check} is stale: regenerate it with python -m t2t.config_help --write {args.check}",
                  file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
