"""hwcompile's version (one place; reports, caches and the package metadata read it)."""
__version__ = "0.1.0"
