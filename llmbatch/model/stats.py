"""The live counters of a run, and why it stopped.

:class:`RunStats` is read by the display a few times a second instead of an event per line. Its
fields have one writer each: the resolver the line counters (``read``, ``done``, ``written``, hits,
results), the executor the call counters (calls, retries, in flight, tokens, money, pace), the
command line ``total`` and ``workers_lost``. :class:`StopReason` decides the exit code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Lookups", "RunStats", "StopReason"]


class StopReason(enum.Enum):
    """Why a run ended before its last line; it decides the exit code."""

    INTERRUPTED = "interrupted"  # a signal (Ctrl-C, SIGTERM, SIGHUP): calls in flight were finished
    BUDGET = "budget"  # --max-cost: the next call could not fit, even alone
    FATAL = "fatal"  # what every line would share (a bad key, an unknown model), or nowhere to keep answers
    ERROR = "error"  # something around the calls failed (the results file, a changed input)
    PENDING = "pending"  # --batch-api --no-wait: jobs submitted or still running; a rerun collects
    HELD = "held"  # a live run met a line that a Batch-API job not collected yet holds (paid there)


@dataclass(slots=True)
class Lookups:
    """One model's cache lookups: lines answered from the cache, calls made, and what the hits
    would have cost as calls. A run counts them per ``provider:model``; a store adds them up over
    its life (``cache stats``)."""

    hits: int = 0
    misses: int = 0
    saved_usd: float = 0.0
    #: Of ``hits``, those served by a near-identical prompt's answer (``--semantic``), and their savings.
    semantic: int = 0
    semantic_saved_usd: float = 0.0

    def add(self, other: Lookups) -> None:
        self.hits += other.hits
        self.misses += other.misses
        self.saved_usd += other.saved_usd
        self.semantic += other.semantic
        self.semantic_saved_usd += other.semantic_saved_usd


@dataclass
class RunStats:
    """Live counters of one run. ``hits`` counts lines answered from the cache, ``coalesced``
    lines that waited for an identical call in flight, ``calls`` calls started (misses).
    ``done`` counts lines answered, in whatever order; ``written`` those written in input order."""

    total: int | None = None
    read: int = 0  # lines taken from the input so far
    done: int = 0
    ok: int = 0
    errors: int = 0
    hits: int = 0
    semantic_hits: int = 0  # of ``hits``: answered by a near-identical prompt's answer (--semantic)
    coalesced: int = 0
    calls: int = 0
    retries: int = 0
    in_flight: int = 0
    waiting: int = 0  # lines waiting for an answer another run sharing the cache is making
    prompt_tokens: int = 0
    completion_tokens: int = 0
    written: int = 0
    truncated: int = 0  # lines whose answer was cut off at max_tokens
    rate_limited: int = 0  # 429s received
    throttled: bool = False  # a budget is paused after a 429 or an exhausted window
    pace_rpm: int | None = None  # the limits being paced at, when known
    pace_tpm: int | None = None
    concurrency_limit: int | None = None  # calls currently allowed in flight (after backoff)
    spent_usd: float = 0.0  # what this run's calls cost (priced calls only)
    saved_usd: float = 0.0  # what the lines answered from the cache cost when first paid
    deduplicated_usd: float = 0.0  # what the duplicates that shared a call would have cost
    unpriced_calls: int = 0  # calls whose model genai-prices does not know
    unpriced_models: set[str] = field(default_factory=set)
    #: Per ``provider:model`` of the lines (the store files them under its tags): what the run
    #: adds to the store's lifetime counters. ``hits`` and ``saved_usd`` above are their sums;
    #: misses are the calls made.
    lookups: dict[str, Lookups] = field(default_factory=dict)
    #: What this run's answered calls cost, per way the model was chosen (``"route N"``, ``"line"``,
    #: ``"--model"``) and per ``provider:model`` that answered (fallbacks and escalations included).
    spent_by_route: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Batch-API jobs this run submitted, and every job it waits on as the display shows it.
    batch_submitted: int = 0
    #: Answers of batch-job lines that this run's input no longer has, stored for a later run.
    unclaimed_kept: int = 0
    batch_jobs: dict[str, Any] = field(default_factory=dict)
    workers_lost: int = 0  # worker processes that died during the run (their calls went to the others)
    #: --workers auto chose none only because one CPU is available (the run says so)
    one_cpu: bool = False
    started_at: float = 0.0
    finished_at: float | None = None
    stopped: str | None = None  # why the run ended early, if it did, for people ...
    stop_reason: StopReason | None = None  # ... and for the exit code

    def elapsed(self, now: float) -> float:
        if not self.started_at:  # stopped before it began (a Ctrl-C while starting): no time of its own
            return 0.0
        return (self.finished_at or now) - self.started_at

    @property
    def complete(self) -> bool:
        return self.stopped is None and (self.total is None or self.written == self.total)

    @property
    def fatal(self) -> bool:
        return self.stop_reason in (StopReason.FATAL, StopReason.ERROR)

    @property
    def budget_reached(self) -> bool:
        return self.stop_reason is StopReason.BUDGET
