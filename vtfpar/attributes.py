"""Attribute sets and the attribute sentences fed to the CLIP text encoder.

VTFPAR++ (Sec. III-B, "Input Encoding") turns every attribute into a sentence in three steps:
*split* the label into the attribute and its value ("Age < 40" -> "age", "< 40"), *expand*
symbols and abbreviations into words ("< 40" -> "less than 40"), and *prompt*: "The attribute
{attribute} of this pedestrian is {value}". The official code feeds the raw phrases instead; we
build the sentences the paper describes.

An ``AttributeSet`` is the ordered list of binary attributes a dataset predicts plus the groups
they form (consecutive attributes of one multi-valued label, e.g. the 9 top colours), which the
grouped metrics and the per-group argmax figures need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROMPT = "The attribute {attribute} of this pedestrian is {value}"

# Symbols and short forms seen in PAR label sets, expanded into words (the "expand" step).
_EXPANSIONS = [
    (r"<=", " less than or equal to "),
    (r">=", " greater than or equal to "),
    (r"<", " less than "),
    (r">", " greater than "),
    (r"=", " equal to "),
    (r"&", " and "),
    (r"\+", " plus "),
    (r"\bw/o\b", "without"),
    (r"\bw/", "with "),
    (r"\bup\b", "upper body"),
    (r"\bdown\b", "lower body"),
    (r"\bdgray\b", "dark gray"),
    (r"\byes\b", "present"),
]


def split_label(label: str) -> tuple[str, str]:
    """Split a raw label into (attribute, value): "Age < 40" -> ("age", "< 40"), "hat: yes" -> ("hat", "yes")."""
    label = label.strip()
    if ":" in label:
        attr, value = label.split(":", 1)
        return attr.strip().lower(), value.strip()
    m = re.match(r"^(.*?)\s*(<=|>=|<|>|=)\s*(.*)$", label)
    if m:
        return m.group(1).strip().lower(), f"{m.group(2)} {m.group(3).strip()}"
    return label.lower(), "yes"


def expand(phrase: str) -> str:
    """Replace symbols and abbreviations with words: "< 40" -> "less than 40"."""
    out = phrase
    for pattern, words in _EXPANSIONS:
        out = re.sub(pattern, words, out, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", out.replace("_", " ")).strip()


def sentence(label: str) -> str:
    """Split, expand and prompt one label: "Age < 40" -> "The attribute age of this pedestrian is less than 40"."""
    attr, value = split_label(label)
    return PROMPT.format(attribute=expand(attr), value=expand(value))


@dataclass(frozen=True)
class Group:
    name: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def multiclass(self) -> bool:
        return self.size > 1


@dataclass(frozen=True)
class AttributeSet:
    """Ordered binary attributes (as raw labels ``"group: value"``) and their groups."""

    name: str
    labels: tuple[str, ...]

    def __post_init__(self):
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"attribute set {self.name} has duplicate labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def names(self) -> list[str]:
        """Readable unique names, e.g. "top colour: red"."""
        return [f"{a}: {expand(v)}" if v != "yes" else a for a, v in map(split_label, self.labels)]

    @property
    def sentences(self) -> list[str]:
        return [sentence(label) for label in self.labels]

    @property
    def groups(self) -> list[Group]:
        """Runs of consecutive labels that share an attribute name form one group."""
        out: list[Group] = []
        keys = [split_label(label)[0] for label in self.labels]
        start = 0
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i] != keys[start]:
                out.append(Group(keys[start], start, i))
                start = i
        return out


def expand_groups(groups: list[tuple[str, list[str]]]) -> tuple[str, ...]:
    """Build labels from (group, values) pairs; a group with the single value "yes" stays binary."""
    return tuple(f"{g}: {v}" for g, values in groups for v in values)
