"""orbitfl ground segment: aggregation daemon, pass prediction, planning.

The ground side may use heavier libraries (scipy, prometheus-client,
matplotlib), installed with ``pip install .[ground]``.  Public names are
imported lazily, each from the internal module that defines it.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> internal module that defines it
_EXPORTS: dict[str, str] = {
    "Position": "agent._geo",
    "GradientAggregator": "ground._aggregate",
    "AggregationSession": "ground._aggregate_session",
    "AggregationStrategy": "ground._strategies",
    "NotEnoughUpdates": "ground._aggregate_session",
    "UpdateRejected": "ground._aggregate_updates",
    # pass prediction and sync scheduling (issue 4)
    "walker_tles": "agent._walker",
    "write_tles": "agent._tle",
    "GroundStation": "agent._stations",
    "ContactWindow": "agent._contacts",
    "WindowFlag": "agent._contacts",
    "SyncScheduler": "ground._scheduler",
    "Transfer": "ground._scheduler",
    "TransferPlan": "ground._scheduler",
    # model partitioning (issue 6)
    "ModelProfile": "ground._partition",
    "LayerProfile": "ground._partition",
    "NodeConfig": "ground._partition",
    "NodeType": "ground._partition",
    "PartitionOptimizer": "ground._partition",
    "PartitionPlan": "ground._partition",
    "Objective": "ground._partition",
    "Link": "ground._partition",
    "LinkTable": "ground._partition",
    "InfeasiblePartitionError": "ground._partition",
    "PartitionSearchLimitError": "ground._partition",
    # mesh routing tables (issue 5)
    "ConstellationTables": "ground._tables",
    "build_tables": "ground._tables",
    "tables_for_snapshot": "ground._tables",
    # aggregator daemon (issue 3)
    "GroundDaemon": "ground._daemon",
    "GroundConfig": "ground._config",
    "load_ground_config": "ground._config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'ground' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
