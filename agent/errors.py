"""Errors of the gateway agent: one root, `AgentError`.

AgentError
├── SmpError                      SMP exchange with a device went wrong
│   ├── SmpLocalError             we were about to break the protocol (frame too large, ...)
│   ├── SmpRemoteError            the device's reply is malformed or breaks the protocol
│   └── SmpDeviceError            the device answered with an error code (rc or group error)
├── TransportError                the link to a device failed
│   ├── DeviceUnreachable         no answer to the handshake, or the connection failed
│   ├── LinkTimeout               no reply within the deadline
│   └── LinkClosed                the link dropped (disconnect, socket closed)
├── FirmwareError                 an artifact or image is unacceptable
│   ├── DownloadError             the artifact could not be fetched or is not allowed
│   └── ImageError                the file is not a valid MCUboot image or does not fit the job
└── ConfigError                   the agent configuration is invalid
"""


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class SmpError(AgentError):
    """An SMP exchange with a device went wrong."""


class SmpLocalError(SmpError):
    """We were about to send something the protocol or the device does not allow."""


class SmpRemoteError(SmpError):
    """The device's reply is malformed or breaks the protocol."""


class SmpDeviceError(SmpError):
    """The device answered with an SMP error.

    Attributes:
        group: the SMP group of the request.
        rc: the error code: an `mcumgr_err_t` when `group_error` is False, else the group's own code.
        group_error: True for an SMP v2 `err` map, False for a plain `rc`.
    """

    def __init__(self, group: int, rc: int, *, group_error: bool, reason: str = "") -> None:
        self.group = group
        self.rc = rc
        self.group_error = group_error
        kind = f"group {group} error" if group_error else "rc"
        super().__init__(f"device answered {kind} {rc}" + (f" ({reason})" if reason else ""))


class TransportError(AgentError):
    """The link to a device failed."""


class DeviceUnreachable(TransportError):
    """The device did not answer the handshake, or the connection could not be made."""


class LinkTimeout(TransportError):
    """No reply arrived within the deadline."""


class LinkClosed(TransportError):
    """The link dropped while a reply was awaited."""


class FirmwareError(AgentError):
    """An artifact or image is unacceptable."""


class DownloadError(FirmwareError):
    """The artifact could not be fetched, or fetching it is not allowed."""


class ImageError(FirmwareError):
    """The file is not a valid MCUboot image, or does not fit the job."""


class ConfigError(AgentError):
    """The agent configuration is invalid."""
