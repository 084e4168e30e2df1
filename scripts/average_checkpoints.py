#!/usr/bin/env python3
"""Average the EMA (or model) weights of several checkpoints into one file validate.py, predict.py and export.py read.

    python scripts/average_checkpoints.py runs/x --output runs/x/averaged.pth      # its best-epoch-*.pth files
    python scripts/average_checkpoints.py runs/x/epoch-029*.pth --weights model --output avg.pth

Written atomically, never over an input, over an existing file only with --overwrite. Errors: one
line on stderr, exit status 2 (t2t/tools/average_checkpoints.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.tools.average_checkpoints import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
