"""The static feature browser: ``site/index.html``, ``site/features/<k>.html`` + ``<k>.json``, ``site/rows/<i>.html``.

Self-contained: no server, no network, inline CSS and JS, images as PNG files loaded lazily.  Built from one
streaming pass (:func:`~saev_curate.inspect.collect.collect`), the decoder-logit labels and concept precision
(:mod:`saev_curate.inspect.labels`), the cross-modal weights (class, ω, feature pairs) and, for the lowest- and
highest-scoring rows, :func:`~saev_curate.inspect.explain.explain`.  Each feature page draws its image heat maps on
one colour scale (0 to the page's largest activation); the JSON beside it has Neuronpedia's per-feature fields
(``pos_str``, ``frac_nonzero``, ``freq_hist_data_bar_*``, ``activations`` with ``tokens``/``values``...) plus ours
under ``saev``.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saev_curate.core.errors import InputError
from saev_curate.inspect.text import token_strings, token_text

__all__ = ["PairIndex", "SiteResult", "build_site"]

CSS = ("body{font-family:sans-serif;max-width:1200px;margin:1.5em auto;color:#222}"
       "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top;font-size:13px}"
       "th{background:#f3f3f3;cursor:pointer}img{image-rendering:pixelated}.ex{display:flex;gap:10px;align-items:center;"
       "border-bottom:1px solid #eee;padding:4px 0}.ex img{width:96px;height:96px;object-fit:contain}"
       ".tok{white-space:pre-wrap;font-family:monospace;font-size:12px;line-height:1.7}.tok span{border-radius:2px}"
       ".img{background:#ddd;padding:0 3px;border-radius:3px}.chip{display:inline-block;padding:1px 6px;margin:1px;"
       "border-radius:8px;background:#eef}.blame{outline:2px solid #c00}.defect{text-decoration:underline wavy #c00}"
       ".grid{display:flex;flex-wrap:wrap;gap:14px}.card{border:1px solid #ddd;padding:6px;border-radius:4px}"
       "nav a{margin-right:1em}")
CLASS_COLOURS = {"image": "#1f77b4", "text": "#2ca02c", "cross_modal": "#d62728", "mixed": "#9467bd"}
#: the site's name for ω's class "dead" (never among a reference token's top features when ω was fitted): a feature
#: with a page fires on the browsed rows, so "dead" next to "live" would read as a contradiction
UNFITTED = "unfitted"


@dataclass
class SiteResult:
    """Where the site is and what it holds."""

    out: Path
    index: Path
    features: list[int]
    rows: list[int]
    by: str
    n_rows: int
    seconds: float
    interpretability: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- small helpers
def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _page(title: str, body: list[str], script: str = "") -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + _esc(title) + "</title><style>" + CSS
            + "</style></head><body>" + "".join(body) + (f"<script>{script}</script>" if script else "")
            + "</body></html>")


def _shade(v: float, vmax: float) -> str:
    a = 0.0 if vmax <= 0 else max(0.0, min(1.0, v / vmax))
    return f"rgba(255,120,0,{a:.2f})"


def tokens_html(tokens: list[str], values: list[float], is_image: list[bool], vmax: float, *,
                marks: dict[int, str] | None = None) -> str:
    """The sequence as text with each token shaded by its value (0 to ``vmax``); a run of image tokens is one
    ``[image]`` chip; ``marks`` adds a CSS class to positions (the blamed token, the known false words)."""
    out, in_image = [], False
    for i, (t, v, im) in enumerate(zip(tokens, values, is_image)):
        if im:
            if not in_image:
                out.append("<span class=img>[image]</span>")
            in_image = True
            continue
        in_image = False
        cls = f" class='{marks[i]}'" if marks and i in marks else ""
        title = f" title='{v:.3g}'" if v > 0 else ""
        style = f" style='background:{_shade(v, vmax)}'" if v > 0 else ""
        out.append(f"<span{cls}{style}{title}>{_esc(token_text(t))}</span>")
    return "<div class=tok>" + "".join(out) + "</div>"


def _svg_bars(heights: list[float], centers: list[float], *, width: int = 420, height: int = 110,
              colour: str = "#e07b00", label: str = "") -> str:
    if not heights or max(heights) <= 0:
        return "<p><em>no values</em></p>"
    n, top = len(heights), max(heights)
    bw = width / n
    bars = "".join(f"<rect x='{i * bw:.1f}' y='{height - 18 - h / top * (height - 24):.1f}' width='{bw * 0.9:.1f}' "
                   f"height='{h / top * (height - 24):.1f}' fill='{colour}'><title>{c:.3g}: {h:g}</title></rect>"
                   for i, (h, c) in enumerate(zip(heights, centers)))
    axis = (f"<text x='0' y='{height - 4}' font-size='10'>{centers[0]:.3g}</text>"
            f"<text x='{width - 40}' y='{height - 4}' font-size='10'>{centers[-1]:.3g}</text>"
            f"<text x='{width / 2 - 40}' y='{height - 4}' font-size='10'>{_esc(label)}</text>")
    return f"<svg width='{width}' height='{height}' role='img'>{bars}{axis}</svg>"


class PairIndex:
    """A :class:`~saev_curate.curation.pairs.FeaturePairs` indexed both ways (by text feature and by image feature),
    so each feature's strongest cross-modal partners are a slice, not a scan of every pair."""

    def __init__(self, pairs):
        import torch

        self.pairs = pairs
        if pairs is None or not len(pairs.keys):
            return
        d = pairs.d_sae
        self.text_of, self.image_of = pairs.keys // d, pairs.keys % d
        self.by_image = torch.argsort(self.image_of, stable=True)
        self.image_sorted = self.image_of[self.by_image]

    def partners(self, feature: int, *, top: int = 6) -> dict[str, list[dict]]:
        """``feature``'s strongest pairs by npmi: the image features it pairs with as a text feature, and the text
        features as an image feature (only partners seen on at least ``min_count`` reference rows)."""
        import torch

        p = self.pairs
        if p is None or not len(p.keys):
            return {"as_text": [], "as_image": []}

        def best(idx, partner, counts) -> list[dict]:
            idx = idx[counts[partner[idx]] >= p.min_count]
            if not len(idx):
                return []
            vals, order = p.npmi[idx].topk(min(top, len(idx)))
            return [{"feature": int(partner[idx[o]]), "npmi": float(v)} for v, o in zip(vals, order)]

        t = torch.tensor([feature])
        lo, hi = int(torch.searchsorted(self.text_of, t)), int(torch.searchsorted(self.text_of, t, right=True))
        a, b = int(torch.searchsorted(self.image_sorted, t)), int(torch.searchsorted(self.image_sorted, t, right=True))
        as_text = best(torch.arange(lo, hi), self.image_of, p.n_image) if p.n_text[feature] >= p.min_count else []
        as_image = best(self.by_image[a:b], self.text_of, p.n_text) if p.n_image[feature] >= p.min_count else []
        return {"as_text": as_text, "as_image": as_image}


class _RowImages:
    """Per dataset row (LRU-cached): its images as display-sized thumbnails and its image tokens' pixel boxes
    scaled to them."""

    def __init__(self, model, processor, data, mode: str, max_side: int = 160, capacity: int = 2048):
        self.model, self.processor, self.data, self.mode = model, processor, data, mode
        self.max_side, self.capacity = max_side, capacity
        self.cache: OrderedDict[int, tuple[list, list]] = OrderedDict()

    def get(self, i: int) -> tuple[list, list]:
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        from saev_curate.inspect.explain import row_images
        from saev_curate.vlm.geometry import PatchBox, image_token_boxes
        from saev_curate.vlm.rows import prepare_batch

        row = self.data[i]  # a Dataset or a list: one row, images decoded
        images = row_images(row)
        prep = prepare_batch(self.processor, [row], mode=self.mode, on_error="record")
        boxes = image_token_boxes(self.model, self.processor, prep.inputs, 0, [im.size for im in images]) \
            if prep.inputs is not None else []
        thumbs, scale = [], []
        for im in images:
            s = min(1.0, self.max_side / max(im.size))
            thumbs.append(im if s == 1.0 else im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s)))))
            scale.append(s)
        boxes = [None if b is None else PatchBox(b.image, tuple(x * scale[b.image] for x in b.box)) for b in boxes]
        self.cache[i] = (thumbs, boxes)
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return thumbs, boxes


def _heat_png(thumbs: list, boxes: list, image_values: list[float], vmax: float, path: Path) -> list[str]:
    """One PNG per image of the row with ``image_values`` drawn over it on the scale [0, vmax]; returns the
    file names."""
    from saev_curate.vlm.geometry import heatmap, overlay

    names = []
    for j, thumb in enumerate(thumbs):
        heat = heatmap(image_values, boxes, thumb.size, image=j)
        img = overlay(thumb, heat, vmin=0.0, vmax=max(vmax, 1e-6), alpha=0.4) if np.isfinite(heat).any() else thumb
        name = f"{path.name}-{j}.png"
        img.save(path.parent / name, compress_level=1)
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------- feature pages
def _feature_label(k: int, concept: dict | None, logits: dict | None) -> str:
    if concept is not None and concept["precision"] >= 0.5:
        return f"fires on {concept['concept']}: {concept['precision']:.2f}"
    if logits is not None:
        return "→ " + " ".join(token_text(t).strip() for t in logits["pos_str"][:4])
    return ""


def _example_html(stats, ex, slot: int, k: int, tok, images: _RowImages, img_dir: Path, vmax: float,
                  prefix: str, row_pages: set[int]) -> tuple[str, dict]:
    """One kept row of feature ``k`` (slot ``slot`` of ``ex``): heat maps + shaded text, and its Neuronpedia
    activation record."""
    row = int(ex.row[k, slot])
    real = ex.ids[k, slot] >= 0
    ids = ex.ids[k, slot][real].tolist()
    vals = ex.tokens[k, slot][real].tolist()
    is_img = ex.is_image[k, slot][real].tolist()
    toks = token_strings(tok, ids)
    thumbs, boxes = images.get(row)
    img_vals = [v for v, im in zip(vals, is_img) if im]
    names = _heat_png(thumbs, boxes, img_vals, vmax, img_dir / f"{k}-{prefix}{slot}") if boxes else []
    pics = "".join(f"<img loading=lazy src='img/{n}' alt='row {row} image {j}'>" for j, n in enumerate(names))
    top_at = int(np.argmax(vals)) if vals else 0
    record = {"tokens": toks, "values": vals, "maxValue": float(max(vals, default=0.0)),
              "maxValueTokenIndex": top_at, "row": row, "images": [f"img/{n}" for n in names],
              "is_image": is_img}
    link = f"<a href='../rows/{row}.html'>{row}</a>" if row in row_pages else str(row)
    body = (f"<div class=ex>{pics}<div><small>row {link} · max "
            f"{record['maxValue']:.3g} ({'image' if is_img and is_img[top_at] else 'text'})</small>"
            f"{tokens_html(toks, vals, is_img, vmax)}</div></div>")
    return body, record


def _feature_page(k: int, stats, info: dict, tok, images: _RowImages, out: Path, row_pages: set[int],
                  dataset_name: str, feature_pages: set[int]) -> None:
    img_dir = out / "features" / "img"
    top_slots = [s for s in range(stats.top_k) if int(stats.top.row[k, s]) >= 0]
    vmax = float(stats.top.value[k, 0]) if top_slots else 0.0
    hist = stats.histogram
    edges = hist.edges(k)
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    heights = hist.counts[k].tolist()
    top_html, activations = [], []
    for s in top_slots:
        h, rec = _example_html(stats, stats.top, s, k, tok, images, img_dir, vmax, "t", row_pages)
        top_html.append(h)
        activations.append({"bin_min": -1, "bin_max": -1, "bin_contains": -1, **rec})
    band_html = []
    for b, band in enumerate(stats.quantile_bands(k)):
        band_html.append(f"<h3>Band {b + 1}: activation {band['bin_min']:.3g} – {band['bin_max']:.3g} "
                         f"({band['bin_contains']:.0%} of a uniform sample of firing rows)</h3>")
        for s in band["slots"]:
            h, rec = _example_html(stats, stats.sample, s, k, tok, images, img_dir, vmax, "q", row_pages)
            band_html.append(h)
            activations.append({"bin_min": band["bin_min"], "bin_max": band["bin_max"],
                                "bin_contains": band["bin_contains"], **rec})
    logits = info.get("logits") or {}
    cooc = stats.cooccurring(k)
    pairs = info.get("pairs") or {"as_text": [], "as_image": []}
    np_json = {
        "feature_index": k, "neg_str": logits.get("neg_str", []), "neg_values": logits.get("neg_values", []),
        "pos_str": logits.get("pos_str", []), "pos_values": logits.get("pos_values", []),
        "frac_nonzero": info["frequency"], "freq_hist_data_bar_heights": heights,
        "freq_hist_data_bar_values": centers,
        "logits_hist_data_bar_heights": logits.get("logits_hist_data_bar_heights", []),
        "logits_hist_data_bar_values": logits.get("logits_hist_data_bar_values", []),
        "correlated_features_indices": [c["feature"] for c in cooc], "correlated_features_l1": [],
        "correlated_features_pearson": [], "n_prompts_total": stats.n_rows,
        "n_tokens_in_prompt": int(stats.top.tokens.shape[2]), "dataset": dataset_name, "activations": activations,
        "saev": {k2: info[k2] for k2 in ("class", "omega", "label", "concept", "mean_activation", "max_activation",
                                          "rows_firing", "image_share")}
        | {"cooccurring": cooc, "cross_modal_pairs": pairs},
    }
    (out / "features" / f"{k}.json").write_text(json.dumps(np_json, allow_nan=False, default=_json_default))

    def flink(f: int) -> str:
        return f"<a href='{f}.html'>{f}</a>" if f in feature_pages else str(f)

    logit_rows = "".join(f"<tr><td>{_esc(token_text(a))}</td><td>{b:+.3g}</td><td>{_esc(token_text(c))}</td>"
                         f"<td>{d:+.3g}</td></tr>" for a, b, c, d in zip(logits.get("pos_str", []),
                                                                       logits.get("pos_values", []),
                                                                       logits.get("neg_str", []),
                                                                       logits.get("neg_values", [])))
    concept = info.get("concept")
    body = [
        "<nav><a href='../index.html'>← all features</a></nav>",
        f"<h1>Feature {k} <small style='color:{CLASS_COLOURS.get(info['class'], '#555')}'>{_esc(info['class'])}"
        f"</small></h1><p><b>{_esc(info['label'])}</b></p>",
        "<table><tr><th>fires on tokens</th><th>rows</th><th>mean activation</th><th>max</th><th>image share</th>"
        f"<th>ω</th><th>best concept</th></tr><tr><td>{info['frequency']:.3%}</td><td>{info['rows_firing']}</td>"
        f"<td>{info['mean_activation']:.3g}</td><td>{info['max_activation']:.3g}</td><td>{info['image_share']:.0%}</td>"
        f"<td>{_fmt(info['omega'], 3)}</td><td>"
        + (f"{_esc(concept['concept'])}: precision {concept['precision']:.2f}, recall {concept['recall']:.2f} "
           f"({concept['rows']} rows)" if concept else "–") + "</td></tr></table>",
        "<div class=grid><div><h2>Activation histogram</h2>"
        + _svg_bars(heights, centers, label="activation (tokens it fires on)") + "</div>",
        "<div><h2>Top logits of its decoder direction</h2><table><tr><th>promotes</th><th></th><th>suppresses</th>"
        f"<th></th></tr>{logit_rows}</table></div>",
        "<div><h2>Co-occurring features</h2><p>"
        + (" ".join(f"<span class=chip>{flink(c['feature'])} J={c['jaccard']:.2f}</span>" for c in cooc) or "–")
        + "</p><h2>Strongest cross-modal pairs (npmi)</h2><p>as text feature, with image features: "
        + (" ".join(f"<span class=chip>{flink(p['feature'])} {p['npmi']:.2f}</span>" for p in pairs["as_text"]) or "–")
        + "<br>as image feature, with text features: "
        + (" ".join(f"<span class=chip>{flink(p['feature'])} {p['npmi']:.2f}</span>" for p in pairs["as_image"])
           or "–") + "</p></div></div>",
        f"<h2>Top {len(top_slots)} rows</h2><p><small>Heat maps and shading on one scale: 0 to {vmax:.3g}."
        "</small></p>", *top_html, "<h2>Quantile bands</h2>", *band_html]
    (out / "features" / f"{k}.html").write_text(_page(f"Feature {k}", body))


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x).__name__)


# ---------------------------------------------------------------------------------------------- row pages
def row_page_html(exp, row_index: int, *, feature_pages: set[int], images: list, boxes: list, img_dir: Path,
                  rank_note: str = "") -> str:
    """The row page of a :class:`~saev_curate.inspect.explain.RowExplanation`: scores, contributions with a heat map
    per feature on one scale, the read-out's votes, and the blamed token."""
    shown = list(exp.values)
    vmax = max([max(exp.image_values(f), default=0.0) for f in shown] + [max(exp.values[f], default=0.0)
                                                                          for f in shown] + [1e-6])

    def flink(f: int) -> str:
        return f"<a href='../features/{f}.html'>{f}</a>" if f in feature_pages else str(f)

    score_rows = "".join(f"<tr><td>{_esc(m)}</td><td>{_fmt(v)}</td><td>{'higher' if exp.higher_is_cleaner[m] else 'lower'}"
                         "</td></tr>" for m, v in exp.scores.items())
    marks: dict[int, str] = {}
    blame_html = "<p>–</p>"
    if exp.blame is not None and exp.response_start is not None:
        marks[exp.blame["position"]] = "blame"
        resp = [i for i in range(exp.response_start, len(exp.tokens)) if not exp.is_image[i]]
        for w in exp.blame.get("defect_words") or []:
            if w < len(resp) and resp[w] != exp.blame["position"]:
                marks[resp[w]] = "defect"
        known = exp.blame.get("on_a_defect_word")
        blame_html = (f"<p>The token read-out blames response token {exp.blame['token']}: "
                      f"<b class=blame>{_esc(exp.blame['text'])}</b>"
                      + ("" if known is None else f" — {'one of' if known else 'not one of'} the words the data know "
                         "to be false") + f"; features voting against it: {_esc(exp.blame['features'] or '–')}</p>")
    zero = [0.0] * len(exp.tokens)
    plain = []
    for j, im in enumerate(images):
        plain.append(f"{row_index}-image{j}.png")
        im.save(img_dir / plain[-1])
    body = [
        "<nav><a href='../index.html'>← all features</a></nav>", f"<h1>Row {row_index}</h1>",
        f"<p>{_esc(rank_note)}</p>" if rank_note else "",
        "<h2>Scores in the recommended columns</h2><table><tr><th>method</th><th>score</th><th>cleaner is</th></tr>"
        + score_rows + "</table>",
        "<h2>The row</h2>" + "".join(f"<img src='img/{n}' width=128 alt='image {j}'>" for j, n in enumerate(plain))
        + "<p>" + " · ".join(f"{_esc(k)}: <b>{_esc(v)}</b>" for k, v in exp.labels.items()) + "</p>"
        + tokens_html(exp.tokens, zero, exp.is_image, 1.0, marks=marks)
        + "<p><small><span class=blame>boxed</span>: the blamed token; <span class=defect>wavy</span>: words the "
        "data know to be false</small></p>", "<h2>The token the score blames</h2>" + blame_html,
        f"<h2>Features that drove it</h2><p><small>Contributions to the paper's score (ω of each feature firing on both "
        f"image and text) and the read-out's blamed features; heat maps and shading on one scale: 0 to {vmax:.3g}."
        "</small></p>"]
    contrib = {c["feature"]: c for c in exp.contributions}
    for f in shown:
        c = contrib.get(f)
        names = _heat_png(images, boxes, exp.image_values(f), vmax, img_dir / f"{row_index}-f{f}") if boxes else []
        pics = "".join(f"<img loading=lazy src='img/{n}' alt='feature {f} on image {j}'>" for j, n in enumerate(names))
        what = (f"ω {_fmt(c['omega'], 3)} · {_esc(c['class'])} · text max {c['text_max']:.3g} · image max "
                f"{c['image_max']:.3g}" if c else "a feature of the read-out's vote")
        body.append(f"<div class=ex>{pics}<div><b>feature {flink(f)}</b> <small>{what}</small>"
                    f"{tokens_html(exp.tokens, exp.values[f], exp.is_image, vmax, marks=marks)}</div></div>")
    vote_rows = "".join(f"<tr><td>{flink(v['feature'])}</td><td>{v['activation']:.3g}</td><td>{v['log_ratio']:+.3f}"
                        f"</td><td>{v['n_together']} / {v['n_feature']}</td></tr>" for v in exp.votes)
    body.append("<h2>The read-out's votes on the blamed token</h2><p><small>log p(token | feature) / p(token): "
                "&gt; 0 votes for it</small></p><table><tr><th>feature</th><th>activation</th><th>log ratio</th>"
                "<th>rows together / feature rows</th></tr>" + (vote_rows or "<tr><td colspan=4>–</td></tr>")
                + "</table>")
    if exp.error:
        body.append(f"<p><b>error:</b> {_esc(exp.error)}</p>")
    return _page(f"Row {row_index}", body)


# ---------------------------------------------------------------------------------------------- index
INDEX_JS = """
const rows=[...document.querySelectorAll('#ft tbody tr')];
function apply(){const q=document.getElementById('q').value.toLowerCase(),c=document.getElementById('cls').value,
 f=parseFloat(document.getElementById('minf').value||'0');
 let n=0;for(const r of rows){const ok=(!q||r.dataset.label.toLowerCase().includes(q))&&(!c||r.dataset.cls===c)
 &&parseFloat(r.dataset.freq)>=f/100;r.style.display=ok?'':'none';if(ok)n++;}
 document.getElementById('shown').textContent=n;}
let dir={};
document.querySelectorAll('#ft th').forEach((th,i)=>th.addEventListener('click',()=>{const key=th.dataset.key;
 dir[key]=-(dir[key]||-1);const num=th.dataset.num==='1';const tb=document.querySelector('#ft tbody');
 rows.sort((a,b)=>{const x=a.dataset[key],y=b.dataset[key];return dir[key]*(num?(parseFloat(x)-parseFloat(y)):
 x.localeCompare(y));});rows.forEach(r=>tb.appendChild(r));}));
['q','cls','minf'].forEach(id=>document.getElementById(id).addEventListener('input',apply));apply();
"""


def _scatter(infos: dict[int, dict], width: int = 560, height: int = 300) -> str:
    pts = [(k, i) for k, i in infos.items() if i["frequency"] > 0]
    if not pts:
        return ""
    xs = [math.log10(i["frequency"]) for _, i in pts]
    ys = [i["mean_activation"] for _, i in pts]
    x0, x1, y1 = min(xs), max(xs) + 1e-9, max(ys) + 1e-9
    m = 34

    def px(x: float) -> float:
        return m + (x - x0) / (x1 - x0 + 1e-12) * (width - 2 * m)

    def py(y: float) -> float:
        return height - m - y / y1 * (height - 2 * m)

    dots = "".join(f"<a href='features/{k}.html'><circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill-opacity='0.6' "
                   f"fill='{CLASS_COLOURS.get(i['class'], '#777')}'><title>feature {k}: {_esc(i['label'])}</title>"
                   "</circle></a>" for (k, i), x, y in zip(pts, xs, ys))
    axes = (f"<line x1='{m}' y1='{height - m}' x2='{width - m}' y2='{height - m}' stroke='#999'/>"
            f"<line x1='{m}' y1='{m}' x2='{m}' y2='{height - m}' stroke='#999'/>"
            f"<text x='{width / 2 - 90}' y='{height - 6}' font-size='11'>log10 frequency (share of tokens)</text>"
            f"<text x='{m}' y='{height - m + 14}' font-size='10'>{x0:.2f}</text>"
            f"<text x='{width - m - 24}' y='{height - m + 14}' font-size='10'>{x1:.2f}</text>"
            f"<text x='2' y='{m - 8}' font-size='11'>mean activation (max {y1:.3g})</text>")
    legend = "".join(f"<text x='{width - 110}' y='{m + 14 * j}' font-size='11' fill='{c}'>● {n}</text>"
                     for j, (n, c) in enumerate(CLASS_COLOURS.items()))
    return f"<svg width='{width}' height='{height}' role='img'>{axes}{dots}{legend}</svg>"


def _index_page(infos: dict[int, dict], stats, collected, row_links: dict[str, list[int]], scores,
                interp: dict, title: str) -> str:
    n_live = int(len(stats.live))
    counts: dict[str, int] = {}
    for i in infos.values():
        counts[i["class"]] = counts.get(i["class"], 0) + 1
    trs = []
    for k, i in infos.items():
        trs.append(f"<tr data-id='{k}' data-freq='{i['frequency']:.6g}' data-mean='{i['mean_activation']:.6g}' "
                   f"data-omega='{i['omega'] if i['omega'] is not None else -1e9:.6g}' data-cls='{_esc(i['class'])}' "
                   f"data-label='{_esc(i['label'])}' data-rows='{i['rows_firing']}'>"
                   f"<td><a href='features/{k}.html'>{k}</a></td><td>{i['frequency']:.3%}</td>"
                   f"<td>{i['mean_activation']:.3g}</td><td style='color:{CLASS_COLOURS.get(i['class'], '#555')}'>"
                   f"{_esc(i['class'])}</td><td>{_fmt(i['omega'], 3)}</td><td>{i['rows_firing']}</td>"
                   f"<td>{_esc(i['label'])}</td></tr>")
    links = []
    for name, rows in row_links.items():
        links.append(f"<p>{_esc(name)}: " + " ".join(
            f"<a class=chip href='rows/{r}.html'>row {r} ({_fmt(scores[r], 3)})</a>" for r in rows) + "</p>")
    share = ""
    if interp.get("live"):
        share = (f"<li>live features with a concept precision ≥ {interp['threshold']}: {interp['meeting']} of "
                 f"{interp['live']} ({interp['share']:.0%})</li>")
    body = [f"<h1>{_esc(title)}</h1>",
            f"<ul><li>{stats.n_rows} rows, {stats.n_tokens} tokens ({stats.n_image_tokens} image tokens), shown as "
            f"{_esc(collected.mode)}</li><li>{n_live} live features of {stats.d_sae}, {len(infos)} with a page; their "
            "classes: "
            + ", ".join(f"<span style='color:{CLASS_COLOURS.get(c, '#555')}'>{_esc(c)}</span> {n}"
                        for c, n in sorted(counts.items()))
            + (f" ({UNFITTED}: never among a reference token's top features when ω was fitted, so no class and no ω)"
               if UNFITTED in counts else "") + f"</li>{share}</ul>",
            "<h2>Frequency vs mean activation</h2>", _scatter(infos),
            f"<h2>Rows by {_esc(collected.by)} ({'higher' if collected.higher_is_cleaner else 'lower'} = cleaner)</h2>",
            *links,
            "<h2>Features</h2><p>label contains <input id=q size=14> class <select id=cls><option value=''>any</option>"
            + "".join(f"<option>{_esc(c)}</option>" for c in sorted(counts)) + "</select> frequency ≥ "
            "<input id=minf size=5 value='0'>% · <span id=shown></span> shown · click a header to sort</p>",
            "<table id=ft><thead><tr><th data-key=id data-num=1>feature</th><th data-key=freq data-num=1>frequency"
            "</th><th data-key=mean data-num=1>mean act.</th><th data-key=cls>class</th><th data-key=omega data-num=1>"
            "ω</th><th data-key=rows data-num=1>rows</th><th data-key=label>label</th></tr></thead><tbody>"
            + "".join(trs) + "</tbody></table>"]
    return _page(title, body, INDEX_JS)


# ---------------------------------------------------------------------------------------------- the build
def build_site(model, processor, sae, weights, data, out: str | Path = "site", *, top_k: int = 20, sample: int = 20,
               n_rows: int = 8, by: str | None = None, batch_size: int = 32, max_features: int | None = None,
               config=None, progress: bool = True, title: str = "SAE-V feature browser",
               dataset_name: str = "") -> SiteResult:
    """Write the site for ``sae`` on ``model`` over ``data`` (a ``datasets.Dataset`` or a list of rows) into ``out``.

    ``top_k``: top rows per feature; ``sample``: rows per feature sampled for the quantile bands; ``n_rows``: row
    pages for the lowest- and as many highest-scoring rows by ``by`` (default: the SAE-V method the table
    recommends for the data, computed in the same pass); ``max_features``: only the most frequent live features
    (default all); ``weights``: the SAE's :class:`~saev_curate.curation.crossmodal.CrossModalWeights` (class, ω,
    pairs, read-out)."""
    from saev_curate.curation.crossmodal import CLASS_NAMES
    from saev_curate.inspect.collect import collect
    from saev_curate.inspect.explain import explain
    from saev_curate.inspect.labels import concept_precision, decoder_logits, interpretable_share

    if top_k < 1 or sample < 0 or n_rows < 0:
        raise InputError(f"top_k={top_k}, sample={sample}, n_rows={n_rows}: give top_k >= 1 and the others >= 0")
    weights.check_sae(sae)
    start = time.perf_counter()
    out = Path(out)
    for sub in ("features/img", "rows/img"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    col = collect(model, processor, sae, weights, data, by=by, top_k=top_k, sample=sample, batch_size=batch_size,
                  config=config, progress=progress)
    stats = col.stats
    live = stats.live
    freq, mean, share = stats.frequency(), stats.mean_activation(), stats.image_share()
    if max_features is not None:
        live = live[freq[live].argsort(descending=True)[:max_features]].sort().values
    feats = live.tolist()
    logits = decoder_logits(model, processor, sae, feats)
    concepts = concept_precision(stats)
    interp = interpretable_share(stats) if stats.concepts else {}
    infos: dict[int, dict] = {}
    pair_index = PairIndex(weights.pairs)
    for k in feats:
        w = float(weights.omega[k])
        cls = CLASS_NAMES[int(weights.classes[k])]
        infos[k] = {"class": UNFITTED if cls == "dead" else cls, "omega": None if math.isnan(w) else w,
                    "frequency": float(freq[k]), "mean_activation": float(mean[k]),
                    "max_activation": float(stats.act_max[k]), "rows_firing": int(stats.rows_firing[k]),
                    "image_share": float(share[k]), "concept": concepts.get(k), "logits": logits.get(k),
                    "pairs": pair_index.partners(k)}
        infos[k]["label"] = _feature_label(k, concepts.get(k), logits.get(k))
    ranked = sorted((i for i, s in enumerate(col.scores) if s is not None), key=lambda i: col.scores[i])
    worst, best = (ranked[:n_rows], ranked[::-1][:n_rows]) if col.higher_is_cleaner else \
        (ranked[::-1][:n_rows], ranked[:n_rows])
    chosen_rows = list(dict.fromkeys(worst + best))
    tok = getattr(processor, "tokenizer", processor)
    images = _RowImages(model, processor, data, col.mode)
    it = feats
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(feats, desc="inspect: feature pages", unit="page")
    for k in it:
        _feature_page(k, stats, infos[k], tok, images, out, set(chosen_rows), dataset_name, set(feats))
    from saev_curate.curation.capture import iter_rows

    pages = set(feats)
    for i, row in iter_rows(data, sorted(chosen_rows)):
        exp = explain(row, model, processor, sae, weights, index=i, config=config)
        note = (f"{'among the least clean' if i in worst else 'among the cleanest'} rows by {col.by} "
                f"({'higher' if col.higher_is_cleaner else 'lower'} = cleaner): {_fmt(col.scores[i])}")
        thumbs, boxes = images.get(i)
        (out / "rows" / f"{i}.html").write_text(row_page_html(exp, i, feature_pages=pages, images=thumbs, boxes=boxes,
                                                              img_dir=out / "rows" / "img", rank_note=note))
        (out / "rows" / f"{i}.json").write_text(json.dumps(exp.to_dict(), default=_json_default))
    links = {f"least clean by {col.by} (worst first)": worst, f"cleanest by {col.by}": best}
    index = out / "index.html"
    index.write_text(_index_page(infos, stats, col, links, col.scores, interp, title))
    (out / "summary.json").write_text(json.dumps({"rows": stats.n_rows, "live_features": len(feats),
                                                  "by": col.by, "interpretability": interp,
                                                  "row_pages": chosen_rows}, indent=2, default=_json_default))
    return SiteResult(out, index, feats, chosen_rows, col.by, stats.n_rows, time.perf_counter() - start, interp)
