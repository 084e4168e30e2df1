"""Every shell command shown in README.md and docs/ runs, on a tiny setting, or says why it cannot here.

The commands come from the pages' ```bash / ```console blocks (tests/docs_commands.py); a command marked
`# needs: gpu|cluster|network|imagenet` is not run, any other is, in the order of its page. Each block runs in
a folder of its own, where the paths the pages take for granted (ImageNet, official release files, a run
folder, photos/) are small fixtures made once: the data are the demo generator's shapes, the release files
are a t2t_vit_7 with those classes in the official layout, the run folders are one tiny trained run. The larger
T2T-ViTs are replaced by t2t_vit_7 and every run is shortened by flags appended after the page's own
(last value wins): 32 px images, one short epoch, small batches, no loader workers. A block sees what the
earlier blocks of its page made (the console transcripts continue the block before them).

The tools run as their console scripts do (`sys.exit(main())`), in a child forked from this process after
the package is imported, so a command costs its work and not a fresh interpreter; other lines (`export`,
`ls`, `head`, `echo $?`) run in bash, whose variables carry to the next line of the page.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from docs_commands import NEEDS, PAGES, ROOT, Command, page_commands
from parquet_helpers import write_parquet
from train_helpers import CIFAR100, make_cifar

pytestmark = pytest.mark.slow

# console script -> module with main()
TOOLS = {"t2t-train": "t2t.train", "t2t-validate": "t2t.validate", "t2t-predict": "t2t.predict",
         "t2t-export": "t2t.export", "t2t-benchmark": "t2t.benchmark", "t2t-visualize": "t2t.visualize",
         "t2t-plot": "t2t.plot"}
SCRIPTS = ("make_shards", "generate_token_labels", "average_checkpoints")
SMALL = 32  # image side of every run here
CLASSES = 6  # of the fixture data: more than the top-5 of the token labels
LARGE_MODELS = re.compile(r"\bt2t_vit_(?:t_)?(?:10|12|14|19|24)\b")

# Placeholders of the pages and what they stand for here; each (pattern, replacement, why).
REWRITES = [
    (re.compile(r"(?<![\w.])/data/"), "data/", "ImageNet-layout roots: the fixtures under data/"),
    (re.compile(r"\bepoch-029\*\.pth"), "epoch-000*.pth", "the tiny run has epochs 0 and 1, not 290-299"),
    (re.compile(r"data\.holdout_fraction=0\.01\b"), "data.holdout_fraction=0.25", "1% of a tiny set is no image"),
    (re.compile(r"--data-dir data(?=\s)"), "--data-dir data/demo", "docs/validate.md: data/ is the demo set there"),
    (re.compile(r"(?<![\w/])t2t/configs/"), os.path.join(ROOT, "t2t", "configs") + "/", "the checkout's recipes"),
    (LARGE_MODELS, "t2t_vit_7", "the smallest T2T-ViT stands for the larger ones"),
]


def _model_overrides(words: list[str]) -> list[str]:
    # recipes of a larger model (t2t_vit_14_384, *_cifar10, ...) keep their name in the file
    return [] if any(w.startswith("model.name=") for w in words) else ["model.name=t2t_vit_7"]


# What each tool gets after the page's own arguments, to run in seconds.
def _shorter(words: list[str]) -> list[str]:
    tool = words[0]
    if tool == "t2t-train":
        if "--print-config" in words or "--help-config" in words:
            return []
        return [*_model_overrides(words), f"model.img_size={SMALL}", "train.epochs=1", "train.batch_size=32",
                "train.global_batch_size=null", "train.grad_accum_steps=1", "data.workers=0", "eval.batch_size=32",
                "log.tensorboard=false", "train.log_interval=1"]
    if tool in ("t2t-validate", "t2t-predict"):
        return ["--img-size", str(SMALL), "--workers", "0"] if "--help-config" not in words else []
    if tool == "t2t-export":
        return ["--img-size", str(SMALL)]
    if tool == "t2t-benchmark" and "--feed" in words:  # the feed has to outlast the timed loop
        return ["--batch-size", "2", "--steps", "100", "--num-images", "16", "--rounds", "1", "--threads", "1"]
    if tool == "t2t-benchmark":
        return ["--batch-size", "2", "--img-size", str(SMALL), "--steps", "1", "--warmup", "0", "--max-warmup", "0",
                "--rounds", "1", "--num-images", "8", "--peak-size", "64", "--threads", "1"]
    if tool == "t2t-visualize":
        return ["--max-images", "4", "--channels", "2"]
    if tool == "demo_data":
        return ["--train-per-class", "12", "--val-per-class", "2", "--size", str(SMALL)]
    if tool == "generate_token_labels":
        return ["--img-size", str(SMALL), "--workers", "0", "--batch-size", "16"]
    return []


def _visualize_set(words: list[str]) -> list[str]:
    """t2t-visualize's --set takes one list: the batch settings join the page's own."""
    small = [f"model.img_size={SMALL}", "train.batch_size=4", "data.workers=0"]
    if "--set" not in words:
        return words + ["--set", *small] if "--what" in words and "batch" in words[words.index("--what") + 1] \
            else words
    i = words.index("--set") + 1
    return words[:i] + small + words[i:]


# ---------------------------------------------------------------------------------------------------------
# Fixtures: what the pages take for granted, made once.

def _release_file(path: str) -> None:
    """A file in the official release layout (EMA weights under their DDP prefix, the argparse line), with the
    fixture data's classes."""
    import timm

    model = timm.create_model("t2t_vit_7", num_classes=CLASSES)
    ema = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict_ema": ema, "arch": "T2t_vit_7", "epoch": 309, "version": 2,
                "args": argparse.Namespace(model="T2t_vit_7", img_size=224)}, path)


def _image_folders(root: str, names, source: str) -> str:
    for name in names:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        shutil.copy(source, os.path.join(root, name, f"{name}.jpg"))
    return root


def _linked_tree(source: str, target: str) -> None:
    """A folder of links to `source`'s files: what is written into it stays in it."""
    shutil.copytree(source, target, copy_function=os.symlink, symlinks=True)


def _tool(words: list[str], cwd: str, log: str) -> int:
    call, argv = _target(words)
    return _fork_run(call, argv, cwd, {**os.environ, "MPLBACKEND": "Agg"}, log, timeout=240)


@pytest.fixture(scope="module")
def world(tmp_path_factory, _imported):
    """({path as the pages write it: the fixture it stands for}, {run folder name: the tiny run})."""
    root = str(tmp_path_factory.mktemp("docs-world"))
    log = os.path.join(root, "fixture.log")
    data = os.path.join(root, "demo")
    run = os.path.join(root, "run")
    shards = os.path.join(root, "shards")
    for words in (["python", "-m", "t2t.tools.demo_data", "--out", data, "--classes", str(CLASSES),
                   *_shorter(["demo_data"])],
                  ["t2t-train", "-c", "demo", "--data-dir", data, "--output", run, *_shorter(["t2t-train"]),
                   "train.epochs=2", "checkpoint.keep_best=2", "checkpoint.keep_epochs=2"],
                  ["python", "scripts/make_shards.py", "--data-dir", data, "--output", shards, "--shard-size", "8"]):
        status = _tool(words, root, log)
        assert status == 0, open(log).read()[-2000:]
    release = os.path.join(root, "release.pth.tar")
    _release_file(release)
    image = os.path.join(data, "val", "ring", "ring_00001.jpg")
    photos = _image_folders(os.path.join(root, "photos"), ["a", "b"], image)
    five = os.path.join(root, "five")
    os.makedirs(five)
    for name in ("disc", "ring"):
        os.symlink(os.path.join(data, "val", name), os.path.join(five, name))
    notes = os.path.join(root, "notes.jpg")
    with open(notes, "w") as f:
        f.write("not an image\n")
    eval_yaml = os.path.join(root, "eval.yaml")
    with open(eval_yaml, "w") as f:
        f.write("eval:\n  interpolation: bicubic\n")
    val_images = sum(len(files) for _, _, files in os.walk(os.path.join(data, "val")))
    real = os.path.join(root, "real.json")
    with open(real, "w") as f:
        json.dump([[i % CLASSES] if i % 3 else [] for i in range(val_images)], f)
    parquet = write_parquet(data, os.path.join(root, "parquet"), rows_per_file=50, rows_per_group=10, hf_layout=True)
    cifar10 = make_cifar(os.path.join(root, "cifar10"), classes=4, per_file=8)  # 5 training files
    cifar100 = make_cifar(os.path.join(root, "cifar100"), CIFAR100, classes=4, per_file=40)
    files = {"81.5_T2T_ViT_14.pth.tar": release, "83.3_T2T_ViT_14.pth.tar": release,
             "81.9_T2T_ViT_19.pth.tar": release, "teacher.pth": run + "/best.pth", "photos": photos,
             "a.jpg": image, "img.jpg": image, "extra.jpg": image, "notes.jpg": notes, "eval.yaml": eval_yaml,
             "real.json": real, "data/demo": data, "data/imagenet": data, "data/flowers102": data,
             "data/imagenet-shards": shards, "data/imagenet-1k": parquet,
             "data/cifar-10-batches-py": cifar10, "data/cifar-100-python": cifar100,
             "sets/v2": os.path.join(data, "val"), "sets/five": five}
    runs = {name: run for name in ("runs/demo", "runs/x", "runs/a", "runs/b", "runs/t2t14", "runs/t2t_vit_7",
                                   "runs/demo-20260101-000000", "run")}
    return files, runs


# ---------------------------------------------------------------------------------------------------------
# Running a page.

def _outputs(commands: list[Command]) -> set[str]:
    """Paths the commands write (--out / --output), as the pages write them."""
    found = set()
    for c in commands:
        words = shlex.split(_rewritten(c.text), comments=True)
        for flag, value in zip(words, words[1:]):
            if flag in ("--out", "--output"):
                found.add(value.rstrip("/"))
    return found


def _rewritten(text: str) -> str:
    for pattern, replacement, _ in REWRITES:
        text = pattern.sub(replacement, text)
    return text


def _provide(folder: str, world, written: set[str]) -> None:
    """The fixtures in `folder`, except what a command of the page writes itself."""
    files, runs = world
    for name, source in {**files, **runs}.items():
        if any(w == name or name.startswith(w + "/") for w in written):
            continue  # made by the page (a write inside a run folder stays in this folder's copy of it)
        target = os.path.join(folder, name)
        if os.path.lexists(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if name in runs:
            _linked_tree(source, target)
        else:
            os.symlink(source, target)


def _carry(previous: str, folder: str, written: set[str]) -> None:
    """Links to what the block before made (two levels: data/custom, runs/demo), except what this one writes."""
    for name in os.listdir(previous):
        source = os.path.realpath(os.path.join(previous, name))
        if name in written:
            continue
        if any(w.startswith(name + "/") for w in written) and os.path.isdir(source):
            os.makedirs(os.path.join(folder, name))
            for child in os.listdir(source):
                if f"{name}/{child}" not in written:
                    os.symlink(os.path.join(source, child), os.path.join(folder, name, child))
        else:
            os.symlink(source, os.path.join(folder, name))


def _expand(text: str, env: dict, cwd: str) -> list[str]:
    """The words bash makes of `text`: variables, quotes, globs."""
    proc = subprocess.run(["bash", "-c", f"printf '%s\\0' {text}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\0")[:-1]


def _fork_run(target, argv: list[str], cwd: str, env: dict, log: str, timeout: float) -> int:
    """Exit status of target() run in a forked child with this argv, cwd and environment; output in `log`."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", closefd=False)  # pytest's capture replaced the objects, not the descriptors
            sys.stderr = open(2, "w", closefd=False)
            os.chdir(cwd)
            torch.set_num_threads(1)  # OpenMP's pool of the parent does not survive a fork (as DataLoader workers)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = argv
            try:
                result = target()
                status = result if isinstance(result, int) else 0
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001: a traceback in the log, status 1
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.05)


def _target(words: list[str]):
    """(what to call, argv) for a command this process can run itself, else None."""
    import importlib

    if words[0] in TOOLS:
        main = importlib.import_module(TOOLS[words[0]]).main
        return (lambda: sys.exit(main())), words
    if words[0] == "python" and len(words) > 2 and words[1] == "-m" and words[2].startswith("t2t."):
        module = words[2]
        return (lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)), [module, *words[3:]]
    if words[0] == "python" and len(words) > 1 and words[1].startswith("scripts/"):
        path = os.path.join(ROOT, words[1])
        return (lambda: runpy.run_path(path, run_name="__main__")), [path, *words[2:]]
    return None


def _tool_name(words: list[str]) -> str:
    if words[0] == "python" and words[1] == "-m":
        return words[2].rsplit(".", 1)[-1]
    if words[0] == "python":
        return os.path.splitext(os.path.basename(words[1]))[0]
    return words[0]


def _expected_status(commands: list[Command], index: int) -> int:
    """0, or what the page shows with `echo $?` right after the command."""
    following = commands[index + 1] if index + 1 < len(commands) else None
    if following is not None and following.text == "echo $?" and following.output:
        return int(following.output[0])
    return 0


SHELL_VARIABLES = {"PWD", "OLDPWD", "SHLVL", "_"}


def run_page(page: str, world, base: str, timeout: float = 240) -> list[str]:
    """Run the page's unmarked commands; the problems found, one line each."""
    commands = page_commands(page)
    problems = []
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    last, blocks_done, previous_folder = 0, {}, None
    for index, command in enumerate(commands):
        if command.needs is not None:
            continue
        folder = blocks_done.get(command.block)
        if folder is None:  # a new block: its own folder, with the fixtures and what earlier blocks made
            folder = os.path.join(base, f"block-{command.block}")
            os.makedirs(folder)
            block = [c for c in commands if c.block == command.block and c.needs is None]
            written = _outputs(block)
            if previous_folder is not None:
                _carry(previous_folder, folder, written)
            _provide(folder, world, written)
            blocks_done[command.block] = previous_folder = folder
        text = _rewritten(command.text)
        words = _expand(text, env, folder) if not re.search(r"[|;&><]|\$\(|^\w+=", text) else None
        target = _target(words) if words else None
        log = os.path.join(base, f"line-{index}.log")
        start = time.monotonic()
        if target is None:  # a shell line: bash, carrying the exit status before it and its variables after it
            env_file = os.path.join(base, "env")
            script = f"set -a; (exit {last}); {text}\n__status=$?; env -0 > {shlex.quote(env_file)}; exit $__status"
            with open(log, "w") as out:
                status = subprocess.run(["bash", "-c", script], cwd=folder, env=env, stdout=out, stderr=out,
                                        timeout=timeout).returncode
            with open(env_file) as f:
                env = dict(v.split("=", 1) for v in f.read().split("\0") if "=" in v and
                           v.split("=", 1)[0] not in SHELL_VARIABLES)
        else:
            call, argv = target
            name = _tool_name(words)
            argv = argv + _shorter([name, *argv[1:]])
            if name == "t2t-visualize":
                argv = _visualize_set(argv)
            status = _fork_run(call, argv, folder, env, log, timeout)
        expected = _expected_status(commands, index)
        seconds = time.monotonic() - start
        print(f"{command.where}: status {status} in {seconds:.1f} s: {text[:100]}")
        if status != expected:
            with open(log, errors="replace") as f:
                tail = " | ".join(f.read().strip().splitlines()[-4:])
            problems.append(f"{command.where}: status {status}, expected {expected}: {command.text} -> {tail}")
        last = status
    return problems


@pytest.fixture(scope="module")
def _imported():
    """The tools imported before the first fork, so each command costs its work only."""
    import importlib

    for module in [*TOOLS.values(), "t2t.tools.demo_data", "t2t.tools.make_shards", "t2t.tools.token_labels",
                   "t2t.tools.average_checkpoints", "onnxruntime", "onnx", "matplotlib.pyplot"]:
        try:
            importlib.import_module(module)
        except ImportError:
            pass


@pytest.mark.parametrize("page", [os.path.relpath(p, ROOT) for p in PAGES
                                  if any(c.needs is None for c in page_commands(p))])
def test_page_commands_run(page, world, tmp_path):
    problems = run_page(os.path.join(ROOT, page), world, str(tmp_path))
    assert not problems, "\n".join(problems)


def test_every_command_is_run_or_marked():
    """Each command is one this test runs (a t2t tool, python -m t2t..., a script of the checkout, or a short
    shell line) or carries a `# needs:` mark with a known reason."""
    from docs_commands import all_commands

    commands = all_commands()
    assert len(commands) > 50
    unknown = [f"{c.where}: # needs: {c.needs}" for c in commands if c.needs is not None and c.needs not in NEEDS]
    assert not unknown, f"marks must be one of {NEEDS}: {unknown}"
    shell = ("export ", "echo ", "cat ", "head ", "ls ")
    strays = []
    for c in commands:
        if c.needs is not None:
            continue
        words = shlex.split(c.text, comments=True)
        runnable = words[0] in TOOLS or words[:2] == ["python", "-m"] and words[2].startswith("t2t.") or \
            words[0] == "python" and words[1] in [f"scripts/{s}.py" for s in SCRIPTS] or \
            c.text.startswith(shell) or re.match(r"^\w+=\$\(ls ", c.text)
        if not runnable:
            strays.append(f"{c.where}: {c.text}")
    assert not strays, "commands neither run here nor marked # needs: gpu|cluster|network|imagenet:\n" + \
        "\n".join(strays)
