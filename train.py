#!/usr/bin/env python
"""`python train.py ...` in a checkout: the command `t2t-train` (t2t/train.py), for launchers."""
import sys

from t2t.train import main

if __name__ == "__main__":
    sys.exit(main())
