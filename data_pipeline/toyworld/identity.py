"""Toy-world identities: head shape, skin, hair, clothing, background, held object, voice; and captions.

The toy stand-in for the paper's human-centric data (OmniHuman-1 section 3.1/4.1): each identity is a
half-body cartoon person whose appearance is drawn from named palettes, so a caption can name what is
seen (the text condition) and a reference frame carries the identity (the reference condition).
Every palette colour, and every half-and-half mix of two of them, stays farther than
`measure.COLOUR_FAR` from the reserved mouth and hand colours (`measure.RESERVED_COLOURS`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

Colour = tuple[int, int, int]

SKIN_TONES: dict[str, Colour] = {
    "pale": (238, 214, 196),
    "light": (222, 184, 152),
    "tan": (196, 144, 104),
    "brown": (140, 90, 60),
    "dark brown": (88, 58, 40),
}
HAIR_COLOURS: dict[str, Colour] = {
    "black": (25, 22, 22),
    "brown": (96, 60, 34),
    "blonde": (214, 184, 120),
    "red": (168, 60, 30),
    "grey": (150, 150, 150),
    "white": (232, 228, 222),
}
CLOTHING_COLOURS: dict[str, Colour] = {
    "red": (190, 40, 45),
    "navy": (30, 40, 100),
    "blue": (45, 80, 185),
    "orange": (225, 120, 35),
    "white": (235, 235, 235),
    "black": (30, 30, 32),
    "grey": (120, 120, 125),
    "purple": (100, 50, 125),
    "brown": (110, 75, 45),
    "maroon": (110, 25, 40),
}
BACKGROUND_COLOURS: dict[str, Colour] = {
    "beige": (210, 195, 165),
    "blue": (70, 95, 160),
    "grey": (128, 128, 128),
    "dark": (40, 40, 50),
    "brick": (150, 70, 55),
    "cream": (240, 232, 210),
    "slate": (90, 100, 115),
}
BACKGROUND_PATTERNS = ("plain", "stripes", "checks", "window")
HEAD_SHAPES: dict[str, tuple[float, float]] = {  # (radius x, radius y) as fractions of the frame size
    "round": (0.15, 0.17),
    "oval": (0.13, 0.18),
    "wide": (0.16, 0.16),
}
HAIR_STYLES = ("short", "long", "bald")
HELD_OBJECTS: dict[str, Colour] = {"red cup": (180, 30, 30), "book": (120, 80, 40), "phone": (40, 40, 45)}
HELD_OBJECT_PROBABILITY = 0.4
EYE_COLOUR: Colour = (20, 20, 30)
LIP_COLOUR: Colour = (120, 45, 50)

ALL_PALETTES = (SKIN_TONES, HAIR_COLOURS, CLOTHING_COLOURS, BACKGROUND_COLOURS, HELD_OBJECTS)


@dataclasses.dataclass(frozen=True)
class Identity:
    """One toy person. Colours are (name, RGB); sizes are fractions of the frame size."""

    name: str
    head_shape: str
    skin: tuple[str, Colour]
    hair: tuple[str, Colour]
    hair_style: str
    clothing: tuple[str, Colour]
    background: tuple[str, Colour]
    background_accent: tuple[str, Colour]
    background_pattern: str
    held_object: tuple[str, Colour] | None
    voice_f0_hz: float  # mean voice pitch
    gesture_energy: float  # how strongly gestures follow speech, in [0.5, 1.5]

    @property
    def head_radii(self) -> tuple[float, float]:
        return HEAD_SHAPES[self.head_shape]


def _pick(
    rng: np.random.Generator, palette: dict[str, Colour], exclude: str | None = None
) -> tuple[str, Colour]:
    names = sorted(n for n in palette if n != exclude)
    name = names[int(rng.integers(len(names)))]
    return name, palette[name]


def sample_identity(rng: np.random.Generator, name: str) -> Identity:
    """Draw one identity's appearance and voice from the palettes."""
    background = _pick(rng, BACKGROUND_COLOURS)
    clothing = _pick(rng, CLOTHING_COLOURS, exclude=background[0])
    has_object = rng.random() < HELD_OBJECT_PROBABILITY
    return Identity(
        name=name,
        head_shape=sorted(HEAD_SHAPES)[int(rng.integers(len(HEAD_SHAPES)))],
        skin=_pick(rng, SKIN_TONES),
        hair=_pick(rng, HAIR_COLOURS),
        hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
        clothing=clothing,
        background=background,
        background_accent=_pick(rng, BACKGROUND_COLOURS, exclude=background[0]),
        background_pattern=BACKGROUND_PATTERNS[int(rng.integers(len(BACKGROUND_PATTERNS)))],
        held_object=_pick(rng, HELD_OBJECTS) if has_object else None,
        voice_f0_hz=float(rng.uniform(95.0, 230.0)),
        gesture_energy=float(rng.uniform(0.5, 1.5)),
    )


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def caption(identity: Identity, *, camera_motion: bool) -> str:
    """Text naming the person's colours, the background and the action."""
    hair = (
        "a bald head" if identity.hair_style == "bald" else f"{identity.hair_style} {identity.hair[0]} hair"
    )
    text = (
        f"a person with {identity.skin[0]} skin, {hair} and {_article(identity.clothing[0])} shirt"
        f"{', holding ' + _article(identity.held_object[0]) if identity.held_object else ''}, "
        f"talking and gesturing in front of {_article(identity.background[0])} background"
    )
    if identity.background_pattern != "plain":
        pattern = {"stripes": "with {} stripes", "checks": "with {} checks", "window": "with a {} window"}
        text += " " + pattern[identity.background_pattern].format(identity.background_accent[0])
    if camera_motion:
        text += "; the camera moves slowly"
    return text
