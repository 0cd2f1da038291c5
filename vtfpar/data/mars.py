"""MARS-Attribute (Chen et al. 2019): 8,298 train / 8,062 test tracklets of the MARS release.

Two label sets, by what the annotation file holds:
* the public 2019 CSV: 32 binary attributes (9 binary + top colour 9 + bottom colour 10 + age 4);
* the paper's preprocessed layout: the 43 of the paper's code (the 32 plus pose 6 and motion 5).

Binary columns of the 2019 CSV: each is the Market-1501 attribute code (which the CSV's README
says it follows) less one, and the data agree. ``Tops.l`` and ``Bottoms.l`` are 1 for short
(Market: long 1, short 2): 98% of the "old" age group and 80% of adults have ``Bottoms.l`` 0
against 29% of teenagers, and 88% of skirts and dresses have ``Bottoms.l`` 1, which fits 0 =
long trousers, not 0 = shorts. ``Bottoms.t`` is 0 for 13.7% of tracklets, all of them female, so
0 is skirt or dress and 1 trousers (Market: dress 1, pants 2; the two official repositories swap
the names of attributes 1 and 8); ``gender`` 1 is female (41%); ``hair`` 1 is long.
"""

from __future__ import annotations

from vtfpar.attributes import AttributeSet, expand_groups

TOP_COLOURS = ["black", "purple", "green", "blue", "gray", "white", "yellow", "red", "complex"]
BOTTOM_COLOURS = ["white", "purple", "black", "green", "gray", "pink", "yellow", "blue", "brown", "complex"]
AGES = ["young", "teenager", "adult", "old"]
POSES = ["frontal", "lateral-frontal", "lateral", "lateral-back", "back", "varies"]
MOTIONS = ["walking", "running", "riding", "staying", "varies"]

_BINARY = [("top length", ["short"]), ("bottom length", ["short"]), ("shoulder bag", ["yes"]),
           ("backpack", ["yes"]), ("hat", ["yes"]), ("hand bag", ["yes"]), ("hair", ["long"]),
           ("gender", ["female"]), ("bottom type", ["skirt or dress"])]

MARS2019_ATTRIBUTES = AttributeSet("mars2019", expand_groups(
    _BINARY + [("top colour", TOP_COLOURS), ("bottom colour", BOTTOM_COLOURS), ("age", AGES)]))
MARS43_ATTRIBUTES = AttributeSet("mars", expand_groups(
    _BINARY + [("pose", POSES), ("motion", MOTIONS), ("top colour", TOP_COLOURS),
               ("bottom colour", BOTTOM_COLOURS), ("age", AGES)]))
