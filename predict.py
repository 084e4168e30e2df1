#!/usr/bin/env python
"""`python predict.py ...` in a checkout: the command `t2t-predict` (t2t/predict.py), for launchers."""
import sys

from t2t.predict import main

if __name__ == "__main__":
    sys.exit(main())
