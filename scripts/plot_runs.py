#!/usr/bin/env python3
"""Training curves: train loss, val top-1 (model and EMA) and lr against epochs, several runs overlaid.

    python scripts/plot_runs.py runs/demo-1 runs/demo-2 --output curves.png
    python scripts/plot_runs.py runs/a runs/b --labels "lr 1e-3,lr 5e-4" --title "t2t_vit_7" --output cmp.png

Reads each run folder's log.jsonl (or summary.csv); the same runs give the same bytes. An existing
--output is kept unless --overwrite. Errors: one line on stderr, exit status 2 (t2t/run_curves.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.run_curves import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
