"""The CPU backend module is loaded only by runs that ask for it (a fresh interpreter)."""

import pytest


@pytest.mark.slow
def test_backend_is_loaded_only_when_asked_for():
    """Importing t2t, building and training-configuring a model leave the backend module unloaded."""
    import subprocess
    import sys

    code = ("import sys, timm, t2t, t2t.models, t2t.engine.run; timm.create_model('t2t_vit_7', img_size=32); "
            "assert 't2t.models.cpu' not in sys.modules, 'loaded'; from t2t.models import cpu; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
