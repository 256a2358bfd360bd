"""The class vocabulary: one place for names, codes and prompts."""

import pytest

from survgen.classes import ClassVocabulary, UnknownClassError


def test_classes_resolve_by_id_code_or_name():
    v = ClassVocabulary()
    assert len(v) == 8
    for key in (7, "7", "07", "G7", "g07", " returning/dropping the needle "):
        assert v.resolve(key) == 7, key
    assert v.code(6) == "G6" and v.prompt(6) == "action recognition task of cutting the suture"


@pytest.mark.parametrize("key, message", [("G9", "unknown class .G9."), ("12", "unknown class .12."),
                                          ("suturing", "known classes: G0 .other.")])
def test_unknown_classes_are_refused_with_the_known_ones_listed(key, message):
    with pytest.raises(UnknownClassError, match=message):
        ClassVocabulary().resolve(key)


def test_a_custom_vocabulary_round_trips_through_its_file(tmp_path):
    v = ClassVocabulary(names=["idle", "cut"], prompt_template="a video of {name}")
    v.save(tmp_path)
    back = ClassVocabulary.for_folder(tmp_path)
    assert back == v and back.prompts() == ["a video of idle", "a video of cut"]
    with pytest.raises(ValueError, match="must contain"):
        ClassVocabulary(names=["a"], prompt_template="no slot")
