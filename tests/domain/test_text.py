"""culm.domain.text: what input is refused (and the field named), what output is made storable.
(tests/storage/test_text.py checks the same on the databases.)"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from culm.domain.text import (
    find_problem,
    model_json,
    refuse_unstorable,
    storable,
    storable_parameters,
    storable_value,
    text_problem,
)
from culm.errors import InvalidFieldError

NUL = "contains NUL (\\u0000), which culm does not store"
SURROGATE = "contains a lone surrogate (\\ud800-\\udfff), which is not Unicode text"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("plain", None),
        ("é and \U0001f600", None),
        ("a\x00b", NUL),
        ("é\x00", NUL),
        ("\ud800", SURROGATE),
        ("x\udfff", SURROGATE),
        ("\x00\ud800", NUL),  # NUL is named first
    ],
)
def test_text_problem(text: str, problem: str | None) -> None:
    assert text_problem(text) == problem


def test_find_problem_names_a_field_name_key_or_value() -> None:
    assert find_problem({"ok": "fine", "n": 3, "none": None}) is None
    assert find_problem({"a\x00": 1}) == ("body", f"a field name {NUL}")
    assert find_problem({"ok": 1, "b\ud800": 1}) == ("body", f"a field name {SURROGATE}")
    assert find_problem({"metadata": {"k\x00": 1}}) == ("metadata", f"a key {NUL}")
    assert find_problem({"metadata": {"a": {"k\ud800": 1}}}) == (
        "metadata.a",
        f"a key {SURROGATE}",
    )
    assert find_problem({"message": "hi\x00"}) == ("message", NUL)
    assert find_problem({"tools": ("ok", ["x", "\udc00"])}) == ("tools.1.1", SURROGATE)


def test_find_problem_reports_the_first_field_in_order() -> None:
    assert find_problem({"n": 3, "none": None, "m": "\x00"}) == ("m", NUL)
    assert find_problem({"x": [1, 2.5, True, "\ud800"]}) == ("x.3", SURROGATE)
    assert find_problem({"a\\b": {"new\nline": "\x00"}}) == ("a\\b.new\nline", NUL)
    data = {"first": ["ok", "a\x00"], "second": "b\x00"}
    assert find_problem(data) == ("first.1", NUL)
    assert find_problem({"first": {"x": "ok", "y": "\ud800"}, "z": "\x00"}) == (
        "first.y",
        SURROGATE,
    )


def test_find_problem_counts_lists_as_levels_and_names_the_top_field() -> None:
    def nested(levels: int) -> Any:
        value: Any = []
        for _ in range(levels - 1):
            value = [value]
        return value

    assert find_problem({"metadata": nested(32)}) is None
    assert find_problem({"metadata": {"deep": nested(32)}}) == (
        "metadata",
        "is nested deeper than 32 levels",
    )
    # text inside the deepest allowed level is still checked
    assert find_problem({"metadata": [[["\x00"]]]}) == ("metadata.0.0.0", NUL)


def test_refuse_unstorable_names_the_field_or_passes_the_data() -> None:
    data = {"run_config": {"message": "ok"}}
    assert refuse_unstorable(data) is data
    assert refuse_unstorable("not a mapping\x00") == "not a mapping\x00"
    with pytest.raises(InvalidFieldError) as raised:
        refuse_unstorable({"run_config": {"message": "a\x00"}})
    assert raised.value.field == "run_config.message"
    assert NUL in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("ascii", "ascii"),
        ("\x00\x00", "\ufffd\ufffd"),
        ("é\x00\ud800", "é\ufffd\ufffd"),
        ("é\udfff\ud800", "é\ufffd\ufffd"),
        ("é", "é"),
    ],
)
def test_storable_replaces_each_unstorable_character(text: str, expected: str) -> None:
    assert storable(text) == expected


def test_storable_returns_the_same_string_when_nothing_is_replaced() -> None:
    for text in ("plain", "é and \U0001f600"):
        assert storable(text) is text


def test_storable_value_replaces_in_keys_and_values_at_any_depth() -> None:
    value = {"k\x00": ["a\ud800", ("b", {"c": "\x00"})], 3: None, "n": 1.5}
    assert storable_value(value) == {
        "k\ufffd": ["a\ufffd", ["b", {"c": "\ufffd"}]],
        3: None,
        "n": 1.5,
    }
    assert storable_value("x\x00") == "x\ufffd"


def test_storable_parameters_keeps_the_objects_it_need_not_change() -> None:
    clean_list = ["a", 1, None]
    clean_tuple = ("a", 1)
    clean_map = {"a": "b", "c": 2}
    for value in (clean_list, clean_tuple, clean_map, [clean_map, clean_tuple]):
        assert storable_parameters(value) is value
    assert storable_parameters(("a", "\x00")) == ("a", "\ufffd")
    assert isinstance(storable_parameters(("a", "\x00")), tuple)
    assert storable_parameters(["\ud800", 1]) == ["\ufffd", 1]
    assert storable_parameters([{"k": "\x00"}, ("ok",)]) == [{"k": "\ufffd"}, ("ok",)]
    assert storable_parameters({"k": "v\x00", "n": 1}) == {"k": "v\ufffd", "n": 1}
    assert storable_parameters("\x00") == "\ufffd"
    assert storable_parameters(7) == 7


class Note(BaseModel):
    text: str
    tags: list[str] = []


def test_model_json_is_pydantics_json_or_a_replacement_for_a_lone_surrogate() -> None:
    plain = Note(text="é\x00", tags=["a"])
    assert model_json(plain) == plain.model_dump_json()
    assert model_json(Note(text="a\ud83d", tags=["\udfffb"])) == (
        '{"text":"a\ufffd","tags":["\ufffdb"]}'
    )
