"""HTML score report: AUC against a brute-force pair count, and a page that renders real content."""

from __future__ import annotations

import itertools
import random

from PIL import Image

from saev_curate.jobs.report import auc, write_score_report


def test_auc_equals_pairwise_brute_force():
    rng = random.Random(0)
    scores = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for _ in range(60)]  # many ties
    labels = [rng.random() < 0.4 for _ in range(60)]
    wins = 0.0
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    for p, n in itertools.product(pos, neg):
        wins += 1.0 if p > n else 0.5 if p == n else 0.0
    assert abs(auc(scores, labels) - wins / (len(pos) * len(neg))) < 1e-12
    assert auc([1, 2, 3], [False, False, False]) != auc([1, 2, 3], [False, False, False])  # nan: no positives


def test_report_page(tmp_path):
    img = Image.new("RGB", (8, 8), (200, 10, 10))
    rows = [{"prompt": f"row {i}", "images": [img], "saev_score": float(i), "matched": i % 2 == 0,
             "saev_error": None} for i in range(10)]
    rows.append({"prompt": "broken", "images": ["/missing.png"], "saev_score": None, "matched": True,
                 "saev_error": "image file not found"})
    page = write_score_report(rows, tmp_path / "r.html", label="matched", extra={"layer": 3}).read_text()
    assert "<svg" in page and "data:image/png;base64" in page
    assert "AUC of saev_score for matched=True vs False: <b>0.400</b>" in page  # evens 0,2,..8 vs odds 1,..9
    assert "image file not found" in page and "10 scored, 1 without a score" in page
    assert page.index("row 9") < page.index("row 0")  # highest first
