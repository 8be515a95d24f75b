"""The shared runtime's exception tree; the MQTT and config adapters translate library errors into it.

ServiceRuntimeError
 +-- ConfigError        a config file or environment value is missing, malformed or unknown
 +-- MqttError          the MQTT session cannot do what was asked
      +-- OutboxFull    the bounded outgoing queue is full; the message was not queued
      +-- SessionClosed the session was stopped; nothing more can be published
 +-- BackgroundTaskFailed a service's background task failed (the service then stops)
"""


class ServiceRuntimeError(Exception):
    """Root of every error the shared runtime raises on purpose."""


class ConfigError(ServiceRuntimeError):
    """A configuration value is missing, malformed or unknown.

    Attributes:
        source: the file or environment variable the value came from.
        key: the dotted path of the offending key (`$` for the whole document).
        reason: what is wrong with it.
    """

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key}: {reason}")


class MqttError(ServiceRuntimeError):
    """The MQTT session cannot do what was asked."""


class OutboxFull(MqttError):
    """The bounded outgoing queue is full; the message was not queued."""


class SessionClosed(MqttError):
    """The session was stopped; nothing more can be published."""


class BackgroundTaskFailed(ServiceRuntimeError):
    """A service's background task failed; the service stops rather than run without it."""
