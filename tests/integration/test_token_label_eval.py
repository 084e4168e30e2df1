"""validate.py scores a token-label checkpoint with its aux head (TokenLabeling's rule), not the class head alone."""
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from t2t.models.factory import resolve_eval_preprocessing
from train_helpers import ROOT, token_label_checkpoint

from t2t import validate

FORMAT1 = os.path.join(ROOT, "tests", "fixtures", "format1_step5.pth")


# The factory builds what each entry point built before it (same class, keys, shapes and, from the same seed,
# the same initial values): training's _build_model, the token-label path, the tools' name-only builds.
# Eval preprocessing: the model's pretrained cfg gives the defaults, explicit settings win.
# validate.py: checkpoint's stored config < -c file < section.key=value overrides < flags (aliases).
# A token-labeling checkpoint is evaluated with its aux head (TokenLabeling's rule), as the run built it.


@pytest.mark.slow
def test_validate_evaluates_a_token_label_checkpoint_with_its_aux_head(tmp_path):
    model, path = token_label_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    samples = []
    for label, name in enumerate("abc"):
        os.makedirs(tmp_path / "val" / name)
        for i in range(2):
            p = str(tmp_path / "val" / name / f"{i}.png")
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(p)
            samples.append((p, label))
    out = tmp_path / "rows.json"
    assert validate.main(["--data-dir", str(tmp_path), "--checkpoint", path, "--device", "cpu", "--workers", "0",
                          "--json", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    transform = resolve_eval_preprocessing(model).transform()
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in samples])
    targets = torch.tensor([t for _, t in samples])
    with torch.no_grad():
        full = F.cross_entropy(model(images), targets).item()
        head_only = F.cross_entropy(model.head(model.forward_features(images)[:, 0]), targets).item()  # before
    assert abs(full - head_only) > 1e-3  # the two models disagree on this data
    assert row["loss"] == pytest.approx(full, rel=1e-4, abs=1e-5)


# One table from error type to exit status, applied by run_main for every tool.
