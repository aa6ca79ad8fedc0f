"""Modules that ``scripts/compat-latest`` copies into the probe venv's site-packages."""
