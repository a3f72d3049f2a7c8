"""Detector maps: onnxcam vs plain inference vs ultralytics' own LayerCAM, one run.

YOLO11n (random init from its yaml, BatchNorm statistics and class biases set as in
``tests/yolo_reference.py`` so that it detects something), 640×640, one image (scikit-image's
astronaut), CPU with 2 threads (onnxruntime intra-op and torch), median latency of
  * ``plain``: onnxruntime inference of the unmodified ONNX export (the floor);
  * ``onnxcam:forward``: the onnxcam graph in mode 1 (the model's outputs and the three head
    inputs; the gradient branch skipped);
  * ``onnxcam:raw``: one mode-0 run whose default seed is the graph's own detections (decode,
    class-wise NMS, the ``--top`` best at ``--conf``), returning them with one gradient row
    each at every head input (whole maps: what any onnxruntime client gets);
  * ``onnxcam:windows``: what ``Explainer.detect`` runs, without the runtime: the same in
    mode 3, each row's gradient in its window (``contract.GradientWindow``; the default,
    direct gradients only);
  * ``onnxcam:detect``: ``Explainer.detect`` of the same detections (that run, LayerCAM per
    scale at the input size, fused per detection and per image);
  * both again from the graph exported with ``detect_gradients="total"`` (``…:total``: the
    gradients through the neck too, ultralytics' convention; the default, ``direct``, holds
    the other scales fixed);
  * ``torch:forward``: ultralytics' model forward in torch (AutoBackend; Conv+BN fused unless
    ``--no-fuse``);
  * ``ultralytics:cam``: ``ultralytics.utils.plotting.class_activation_map(topk=--top,
    conf=0)``: one forward and ``--top`` backward passes through the whole model, the fused
    LayerCAM and the JPEG overlay it writes (to a temporary folder).
Ratios: each variant over ``plain``; ``ultralytics:cam`` over each onnxcam variant that
explains detections.

    python bench/detect.py [--repeats 20] [--top 10] [--size 640] [--conf 0.05]
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

# torch's OpenMP workers spin-wait after each op by default and steal the cores from the next
# (onnxruntime) variant of an interleaved run; make them sleep instead (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from harness import arguments, interleaved, markdown_table, median_ms, save, session_options

THREADS = 2
KINDS = ("direct", "total")


def ort_options():
    opts = session_options()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return opts


def make_variants(yolo, cams: dict[str, Path], image: np.ndarray, args):
    """name → zero-argument callable (see the module docstring), and how many detections
    each explains."""
    import onnxruntime as ort
    import torch
    import yolo_reference as yr
    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.utils import plotting

    from onnxcam import Explainer, contract

    providers = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(str(yolo.onnx), ort_options(), providers=providers)
    x = yr.to_input([image])
    acts = [contract.activation_name(k) for k in range(3)]
    grads = [contract.gradient_name(k) for k in range(3)]
    forward = ["output0", contract.LOGITS_OUTPUT, *acts]
    explain = [contract.DETECTIONS_OUTPUT, *acts, *grads]
    mode1 = {contract.MODE_INPUT: np.array(contract.MODE_FORWARD, dtype=np.int64)}
    chosen = {
        contract.DETECT_CONF_INPUT: np.array([args.conf], np.float32),
        contract.DETECT_TOP_INPUT: np.array([args.top], np.int64),
    }
    variants = {"plain": functools.partial(plain.run, None, {"images": x})}
    explained = {}
    for kind, path in cams.items():
        tag = "" if kind == "direct" else ":total"
        cam = ort.InferenceSession(str(path), ort_options(), providers=providers)
        if kind == "direct":
            variants["onnxcam:forward"] = functools.partial(
                cam.run, forward, {"images": x, **mode1}
            )
        raw = functools.partial(cam.run, explain, {"images": x, **chosen})
        variants[f"onnxcam:raw{tag}"] = raw
        explained[f"onnxcam:raw{tag}"] = len(raw()[0])
        if kind == "direct":
            mode3 = {contract.MODE_INPUT: np.array(contract.MODE_WINDOWS, dtype=np.int64)}
            wins = [contract.gradient_window_name(k) for k in range(3)]
            win = functools.partial(
                cam.run,
                [contract.DETECTIONS_OUTPUT, *acts, *wins],
                {"images": x, **chosen, **mode3},
            )
            variants["onnxcam:windows"] = win
            explained["onnxcam:windows"] = len(win()[0])
        ex = Explainer(path, device="cpu", session_options=ort_options())
        detect = functools.partial(
            ex.detect, image, methods="layercam", top=args.top, conf=args.conf
        )
        variants[f"onnxcam:detect{tag}"] = detect
        explained[f"onnxcam:detect{tag}"] = len(detect()[0].detections)

    model = yolo.model
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = False
    backend = AutoBackend(model, device=torch.device("cpu"), fuse=not args.no_fuse, verbose=False)
    xt = torch.from_numpy(x)
    out_dir = Path(tempfile.mkdtemp(prefix="onnxcam-bench-"))

    def torch_forward():
        with torch.inference_mode():
            backend(xt)

    def ultra():
        plotting.class_activation_map(backend, xt, ["bench.jpg"], out_dir, conf=0.0, topk=args.top)
        for f in out_dir.iterdir():  # one overlay per call; keep the folder empty
            f.unlink()

    variants["torch:forward"] = torch_forward
    variants["ultralytics:cam"] = ultra
    explained["ultralytics:cam"] = args.top
    return variants, explained


def main() -> None:
    ap = arguments(__doc__, 20, "yolo11n", batches=None)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--conf", type=float, default=0.05, help="onnxcam's conf (to keep --top)")
    ap.add_argument("--no-fuse", action="store_true", help="AutoBackend without Conv+BN fusion")
    ap.add_argument("--out", default="detect", help="results/<out>.json")
    args = ap.parse_args()

    import torch
    import ultralytics
    import yolo_reference as yr

    from onnxcam.export import export_onnx

    torch.set_num_threads(THREADS)
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yolo = yr.build(name, args.size, Path(tmp))
            cams = {kind: Path(tmp) / f"{name}.{kind}.cam.onnx" for kind in KINDS}
            for kind, path in cams.items():
                export_onnx(yolo.onnx, path, preset="unit", task="detect", detect_gradients=kind)
            image = yr.photos(args.size)[0]
            variants, explained = make_variants(yolo, cams, image, args)
            times = interleaved(variants, repeats=args.repeats, warmup=2)
        ms = {k: median_ms(v) for k, v in times.items()}
        base = ms["plain"]
        for variant, t in ms.items():
            row = {
                "model": name,
                "size": args.size,
                "variant": variant,
                "explained": explained.get(variant, 0),
                "ms": t,
                "p25_ms": 1000 * float(np.percentile(times[variant], 25)),
                "p75_ms": 1000 * float(np.percentile(times[variant], 75)),
                "vs_plain": t / base,
            }
            if variant.startswith(("onnxcam:raw", "onnxcam:windows", "onnxcam:detect")):
                row["ultralytics_over"] = ms["ultralytics:cam"] / t
            rows.append(row)
            print(f"{name} {variant:22s} {t:8.1f} ms  ({t / base:5.2f}x plain)", flush=True)
    cols = [
        ("model", "model"),
        ("size", "size"),
        ("variant", "variant"),
        ("explained", "detections explained"),
        ("ms", "median ms"),
        ("p25_ms", "p25 ms"),
        ("p75_ms", "p75 ms"),
        ("vs_plain", "/ plain"),
        ("ultralytics_over", "ultralytics:cam / this"),
    ]
    print(markdown_table(rows, cols))
    extra = {
        "repeats": args.repeats,
        "threads": THREADS,
        "top": args.top,
        "conf": args.conf,
        "fuse": not args.no_fuse,
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
    }
    print("saved", save(args.out, rows, extra))


if __name__ == "__main__":
    main()
