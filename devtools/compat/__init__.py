"""Compatibility probe: run the test suite against a newer Home Assistant.

Home Assistant 2026.3 and newer require Python 3.14; these machines have 3.13.
``scripts/compat-latest`` installs a newer Home Assistant with
``--ignore-requires-python`` and applies the source shims of this package so that it
imports on 3.13. It is a compatibility signal, not a 3.14 run: a failure can be a
shim's, and the real-broker end-to-end tests are the arbiter. See README.md here.
"""
