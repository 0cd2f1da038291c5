"""DukeMTMC-VID-Attribute (Chen et al. 2019): 2,196 train / 2,636 test tracklets.

The paper says 37 binary attributes; the data of its code has **36**, which we follow:
8 binary, pose 6, motion 5, top colour 9, bottom colour 8 (groups start at 0..8, 14, 19, 28).
"""

from __future__ import annotations

from vtfpar.attributes import AttributeSet, expand_groups
from vtfpar.data.mars import MOTIONS, POSES

DUKE_ATTRIBUTES = AttributeSet("duke", expand_groups([
    ("backpack", ["yes"]), ("shoulder bag", ["yes"]), ("hand bag", ["yes"]), ("boots", ["yes"]),
    ("gender", ["female"]), ("hat", ["yes"]), ("shoes", ["light"]), ("top length", ["long"]),
    ("pose", POSES), ("motion", MOTIONS),
    ("top colour", ["black", "white", "red", "purple", "gray", "blue", "green", "brown", "complex"]),
    ("bottom colour", ["black", "white", "red", "gray", "blue", "green", "brown", "complex"]),
]))
