"""The mcufleet test suite."""
