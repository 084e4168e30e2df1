#!/usr/bin/env python
"""Dense token labels from a teacher, per block of images (t2t/tools/token_labels.py; `import` converts
TokenLabeling's per-image label folders).

    python scripts/generate_token_labels.py --teacher FILE --data-dir DIR --output LABELDIR [--topk 5] ...
    torchrun --nproc_per_node=8 scripts/generate_token_labels.py ...    # each process labels its blocks
    python scripts/generate_token_labels.py import --from TL_DIR --data-dir DIR --output LABELDIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.tools.token_labels import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
