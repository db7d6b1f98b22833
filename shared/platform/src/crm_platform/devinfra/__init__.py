"""Development and test infrastructure: which Kafka and MongoDB to use, and the embedded ones.

``resolve.resolve()`` picks env vars, then testcontainers when Docker answers, then the
embedded broker (noida-db) and mongod; ``crm-infra`` (``cli``) starts and stops the
embedded ones by hand; ``launcher`` runs the services as separate processes.
"""

from crm_platform.devinfra.embedded import (
    BinaryMissingError,
    ComponentStatus,
    EmbeddedInfra,
    InfraError,
    PortInUseError,
    StartError,
    StopReport,
)

# The resolve() function is deliberately not re-exported: bound here it would shadow the
# `resolve` submodule, and `crm_platform.devinfra.resolve.<name>` (imports, monkeypatching)
# would then find the function instead. Import it as `from crm_platform.devinfra.resolve import resolve`.
from crm_platform.devinfra.resolve import Infra, docker_available

__all__ = [
    "BinaryMissingError",
    "ComponentStatus",
    "EmbeddedInfra",
    "Infra",
    "InfraError",
    "PortInUseError",
    "StartError",
    "StopReport",
    "docker_available",
]
