"""The commands: entry points, recipes by name, --help-config, one bootstrap whose errors carry their exit status,
and an import graph without circles."""
import ast
import configparser
import importlib
import inspect
import os
import pkgutil

import pytest

import t2t
from t2t.config import RECIPE_DIR, ConfigError, find_recipe, load_config, recipe_names
from t2t.config_help import config_reference
from t2t.errors import EXIT_USAGE, T2TError
from zygote import run_script
from train_helpers import ROOT

TOOLS = ("train", "validate", "predict", "export", "benchmark", "visualize", "plot")


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = [line for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    return dict((part.strip() for part in line.split("=")) for line in lines)


def test_distribution_name_and_console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["metadata"]["name"] == "t2t-vit"
    assert "configs/*.yaml" in cfg["options.package_data"]["t2t"]
    scripts = console_scripts()
    assert sorted(scripts) == sorted(f"t2t-{tool}" for tool in TOOLS)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert module == f"t2t.{name[4:]}" and callable(getattr(importlib.import_module(module), function))
        source = inspect.getsource(importlib.import_module(module))
        assert 'if __name__ == "__main__":' in source, f"python -m {module} would do nothing"


def test_recipes_ship_in_the_package_and_are_found_by_name():
    assert RECIPE_DIR == os.path.join(os.path.dirname(t2t.__file__), "configs")
    assert {"demo", "t2t_vit_14", "t2t_vit_7", "t2t_vit_14_384"} <= set(recipe_names())
    assert find_recipe("t2t_vit_14") == find_recipe("t2t_vit_14.yaml") == os.path.join(RECIPE_DIR, "t2t_vit_14.yaml")
    assert load_config("demo").to_dict() == load_config(os.path.join(RECIPE_DIR, "demo.yaml")).to_dict()


def test_a_path_wins_over_a_recipe_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.yaml").write_text("train: {epochs: 3}\n")
    assert find_recipe("demo.yaml") == "demo.yaml" and load_config("demo.yaml").train.epochs == 3
    assert find_recipe("demo") == os.path.join(RECIPE_DIR, "demo.yaml")


def test_an_unknown_recipe_names_the_choices():
    with pytest.raises(ConfigError) as error:
        find_recipe("t2t_vit_15")
    message = str(error.value)
    assert "'t2t_vit_15'" in message and "did you mean" in message and "t2t_vit_14" in message and "demo" in message
    with pytest.raises(ConfigError, match="no such file"):
        find_recipe("missing/recipe.yaml")


def test_train_help_names_help_config(capsys):
    from t2t import train

    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--help"])
    assert stop.value.code == 0 and "--help-config" in capsys.readouterr().out


def test_help_config_prints_every_key_with_type_default_and_allowed_values(capsys):
    import dataclasses

    from t2t import train
    from t2t.config import Config

    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--help-config"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and text == config_reference()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            assert f"| `{section.name}.{f.name}` |" in text
    assert "| `train.device` | string | `auto` | auto, cpu, cuda[:N] |" in text
    assert "| `train.amp` | string | `auto` | auto, none, bf16, fp16 |" in text
    assert "| `optim.clip_grad` | float or null | `null` | > 0 or null | max global grad norm; None: no clipping |" in text


def _help_text(module, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        module.parse_args(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


# The tools whose arguments include a config (-c/--config) and section.key=value overrides.
TOOLS_WITH_CONFIG = ("train", "validate", "predict", "visualize")


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_that_reads_a_config_answers_help_config(tool, capsys):
    """--help names --help-config, which prints the config reference, for every tool taking config overrides;
    a tool whose --help shows a config file or overrides but is not in the list fails here."""
    module = importlib.import_module("t2t.run_curves" if tool == "plot" else f"t2t.{tool}")
    text = _help_text(module, capsys)
    takes_config = "--config" in text or "section.key" in text.lower()
    assert takes_config == (tool in TOOLS_WITH_CONFIG), f"t2t-{tool} --help: config options {takes_config}"
    if not takes_config:
        assert "--help-config" not in text
        return
    assert "--help-config" in text and "type, default and allowed values" in " ".join(text.split())
    with pytest.raises(SystemExit) as stop:
        module.parse_args(["--help-config"])
    assert stop.value.code == 0 and capsys.readouterr().out == config_reference()


def test_every_error_of_the_package_carries_its_exit_status():
    loose = []
    for info in pkgutil.walk_packages(t2t.__path__, "t2t."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__ \
                    and not issubclass(obj, T2TError):
                loose.append(f"{module.__name__}.{name}")
    assert not loose, f"errors without an exit status (subclass t2t.errors.T2TError): {loose}"


def test_train_reports_through_the_shared_bootstrap(tmp_path, capsys):
    from t2t import train

    assert train.main(["-c", "demo", "--data-dir", str(tmp_path), "--output", str(tmp_path / "run"),
                       "train.epochs=0"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == "t2t-train: error: train.epochs=0: expected >= 1\n"


def _imports(path: str, module: str, is_package: bool) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


# config <-> data.dali: config's DALI check moves out of config.py on the data-pipeline branch.
KNOWN_CIRCLES = [{"t2t.config", "t2t.data.dali"}]


def test_no_import_circle_even_through_imports_inside_functions():
    root = os.path.dirname(t2t.__file__)
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(root))[:-3].replace(os.sep, ".")
                files[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    graph = {m: {t for t in _imports(p, m, p.endswith("__init__.py")) if t in files and t != m
                 and not files[t].endswith("__init__.py")} for m, p in files.items()}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reach = {m: reaches(m) for m in graph}
    circles = {frozenset(m2 for m2 in reach[m] if m in reach[m2]) | {m} for m in graph if m in reach[m]}
    assert [set(c) for c in circles if set(c) not in KNOWN_CIRCLES] == []


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_python_m_tool_help(tool):
    proc = run_script(["-m", f"t2t.{tool}", "--help"], cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: t2t-{tool}"), proc.stdout + proc.stderr
