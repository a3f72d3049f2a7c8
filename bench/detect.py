"""Detector maps: onnxcam vs plain inference vs ultralytics' own LayerCAM, one run.

YOLO11n (random init from its yaml, BatchNorm statistics and class biases set as in
``tests/yolo_reference.py`` so that it detects something), 640×640, one image (scikit-image's
astronaut), CPU with 2 threads (onnxruntime intra-op and torch), median latency of
  * ``plain``: onnxruntime inference of the unmodified ONNX export (the floor);
  * ``onnxcam:forward``: the onnxcam graph in mode 1 (model outputs + the three head inputs;
    the gradient branch skipped);
  * ``onnxcam:raw``: what ``Explainer.detect`` runs, without the runtime: the mode-1 run, then
    one mode-2 run of the joint head with one seed row per detection (the ``--top`` best anchors
    by class logit) returning the head inputs' gradients;
  * ``onnxcam:detect``: ``Explainer.detect`` of the ``--top`` best detections (decode, NMS,
    one head-only backward, LayerCAM per scale at the input size, fused per detection and per
    image), when the runtime has it;
  * ``torch:forward``: ultralytics' model forward in torch (AutoBackend, ``--fuse``);
  * ``ultralytics:cam``: ``ultralytics.utils.plotting.class_activation_map(topk=--top,
    conf=0)``: one forward and ``--top`` backward passes through the whole model, the fused
    LayerCAM and the JPEG overlay it writes (to a temporary folder).
Ratios: each onnxcam variant over ``plain``; ``ultralytics:cam`` over ``onnxcam:detect`` (and
over ``onnxcam:raw``).

    python bench/detect.py [--repeats 10] [--top 10] [--size 640]
"""

from __future__ import annotations

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


def ort_options():
    opts = session_options()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return opts


def make_variants(yolo, cam_path: Path, image: np.ndarray, top: int, conf: float, fuse: bool):
    """name → zero-argument callable (see the module docstring), and what each explains."""
    import onnxruntime as ort
    import torch
    import yolo_reference as yr
    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.utils import plotting

    from onnxcam import Explainer, contract

    providers = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(str(yolo.onnx), ort_options(), providers=providers)
    cam = ort.InferenceSession(str(cam_path), ort_options(), providers=providers)
    x = yr.to_input([image])
    acts = [contract.activation_name(k) for k in range(3)]
    fwd_names = ["output0", contract.LOGITS_OUTPUT, *acts]
    mode1 = np.array(contract.MODE_FORWARD, dtype=np.int64)
    mode2 = np.array(contract.MODE_HEAD, dtype=np.int64)
    heads = [contract.head_gradient_name(k) for k in range(3)]

    def raw():
        ran = cam.run(fwd_names, {"images": x, "onnxcam_mode": mode1})
        out = dict(zip(fwd_names, ran, strict=True))
        z = out[contract.LOGITS_OUTPUT][0]  # [K, N]
        best = z.max(0)
        anchors = np.argpartition(-best, top - 1)[:top]
        seed = np.zeros((top, *z.shape), np.float32)
        seed[np.arange(top), z[:, anchors].argmax(0), anchors] = 1.0
        feeds = {
            "images": x,
            "onnxcam_mode": mode2,
            contract.SEED_INPUT: seed,
            **{contract.head_input_name(k): out[a] for k, a in enumerate(acts)},
        }
        return cam.run(heads, feeds)

    variants = {
        "plain": lambda: plain.run(None, {"images": x}),
        "onnxcam:forward": lambda: cam.run(fwd_names, {"images": x, "onnxcam_mode": mode1}),
        "onnxcam:raw": raw,
    }
    explained = {"onnxcam:raw": top}
    ex = Explainer(cam_path, device="cpu", session_options=ort_options())
    if hasattr(ex, "detect"):

        def detect():
            return ex.detect(image, methods="layercam", top=top, conf=conf)

        variants["onnxcam:detect"] = detect
        explained["onnxcam:detect"] = len(detect()[0].detections)

    model = yolo.model
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = False
    backend = AutoBackend(model, device=torch.device("cpu"), fuse=fuse, verbose=False)
    xt = torch.from_numpy(x)
    out_dir = Path(tempfile.mkdtemp(prefix="onnxcam-bench-"))

    def torch_forward():
        with torch.inference_mode():
            backend(xt)

    def ultra():
        plotting.class_activation_map(backend, xt, ["bench.jpg"], out_dir, conf=0.0, topk=top)
        for f in out_dir.iterdir():  # one overlay per call; keep the folder empty
            f.unlink()

    variants["torch:forward"] = torch_forward
    variants["ultralytics:cam"] = ultra
    explained["ultralytics:cam"] = top
    return variants, explained


def main() -> None:
    ap = arguments(__doc__, 10, "yolo11n", batches=None)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--conf", type=float, default=0.05, help="onnxcam:detect's conf")
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
            cam_path = Path(tmp) / f"{name}.cam.onnx"
            # verify=False: the export's verification refuses some detectors (the joint
            # head's gradients are compared with the full graph's; see the tests)
            export_onnx(yolo.onnx, cam_path, preset="unit", task="detect", verify=False)
            image = yr.photos(args.size)[0]
            variants, explained = make_variants(
                yolo, cam_path, image, args.top, args.conf, not args.no_fuse
            )
            times = interleaved(variants, repeats=args.repeats, warmup=2)
        ms = {k: median_ms(v) for k, v in times.items()}
        base = ms["plain"]
        ours = ms.get("onnxcam:detect", ms["onnxcam:raw"])
        for variant, t in ms.items():
            row = {
                "model": name,
                "size": args.size,
                "variant": variant,
                "explained": explained.get(variant, 0),
                "ms": t,
                "vs_plain": t / base,
                "p25_ms": 1000 * float(np.percentile(times[variant], 25)),
                "p75_ms": 1000 * float(np.percentile(times[variant], 75)),
            }
            if variant == "ultralytics:cam":
                row["vs_onnxcam_detect"] = t / ours
                row["vs_onnxcam_raw"] = t / ms["onnxcam:raw"]
            rows.append(row)
            print(f"{name} {variant:18s} {t:8.1f} ms  ({t / base:5.2f}x plain)", flush=True)
    cols = [
        ("model", "model"),
        ("size", "size"),
        ("variant", "variant"),
        ("explained", "detections explained"),
        ("ms", "median ms"),
        ("p25_ms", "p25 ms"),
        ("p75_ms", "p75 ms"),
        ("vs_plain", "/ plain"),
        ("vs_onnxcam_detect", "ultralytics / onnxcam detect"),
        ("vs_onnxcam_raw", "ultralytics / onnxcam raw"),
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
