"""Prometheus metrics at `/metrics`: this replica's HTTP traffic, and the service's state read from Redis.

Queue depth, running jobs, workers and job outcomes live in Redis, shared by every replica, so they are
read at scrape time rather than counted here: any replica reports the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from rq import Queue

from app.auth import require_metrics_key
from chinfix.jobs import JobStore, read_outcomes

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted under their own name; any other (a client can send any token) is counted as `other`."""
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceStateCollector(Collector):
    """Gauges and counters taken from Redis on every scrape."""

    def __init__(self, store: JobStore, queue: Queue) -> None:
        self.store = store
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        redis_up = GaugeMetricFamily("chinfix_redis_up", "1 when Redis answered this scrape")
        try:
            queued = self.queue.count
            running = self.store.settle_running()
            heartbeats = self.store.worker_heartbeats()
            outcomes = read_outcomes(self.store.redis, self.store.keys)
        except RedisError:
            redis_up.add_metric([], 0.0)
            yield redis_up
            return
        redis_up.add_metric([], 1.0)
        yield redis_up
        yield GaugeMetricFamily("chinfix_jobs_queued", "jobs waiting for a worker", value=queued)
        yield GaugeMetricFamily("chinfix_jobs_running", "jobs a worker is editing now", value=running)
        workers = GaugeMetricFamily("chinfix_workers", "live workers, by whether they have every model", labels=["ready"])
        ready = sum(1 for beat in heartbeats if not beat.get("missing_models"))
        workers.add_metric(["true"], ready)
        workers.add_metric(["false"], len(heartbeats) - ready)
        yield workers
        ended = CounterMetricFamily("chinfix_jobs_finished", "jobs ended, by status and error code", labels=["status", "code"])
        for (status, code), count in sorted(outcomes.items()):
            ended.add_metric([status.value, code], count)
        yield ended


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


def install_metrics(app: FastAPI, store: JobStore, queue: Queue) -> None:
    """Count every request by route and status, time it, and serve `/metrics` (behind CHINFIX_METRICS_KEY when
    set). Labels take a bounded set of values: the route templates, `unmatched`, the methods above, `other`."""
    registry = CollectorRegistry()
    requests = Counter(
        "chinfix_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "chinfix_http_request_seconds", "time to answer", ["method", "route"], buckets=LATENCY_BUCKETS_S, registry=registry
    )
    registry.register(ServiceStateCollector(store, queue))

    @app.middleware("http")
    async def _count_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        method = method_label(request.method)
        latency.labels(method, route).observe(time.perf_counter() - start)
        requests.labels(method, route, str(response.status_code)).inc()
        return response

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_metrics_key)])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
