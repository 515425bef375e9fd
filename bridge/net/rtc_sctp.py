"""Fixes to aiortc's SCTP association, installed on each peer connection that :mod:`bridge.net.rtc` makes.

aiortc's SCTP association (the transport under every data channel) handles a SACK's gap reports in two
ways that cost us, and buffers whatever DATA the peer sends:

1. **Spurious fast retransmits.** A chunk that the peer's SACKs report missing gets one "miss indication"
   per SACK that newly acknowledges a higher TSN, and it is retransmitted at the third (RFC 9260 section
   7.2.4, the HTNA rule). aiortc keeps counting after the retransmission, too. But the SACKs that arrive
   in the next round trip were sent before the retransmitted copy could have arrived. So three of them
   mark the chunk again, and it is sent a third time. Sending WebTorrent in Chromium 64 MiB, aiortc
   resent about 1,850 chunks per transfer, and Chromium reported about 1,600 of them as duplicates. Here
   a SACK counts as a miss only for a chunk whose latest transmission is older than the transmission of
   the chunk the SACK newly acknowledges. That is the HTNA rule applied to each transmission, and the
   duplicates go away.
2. **Unbounded gap reports.** aiortc expands every gap block into a set of TSNs. A gap block is 16-bit
   and a packet can hold thousands of them, so one hostile SACK would build hundreds of millions of
   set entries. Here gap blocks that are out of order, or that reach past the last TSN we sent, are
   dropped before aiortc sees them. The SACK's cumulative ack still counts.
3. **No receive window.** aiortc keeps every DATA chunk that arrives out of order, however far ahead of
   the cumulative TSN, and re-sorts the set of out-of-order TSNs on every chunk. A peer that never sends
   the next TSN could make it buffer without limit, at a cost that grows with each chunk. Here a chunk
   more than MAX_RECEIVE_AHEAD TSNs ahead, or one that does not fill the first gap while the advertised
   window is used up, is dropped unread (RFC 9260 section 6.2 lets a receiver do that); the sender
   retransmits it.
4. **Malformed chunks.** aiortc parses a chunk body that is too short for its type with ``struct``, and
   the error ends its DTLS task with a traceback in the log. Here such a packet ends the association
   with one line saying why (a ConnectionError, which aiortc takes as a normal close).

5. **Data channels without limit.** aiortc keeps an object for every data channel the peer opens, up to
   65,535 of them. WebTorrent opens one; a peer that has more than MAX_DATA_CHANNELS open at once ends the
   association.

All of them work by wrapping aiortc's own methods (the chunk is sent, the SACK is processed by aiortc) rather
than replacing them. :func:`install` swaps the class of one peer connection's SCTP transport, so other
aiortc users in the process (a benchmark's raw aiortc reference) keep aiortc's behaviour. If the
installed aiortc lacks the internals this relies on, :func:`install` leaves the transport alone and
logs why.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcsctptransport import DATA_CHANNEL_OPEN, WEBRTC_DCEP, DataChunk, RTCSctpTransport, SackChunk

log = logging.getLogger(__name__)

TSN_MODULO = 1 << 32
#: A miss count that three more misses cannot bring to aiortc's retransmit threshold (3): set on a chunk
#: for the duration of one SACK, then the chunk's real count is put back.
_HELD = -(1 << 30)
_OPEN = bytes([DATA_CHANNEL_OPEN])

#: Out-of-order DATA chunks kept at most this many TSNs past the cumulative TSN. 1,024 full chunks are
#: more than the 1 MiB window aiortc advertises, so an honest sender is never held back by it, and
#: sorting 1,024 TSNs per chunk (what aiortc does) stays cheap.
MAX_RECEIVE_AHEAD = 1024

#: Data channels open on one connection at most (ours and the peer's). WebTorrent (simple-peer) uses one.
MAX_DATA_CHANNELS = 8

#: What aiortc raises on a packet it cannot make sense of (a field missing from a chunk, a chunk where it
#: asserts there is none): the peer is broken or hostile, so the association ends.
_MALFORMED = (struct.error, AssertionError, IndexError, KeyError, ValueError, TypeError, OverflowError)

#: aiortc internals the wrappers read; install() checks they exist first.
_NEEDED_METHODS = ("_send_chunk", "_handle_data", "_receive_sack_chunk", "_receive_data_chunk",
                   "_data_channel_receive")
_NEEDED_STATE = ("_sent_queue", "_last_sacked_tsn", "_last_received_tsn", "_advertised_rwnd", "_sack_needed",
                 "_data_channels")


def _tsn_offset(tsn: int, base: int) -> int:
    """How far ``tsn`` is past ``base``, modulo 2**32 (serial number arithmetic)."""
    return (tsn - base) % TSN_MODULO


def valid_gaps(gaps: Sequence[tuple[int, int]], reach: int) -> bool:
    """Whether gap blocks (offsets from the cumulative TSN, each ``(start, end)``) are in increasing
    order, do not overlap, start after the cumulative TSN, and end at most ``reach`` past it: what a
    peer that only reports TSNs we sent can produce (RFC 9260 section 3.3.4)."""
    previous_end = 0
    for start, end in gaps:
        if not previous_end < start <= end <= reach:
            return False
        previous_end = end
    return True


def _received(offset: int, starts: list[int], gaps: Sequence[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(starts, offset) - 1
    return i >= 0 and offset <= gaps[i][1]


def stale_misses(queue: Iterable[Any], cumulative_tsn: int, gaps: Sequence[tuple[int, int]]) -> list[Any]:
    """The chunks of ``queue`` (sent chunks, in TSN order, each with ``tsn``, ``_acked`` and
    ``_bridge_sent``, the order of its latest transmission) that a SACK reports missing but must not be
    struck: their latest transmission came after that of the highest TSN the SACK newly acknowledges, so
    the SACK cannot know whether it arrived.

    ``gaps`` must have passed :func:`valid_gaps`."""
    if not gaps:
        return []
    starts = [start for start, _ in gaps]
    chunks = list(queue)
    received = [_received(_tsn_offset(c.tsn, cumulative_tsn), starts, gaps) for c in chunks]
    newest = -1
    for i, chunk in enumerate(chunks):
        if received[i] and not chunk._acked:
            newest = i
    if newest < 0:
        return []
    limit = getattr(chunks[newest], "_bridge_sent", 0)
    return [c for c, got in zip(chunks[:newest], received, strict=False)
            if not got and getattr(c, "_bridge_sent", 0) > limit]


class BridgeSctpTransport(RTCSctpTransport):
    """aiortc's SCTP transport with the fixes above. Not instantiated: install() gives an existing
    transport this class."""

    _bridge_sends: itertools.count[int]
    #: DATA chunks dropped by the receive limits (see MAX_RECEIVE_AHEAD).
    bridge_dropped_chunks: int

    async def _handle_data(self, data: bytes) -> None:
        try:
            await super()._handle_data(data)
        except _MALFORMED as exc:
            kind = "struct.error" if isinstance(exc, struct.error) else type(exc).__name__
            log.info("SCTP: closing the association: the peer sent a malformed packet (%s: %s)", kind, exc)
            raise ConnectionError(f"malformed SCTP packet: {exc}") from None

    async def _data_channel_receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == WEBRTC_DCEP and data[:1] == _OPEN and len(self._data_channels) >= MAX_DATA_CHANNELS:
            log.info("SCTP: closing the association: the peer opens more than %d data channels", MAX_DATA_CHANNELS)
            raise ConnectionError(f"more than {MAX_DATA_CHANNELS} data channels")
        await super()._data_channel_receive(stream_id, pp_id, data)

    async def _receive_data_chunk(self, chunk: DataChunk) -> None:
        last = self._last_received_tsn
        if last is not None:
            ahead = _tsn_offset(chunk.tsn, last)
            # 1 is the next TSN expected: always taken, or the window could never open again. Behind the
            # cumulative TSN (a duplicate) is aiortc's to report.
            if 1 < ahead < TSN_MODULO // 2 and (ahead > MAX_RECEIVE_AHEAD or self._advertised_rwnd <= 0):
                self.bridge_dropped_chunks += 1
                self._sack_needed = True
                return
        await super()._receive_data_chunk(chunk)

    async def _send_chunk(self, chunk: Any) -> None:
        if isinstance(chunk, DataChunk):
            chunk._bridge_sent = next(self._bridge_sends)  # type: ignore[attr-defined]
        await super()._send_chunk(chunk)

    async def _receive_sack_chunk(self, chunk: SackChunk) -> None:
        queue = self._sent_queue
        cumulative = chunk.cumulative_tsn
        held: list[tuple[Any, int]] = []
        if chunk.gaps and _tsn_offset(cumulative, self._last_sacked_tsn) < TSN_MODULO // 2:
            reach = _tsn_offset(queue[-1].tsn, cumulative) if queue else 0
            if reach >= TSN_MODULO // 2 or not valid_gaps(chunk.gaps, reach):
                log.debug("SCTP: ignoring %d gap blocks that do not fit what was sent", len(chunk.gaps))
                chunk.gaps = []
            else:
                for stale in stale_misses(queue, cumulative, chunk.gaps):
                    held.append((stale, stale._misses))
                    stale._misses = _HELD
        try:
            await super()._receive_sack_chunk(chunk)
        finally:
            for stale, misses in held:
                if stale._misses < 0:
                    stale._misses = misses


def install(pc: RTCPeerConnection) -> bool:
    """Give ``pc``'s SCTP transport (it must exist: after createDataChannel or setRemoteDescription) the
    fixes above. False, with a log line, if it has none or the installed aiortc does not fit."""
    sctp = pc.sctp
    if sctp is None:
        return False
    if type(sctp) is BridgeSctpTransport:
        return True
    if type(sctp) is not RTCSctpTransport:
        log.debug("SCTP fixes not installed: the transport is a %s", type(sctp).__name__)
        return False
    missing = [n for n in _NEEDED_METHODS if not callable(getattr(RTCSctpTransport, n, None))]
    missing += [n for n in _NEEDED_STATE if not hasattr(sctp, n)]
    if missing:
        log.warning("SCTP fixes not installed: this aiortc lacks %s", ", ".join(missing))
        return False
    sctp._bridge_sends = itertools.count(1)  # type: ignore[attr-defined]
    sctp.bridge_dropped_chunks = 0  # type: ignore[attr-defined]
    sctp.__class__ = BridgeSctpTransport
    return True


__all__ = ["MAX_DATA_CHANNELS", "MAX_RECEIVE_AHEAD", "BridgeSctpTransport", "install", "stale_misses", "valid_gaps"]
