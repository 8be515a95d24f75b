"""The device simulator's exceptions.

Every exception the SMP device simulator raises on purpose descends from `SimulatorError`:

    SimulatorError
        ImageFormatError    bytes that are not a well-formed MCUboot image, or a bad version string
        FleetError          a fleet description (TOML or arguments) that cannot be loaded; the
                            message names the offending key
        CborDecodeError     a request payload that a command handler cannot decode; it never leaves
                            `SimDevice.handle`, which answers it as Zephyr does (rc 3, EINVAL)
        ServerError         the UDP fleet server was misused (started twice, unknown serial) or
                            could not bind its addresses
        CloudError          the Memfault cloud emulator's (simulator/cloud/errors.py): ModelError
                            (InvalidVersion), CloudConfigError, LifecycleError

No input frame makes `SimDevice.handle` raise: malformed traffic becomes the reply (or the silence)
that a Zephyr SMP server would produce.
"""


class SimulatorError(Exception):
    """Root of the device simulator's exceptions."""


class ImageFormatError(SimulatorError, ValueError):
    """Bytes that are not a well-formed MCUboot image, or a version string an image cannot carry."""


class FleetError(SimulatorError, ValueError):
    """A fleet description that cannot be loaded; the message names the offending key."""


class CborDecodeError(SimulatorError, ValueError):
    """A request payload that is not the CBOR map (with the field types) a handler expects."""


class ServerError(SimulatorError):
    """The fleet server was misused or could not bind its addresses."""
