"""The site opened as a person would: headless Chromium on the index, a feature page and a row page; no console
errors, and each page shows what it should."""

from __future__ import annotations

import re


def test_site_pages_in_a_browser(small_site, tmp_path):
    from browser import screenshot

    out, r = small_site["out"], small_site["result"]
    k, i = r.features[0], r.rows[0]
    pages = {"index": out / "index.html", "feature": out / "features" / f"{k}.html", "row": out / "rows" / f"{i}.html"}
    for name, page in pages.items():
        assert screenshot(page, tmp_path / f"{name}.png", height=1600) == [], name
        html = page.read_text()
        assert "http://" not in html and "https://" not in html  # self-contained: nothing from the network
        for src in re.findall(r"src='([^']+)'", html):
            assert (page.parent / src).is_file(), src  # every image it shows is there
        for href in re.findall(r"href='([^']+)'", html):
            assert (page.parent / href).is_file(), href  # every link leads to a page
    index = pages["index"].read_text()
    assert "Frequency vs mean activation" in index and "<svg" in index and "<script>" in index
    assert all(f"features/{f}.html" in index for f in r.features) and f"rows/{i}.html" in index
    feature = pages["feature"].read_text()
    for part in ("Activation histogram", "Top logits", "Co-occurring features", "cross-modal pairs", "Quantile bands"):
        assert part in feature, part
    assert "loading=lazy" in feature
    row = pages["row"].read_text()
    for part in ("Scores in the recommended columns", "The token the score blames", "Features that drove it",
                 "votes"):
        assert part in row, part
