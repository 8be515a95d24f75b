"""Allows `python -m mcufleet`."""

from mcufleet.cli import main

raise SystemExit(main())
