"""scripts/benchmark.py --mode train with a teacher reports the teacher's share of the step."""
import pytest

import t2t  # noqa: F401


@pytest.mark.slow
def test_benchmark_train_step_with_a_teacher(tmp_path):
    import json

    from t2t.benchmark import main

    out = tmp_path / "b.json"
    assert main(["--smoke", "--mode", "train", "-m", "t2t_vit_7_distilled", "--teacher-model", "t2t_vit_7",
                 "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["teacher_model"] == "t2t_vit_7" and 0 < result["teacher_share"] < 1
    assert main(["--smoke", "--mode", "infer", "--teacher-model", "t2t_vit_7"]) == 2
