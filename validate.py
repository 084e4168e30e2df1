"""Placeholder until the validate command lands."""
import sys

sys.exit("validate.py is not available yet in this version of t2t.")
