"""The GPU batcher: concurrent jobs' inversions share one batched call, and each gets the result it would get alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from tests.perceptual_fixtures import build_random_seed_perceptual
from tests.projector_fixtures import generator, metric, w_stats  # noqa: F401 (fixtures)
from worker.batcher import BatchingDiffuser, BatchingInverter, GpuBatcher
from worker.models.stylegan2 import FixedNoiseGenerator
from worker.pipeline.invert import InversionConfig, project, rgb_from_images
from worker.pipeline.masks import soft_neck_mask
from worker.pipeline.refine import DiffuseConfig, DiffuseCrop, refine_diffuse, refine_diffuse_crops

CONFIG = InversionConfig(steps=8)


def synthesised_targets(G, count: int, seed: int) -> list[torch.Tensor]:
    """`count` 1x3xSxS images of mapped random codes, each a target of its own."""
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ws = G.mapping(torch.randn((count, G.z_dim), generator=noise))
        images = G.synthesis(ws + 0.3 * torch.randn(ws.shape, generator=noise), noise_mode="const")
    return [images[index : index + 1] for index in range(count)]


def run_concurrently(calls: Sequence) -> list:
    """Each call on its own thread, all started together; their results (or exceptions) in order."""
    outcomes: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = calls[index]()
        except Exception as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_inversions_share_a_batch_and_each_equals_its_run_alone(generator, metric, w_stats):
    targets = synthesised_targets(generator, 3, seed=1)
    alone = [project(generator, target, metric, CONFIG, w_stats) for target in targets]
    progress_seen: list[list[int]] = [[] for _ in targets]

    with GpuBatcher(max_batch=3, max_wait_seconds=5.0) as batcher:
        inverter = BatchingInverter(batcher)
        batched = run_concurrently([
            lambda index=index, target=target: inverter(
                generator, target, metric, CONFIG, w_stats,
                progress=lambda step, total, losses, index=index: progress_seen[index].append(len(losses)),
            )
            for index, target in enumerate(targets)
        ])  # fmt: skip

    assert batcher.batch_sizes == [3]
    for single, shared, seen in zip(alone, batched, progress_seen):
        assert shared.wp.shape == (1, generator.num_ws, generator.w_dim)
        np.testing.assert_allclose(shared.wp, single.wp, atol=1e-4)
        np.testing.assert_allclose(shared.losses, single.losses, rtol=1e-4)
        assert shared.noise.keys() == single.noise.keys()
        for name, maps in shared.noise.items():
            np.testing.assert_allclose(maps, single.noise[name], atol=1e-4)
        # each job hears about its own crop only, once per step of the batch
        assert seen and set(seen) == {1}


def test_a_failing_call_fails_alone_and_its_batch_mates_succeed(generator, metric, w_stats):
    good = synthesised_targets(generator, 2, seed=2)
    wrong_size = torch.zeros((1, 3, 16, 16))
    alone = [project(generator, target, metric, CONFIG, w_stats) for target in good]

    with GpuBatcher(max_batch=3, max_wait_seconds=5.0) as batcher:
        inverter = BatchingInverter(batcher)
        outcomes = run_concurrently(
            [lambda target=target: inverter(generator, target, metric, CONFIG, w_stats) for target in [good[0], wrong_size, good[1]]]
        )

    assert batcher.batch_sizes[0] == 3 and sorted(batcher.batch_sizes[1:]) == [1, 1, 1]
    assert isinstance(outcomes[1], ValueError) and "targets must be" in str(outcomes[1])
    for single, shared in zip(alone, [outcomes[0], outcomes[2]]):
        np.testing.assert_allclose(shared.wp, single.wp, atol=1e-4)


DIFFUSE = DiffuseConfig(steps=6, learning_rate=0.05)


def diffuse_crop(G, seed: int) -> tuple[FixedNoiseGenerator, DiffuseCrop]:
    """A face with its own noise maps, another face's coarse layers as its 'edit', and a neck of its own."""
    noise = torch.Generator().manual_seed(seed)
    maps = {name: torch.randn((1, 1, side, side), generator=noise) for name, side in G.synthesis.noise_resolutions().items()}
    view = FixedNoiseGenerator(G, maps)
    with torch.no_grad():
        codes = G.mapping(torch.randn((2, G.z_dim), generator=noise), truncation_psi=0.7)
        edited_codes = torch.cat([codes[1:, :4], codes[:1, 4:]], dim=1)
        original, edited = rgb_from_images(view.synthesis(torch.cat([codes[:1], edited_codes])))
    neck = np.zeros((32, 32), bool)
    neck[22 + seed % 4 :, 6 + seed % 5 : 24] = True
    return view, DiffuseCrop(codes[:1].numpy(), edited, original, neck, soft_neck_mask(neck))


def refine_alone(view: FixedNoiseGenerator, crop: DiffuseCrop, perceptual) -> object:
    return refine_diffuse(
        view, crop.original_wp, crop.edited_rgb, crop.original_rgb, crop.neck_mask, crop.soft_mask, perceptual, DIFFUSE
    )


def assert_same_refinement(shared, single) -> None:
    np.testing.assert_allclose(shared.wp, single.wp, atol=1e-4)
    np.testing.assert_allclose(shared.losses, single.losses, rtol=1e-4)
    # uint8 images: a float difference of 1e-6 may round one level the other way
    assert np.abs(shared.image.astype(int) - single.image.astype(int)).max() <= 1


def test_diffuse_of_n_crops_gives_each_crop_its_run_alone(generator, tmp_path):
    perceptual = build_random_seed_perceptual(0, tmp_path)
    views, crops = zip(*[diffuse_crop(generator, seed) for seed in (1, 2, 3)])
    stacked = FixedNoiseGenerator(generator, {name: torch.cat([view.noise[name] for view in views]) for name in views[0].noise})
    together = refine_diffuse_crops(stacked, crops, perceptual, DIFFUSE)
    for view, crop, shared in zip(views, crops, together):
        single = refine_alone(view, crop, perceptual)
        assert shared.losses.shape == (DIFFUSE.steps,) and single.losses[-1] < single.losses[0]
        assert_same_refinement(shared, single)
    assert not np.allclose(together[0].wp, together[1].wp)


def test_concurrent_diffuse_refinements_share_a_batch_and_each_equals_its_run_alone(generator, tmp_path):
    """Three jobs' crops with noise maps batch together; a crop with the generator's constant noise runs apart."""
    perceptual = build_random_seed_perceptual(0, tmp_path)
    inputs = [diffuse_crop(generator, seed) for seed in (1, 2, 3)]
    constant_noise_crop = diffuse_crop(generator, 4)[1]
    inputs.append((generator, constant_noise_crop))
    progress_seen: list[list[int]] = [[] for _ in inputs]

    with GpuBatcher(max_batch=4, max_wait_seconds=1.0) as batcher:
        diffuser = BatchingDiffuser(batcher)
        batched = run_concurrently([
            lambda index=index, view=view, crop=crop: diffuser(
                view, crop, perceptual, DIFFUSE,
                progress=lambda step, total, losses, index=index: progress_seen[index].append(len(losses)),
            )
            for index, (view, crop) in enumerate(inputs)
        ])  # fmt: skip

    assert sorted(batcher.batch_sizes) == [1, 3]
    for (view, crop), shared, seen in zip(inputs, batched, progress_seen):
        assert_same_refinement(shared, refine_alone(view, crop, perceptual))
        assert seen == [1] * DIFFUSE.steps


class RecordingOperation:
    """Doubles numbers; records the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def batch_key(self, item: int) -> str:
        return "even" if item % 2 == 0 else "odd"

    def run_batch(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        return [2 * item for item in items]


def test_batches_hold_at_most_max_batch_items_of_one_key():
    operation = RecordingOperation()
    with GpuBatcher(max_batch=2, max_wait_seconds=2.0) as batcher:
        futures = [batcher.submit(operation, item) for item in [0, 1, 2, 4, 3]]
        assert [future.result(timeout=10) for future in futures] == [0, 2, 4, 8, 6]
    assert all(len(batch) <= 2 for batch in operation.batches)
    assert all(len({item % 2 for item in batch}) == 1 for batch in operation.batches)
    assert sorted(item for batch in operation.batches for item in batch) == [0, 1, 2, 3, 4]


def test_a_lone_item_waits_at_most_max_wait():
    operation = RecordingOperation()
    with GpuBatcher(max_batch=4, max_wait_seconds=0.2) as batcher:
        start = time.monotonic()
        assert batcher.run(operation, 5) == 10
        waited = time.monotonic() - start
    assert operation.batches == [[5]]
    assert 0.15 <= waited < 2.0
