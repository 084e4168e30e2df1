"""The package's version, apart so that modules at the bottom of the package can record it."""
__version__ = "0.1.0"
