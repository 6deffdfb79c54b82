"""orbitfl onboard agent: what runs on the satellite's flight computer.

The agent depends only on numpy, msgpack, pyzmq, sgp4 and its compiled
kernels.  Public names are imported lazily, so ``import agent`` stays cheap on
a small computer and a module is loaded only when one of its names is used.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> internal module that defines it
_EXPORTS: dict[str, str] = {
    # wire protocol, transport, outbox, agent loop (issue 3)
    "Agent": "agent._agent",
    "AgentConfig": "agent._config",
    "load_agent_config": "agent._config",
    "Outbox": "agent._outbox",
    "MessageType": "agent._wire",
    "WireError": "agent._wire",
    # geometry
    "Position": "agent._geo",
    # the NumPy MLP trainer (issue 7)
    "MLPTrainer": "agent._mlp",
    # pass prediction (issue 4)
    "walker_tles": "agent._walker",
    "GroundStation": "agent._stations",
    "ContactWindow": "agent._contacts",
    "ContactPredictor": "agent._contacts",
    "WindowFlag": "agent._contacts",
    "find_windows": "agent._contacts",
    "load_elements": "agent._tle",
    "write_tles": "agent._tle",
    "TLEError": "agent._tle",
    "SatelliteStatus": "agent._contacts",
    # gradient compression (issue 2)
    "CompressionConfig": "agent._compression",
    "CompressionType": "agent._compression",
    "CompressedUpdate": "agent._compression",
    "FederatedClient": "agent._compression",
    "UpdateFormatError": "agent._compression",
    # mesh networking (issue 5)
    "SpaceMesh": "agent._mesh",
    "MeshNode": "agent._mesh",
    "Route": "agent._mesh",
    "MeshLink": "agent._mesh",
    "IslConfig": "agent._isl",
    "IslNetwork": "agent._isl",
    "IslSnapshot": "agent._isl",
    "IslSeries": "agent._isl",
    "LinkEvent": "agent._isl",
    "LinkGraph": "agent._routing",
    "RoutingTable": "agent._routing",
    "RouteEntry": "agent._routing",
    "RoutingTableError": "agent._routing",
    "Contact": "agent._cgr",
    "ContactPlan": "agent._cgr",
    "CgrRoute": "agent._cgr",
    "earliest_arrival": "agent._cgr",
    "contacts_from_series": "agent._cgr",
    "contacts_from_windows": "agent._cgr",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'agent' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
