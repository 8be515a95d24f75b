"""The `mcufleet` package's exceptions (the CLI, the demo and the local broker it starts).

McufleetError
    LocalBrokerError    mosquitto is missing or did not start (demo and tests); the message says what
    DemoError           the demo's own broker connection ended before the rollout did
"""


class McufleetError(Exception):
    """Root of the mcufleet package's exceptions."""


class LocalBrokerError(McufleetError):
    """mosquitto is missing or did not start; the message says what to do."""


class DemoError(McufleetError):
    """The demo's own broker connection ended before the rollout did."""
