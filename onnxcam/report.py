"""A self-contained HTML report: every image, its top-5 predictions and every method's overlay.

One file, images embedded as JPEG data URIs, no external resources, so it opens offline. Long
reports are paginated (``per_page`` images per page, a few lines of inline JavaScript; without
JavaScript every page is shown).
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import __version__
from .engine import Explanation, Failure


@dataclass
class ReportInfo:
    """The header: what produced the report."""

    model: str
    layers: list[str]
    provider: str
    methods: list[str]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _jpeg(rgb: np.ndarray, max_side: int) -> str:
    """RGB (float or uint8) → base64 JPEG data URI, longest side at most ``max_side``."""
    img = np.clip(np.asarray(rgb, dtype=np.float32), 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        img = cv2.resize(
            img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#667085;--acc:#2f6fed;--bad:#c0392b}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,
sans-serif;background:var(--bg);color:var(--ink)}
header{background:#14213d;color:#fff;padding:18px 28px}header h1{margin:0 0 6px;font-size:20px}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;
font-size:13px;opacity:.92}header dt{opacity:.7}
main{padding:18px 28px;max-width:1500px;margin:auto}
nav.pages{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0 16px}
nav.pages button{border:1px solid #c8ced8;background:#fff;border-radius:6px;padding:4px 10px;
cursor:pointer}nav.pages button.on{background:var(--acc);color:#fff;border-color:var(--acc)}
.card{background:var(--card);border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);
padding:14px 16px;margin:0 0 18px}
.card h2{font-size:15px;margin:0 0 10px;word-break:break-all}
.row{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}
.orig img{max-width:300px;border-radius:6px;display:block}
.preds{min-width:260px;flex:1;max-width:420px}.pred{margin:4px 0}
.pred .lab{display:flex;justify-content:space-between;font-size:13px}
.bar{height:8px;background:#e7eaf0;border-radius:4px;overflow:hidden}
.bar span{display:block;height:100%;background:var(--acc)}
.pred.explained .lab{font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px;
margin-top:12px}
figure{margin:0}figure img{width:100%;border-radius:6px;display:block}
figcaption{font-size:12px;color:var(--mute);display:flex;justify-content:space-between}
figcaption b{color:var(--ink)}
.card.error{border-left:5px solid var(--bad)}.card.error p{color:var(--bad);margin:0}
footer{color:var(--mute);font-size:12px;text-align:center;padding:10px 0 30px}
"""

JS = """
(function(){var pages=document.querySelectorAll('section.page');if(pages.length<2)return;
var nav=document.querySelector('nav.pages');function show(i){pages.forEach(function(p,j){
p.style.display=j===i?'':'none'});nav.querySelectorAll('button').forEach(function(b,j){
b.className=j===i?'on':''});window.scrollTo(0,0)}pages.forEach(function(p,i){
var b=document.createElement('button');b.textContent=p.dataset.label;b.onclick=function(){
show(i)};nav.appendChild(b)});show(0)})();
"""


def _pct(p: float) -> str:
    return f"{max(0.5, 100 * p):.1f}"


def _card(r: Explanation | Failure, alpha: float, colormap: str) -> str:
    esc = html.escape
    if isinstance(r, Failure):
        return (
            f'<article class="card error"><h2>{esc(r.source)}</h2>'
            f"<p>Could not explain this image: {esc(r.error)}</p></article>"
        )
    preds = "".join(
        f'<div class="pred{" explained" if p.index == r.target.index else ""}">'
        f'<div class="lab"><span>{esc(p.label)} <small>#{p.index}</small></span>'
        f"<span>{100 * p.probability:.1f}%</span></div>"
        f'<div class="bar"><span style="width:{_pct(p.probability)}%"></span></div></div>'
        for p in r.predictions[:5]
    )
    figs = "".join(
        f'<figure><img loading="lazy" alt="{esc(name)}" '
        f'src="{_jpeg(r.overlay(name, alpha, colormap), 420)}"><figcaption><b>{esc(name)}</b>'
        f"<span>{1000 * m.seconds:.1f} ms</span></figcaption></figure>"
        for name, m in r.maps.items()
    )
    return (
        f'<article class="card"><h2>{esc(Path(r.source).name)} — explained: '
        f"{esc(r.target.label)} ({100 * r.target.probability:.1f}%)</h2>"
        f'<div class="row"><div class="orig"><img alt="original" src="{_jpeg(r.image, 300)}"></div>'
        f'<div class="preds"><div style="color:#667085;font-size:12px">top-5 predictions</div>'
        f'{preds}</div></div><div class="grid">{figs}</div></article>'
    )


def render(
    results: list[Explanation | Failure],
    info: ReportInfo,
    per_page: int = 10,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> str:
    """The whole report as one HTML string."""
    esc = html.escape
    cards = [_card(r, alpha, colormap) for r in results]
    pages = [cards[i : i + per_page] for i in range(0, len(cards), per_page)] or [[]]
    sections = "".join(
        f'<section class="page" data-label="{i * per_page + 1}–{i * per_page + len(p)}">'
        f"{''.join(p)}</section>"
        for i, p in enumerate(pages)
    )
    n_ok = sum(not isinstance(r, Failure) for r in results)
    notes = "".join(f"<dt>note</dt><dd>{esc(n)}</dd>" for n in info.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>onnxcam report — {esc(info.model)}</title><style>{CSS}</style></head>
<body><header><h1>onnxcam report</h1><dl>
<dt>model</dt><dd>{esc(info.model)}</dd>
<dt>target layer</dt><dd>{esc(", ".join(info.layers))}</dd>
<dt>provider</dt><dd>{esc(info.provider)}</dd>
<dt>methods</dt><dd>{esc(", ".join(info.methods))}</dd>
<dt>images</dt><dd>{n_ok} explained, {len(results) - n_ok} failed</dd>
<dt>total time</dt><dd>{info.seconds:.1f} s</dd>{notes}
</dl></header>
<main><nav class="pages"></nav>{sections}</main>
<footer>onnxcam {__version__} · {time.strftime("%Y-%m-%d %H:%M")} · self-contained, offline
</footer>
<script>{JS}</script></body></html>
"""


def write(path: str | Path, results: list[Explanation | Failure], info: ReportInfo, **kw) -> Path:
    """Render and write the report; returns its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render(results, info, **kw), encoding="utf-8")
    return p


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def screenshot(
    html_path: str | Path,
    png_path: str | Path,
    width: int = 1400,
    height: int = 1700,
    timeout: float = 120,
) -> Path:
    """Render the report in headless Chromium (Debian package ``chromium``) to a PNG.

    The flags keep Chromium off the network (this machine's closed network otherwise makes it
    retry connections) and away from the user's profile.
    """
    import shutil
    import subprocess
    import tempfile

    from .errors import OnnxcamError

    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        raise OnnxcamError("no Chromium found (apt install chromium) to take the screenshot")
    png = Path(png_path).resolve()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            Path(html_path).resolve().as_uri(),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not png.is_file():
        raise OnnxcamError(f"Chromium could not render {html_path}: {r.stderr.strip()[-300:]}")
    return png
