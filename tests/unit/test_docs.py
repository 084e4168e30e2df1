"""The way in: a README of at most 200 lines, a docs site that builds, a current config reference, and
every t2t command shown in the README and docs/ accepted by that command."""
import importlib
import os
import shlex
import subprocess
import sys

import pytest

from docs_commands import all_commands
from t2t.config import find_recipe, load_config
from t2t.config_help import config_reference
from train_helpers import ROOT

# command -> the module whose parse_args reads its arguments
PARSERS = {"train": "t2t.train", "validate": "t2t.validate", "predict": "t2t.predict", "export": "t2t.export",
           "benchmark": "t2t.benchmark", "visualize": "t2t.visualize", "plot": "t2t.run_curves"}
_SHELL_END = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}


def test_readme_is_at_most_200_lines():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail into a page under docs/"


def test_config_reference_page_is_current():
    with open(os.path.join(ROOT, "docs", "config.md"), encoding="utf-8") as f:
        page = f.read()
    assert page == config_reference(), "docs/config.md is stale: run python -m t2t.config_help --write docs/config.md"


def test_config_reference_check_command_fails_on_a_stale_page(tmp_path):
    from t2t.config_help import main

    page = tmp_path / "config.md"
    assert main(["--write", str(page)]) == 0 and main(["--check", str(page)]) == 0
    page.write_text(page.read_text().replace("`train.epochs`", "`train.epoch`"))
    assert main(["--check", str(page)]) == 1


def commands():
    """(page:line, command, arguments, needs_gpu) of every t2t command in the shell blocks of the pages."""
    found = []
    variables: dict[str, str] = {}
    block = None
    for command in all_commands():
        if (command.page, command.block) != block:  # an `export C="..."` earlier in the block, unquoted use
            block, variables = (command.page, command.block), {}
        line = command.text
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        words = shlex.split(line, comments=True)
        if words[0] == "export":
            variables.update(w.split("=", 1) for w in words[1:] if "=" in w)
            continue
        found += _t2t_commands(words, command.where, command.needs == "gpu")
    return found


def _t2t_commands(words, where, needs_gpu):
    out = []
    for i, word in enumerate(words):
        tool = None
        if word.startswith("t2t-") and word[4:] in PARSERS:
            tool = word[4:]
        elif word == "-m" and i + 1 < len(words) and words[i + 1].startswith("t2t.") and words[i + 1][4:] in PARSERS:
            tool = words[i + 1][4:]
        if tool is None:
            continue
        start = i + 1 if word.startswith("t2t-") else i + 2
        args = []
        for arg in words[start:]:
            if arg in _SHELL_END:
                break
            args.append(arg)
        out.append(pytest.param(tool, args, needs_gpu, id=f"{where} t2t-{tool}"))
    return out


DOC_COMMANDS = commands()


def test_the_pages_show_every_command():
    shown = {p.values[0] for p in DOC_COMMANDS}
    assert shown == set(PARSERS), f"commands never shown in README.md or docs/: {set(PARSERS) - shown}"


@pytest.mark.parametrize("tool,args,needs_gpu", DOC_COMMANDS)
def test_docs_command_is_accepted(tool, args, needs_gpu, capsys):
    """Parsed by the command's own parser; t2t-train's config resolved as --print-config does. No GPU needed."""
    module = importlib.import_module(PARSERS[tool])
    if "--help" in args or "-h" in args or "--help-config" in args:
        with pytest.raises(SystemExit) as stop:
            module.parse_args(args)
        assert stop.value.code == 0
        return
    try:
        parsed = module.parse_args(args)
    except SystemExit:  # a parser that also checks its paths: only data this machine lacks may be missing
        error = capsys.readouterr().err
        missing = [a for a in args if a.startswith("/data/") and repr(a) in error and "no such" in error]
        assert missing, error
        return
    if tool == "train":
        config = parsed.config
        try:
            config = find_recipe(config) if config else None
        except ValueError:
            # a file the user makes (runs/x/config.yaml, eval.yaml): its overrides still have to be valid
            assert config.endswith(".yaml") and ("/" in config or "." in config), f"-c {config!r}: not a recipe"
            config = None
        load_config(config, parsed.overrides)


def test_docs_gpu_marker_is_used():
    assert any(p.values[2] for p in DOC_COMMANDS), "no command is marked # needs: gpu"


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install '.[docs]')")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", os.path.join(ROOT, "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "config" / "index.html").is_file()


def test_page_parser_tells_commands_output_and_marks_apart(tmp_path):
    """bash lines and continuations are commands, console blocks only their `$ ` lines, text blocks none; a
    `# needs:` line marks the command after it, a `needs:` in a command's comment marks that command."""
    from docs_commands import page_commands

    page = tmp_path / "page.md"
    page.write_text("```bash\n# needs: gpu\nt2t-train -c t2t_vit_14 \\\n    --data-dir /data/imagenet\n"
                    "t2t-validate --help   # plain\npip install .   # from a checkout; needs: network\n```\n\n"
                    "```console\n$ t2t-predict --help\nusage: t2t-predict ...\n$ echo $?\n0\n```\n\n"
                    "```text\nt2t-export --help\n```\n")
    found = [(c.line, c.text, c.needs, c.output) for c in page_commands(str(page))]
    assert found == [(3, "t2t-train -c t2t_vit_14 --data-dir /data/imagenet", "gpu", []),
                     (5, "t2t-validate --help   # plain", None, []),
                     (6, "pip install .   # from a checkout; needs: network", "network", []),
                     (10, "t2t-predict --help", None, ["usage: t2t-predict ..."]),
                     (12, "echo $?", None, ["0"])]
