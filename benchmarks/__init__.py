"""Measured comparisons of V2G Fleet Dispatch (never timed assertions in tests).

``python -m benchmarks`` (or ``scripts/bench``) runs every benchmark in one process
and writes ``results.json`` and ``results.md``; see ``benchmarks/README.md``.
"""
