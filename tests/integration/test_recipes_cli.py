"""python -m t2t.recipes --check / --write: a committed recipe that differs from the table is found and rewritten."""
import glob
import os

from t2t import recipes
from t2t.config import RECIPE_DIR
from train_helpers import ROOT

RECIPES = sorted(glob.glob(os.path.join(RECIPE_DIR, "*.yaml")))


def test_recipe_check_and_write(tmp_path, capsys):
    name = next(iter(recipes.RECIPES))
    assert recipes.main(["--check", "--config-dir", str(tmp_path)]) == 1  # missing files
    assert recipes.main(["--write", "--config-dir", str(tmp_path)]) == 0
    assert recipes.main(["--check", "--config-dir", str(tmp_path)]) == 0
    path = tmp_path / f"{name}.yaml"
    path.write_text(path.read_text().replace("every_minutes: 30", "every_minutes: 5"))
    assert recipes.main(["--check", "--config-dir", str(tmp_path)]) == 1
    assert f"differs from the table: {path}" in capsys.readouterr().err
