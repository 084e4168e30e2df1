"""Write the demo data set (t2t/tools/demo_data.py): `python scripts/make_demo_data.py --out data/demo`.

The same as `python -m t2t.tools.demo_data --out data/demo` where t2t is installed.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.tools.demo_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
