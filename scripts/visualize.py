#!/usr/bin/env python3
"""Look inside a T2T-ViT: attention per block and head, attention rollout, the T2T module's attention,
block feature maps, and the first training batch of a config (t2t/visualize.py does the work).

    python scripts/visualize.py --checkpoint runs/x/best.pth --images photos/ --output vis/
    python scripts/visualize.py --checkpoint runs/x/best.pth --images a.jpg --what attention \
        --blocks -1 --heads 0,1 --output vis/
    python scripts/visualize.py --model t2t_vit_14 --weights 81.5_T2T_ViT_14.pth.tar --images a.jpg \
        --what t2t --output vis/
    python scripts/visualize.py --config configs/t2t_vit_14.yaml --data-dir /data/imagenet --what batch \
        --rank 3 --world-size 8 --output vis/

One labelled PNG per image and view, plus .npy arrays of the raw maps; the same inputs give the same
bytes. Existing files are kept unless --overwrite. Errors: one line on stderr, exit status 2.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from t2t.visualize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
