"""Prometheus metrics, all prefixed ``zapa_``, on Zapa's own registry."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

WEBHOOK_REQUESTS = Counter(
    "zapa_webhook_requests_total",
    "Webhook requests by platform and HTTP status.",
    ["platform", "status"],
    registry=REGISTRY,
)
TURNS = Counter(
    "zapa_turns_total",
    "Closed turns by outcome: answered, failed, rate_limited, banned, duplicate.",
    ["outcome"],
    registry=REGISTRY,
)
MODEL_LATENCY = Histogram(
    "zapa_model_latency_seconds",
    "Time the model took to answer a turn, retries included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
    registry=REGISTRY,
)
ENGINE_OVERHEAD = Histogram(
    "zapa_engine_overhead_seconds",
    "Time from taking a turn to delivering its reply, minus the model call.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
TOKENS = Counter(
    "zapa_tokens_total",
    "Tokens used, by kind: prompt or completion.",
    ["kind"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "zapa_queue_depth",
    "Jobs waiting or in flight in this process's view of the reply queue.",
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "zapa_queue_wait_seconds",
    "Time from enqueueing a job to a worker taking it (shared Redis queue).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
