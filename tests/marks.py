"""Marks shared by the suite."""
import pytest


def slow_except(values, *quick):
    """Values for pytest.mark.parametrize: those in `quick` run in the quick loop (-m "not slow"), the others are
    marked slow. One small model shows a property in seconds; the whole family is checked by the full suite."""
    return [v if v in quick else pytest.param(v, marks=pytest.mark.slow) for v in values]
