#!/usr/bin/env python
"""`python validate.py ...` in a checkout: the command `t2t-validate` (t2t/validate.py), for launchers."""
import sys

from t2t.validate import main

if __name__ == "__main__":
    sys.exit(main())
