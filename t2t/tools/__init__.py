"""What the tools under scripts/ are built from: benchmarks of the input pipeline, demo data, token labels.

Library code the training run does not need; each script in scripts/ parses its command line and calls in here.
"""
