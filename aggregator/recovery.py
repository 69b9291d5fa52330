"""Rebuild a round coordinator from its checkpoint and round journals (pure).

:func:`restore_coordinator` starts a coordinator from the checkpoint, then goes
through the journals of the rounds after it, oldest first:

* a journal whose round closed (a close record) is replayed and closed again as
  it closed before (this recovers a round whose checkpoint could not be saved);
* the journal of the round being collected is reopened: same round id, same
  announcement, the replies it holds counted again (each through the same
  validation and reducer as when it arrived, so the aggregate equals a
  recomputation from the accepted replies); the service re-announces it;
* a journal that cannot be used (no readable open record, another fleet, a base
  version or task that does not follow from the state so far) is skipped, but its
  round id is taken: the next round gets a fresh id the fleet has never answered.

What was ignored is counted by reason in :class:`Recovery`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from aggregator.coordinator import RoundCoordinator
from aggregator.state import Checkpoint, RoundJournal
from fedge.config import AggregatorConfig
from fedge.errors import MessageError
from fedge.messages import RoundAnnouncement, decode_message
from fedge.signing import Authenticator, StatusStamps
from fedge.strategies import ServerStep, Strategy

__all__ = ["Recovery", "restore_coordinator"]


@dataclass
class Recovery:
    """What :func:`restore_coordinator` did with the journals.

    ``resumed``: the round reopened for collection (None: none); ``replayed``: closed
    rounds applied again; ``skipped``: journals, records and replies ignored, by reason.
    """

    resumed: int | None = None
    replayed: list[int] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def _unusable(
    coord: RoundCoordinator, journal: RoundJournal
) -> tuple[str | None, RoundAnnouncement | None]:
    """Why ``journal`` cannot continue ``coord``'s state (or None), and its announcement."""
    if journal.announcement is None:
        return "journal_unusable", None
    try:
        ann = decode_message(RoundAnnouncement, journal.announcement)
    except MessageError:
        return "journal_bad_announcement", None
    if ann.fleet != coord.config.fleet or ann.round_id != journal.round_id:
        return "journal_bad_announcement", None
    if ann.round_id <= coord.last_round_id:
        return "journal_round_not_newer", None
    if ann.base_version != coord.version or ann.task != coord.next_task():
        return "journal_does_not_follow", None
    return None, ann


def restore_coordinator(
    config: AggregatorConfig,
    *,
    strategy: Strategy | ServerStep,
    checkpoint: Checkpoint,
    journals: Sequence[RoundJournal],
    trainable: Sequence[str],
    authenticator: Authenticator | None = None,
    status_stamps: StatusStamps | None = None,
) -> tuple[RoundCoordinator, Recovery]:
    """A coordinator in the state the journals say it was in after ``checkpoint``.

    Journal entries were verified before they were journaled, so they are replayed
    without checking their signatures again (the keys may have rotated since).
    """
    coord = RoundCoordinator(
        config,
        strategy=strategy,
        initial=checkpoint,
        trainable=trainable,
        authenticator=authenticator,
        status_stamps=status_stamps,
    )
    recovery = Recovery()
    for journal in sorted(journals, key=lambda j: j.round_id):
        if journal.round_id <= checkpoint.round_id:
            continue  # covered by the checkpoint: nothing to do (left for pruning)
        recovery.skipped.update(journal.problems)
        problem, ann = _unusable(coord, journal)
        if problem is not None or ann is None:
            recovery.skipped[problem or "journal_unusable"] += 1
            # The round id was (or may have been) announced: never reuse it.
            coord.last_round_id = max(coord.last_round_id, journal.round_id)
            continue
        if coord.open is not None:
            # An earlier round never closed durably, yet a later one followed it: that
            # one failed (it changed nothing) and the later journal supersedes it.
            recovery.skipped["journal_unclosed_round"] += 1
        coord.resume(ann, journal.expected)
        for entry in journal.entries:
            reason = coord.replay(entry.topic, entry.payload)
            if reason is not None:
                recovery.skipped[f"replay_{reason}"] += 1
        if journal.closed is not None:
            coord.close_replayed(journal.closed.ts)
            recovery.replayed.append(journal.round_id)
            recovery.resumed = None
        else:
            recovery.resumed = journal.round_id
    return coord, recovery
