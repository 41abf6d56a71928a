"""Where desired state lives: the local repository by default; etcd for a fleet of devices.

`FleetAgent` reconciles one server with its group's desired state through the lifecycle
`Engine`; `open_registry(url)` gives the source (`""`/`local` or `etcd://host:2379/prefix`).
"""

from edgeinfer.registry.agent import STATE_FILE, FleetAgent
from edgeinfer.registry.desired import Canary, Desired, DesiredModel, FileSource, Snapshot
from edgeinfer.registry.source import (
    EtcdRegistry,
    LocalRegistry,
    Registry,
    RegistryError,
    open_registry,
)

__all__ = [
    "STATE_FILE",
    "Canary",
    "Desired",
    "DesiredModel",
    "EtcdRegistry",
    "FileSource",
    "FleetAgent",
    "LocalRegistry",
    "Registry",
    "RegistryError",
    "Snapshot",
    "open_registry",
]
