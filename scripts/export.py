#!/usr/bin/env python3
"""`python scripts/export.py ...` in a checkout: the command `t2t-export` (t2t/export.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
