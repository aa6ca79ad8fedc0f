"""Run the simulator: `python -m simulator --help`."""

from .cli import main

raise SystemExit(main())
