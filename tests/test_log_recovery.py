"""Torn tails are cut (and saved) on open; damage before the tail is corruption, never skipped."""

from __future__ import annotations

import os
import random

import msgspec
import pytest

from llm_ledger.ledger.errors import CorruptLogError
from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, Started, Usage
from llm_ledger.ledger.maintenance import repair_log, verify_log
from llm_ledger.ledger.reader import iter_events, iter_frames, log_end
from llm_ledger.ledger.writer import LogWriter

GROUPS = [
    [RunStarted(run_id="r-ü", items=3, config={"model": "m", "samples": 1})],
    [Started(item_id="q1", request={"prompt": "Grüße, 世界"}), Started(item_id="q2", request={"prompt": "2+2?"})],
    [Response(item_id="q1", text="こんにちは" * 5, usage=Usage(prompt_tokens=3, completion_tokens=7, total_tokens=10))],
    [Parsed(item_id="q1", value={"answer": "B", "scores": [0.1, 0.9]}), Failed(item_id="q2", message="boom", status=500)],
    [Started(item_id="q3", request={"prompt": "last one"})],
    [Response(item_id="q3", text="🙂 fin", finish_reason="stop"), Parsed(item_id="q3", value=4)],
]


@pytest.fixture
def pristine(tmp_path):
    """A clean log of six frames: (bytes, frames, events)."""
    log = str(tmp_path / "pristine" / "events.log")
    os.makedirs(os.path.dirname(log))
    with LogWriter.open(log) as writer:
        for group in GROUPS:
            writer.append_many(group)
    frames = list(iter_frames(log))
    assert [len(f.events) for f in frames] == [len(g) for g in GROUPS]
    with open(log, "rb") as f:
        data = f.read()
    return data, frames, [e for f in frames for e in f.events]


def place(tmp_path, name: str, data: bytes) -> str:
    """Write ``data`` as the events.log of a fresh run directory."""
    os.makedirs(tmp_path / name)
    log = str(tmp_path / name / "events.log")
    with open(log, "wb") as f:
        f.write(data)
    return log


def read_until_error(log: str):
    got = []
    try:
        for event in iter_events(log):
            got.append(event)
    except CorruptLogError as exc:
        return got, exc
    return got, None


# -- a torn last frame -----------------------------------------------------------------


def test_truncating_anywhere_inside_the_last_frame_keeps_exactly_the_complete_frames(tmp_path, pristine):
    data, frames, events = pristine
    last = frames[-1]
    kept = events[: -len(last.events)]
    for cut in range(last.offset, last.end):
        log = place(tmp_path, f"cut{cut}", data[:cut])
        at = f"cut at byte {cut}"
        assert [e.seq for e in iter_events(log)] == [e.seq for e in kept], at  # readers stop quietly
        writer = LogWriter.open(log)
        try:
            rec = writer.recovered
            assert (rec.end, rec.last_seq, rec.cut_bytes) == (last.offset, kept[-1].seq, cut - last.offset), at
            if cut > last.offset:
                assert rec.saved_to == log + ".broken", at
                with open(rec.saved_to, "rb") as f:
                    assert f.read() == data[last.offset : cut], at
            else:
                assert rec.saved_to == "" and not os.path.exists(log + ".broken"), at
            assert os.path.getsize(log) == last.offset, at
            new = writer.append(Started(item_id="after"))
            assert new.seq == kept[-1].seq + 1, at
        finally:
            writer.close()
        assert list(iter_events(log)) == kept + [new], at


def test_recovery_saves_to_a_new_broken_file_when_one_exists(tmp_path, pristine):
    data, frames, events = pristine
    log = place(tmp_path, "run", data[: frames[-1].end - 3])
    with open(log + ".broken", "wb") as f:
        f.write(b"older")
    writer = LogWriter.open(log)
    writer.close()
    assert writer.recovered.saved_to == log + ".broken.1"
    with open(log + ".broken", "rb") as f:
        assert f.read() == b"older"
    with open(log + ".broken.1", "rb") as f:
        assert f.read() == data[frames[-1].offset : frames[-1].end - 3]


@pytest.mark.parametrize("kind", ["zeros", "random", "magics", "half frame", "frame header"])
def test_junk_after_the_last_frame_is_a_torn_tail_not_corruption(tmp_path, pristine, kind):
    data, frames, events = pristine
    seed = 1234
    rng = random.Random(seed)
    junk = {
        "zeros": bytes(4096),
        "random": rng.randbytes(3000),
        "magics": b"LGF1" + rng.randbytes(40) + b"LGFE" + b"\x20\x00\x00\x00LGFE" + rng.randbytes(9),
        "half frame": data[frames[3].offset : (frames[3].offset + frames[3].end) // 2],
        "frame header": data[frames[3].offset : frames[3].offset + 24],
    }[kind]
    log = place(tmp_path, "run", data + junk)
    assert list(iter_events(log)) == events, f"seed {seed}"
    assert log_end(log) == len(data)
    with LogWriter.open(log) as writer:
        assert writer.recovered.cut_bytes == len(junk)
        assert writer.append(Started(item_id="next")).seq == events[-1].seq + 1
    with open(log + ".broken", "rb") as f:
        assert f.read() == junk
    assert [e.seq for e in iter_events(log)] == list(range(1, len(events) + 2))


# -- damage before the tail ------------------------------------------------------------

POSITIONS = {
    "frame magic": lambda f: f.offset + 1,
    "length": lambda f: f.offset + 4,
    "first seq": lambda f: f.offset + 8,
    "count": lambda f: f.offset + 16,
    "crc": lambda f: f.offset + 22,
    "payload start": lambda f: f.offset + 24,
    "payload middle": lambda f: (f.offset + 24 + f.end - 8) // 2,
    "payload end": lambda f: f.end - 9,
    "trailer length": lambda f: f.end - 8,
    "trailer magic": lambda f: f.end - 1,
}


@pytest.mark.parametrize("frame_no", [1, 3, 4])
@pytest.mark.parametrize("where", sorted(POSITIONS))
def test_a_flipped_byte_before_the_tail_is_corruption_at_that_frames_offset(tmp_path, pristine, frame_no, where):
    data, frames, events = pristine
    bad = frames[frame_no]
    before = [e for f in frames[:frame_no] for e in f.events]
    damaged = bytearray(data)
    damaged[POSITIONS[where](bad)] ^= 0xFF
    log = place(tmp_path, "run", bytes(damaged))

    got, exc = read_until_error(log)
    assert exc is not None, "the damaged frame was skipped or passed"
    assert exc.offset == bad.offset
    assert got == before  # what precedes the damage is yielded first
    with pytest.raises(CorruptLogError) as caught:  # ...and so is reading from any earlier frame
        list(iter_events(log, frames[frame_no - 1].offset))
    assert caught.value.offset == bad.offset

    report = verify_log(log)
    assert not report.ok
    assert [p.offset for p in report.problems] == [bad.offset]  # one flipped byte, one problem
    assert report.end == bad.offset
    assert report.frames == len(frames) - 1  # every later frame is still found and checked

    fixed = repair_log(log)  # keeps every frame it can read: those after the damage too, renumbered
    after = [e for f in frames[frame_no + 1:] for e in f.events]
    assert (fixed.kept_events, fixed.salvaged_events) == (len(before) + len(after), len(after))
    assert fixed.saved_to == log + ".broken"
    with open(fixed.saved_to, "rb") as f:
        assert f.read() == bytes(damaged[bad.offset :])
    with open(log, "rb") as f:
        repaired = f.read()
    assert repaired[: bad.offset] == data[: bad.offset] and len(repaired) == fixed.kept_bytes
    kept = list(iter_events(log))
    assert kept[: len(before)] == before
    lost = len(bad.events)
    assert [msgspec.structs.replace(e, seq=e.seq + lost) for e in kept[len(before):]] == after  # only renumbered
    assert [e.seq for e in kept] == list(range(1, len(kept) + 1))
    assert verify_log(log).ok
    with LogWriter.open(log) as writer:
        assert writer.recovered.cut_bytes == 0
        assert writer.append(Started(item_id="resumed")).seq == len(kept) + 1
    assert [e.seq for e in iter_events(log)] == list(range(1, len(kept) + 2))


def test_the_opening_writer_does_not_cut_damage_before_the_tail(tmp_path, pristine):
    """Opening checks the tail only: damage in the middle stays for verify to report."""
    data, frames, events = pristine
    damaged = bytearray(data)
    damaged[frames[2].offset + 30] ^= 0x01
    log = place(tmp_path, "run", bytes(damaged))
    with LogWriter.open(log) as writer:
        assert writer.recovered.cut_bytes == 0
        assert writer.last_seq == events[-1].seq
    with open(log, "rb") as f:
        assert f.read() == bytes(damaged)
    assert [p.offset for p in verify_log(log).problems] == [frames[2].offset]


def test_verify_reports_each_separate_damage(tmp_path, pristine):
    data, frames, events = pristine
    damaged = bytearray(data)
    damaged[frames[1].offset + 30] ^= 0x01
    damaged[frames[4].offset + 2] ^= 0x01
    log = place(tmp_path, "run", bytes(damaged))
    report = verify_log(log)
    assert [p.offset for p in report.problems] == [frames[1].offset, frames[4].offset]
    assert report.end == frames[1].offset


def test_a_clean_log_verifies_ok(tmp_path, pristine):
    data, frames, events = pristine
    report = verify_log(place(tmp_path, "run", data))
    assert report.ok and report.problems == []
    assert (report.frames, report.events, report.last_seq) == (len(frames), len(events), events[-1].seq)
    assert (report.end, report.size, report.tail_bytes) == (len(data), len(data), 0)
    fixed = repair_log(place(tmp_path, "run2", data))
    assert (fixed.kept_bytes, fixed.dropped_bytes, fixed.saved_to) == (len(data), 0, "")


def test_a_missing_frame_is_a_seq_gap_for_readers_and_verify(tmp_path, pristine):
    data, frames, events = pristine
    gone = frames[2]
    log = place(tmp_path, "run", data[: gone.offset] + data[gone.end :])
    got, exc = read_until_error(log)
    assert got == [e for f in frames[:2] for e in f.events]
    assert exc is not None and exc.offset == gone.offset and "seq gap" in exc.reason
    report = verify_log(log)
    assert [(p.offset, p.reason) for p in report.problems] == [(gone.offset, f"seq gap: expected {gone.first_seq}, found {frames[3].first_seq}")]
    assert report.end == gone.offset
