"""Explain a million images on Ray Data: ``onnxcam run MODEL SOURCE --ray [ADDRESS] -o OUT``.

Images are read by Ray Data (``read_binary_files``: a local folder, a glob, or any URI pyarrow's
filesystems read: ``s3://``, ``gs://``, ``file://``) and explained by a pool of actors
(``map_batches`` with a callable class), each holding one onnxruntime session created once.
The result is a Parquet dataset in OUT, one row per image × class × method (``schema()``).

Nothing is lost and nothing is written twice:

* a bad image becomes a row with its ``error`` (decoding happens in onnxcam, not in Ray);
* each actor batch is written as one Parquet file under ``OUT/_staging/`` and the *driver*
  commits it into OUT with a rename (``part-<digest of its keys>.parquet``): the driver is the
  only committer, so a killed job leaves only complete shards, and an actor that dies before,
  during or after writing is restarted and its batch retried by Ray Data's actor pool
  (``max_restarts``/``max_task_retries``) while its uncommitted attempt stays in ``_staging``
  and is deleted;
* a re-run reads the key columns (``source``, ``sha256``) of the committed shards first and
  skips those images, so an interrupted or killed job resumes where it stopped.

Ray is imported when a function here runs, never when ``onnxcam`` is imported
(``pip install 'onnxcam[ray]'``). See docs/scale.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .errors import ImageError, OnnxcamError
from .image import IMAGE_SUFFIXES
from .results import Failure

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import ray.data

    from .engine import Explanation
    from .evaluate import Annotation, EvalOptions
    from .perturbation import PerturbationOptions

STAGING = "_staging"
"""Where actors write their shards before the driver commits them (ignored by Parquet readers:
pyarrow and Spark skip names that start with ``_`` or ``.``)."""
SHARD_PREFIX = "part-"
MAP_DTYPES = ("float32", "float16", "uint8")
"""How the ``map`` column stores a map: float32 (exact), float16 (half the bytes, error ≤ 2.5e-4
on [0, 1]) or uint8 (round(255·v), error ≤ 0.002)."""
KEY = ("source", "sha256")
"""The columns that identify an image: a re-run skips an image whose key is in OUT."""
EVAL = "_eval"
"""Where ``--eval`` writes ``summary.json`` (under OUT; skipped by Parquet readers)."""
SWEEP_KEYS = ("maxboxacc", "maxboxacc_v2", "pxap")
"""The dataset-level metrics: computed from the sweep columns of every row, not averaged."""
SWEEP_COLUMNS = ("box_iou_sweep", "pixel_histogram")
"""``--eval``'s per-image sweep data: ``box_iou_sweep`` ([2, thresholds], flattened) and
``pixel_histograms`` ([2, bins], flattened) of ``onnxcam.localize``."""


def metric_columns() -> list[str]:
    """``--eval``'s per-image metric columns: ``onnxcam eval``'s metrics.csv columns."""
    from .evaluate import SUMMARY

    return [k for k in SUMMARY if k not in SWEEP_KEYS]


Progress = Callable[[int, int], None]
"""progress(done, total): ``done`` more images committed (``total`` 0 when unknown)."""


def _ignore(*_: Any) -> None:
    return None


def _require_ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data
    except ImportError as e:
        raise OnnxcamError(
            f"--ray needs Ray Data ({e.name} is missing): pip install 'onnxcam[ray]'"
        ) from None
    return ray


def schema() -> pa.Schema:
    """The Parquet schema of OUT: one row per image × target × method, or one row per image
    that failed (``error`` set, the explanation columns null)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("source", pa.string()),  # the image's path or URI (scheme kept, e.g. s3://b/k.jpg)
            ("sha256", pa.string()),  # hex digest of the file's bytes
            ("width", pa.int32()),  # the image's own size (boxes are in its pixels)
            ("height", pa.int32()),
            ("rank", pa.int16()),  # 1 = the explained class was the top-1 (--topk: 1..k)
            ("class", pa.int32()),
            ("label", pa.string()),
            ("probability", pa.float64()),
            ("score", pa.float64()),  # the explained class's logit (pre-softmax)
            ("method", pa.string()),
            ("layer", pa.string()),
            ("map", pa.binary()),  # row-major [map_height, map_width] of map_dtype, in [0, 1]
            ("map_height", pa.int16()),
            ("map_width", pa.int16()),
            ("map_dtype", pa.string()),
            # x0, y0, x1, y1 (--boxes), x1/y1 exclusive; a variable-size list: pyarrow reads a
            # null fixed-size list back from Parquet as an empty one and then refuses it
            ("box", pa.list_(pa.int32())),
            ("error", pa.string()),  # null when the image was explained
            # --eval (null without it, or when the metric does not apply: no annotation)
            *[(k, pa.float64()) for k in metric_columns()],
            *[(k, pa.list_(pa.float64())) for k in SWEEP_COLUMNS],
        ]
    )


# --- where things are ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A filesystem and a path on it; ``prefix`` turns a path back into the URI the user
    gave ('' for local paths, 's3://' for S3, ...)."""

    fs: pafs.FileSystem
    path: str
    prefix: str = ""

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def uri(self, path: str | None = None) -> str:
        return self.prefix + (self.path if path is None else path)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


def as_uri(path: str | os.PathLike) -> str:
    """A path or URI as a string, with the ``//`` a ``pathlib.Path`` collapsed restored
    (``Path('s3://b/k')`` is ``s3:/b/k``; click hands over paths as ``Path``)."""
    text = os.fspath(path)
    if Path(text).exists() or not _SCHEME.match(text):
        return text
    scheme = _SCHEME.match(text).group(1)
    rest = text[len(scheme) + 1 :]  # '/bucket/key'; a file: URI's path is absolute: keep '/'
    return f"{scheme}://{rest if scheme.lower() == 'file' else rest[1:]}"


def locate(path: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> Location:
    """Where ``path`` (a local path or a URI pyarrow understands) lives."""
    import pyarrow.fs as pafs

    text = as_uri(path)
    if filesystem is not None:
        return Location(filesystem, text)
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if not m or len(m.group(1)) == 1:  # no scheme (a Windows drive letter is none either)
        return Location(pafs.LocalFileSystem(), os.path.abspath(text))
    scheme = m.group(1).lower()
    head, tail = text, ""
    if _GLOB.search(text):  # from_uri resolves the folder above the pattern; keep the pattern
        head, _, tail = _GLOB.split(text, 1)[0].rpartition("/")
        tail = text[len(head) + 1 :]
    try:
        fs, inner = pafs.FileSystem.from_uri(head)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with its own reason
        raise OnnxcamError(f"{text}: cannot open ({str(e).splitlines()[0]})") from None
    if tail:
        inner = f"{inner.rstrip('/')}/{tail}"
    if isinstance(fs, pafs.LocalFileSystem):
        return Location(fs, inner)
    return Location(fs, inner, f"{scheme}://")


_GLOB = re.compile(r"[*?\[]")


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob → a regex over whole paths: ``*`` and ``?`` stay within a folder, ``**/`` spans
    folders, ``[...]`` as in ``fnmatch``."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 1 :]:
            j = pattern.index("]", i + 1)
            body = pattern[i + 1 : j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def list_sources(
    sources: Sequence[str | os.PathLike],
    recursive: bool = False,
    filesystem: pafs.FileSystem | None = None,
) -> tuple[Location, list[str]]:
    """The image files of ``sources`` (files, folders, globs or URIs of one filesystem), sorted
    and without repeats: files given directly are kept whatever their suffix; folders give
    their image files (``recursive``: and their subfolders'), globs their matches."""
    import pyarrow.fs as pafs

    if not sources:
        raise OnnxcamError("no images given")
    found: list[str] = []
    base: Location | None = None
    for src in sources:
        loc = locate(src, filesystem)
        if base is not None and (loc.prefix != base.prefix or type(loc.fs) is not type(base.fs)):
            raise OnnxcamError(f"{as_uri(src)}: all sources must be on one filesystem")
        base = base or loc
        if _GLOB.search(loc.path):
            root = _GLOB.split(loc.path, 1)[0].rsplit("/", 1)[0] or "/"
            deep = "/" in loc.path[len(root) + 1 :] or "**" in loc.path
            rx = _glob_regex(loc.path)
            sel = pafs.FileSelector(root, recursive=deep, allow_not_found=True)
            infos = loc.fs.get_file_info(sel)
            found += [
                i.path
                for i in infos
                if i.type == pafs.FileType.File
                and rx.match(i.path)
                and not PurePosixPath(i.path).name.startswith(".")
            ]
            continue
        info = loc.fs.get_file_info(loc.path)
        if info.type == pafs.FileType.Directory:
            sel = pafs.FileSelector(loc.path, recursive=recursive)
            found += [
                i.path
                for i in loc.fs.get_file_info(sel)
                if i.type == pafs.FileType.File
                and PurePosixPath(i.path).suffix.lower() in IMAGE_SUFFIXES
                and not PurePosixPath(i.path).name.startswith(".")
            ]
        elif info.type == pafs.FileType.File:
            found.append(loc.path)
        else:
            raise OnnxcamError(f"{loc.uri()}: no such file or folder")
    files = sorted(set(found))
    if not files:
        raise OnnxcamError("no images found in " + ", ".join(as_uri(s) for s in sources))
    assert base is not None
    return base, files


# --- maps, keys and shards ----------------------------------------------------------------------
def encode_map(a: np.ndarray, dtype: str = "float32") -> bytes:
    """A [0, 1] map → the bytes of the ``map`` column (``MAP_DTYPES``)."""
    if dtype == "uint8":
        return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8).tobytes()
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def decode_map(data: bytes, height: int, width: int, dtype: str = "float32") -> np.ndarray:
    """The ``map`` column's bytes → a float32 [height, width] map in [0, 1]."""
    if dtype == "uint8":
        return np.frombuffer(data, np.uint8).reshape(height, width).astype(np.float32) / 255
    raw = np.frombuffer(data, np.dtype(dtype).newbyteorder("<"))
    return raw.reshape(height, width).astype(np.float32)


def key_digests(keys: Iterable[tuple[str, str]]) -> np.ndarray:
    """(source, sha256) keys → a sorted array of 16-byte digests (what actors look up)."""
    digests = sorted({_digest(s, h) for s, h in keys})
    return np.array(digests, dtype="S16") if digests else np.empty(0, dtype="S16")


def _digest(source: str, sha: str) -> bytes:
    return hashlib.sha256(f"{source}\0{sha}".encode()).digest()[:16]


def shard_name(keys: Iterable[tuple[str, str]]) -> str:
    """A shard's file name, from the keys of the images it holds (a retried batch gets the
    same name: committing it again replaces a file with the same rows)."""
    text = "\n".join(sorted(f"{s}\0{h}" for s, h in keys))
    return f"{SHARD_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:32]}.parquet"


def shards(output: Location) -> list[str]:
    """The committed shards of OUT (``part-*.parquet``), sorted."""
    import pyarrow.fs as pafs

    infos = output.fs.get_file_info(pafs.FileSelector(output.path, allow_not_found=True))
    names = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and PurePosixPath(i.path).name.startswith(SHARD_PREFIX)
        and i.path.endswith(".parquet")
    ]
    return sorted(names)


def read_results(
    output: str | os.PathLike | Location, columns: Sequence[str] | None = None
) -> pa.Table:
    """Every committed row of OUT (``columns``: only these), as one pyarrow Table.

    ``decode_map(row["map"], row["map_height"], row["map_width"], row["map_dtype"])`` gives a
    row's map; ``pandas.read_parquet(OUT)`` reads the same rows when OUT holds nothing else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    loc = output if isinstance(output, Location) else locate(output)
    files = shards(loc)
    want = schema() if columns is None else pa.schema([schema().field(c) for c in columns])
    if not files:
        return want.empty_table()
    return pq.read_table(files, filesystem=loc.fs, columns=list(want.names), schema=want)


def done_keys(output: Location) -> set[tuple[str, str]]:
    """The (source, sha256) keys already committed to OUT."""
    t = read_results(output, KEY)
    return set(zip(t.column("source").to_pylist(), t.column("sha256").to_pylist(), strict=True))


def _put(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a file so that no reader ever sees part of it: a local file through a temporary
    name and a rename; an object store's object appears whole when its upload completes."""
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        tmp = str(PurePosixPath(path).with_name(f".{PurePosixPath(path).name}.{uuid.uuid4().hex}"))
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def _oneline(e: BaseException) -> str:
    first = (str(e).splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first}" if not isinstance(e, OnnxcamError) else first


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:60] or "x"


# --- the actor ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What every actor is given once, when it starts (Ray object refs for the big parts)."""

    model: Any
    """The model's bytes, or an ObjectRef to them."""
    model_name: str
    """The model's file name (recorded in each shard's metadata)."""
    methods: tuple[str, ...]
    output: Location
    done: Any
    """Sorted 16-byte digests of the keys already in OUT (``key_digests``), or a ref to them."""
    prefix: str = ""
    """Prepended to the reader's paths to give each row's ``source`` (the URI scheme)."""
    device: str = "cpu"
    threads: int = 1
    options: dict = field(default_factory=dict)
    """``Explainer.iter_explain`` keyword options (classes, topk, layers, batch_size, ...)."""
    boxes: float | None = None
    overlays: Location | None = None
    alpha: float = 0.5
    colormap: str = "jet"
    map_dtype: str = "float32"
    evaluation: EvalOptions | None = None
    """``--eval``: the metrics of ``onnxcam eval`` per row (and ``random`` rows)."""
    annotations: Any = None
    """File name / relative path → ``evaluate.Annotation`` (or a ref to that dict)."""
    root: str = ""
    """The source folder (its ``source`` form): annotation keys are relative to it."""


class ExplainActor:
    """A Ray Data actor: one onnxruntime session, created once; each call explains one batch
    of files (``bytes``, ``path``) and writes it as one staged Parquet shard.

    Returns one summary row per batch: the staged file and the name to commit it under, the
    numbers of images, skipped, explained and failed images, the failures as JSON and the
    seconds the call took."""

    def __init__(self, job: Job) -> None:
        import onnxruntime as ort
        import ray

        from .engine import Explainer

        self.job = job
        model = ray.get(job.model) if isinstance(job.model, ray.ObjectRef) else job.model
        self.done = ray.get(job.done) if isinstance(job.done, ray.ObjectRef) else job.done
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = job.threads
        self.explainer = Explainer(model, device=job.device, session_options=opts)
        self.model_name = job.model_name
        ann = job.annotations
        self.annotations = (ray.get(ann) if isinstance(ann, ray.ObjectRef) else ann) or {}
        self.scorer = None
        if job.evaluation is not None:
            from .evaluate import eval_scorer

            self.scorer = eval_scorer(self.explainer, job.evaluation)

    def annotation(self, source: str) -> Annotation | None:
        """The annotation of ``source``: by its path relative to the source folder, its file
        name or its whole path (as ``onnxcam eval`` looks them up)."""
        if not self.annotations:
            return None
        root = self.job.root.rstrip("/") + "/"
        rel = source[len(root) :] if self.job.root and source.startswith(root) else None
        plain = source[len(self.job.prefix) :]
        for k in (rel, PurePosixPath(source).name, source, plain):
            if k and k in self.annotations:
                return self.annotations[k]
        return None

    def _is_done(self, source: str, sha: str) -> bool:
        if not len(self.done):
            return False
        d = np.array(_digest(source, sha), dtype="S16")
        i = int(np.searchsorted(self.done, d))
        return i < len(self.done) and self.done[i] == d

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .image import decode_image

        t0 = time.perf_counter()
        job = self.job
        rows: list[dict] = []
        keys: list[tuple[str, str]] = []
        failures: list[list[str]] = []
        todo: list[tuple[str, str, np.ndarray]] = []
        seen: set[tuple[str, str]] = set()
        skipped = 0
        for path, data in zip(batch["path"], batch["bytes"], strict=True):
            source, content = job.prefix + str(path), bytes(data)
            sha = hashlib.sha256(content).hexdigest()
            if (source, sha) in seen or self._is_done(source, sha):
                skipped += 1
                continue
            seen.add((source, sha))
            keys.append((source, sha))
            try:
                todo.append((source, sha, decode_image(content, source)))
            except Exception as e:  # ImageError, or OpenCV refusing a file (one image's fault)
                why = str(e) if isinstance(e, ImageError) else f"{source}: {_oneline(e)}"
                rows.append({"source": source, "sha256": sha, "error": why})
                failures.append([source, why])
        explained = 0
        for (source, sha, _), got in zip(todo, self._explained(todo), strict=True):
            if isinstance(got, str):
                rows.append({"source": source, "sha256": sha, "error": f"{source}: {got}"})
                failures.append([source, f"{source}: {got}"])
            else:
                rows += got
                explained += 1
        staged, name = "", ""
        if rows:
            name = shard_name(keys)
            staged = job.output.join(STAGING, f"{uuid.uuid4().hex}.parquet")
            self._write(rows, staged)
        return {
            "staged": np.array([staged]),
            "shard": np.array([name]),
            "images": np.array([len(batch["path"])]),
            "skipped": np.array([skipped]),
            "explained": np.array([explained]),
            "failed": np.array([len(failures)]),
            "rows": np.array([len(rows)]),
            "failures": np.array([json.dumps(failures)]),
            "seconds": np.array([time.perf_counter() - t0]),
        }

    def _explained(self, todo: list[tuple[str, str, np.ndarray]]) -> list[list[dict] | str]:
        """``explain``, and when it raises, each image on its own: the images that raise get
        the error as their row, the others their maps (the job goes on)."""
        try:
            return self.explain(todo)
        except Exception:
            pass
        out: list[list[dict] | str] = []
        for item in todo:
            try:
                out += self.explain([item])
            except Exception as e:
                out.append(_oneline(e))
        return out

    def explain(self, todo: list[tuple[str, str, np.ndarray]]) -> list[list[dict] | str]:
        """Each decoded image (source, sha256, RGB) → its rows, or why it failed (one line).

        The one step a subclass replaces to compute something else in the same pipeline."""
        job = self.job
        per_image = job.options.get("topk", 1)
        annotated = [self.annotation(source) for source, _, _ in todo]
        wanted = [None if a is None else a.cls for a in annotated]  # None: the job's classes
        out: list[list[dict] | str] = [""] * len(todo)
        for given in (False, True):  # the job's classes, then each annotated image's own
            idx = [i for i, c in enumerate(wanted) if (c is not None) == given]
            if not idx:
                continue
            opts = {**job.options, **({"classes": [wanted[i] for i in idx]} if given else {})}
            stream = iter(
                self.explainer.iter_explain([todo[i][2] for i in idx], job.methods, **opts)
            )
            for i in idx:  # image-major: a Failure, or its top-k explanations
                source, sha, img = todo[i]
                first = next(stream)
                if isinstance(first, Failure):
                    out[i] = first.error
                    continue
                mine = [first, *(next(stream) for _ in range(per_image - 1))]
                out[i] = self._rows(source, sha, img, mine, annotated[i])
        return out

    def _metrics(self, img: np.ndarray, r: Explanation, ann: Annotation | None) -> dict:
        """``--eval``: map name → its row's metric and sweep columns (``random`` included)."""
        from .evaluate import RANDOM, eval_maps, image_metrics
        from .image import preprocess

        o, info = self.job.evaluation, self.explainer.info
        assert o is not None
        assert self.scorer is not None
        x = preprocess([img], info.input)
        maps = eval_maps(r, x, (info.input.height, info.input.width), img.shape[:2], o.seed)
        truth = None if ann is None or ann.cls is None else info.class_index(ann.cls)
        got = image_metrics(
            self.scorer, x, maps, r.target.index, ann, o,
            predicted=r.predictions[0].index, truth=truth,
        )  # fmt: skip
        out = {}
        for name, m in got.items():
            cols: dict[str, Any] = {k: m.values.get(k) for k in metric_columns()}
            cols["box_iou_sweep"] = None if m.box_ious is None else m.box_ious.ravel().tolist()
            cols["pixel_histogram"] = None if m.pixels is None else m.pixels.ravel().tolist()
            if name == RANDOM:
                cols["method"] = RANDOM
            out[name] = cols
        return out

    def _rows(
        self,
        source: str,
        sha: str,
        img: np.ndarray,
        results: list,
        ann: Annotation | None = None,
    ) -> list[dict]:
        """The rows of one image's explanations (and its overlays written, when asked); with
        ``--eval`` each row's metrics, and a ``random`` row (no map) per explanation."""
        from .localize import boxes_from_map

        job = self.job
        rows = []
        for rank, r in enumerate(results, 1):
            r = _named(r, source)
            scores = self._metrics(img, r, ann) if job.evaluation is not None else {}
            head = {
                "source": source,
                "sha256": sha,
                "width": int(img.shape[1]),
                "height": int(img.shape[0]),
                "rank": rank,
                "class": r.target.index,
                "label": r.target.label,
                "probability": float(r.target.probability),
                "score": float(r.target.logit),
            }
            for name, cam in r.maps.items():
                box = None
                if job.boxes is not None:
                    found = boxes_from_map(cam.original, job.boxes)
                    box = found[0].as_list() if found else None
                rows.append(
                    {
                        **head,
                        **scores.get(name, {}),
                        "method": cam.method,
                        "layer": cam.layer,
                        "map": encode_map(cam.feature, job.map_dtype),
                        "map_height": int(cam.feature.shape[0]),
                        "map_width": int(cam.feature.shape[1]),
                        "map_dtype": job.map_dtype,
                        "box": box,
                    }
                )
                if job.overlays is not None:
                    self._overlay(r, name, sha, len(results) > 1)
            if "random" in scores:
                rows.append({**head, **scores["random"]})
        return rows

    def _overlay(self, r: Explanation, name: str, sha: str, ranked: bool) -> None:
        """Write one overlay PNG: ``<stem>-<sha256[:12]>[_<class>-<label>]_<method>.png``."""
        import cv2

        from .localize import boxes_from_map, draw_boxes

        job = self.job
        assert job.overlays is not None
        png = r.overlay(name, alpha=job.alpha, colormap=job.colormap)
        if job.boxes is not None:
            found = boxes_from_map(r.maps[name].original, job.boxes)
            png = draw_boxes(png, found, thickness=max(2, round(max(png.shape[:2]) / 200)))
        stem = f"{_slug(PurePosixPath(r.source).stem)}-{sha[:12]}"
        if ranked:
            stem += f"_{r.target.index}-{_slug(r.target.label)}"
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(png[..., ::-1]))
        if not ok:
            raise OnnxcamError(f"cannot encode the overlay of {r.source}")
        _put(job.overlays.fs, job.overlays.join(f"{stem}_{_slug(name)}.png"), buf.tobytes())

    def _write(self, rows: list[dict], path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sch = schema().with_metadata(
            {
                "onnxcam": __version__,
                "model": self.model_name,
                "methods": ",".join(self.job.methods),
            }
        )
        table = pa.Table.from_pylist(rows, schema=sch)
        pq.write_table(table, path, filesystem=self.job.output.fs, compression="zstd")


def _named(r: Explanation, source: str) -> Explanation:
    """An explanation of a decoded array, named for its file."""
    return replace(r, source=source)


# --- the driver ---------------------------------------------------------------------------------
@dataclass
class ScaleResult:
    """What ``explain_dataset`` did."""

    output: str
    images: int
    """Images read (explained, failed or skipped)."""
    skipped: int = 0
    """Already in OUT (a resumed job)."""
    explained: int = 0
    failed: int = 0
    rows: int = 0
    shards: int = 0
    """Shards committed by this run."""
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[Failure] = field(default_factory=list)
    in_output: int = 0
    """Distinct images in OUT after the run (its whole content, earlier runs included)."""
    actor_seconds: float = 0.0
    """Time the actors spent in their batches (summed over actors; startup excluded)."""
    errors_in_output: int = 0
    """Images of OUT with an error row (this run's ``failures`` and earlier runs')."""
    summary: dict[str, dict] | None = None
    """``--eval``: per method, the metrics of ``onnxcam eval`` over every row of OUT (also
    written to ``OUT/_eval/summary.json``)."""

    def to_json(self) -> dict:
        """The document ``onnxcam run --ray --json`` prints."""
        return {
            "output": self.output,
            "images": self.images,
            "skipped": self.skipped,
            "explained": self.explained,
            "failed": self.failed,
            "rows": self.rows,
            "shards": self.shards,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "actor_seconds": round(self.actor_seconds, 3),
            "in_output": self.in_output,
            "errors_in_output": self.errors_in_output,
            "interrupted": self.interrupted,
            "failures": [{"image": f.source, "error": f.error} for f in self.failures],
            **({} if self.summary is None else {"summary": self.summary}),
        }

    @property
    def images_per_second(self) -> float:
        return (self.explained + self.failed) / self.seconds if self.seconds else 0.0


def _model_bytes(model: str | os.PathLike | bytes) -> bytes:
    """The model file's bytes (a local path or a URI); they travel to the actors through the
    object store, so no node needs the file."""
    if isinstance(model, bytes):
        return model
    loc = locate(model)
    try:
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()
    except (FileNotFoundError, OSError) as e:
        raise OnnxcamError(f"{as_uri(model)}: cannot read the model ({e})") from None


def _probe(data: bytes, note: Callable[[str], None]):
    """Open the model once on the driver (CPU): checks the contract and the request before any
    actor starts; a plain ONNX model is exported here, once, instead of in every actor."""
    from .engine import Explainer

    probe = Explainer(data, device="cpu")
    if probe.info.task != "classify":
        raise OnnxcamError(
            f"--ray explains classifiers; this model is a {probe.info.task} model "
            "(run it without --ray)"
        )
    if probe.notes:
        from onnxcam.export import export_onnx

        for text in probe.notes:
            note(text)
        data = export_onnx(data).model.SerializeToString()
    return probe, data


def explain_dataset(
    model: str | os.PathLike | bytes,
    source: str | os.PathLike | Sequence[str | os.PathLike] | ray.data.Dataset,
    output: str | os.PathLike,
    methods: str | Sequence[str] = "gradcam",
    *,
    classes: int | str | None = None,
    topk: int = 1,
    layers: int | str | None = None,
    fuse: bool = False,
    batch_size: int = 16,
    shard_size: int = 256,
    actors: int | tuple[int, int] = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    device: str = "cpu",
    recursive: bool = False,
    boxes: float | None = None,
    overlays: str | os.PathLike | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    map_dtype: str = "float32",
    sampling: dict[str, Any] | None = None,
    perturbation: PerturbationOptions | None = None,
    evaluation: EvalOptions | None = None,
    annotations: str | os.PathLike | dict[str, Annotation] | None = None,
    address: str | None = None,
    retries: int | None = None,
    filesystem: pafs.FileSystem | None = None,
    note: Callable[[str], None] = _ignore,
    on_failure: Callable[[Failure], None] = _ignore,
    progress: Progress = _ignore,
    actor: type[ExplainActor] = ExplainActor,
) -> ScaleResult:
    """Explain every image of ``source`` with a pool of Ray actors; write Parquet to ``output``.

    ``source``: files, folders, globs or URIs (one filesystem), or a ``ray.data.Dataset`` with
    ``bytes`` and ``path`` columns (``read_binary_files(..., include_paths=True)``). Each actor
    batch of ``shard_size`` images becomes one committed shard; onnxruntime runs take
    ``batch_size`` images. ``actors``: the pool size (or (min, max) to autoscale), each with
    ``cpus_per_actor`` CPUs (its onnxruntime threads) and, on ``device='cuda'``,
    ``gpus_per_actor`` GPUs (default 1). ``address``: the Ray cluster (None: the one this
    process is connected to, else a new local one). Images whose (source, sha256) is already
    in ``output`` are skipped. An actor that dies is restarted and its batch retried: without
    limit by default (Ray Data's actor pools), at most ``retries`` times when given.
    ``evaluation``: also compute ``onnxcam eval``'s metrics per row (``random`` baseline rows
    included), aggregated over the whole of OUT into ``summary`` and ``OUT/_eval/summary.json``;
    ``annotations``: its JSON file (or ``evaluate.load_annotations``'s dict): each annotated
    image's class is explained, and the localization metrics computed.
    ``actor``: the actor class (a subclass may add to it)."""
    ray = _require_ray()
    from .plan import ExplainOptions
    from .postprocess import COLORMAPS

    if colormap not in COLORMAPS:
        raise OnnxcamError(f"unknown colormap {colormap!r}; choose {', '.join(sorted(COLORMAPS))}")
    if map_dtype not in MAP_DTYPES:
        raise OnnxcamError(f"unknown map dtype {map_dtype!r}; choose {', '.join(MAP_DTYPES)}")
    if shard_size < 1 or batch_size < 1 or cpus_per_actor <= 0:
        raise OnnxcamError("shard_size, batch_size and cpus_per_actor must be positive")
    if annotations is not None and evaluation is None:
        raise OnnxcamError("annotations are for --eval runs only")
    if evaluation is not None and topk != 1:
        raise OnnxcamError("--eval explains one class per image (the annotated one or the top-1)")
    if isinstance(annotations, (str, os.PathLike)):
        from .evaluate import load_annotations

        annotations = load_annotations(annotations)
    t_start = time.perf_counter()
    data = _model_bytes(model)
    probe, data = _probe(data, note)
    cls = None if classes is None else probe.info.class_index(classes)
    if probe.info.num_classes is not None:
        topk = min(topk, probe.info.num_classes)
    options = {
        "classes": cls,
        "topk": topk,
        "layers": int(layers) if isinstance(layers, str) and layers.isdigit() else layers,
        "fuse": fuse,
        "batch_size": batch_size,
        "perturbation": perturbation,
        **(sampling or {}),
    }
    check = {k: v for k, v in options.items() if k != "classes"}
    probe.plan(list(methods) if not isinstance(methods, str) else methods, ExplainOptions(**check))
    names = tuple([methods] if isinstance(methods, str) else methods)

    out = locate(output, filesystem)
    try:
        out.fs.create_dir(out.join(STAGING), recursive=True)
        out.fs.delete_dir_contents(out.join(STAGING), missing_dir_ok=True)  # a killed run's
    except OSError as e:
        raise OnnxcamError(f"cannot write to {out.uri()}: {e}") from None
    shots = None
    if overlays is not None:
        shots = locate(overlays, filesystem)
        shots.fs.create_dir(shots.path, recursive=True)
    done = done_keys(out)

    if hasattr(source, "map_batches"):  # a ray.data.Dataset of (bytes, path)
        where, files = None, []
    else:
        sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        where, files = list_sources(sources, recursive, filesystem)
    root = ""
    if where is not None and len(sources) == 1:  # one folder: annotation keys are relative
        import pyarrow.fs as pafs

        top = locate(sources[0], filesystem)
        if not _GLOB.search(top.path) and top.fs.get_file_info(top.path).type == (
            pafs.FileType.Directory
        ):
            root = top.uri()
    size = actors if isinstance(actors, tuple) else (actors, actors)
    started = not ray.is_initialized()
    if started:
        kw = {"include_dashboard": False} if address in (None, "local") else {}
        ray.init(
            address=None if address == "local" else address,
            logging_level=logging.WARNING,
            **kw,
        )
    try:
        if where is None:
            ds, total, prefix = source, 0, ""
        else:
            prefix, total = where.prefix, len(files)
            ds = ray.data.read_binary_files(
                files,
                include_paths=True,
                filesystem=where.fs,
                num_cpus=0,  # reading is I/O: the CPUs go to the actors (no starved reads)
                concurrency=2 * max(size),  # ... but not a worker process per file
                override_num_blocks=-(-total // shard_size),  # a block per shard
            )
        gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if device == "cuda" else 0)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if out.prefix == "" and nodes > 1:
            note(
                f"{out.uri()} is a local path on a cluster of {nodes} nodes: every node must "
                "see it at the same path (a shared mount), else use an s3:// or gs:// URI"
            )
        job = Job(
            model=ray.put(data),
            model_name="model" if isinstance(model, bytes) else PurePosixPath(as_uri(model)).name,
            methods=names,
            output=out,
            done=ray.put(key_digests(done)),
            prefix=prefix,
            device=device,
            threads=max(1, int(cpus_per_actor)),
            options=options,
            boxes=boxes,
            overlays=shots,
            alpha=alpha,
            colormap=colormap,
            map_dtype=map_dtype,
            evaluation=evaluation,
            annotations=ray.put(annotations) if annotations else None,
            root=root,
        )
        limits = {} if retries is None else {"max_restarts": retries, "max_task_retries": retries}
        with warnings.catch_warnings():  # Ray ≥ 2.55 names these "deprecated" remote args
            warnings.simplefilter("ignore", DeprecationWarning)
            pipeline = ds.map_batches(
                actor,
                fn_constructor_args=(job,),
                batch_size=shard_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=size[0], max_size=size[1]),
                num_cpus=cpus_per_actor,
                num_gpus=gpus or None,
                **limits,
            )
        res = ScaleResult(out.uri(), 0)
        progress(0, total)
        try:
            for row in pipeline.iter_rows():
                _commit(out, row, res)
                for source_, error in json.loads(row["failures"]):
                    f = Failure(source_, error)
                    res.failures.append(f)
                    on_failure(f)
                progress(int(row["images"]), total)
        except KeyboardInterrupt:
            res.interrupted = True
        if not res.interrupted:  # every attempt has ended: what is left was never committed
            out.fs.delete_dir_contents(out.join(STAGING), missing_dir_ok=True)
    finally:
        if started:
            ray.shutdown()
    t = read_results(out, [*KEY, "error"])
    res.in_output = len(set(zip(*(t.column(c).to_pylist() for c in KEY), strict=True)))
    res.errors_in_output = t.column("error").length() - t.column("error").null_count
    if evaluation is not None and not res.interrupted:
        res.summary = evaluation_summary(out, names)
        out.fs.create_dir(out.join(EVAL), recursive=True)
        doc = {"summary": res.summary, "metrics": _metric_names()}
        _put(out.fs, out.join(EVAL, "summary.json"), json.dumps(doc, indent=1).encode())
    res.seconds = time.perf_counter() - t_start
    return res


def _metric_names() -> dict[str, dict[str, str]]:
    from .evaluate import SUMMARY

    return {k: {"name": v[0], "better": v[2]} for k, v in SUMMARY.items()}


@dataclass
class _Totals:
    """One (method, layer)'s running sums over OUT's rows (one shard at a time)."""

    images: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    boxes: int = 0
    hits: np.ndarray | None = None
    """[1 + len(IOU_THRESHOLDS), thresholds]: images whose box reaches the IoU threshold:
    MaxBoxAcc's (row 0: largest contour at IoU 0.5), then MaxBoxAccV2's (every contour)."""
    pixels: np.ndarray | None = None


def evaluation_summary(
    output: str | os.PathLike | Location, methods: Sequence[str] = ()
) -> dict[str, dict]:
    """``onnxcam eval``'s summary of the ``--eval`` rows of OUT (every committed shard, so a
    resumed job's earlier rows count once): per method the mean of each per-image metric
    (scaled as ``evaluate.SUMMARY``) and the dataset-level sweeps (MaxBoxAcc, MaxBoxAccV2,
    PxAP) from the summed per-image sweep columns. ``methods`` come first, in their order."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .evaluate import RANDOM, SUMMARY
    from .localize import IOU_THRESHOLDS, pxap

    loc = output if isinstance(output, Location) else locate(output)
    cols = ["method", "layer", *metric_columns(), *SWEEP_COLUMNS]
    want = pa.schema([schema().field(c) for c in cols])
    totals: dict[tuple[str, str | None], _Totals] = {}
    for f in shards(loc):
        t = pq.read_table(f, filesystem=loc.fs, columns=cols, schema=want)
        t = t.filter(pc.is_valid(t.column("drop")))  # the evaluated rows (drop always is)
        if not len(t):
            continue
        names, layer_names = t.column("method").to_pylist(), t.column("layer").to_pylist()
        groups = list(zip(names, layer_names, strict=True))
        for key in dict.fromkeys(groups):
            sel = pa.array([g == key for g in groups])
            g = t.filter(sel)
            acc = totals.setdefault(key, _Totals())
            acc.images += len(g)
            for k in metric_columns():
                v = g.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
                ok = ~np.isnan(v)
                if ok.any():
                    acc.sums[k] = acc.sums.get(k, 0.0) + float(v[ok].sum())
                    acc.counts[k] = acc.counts.get(k, 0) + int(ok.sum())
            ious = g.column("box_iou_sweep").drop_null()
            if len(ious):
                a = pc.list_flatten(ious).to_numpy().reshape(len(ious), 2, -1)
                hits = np.stack(
                    [(a[:, 0] >= 0.5).sum(0), *[(a[:, 1] >= d).sum(0) for d in IOU_THRESHOLDS]]
                )
                acc.hits = hits if acc.hits is None else acc.hits + hits
                acc.boxes += len(ious)
            px = g.column("pixel_histogram").drop_null()
            if len(px):
                h = pc.list_flatten(px).to_numpy().reshape(len(px), 2, -1).sum(0)
                acc.pixels = h if acc.pixels is None else acc.pixels + h
    layers: dict[str, set] = {}
    for m, layer in totals:
        layers.setdefault(m, set()).add(layer)
    first = {m: i for i, m in enumerate([*methods, RANDOM])}
    out: dict[str, dict] = {}
    for (m, layer), acc in sorted(
        totals.items(), key=lambda kv: (first.get(kv[0][0], 1 << 30), kv[0][0], str(kv[0][1]))
    ):
        s: dict[str, Any] = {"images": acc.images}
        for k, (_, scale, _) in SUMMARY.items():
            if k in acc.counts:
                s[k] = scale * acc.sums[k] / acc.counts[k]
        if acc.pixels is not None:
            s["pxap"] = pxap(acc.pixels)
        if acc.hits is not None:
            share = acc.hits / acc.boxes
            s["maxboxacc"] = float(share[0].max())
            s["maxboxacc_v2"] = float(np.mean(share[1:].max(axis=1)))
        out[m if len(layers[m]) == 1 else f"{m}@{layer}"] = s
    return out


def _commit(out: Location, row: dict, res: ScaleResult) -> None:
    """Move one staged shard into OUT (the driver is the only committer) and count it."""
    res.images += int(row["images"])
    res.skipped += int(row["skipped"])
    res.explained += int(row["explained"])
    res.failed += int(row["failed"])
    res.actor_seconds += float(row["seconds"])
    if row["staged"]:
        out.fs.move(str(row["staged"]), out.join(str(row["shard"])))
        res.rows += int(row["rows"])
        res.shards += 1


__all__ = [
    "MAP_DTYPES",
    "ExplainActor",
    "Job",
    "ScaleResult",
    "decode_map",
    "evaluation_summary",
    "explain_dataset",
    "list_sources",
    "read_results",
    "schema",
]
