"""`t2t-plot`: training curves of run folders, several runs overlaid (t2t/run_curves.py does the work).

    t2t-plot runs/demo-1 runs/demo-2 --output curves.png
    t2t-plot runs/a runs/b --labels "lr 1e-3,lr 5e-4" --title "t2t_vit_7" --output cmp.png
"""
import sys

from .run_curves import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
