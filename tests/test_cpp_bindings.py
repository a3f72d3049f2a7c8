"""The C++ post-processing core (cpp_bindings/): it builds with CMake, its ctest suite passes, and
through the ctypes module it reproduces the numpy runtime on real exported-model outputs.

Parity, on the tiny model's (and ResNet-18's) activations / gradients from onnxruntime:
raw maps and normalised feature maps within 1e-5 of ``onnxcam.methods`` / ``postprocess``
(C++ sums in double, numpy in float32: ~1e-7 apart); resize, colormap, overlay and boxes are
bit-exact given the same map (the resize reproduces cv2.resize's float32 arithmetic).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam import localize, postprocess
from onnxcam.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "cpp_bindings"
METHOD_NAMES = [
    "cam",
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "gradcam-elementwise",
]
ORIGINAL = (1080, 1920)  # an original image size (H, W)
# opencv-python's x86-64 wheels resize float32 maps through Intel IPP, which the C++ resize
# reproduces bit for bit; elsewhere (OpenCV's own kernel) agreement is to float32 rounding.
CV_IPP = "Intel IPP" in cv2.getBuildInformation()


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory) -> Path:
    """cpp_bindings built (Release) in a temporary directory; skips without cmake / a compiler."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    if _compiler() is None:
        pytest.skip("no C++ compiler found")
    build = tmp_path_factory.mktemp("cpp_build")
    cfg = _run(["cmake", "-S", CPP, "-B", build, "-DCMAKE_BUILD_TYPE=Release"], timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    jobs = os.environ.get("ONNXCAM_JOBS", "2")
    b = _run(["cmake", "--build", build, "-j", jobs], timeout=900)
    assert b.returncode == 0, b.stdout + b.stderr
    return build


@pytest.fixture(scope="session")
def cc(cpp_build):
    """The ctypes module (cpp_bindings/python/onnxcam_cpp.py) bound to the fresh build."""
    sys.path.insert(0, str(CPP / "python"))
    import onnxcam_cpp

    shared = {".so", ".dylib", ".dll"}
    lib = next(p for p in cpp_build.glob("*onnxcam_post.*") if p.suffix in shared)
    onnxcam_cpp.load(lib)
    return onnxcam_cpp


def _model_outputs(path, batch: int, seed: int) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [batch, *(d if isinstance(d, int) else 1 for d in inp.shape[1:])]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    names = ["onnxcam_activation_0", "onnxcam_gradient_0", "onnxcam_cam_weight_0"]
    A, G, w = sess.run(names, {inp.name: x})
    return {"A": A, "G": G, "w": w}


@pytest.fixture(scope="module")
def tiny_out(tiny_cam) -> dict[str, np.ndarray]:
    """The tiny exported model's A, G [4, 16, 8, 8] and w [4, 16] for 4 random inputs."""
    return _model_outputs(tiny_cam, batch=4, seed=0)


def _python_raw(method: str, out: dict) -> np.ndarray:
    args = (out["A"], out["w"]) if method == "cam" else (out["A"], out["G"])
    return np.asarray(METHODS[method].fn(*args), dtype=np.float32)


def _check_maps(cc, out: dict, method: str) -> None:
    """Raw and feature maps of one method within 1e-5 of the numpy runtime."""
    raw = _python_raw(method, out)
    got = cc.cam_map(method, out["A"], out["G"], out["w"], relu=False, normalize=False)
    scale = max(float(np.abs(raw).max()), 1e-30)
    assert np.abs(got - raw).max() / scale < 1e-5, method
    feat = postprocess.normalize(postprocess.relu(raw))
    got_feat = cc.cam_map(method, out["A"], out["G"], out["w"])
    np.testing.assert_allclose(got_feat, feat, rtol=0, atol=1e-5, err_msg=method)


# ---- build + unit tests -----------------------------------------------------------------------
def test_ctest_passes(cpp_build):
    r = _run(["ctest", "--test-dir", cpp_build, "--output-on-failure"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "100% tests passed" in r.stdout


def test_library_information(cc):
    assert cc.version() == "0.1.0"
    assert cc.methods() == METHOD_NAMES
    assert set(cc.methods()) <= set(METHODS)
    np.testing.assert_array_equal(
        cc.colormap_table("jet"),
        cv2.applyColorMap(np.arange(256, dtype=np.uint8), cv2.COLORMAP_JET).reshape(256, 3)[
            :, ::-1
        ],
    )
    for name, cid in postprocess.COLORMAPS.items():
        assert cc.colormap_id(name) == cid
        table = cv2.applyColorMap(np.arange(256, dtype=np.uint8), cid).reshape(256, 3)[:, ::-1]
        np.testing.assert_array_equal(cc.colormap_table(name), table, err_msg=name)


def test_errors_raise(cc):
    with pytest.raises(cc.CppError, match="height must be positive") as e:
        cc.resize(np.zeros((2, 2), np.float32), 0, 5)
    assert e.value.status == 3
    with pytest.raises(ValueError, match="needs gradients"):
        cc.cam_map("gradcam", np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="unknown method"):
        cc.cam_map("nope", np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)))
    with pytest.raises(cc.CppError, match="alpha"):
        cc.overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), alpha=2.0)


# ---- parity with the numpy runtime on exported-model outputs ------------------------------------
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_maps_match_numpy_runtime(cc, tiny_out, method):
    _check_maps(cc, tiny_out, method)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_original_size_overlay_and_boxes_match(cc, tiny_out, method, rng):
    feat = postprocess.normalize(postprocess.relu(_python_raw(method, tiny_out)))
    got_feat = cc.cam_map(method, tiny_out["A"], tiny_out["G"], tiny_out["w"])
    H, W = ORIGINAL
    big = postprocess.resize_normalized(feat, H, W)
    # the C++ pipeline end to end: within 1e-5 of the numpy pipeline
    got_big = cc.resize_normalized(got_feat, H, W)
    np.testing.assert_allclose(got_big, big, rtol=0, atol=1e-5)
    # the same feature map in: the same bits out (resize, normalise again)
    same = cc.resize_normalized(feat, H, W)
    if CV_IPP:
        np.testing.assert_array_equal(same, big)
        np.testing.assert_array_equal(cc.resize(feat, H, W), postprocess.resize(feat, H, W))
    else:
        np.testing.assert_allclose(same, big, rtol=0, atol=1e-6)

    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    for i in range(2):
        for kw in ({}, {"alpha": 0.3, "threshold": 0.4}, {"alpha": 0.8, "colormap": "turbo"}):
            ref = postprocess.overlay(image, big[i], **kw)
            np.testing.assert_array_equal(cc.overlay(image, big[i], **kw), ref)  # same map
            # end to end from the C++ map: a float32-rounding difference can move a pixel
            # across a colormap quantisation step (one table entry, scaled by alpha) or, rarely,
            # across the threshold (image vs blend)
            diff = np.abs(cc.overlay(image, got_big[i], **kw).astype(int) - ref).max(axis=2)
            bound = _entry_step(cc, kw.get("colormap", "jet")) * kw.get("alpha", 0.5) + 1
            flips = np.zeros(diff.shape, bool)
            if "threshold" in kw:
                flips = (got_big[i] >= kw["threshold"]) != (big[i] >= kw["threshold"])
            assert flips.mean() < 1e-5, (method, kw)
            assert diff[~flips].max() <= bound and (diff > 1).mean() < 1e-4, (method, kw)
        # feature-size map: overlay resizes it to the image first (no second min-max)
        ref = postprocess.overlay(image, feat[i])
        diff = np.abs(cc.overlay(image, feat[i]).astype(int) - ref)
        assert diff.max() == 0 if CV_IPP else diff.max() <= _entry_step(cc, "jet") / 2 + 1
        np.testing.assert_array_equal(cc.colorize(big[i]), postprocess.colorize(big[i]))

    for i in range(len(feat)):
        for m in (big[i], feat[i]):
            for kw in (
                {},
                {"threshold": 0.3, "largest": False, "min_area": 0.0},
                {"threshold": 0.6, "largest": False, "min_area": 0.02},
            ):
                _assert_same_boxes(cc.boxes(m, **kw), localize.boxes_from_map(m, **kw))
        # and from the C++ map
        _assert_same_boxes(cc.boxes(got_big[i]), localize.boxes_from_map(big[i]), score_tol=1e-5)
        np.testing.assert_array_equal(
            cc.threshold_mask(big[i], 0.5), localize.mask_from_map(big[i], 0.5)
        )


def _entry_step(cc, colormap: str) -> int:
    """Largest change between neighbouring entries of a colormap table."""
    return int(np.abs(np.diff(cc.colormap_table(colormap).astype(int), axis=0)).max())


def _assert_same_boxes(got, ref, score_tol: float = 1e-6) -> None:
    assert [b.as_list() for b in got] == [b.as_list() for b in ref]
    for g, r in zip(got, ref, strict=True):
        assert abs(g.score - r.score) <= score_tol


def test_boxes_match_opencv_components_and_ties(cc):
    """Random quantised maps (many equal areas and scores): same boxes, same order."""
    rng = np.random.default_rng(1)
    for t in range(300):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        m = (rng.integers(0, 4, (h, w)) / 3).astype(np.float32)
        if t % 3 == 0:  # blocky components
            m = cv2.resize(m, (w * 3, h * 2), interpolation=cv2.INTER_NEAREST)
        for kw in (
            {},
            {"threshold": 0.6, "largest": False, "min_area": 0.0},
            {"threshold": 0.3, "largest": False, "min_area": 0.01},
        ):
            _assert_same_boxes(cc.boxes(m, **kw), localize.boxes_from_map(m, **kw))


def test_nhwc_equals_nchw(cc, tiny_out):
    A, G, w = tiny_out["A"], tiny_out["G"], tiny_out["w"]
    An, Gn = A.transpose(0, 2, 3, 1), G.transpose(0, 2, 3, 1)
    for method in METHOD_NAMES:
        a = cc.cam_map(method, A, G, w, relu=False, normalize=False)
        b = cc.cam_map(method, An, Gn, w, layout="NHWC", relu=False, normalize=False)
        np.testing.assert_array_equal(a, b, err_msg=method)


def test_non_finite_inputs_match_runtime(cc, tiny_out):
    """NaN / inf in a tensor: the runtime's maps (NaN -> 0 in normalize) and never NaN."""
    A, G = tiny_out["A"].copy(), tiny_out["G"].copy()
    A[0, 3, 2, 2] = np.nan
    G[1, 5, 1, 1] = np.inf
    out = {"A": A, "G": G, "w": tiny_out["w"]}
    for method in METHOD_NAMES:
        with np.errstate(all="ignore"):
            ref = postprocess.normalize(postprocess.relu(_python_raw(method, out)))
        got = cc.cam_map(method, A, G, out["w"])
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=method)


def test_constant_map_normalises_to_zeros(cc):
    np.testing.assert_array_equal(cc.normalize(np.full((2, 3, 4), 0.3)), np.zeros((2, 3, 4)))
    np.testing.assert_array_equal(cc.resize_normalized(np.ones((7, 7)), 9, 5), np.zeros((9, 5)))


@pytest.mark.parametrize("shape", [(7, 7, 1920, 1080), (7, 7, 224, 224), (14, 10, 5, 3)])
def test_resize_matches_cv2(cc, shape, rng):
    h, w, H, W = shape
    m = rng.random((h, w)).astype(np.float32)
    ref = cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)
    if CV_IPP:
        np.testing.assert_array_equal(cc.resize(m, H, W), ref)
    else:
        np.testing.assert_allclose(cc.resize(m, H, W), ref, rtol=0, atol=1e-6)


@pytest.mark.model
def test_resnet18_maps_match_numpy_runtime(cc, tmp_path):
    """512 channels at 7x7 from a random-init ResNet-18 exported with onnxcam."""
    import warnings

    from torch_reference import torchvision_model

    from onnxcam.export import export_torch

    path = tmp_path / "resnet18.cam.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_torch(torchvision_model("resnet18"), (1, 3, 224, 224), ["layer4"], output=path)
    out = _model_outputs(path, batch=2, seed=3)
    assert out["A"].shape == (2, 512, 7, 7)
    for method in METHOD_NAMES:
        _check_maps(cc, out, method)


# ---- the example program ------------------------------------------------------------------------
def _write_ppm(path: Path, rgb: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    path.write_bytes(f"P6\n# test image\n{w} {h}\n255\n".encode() + rgb.tobytes())


def _read_ppm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic, w, h, maxval, rest = data.split(maxsplit=4)
    assert magic == b"P6" and maxval == b"255"
    return np.frombuffer(rest, np.uint8).reshape(int(h), int(w), 3)


def test_example_heatmap_from_npy(cc, cpp_build, tiny_out, tmp_path, rng):
    exe = cpp_build / "heatmap_from_npy"
    A, G, w = tiny_out["A"][:1], tiny_out["G"][:1], tiny_out["w"][:1]
    np.save(tmp_path / "act.npy", A)
    np.save(tmp_path / "grad.npy", G)
    np.save(tmp_path / "w.npy", w.astype(np.float64))  # float64 is read too
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    _write_ppm(tmp_path / "img.ppm", image)

    r = _run(
        [exe, "act.npy", "grad.npy", "--method", "gradcam++", "--image", "img.ppm"],
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "gradcam++: features [16, 8, 8] -> heatmap 120x90" in r.stdout
    feat = cc.cam_map("gradcam++", A, G)[0]
    big = cc.resize_normalized(feat, 90, 120)
    np.testing.assert_array_equal(_read_ppm(tmp_path / "heatmap.ppm"), cc.colorize(big))
    np.testing.assert_array_equal(_read_ppm(tmp_path / "overlay.ppm"), cc.overlay(image, big))
    # against the numpy runtime: colours agree except where a float32-rounding difference
    # crosses a colormap step
    ref = postprocess.colorize(
        postprocess.resize_normalized(
            postprocess.normalize(postprocess.relu(_python_raw("gradcam++", tiny_out)[:1]))[0],
            90,
            120,
        )
    )
    diff = np.abs(_read_ppm(tmp_path / "heatmap.ppm").astype(int) - ref)
    assert diff.max() <= _entry_step(cc, "jet") and (diff > 0).mean() < 1e-3

    r = _run(
        [exe, "act.npy", "-", "--method", "cam", "--weights", "w.npy", "--size", "30x40"],
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    heat = _read_ppm(tmp_path / "heatmap.ppm")
    assert heat.shape == (30, 40, 3)
    big = cc.resize_normalized(cc.cam_map("cam", A, w=w)[0], 30, 40)
    np.testing.assert_array_equal(heat, cc.colorize(big))

    r = _run([exe, "act.npy"], cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "usage: heatmap_from_npy" in r.stderr
    r = _run([exe, "act.npy", "grad.npy", "--method", "bogus"], cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "unknown method" in r.stderr
    np.save(tmp_path / "bad.npy", A.astype(np.int32))
    r = _run([exe, "bad.npy", "grad.npy"], cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "not supported" in r.stderr


def test_python_runtime_uses_the_cpp_core_when_present(cc, cpp_build, monkeypatch) -> None:
    """ONNXCAM_CPP_LIB switches postprocess.overlay to the C++ core; the bytes are the same."""
    from onnxcam import postprocess

    shared = {".so", ".dylib", ".dll"}
    lib = next(p for p in cpp_build.glob("*onnxcam_post.*") if p.suffix in shared)
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (120, 200, 3)).astype(np.float32)
    m = postprocess.normalize(rng.random((7, 7)).astype(np.float32))
    monkeypatch.setattr(postprocess, "_CPP", False)  # numpy path
    want = [postprocess.overlay(img, m), postprocess.overlay(img, m, 0.3, "turbo", 0.4)]
    monkeypatch.setenv("ONNXCAM_CPP_LIB", str(lib))
    monkeypatch.setattr(postprocess, "_CPP", None)  # look it up again
    assert postprocess._cpp() is not None
    got = [postprocess.overlay(img, m), postprocess.overlay(img, m, 0.3, "turbo", 0.4)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
