"""The daemon's Prometheus metrics, in a registry of its own.

A private ``CollectorRegistry`` per daemon lets tests and benchmarks run
several daemons in one process without their counters colliding.
"""

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)


class DaemonMetrics:
    """Counters, gauges and histograms of one ground daemon."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rounds_closed = Counter(
            "orbitfl_rounds_closed",
            "Rounds closed, by outcome (aggregated, partial, median_fallback, "
            "carried_over)",
            ["outcome"],
            registry=r,
        )
        self.updates_accepted = Counter(
            "orbitfl_updates_accepted", "Updates accepted and journaled", registry=r
        )
        self.updates_duplicate = Counter(
            "orbitfl_updates_duplicate",
            "Updates received again and ACKed without aggregating",
            registry=r,
        )
        self.updates_relayed = Counter(
            "orbitfl_updates_relayed",
            "Updates accepted that another agent relayed for their origin",
            registry=r,
        )
        self.rejected = Counter(
            "orbitfl_rejected",
            "Messages and updates refused, by reason",
            ["reason"],
            registry=r,
        )
        self.credits_expired = Counter(
            "orbitfl_credits_expired",
            "Grants to send an update that ran out before the update arrived",
            registry=r,
        )
        self.bytes_in = Counter(
            "orbitfl_bytes_received", "Payload bytes received", registry=r
        )
        self.bytes_out = Counter("orbitfl_bytes_sent", "Payload bytes sent", registry=r)
        self.models_sent = Counter(
            "orbitfl_models_sent",
            "MODEL messages built for an agent, by form (weights, patch)",
            ["form"],
            registry=r,
        )
        self.send_failures = Counter(
            "orbitfl_send_failures",
            "Replies that could not be sent, by reason (unreachable, full)",
            ["reason"],
            registry=r,
        )
        self.auth_refused = Counter(
            "orbitfl_auth_refused",
            "CURVE handshakes refused because the key is not in the allowlist",
            registry=r,
        )
        self.round_duration = Histogram(
            "orbitfl_round_duration_seconds",
            "Round duration on the daemon's clock (simulated seconds)",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.participants = Gauge(
            "orbitfl_round_participants",
            "Distinct agents whose updates the last closed round aggregated",
            registry=r,
        )
        self.pending = Gauge(
            "orbitfl_round_pending", "Updates accepted in the open round", registry=r
        )
        self.round = Gauge("orbitfl_round", "The round in progress", registry=r)
        self.model_version = Gauge(
            "orbitfl_model_version", "Global model version", registry=r
        )
        self._server = None

    def serve(self, addr: str, port: int) -> int:
        """Start the HTTP exporter; return the bound port (``port=0`` picks one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (for tests and the benchmark)."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v
