"""scripts/benchmark.py in smoke mode: both model modes run and report every figure."""
import json
import os

import pytest

from zygote import run_script
from train_helpers import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")
KEYS = ("images_per_sec", "images_per_sec_min", "images_per_sec_max", "peak_memory_mib", "peak_memory_kind",
        "params", "gflops_per_image_forward", "gflops_per_image_step", "achieved_gflops_per_sec",
        "matmul_peak_gflops_per_sec", "mfu", "best_peak_gflops_per_sec", "mfu_best_peak", "warmup_steps",
        "page_faults_per_step")


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_benchmark_smoke(mode, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script([SCRIPT, "-m", "t2t_vit_7", "--mode", mode, "--smoke", "--device", "cpu",
                       "--threads", "1", "--json", str(out)], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for key in KEYS:
        assert key in proc.stdout, f"{key} missing from the printed table"
    assert "MFU" in proc.stdout
    results = json.loads(out.read_text())
    assert results["mode"] == mode and results["img_size"] == 32 and results["threads"] == 1
    assert results["peak_memory_kind"].startswith("CPU peak RSS")
    assert results["images_per_sec_min"] <= results["images_per_sec"] <= results["images_per_sec_max"]
    assert results["mfu"] > 0 and results["matmul_peak_gflops_per_sec"] > 0
    # The best peak is the better of torch.mm's and oneDNN's (when torch has oneDNN), MFU over it no higher.
    assert results["best_peak_gflops_per_sec"] == max(results["matmul_peak_gflops_per_sec"],
                                                      results["onednn_peak_gflops_per_sec"] or 0)
    assert results["mfu_best_peak"] == pytest.approx(
        results["achieved_gflops_per_sec"] / results["best_peak_gflops_per_sec"])
    assert results["mfu_best_peak"] <= results["mfu"]
    # A training step is counted as three forward passes.
    factor = 3 if mode == "train" else 1
    assert results["gflops_per_image_step"] == pytest.approx(factor * results["gflops_per_image_forward"])
    assert results["achieved_gflops_per_sec"] == pytest.approx(
        results["gflops_per_image_step"] * results["images_per_sec"])
    if mode == "train":  # the real step's aten operations: the EMA's one fused lerp among them
        assert results["aten_calls_per_step"] > 500
        assert sum(n for _, n in results["aten_calls_top"]) <= results["aten_calls_per_step"]
    else:
        assert results["aten_calls_per_step"] is None


def test_benchmark_data_mode_compares_pipelines(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(2):
        (tmp_path / f"c{label}").mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"c{label}" / f"{i}.jpg")
    out = tmp_path / "data.json"
    proc = run_script([SCRIPT, "--mode", "data", "--data-dir", str(tmp_path), "--smoke", "--json", str(out)],
                      cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["ours_images_per_sec_per_core"] > 0 and results["timm_images_per_sec_per_core"] > 0
    assert results["speedup"] == pytest.approx(
        results["ours_images_per_sec_per_core"] / results["timm_images_per_sec_per_core"])
    assert "images/s per core" in proc.stdout


def test_benchmark_data_mode_needs_a_folder():
    proc = run_script([SCRIPT, "--mode", "data"], cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--data-dir" in proc.stderr


def test_cpu_warmup_runs_until_steps_stop_page_faulting(monkeypatch):
    import torch

    from t2t import benchmark as bench
    counter = {"faults": 0, "calls": 0}
    monkeypatch.setattr(bench, "page_faults", lambda: counter["faults"])

    def step(per_step):  # the faults each call makes, then 0 once the list runs out
        counter["faults"] += per_step[counter["calls"]] if counter["calls"] < len(per_step) else 0
        counter["calls"] += 1

    cpu = torch.device("cpu")
    settled = bench.SETTLED_PAGE_FAULTS
    assert bench.SETTLED_STEPS == 3
    cases = (  # faults per step, --warmup, --max-warmup, steps run
        ([90_000, 20_000, 400, 0, 0, 5_000, 0, 10, 0, 0], 2, 30, 9),  # three quiet steps in a row end it
        ([90_000] * 10, 2, 4, 4),  # never settles: capped
        ([0, 0, 0, 0], 3, 30, 3),  # settled at once: just --warmup
        ([90_000] * 4, 8, 30, 8),  # settled within --warmup
        ([settled, settled - 1, 0, settled, 0, 0, 0], 1, 30, 7),  # the threshold itself counts as faulting
    )
    for per_step, warmup, max_warmup, expected in cases:
        counter.update(faults=0, calls=0)
        assert bench.warm_up(lambda: step(per_step), cpu, warmup, max_warmup) == expected == counter["calls"]
    # Elsewhere (CUDA) the warm-up is just the --warmup steps: host page faults say nothing there.
    counter.update(faults=0, calls=0)
    assert bench.warm_up(lambda: step([90_000] * 10), torch.device("meta"), 2, 30) == 2


def _check_rates(results, keys, base) -> None:
    """Two rounds of positive images/s per key, and each round's ratio to `base`'s in the same round."""
    for k in keys:
        rounds = results[f"{k}_images_per_sec_rounds"]
        assert len(rounds) == 2 and all(r > 0 for r in rounds)
        ratios = [r / ref for r, ref in zip(rounds, results[f"{base}_images_per_sec_rounds"])]
        assert results[f"{k}_vs_{base}_rounds"] == pytest.approx(ratios)


def test_benchmark_compare_smoke(tmp_path):
    out = tmp_path / "compare.json"
    proc = run_script([SCRIPT, "-m", "t2t_vit_7", "--mode", "infer", "--smoke", "--device", "cpu", "--threads", "1",
                       "--compare", "plain,official,backend", "--rounds", "2", "--cpu-time", "--json", str(out)],
                      cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["clock"] == "process CPU time"
    _check_rates(results, ("plain", "official", "backend"), "plain")
    for kind in ("plain", "official", "backend"):
        rounds = results[f"{kind}_images_per_sec_rounds"]
        assert results[f"{kind}_vs_plain_min"] <= results[f"{kind}_vs_plain"] <= results[f"{kind}_vs_plain_max"]
        assert results[f"{kind}_images_per_sec_best"] == max(rounds)
        assert results[f"{kind}_best_vs_plain_best"] == pytest.approx(max(rounds) / max(results["plain_images_per_sec_rounds"]))
    bad = run_script([SCRIPT, "--compare", "plain,fast"], cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--compare plain,fast" in bad.stderr


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_official_model_code_computes_the_same_function(name):
    # The benchmark's baseline must be the same model: our weights load strictly, the logits agree.
    import timm
    import torch

    from t2t.tools.official_t2t import official_model

    ours = timm.create_model(name, img_size=64, num_classes=10).eval()
    official = official_model(name, img_size=64, num_classes=10).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(official(x), ours(x), rtol=1e-4, atol=1e-5)


def test_benchmark_img_sizes_smoke(tmp_path):
    """--img-sizes times the training step at each size on one model; each ratio is to the largest size's rate."""
    out = tmp_path / "sizes.json"
    proc = run_script([SCRIPT, "-m", "t2t_vit_7", "--mode", "train", "--smoke", "--device", "cpu", "--threads", "1",
                       "--img-sizes", "32", "48", "--rounds", "2", "--json", str(out)], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["img_sizes"] == [32, 48]
    _check_rates(results, (32, 48), 48)
    assert "t2t_vit_7 train at 32 px:" in proc.stdout and "at 48 px" in proc.stdout
    bad = run_script([SCRIPT, "--img-sizes", "40", "48"], cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--img-sizes 40 48" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
