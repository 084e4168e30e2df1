"""Placeholder until the train command lands."""
import sys

sys.exit("train.py is not available yet in this version of t2t.")
