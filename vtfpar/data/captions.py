"""Free-text captions for synthetic pedestrians, for contrastive pre-training of the tiny CLIP.

A caption describes a *random subset* of what one frame shows, in varied wording (synonyms,
templates, clause order), the way web alt-text describes a photo. It never mentions motion
(a single frame cannot show it) and it is not the label vector spelled out: most captions leave
several attributes unmentioned, and the same attribute has several phrasings. The downstream
attribute task therefore has to transfer what CLIP learned, not read it back.
"""

from __future__ import annotations

import numpy as np

from vtfpar.data.synthetic import BOTTOM_COLOURS, TOP_COLOURS

SUBJECTS = ["a person", "a pedestrian", "someone", "a passer-by", "a figure", "an adult"]
OPENERS = ["{s}", "a photo of {s}", "a street camera image of {s}", "a low-resolution shot of {s}",
           "a crop of {s}", "cctv still of {s}"]
COLOUR_WORDS = {"black": ["black", "dark"], "white": ["white", "light"], "red": ["red", "crimson"],
                "blue": ["blue", "navy"], "green": ["green"], "yellow": ["yellow", "mustard"],
                "gray": ["gray", "grey"], "brown": ["brown", "tan"]}
TOP_LONG = ["long-sleeved top", "jacket", "sweater", "long-sleeve shirt"]
TOP_SHORT = ["t-shirt", "short-sleeved shirt", "tee", "short-sleeve top"]
BOTTOM_LONG = ["trousers", "pants", "jeans", "slacks"]
BOTTOM_SHORT = ["shorts", "short pants", "knee-length shorts"]
PHRASES = {
    "hat": (["wearing a hat", "with a cap on", "in a hat"], ["bareheaded", "with no hat"]),
    "bag": (["carrying a shoulder bag", "with a bag over one shoulder", "with a satchel"], ["without a bag"]),
    "backpack": (["with a backpack", "carrying a rucksack", "wearing a backpack"], ["with no backpack"]),
    "hair": (["with long hair", "long-haired"], ["with short hair", "short-haired"]),
}
ORIENTATION_WORDS = [["facing the camera", "seen from the front", "turned towards the camera"],
                     ["seen from behind", "with their back to the camera", "facing away"],
                     ["seen from the side", "in profile", "side view"]]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def caption(lab: dict, rng: np.random.Generator, p_mention: float = 0.7) -> str:
    """One caption for a frame with labels ``lab`` (see ``synthetic.sample_labels``).

    Each fact is mentioned with probability ``p_mention`` (absent items are mentioned more
    rarely, as people seldom say what is not there); at least one fact is always mentioned.
    """
    short_top, short_bottom, hat, bag, backpack, long_hair = (bool(v) for v in lab["binary"])
    top_c = _pick(rng, COLOUR_WORDS[list(TOP_COLOURS)[lab["top"]]])
    bottom_c = _pick(rng, COLOUR_WORDS[list(BOTTOM_COLOURS)[lab["bottom"]]])
    clauses: list[str] = []
    if rng.random() < p_mention:
        garment = _pick(rng, TOP_SHORT if short_top else TOP_LONG)
        clauses.append(_pick(rng, ["wearing a {c} {g}", "in a {c} {g}", "dressed in a {c} {g}"])
                       .format(c=top_c, g=garment))
    if rng.random() < p_mention:
        garment = _pick(rng, BOTTOM_SHORT if short_bottom else BOTTOM_LONG)
        clauses.append(_pick(rng, ["with {c} {g}", "wearing {c} {g}", "in {c} {g}"]).format(c=bottom_c, g=garment))
    for key, present in (("hat", hat), ("bag", bag), ("backpack", backpack), ("hair", long_hair)):
        yes, no = PHRASES[key]
        if rng.random() < (p_mention if present or key == "hair" else p_mention / 2):
            clauses.append(_pick(rng, yes if present else no))
    if rng.random() < p_mention:
        clauses.append(_pick(rng, ORIENTATION_WORDS[lab["orientation"]]))
    if not clauses:  # never an empty description
        clauses.append(f"in {top_c} and {bottom_c}")
    order = rng.permutation(len(clauses))
    clauses = [clauses[i] for i in order]
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    opener = _pick(rng, OPENERS) if rng.random() < 0.5 else "{s}"  # short openers keep captions within 32 tokens
    return opener.format(s=_pick(rng, SUBJECTS)) + " " + body


def zero_shot_prompts() -> dict[str, tuple[list[str], str]]:
    """Per attribute group: one prompt per class, and which label field it reads.

    Used to report zero-shot classification of the pre-trained CLIP on held-out frames.
    """
    return {
        "top colour": ([f"a person wearing a {c} top" for c in TOP_COLOURS], "top"),
        "bottom colour": ([f"a person in {c} trousers" for c in BOTTOM_COLOURS], "bottom"),
        "orientation": (["a person facing the camera", "a person seen from behind", "a person seen from the side"],
                        "orientation"),
        "hat": (["a person with no hat", "a person wearing a hat"], "binary:2"),
        "backpack": (["a person with no backpack", "a person with a backpack"], "binary:4"),
        "hair": (["a person with short hair", "a person with long hair"], "binary:5"),
    }
