from vtfpar.attributes import AttributeSet, sentence, split_label
from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES


def test_split_expand_prompt_as_in_the_paper():
    assert split_label("Age < 40") == ("age", "< 40")
    assert sentence("Age < 40") == "The attribute age of this pedestrian is less than 40"
    assert sentence("top colour: red") == "The attribute top colour of this pedestrian is red"
    assert sentence("hat: yes") == "The attribute hat of this pedestrian is present"
    assert sentence("backpack") == "The attribute backpack of this pedestrian is present"


def test_groups_are_runs_of_one_attribute():
    s = AttributeSet("t", ("hat: yes", "colour: red", "colour: blue", "age: young", "age: old"))
    assert [(g.name, g.start, g.stop, g.multiclass) for g in s.groups] == [
        ("hat", 0, 1, False), ("colour", 1, 3, True), ("age", 3, 5, True)]
    assert s.names == ["hat", "colour: red", "colour: blue", "age: young", "age: old"]


def test_synthetic_set_has_a_motion_group():
    groups = {g.name: g for g in SYNTHETIC_ATTRIBUTES.groups}
    assert groups["motion"].size == 3 and len(SYNTHETIC_ATTRIBUTES) == 23
