"""The site on a tiny model against independent expectations: frequencies and top rows by a direct capture, decoder
logits by hand, the ranking column against the scorer's, the Neuronpedia fields, explain(row) as the page shows it;
and `saev-curate inspect` on a tiny Qwen2-VL."""

from __future__ import annotations

import json

import pytest
import torch

from saev_curate.curation.capture import capture_rows


@torch.no_grad()
def direct_codes(s):
    """Every row captured in one batch (chosen mode, as the site shows preference rows), its SAE codes."""
    acts, kept, errors = capture_rows(s["model"], s["processor"], s["rows"], 2, mode="chosen")
    valid = acts.image_mask | acts.text_mask
    z = s["sae"].encode(acts.resid).float() * valid[:, :, None]
    return z, valid, kept, errors


def test_site_layout_and_neuronpedia_fields(small_site):
    out, r = small_site["out"], small_site["result"]
    assert (out / "index.html").is_file() and len(r.features) == 6 and len(r.rows) == 4
    for k in r.features:
        doc = json.loads((out / "features" / f"{k}.json").read_text())
        for key in ("pos_str", "pos_values", "neg_str", "neg_values", "frac_nonzero", "freq_hist_data_bar_heights",
                    "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "n_prompts_total", "activations"):
            assert key in doc, key
        assert doc["feature_index"] == k and (out / "features" / f"{k}.html").is_file()
        for a in doc["activations"]:
            assert {"bin_min", "bin_max", "bin_contains", "tokens", "values", "maxValue"} <= set(a)
            assert len(a["tokens"]) == len(a["values"]) and a["maxValue"] == pytest.approx(max(a["values"]))
            assert all((out / "features" / p).is_file() for p in a["images"])
    for i in r.rows:
        assert (out / "rows" / f"{i}.html").is_file()


def test_frequency_histogram_and_top_row_by_hand(small_site):
    out = small_site["out"]
    z, valid, kept, errors = direct_codes(small_site)
    assert errors[3] is not None  # the row without an image is skipped, not counted
    for k in small_site["result"].features:
        doc = json.loads((out / "features" / f"{k}.json").read_text())
        fired = z[:, :, k][valid]
        assert doc["frac_nonzero"] == pytest.approx(float((fired > 0).sum()) / int(valid.sum()))
        assert sum(doc["freq_hist_data_bar_heights"]) == int((fired > 0).sum())
        row_max = z[:, :, k].amax(1)
        top = [a for a in doc["activations"] if a["bin_min"] == -1]
        assert top[0]["maxValue"] == pytest.approx(float(row_max.max()), rel=1e-5)
        assert top[0]["row"] == kept[int(row_max.argmax())]
        assert [a["maxValue"] for a in top] == sorted((a["maxValue"] for a in top), reverse=True)
        assert doc["n_prompts_total"] == len(kept)


def test_top_logits_by_hand(small_site):
    model, sae, tok = small_site["model"], small_site["sae"], small_site["processor"].tokenizer
    k = small_site["result"].features[0]
    norm = model.get_decoder().norm.weight.detach()
    logits = (sae.W_dec[k].detach() * norm) @ model.get_output_embeddings().weight.detach().T
    want = tok.convert_ids_to_tokens(logits.topk(10).indices.tolist())
    doc = json.loads((small_site["out"] / "features" / f"{k}.json").read_text())
    assert doc["pos_str"] == want and doc["pos_values"] == pytest.approx(logits.topk(10).values.tolist(), rel=1e-4)
    assert doc["neg_values"][0] == pytest.approx(float(logits.min()), rel=1e-4)


def test_rows_are_ranked_by_the_scorers_column(small_site):
    from saev_curate.curation.scorers import SaevScorer
    from saev_curate.inspect.collect import collect

    s = small_site
    col = collect(s["model"], s["processor"], s["sae"], s["weights"], s["rows"], batch_size=5, progress=False)
    assert col.by == "saev_token_readout_min_chosen" and col.mode == "chosen"
    scorer = SaevScorer(s["model"], s["processor"], s["sae"], s["weights"])
    want = scorer(s["rows"])["saev_token_readout_min_chosen"]
    for got, w in zip(col.scores, want):
        assert (got is None and w is None) or got == pytest.approx(w, rel=1e-5, abs=1e-6)
    lowest = min((i for i, v in enumerate(want) if v is not None), key=lambda i: want[i])
    assert lowest in s["result"].rows


def test_explain_returns_what_the_row_page_shows(small_site):
    from saev_curate import explain

    s = small_site
    i = s["result"].rows[0]
    exp = explain(s["rows"][i], s["model"], s["processor"], s["sae"], s["weights"], index=i)
    from saev_curate.curation.methods import RECOMMENDED, RECOMMENDED_SAEV

    assert set(exp.scores) == {RECOMMENDED["preference"], RECOMMENDED_SAEV["preference"]}  # the table's two choices
    assert all(v is not None for v in exp.scores.values())
    assert exp.blame is not None and exp.votes
    # the votes are the features firing (> delta = 1) just before the blamed token, as a direct capture says
    acts, _, _ = capture_rows(s["model"], s["processor"], [s["rows"][i]], 2, mode="chosen")
    z = s["sae"].encode(acts.resid[0][acts.attention_mask[0].bool()]).float().detach()
    firing = set((z[exp.blame["position"] - 1] > 1.0).nonzero().flatten().tolist())
    assert {v["feature"] for v in exp.votes} <= firing and len(exp.votes) == min(12, len(firing))
    for f, vals in exp.values.items():
        assert vals == pytest.approx(z[:, f].tolist(), rel=1e-4, abs=1e-5)
    assert len(exp.boxes) == sum(exp.is_image) and exp.heatmap(next(iter(exp.values))).shape[::-1] == \
        exp.image_sizes[0]
    page = (s["out"] / "rows" / f"{i}.html").read_text()
    assert all(f"feature {f}" in page or f">{f}</a></b>" in page for f in exp.values)
    assert exp.blame["text"] in page and "response_perplexity" in page
    assert json.loads(json.dumps(exp.to_dict()))["blame"]["token"] == exp.blame["token"]
    labelled = dict(s["rows"][i], defect="hallucinated_detail")
    assert explain(labelled, s["model"], s["processor"], s["sae"], s["weights"]).labels == {
        "defect": "hallucinated_detail"}


@pytest.fixture(scope="module")
def qwen_site(tmp_path_factory):
    from scoring_rows import save_qwen_parts

    from saev_curate.cli import main

    root = save_qwen_parts(tmp_path_factory.mktemp("qwen_inspect"), 10)
    rc = main(["inspect", "--model", str(root / "model"), "--sae", str(root / "sae"), "--data", str(root / "data"),
               "--out", str(root / "site"), "--max-features", "4", "--top-k", "3", "--sample", "3",
               "--row-pages", "1", "--batch-size", "4"])
    assert rc == 0
    return root


def test_inspect_cli_on_a_tiny_qwen2_vl(qwen_site):
    site = qwen_site / "site"
    assert (site / "index.html").is_file() and (site / "weights").is_dir()
    docs = [json.loads(p.read_text()) for p in (site / "features").glob("*.json")]
    assert len(docs) == 4
    # the heat maps: one PNG per example image, drawn where Qwen2-VL's merged patches are
    pngs = [p for d in docs for a in d["activations"] for p in a["images"]]
    assert pngs and all((site / "features" / p).is_file() for p in pngs)
    assert len(list((site / "rows").glob("*.html"))) == 2
    summary = json.loads((site / "summary.json").read_text())
    assert summary["rows"] == 9  # row 3 has no image


def test_inspect_cli_names_what_is_missing(tmp_path, capsys):
    from saev_curate.cli import main

    assert main(["inspect", "--model", str(tmp_path), "--out", str(tmp_path / "s")]) == 1
    assert "--sae" in capsys.readouterr().err
    assert main(["inspect", "--model", str(tmp_path), "--sae", str(tmp_path), "--out", str(tmp_path / "s")]) == 1
    assert "--data" in capsys.readouterr().err


def test_a_live_feature_never_recorded_by_the_fit_reads_unfitted_not_dead(small_site, tmp_path):
    """ω's class "dead" means the fit never recorded the feature; one that fires on the browsed rows gets a page, and
    the site calls it "unfitted" (with the reason on the index), never "dead" beside "live"."""
    import copy

    from saev_curate.curation.crossmodal import CLASS_NAMES
    from saev_curate.inspect.site import build_site

    s = small_site
    page = s["result"].features[0]
    weights = copy.copy(s["weights"])
    weights.classes = weights.classes.clone()
    weights.classes[page] = CLASS_NAMES.index("dead")
    r = build_site(s["model"], s["processor"], s["sae"], weights, s["rows"], tmp_path, top_k=4, sample=6, n_rows=1,
                   max_features=6, batch_size=5, progress=False)
    assert page in r.features
    doc = json.loads((tmp_path / "features" / f"{page}.json").read_text())
    assert doc["saev"]["class"] == "unfitted"
    index = (tmp_path / "index.html").read_text()
    assert "unfitted: never among a reference token's top features" in index
    assert not any(json.loads((tmp_path / "features" / f"{k}.json").read_text())["saev"]["class"] == "dead"
                   for k in r.features)
