"""Alignment data over the testbed's held-out images, with tagged defects no method reads.

Rows are TRL preference rows (``prompt``, ``chosen``, ``rejected`` as conversational messages,
``images``) or SFT rows (``messages`` + ``images``), plus label columns: ``defect`` (``"none"`` or a
kind below), ``task`` (``"describe"`` or ``"qa"``), ``qtype``, ``image_kind``, ``image_source`` (which real
image it is), ``concept`` (what the image shows, :meth:`~saev_curate.testbed.images.Concept.to_dict`) and
``defect_words`` (for ``hallucinated_detail``: the indices of the chosen response's whitespace-separated words
that state a false fact; else empty).  A clean row either asks for a
description (``chosen``: every true fact; ``rejected``: the same description with one or two facts false,
as RLAIF-V / POVID build their pairs) or asks a question that fits its image (``chosen``: the right
one-word answer; ``rejected``: a wrong one).  Defect kinds:

* ``hallucinated_detail``: a description whose chosen answer states one or two false facts (a count,
  colour, shape, position, size, digit, parity, face or brightness) among true ones; the rejected one is
  correct;
* ``omitted_detail``: a control that should *not* be flagged: the chosen description leaves out one or two
  of the image's facts but states nothing false;

* ``image_prompt_mismatch``: a clean row's image with another clean row's prompt (and answers) that
  talks about what this image does not show (a digit question on shapes, a shape question on a face,
  ...): image and prompt are each in-distribution, only their pairing is wrong;
* ``chosen_contradicts_image``: the preference is flipped (``chosen`` is the wrong answer);
* ``corrupted_image``: the image replaced by noise, a flat colour, or mostly occluded;
* ``off_topic_prompt``: a question that needs no image ("what comes after three ?") beside an image.

The defect rate and mix are parameters; rows are shuffled; deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from saev_curate.core.errors import InputError
from saev_curate.testbed import images as timg
from saev_curate.testbed import language as lang

DEFECT_KINDS = ("hallucinated_detail", "omitted_detail", "image_prompt_mismatch", "chosen_contradicts_image",
                "corrupted_image", "off_topic_prompt")
#: the default mix: hallucinated details, the defect that dominates real preference data, twice as often
DEFAULT_MIX = {k: 2.0 if k == "hallucinated_detail" else 1.0 for k in DEFECT_KINDS}
NEUTRAL_PROMPT = "what is shown ?"  # the image-only control's fixed text: fits every image


def _msg(role: str, text: str, image: bool = False) -> list[dict]:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return [{"role": role, "content": content}]


def _row(img, q: dict, defect: str, c, chosen: str | None = None, rejected: str | None = None,
         defect_words: list[int] | None = None) -> dict:
    return {"prompt": _msg("user", q["question"], image=True),
            "chosen": _msg("assistant", chosen or q["answer"]),
            "rejected": _msg("assistant", rejected or q["wrong"]),
            "images": [img], "defect": defect, "task": "describe" if q["qtype"] == "describe" else "qa",
            "qtype": q["qtype"], "image_kind": c.kind, "image_source": c.source,
            "defect_words": list(defect_words or []), "concept": c.to_dict()}


def hallucinated(c, rng: np.random.RandomState, n_false: int | None = None) -> tuple[str, list[int]]:
    """The full description of ``c`` with one or two (``n_false``) facts given false values, and the indices of
    the words that state them."""
    facts = lang.true_facts(c)
    n_false = min(len(facts), n_false if n_false is not None else 1 + rng.randint(2))
    names = [f for f in lang.FACT_ORDER if f in facts]
    wrong = [names[i] for i in sorted(rng.choice(len(names), n_false, replace=False))]
    words, tags = lang.render_description({**facts, **{f: lang.false_value(f, facts[f], rng) for f in wrong}})
    return " ".join(words), [i for i, t in enumerate(tags) if t in wrong]


def omitted(c, rng: np.random.RandomState) -> str | None:
    """A true description of ``c`` that leaves out one or two of its sentences after the first (None when it has
    only one sentence)."""
    facts = lang.true_facts(c)
    optional = [f for f in ("parity", "prev", "position", "size", "brightness") if f in facts]
    if not optional:
        return None
    drop = set(rng.choice(optional, min(len(optional), 1 + rng.randint(2)), replace=False).tolist())
    return " ".join(lang.render_description({f: v for f, v in facts.items() if f not in drop})[0])


def _describe_question(c, rng: np.random.RandomState) -> dict:
    return {"qtype": "describe", "question": lang.DESCRIBE_PROMPTS[rng.randint(len(lang.DESCRIBE_PROMPTS))],
            "answer": lang.describe(c), "wrong": hallucinated(c, rng)[0]}


def defect_rows(n: int = 1000, *, defect_rate: float = 0.3, mix: dict[str, float] | None = None,
                split: str = "test", seed: int = 0, fmt: str = "preference",
                qtypes: tuple[str, ...] | None = None, describe_share: float = 0.5) -> list[dict]:
    """``n`` rows of which ``defect_rate`` (rounded) carry a defect, kinds drawn by ``mix`` (default
    :data:`DEFAULT_MIX`); ``describe_share`` of the clean rows (and of the corrupted images) ask for a
    description, the rest a question.

    ``split="test"`` uses held-out images (what benchmarks and the main job use); ``fmt="sft"``
    gives ``messages`` rows (user prompt + the chosen answer) instead of preference rows.
    ``qtypes`` limits the questions to these image question types (alignment data aimed at what a
    model lacks); images that none of them fits are skipped, and mismatched prompts are drawn from them too.
    """
    if not 0 <= defect_rate <= 1:
        raise InputError(f"defect_rate={defect_rate}: give a share between 0 and 1")
    if fmt not in ("preference", "sft"):
        raise InputError(f"fmt={fmt!r}; use 'preference' or 'sft'")
    if qtypes is not None:
        bad = set(qtypes) - set(lang.QTYPES[:-1])
        if bad or not qtypes:
            raise InputError(f"qtypes={qtypes!r}: give image question types among {', '.join(lang.QTYPES[:-1])}")
    if not 0 <= describe_share <= 1:
        raise InputError(f"describe_share={describe_share}: give a share between 0 and 1")
    mix = mix or DEFAULT_MIX
    unknown = set(mix) - set(DEFECT_KINDS)
    if unknown:
        raise InputError(f"unknown defect kinds {sorted(unknown)}; use {', '.join(DEFECT_KINDS)}")
    rng = np.random.RandomState([seed, 11])
    n_bad = int(round(n * defect_rate))
    kinds = list(mix)
    p = np.asarray([mix[k] for k in kinds], dtype=float)
    labels = ["none"] * (n - n_bad) + [kinds[i] for i in rng.choice(len(kinds), size=n_bad, p=p / p.sum())]
    pool = timg.sample_images(split, 4 * n + 10 if qtypes else 2 * n + 10, seed=seed)
    if qtypes:
        pool = [it for it in pool if any(lang.fits(t, it[1]) for t in qtypes)]
    donor_types = {k: [t for t in v if qtypes is None or t in qtypes] for k, v in lang.KIND_QTYPES.items()}
    # rows whose prompt presupposes content
    donors = [it for it in pool[n:] if donor_types.get(it[1].kind)]
    rows = []
    spare = iter(it for it in pool[n:] if len(lang.true_facts(it[1])) > 2)  # images whose description can omit
    for i, defect in enumerate(labels):
        img, c = pool[i]
        short = omitted(c, rng) if defect == "omitted_detail" else None
        while defect == "omitted_detail" and short is None:
            img, c = next(spare)
            short = omitted(c, rng)
        if defect in ("hallucinated_detail", "omitted_detail") or (
                defect in ("none", "corrupted_image") and rng.rand() < describe_share):
            q = _describe_question(c, rng)
            if defect == "hallucinated_detail":
                wrong, at = hallucinated(c, rng)
                rows.append(_row(img, q, defect, c, chosen=wrong, rejected=q["answer"], defect_words=at))
            elif defect == "omitted_detail":
                rows.append(_row(img, q, defect, c, chosen=short))
            elif defect == "corrupted_image":
                rows.append(_row(timg.corrupt(img, ("noise", "blank", "occlude")[rng.randint(3)], rng), q, defect, c))
            else:
                rows.append(_row(img, q, defect, c))
            continue
        if defect == "image_prompt_mismatch":
            if not any(d[1].kind != c.kind for d in donors):
                raise InputError(f"qtypes={qtypes!r} fit one image kind only: an image/prompt mismatch needs a "
                                 "question about another kind; add such a question type or drop this defect kind")
            d_img, dc = next(d for d in (donors[(i * 7 + j) % len(donors)] for j in range(len(donors)))
                             if d[1].kind != c.kind)
            q = lang.question(dc, rng, donor_types[dc.kind][rng.randint(len(donor_types[dc.kind]))])
            rows.append(_row(img, q, defect, c))
            continue
        q = lang.question(c, rng, None if qtypes is None else
                          str(rng.choice([t for t in qtypes if lang.fits(t, c)])))
        if defect == "none":
            rows.append(_row(img, q, defect, c))
        elif defect == "chosen_contradicts_image":
            rows.append(_row(img, q, defect, c, chosen=q["wrong"], rejected=q["answer"]))
        elif defect == "corrupted_image":
            how = ("noise", "blank", "occlude")[rng.randint(3)]
            rows.append(_row(timg.corrupt(img, how, rng), q, defect, c))
        else:
            rows.append(_row(img, lang.text_only_question(rng), defect, c))
    order = rng.permutation(n)
    rows = [rows[i] for i in order]
    if fmt == "sft":
        rows = [{"messages": r["prompt"] + r["chosen"], **{k: v for k, v in r.items() if k not in ("prompt", "chosen",
                                                                                                   "rejected")}}
                for r in rows]
    return rows


#: the alignment study's and the pipeline's defects: hallucinated details half of them, the four one-word kinds the
#: rest (``omitted_detail`` is a control that states nothing false, not a defect to filter)
ALIGNMENT_MIX = {"hallucinated_detail": 4.0, "image_prompt_mismatch": 1.0, "chosen_contradicts_image": 1.0,
                 "corrupted_image": 1.0, "off_topic_prompt": 1.0}
ALIGNMENT_DESCRIBE_SHARE = 0.8


def alignment_rows(n: int = 400, *, defect_rate: float = 0.3, seed: int = 0, split: str = "dev") -> list[dict]:
    """Long-answer preference data for DPO (the alignment study's and the pipeline's): 80% of clean rows are
    description pairs, the rest one-word questions; defects drawn by :data:`ALIGNMENT_MIX`."""
    return defect_rows(n, defect_rate=defect_rate, mix=ALIGNMENT_MIX, split=split, seed=seed,
                       describe_share=ALIGNMENT_DESCRIBE_SHARE)


def neutral_rows(rows: list[dict]) -> list[dict]:
    """The image-only control: each row's image with the fixed neutral prompt (what it scores is image
    typicality, whatever the row's text says)."""
    return [{"prompt": _msg("user", NEUTRAL_PROMPT, image=True), "chosen": _msg("assistant", "yes"),
             "rejected": _msg("assistant", "no"), "images": r["images"]} for r in rows]
