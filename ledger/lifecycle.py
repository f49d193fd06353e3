"""The lifecycle of an (item, sample): when it is in flight, done, failed -- decided here only.

The index (``index.py``), both folds (``projections/fold.py``, ``projections/conversations.py``),
the failures projection, the Batch API writer and re-parse all ask ``transition`` (or its
table, ``STEP``) what an event does to an item; none decides it on its own. Five copies of
this rule drifted apart before it lived here.

States (the values are stored in the index: never renumber them)::

    PENDING    no event yet (or none that counts)
    IN_FLIGHT  a request was sent, or a reply arrived, and no parse or final failure closed it
    DONE       a parse closed it: the item is *finished*, with a reply
    FAILED     a final failure closed it: *finished*, without one (a resume retries it
               unless --skip-failed)

The rules, per kind of event:

* a request (``started``) puts any item in flight: a first attempt, a resume's retry of a
  failed item, or a new attempt after it was done;
* a reply (``response``) also puts any item in flight, even one whose request is not in the
  log (lost with a damaged frame that a repair cut): the reply was paid for and is durable,
  so it counts; its parse, in the same commit group, finishes it;
* a parse finishes only an item in flight (a re-parse's ``parsed`` of a done item changes
  nothing; a parse whose reply is not in the log finishes nothing);
* a final failure finishes any item that is not failed already as failed (one refused
  before any request, --max-context, has no other event); a retryable one only keeps an
  item in flight, and is ignored otherwise.

The folds keep only the items in flight and the failed ones (their memory grows with what is
unfinished, not with the run), so a done item and one never seen must meet every event
alike: ``STEP[DONE]`` and ``STEP[PENDING]`` differ only where both stay where they are.
``tests/test_lifecycle.py`` checks that, and that the index and the folds agree on every
sequence of events.
"""

from __future__ import annotations

from collections.abc import Container
from enum import IntEnum
from typing import Any

from .events import Event, Failed, Parsed, ResponseView, Started

__all__ = ["State", "PENDING", "IN_FLIGHT", "DONE", "FAILED", "STATE_NAMES", "Kind", "STARTED", "REPLIED",
           "PARSED", "RETRYABLE", "GAVE_UP", "STEP", "kind_of", "transition", "unopened"]


class State(IntEnum):
    PENDING = 0
    IN_FLIGHT = 1
    DONE = 2
    FAILED = 3


PENDING, IN_FLIGHT, DONE, FAILED = State.PENDING, State.IN_FLIGHT, State.DONE, State.FAILED
STATE_NAMES = ("pending", "in_flight", "done", "failed")  # index by State


class Kind(IntEnum):
    """What an item event is, as far as the lifecycle cares."""

    STARTED = 0
    REPLIED = 1
    PARSED = 2
    RETRYABLE = 3  # a failed attempt that will be retried (``final`` false)
    GAVE_UP = 4  # a final failure


STARTED, REPLIED, PARSED, RETRYABLE, GAVE_UP = Kind.STARTED, Kind.REPLIED, Kind.PARSED, Kind.RETRYABLE, Kind.GAVE_UP

# STEP[state][kind]: the state after an event of that kind. The one table every reader uses;
# a tuple lookup, because the folds consult it for every event of a rebuild.
STEP: tuple[tuple[State, ...], ...] = (
    #           STARTED    REPLIED    PARSED     RETRYABLE  GAVE_UP
    (IN_FLIGHT, IN_FLIGHT, PENDING, PENDING, FAILED),  # PENDING
    (IN_FLIGHT, IN_FLIGHT, DONE, IN_FLIGHT, FAILED),  # IN_FLIGHT
    (IN_FLIGHT, IN_FLIGHT, DONE, DONE, FAILED),  # DONE
    (IN_FLIGHT, IN_FLIGHT, FAILED, FAILED, FAILED),  # FAILED
)


def kind_of(event: Event) -> Kind | None:
    """The event's kind, or None for an event that is no item's (run and session events)."""
    cls = event.__class__
    if cls is Started:
        return STARTED
    if issubclass(cls, ResponseView):
        return REPLIED
    if cls is Parsed:
        return PARSED
    if cls is Failed:
        return GAVE_UP if event.final else RETRYABLE  # type: ignore[attr-defined]
    return None


def unopened(failed: Container[Any], key: Any) -> State:
    """The state of an item a fold holds no open record of: failed if it is among the
    fold's failed ones, else pending -- a done item is forgotten and meets every event as an
    unseen one (the table above is written so that this is the same thing)."""
    return FAILED if key in failed else PENDING


def transition(state: State, event: Event) -> State:
    """The item's state after ``event`` (one of its own events; any other leaves it as is)."""
    kind = kind_of(event)
    return state if kind is None else STEP[state][kind]
