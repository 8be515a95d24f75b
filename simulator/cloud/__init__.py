"""An emulated Memfault cloud: the OTA releases API, signed range-capable downloads and fault knobs."""

from simulator.cloud.counters import Endpoint, RequestCounters
from simulator.cloud.decision import (
    DeviceQuery,
    NoUpdate,
    NoUpdateReason,
    Offer,
    OfferReason,
    Refusal,
    decide,
)
from simulator.cloud.errors import CloudConfigError, CloudError, InvalidVersion, LifecycleError, ModelError
from simulator.cloud.faults import DeviceFault, DeviceFaultKind, FaultInjector, FaultSettings, ForcedStatus
from simulator.cloud.loader import load_directory
from simulator.cloud.model import CloudModel, Cohort, Project
from simulator.cloud.releases import Artifact, ArtifactKind, ArtifactSource, Release
from simulator.cloud.server import CloudEmulator
from simulator.cloud.versions import version_key

__all__ = [
    "Artifact",
    "ArtifactKind",
    "ArtifactSource",
    "CloudConfigError",
    "CloudEmulator",
    "CloudError",
    "CloudModel",
    "Cohort",
    "DeviceFault",
    "DeviceFaultKind",
    "DeviceQuery",
    "Endpoint",
    "FaultInjector",
    "FaultSettings",
    "ForcedStatus",
    "InvalidVersion",
    "LifecycleError",
    "ModelError",
    "NoUpdate",
    "NoUpdateReason",
    "Offer",
    "OfferReason",
    "Project",
    "Refusal",
    "Release",
    "RequestCounters",
    "decide",
    "load_directory",
    "version_key",
]
