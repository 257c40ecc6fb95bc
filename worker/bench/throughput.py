"""`chinfix bench throughput`: photos per minute and per-job latency through the real worker loop.

N jobs (the seed portraits in turn) are queued on Redis the way the API queues them, then drained in this process by
the worker's own loop: one RQ SimpleWorker for batch 1, `run_job_threads` (B job threads, one GPU batcher) for
batch B > 1. The pipeline is the real one (`edit_portrait`), on a registry of random-weight models of the published
architectures (as `bench pipeline` builds it: StyleGAN2 config-f, LPIPS VGG16, BiSeNet, dlib's real landmarks).

Latency is a job's `finished_at - created_at` from its record: queueing included, as a client sees it. All N jobs are
queued at once, so the latencies of a run are spread by the queue; the run column is `finished_at - started_at`.
"mean GPU batch" is how many jobs' calls the batcher joined into each GPU call (inversions and diffuses together).
Full size (1024 px, the service's 100 + 100 steps) takes hours on a CPU: `--resolution` and `--steps` run it smaller,
and the table says what it ran.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time

from worker.bench import SEED_PORTRAITS

BENCH_OWNER = "chinfix-bench"
"""The owner its job records carry: the API never serves them, so no tenant's hash is needed."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=16, help="photos queued for each row")
    parser.add_argument("--batch", default="1,4,8", help="comma-separated jobs at once per worker (CHINFIX_WORKER_BATCH)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="CHINFIX_PRECISION")
    parser.add_argument("--resolution", type=int, default=1024, help="generator resolution (config-f channel rule)")
    parser.add_argument("--steps", type=int, default=None, help="inversion steps (default: the fast preset's)")
    parser.add_argument("--diffuse-steps", type=int, default=None, help="diffuse steps (default: the setting's)")
    parser.add_argument("--refine", choices=("diffuse", "warp", "none"), default="diffuse", help="refinement")


def run(args: argparse.Namespace) -> int:
    import redis
    from rq import Queue, SimpleWorker

    from chinfix.settings import Settings
    from worker.bench.pipeline import random_weight_registry
    from worker.bench.timing import print_table
    from worker.job_threads import run_job_threads
    from worker.registry import activate, configure_cuda_math, resolve_device

    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    batches = [int(size) for size in args.batch.split(",")]
    photos = sorted(SEED_PORTRAITS.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no seed portraits under {SEED_PORTRAITS}")
    device = resolve_device(args.device)
    configure_cuda_math(device)
    base = Settings()
    overrides = {"precision": args.precision, "device": device.type}
    if args.steps is not None:
        overrides["invert_steps"] = args.steps
    if args.diffuse_steps is not None:
        overrides["diffuse_steps"] = args.diffuse_steps
    registry = random_weight_registry(args.resolution, device, base.model_copy(update=overrides))
    connection = redis.Redis.from_url(base.effective_redis_url)
    activate(registry)
    _warm_up(registry, photos[0], args.refine)

    rows = []
    for batch in batches:
        namespace = f"bench-{secrets.token_hex(4)}"
        settings = registry.settings.model_copy(
            update={"key_prefix": namespace, "queue_name": namespace, "worker_batch": batch}
        )
        registry.settings = settings
        queue = Queue(namespace, connection=connection)
        try:
            job_ids = [_queue_edit(settings, connection, queue, photos[i % len(photos)], args.refine) for i in range(args.jobs)]
            start = time.perf_counter()
            if batch == 1:
                SimpleWorker([queue], connection=connection, name=namespace).work(burst=True, logging_level="WARNING")
                mean_gpu_batch = "-"
            else:
                sizes = run_job_threads(registry, [queue], namespace, batch, settings.batch_wait_ms / 1000.0, burst=True)
                mean_gpu_batch = f"{statistics.mean(sizes):.2f}" if sizes else "-"
            wall = time.perf_counter() - start
            rows.append((batch, *_row(settings, connection, job_ids, wall), mean_gpu_batch))
        finally:
            _remove_namespace(connection, namespace, queue)
    inversion_steps = registry.settings.invert_steps or "preset"
    print_table(
        f"throughput: {args.jobs} jobs per row through the worker loop, {args.resolution}px random config-f weights, "
        f"{device.type}, {args.precision}, refine={args.refine}, invert steps {inversion_steps}, diffuse steps "
        f"{registry.settings.diffuse_steps}",
        ("batch", "succeeded", "photos / min", "latency p50 s", "latency p95 s", "run p50 s", "run p95 s", "mean GPU batch"),
        rows,
    )
    return 0


def _warm_up(registry, photo, refine: str) -> None:
    """One untimed edit: first-call costs (allocations, kernel selection, lazy imports) would land on the first row."""
    from chinfix.contract import EditOptions
    from chinfix.imaging import ImageLimits, decode_image

    rgb = decode_image(photo.read_bytes(), ImageLimits(max_pixels=10**9, min_side=1)).rgb
    registry.edit_portrait(rgb, EditOptions(refine=refine), registry, lambda stage, fraction: None)


def _queue_edit(settings, connection, queue, photo, refine: str) -> str:
    """Store and queue one edit as POST /edit does."""
    from chinfix.contract import EditOptions
    from chinfix.jobs import JobStore, new_job_id

    job_id = new_job_id()
    JobStore.from_settings(settings, connection).create(
        job_id,
        photo.read_bytes(),
        EditOptions(refine=refine),
        owner=BENCH_OWNER,
        enqueue=lambda pipe: queue.enqueue_call(
            "worker.jobs.run_edit_job", args=(job_id,), job_id=job_id, timeout=settings.job_timeout_seconds,
            pipeline=pipe,
        ),
    )  # fmt: skip
    return job_id


def _row(settings, connection, job_ids: list[str], wall_seconds: float) -> tuple:
    from chinfix.contract import JobStatus
    from chinfix.jobs import JobStore

    store = JobStore.from_settings(settings, connection)
    records = [store.get(job_id) for job_id in job_ids]
    done = [record for record in records if record is not None and record.status is JobStatus.SUCCEEDED]
    if len(done) < len(records):
        failed = [record.error for record in records if record is not None and record.status is not JobStatus.SUCCEEDED]
        print(f"{len(records) - len(done)} job(s) did not succeed: {failed[:3]}")
    latency = [record.finished_at - record.created_at for record in done] or [float("nan")]
    running = [record.finished_at - record.started_at for record in done] or [float("nan")]
    return (
        f"{len(done)}/{len(records)}",
        len(done) / wall_seconds * 60.0,
        statistics.median(latency),
        _percentile(latency, 95),
        statistics.median(running),
        _percentile(running, 95),
    )


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percent / 100.0 * (len(ordered) - 1)))]


def _remove_namespace(connection, namespace: str, queue) -> None:
    queue.delete(delete_jobs=True)
    keys = list(connection.scan_iter(match=f"{namespace}:*"))
    if keys:
        connection.delete(*keys)

