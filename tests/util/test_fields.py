"""FieldReader (faastwist.util.fields): every problem is ``dotted.path: what is wrong``,
with the exact words a user reads in a 400 or a config error."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

from faastwist.util.fields import FieldError, FieldReader


def problem(call: Any) -> str:
    with pytest.raises(FieldError) as caught:
        call()
    return str(caught.value)


def test_an_error_is_path_colon_problem_or_the_problem_alone() -> None:
    error = FieldError("a.b", "is bad")
    assert (str(error), error.path, error.problem) == ("a.b: is bad", "a.b", "is bad")
    assert str(FieldError("", "is bad")) == "is bad"


@pytest.mark.parametrize("data, named", [
    ([1], "a list"), ("x", "a string"), (True, "a boolean"), (3, "an integer"),
    (1.5, "a number"), (b"x", "bytes")])
def test_a_document_must_be_a_mapping(data: object, named: str) -> None:
    assert problem(lambda: FieldReader(data, "")) == f"(document): must be a mapping, got {named}"
    assert problem(lambda: FieldReader(data, "spec")) == f"spec: must be a mapping, got {named}"


def test_none_reads_as_empty_and_mappings_of_any_kind_are_read() -> None:
    assert FieldReader(None, "x").data == {}
    assert FieldReader(OrderedDict(a="1"), "x").string("a") == "1"
    assert problem(lambda: FieldReader({1: "x"}, "")) == "(document): keys must be strings, got 1"
    assert problem(lambda: FieldReader({1: "x"}, "s")) == "s: keys must be strings, got 1"


def test_required_fields_and_defaults() -> None:
    reader = FieldReader({"a": None, "b": "x"}, "spec")
    assert problem(lambda: reader.string("a")) == "spec.a: is required"
    assert reader.string("a", "dflt") == "dflt"
    assert reader.string("missing", None) is None
    assert reader.string("b") == "x"
    assert problem(lambda: FieldReader({"n": 3}, "").string("n")) == \
        "n: must be a string, got an integer"
    assert problem(lambda: FieldReader({"n": None}, "").raw("n")) == "n: is required"


def test_integers_take_digit_strings_and_bounds() -> None:
    reader = FieldReader({"a": "+7", "b": "3x", "c": True, "d": 1.5, "e": 5, "f": 11,
                          "g": " -3 "}, "p")
    assert reader.integer("a") == 7 and reader.integer("g") == -3
    assert problem(lambda: reader.integer("b")) == "p.b: must be an integer, got a string"
    assert problem(lambda: reader.integer("c")) == "p.c: must be an integer, got a boolean"
    assert problem(lambda: reader.integer("d")) == "p.d: must be an integer, got a number"
    assert reader.integer("e", low=5, high=5) == 5
    assert problem(lambda: reader.integer("e", low=6)) == "p.e: must be at least 6, got 5"
    assert problem(lambda: reader.integer("f", low=1, high=10)) == "p.f: must be 1-10, got 11"
    assert problem(lambda: reader.integer("e", low=6, high=10)) == "p.e: must be 6-10, got 5"
    assert reader.integer("f", high=11) == 11
    assert reader.integer("none", 4) == 4
    assert FieldReader({"z": "-2"}, "").integer("z") == -2


def test_booleans_are_booleans() -> None:
    reader = FieldReader({"a": False, "b": "true", "c": 0}, "")
    assert reader.boolean("a") is False
    assert reader.boolean("none", True) is True
    assert problem(lambda: reader.boolean("b")) == "b: must be true or false, got a string"
    assert problem(lambda: reader.boolean("c")) == "c: must be true or false, got an integer"


def test_durations_and_sizes_name_the_field() -> None:
    reader = FieldReader({"t": "1500ms", "bad": "soon", "short": "1ms", "s": "2Mi",
                          "sbad": "lots"}, "x")
    assert reader.duration("t") == 1.5
    assert reader.duration("none", 9.0) == 9.0
    assert problem(lambda: reader.duration("bad")).startswith("x.bad: ")
    assert problem(lambda: reader.duration("short", minimum=0.5)) == \
        "x.short: must be at least 0.5s, got '1ms'"
    assert reader.duration("short", minimum=0.001) == 0.001
    assert reader.size("s") == 2 * 2**20
    assert reader.size("none", 7) == 7
    assert problem(lambda: reader.size("sbad")).startswith("x.sbad: ")


def test_choices_name_the_options() -> None:
    reader = FieldReader({"m": "fork", "x": "spawn"}, "spec")
    assert reader.choice("m", ("http", "fork")) == "fork"
    assert problem(lambda: reader.choice("x", iter(("http", "fork")))) == \
        "spec.x: must be one of http, fork, got 'spawn'"
    assert reader.choice("none", ("a", "b"), "a") == "a"


def test_string_lists_name_the_bad_item() -> None:
    reader = FieldReader({"l": ["a", "b"], "n": "a", "m": ["a", 2]}, "spec")
    assert reader.string_list("l") == ("a", "b")
    assert reader.string_list("none", ()) == ()
    assert problem(lambda: reader.string_list("n")) == \
        "spec.n: must be a list of strings, got a string"
    assert problem(lambda: reader.string_list("m")) == "spec.m[1]: must be a string, got an integer"


def test_string_maps_turn_numbers_to_text_and_name_the_bad_entry() -> None:
    reader = FieldReader({"env": {"A": "x", "N": 3, "F": 1.5}, "bad": ["x"],
                          "b": {"K": True}, "k": {"": "x"}, "o": {"K": None}}, "spec")
    assert reader.string_map("env") == {"A": "x", "N": "3", "F": "1.5"}
    assert reader.string_map("none", {}) == {}
    assert problem(lambda: reader.string_map("bad")) == \
        "spec.bad: must be a mapping of strings, got a list"
    assert problem(lambda: reader.string_map("b")) == "spec.b.K: must be a string, got a boolean"
    assert problem(lambda: reader.string_map("o")) == "spec.o.K: must be a string, got null"
    assert problem(lambda: reader.string_map("k")) == \
        "spec.k: keys must be non-empty strings, got ''"


def test_sections_nest_paths_and_refuse_unknown_keys() -> None:
    reader = FieldReader({"outer": {"inner": "x", "typo": 1}}, "spec")

    def build(section: FieldReader) -> str:
        return section.string("inner")
    assert problem(lambda: reader.section("outer", build)) == "spec.outer.typo: unknown field"
    reader.finish()                                   # outer was used
    empty = object()
    reader = FieldReader({"a": {}, "b": None, "c": {"inner": "y"}}, "")
    assert reader.section("a", build, empty) is empty
    assert reader.section("b", build, empty) is empty
    assert reader.section("c", build, empty) == "y"
    assert reader.section("missing", lambda s: len(s.data)) == 0
    assert problem(lambda: FieldReader({"a": 1, "b": 2}, "top").finish()) == \
        "top.a: unknown field"


def test_an_empty_section_that_is_not_a_mapping_is_still_refused() -> None:
    reader = FieldReader({"a": []}, "spec")
    assert problem(lambda: reader.section("a", lambda s: 1, "empty")) == \
        "spec.a: must be a mapping, got a list"


def test_another_error_class_is_raised_for_every_problem() -> None:
    class SpecError(FieldError):
        pass

    reader = FieldReader({"a": 1, "s": {"x": 1}}, "", SpecError)
    with pytest.raises(SpecError):
        reader.string("a")
    with pytest.raises(SpecError):
        reader.section("s", lambda s: s.string("x"))
    with pytest.raises(SpecError):
        FieldReader([], "", SpecError)


def test_a_present_value_is_read_even_when_a_default_is_given() -> None:
    reader = FieldReader({"i": "+7", "t": "500ms", "s": "2Ki", "l": ["a"], "m": {"k": 1},
                          "x": "X7", "map": {"a": 1}}, "")
    assert reader.integer("i", 0) == 7
    assert reader.duration("t", 9.0) == 0.5                    # no minimum by default
    assert reader.size("s", 0) == 2048
    assert reader.string_list("l", ()) == ("a",)
    assert reader.string_map("m", {}) == {"k": "1"}
    assert problem(lambda: reader.integer("x")) == "x: must be an integer, got a string"
    assert problem(lambda: reader.string("map")) == "map: must be a string, got a mapping"


def test_a_missing_value_is_the_default_as_given_never_parsed() -> None:
    reader = FieldReader({}, "")
    for read in (reader.integer, reader.duration, reader.size, reader.string_list,
                 reader.string_map, reader.string):
        assert read("none", None) is None
