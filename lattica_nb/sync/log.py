"""The accepted envelopes of one room's document, per author contiguous (sans-IO).

:class:`EnvelopeLog` is the room's state: for every author the envelopes
``1..n`` it has accepted, plus a bounded buffer of envelopes held back because
an earlier one of their author has not arrived. :meth:`EnvelopeLog.offer`
judges every envelope, whoever relayed it:

* it must belong to this document (room id, guid and epoch all equal) and be
  within :attr:`LogLimits.max_envelope_bytes`;
* an envelope equal (in signed content) to one accepted or held is a DUPLICATE,
  and costs no signature check;
* anything else must carry a valid signature by its author;
* a valid envelope whose (author, seq) is already taken by *different* signed
  content is an equivocation: REJECTED, the pair kept as proof
  (:meth:`EnvelopeLog.equivocations`), the author's held envelopes dropped and
  nothing newer from that author accepted. A forgery never gets an honest
  author flagged, because the signature is checked first;
* the next seq of its author is ACCEPTED, together with any held envelopes it
  makes contiguous; a later seq is HELD within :class:`LogLimits`, or DROPPED
  beyond them (the caller then asks a peer for the gap with a SYNC_STEP1).

Whether an accepted envelope's *update* may be applied to the document
(membership, write rules) is the room's decision, not the log's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ..errors import ConfigError, LocalProtocolError, VerificationError
from ..identity import PeerId
from .envelope import DEFAULT_MAX_ENVELOPE_BYTES, GUID_BYTES, Envelope, check_ids

__all__ = ["EnvelopeLog", "LogLimits", "OfferResult", "OfferStatus"]


@dataclass(frozen=True, slots=True)
class LogLimits:
    """Bounds on envelopes held back because an earlier one of their author is missing.

    ``max_held_per_author``: an envelope is held only if its seq is at most
    this far beyond the next one expected from its author. ``max_held_envelopes``
    and ``max_held_bytes`` (encoded sizes) bound all authors together. An
    envelope over a bound is dropped (:attr:`OfferStatus.DROPPED`); ask a peer
    for the gap with a SYNC_STEP1.
    """

    max_held_per_author: int = 256
    max_held_envelopes: int = 4096
    max_held_bytes: int = 8 * 1024 * 1024
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    """Larger envelopes are rejected, our own included: keep it at most the protocol's
    ``ProtocolLimits.max_envelope_bytes`` so that everything accepted can be sent."""

    def __post_init__(self) -> None:
        for name in ("max_held_per_author", "max_held_envelopes", "max_held_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"LogLimits.{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.max_envelope_bytes, int) or self.max_envelope_bytes < 1:
            raise ConfigError(
                f"LogLimits.max_envelope_bytes must be positive, got {self.max_envelope_bytes!r}"
            )


class OfferStatus(enum.Enum):
    ACCEPTED = "accepted"
    """Added to the log; :attr:`OfferResult.accepted` lists it and any held ones it released."""
    DUPLICATE = "duplicate"
    """Already accepted or already held (same signed content); nothing changed."""
    HELD = "held"
    """Valid, but an earlier envelope of its author is missing (:attr:`OfferResult.missing`)."""
    DROPPED = "dropped"
    """Not kept: a gap envelope beyond the hold bounds (its signature was not checked).
    Fetch the gap with a SYNC_STEP1."""
    REJECTED = "rejected"
    """Forged, for another document, from an equivocating author, or itself an equivocation."""


@dataclass(frozen=True, slots=True)
class OfferResult:
    """What :meth:`EnvelopeLog.offer` did with one envelope."""

    status: OfferStatus
    accepted: tuple[Envelope, ...] = ()
    """ACCEPTED: the envelope, then every held one it made contiguous, in seq order.
    Apply them to the document in this order."""
    missing: tuple[int, int] | None = None
    """HELD / DROPPED: the first and last seq (inclusive) of the author's first gap,
    the missing envelopes that keep it (and those held) from being accepted."""
    reason: str = ""
    equivocation: bool = False
    """REJECTED because the author signed two different envelopes with one seq."""


class _Author:
    __slots__ = ("envelopes", "held")

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.held: dict[int, Envelope] = {}


class EnvelopeLog:
    """The accepted envelopes of one document, per author contiguous from seq 1.

    ``guid`` may be None for a room being joined: nothing is accepted until
    :meth:`adopt` names the document (a session does so on its first handshake).
    """

    __slots__ = (
        "_authors",
        "_count",
        "_epoch",
        "_equivocations",
        "_guid",
        "_held_bytes",
        "_held_count",
        "_limits",
        "_room",
        "_stored_bytes",
    )

    def __init__(
        self,
        room: bytes,
        *,
        guid: bytes | None,
        epoch: int = 0,
        limits: LogLimits = LogLimits(),
    ) -> None:
        check_ids(room, bytes(GUID_BYTES) if guid is None else guid, epoch, LocalProtocolError)
        self._room = bytes(room)
        self._guid = None if guid is None else bytes(guid)
        self._epoch = epoch
        self._limits = limits
        self._authors: dict[PeerId, _Author] = {}
        self._equivocations: dict[PeerId, tuple[Envelope, Envelope]] = {}
        self._count = 0
        self._stored_bytes = 0
        self._held_bytes = 0
        self._held_count = 0

    @property
    def room(self) -> bytes:
        return self._room

    @property
    def guid(self) -> bytes | None:
        return self._guid

    @property
    def epoch(self) -> int:
        return self._epoch

    def adopt(self, guid: bytes, epoch: int) -> None:
        """Name the document of a log created without a guid (a room being joined)."""
        if self._guid is not None:
            raise LocalProtocolError("this envelope log already belongs to a document")
        check_ids(self._room, guid, epoch, LocalProtocolError)
        self._guid, self._epoch = bytes(guid), epoch

    def __len__(self) -> int:
        """Accepted envelopes (held ones not counted)."""
        return self._count

    @property
    def stored_bytes(self) -> int:
        """Encoded bytes of all accepted envelopes."""
        return self._stored_bytes

    @property
    def held_bytes(self) -> int:
        """Encoded bytes of the envelopes held back for a gap."""
        return self._held_bytes

    @property
    def held_count(self) -> int:
        return self._held_count

    def seq(self, author: PeerId) -> int:
        """The author's highest contiguous accepted seq (0 if none)."""
        entry = self._authors.get(author)
        return len(entry.envelopes) if entry is not None else 0

    def vector(self) -> dict[PeerId, int]:
        """Author -> highest contiguous seq, for every author with an accepted envelope."""
        return {a: len(e.envelopes) for a, e in self._authors.items() if e.envelopes}

    def get(self, author: PeerId, seq: int) -> Envelope | None:
        entry = self._authors.get(author)
        if entry is None or not 1 <= seq <= len(entry.envelopes):
            return None
        return entry.envelopes[seq - 1]

    def gaps(self) -> dict[PeerId, tuple[int, int]]:
        """Author -> (first, last) missing seq, for every author with held envelopes."""
        return {
            author: (len(entry.envelopes) + 1, min(entry.held) - 1)
            for author, entry in self._authors.items()
            if entry.held
        }

    def equivocations(self) -> dict[PeerId, tuple[Envelope, Envelope]]:
        """Author -> two valid envelopes it signed with the same seq: proof of misbehaviour."""
        return dict(self._equivocations)

    def envelopes(self) -> Iterator[Envelope]:
        """Every accepted envelope: authors in peer-id byte order, each in seq order."""
        for author in sorted(self._authors):
            yield from self._authors[author].envelopes

    def missing_for(
        self,
        vector: Mapping[PeerId, int],
        *,
        max_bytes: int | None = None,
        max_count: int | None = None,
    ) -> list[Envelope]:
        """Exactly the accepted envelopes a peer whose log is ``vector`` lacks.

        Ordered as :meth:`envelopes`. With ``max_bytes`` (encoded sizes) or
        ``max_count`` the list is cut to a prefix within the bound, but never
        to nothing while something is missing; every prefix extends the
        peer's log without gaps. Ask again with the vector advanced by what
        was sent for the next batch.
        """
        out: list[Envelope] = []
        total = 0
        for author in sorted(self._authors):
            envelopes = self._authors[author].envelopes
            for index in range(max(vector.get(author, 0), 0), len(envelopes)):
                envelope = envelopes[index]
                if out and (
                    (max_count is not None and len(out) >= max_count)
                    or (max_bytes is not None and total + envelope.size > max_bytes)
                ):
                    return out
                out.append(envelope)
                total += envelope.size
        return out

    # -- accepting ----------------------------------------------------------------------------

    def offer(self, envelope: Envelope) -> OfferResult:
        """Judge one envelope from anywhere (a peer, or our own new update)."""
        if self._guid is None:
            return _rejected("the room's document is not known yet (no guid)")
        if (envelope.room, envelope.guid, envelope.epoch) != (self._room, self._guid, self._epoch):
            return _rejected(
                f"envelope {envelope.seq} of {envelope.author} belongs to another document "
                f"(room, guid or epoch differ)"
            )
        if envelope.size > self._limits.max_envelope_bytes:
            return _rejected(
                f"envelope {envelope.seq} of {envelope.author} is {envelope.size} bytes, over the "
                f"limit of {self._limits.max_envelope_bytes}; write smaller updates"
            )
        author = envelope.author
        entry = self._authors.get(author)
        have = len(entry.envelopes) if entry is not None else 0
        if entry is not None and envelope.seq <= have:
            return self._compare(entry.envelopes[envelope.seq - 1], envelope)
        if author in self._equivocations:
            return _rejected(f"{author} signed conflicting envelopes; nothing more is accepted")
        held = entry.held.get(envelope.seq) if entry is not None else None
        if held is not None:
            return self._compare(held, envelope)
        if envelope.seq == have + 1:
            error = _forged(envelope)
            if error:
                return _rejected(error)
            entry = self._authors.setdefault(author, _Author())
            return OfferResult(OfferStatus.ACCEPTED, accepted=self._append(entry, envelope))
        lowest = min([envelope.seq, *entry.held]) if entry is not None else envelope.seq
        gap = (have + 1, lowest - 1)
        # Bounds before the signature: a flood of far-ahead envelopes costs no checks.
        reason = self._over_hold_bounds(envelope, have)
        if reason:
            return OfferResult(OfferStatus.DROPPED, missing=gap, reason=reason)
        error = _forged(envelope)
        if error:
            return _rejected(error)
        entry = self._authors.setdefault(author, _Author())
        entry.held[envelope.seq] = envelope
        self._held_count += 1
        self._held_bytes += envelope.size
        return OfferResult(OfferStatus.HELD, missing=gap)

    def _compare(self, kept: Envelope, envelope: Envelope) -> OfferResult:
        if kept.same_content(envelope):
            return OfferResult(OfferStatus.DUPLICATE)
        error = _forged(envelope)  # a forgery must never get an honest author flagged
        if error:
            return _rejected(error)
        self._equivocations.setdefault(envelope.author, (kept, envelope))
        entry = self._authors[envelope.author]
        self._held_count -= len(entry.held)
        self._held_bytes -= sum(held.size for held in entry.held.values())
        entry.held.clear()
        return OfferResult(
            OfferStatus.REJECTED,
            reason=f"{envelope.author} signed two different envelopes with seq {envelope.seq}",
            equivocation=True,
        )

    def _append(self, entry: _Author, envelope: Envelope) -> tuple[Envelope, ...]:
        accepted = [envelope]
        entry.envelopes.append(envelope)
        while (released := entry.held.pop(len(entry.envelopes) + 1, None)) is not None:
            self._held_count -= 1
            self._held_bytes -= released.size
            entry.envelopes.append(released)
            accepted.append(released)
        self._count += len(accepted)
        self._stored_bytes += sum(each.size for each in accepted)
        return tuple(accepted)

    def _over_hold_bounds(self, envelope: Envelope, have: int) -> str:
        limits = self._limits
        if envelope.seq - have - 1 > limits.max_held_per_author:
            return f"seq {envelope.seq} is too far ahead of {have} to hold"
        if self._held_count >= limits.max_held_envelopes:
            return f"{self._held_count} envelopes are already held"
        if self._held_bytes + envelope.size > limits.max_held_bytes:
            return f"{self._held_bytes} bytes of envelopes are already held"
        return ""

    def restore(self, envelopes: Iterable[Envelope], *, verify: bool = True) -> None:
        """Load envelopes kept on disk, each the next of its author (as written).

        ``verify=False`` skips signature checks for a file only we wrote.
        VerificationError names the first envelope that does not fit (the
        envelopes before it stay loaded).
        """
        for envelope in envelopes:
            if not verify:
                if self._guid is None or (envelope.room, envelope.guid, envelope.epoch) != (
                    self._room,
                    self._guid,
                    self._epoch,
                ):
                    raise VerificationError("stored envelope belongs to another document")
                entry = self._authors.setdefault(envelope.author, _Author())
                if envelope.seq == len(entry.envelopes) + 1 and not entry.held:
                    self._append(entry, envelope)
                    continue
            result = self.offer(envelope)
            if result.status not in (OfferStatus.ACCEPTED, OfferStatus.DUPLICATE):
                raise VerificationError(
                    f"stored envelope {envelope.seq} of {envelope.author} does not fit the log "
                    f"({result.status.value}{': ' + result.reason if result.reason else ''})"
                )


def _rejected(reason: str) -> OfferResult:
    return OfferResult(OfferStatus.REJECTED, reason=reason)


def _forged(envelope: Envelope) -> str:
    """Why the envelope's signature fails, or "" if it holds."""
    try:
        envelope.verify()
    except VerificationError as exc:
        return str(exc)
    return ""
