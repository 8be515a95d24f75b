"""The `mcufleet` command line: one entry point that dispatches to each process's composition root."""
