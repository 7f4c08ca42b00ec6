"""A self-contained HTML page for scored data: score histogram, label separation, best and worst rows.

No plotting library: the histogram is inline SVG and thumbnails are inline PNGs, so the page opens
anywhere (CI artifacts, a laptop) without a server.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Sequence

_COLORS = ["#3b6fb6", "#d9822b", "#3a9e5c", "#b33a3a", "#7d5ba6", "#8c6d31", "#d45fa0", "#17becf", "#7f7f7f"]


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties count half)."""
    pairs = sorted(zip(scores, positive))
    n_pos = sum(positive)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):  # average ranks over ties
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2
        rank_sum += avg_rank * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _histogram_svg(groups: dict[str, list[float]], bins: int = 30, width: int = 760, height: int = 220,
                   cut: float | None = None, cut_label: str = "cut") -> str:
    values = [v for vs in groups.values() for v in vs]
    if not values:
        return "<p>No scored rows.</p>"
    lo, hi = min(values), max(values)
    if hi == lo:
        hi = lo + 1.0
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    counts = {}
    for name, vs in groups.items():
        c = [0] * bins
        for v in vs:
            c[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
        counts[name] = c
    top = max(max(c) for c in counts.values()) or 1
    pad, bar_w = 30, (width - 40) / bins
    parts = [f'<svg width="{width}" height="{height + 40}" xmlns="http://www.w3.org/2000/svg" '
             'font-family="sans-serif" font-size="11">']
    n_groups = len(counts)
    for g, (name, c) in enumerate(counts.items()):
        color = _COLORS[g % len(_COLORS)]
        for i, n in enumerate(c):
            h = height * n / top
            x = pad + i * bar_w + g * bar_w / n_groups
            parts.append(f'<rect x="{x:.1f}" y="{height - h + 5:.1f}" width="{bar_w / n_groups:.1f}" '
                         f'height="{h:.1f}" fill="{color}" opacity="0.85"><title>{html.escape(name)}: {n} rows in '
                         f'[{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>')
        parts.append(f'<rect x="{width - 220}" y="{10 + 16 * g}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{width - 205}" y="{19 + 16 * g}">{html.escape(name)} ({len(groups[name])})</text>')
    parts.append(f'<line x1="{pad}" y1="{height + 5}" x2="{width - 10}" y2="{height + 5}" stroke="#444"/>')
    for i in range(0, bins + 1, max(1, bins // 6)):
        x = pad + i * bar_w
        parts.append(f'<text x="{x:.1f}" y="{height + 22}" text-anchor="middle">{edges[i]:.3g}</text>')
    if cut is not None and lo <= cut <= hi:  # a selection's threshold: rows at or right of it are kept
        x = pad + (cut - lo) / (hi - lo) * bins * bar_w
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height + 5}" stroke="#000" stroke-width="2" '
                     f'stroke-dasharray="5,3"/><text x="{x + 4:.1f}" y="12">{html.escape(cut_label)}</text>')
    parts.append(f'<text x="{pad}" y="{height + 38}">max bar = {top} rows</text></svg>')
    return "".join(parts)


def _thumbnail(image: Any, size: int = 64) -> str:
    try:
        from saev_curate.vlm.rows import load_image

        img = load_image(image).copy()
        img.thumbnail((size, size))
        if max(img.size) < size:  # upscale tiny images (digits) so they can be seen
            scale = size // max(img.size)
            img = img.resize((img.size[0] * scale, img.size[1] * scale), resample=0)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
    except Exception as exc:  # a broken image is shown as such, never hides the row
        return f"<em>image unreadable: {html.escape(str(exc))[:80]}</em>"


def _plain(value: Any) -> str:
    """The words of a string, a list of strings, or conversational messages (image parts dropped)."""
    if isinstance(value, dict):
        if "content" in value:
            return _plain(value["content"])
        return str(value.get("text") or "") if value.get("type", "text") == "text" else ""
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (_plain(v) for v in value) if t)
    return "" if value is None else str(value)


def _row_text(row: dict[str, Any]) -> str:
    """The row's prompt, then its chosen / rejected responses when it has them."""
    text = next((_plain(row[k]) for k in ("prompt", "question", "messages", "texts", "completion")
                 if row.get(k) is not None), "")
    for key in ("chosen", "rejected"):
        if row.get(key) is not None:
            text += f" | {key}: {_plain(row[key])}"
    return text[:300]


def _auroc_html(auroc: dict[str, dict[str, float]], highlight: str | None) -> str:
    """Methods x defect kinds, best per kind in bold, the ``highlight`` method's row shaded."""
    kinds = list(next(iter(auroc.values())))
    best = {k: max((v[k] for v in auroc.values() if not math.isnan(v[k])), default=float("nan")) for k in kinds}
    out = ["<h2>Detection: AUROC of clean rows against each defect kind</h2><p>Higher = the method ranks clean rows "
           "above rows with that defect (0.5 = chance). Best per kind in bold.</p><table><tr><th>method</th>"
           + "".join(f"<th>{html.escape(k.replace('_', ' '))}</th>" for k in kinds) + "</tr>"]
    for name, row in auroc.items():
        shade = ' style="background:#eef3fb"' if name == highlight else ""
        cells = "".join(("<td><b>{:.3f}</b></td>" if row[k] == best[k] else "<td>{:.3f}</td>").format(row[k])
                        for k in kinds)
        out.append(f"<tr{shade}><td>{html.escape(name)}</td>{cells}</tr>")
    return "".join(out) + "</table>"


def write_score_report(rows: Sequence[dict[str, Any]], path: str | Path, *, by: str = "saev_score",
                       label: str | None = None, title: str = "SAE-V scores", n_examples: int = 8,
                       extra: dict[str, Any] | None = None, auroc: dict[str, dict[str, float]] | None = None,
                       highlight: str | None = None, cut: float | None = None, cut_label: str = "cut",
                       sections: Sequence[str] = ()) -> Path:
    """Write an HTML page about column `by` of scored `rows` (a list of dicts or a `datasets.Dataset`).

    ``auroc``: an optional ``{method: {defect kind: AUROC}}`` table shown first (``highlight`` shades one row).
    ``cut``: a selection threshold marked on the histogram (labelled ``cut_label``). ``sections``: HTML blocks
    placed first, right under the title (the pipeline's "what selection bought").
    """
    rows = [dict(r) for r in rows]
    scored = [r for r in rows if r.get(by) is not None and not (isinstance(r[by], float) and math.isnan(r[by]))]
    errors = [r for r in rows if r not in scored]
    groups: dict[str, list[float]] = {}
    for r in scored:
        groups.setdefault(str(r.get(label)) if label else "all rows", []).append(float(r[by]))
    summary = [f"<li>{len(rows)} rows, {len(scored)} scored, {len(errors)} without a score</li>"]
    if label and len(groups) == 2:
        names = sorted(groups)
        pos = [float(v) for v in groups[names[1]]]
        neg = [float(v) for v in groups[names[0]]]
        value = auc(pos + neg, [True] * len(pos) + [False] * len(neg))
        summary.append(f"<li>AUC of {html.escape(by)} for {html.escape(label)}={html.escape(names[1])} vs "
                       f"{html.escape(names[0])}: <b>{value:.3f}</b> (0.5 = no separation)</li>")
    for name, vs in groups.items():
        mean = sum(vs) / len(vs)
        summary.append(f"<li>{html.escape(name)}: mean {mean:.4g}, min {min(vs):.4g}, max {max(vs):.4g}</li>")
    for key, value in (extra or {}).items():
        summary.append(f"<li>{html.escape(str(key))}: {html.escape(str(value))}</li>")

    def table(items: list[dict[str, Any]], heading: str) -> str:
        out = [f"<h2>{heading}</h2><table><tr><th>{html.escape(by)}</th><th>image</th><th>text</th>"
               + (f"<th>{html.escape(label)}</th>" if label else "") + "</tr>"]
        for r in items:
            images = r.get("images") if r.get("images") is not None else [r.get("image")]
            img = _thumbnail(images[0]) if images and images[0] is not None else ""
            value = f"{float(r[by]):.4g}" if r.get(by) is not None else html.escape(str(r.get("saev_error")))
            out.append(f"<tr><td>{value}"
                       f"</td><td>{img}</td><td>{html.escape(_row_text(r))}</td>"
                       + (f"<td>{html.escape(str(r.get(label)))}</td>" if label else "") + "</tr>")
        return "".join(out) + "</table>"

    ranked = sorted(scored, key=lambda r: float(r[by]), reverse=True)
    body = [f"<h1>{html.escape(title)}</h1>", *sections, f"<ul>{''.join(summary)}</ul>",
            _auroc_html(auroc, highlight) if auroc else "",
            f"<h2>Distribution of {html.escape(by)}" + (f" by {html.escape(label)}" if label else "") + "</h2>",
            _histogram_svg(groups, cut=cut, cut_label=cut_label),
            table(ranked[:n_examples], f"Highest {html.escape(by)}"),
            table(ranked[-n_examples:][::-1], f"Lowest {html.escape(by)}")]
    if errors:
        body.append(table(errors[:n_examples], "Rows that could not be scored"))
    return _write_page(path, title, body)


def _write_page(path: str | Path, title: str, body: Sequence[str]) -> Path:
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}img{image-rendering:pixelated}"
            "</style></head><body>" + "".join(body) + "</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def write_check_report(result, scored, path: str | Path, *, n_histograms: int = 4) -> Path:
    """The page of a check (:class:`~saev_curate.curation.check.CheckResult` and its scored rows): what was planted,
    AUROC per method x kind with 95% intervals, the recommendation per data shape, the score histograms of the
    recommended methods and the paper's, the planted rows each of them misses worst, and the cost per row."""
    from saev_curate.curation.methods import METHODS

    rows = scored if isinstance(scored, list) else list(scored)
    kinds = list(result.kinds)
    rec = {m: [s for s, r in result.recommended.items() if r == m] for m in result.recommended.values()}
    body = [f"<h1>Which score works on this model and data</h1><ul>"
            f"<li>{result.n_rows} sampled {html.escape(result.shape.replace('_', '-'))} rows (clean) and "
            f"{sum(k['n'] for k in result.kinds.values())} planted copies; {len(result.rows_failed)} sampled rows "
            f"could not be read{': ' + html.escape(result.rows_failed[0]['reason']) if result.rows_failed else ''}"
            f"</li><li>recommended: " + ", ".join(
                f"<b>{html.escape(m)}</b> for {html.escape(s.replace('_', '-'))} rows"
                for s, m in result.recommended.items()) + f"</li><li>took {result.seconds:.0f} s</li></ul>",
            "<h2>What was planted</h2><table><tr><th>kind</th><th>copies</th><th>what it does to a row</th></tr>"]
    body += [f"<tr><td>{html.escape(k)}</td><td>{v['n']}</td><td>{html.escape(v['description'])}</td></tr>"
             for k, v in result.kinds.items()]
    body.append("</table><h2>AUROC of clean rows against each planted kind (95% bootstrap interval)</h2><p>1 = "
                "every clean row outranks every planted one, 0.5 = chance; a row a method cannot score counts as its "
                "lowest. Best per kind in bold; recommended methods shaded.</p><table><tr><th>method</th>"
                "<th>family</th>" + "".join(f"<th>{html.escape(k.replace('_', ' '))}</th>" for k in kinds)
                + "<th>ms / row</th></tr>")
    best = {k: max((a[k]["mean"] for a in result.auroc.values() if a[k]["mean"] == a[k]["mean"]), default=None)
            for k in kinds}
    for m, a in result.auroc.items():
        shade = ' style="background:#eef3fb"' if m in rec else ""
        cells = []
        for k in kinds:
            v = a[k]
            text = "n/a" if v["mean"] != v["mean"] else f"{v['mean']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"
            cells.append(f"<td>{'<b>' + text + '</b>' if v['mean'] == best[k] else text}</td>")
        cost = result.cost_s_per_row.get(m)
        body.append(f"<tr{shade}><td>{html.escape(m)}</td><td>{METHODS[m].family}</td>{''.join(cells)}"
                    f"<td>{'' if cost is None else f'{1000 * cost:.1f}'}</td></tr>")
    body.append("</table>")
    shown = list(dict.fromkeys([*rec, "saev_score"]))[:n_histograms]
    for m in shown:
        if m not in result.auroc:
            continue
        col, sign = METHODS[m].column, 1.0 if METHODS[m].higher_is_cleaner else -1.0
        groups: dict[str, list[float]] = {}
        for r in rows:
            if r.get(col) is not None and r[col] == r[col]:
                groups.setdefault(r["check_kind"], []).append(sign * float(r[col]))
        why = f" (recommended for {', '.join(rec[m])} rows)" if m in rec else " (the paper's score)"
        shown_groups = {k: groups[k] for k in ["clean", *kinds] if k in groups}
        every = sorted(v for vs in shown_groups.values() for v in vs)
        if len(every) > 20:  # a few far-out rows (a perplexity of 1e6) would squeeze everything into one bar
            lo, hi = every[len(every) // 100], every[-1 - len(every) // 100]
            shown_groups = {k: [min(max(v, lo), hi) for v in vs] for k, vs in shown_groups.items()}
        body.append(f"<h2>{html.escape(m)}{html.escape(why)}: higher = cleaner</h2><p>Rows beyond the 1st and 99th "
                    "percentiles are drawn in the end bars.</p>" + _histogram_svg(shown_groups))
        body.append("<p>The planted row of each kind this method ranks cleanest (its worst miss):</p><table><tr>"
                    "<th>kind</th><th>score</th><th>image</th><th>text</th></tr>")
        for k, i in result.worst_misses.get(m, {}).items():
            r = rows[i]
            images = r.get("images") or [None]
            word = f" [{r['check_word']}]" if r.get("check_word") else ""
            body.append(f"<tr><td>{html.escape(k)}</td><td>{r.get(col)!s:.8}</td><td>"
                        f"{_thumbnail(images[0]) if images[0] is not None else ''}</td>"
                        f"<td>{html.escape(_row_text(r) + word)}</td></tr>")
        body.append("</table>")
    return _write_page(path, "saev-curate check", body)
