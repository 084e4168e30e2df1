#!/usr/bin/env python3
"""`python scripts/visualize.py ...` in a checkout: the command `t2t-visualize` (t2t/visualize.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.visualize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
