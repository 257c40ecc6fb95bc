"""`chinfix train STAGE`: the method's training half over one training directory (see `worker.training`).

In order: sample → score → coarse → pairs → fine; `classifier` trains the scorer, `status` shows queued pair
shards. Every stage skips the work a previous run finished. Errors are one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train double-chin boundaries (sample, score, coarse, pairs, fine)")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    sample = stages.add_parser("sample", help="draw z, w and W+ codes (and optionally images) into DIR")
    sample.add_argument("dir", type=Path)
    sample.add_argument("--num", type=int, required=True, help="how many samples")
    sample.add_argument("--psi", type=float, help="truncation of the W+ codes (the seed: 0.8)")
    sample.add_argument("--seed", type=int, help="0")
    sample.add_argument("--chunk", type=int, help="samples per file (1000)")
    sample.add_argument("--images", action="store_true", help="also write every face as DIR/images/NNNNNN.jpg")
    sample.add_argument("--batch", type=int, help="faces synthesised at once (4)")
    sample.set_defaults(func=run_sample)

    classifier = stages.add_parser("classifier", help="train the seed's ResNeXt-50 double-chin classifier")
    classifier.add_argument("data", type=Path, help="a folder with with/ and without/ photos, or a CSV of path,label")
    classifier.add_argument("-o", "--output", type=Path, required=True, help="classifier .safetensors to write")
    classifier.add_argument("--epochs", type=int, help="10")
    classifier.add_argument("--batch-size", type=int, help="the seed: 4")
    classifier.add_argument("--lr", type=float, help="Adam learning rate (the seed: 1e-4, betas 0, 0.9)")
    classifier.add_argument("--split", type=float, help="fraction of the photos trained on (0.9)")
    classifier.add_argument("--input-size", type=int, help="input side in pixels (the seed: 256)")
    classifier.add_argument("--init", type=Path, help="start from this checkpoint (.safetensors or the seed's .pth)")
    classifier.set_defaults(func=run_classifier)

    score = stages.add_parser("score", help="a double-chin probability per sample of DIR")
    score.add_argument("dir", type=Path)
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--classifier", type=Path, help="classifier .safetensors (or the seed's .pth)")
    source.add_argument("--labels", type=Path, help="CSV of sample,label (label 0..1)")
    source.add_argument("--scorer", help="module:function taking a worker.training.score.SampleBatch")
    score.add_argument("--batch", type=int, help="samples scored at once (8)")
    score.set_defaults(func=run_score)

    coarse = stages.add_parser("coarse", help="the coarse W boundary: a linear SVM on the extreme scores")
    coarse.add_argument("dir", type=Path, nargs="?", help="training directory (or give --codes and --scores)")
    coarse.add_argument("-o", "--output", type=Path, required=True, help="normal .npy (the intercept goes beside it)")
    coarse.add_argument("--codes", type=Path, help="N x w_dim codes .npy")
    coarse.add_argument("--scores", type=Path, help="N (or N x 1) scores .npy")
    coarse.add_argument("--ratio", type=float, help="top and bottom fraction (or count) used (the seed: 0.1)")
    coarse.add_argument("--split", type=float, help="fraction trained on (the seed: 0.9)")
    coarse.add_argument("--condition", type=Path, help="another W boundary whose component is removed")
    coarse.add_argument("--seed", type=int, help="of the train/validation split (0)")
    coarse.set_defaults(func=run_coarse)

    pairs = stages.add_parser("pairs", help="pairs of codes with and without a double chin (coarse edit + diffuse)")
    pairs.add_argument("dir", type=Path)
    pairs.add_argument("--coarse", type=Path, required=True, help="the coarse boundary .npy")
    pairs.add_argument("--threshold", type=float, help="samples scoring above it are paired (seed: 0.95)")
    pairs.add_argument("--alpha", type=float, help="coarse edit strength (the seed: -4)")
    pairs.add_argument("--mix-ratio", type=float, help="share of the original in layers 7..17 (the seed: 0.8)")
    pairs.add_argument("--dilate", type=int, help="soft mask dilation at 1024 px (the seed: 15)")
    pairs.add_argument("--blur", type=int, help="soft mask blur at 1024 px (the seed: 25)")
    pairs.add_argument("--diffuse-steps", type=int, help="the seed: 100")
    pairs.add_argument("--diffuse-lr", type=float, help="the seed: 0.01")
    pairs.add_argument("--perceptual-weight", type=float, help="the seed's step 2: 5e-5")
    pairs.add_argument("--region", help="module:function of the region (default: the seed's neck mask)")
    pairs.add_argument("--shard-size", type=int,
                       help="samples per shard: the unit of resumption, and how long a queued shard keeps a worker from photos")
    pairs.add_argument("--queue", action="store_true", help="run the shards as RQ jobs on the workers")
    pairs.add_argument("--no-wait", action="store_true", help="with --queue: queue the shards and return")
    pairs.set_defaults(func=run_pairs)

    status = stages.add_parser("status", help="the pair shards of DIR: queued, running, lost, done, failed")
    status.add_argument("dir", type=Path)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=run_status)

    fine = stages.add_parser("fine", help="the fine boundary: one linear SVM per style layer on the pairs")
    fine.add_argument("dir", type=Path, nargs="?", help="training directory (or give --pairs)")
    fine.add_argument("-o", "--output", type=Path, required=True, help="folder for boundary.npy and intercept.npy")
    fine.add_argument("--pairs", type=Path, nargs=2, metavar=("WITH", "WITHOUT"), help="N x num_ws x w_dim .npy each")
    fine.add_argument("--split", type=float, help="fraction of the pairs trained on (the seed: 0.9)")
    fine.add_argument("--seed", type=int, help="of the train/validation split (0)")
    fine.set_defaults(func=run_fine)


def given(**options: object) -> dict[str, object]:
    """The options given on the command line: the library's defaults (the seed's numbers) stand for the rest."""
    return {name: value for name, value in options.items() if value is not None}


def fail(stage: str, message: str) -> int:
    print(f"chinfix train {stage}: {message}")
    return 2


def guarded(stage: str):
    """Run a stage's body; a known failure is one line and exit status 2."""

    def wrap(body):
        def run(args: argparse.Namespace) -> int:
            import redis

            from worker.registry import ConfigurationError
            from worker.training.directory import TrainingError

            try:
                return body(args)
            except (TrainingError, ConfigurationError) as error:
                return fail(stage, str(error))
            except redis.RedisError as error:
                return fail(stage, f"Redis did not answer ({error}); is CHINFIX_REDIS_URL right?")
            except FileNotFoundError as error:
                return fail(stage, f"{error.filename}: no such file")

        return run

    return wrap


def load_generator_from_store():
    """The generator the service uses (CHINFIX_MODEL_DIR), on CHINFIX_DEVICE."""
    from chinfix.settings import Settings
    from model_store.store import ModelStore
    from worker.models.checkpoints import load_generator
    from worker.registry import GENERATOR, resolve_device
    from worker.training.directory import TrainingError

    settings = Settings()
    store = ModelStore(settings.model_dir)
    if store.missing([GENERATOR]):
        raise TrainingError(f"the generator is missing from {settings.model_dir}: `chinfix models pull {GENERATOR}`")
    return load_generator(store.path(GENERATOR), device=resolve_device(settings.device))


@guarded("sample")
def run_sample(args: argparse.Namespace) -> int:
    from worker.training.directory import TrainingDir
    from worker.training.sample import run_sample as sample

    manifest = sample(load_generator_from_store(), TrainingDir(args.dir), args.num, images=args.images,
                      **given(psi=args.psi, seed=args.seed, chunk_size=args.chunk, batch_size=args.batch))  # fmt: skip
    print(json.dumps({"samples": manifest.num, "chunks": manifest.num_chunks}))
    return 0


@guarded("classifier")
def run_classifier(args: argparse.Namespace) -> int:
    from chinfix.settings import Settings
    from worker.registry import resolve_device
    from worker.training.classifier import TrainConfig, train_classifier_command

    config = TrainConfig(**given(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                 split_ratio=args.split, input_size=args.input_size))  # fmt: skip
    accuracies = train_classifier_command(args.data, args.output, config, Settings(), args.init,
                                          resolve_device(Settings().device))  # fmt: skip
    print(json.dumps({"validation_accuracy": accuracies}))
    return 0


@guarded("score")
def run_score(args: argparse.Namespace) -> int:
    from worker.training.directory import TrainingDir
    from worker.training.score import labels_scorer, run_score as score

    directory = TrainingDir(args.dir)
    directory.manifest()  # before loading anything: DIR must hold samples
    G = load_generator_from_store()
    if args.labels is not None:
        scorer = labels_scorer(args.labels)
    elif args.classifier is not None:
        from chinfix.settings import Settings
        from worker.training.classifier import classifier_scorer_from_files

        scorer = classifier_scorer_from_files(args.classifier, Settings(), G.w_avg.device)
    else:
        scorer = scorer_function(args.scorer)
    scores = score(G, directory, scorer, **given(batch_size=args.batch))
    print(json.dumps({"samples": len(scores), "mean": round(float(scores.mean()), 4),
                      "above_0.95": int((scores > 0.95).sum())}))  # fmt: skip
    return 0


def scorer_function(path: str):
    from worker.registry import import_function
    from worker.training.directory import TrainingError

    try:
        return import_function(path)
    except (ImportError, AttributeError, ValueError) as error:
        raise TrainingError(f"cannot import the scorer {path!r}: {error}") from None


@guarded("coarse")
def run_coarse(args: argparse.Namespace) -> int:
    import numpy as np

    from worker.training.coarse import load_w_normal, train_coarse_boundary, write_coarse_boundary
    from worker.training.directory import TrainingDir, TrainingError

    if args.codes is not None or args.scores is not None:
        if args.codes is None or args.scores is None or args.dir is not None:
            raise TrainingError("give either DIR or both --codes and --scores")
        codes, scores = np.load(args.codes, allow_pickle=False), np.load(args.scores, allow_pickle=False)
    elif args.dir is not None:
        directory = TrainingDir(args.dir)
        codes, scores = directory.load_codes("w"), directory.load_scores()
    else:
        raise TrainingError("give a training directory, or --codes and --scores")
    condition = load_w_normal(args.condition) if args.condition is not None else None
    boundary = train_coarse_boundary(codes, scores, condition=condition,
                                     **given(ratio=args.ratio, split_ratio=args.split, seed=args.seed))  # fmt: skip
    write_coarse_boundary(args.output, boundary)
    print(json.dumps({"validation_accuracy": boundary.validation_accuracy, "train_samples": boundary.train_samples}))
    return 0


@guarded("pairs")
def run_pairs(args: argparse.Namespace) -> int:
    from chinfix.settings import Settings
    from worker.training.coarse import load_w_normal
    from worker.training.directory import TrainingDir
    from worker.training.pairs import PairConfig, plan_pairs, region_function

    config = PairConfig(**given(alpha=args.alpha, mix_ratio=args.mix_ratio, dilate_at_1024=args.dilate,
                                blur_at_1024=args.blur, diffuse_steps=args.diffuse_steps, diffuse_lr=args.diffuse_lr,
                                perceptual_weight=args.perceptual_weight, region=args.region))  # fmt: skip
    region_function(config.region)
    directory = TrainingDir(args.dir)
    plan = plan_pairs(directory, load_w_normal(args.coarse), config,
                      **given(threshold=args.threshold, shard_size=args.shard_size))  # fmt: skip
    settings = Settings()
    if args.queue:
        from worker.training.queue import run_pairs_on_queue

        states = run_pairs_on_queue(settings, directory, plan, wait=not args.no_wait)
        print(json.dumps({name: len(shards) for name, shards in states.items()}))
        return 1 if states["failed"] else 0
    from worker.registry import ModelRegistry
    from worker.training.pairs import run_pairs as pairs

    pairs(ModelRegistry.load(settings), directory, plan)
    print(json.dumps({"shards": len(plan.shards), "samples": plan.num_pairs}))
    return 0


@guarded("status")
def run_status(args: argparse.Namespace) -> int:
    from collections import Counter

    from chinfix.settings import Settings
    from worker.training.directory import TrainingDir
    from worker.training.pairs import load_plan
    from worker.training.queue import shard_report

    directory = TrainingDir(args.dir)
    rows = shard_report(Settings(), directory, load_plan(directory))
    counts = dict(Counter(row["status"] for row in rows))
    if args.json:
        print(json.dumps({"counts": counts, "shards": rows}))
        return 0
    from worker.bench.timing import print_table

    print_table(f"pair shards of {directory.root}", ["shard", "samples", "status", "attempt", "worker", "error"],
                [[row[key] for key in ("shard", "samples", "status", "attempt", "worker", "error")] for row in rows])  # fmt: skip
    print(json.dumps(counts))
    return 0


@guarded("fine")
def run_fine(args: argparse.Namespace) -> int:
    import numpy as np

    from worker.training.directory import TrainingDir, TrainingError
    from worker.training.fine import collect_pairs, train_fine_boundary, write_fine_boundary

    if args.pairs is not None:
        if args.dir is not None:
            raise TrainingError("give either DIR or --pairs WITH WITHOUT")
        with_codes, without_codes = (np.load(path, allow_pickle=False) for path in args.pairs)
    elif args.dir is not None:
        with_codes, without_codes = collect_pairs(TrainingDir(args.dir))
    else:
        raise TrainingError("give a training directory, or --pairs WITH WITHOUT")
    boundaries = train_fine_boundary(with_codes, without_codes, **given(split_ratio=args.split, seed=args.seed))
    write_fine_boundary(args.output, boundaries)
    print(json.dumps({"validation_accuracy": [b.validation_accuracy for b in boundaries]}))
    return 0
