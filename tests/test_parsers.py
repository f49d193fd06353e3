"""Parsers (what a reply means) and scoring (does it match `expected`), in-process."""

from __future__ import annotations

import textwrap

import pytest

from llm_ledger.ledger.errors import InputError
from llm_ledger.runners.parsers import make_parser
from llm_ledger.projections.scoring import normalize, score


def parsed(spec: str, text: str):
    result = make_parser(spec)(text)
    assert result.ok, result
    return result.value


# -- choice ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,letter", [
    ("The answer is (B)", "B"),
    ("The answer is (B).", "B"),
    ("answer: c", "C"),
    ("Answer:D", "D"),
    ("Let me think.\n(A) is wrong, (C) is right.", "C"),
    ("Reasoning first...\nB\n", "B"),
    ("I pick D.", "D"),
    ("The correct option is J", "J"),
])
def test_choice(text, letter):
    assert parsed("choice", text) == letter


def test_choice_without_a_letter_is_a_failed_parse_not_a_crash():
    result = make_parser("choice")("no idea, sorry :(")
    assert result.ok is False and result.value is None and result.error.startswith("NoMatch")


@pytest.mark.parametrize("text,letter", [
    ("The answer is a tricky one, but I would pick (C).", "C"),
    ("B. I am quite sure.", "B"),
])
def test_choice_is_not_fooled_by_english_words(text, letter):
    assert parsed("choice", text) == letter


# -- number ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("The total is 1,234,567 dollars.", 1234567),
    ("It costs $3.50/kg", 3.5),
    ("-12 degrees", -12),
    ("about 1.5e3 m", 1500.0),
    ("the answer is 42.", 42),
    ("10 apples and 20 pears", 20),
    ("100%", 100),
    ("1,000.5 km", 1000.5),
])
def test_number(text, value):
    got = parsed("number", text)
    assert got == value and type(got) is type(value), (got, value)


def test_number_without_a_number_fails():
    result = make_parser("number")("none at all")
    assert (result.ok, result.error) == (False, "NoMatch: no number")


@pytest.mark.parametrize("text,value", [("Read pages 3-5", 5), ("Due 2024-01-15", 15)])
def test_number_hyphen_is_not_a_minus_sign(text, value):
    assert parsed("number", text) == value


# -- json ----------------------------------------------------------------------------------


def test_json_field_paths():
    fenced = 'Here you go:\n```json\n{"answer": {"values": [10, 20, {"x": "y"}]}, "ok": true}\n```\nBye'
    assert parsed("json:answer.values.1", fenced) == 20
    assert parsed("json:answer.values.2.x", fenced) == "y"
    assert parsed("json:ok", fenced) is True
    assert parsed("json", 'Sure: {"a": 1, "b": [2]} -- done') == {"a": 1, "b": [2]}
    assert parsed("json:b.0", 'Sure: {"a": 1, "b": [2]} trailing {"c": 3}') == 2


@pytest.mark.parametrize("spec,text,error", [
    ("json", "no json here", "JSONDecodeError"),
    ("json:missing", '{"a": 1}', "KeyError"),
    ("json:a.5", '{"a": [1]}', "IndexError"),
])
def test_json_failures_are_failed_parses(spec, text, error):
    result = make_parser(spec)(text)
    assert result.ok is False and result.error.startswith(error), result


# -- regex -----------------------------------------------------------------------------------


def test_regex_group_one_or_whole_match():
    assert parsed(r"regex:answer is (.+)$", "So... the answer is  Paris  ") == "Paris"
    assert parsed(r"regex:(\d+)-(\d+)", "range 3-5") == "3"
    assert parsed(r"regex:\d+", "a 12 b 34") == "12"
    assert parsed(r"regex:start(.*)end", "start\nmulti\nline\nend") == "multi\nline"  # DOTALL
    result = make_parser("regex:zzz")("abc")
    assert result.ok is False and "no match" in result.error


def test_regex_that_does_not_compile_is_bad_input():
    with pytest.raises(InputError, match=r"--parser regex:\("):
        make_parser("regex:(")


# -- yesno (the worked example of adding a parser kind: one function, one PARSERS line) --


@pytest.mark.parametrize("text,value", [
    ("Yes.", True),
    ("no", False),
    ("The statement is TRUE", True),
    ("No, wait... yes, it holds.", True),
    ("Yes at first, but on reflection: no.", False),
    ("false", False),
])
def test_yesno(text, value):
    assert parsed("yesno", text) is value


def test_yesno_needs_a_whole_word_and_takes_no_argument():
    result = make_parser("yesno")("yesterday nobody knew; y/n?")
    assert result.ok is False and result.error.startswith("NoMatch")
    p = make_parser("yesno")
    assert (p.spec, p.version) == ("yesno", "1")
    with pytest.raises(InputError, match="yesno"):  # the usage list names it
        make_parser("nonsense kind")
    with pytest.raises(InputError, match="No module named 'yesno'"):  # an argument: a user module
        make_parser("yesno:strict")


# -- text, module:function, bad specs -------------------------------------------------------


def test_text_strips():
    p = make_parser("text")
    assert (p.spec, p.version) == ("text", "1")
    assert p("  hello\n") == (True, "hello", None)


def test_module_function_parser(tmp_path, monkeypatch):
    (tmp_path / "ledger_test_user_parsers.py").write_text(textwrap.dedent("""
        import json

        def shout(text):
            return text.strip().upper()

        def strict(text):
            if "ok" not in text:
                raise ValueError("not ok: " + text)
            return json.dumps({"len": len(text)})

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    shout = make_parser("ledger_test_user_parsers:shout")
    assert shout.spec == "ledger_test_user_parsers:shout"
    assert shout(" hi there ") == (True, "HI THERE", None)
    strict = make_parser("ledger_test_user_parsers:strict")
    assert strict("ok!") == (True, '{"len": 3}', None)
    assert strict("nope") == (False, None, "ValueError: not ok: nope")
    with pytest.raises(InputError, match="not callable"):
        make_parser("ledger_test_user_parsers:NOT_CALLABLE")
    with pytest.raises(InputError, match="ledger_test_user_parsers:absent"):
        make_parser("ledger_test_user_parsers:absent")
    with pytest.raises(InputError, match="no_such_module_xyz"):
        make_parser("no_such_module_xyz:f")


@pytest.mark.parametrize("spec", ["bogus", "choice:x", "number:1", "text:x", "", "a b:c", "mod:fn-x"])
def test_bad_parser_specs(spec):
    with pytest.raises(InputError, match="--parser"):
        make_parser(spec)


# -- scoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected,want", [
    ("B", "b", True),
    ("  Paris. ", "paris", True),
    ("New   York", "new york", True),
    ('"Yes"', "yes", True),
    ("1,000", 1000, True),
    (1000, "1,000", True),
    (1000.0, 1000, True),
    (3.5, "3.50", True),
    ("x", ["y", "X"], True),
    (4, [3, "4"], True),
    ("z", ["y", "w"], False),
    ("Paris", "London", False),
    (True, True, True),
    ("anything", None, None),
    ("anything", "", None),
])
def test_score(value, expected, want):
    assert score(value, expected) is want


def test_a_failed_parse_is_wrong_when_there_is_an_answer_and_unscored_otherwise():
    assert score(None, "A", ok=False) is False
    assert score(None, None, ok=False) is None


def test_normalize():
    assert normalize(" The  Answer. ") == "the answer"
    assert normalize("1,234.5") == 1234.5
    assert normalize(7) == 7.0 and normalize(None) is None and normalize(False) is False


def test_a_regex_without_a_pattern_is_refused():
    """It would match every reply at its start: every answer the empty string, unsaid."""
    for spec in ("regex:", "regex"):
        with pytest.raises(InputError, match="--parser regex: needs a pattern"):
            make_parser(spec)
