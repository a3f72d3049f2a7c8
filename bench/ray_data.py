"""Ray Data throughput: Grad-CAM vs plain inference through the same pipeline, vs one process.

On ~500 generated 224×224 JPEGs and torchvision ResNet-18 (random init; ``--model lite0``: the
real EfficientNet-Lite0), CPU, images per second of
  * ``ray:gradcam``: ``onnxcam.scale.explain_dataset`` (read_binary_files → actor pool →
    staged Parquet shards committed by the driver), Grad-CAM maps at feature resolution;
  * ``ray:plain``: the *same* pipeline (same reader, batching, hashing, decoding, preprocessing,
    Parquet shards and commits) with an actor that runs the unmodified model and writes the
    top-1 class (``PlainActor``: ``ExplainActor`` with ``explain`` replaced);
  * with 1 and 2 actors of 1 CPU (one onnxruntime thread) each;
  * ``actor:gradcam`` / ``actor:plain``: one actor object's batch of ``--shard-size`` images in
    this process, outside Ray (hashing, decoding, inference, rows, a staged Parquet file): the
    steady per-actor work without Ray's scheduling, one onnxruntime thread;
  * ``single:gradcam``: one process, ``Explainer.iter_explain`` over the files (onnxruntime's
    default threads), the same maps; ``single:onnxcam-run``: ``runner.run_images``, what
    ``onnxcam run`` does (it also writes an overlay PNG per image).
Each Ray run includes starting its actors (a new pool per dataset, ~2–5 s here); ``actor`` is
the steady-state rate per actor: images / seconds the actors spent in their batches. Variants
are interleaved, medians reported (bench/harness.py): the machine is shared and noisy.

    python bench/ray_data.py [--images 500] [--repeats 3] [--model resnet18|lite0]
    python bench/ray_data.py --variants ray --repeats 5 --out ray_data_ray   # Ray rows only
    python bench/ray_data.py --variants actor --repeats 10 --out ray_data_actor
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).parent))
from harness import interleaved, machine, markdown_table, save, session_options

from onnxcam.scale import STAGING, ExplainActor, Job, key_digests, locate


class PlainActor(ExplainActor):
    """The same actor with plain inference of the unmodified model: rows with the top-1 class,
    its probability and logit (no map)."""

    plain = None
    """ObjectRef of the unmodified model's bytes (set by the driver; pickled by value)."""
    spec = None
    """The ``InputSpec`` the exported model records (the same preprocessing)."""

    def __init__(self, job) -> None:
        import onnxruntime as ort
        import ray

        def get(v):
            return ray.get(v) if isinstance(v, ray.ObjectRef) else v

        self.job = job
        self.done = get(job.done)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = job.threads
        self.session = ort.InferenceSession(get(self.plain), opts, ["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.model_name = "plain"

    def explain(self, todo):
        from onnxcam.image import preprocess

        n = self.job.options["batch_size"]
        out = []
        for i in range(0, len(todo), n):
            part = todo[i : i + n]
            z = self.session.run(None, {self.input: preprocess([t[2] for t in part], self.spec)})
            z = z[0].astype(np.float64)
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            for (source, sha, img), zi, pi in zip(part, z, p, strict=True):
                k = int(zi.argmax())
                out.append(
                    [
                        {
                            "source": source, "sha256": sha, "width": img.shape[1],
                            "height": img.shape[0], "rank": 1, "class": k, "label": str(k),
                            "probability": float(pi[k]), "score": float(zi[k]),
                        }
                    ]
                )  # fmt: skip
        return out


def build(name: str, folder: Path) -> tuple[Path, bytes]:
    """(the exported model's path, the unmodified model's bytes)."""
    import torch

    from onnxcam.export import export_onnx, plain_onnx

    torch.manual_seed(0)
    if name == "lite0":
        from onnxcam.models import efficientnet_lite0

        module, prep = efficientnet_lite0.build(), efficientnet_lite0.PREPROCESSING
    else:
        import torchvision

        module, prep = torchvision.models.resnet18(weights=None).eval(), {}
    plain = plain_onnx(module, (1, 3, 224, 224))
    cam = folder / f"{name}.cam.onnx"
    export_onnx(plain, cam, **prep)
    return cam, plain


def write_images(folder: Path, n: int) -> None:
    """n smooth random 224×224 JPEGs (quality 90)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        img = cv2.resize(small, (224, 224), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"im{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "lite0"])
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="ray_data")
    ap.add_argument(
        "--variants", default="", help="only the variants starting with these (comma-separated)"
    )
    args = ap.parse_args()

    import ray

    from onnxcam.engine import Explainer
    from onnxcam.perturbation import PerturbationOptions
    from onnxcam.runner import run_images
    from onnxcam.scale import explain_dataset

    tmp = Path(tempfile.mkdtemp(prefix="onnxcam-ray-bench-"))
    cam, plain = build(args.model, tmp)
    src = tmp / "images"
    write_images(src, args.images)
    load = [os.getloadavg()[0]]
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    PlainActor.plain = ray.put(plain)
    PlainActor.spec = Explainer(cam).info.input
    stats: dict[str, list[float]] = {}
    runs = iter(range(10**6))
    common = {"shard_size": args.shard_size, "batch_size": args.batch_size}

    def ray_variant(name: str, actors: int, actor: type):
        def run() -> None:
            out = tmp / f"out{next(runs)}"
            res = explain_dataset(cam, src, out, "gradcam", actors=actors, actor=actor, **common)
            assert res.explained == args.images, res.to_json()
            stats.setdefault(name, []).append(res.explained / res.actor_seconds)
            shutil.rmtree(out)

        return run

    def single() -> None:
        ex = Explainer(cam, session_options=session_options())
        n = sum(1 for r in ex.iter_explain(sorted(src.iterdir()), "gradcam", **common_single))
        assert n == args.images

    def onnxcam_run() -> None:
        out = tmp / f"out{next(runs)}"
        res = run_images(cam, [src], methods="gradcam", out_dir=out, perturbation=options)
        assert len(res.rows) == args.images
        shutil.rmtree(out)

    def in_process(actor: type):
        """One actor object, outside Ray, doing one batch of ``shard_size`` images per call:
        hashing, decoding, inference (+ Grad-CAM), rows and a staged Parquet file."""
        out = locate(tmp / "inproc")
        (tmp / "inproc" / STAGING).mkdir(parents=True, exist_ok=True)
        options = {"classes": None, "topk": 1, "layers": None, "fuse": False, "perturbation": None}
        job = Job(
            model=cam.read_bytes(), model_name=cam.name, methods=("gradcam",), output=out,
            done=key_digests([]),
            options={**options, "batch_size": args.batch_size},
        )  # fmt: skip
        worker = actor(job)
        files = sorted(src.iterdir())[: args.shard_size]
        batch = {
            "path": np.array([str(f) for f in files], dtype=object),
            "bytes": np.array([f.read_bytes() for f in files], dtype=object),
        }
        count[f"actor:{'plain' if actor is PlainActor else 'gradcam'}"] = len(files)
        return lambda: worker(batch)

    count: dict[str, int] = {}
    common_single = {"batch_size": args.batch_size}
    options = PerturbationOptions(batch_size=args.batch_size)
    variants = {
        "ray:gradcam:1": ray_variant("ray:gradcam:1", 1, ExplainActor),
        "ray:plain:1": ray_variant("ray:plain:1", 1, PlainActor),
        "ray:gradcam:2": ray_variant("ray:gradcam:2", 2, ExplainActor),
        "ray:plain:2": ray_variant("ray:plain:2", 2, PlainActor),
        "single:gradcam": single,
        "single:onnxcam-run": onnxcam_run,
        "actor:gradcam": lambda: None,
        "actor:plain": lambda: None,
    }
    wanted = [v for v in args.variants.split(",") if v]
    if wanted:
        variants = {k: v for k, v in variants.items() if any(k.startswith(w) for w in wanted)}
    if "actor:gradcam" in variants:
        variants["actor:gradcam"] = in_process(ExplainActor)
        variants["actor:plain"] = in_process(PlainActor)
    t0 = time.perf_counter()
    if any(k.startswith("ray:") for k in variants):  # Ray's first workers start
        explain_dataset(cam, src, tmp / "warm", "gradcam", **common)
        shutil.rmtree(tmp / "warm")
    stats.clear()
    times = interleaved(variants, repeats=args.repeats, warmup=0)
    load.append(os.getloadavg()[0])
    ray.shutdown()
    rows = []
    for name, secs in times.items():
        *_, actors = name.split(":")
        actors = actors if actors.isdigit() else ""
        wall = count.get(name, args.images) / statistics.median(secs)
        row = {
            "variant": name,
            "actors": int(actors) if actors else "-",
            "images_per_s": wall,
            "per_actor_steady": statistics.median(stats[name]) if name in stats else None,
            "seconds": statistics.median(secs),
            "all_seconds": [round(s, 2) for s in secs],
        }
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    for r in rows:
        if r["variant"] == "actor:gradcam":
            r["vs_plain_wall"] = r["images_per_s"] / by["actor:plain"]["images_per_s"]
        if r["variant"].startswith("ray:gradcam"):
            plain_row = by[r["variant"].replace("gradcam", "plain")]
            r["vs_plain_wall"] = r["images_per_s"] / plain_row["images_per_s"]
            r["vs_plain_steady"] = r["per_actor_steady"] / plain_row["per_actor_steady"]
            if "single:gradcam" in by:
                r["vs_single"] = r["images_per_s"] / by["single:gradcam"]["images_per_s"]
    print(
        markdown_table(
            rows,
            [
                ("variant", "variant"),
                ("images_per_s", "images/s (wall)"),
                ("per_actor_steady", "images/s per actor (steady)"),
                ("vs_plain_wall", "÷ plain (wall)"),
                ("vs_plain_steady", "÷ plain (steady)"),
                ("vs_single", "÷ single:gradcam"),
                ("seconds", "median s"),
            ],
        )
    )
    shutil.rmtree(tmp, ignore_errors=True)
    extra = {
        "model": args.model,
        "images": args.images,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "load_average_1min": load,
        "bench_seconds": round(time.perf_counter() - t0, 1),
        "command": "python bench/ray_data.py " + " ".join(sys.argv[1:]),
        "machine_note": machine().get("cpu"),
    }
    print(f"wrote {save(args.out, rows, extra)}")


if __name__ == "__main__":
    main()
