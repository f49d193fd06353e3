"""The terminal's text, in-process (issue 15): the numbers module every surface formats
through, the progress display laid out at given widths, the run header's plurals and subset,
the lines `show` gives each request, and the help of every option. What a person sees in a
real terminal is tested in test_terminal_screen.py."""

from __future__ import annotations

import re

import pytest
import typer

from llm_ledger.cli.app import _register, app
from llm_ledger.cli.help_format import ORDER, conventional
from llm_ledger.cli.progress import RunDisplay
from llm_ledger.cli.run_cmd import dataset_extent
from llm_ledger.projections import numbers as num
from llm_ledger.projections.show import attempt_lines
from llm_ledger.runners.runner import Progress


def test_numbers_have_fixed_precision_and_units():
    assert [num.usd(v) for v in (0.00724, 0, 0.5, 1234.5, None)] == ["$0.0072", "$0.0000", "$0.5000", "$1,234.5000", "-"]
    assert [num.ms(v) for v in (0.0234, 0.0004, 0.0, 1.5, None)] == ["23 ms", "<1 ms", "0 ms", "1,500 ms", "-"]
    assert [num.per_second(v) for v in (12.345, 0.0, None)] == ["12.3/s", "0.0/s", "-"]
    assert num.per_second(6.307, "items") == "6.3 items/s"
    assert [num.percent(v) for v in (0.8, 1.0, 0.12345, None)] == ["80.0%", "100.0%", "12.3%", "-"]
    assert [num.duration(v) for v in (1.586, 125, 3720)] == ["1.6 s", "2m 05s", "1h 02m"]
    assert [num.clock(v) for v in (42, 725, 3723, None)] == ["0:42", "12:05", "1:02:03", "-"]
    assert [num.plural(n, "item") for n in (0, 1, 2, 100_000)] == ["0 items", "1 item", "2 items", "100,000 items"]
    assert [num.p_value(v) for v in (1.0, 0.0312, 0.0078125, 0.00001)] == ["1.0000", "0.0312", "0.0078", "1.000e-05"]


@pytest.mark.parametrize(("args", "said"), [
    ((10, None, None, 1), "10 items"),
    ((1, None, None, 1), "1 item"),
    ((100_000, 50, 7, 1), "50 of 100,000 items (--limit 50, seed 7)"),
    ((100, 50, None, 3), "50 of 100 items (--limit 50, the first 50) x 3 samples"),
    ((10, 20, 3, 1), "10 items"),  # a limit past the end selects nothing less
    ((1, None, None, 2), "1 item x 2 samples"),
])
def test_run_header_extent_has_plurals_and_the_subset(args, said):
    assert dataset_extent(*args) == said


def _display(**fields) -> RunDisplay:
    display = RunDisplay((2.5, 10.0), 32)
    p = Progress(total=1000, done=370, failed=3, retrying=12, in_flight=16, limit=24, prompt_tokens=51_000,
                 completion_tokens=8_123, **fields)
    display.update(Progress(total=1000), now=100.0)
    display.update(p, now=110.0)
    return display


def test_display_at_a_wide_terminal_is_one_line_with_every_extra():
    lines = [t.plain for t in _display().lines(200)]
    assert len(lines) == 1 and len(lines[0]) <= 200
    assert re.fullmatch(r"━{30,} +373/1,000   37%  37\.3/s  ETA 0:17  failed 3  retries 12  in flight 16  concurrency 24 of 32 \(adaptive\)  "
                        r"tokens 59,123  cost \$0\.2087, projected \$0\.5596", lines[0]), lines[0]


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_display_puts_the_essentials_first_and_whole_extras_after(width):
    lines = [t.plain for t in _display().lines(width)]
    assert len(lines) == 2 and all(len(line) <= width for line in lines), lines
    assert re.search(r"373/1,000 +37% +37\.3/s +ETA 0:17$", lines[0]), lines[0]
    extras = ["failed 3", "retries 12", "in flight 16", "concurrency 24 of 32 (adaptive)", "tokens 59,123",
              "cost $0.2087, projected $0.5596"]
    shown = lines[1].split("  ")
    assert shown == extras[:len(shown)] and len(shown) >= 2, lines[1]


def test_display_too_narrow_for_a_bar_keeps_the_figures_and_says_a_stop_on_its_own_line():
    lines = [t.plain for t in _display(stopping=True, paused=True).lines(30)]
    assert lines[0] == "373/1,000  37%  37.3/s", lines  # no bar; whole figures only
    assert "endpoint down: paused, probing" in lines and any(line.startswith("stopping:") for line in lines)


def test_display_before_any_finish_has_no_rate_nor_eta():
    display = RunDisplay((None, None))
    display.update(Progress(total=50, in_flight=4), now=1.0)
    line = display.lines(80)[0].plain
    assert line.endswith(" 0/50    0%  -  ETA -"), line
    assert "cost" not in display.lines(200)[0].plain  # no price, no cost


def _ev(kind: str, seq: int, turn: int, **fields) -> dict:
    return {"type": kind, "seq": seq, "turn": turn, **fields}


def test_show_labels_a_turn_and_an_attempt_only_where_they_tell_something():
    ok = {"latency": 0.0234, "usage": {"prompt_tokens": 7, "completion_tokens": 4}, "finish_reason": "stop"}
    events = [_ev("started", 1, 0), _ev("response", 2, 0, **ok),
              _ev("started", 3, 1), _ev("failed", 4, 1, status=429, error_type="rate_limit", message="Error code: 429 - slow down",
                                        retryable=True, final=False),
              _ev("started", 5, 1), _ev("response", 6, 1, **{**ok, "finish_reason": "length"}),
              _ev("started", 7, 2), _ev("response", 8, 2, **ok), _ev("parsed", 9, 2, parser="json", ok=False, error="not JSON")]
    assert [tuple(line) for line in attempt_lines(events)] == [
        ("turn 1", "ok", "23 ms, 7 prompt + 4 completion tokens"),
        ("turn 2 attempt 1", "failed", "HTTP 429 rate_limit: slow down (retried)"),
        ("turn 2 attempt 2", "ok", "23 ms, 7 prompt + 4 completion tokens, finish reason length"),
        ("turn 3", "ok", "23 ms, 7 prompt + 4 completion tokens"),
        ("parse", "failed", "json: not JSON"),
    ]
    single = attempt_lines([_ev("started", 1, 0), _ev("response", 2, 0, **ok)])
    assert [line.label for line in single] == ["reply"]


def test_every_option_has_help_and_a_conventional_placeholder():
    _register()
    group = conventional(typer.main.get_command(app))
    assert list(group.commands) == list(ORDER)
    for name, command in group.commands.items():
        assert command.help and "O(1)" not in command.help and "DESIGN" not in command.help, name
        for param in command.params:
            assert (param.help or "").strip(), f"ledger {name}: {param.name} has no help"
            if not getattr(param, "is_flag", False):
                assert re.fullmatch(r"[A-Z_]+(\.\.\.)?( [A-Z_.]+)*( \.\.\.)?", param.metavar or ""), (name, param.name, param.metavar)


def test_show_says_a_failure_before_any_request():
    too_long = _ev("failed", 3, 1, error_type="context_too_long", message="over --max-context", retryable=False, final=True)
    events = [_ev("started", 1, 0), _ev("response", 2, 0, latency=0.01), too_long]
    assert [tuple(line)[:2] for line in attempt_lines(events)] == [("turn 1", "ok"), ("before sending", "failed")]
