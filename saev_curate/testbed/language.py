"""The testbed's closed language: captions, interleaved facts, questions with answers, a word tokenizer.

The language names everything the images show (digits, shapes, colours, counts, faces, photos), so
the model's image tokens must come to speak it.  Three kinds of text train the model, like LLaVA:

* **captions** (varied: "a handwritten seven .", "there are three red circles .");
* **interleaved facts** where the image stands where a word would ("the number <image> is odd ."
  beside "the number seven is odd ."): an image and the word for it must lead to the same
  continuations, so their representations meet (OBELICS-style documents do this at scale);
* **instructions**: questions with one-word answers ("what digit is this ?" -> "seven", "is this a
  seven ?" -> "yes"/"no", "how many shapes are there ?", "what colour are the shapes ?", "is there a
  face ?"), the same questions answered in a sentence ("... answer in a sentence ." -> "the digit is
  seven ."), image-free questions ("what comes after three ?") used for off-topic prompts, and
  **descriptions** ("describe the image ." -> "three red circles . they are on the left . they are
  small ."): every fact the image's concept record knows, one short sentence each, in a fixed order.

Every question comes with its correct answer and a wrong one (the preference pair), and a
``qtype`` naming its question type, so accuracy can be reported per type.  Because the language is
closed, every fact a description states can be parsed back (:func:`parse_facts`) and checked against
the concept record (:func:`fact_is_true`): the ground truth of CHAIR-style hallucination rates and of
the hallucinated-detail defects, whose false words are known (:func:`render_description` tags them).
"""

from __future__ import annotations

import re

import numpy as np

from saev_curate.core.errors import InputError
from saev_curate.testbed.images import BRIGHTNESS, COLOURS, MAX_COUNT, SHAPES, SIDES, SIZES, Concept

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_TOKEN = "<image>"
SPECIAL = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN)
# No default system prompt: its 9 tokens were a quarter of every instruction sequence, paid in the build,
# in scoring and in every DPO step (a row may still bring a system turn of its own).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
KIND_WORD = {"digit": "digit", "scene": "shapes", "face": "face", "photo": "photo"}
#: question types that presuppose what the image shows (used to build image/prompt mismatches)
KIND_QTYPES = {"digit": ("digit_identity", "digit_claim", "digit_parity"),
               "scene": ("count", "colour", "shape", "scene_claim")}
QTYPES = ("digit_identity", "digit_claim", "digit_parity", "count", "colour", "shape", "scene_claim",
          "face", "kind", "text_only")
SENTENCE_SUFFIX = " answer in a sentence ."
DESCRIBE_PROMPTS = ("describe the image .", "what do you see ?", "describe this picture .")
#: the facts a description states, in its order; ``prev`` is the number before the digit
FACT_ORDER = ("digit", "parity", "prev", "count", "colour", "shape", "position", "size", "face", "brightness")


def _n(k: int) -> str:
    return NUMBERS[k]


def _shapes(c: Concept) -> str:
    return c.shape if c.count == 1 else PLURAL[c.shape]


def caption(c: Concept, rng: np.random.RandomState) -> str:
    """A varied caption naming what ``c`` shows."""
    if c.kind == "digit":
        d = _n(c.digit)
        return rng.choice([f"a handwritten {d} .", f"the digit {d} .", f"this image shows the number {d} .",
                           f"a picture of a {d} .", f"{d} , written by hand ."])
    if c.kind == "scene":
        s = f"{_n(c.count)} {c.colour} {_shapes(c)}"
        return rng.choice([f"{s} .", f"a picture of {s} .", f"there {'is' if c.count == 1 else 'are'} {s} .",
                           f"a drawing with {s} ."])
    if c.kind == "face":
        return rng.choice(["a photo of a face .", "the face of a person .", "a person looking at the camera .",
                           "a face in grey ."])
    return rng.choice(["a photo with no face .", "a photo of a scene .", "a grey photo .", "a photo ."])


def _facts(c: Concept) -> list[tuple[str, str]]:
    """``(text with the word, text with <image> instead)`` pairs: the image stands where a word would."""
    if c.kind == "digit":
        d, w = c.digit, _n(c.digit)
        parity = "odd" if d % 2 else "even"
        out = [(f"the number {w} is {parity} .", f"the number {IMAGE_TOKEN} is {parity} .")]
        if d < 9:
            out.append((f"after {w} comes {_n(d + 1)} .", f"after {IMAGE_TOKEN} comes {_n(d + 1)} ."))
        if d > 0:
            out.append((f"before {w} comes {_n(d - 1)} .", f"before {IMAGE_TOKEN} comes {_n(d - 1)} ."))
        return out
    if c.kind == "scene":
        s = _shapes(c)
        corners = {"circle": "no", "square": "four", "triangle": "three"}[c.shape]
        return [(f"{_n(c.count)} {c.colour} {s} : the colour is {c.colour} .",
                 f"{IMAGE_TOKEN} : the colour is {c.colour} ."),
                (f"{_n(c.count)} {c.colour} {s} : i count {_n(c.count)} .", f"{IMAGE_TOKEN} : i count {_n(c.count)} ."),
                (f"a {c.shape} has {corners} corners .", f"{IMAGE_TOKEN} : each shape has {corners} corners .")]
    if c.kind == "face":
        return [("a face has two eyes .", f"{IMAGE_TOKEN} : a face has two eyes .")]
    return [("a photo with no face .", f"{IMAGE_TOKEN} : a photo with no face .")]


def interleaved(c: Concept, rng: np.random.RandomState) -> tuple[str, str]:
    """One fact about ``c`` as (text-only sentence, the same sentence with the image in place of the word)."""
    facts = _facts(c)
    return facts[rng.randint(len(facts))]


def question(c: Concept, rng: np.random.RandomState, qtype: str | None = None) -> dict:
    """A question about ``c``: ``{"qtype", "question", "answer", "wrong"}`` (one-word answers).

    ``qtype`` forces a type (it must fit the kind); by default one is drawn among those that fit.
    """
    ok = [q for q in QTYPES if fits(q, c)]
    if qtype is None:
        qtype = ok[rng.randint(len(ok))]
    elif qtype not in ok:
        raise ValueError(f"question type {qtype!r} does not fit a {c.kind} image")
    yes = bool(rng.rand() < 0.5)

    def yn(claim_true: bool) -> tuple[str, str]:
        return ("yes", "no") if claim_true else ("no", "yes")

    if qtype == "digit_identity":
        q = rng.choice(["what digit is this ?", "which number is written here ?", "what number is shown ?"])
        wrong = int(rng.choice([k for k in range(10) if k != c.digit]))
        return _q(qtype, q, _n(c.digit), _n(wrong))
    if qtype == "digit_claim":
        claim = c.digit if yes else int(rng.choice([k for k in range(10) if k != c.digit]))
        q = rng.choice([f"is this a {_n(claim)} ?", f"is the digit a {_n(claim)} ?", f"is this the number {_n(claim)} ?"])
        return _q(qtype, q, *yn(claim == c.digit))
    if qtype == "digit_parity":
        parity = rng.choice(["odd", "even"])
        return _q(qtype, f"is the digit {parity} ?", *yn((c.digit % 2 == 1) == (parity == "odd")))
    if qtype == "count":
        q = rng.choice(["how many shapes are there ?", f"how many {PLURAL[c.shape]} are there ?",
                        "count the shapes ."])
        wrong = int(rng.choice([k for k in range(1, MAX_COUNT + 1) if k != c.count]))
        return _q(qtype, q, _n(c.count), _n(wrong))
    if qtype == "colour":
        q = rng.choice(["what colour are the shapes ?", f"what colour is the {c.shape} ?",
                        "which colour do you see ?"])
        wrong = str(rng.choice([k for k in COLOURS if k != c.colour]))
        return _q(qtype, q, c.colour, wrong)
    if qtype == "shape":
        q = rng.choice(["what shape is shown ?", "which shape is drawn ?", "what kind of shape is this ?"])
        wrong = str(rng.choice([k for k in SHAPES if k != c.shape]))
        return _q(qtype, q, c.shape, wrong)
    if qtype == "scene_claim":
        if rng.rand() < 0.5:
            colour = c.colour if yes else str(rng.choice([k for k in COLOURS if k != c.colour]))
            return _q(qtype, f"are the shapes {colour} ?", *yn(colour == c.colour))
        shape = c.shape if yes else str(rng.choice([k for k in SHAPES if k != c.shape]))
        return _q(qtype, f"are there {PLURAL[shape]} in the picture ?", *yn(shape == c.shape))
    if qtype == "face":
        return _q(qtype, rng.choice(["is there a face ?", "do you see a face ?", "is a person shown ?"]),
                  *yn(c.has_face))
    if qtype == "kind":
        wrong = str(rng.choice([w for k, w in KIND_WORD.items() if k != c.kind]))
        return _q(qtype, rng.choice(["what is shown ?", "what kind of picture is this ?"]), KIND_WORD[c.kind], wrong)
    return text_only_question(rng)


def sentence_answer(qtype: str, word: str) -> str:
    """The one-word answer ``word`` of a ``qtype`` question said as a sentence (its fact word kept)."""
    if qtype == "digit_identity":
        return f"the digit is {word} ."
    if qtype == "count":
        return "there is one shape ." if word == "one" else f"there are {word} shapes ."
    if qtype == "colour":
        return f"the colour is {word} ."
    if qtype == "shape":
        return f"the shape is a {word} ."
    if qtype == "kind":
        return f"the picture shows {word} ." if word == "shapes" else f"the picture shows a {word} ."
    if word in ("yes", "no"):
        return f"{word} , it is ." if word == "yes" else f"{word} , it is not ."
    return f"the answer is {word} ."


def sentence_question(q: dict) -> dict:
    """``q`` (from :func:`question`) asked for a sentence answer: the question gains
    :data:`SENTENCE_SUFFIX`, answer and wrong answer become sentences stating the same word."""
    return {**q, "question": q["question"] + SENTENCE_SUFFIX, "answer": sentence_answer(q["qtype"], q["answer"]),
            "wrong": sentence_answer(q["qtype"], q["wrong"])}


# ----------------------------------------------------------------------------------------------
# Descriptions: facts in, tagged words out; parsed back and checked against the concept


def true_facts(c: Concept) -> dict[str, object]:
    """Every fact the concept record knows, as ``{fact: value}`` (the content of a full description)."""
    if c.kind == "digit":
        return {"digit": c.digit, "parity": "odd" if c.digit % 2 else "even",
                **({"prev": c.digit - 1} if c.digit > 0 else {})}
    if c.kind == "scene":
        return {"count": c.count, "colour": c.colour, "shape": c.shape,
                **({"position": tuple(c.position)} if c.position else {}), "size": c.size}
    return {"face": c.kind == "face", **({"brightness": c.brightness} if c.brightness else {})}


def render_description(facts: dict[str, object]) -> tuple[list[str], list[str | None]]:
    """The description stating ``facts`` (:func:`true_facts`' shape, any subset, any values), as words and
    each word's tag: the fact it states, or None for a word that states none."""
    words: list[str] = []
    tags: list[str | None] = []

    def say(*parts: tuple[str, str | None]) -> None:
        for text, tag in parts:
            for w in text.split():
                words.append(w)
                tags.append(tag)
        words.append(".")
        tags.append(None)

    many = facts.get("count", 1) != 1
    it = ("they are", None) if many else ("it is", None)
    if "digit" in facts:
        say(("a handwritten", None), (_n(facts["digit"]), "digit"))
    if "parity" in facts:
        say(("it is", None), (facts["parity"], "parity"))
    if "prev" in facts:
        say(("it comes after", None), (_n(facts["prev"]), "prev"))
    if {"count", "colour", "shape"} & set(facts):
        shape = facts.get("shape")
        noun = ("shapes" if many else "shape") if shape is None else (PLURAL[shape] if many else shape)
        say(*[p for p in ((_n(facts["count"]), "count") if "count" in facts else None,
                          (facts["colour"], "colour") if "colour" in facts else None, (noun, "shape")) if p])
    if "position" in facts:
        pos = tuple(facts["position"])
        say(it, ("on the" if len(pos) == 1 and pos[0] in ("left", "right") else "at the", None),
            *[(w, "position") for w in pos])
    if "size" in facts:
        say(it, (facts["size"], "size"))
    if "face" in facts:
        say(("a photo of a face", "face") if facts["face"] else ("a photo with no face", "face"))
    if "brightness" in facts:
        say(("it is", None), (facts["brightness"], "brightness"))
    return words, tags


def describe(c: Concept, ungrounded: tuple[str, ...] = (), rng: np.random.RandomState | None = None) -> str:
    """The full, true description of ``c``; with ``ungrounded`` facts, those are stated with values drawn at random
    (:func:`any_value`, ``rng``), as an annotator who did not look would."""
    facts = true_facts(c)
    for f in ungrounded:
        if f in facts:
            facts[f] = any_value(f, rng)
    return " ".join(render_description(facts)[0])


def any_value(fact: str, rng: np.random.RandomState):
    """A value of ``fact`` drawn uniformly among those it takes (for ``digit``, ``parity``, ``count``, ``colour``,
    ``shape``, ``size``, ``brightness``)."""
    if fact == "digit":
        return int(rng.randint(10))
    if fact == "count":
        return int(rng.randint(1, MAX_COUNT + 1))
    choices = {"parity": ("odd", "even"), "colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES,
               "brightness": BRIGHTNESS}
    if fact not in choices:
        raise InputError(f"fact {fact!r} cannot be drawn at random; use one of digit, count, {', '.join(choices)}")
    return choices[fact][rng.randint(len(choices[fact]))]


def false_value(fact: str, value, rng: np.random.RandomState):
    """Another value of ``fact`` than ``value`` (what a hallucinated detail states)."""
    if fact in ("digit", "prev"):
        return int(rng.choice([k for k in range(10) if k != value]))
    if fact == "count":
        return int(rng.choice([k for k in range(1, MAX_COUNT + 1) if k != value]))
    choices = {"parity": ("odd", "even"), "colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES,
               "brightness": BRIGHTNESS, "face": (True, False)}
    if fact == "position":
        options = [p for p in (("left",), ("right",), ("top",), ("bottom",), ("top", "left"), ("top", "right"),
                               ("bottom", "left"), ("bottom", "right")) if not set(p) <= set(value)]
        return options[rng.randint(len(options))]
    others = [v for v in choices[fact] if v != value]
    return others[rng.randint(len(others))]


_NUM = {w: i for i, w in enumerate(NUMBERS)}


def parse_facts(text: str) -> list[tuple[str, object] | tuple[None, str]]:
    """The facts a description states, sentence by sentence: ``(fact, value)``, or ``(None, sentence)`` for a
    sentence that is not a description sentence of the language (counted as a false statement by CHAIR)."""
    out: list = []
    text = re.sub(r"\s*([.,?])", r" \1", text.replace("<|im_end|>", " "))  # "circles. they" (a decoder's cleanup)
    for sent in (s.strip() for s in text.split(" .")):
        if not sent:
            continue
        w = sent.split()
        if w[:2] == ["a", "handwritten"] and len(w) == 3 and w[2] in _NUM:
            out.append(("digit", _NUM[w[2]]))
        elif w[:3] == ["it", "comes", "after"] and len(w) == 4 and w[3] in _NUM:
            out.append(("prev", _NUM[w[3]]))
        elif sent in ("a photo of a face", "a photo with no face"):
            out.append(("face", sent == "a photo of a face"))
        elif len(w) == 3 and w[:2] in (["it", "is"], ["they", "are"]) and w[2] in ("odd", "even", *SIZES, *BRIGHTNESS):
            out.append(("parity" if w[2] in ("odd", "even") else "size" if w[2] in SIZES else "brightness", w[2]))
        elif len(w) >= 5 and w[:2] in (["it", "is"], ["they", "are"]) and w[2:4] in (["on", "the"], ["at", "the"]) \
                and all(x in SIDES for x in w[4:]) and len(w) <= 6:
            out.append(("position", tuple(w[4:])))
        elif 2 <= len(w) <= 3 and w[0] in _NUM and w[-1] in (*SHAPES, *PLURAL.values(), "shape", "shapes") \
                and (len(w) == 2 or w[1] in COLOURS):
            out.append(("count", _NUM[w[0]]))
            if len(w) == 3:
                out.append(("colour", w[1]))
            if w[-1] not in ("shape", "shapes"):
                out.append(("shape", next(s for s in SHAPES if w[-1] in (s, PLURAL[s]))))
        else:
            out.append((None, sent))
    return out


def fact_is_true(fact: str | None, value, c: Concept) -> bool:
    """Whether the stated ``(fact, value)`` holds for the image's concept (an unparsed sentence never does)."""
    truth = true_facts(c)
    if fact == "position":
        return c.kind == "scene" and bool(value) and set(value) <= set(c.position or ())
    if fact == "brightness":  # in the ambiguous band (brightness None) either word is fair
        return c.kind in ("face", "photo") and value in BRIGHTNESS and c.brightness in (None, value)
    return fact is not None and fact in truth and truth[fact] == value


def text_only_question(rng: np.random.RandomState) -> dict:
    """A question that needs no image ("what comes after three ?"): off-topic for any image."""
    k = int(rng.randint(0, 9))
    form = rng.randint(3)
    if form == 0:
        return _q("text_only", f"what comes after {_n(k)} ?", _n(k + 1), _n((k + 2) % 10))
    if form == 1:
        return _q("text_only", f"what comes before {_n(k + 1)} ?", _n(k), _n((k + 2) % 10))
    truth = k % 2 == 1
    return _q("text_only", f"is {_n(k)} an odd number ?", "yes" if truth else "no", "no" if truth else "yes")


def fits(qtype: str, c: Concept) -> bool:
    """Whether a question of type ``qtype`` can be asked about an image showing ``c``."""
    if qtype in KIND_QTYPES["digit"]:
        return c.kind == "digit"
    if qtype in KIND_QTYPES["scene"]:
        return c.kind == "scene"
    return qtype in ("face", "kind")


def _q(qtype: str, q: str, answer: str, wrong: str) -> dict:
    return {"qtype": qtype, "question": str(q), "answer": answer, "wrong": wrong}


def vocabulary() -> list[str]:
    """Every word the language can produce (a closed set: the tokenizer has no unknown words in it)."""
    rng = np.random.RandomState(0)
    from saev_curate.testbed.images import sample_images

    words: set[str] = {"system", "user", "assistant"} | set(NUMBERS)
    words |= set(COLOURS) | set(SHAPES) | set(PLURAL.values()) | set(KIND_WORD.values())
    concepts = [c for _, c in sample_images("train", 400, seed=0)]
    for c in concepts:
        for _ in range(12):
            words |= set(caption(c, rng).split())
            for a, b in _facts(c):
                words |= set(a.split()) | set(b.replace(IMAGE_TOKEN, "").split())
            q = question(c, rng)
            words |= set(q["question"].split()) | {q["answer"], q["wrong"]}
    for _ in range(200):
        q = text_only_question(rng)
        words |= set(q["question"].split()) | {q["answer"], q["wrong"]}
    words |= set(SENTENCE_SUFFIX.split()) | {w for p in DESCRIBE_PROMPTS for w in p.split()}
    for qt in QTYPES:
        for a in (*NUMBERS, "yes", "no", *COLOURS, *SHAPES, *KIND_WORD.values()):
            words |= set(sentence_answer(qt, a).split())
    probe = {"digit": 1, "parity": "odd", "prev": 0, "count": 2, "colour": "red", "shape": "circle",
             "position": ("top", "left"), "size": "small", "face": True, "brightness": "dark"}
    for variant in ({}, {"count": 1}, {"face": False}, {"position": ("left",)}):
        words |= set(render_description({**probe, **variant})[0])
    words |= set(SIZES) | set(SIDES) | set(BRIGHTNESS)
    return sorted(words)


def build_tokenizer():
    """A word-level fast tokenizer over :func:`vocabulary` (+ chat and image special tokens)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(list(SPECIAL) + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side="right",
    )


def chat_prompt(question: str, *, image: bool = True) -> list[dict]:
    """The user turn of a question, image first (the usual chat layout)."""
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]
