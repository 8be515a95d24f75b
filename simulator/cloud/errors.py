"""The cloud emulator's exceptions.

Every exception the emulator raises on purpose descends from `CloudError`, itself a
`simulator.errors.SimulatorError` (the one root of the simulator package):

    CloudError
        ModelError          a programmatic call broke the emulator's rules (unknown project or
                            release, duplicate release, bad percent, bad fault knob)
            InvalidVersion  a version string that does not order (not semver-ish)
        CloudConfigError    a cloud.toml directory that cannot be loaded
        LifecycleError      the emulator was started twice, or asked for its URL while stopped

Bad HTTP input never raises out of the server: it becomes a 4xx answer.
"""

from simulator.errors import SimulatorError


class CloudError(SimulatorError):
    """Root of the cloud emulator's exceptions."""


class ModelError(CloudError, ValueError):
    """A call to the cloud model or the fault knobs broke one of their rules."""


class InvalidVersion(ModelError):
    """A version string that the emulator cannot order."""


class CloudConfigError(CloudError):
    """A cloud.toml directory that cannot be loaded."""


class LifecycleError(CloudError):
    """The emulator was started twice, or asked for its URL while stopped."""
