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
   dropped before the SACK is processed. The SACK's cumulative ack still counts.
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

6. **A parameter of length zero.** aiortc's ``decode_params`` (INIT, INIT ACK, HEARTBEAT, ABORT, ERROR,
   RE-CONFIG chunks) advances by each parameter's length, so a parameter whose length field is 0 keeps it
   in place and it appends entries until the process runs out of memory: one packet from the peer. Found
   by tests/fuzz/test_fuzz_sctp.py. :func:`install_params_guard` replaces it, for the process, with one
   that refuses a parameter shorter than its own 4-byte header (ValueError, on which aiortc drops the
   packet).

7. **SACKs past one packet.** aiortc reports every gap block and duplicate TSN it has; with the
   out-of-order TSNs kept under (3) that can be a 2 KB SACK. Here a SACK holds at most MAX_SACK_GAPS gap
   blocks (those nearest the cumulative TSN, which matter first; the rest come in later SACKs) and
   MAX_SACK_DUPLICATES duplicates, ordered across the 2**32 wrap-around.

Fixes 2-5 and 7 wrap aiortc's own methods. Fix 1 is part of :meth:`BridgeSctpTransport._receive_sack_chunk`,
which processes a SACK in one walk of the sent queue, on aiortc's state and as aiortc does otherwise. On top
of them, :class:`LeanSctpTransport` replaces the rest of the hot path (new DATA chunks, in-order DATA
received, the T3 timer's restarts) with straight-line code that keeps aiortc's state and algorithms: aiortc spent about
40 us of Python per DATA packet, which limited a data channel more than the network did. It also delays
the SACKs it sends, as RFC 9260 section 6.2 describes, and bundles them into its DATA packets where they
fit; aiortc sends one SACK packet for every packet of DATA it receives.

:func:`install` swaps the class of one peer connection's SCTP transport, so other aiortc users in the
process (a benchmark's raw aiortc reference) keep aiortc's behaviour. If the installed aiortc lacks the
internals the fixes rely on, :func:`install` leaves the transport alone and logs why; if only the lean
path's (aiortc's, aioice's or pyOpenSSL's) are missing, the transport gets the fixes alone.

The lean path also finds the largest packet the path takes (RFC 8899's probes, :mod:`bridge.net.pmtu`) and
fills its DATA chunks to it: aiortc's 1,189-byte packets carry 1,160 bytes of data, a 1,500-byte Ethernet
path takes 1,404, and a loopback path to Chromium 1,980 (Chromium's DTLS reads at most 2,048 bytes).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from aiortc import RTCPeerConnection, rtcsctptransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcsctptransport import (
    DATA_CHANNEL_OPEN,
    SCTP_DATA_CHUNK_HEADER_LENGTH,
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    USERDATA_MAX_LENGTH,
    WEBRTC_DCEP,
    DataChunk,
    HeartbeatAckChunk,
    RTCSctpTransport,
    SackChunk,
    serialize_packet,
)

try:  # what the lean send path needs below pyOpenSSL's and google-crc32c's public API
    from google_crc32c import extend as _crc32c_extend
    from google_crc32c import value as _crc32c
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover -- install() then keeps to the fixes alone
    _lib = _ffi = None

from bridge.net import pmtu

log = logging.getLogger(__name__)

TSN_MODULO = 1 << 32
_HALF = 1 << 31
_PACK_DATA = struct.Struct("!BBHLHHL").pack
_PACK_CRC = struct.Struct("<L").pack
_PACK_COMMON = struct.Struct("!HHL").pack
_UNPACK_TAG = struct.Struct("!L").unpack_from
_UNPACK_CRC = struct.Struct("<L").unpack_from
_UNPACK_CHUNK = struct.Struct("!BBH").unpack_from
_UNPACK_DATA = struct.Struct("!LHHL").unpack_from
#: The chunk types the lean receive path takes (DATA, SACK), with the least length of each.
_FAST_CHUNKS = {0: SCTP_DATA_CHUNK_HEADER_LENGTH + 1, 3: 16}
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")
#: The largest DTLS record one SCTP packet becomes, and the largest one taken: the most plaintext a record
#: holds, and the most a record may add to it (RFC 6347 section 4.1.2.3).
_RECORD_MAX = pmtu.DTLS_PLAINTEXT_MAX + 2048
#: A packet-size probe (RFC 8899 section 6.2.1.1): a HEARTBEAT chunk whose Heartbeat Info parameter holds
#: a nonce and the probe's size, then a PAD chunk (RFC 4820; type 0x84, which a receiver that does not know
#: it skips) up to that size.
_PROBE_INFO = struct.Struct("!LL")
_PACK_PROBE = struct.Struct("!BBHHH8sBBH").pack
#: The common header and the 16-byte HEARTBEAT chunk; the PAD chunk (header included) fills the rest.
_PROBE_HEARTBEAT_END = 12 + 16
_PAD_CHUNK = 0x84
_OPEN = bytes([DATA_CHANNEL_OPEN])

#: Out-of-order DATA chunks kept at most this many TSNs past the cumulative TSN. 1,024 full chunks are
#: more than the 1 MiB window aiortc advertises, so an honest sender is never held back by it, and
#: sorting 1,024 TSNs per chunk (what aiortc does) stays cheap.
MAX_RECEIVE_AHEAD = 1024

#: Gap blocks and duplicate TSNs one SACK reports at most, so that it fits in one packet (16 + 4 x 272 + 12
#: bytes, within aiortc's 1,189): the blocks nearest the cumulative TSN, and the first duplicates.
MAX_SACK_GAPS = 256
MAX_SACK_DUPLICATES = 16

#: How long a SACK we owe for one packet of the peer's DATA waits for a DATA packet of ours to ride in
#: before it goes alone (RFC 9260 section 6.2 allows up to 200 ms; a second packet is acknowledged at once).
SACK_DELAY = 0.02
#: A SACK chunk without gap blocks or duplicates, the kind that rides in a DATA packet.
_SACK_PLAIN_LENGTH = 16

#: Data channels open on one connection at most (ours and the peer's). WebTorrent (simple-peer) uses one.
MAX_DATA_CHANNELS = 8

#: What aiortc raises on a packet it cannot make sense of (a field missing from a chunk, a chunk where it
#: asserts there is none): the peer is broken or hostile, so the association ends.
_MALFORMED = (struct.error, AssertionError, IndexError, KeyError, ValueError, TypeError, OverflowError)

#: aiortc internals the fixes use (the SACK walk keeps aiortc's sender state); install() checks they exist.
_NEEDED_METHODS = ("_send_chunk", "_handle_data", "_receive_sack_chunk", "_receive_data_chunk",
                   "_data_channel_receive", "_send_sack", "_update_rto", "_maybe_abandon", "_t3_cancel",
                   "_t3_restart", "_update_advanced_peer_ack_point", "_data_channel_flush", "_transmit")
_NEEDED_STATE = ("_sent_queue", "_last_sacked_tsn", "_last_received_tsn", "_advertised_rwnd", "_sack_needed",
                 "_data_channels", "_sack_misordered", "_sack_duplicates", "_flight_size", "_cwnd",
                 "_partial_bytes_acked", "_fast_recovery_exit", "_fast_recovery_transmit",
                 "_advanced_peer_ack_tsn", "_forward_tsn_streams", "_outbound_queue")


#: What the lean receive path queues to wake aiortc's DTLS task for a record it began in the socket's callback.
_WAKE = object()


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Resumed:
    """An awaitable that goes on with a coroutine already run to its first suspension (``step``: what it
    yielded there), so that a task can finish what a callback began."""

    __slots__ = ("_coro", "_step")

    def __init__(self, coro: Any, step: Any) -> None:
        self._coro, self._step = coro, step

    def __await__(self) -> Any:
        coro, step = self._coro, self._step
        while True:
            try:
                sent = yield step
            except BaseException as exc:  # a cancellation, passed on
                resume, value = coro.throw, exc
            else:
                resume, value = coro.send, sent
            try:
                step = resume(value)
            except StopIteration as stop:
                return stop.value


def _tsn_offset(tsn: int, base: int) -> int:
    """How far ``tsn`` is past ``base``, modulo 2**32 (serial number arithmetic)."""
    return (tsn - base) % TSN_MODULO


_UNPACK_PARAM = struct.Struct("!HH").unpack_from


def decode_params(body: bytes) -> list[tuple[int, bytes]]:
    """SCTP chunk parameters as (type, value), as aiortc's decode_params reads them; ValueError for a
    parameter whose length is shorter than its header (aiortc's would loop without end)."""
    params = []
    pos = 0
    while pos <= len(body) - 4:
        kind, length = _UNPACK_PARAM(body, pos)
        if length < 4:
            raise ValueError(f"SCTP parameter of length {length}")
        params.append((kind, body[pos + 4 : pos + length]))
        pos += length + (-length & 3)
    return params


def install_params_guard() -> None:
    """Have aiortc parse chunk parameters with :func:`decode_params` (fix 6 above). Once, for the process."""
    rtcsctptransport.decode_params = decode_params


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


def data_packet(header: bytes, header_crc: int, chunk: DataChunk, control: bytes = b"") -> bytes:
    """An SCTP packet holding one DATA chunk, as aiortc's serialize_packet makes it: ``header`` is the
    packet's common header without its checksum (ports and verification tag), ``header_crc`` the CRC32c
    of that header followed by a zero checksum field. ``control``: serialized control chunks (a SACK) to
    bundle, which go before the DATA chunk (RFC 9260 section 6.10)."""
    data = chunk.user_data
    length = SCTP_DATA_CHUNK_HEADER_LENGTH + len(data)
    body = _PACK_DATA(0, chunk.flags, length, chunk.tsn, chunk.stream_id, chunk.stream_seq, chunk.protocol) + data
    body += _PADDING[length & 3]
    if control:
        body = control + body
    return header + _PACK_CRC(_crc32c_extend(header_crc, body)) + body


def _malformed(exc: Exception) -> ConnectionError:
    kind = "struct.error" if isinstance(exc, struct.error) else type(exc).__name__
    log.info("SCTP: closing the association: the peer sent a malformed packet (%s: %s)", kind, exc)
    return ConnectionError(f"malformed SCTP packet: {exc}")


class BridgeSctpTransport(RTCSctpTransport):
    """aiortc's SCTP transport with the fixes above. Not instantiated: install() gives an existing
    transport this class."""

    _bridge_sends: itertools.count[int]
    #: DATA chunks dropped by the receive limits (see MAX_RECEIVE_AHEAD).
    bridge_dropped_chunks: int
    #: A chunk is marked for retransmission (the lean sender then takes aiortc's own path).
    _bridge_rtx: bool
    #: The peer's receive window left, from its last SACK less what was sent since (None before one).
    _bridge_rwnd: int | None
    #: User data in one DATA chunk of ours (aiortc's, unless a probe showed a larger packet gets through);
    #: also the step by which slow start grows the congestion window.
    _bridge_chunk_max: int = USERDATA_MAX_LENGTH

    async def _handle_data(self, data: bytes) -> None:
        try:
            await super()._handle_data(data)
        except _MALFORMED as exc:
            raise _malformed(exc) from None

    async def _send_sack(self) -> None:
        await self._send_chunk(self._bridge_sack_chunk())

    def _bridge_sack_chunk(self) -> SackChunk:
        """aiortc's SACK, with at most MAX_SACK_GAPS gap blocks and MAX_SACK_DUPLICATES duplicates (aiortc
        reports them all, and with the 1,024 out-of-order TSNs we keep that can be 2 KB, past one packet),
        and the out-of-order TSNs ordered from the cumulative TSN (aiortc sorts the raw numbers, which is
        wrong where they wrap around 2**32). Taking it counts as sending it: the duplicates are cleared."""
        base = self._last_received_tsn
        assert base is not None  # set from the peer's INIT before any DATA or SACK
        gaps: list[list[int]] = []
        previous = -2
        for offset in sorted((tsn - base) % TSN_MODULO for tsn in self._sack_misordered):
            if offset == previous + 1:
                gaps[-1][1] = offset
            elif len(gaps) == MAX_SACK_GAPS:
                break
            else:
                gaps.append([offset, offset])
            previous = offset
        sack = SackChunk()
        sack.cumulative_tsn = base
        sack.advertised_rwnd = max(0, self._advertised_rwnd)
        sack.duplicates = self._sack_duplicates[:MAX_SACK_DUPLICATES]
        sack.gaps = [(start, end) for start, end in gaps]
        self._sack_duplicates.clear()
        self._sack_needed = False
        return sack

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
            if 1 < ahead < _HALF and (ahead > MAX_RECEIVE_AHEAD or self._advertised_rwnd <= 0):
                self.bridge_dropped_chunks += 1
                self._sack_needed = True
                return
        await super()._receive_data_chunk(chunk)

    async def _send_chunk(self, chunk: Any) -> None:
        if isinstance(chunk, DataChunk):
            chunk._bridge_sent = next(self._bridge_sends)  # type: ignore[attr-defined]
        await super()._send_chunk(chunk)

    def _bridge_check_gaps(self, chunk: SackChunk) -> None:
        """Drop (set to []) the SACK's gap blocks unless they fit what was sent (see :func:`valid_gaps`)."""
        queue = self._sent_queue
        reach = _tsn_offset(queue[-1].tsn, chunk.cumulative_tsn) if queue else 0
        if reach >= _HALF or not valid_gaps(chunk.gaps, reach):
            log.debug("SCTP: ignoring %d gap blocks that do not fit what was sent", len(chunk.gaps))
            chunk.gaps = []

    async def _receive_sack_chunk(self, chunk: SackChunk) -> None:
        """aiortc's SACK processing in one walk of the sent queue: the cumulative ack, the gap blocks (checked
        first, see :meth:`_bridge_check_gaps`, and with the HTNA rule per transmission, fix 1), the peer's
        receive window (kept for the lean sender) and the congestion window, as aiortc adjusts it."""
        cumulative = chunk.cumulative_tsn
        if 0 < (self._last_sacked_tsn - cumulative) % TSN_MODULO < _HALF:
            return  # older than one already processed
        queue: Any = self._sent_queue  # of DataChunks with the attributes aiortc and we add
        if chunk.gaps:
            self._bridge_check_gaps(chunk)
        gaps = chunk.gaps
        received_time = time.time()
        self._last_sacked_tsn = cumulative
        cwnd_fully_utilized = self._flight_size >= self._cwnd
        flight = self._flight_size
        done = done_bytes = 0

        # chunks up to the cumulative TSN
        c: Any
        while queue and (cumulative - queue[0].tsn) % TSN_MODULO < _HALF:
            c = queue.popleft()
            done += 1
            if not c._acked:
                done_bytes += c._book_size
            if c._in_flight:
                c._in_flight = False
                flight -= c._book_size
            if done == 1 and c._sent_count == 1:
                self._update_rto(received_time - c._sent_time)

        # chunks the gap blocks report received, and the highest newly acknowledged one (HTNA)
        loss = False
        if gaps:
            last_offset = gaps[-1][1]
            received: list[bool] = []
            newest = -1
            g = 0
            for i, c in enumerate(queue):
                offset = (c.tsn - cumulative) % TSN_MODULO
                if offset > last_offset:
                    break
                while gaps[g][1] < offset:
                    g += 1
                got = gaps[g][0] <= offset
                received.append(got)
                if got:
                    if not c._acked:
                        done_bytes += c._book_size
                        c._acked = True
                        newest = i
                    if c._in_flight:
                        c._in_flight = False
                        flight -= c._book_size
            if newest > 0:
                # Strike the chunks before it that are still missing, unless they were (re)sent after it. (A
                # chunk abandoned before it was ever sent has no _bridge_sent.)
                limit = getattr(queue[newest], "_bridge_sent", 0)
                for c, got in zip(itertools.islice(queue, newest), received, strict=False):
                    if got or getattr(c, "_bridge_sent", 0) > limit:
                        continue
                    c._misses += 1
                    if c._misses == 3:
                        c._misses = 0
                        self._flight_size = flight
                        if not self._maybe_abandon(c):
                            c._retransmit = True
                            self._bridge_rtx = True
                        flight = self._flight_size
                        c._acked = False
                        if c._in_flight:
                            c._in_flight = False
                            flight -= c._book_size
                        loss = True
        self._flight_size = flight
        # What the peer can still take: its advertised window less what is still outstanding (section 6.2.1).
        self._bridge_rwnd = chunk.advertised_rwnd - flight

        # the congestion window, as aiortc adjusts it
        if self._fast_recovery_exit is None:
            if done and cwnd_fully_utilized:
                if self._cwnd <= self._ssthresh:
                    self._cwnd += min(done_bytes, self._bridge_chunk_max)
                else:
                    self._partial_bytes_acked += done_bytes
                    if self._partial_bytes_acked >= self._cwnd:
                        self._partial_bytes_acked -= self._cwnd
                        self._cwnd += self._bridge_chunk_max
            if loss:
                self._ssthresh = max(self._cwnd // 2, 4 * self._bridge_chunk_max)
                self._cwnd = self._ssthresh
                self._partial_bytes_acked = 0
                self._fast_recovery_exit = queue[-1].tsn
                self._fast_recovery_transmit = True
        elif (cumulative - self._fast_recovery_exit) % TSN_MODULO < _HALF:
            self._fast_recovery_exit = None

        if not queue:
            self._t3_cancel()
        elif done:
            self._t3_restart()
        advanced = self._advanced_peer_ack_tsn
        out = self._outbound_queue
        if (self._forward_tsn_streams or (queue and queue[0]._abandoned) or (out and out[0]._abandoned)
                or 0 < (advanced - cumulative) % TSN_MODULO < _HALF):
            self._update_advanced_peer_ack_point()  # partial reliability at work
        elif advanced != cumulative:
            self._advanced_peer_ack_tsn = cumulative  # all the above would do without it
        await self._data_channel_flush()
        await self._transmit()


class LeanSctpTransport(BridgeSctpTransport):
    """BridgeSctpTransport with a leaner sending path: the same protocol, in fewer Python steps.

    aiortc spends about 40 us of Python per DATA packet it sends to a browser, several times the cost of the
    work itself (serializing, the CRC, DTLS encryption, the send system call), and that Python time is what
    limits a data channel on a small machine. Here the common case runs in straight-line code:

    - new DATA chunks go out in one pass: serialized without building a chunk's bytes twice, CRC32c
      extended from the common header's, encrypted with one SSL_write and read back with one BIO_read into
      a reused buffer, and handed to the ICE pair's socket, with no coroutine per layer. Retransmissions,
      FORWARD TSN and everything else still go through aiortc's own ``_transmit``;
    - a datagram is decrypted and handled in the socket's callback rather than queued for aiortc's DTLS
      task; a packet of DATA and SACK chunks is parsed in one pass, and an in-order DATA chunk (the usual
      one) is taken without aiortc's parser and reassembly;
    - the T3 retransmission timer is restarted by moving a deadline, not by cancelling and scheduling a
      timer on every SACK; the timer re-arms itself for the rest when it fires early;
    - new data stays within the peer's advertised receive window, which aiortc does not look at;
    - acknowledgements are delayed as RFC 9260 section 6.2 has it, where aiortc sends a SACK packet for
      every packet of DATA: the second packet is acknowledged at once (and any packet that leaves a gap or
      repeats a TSN), the first waits up to SACK_DELAY and rides in the next DATA packet of ours with room
      for it (the last fragment of a 16 KiB message has 400 bytes free). Sending to WebTorrent, whose
      requests are one small packet each, this saves a packet per request at both ends; receiving, it
      halves the SACKs we send;
    - once the association is up, HEARTBEATs padded to larger sizes probe the path (RFC 8899 section
      6.2.1.1); the largest one answered sets the size of new DATA chunks, and two T3 expiries in a row at
      that size bring it back to aiortc's, with a new search RAISE_INTERVAL later. A TURN-relayed pair
      stays at aiortc's size.
    """

    _bridge_t3_deadline: float
    _bridge_buf: Any
    _bridge_rx_ready: bool
    _bridge_headers: tuple[tuple[int, int | None, int], bytes, int] | None
    #: Packets of the peer's DATA received since our last SACK; the timer that sends the SACK owed for one.
    _bridge_sack_owed: int
    _bridge_sack_timer: asyncio.TimerHandle | None
    _bridge_sack_deadline: float
    #: A SACK is owed at once (after a FORWARD TSN).
    _bridge_sack_now: bool
    #: SACKs sent as a packet of their own, and SACKs that rode in a DATA packet.
    bridge_sacks_alone: int
    bridge_sacks_bundled: int
    #: The SCTP packet size in use (aiortc's, until a probe is answered), and the probes unanswered (their
    #: nonce: their size); the sizes this search probes, the rounds sent, the timer for the next round.
    bridge_packet_max: int
    _bridge_probes: dict[int, int]
    _bridge_probe_sizes: list[int] | None
    _bridge_probe_rounds: int
    _bridge_probe_timer: asyncio.Handle | None
    #: The cumulative TSN acknowledged when the T3 timer last fired at a raised packet size.
    _bridge_t3_mark: int | None

    # -------------------------------------------------------------------------------- receiving
    def _bridge_setup_rx(self) -> None:
        """Once DTLS and ICE are up (the first packet): the receive-side shortcuts below."""
        self._bridge_rx_ready = True
        dtls: Any = self.transport
        ice = dtls.transport
        bio, buf, buffer, bio_read = dtls._ssl._from_ssl, self._bridge_buf, _ffi.buffer, _lib.BIO_read

        async def write_ssl() -> None:
            # aiortc calls this after every record it decrypts, and pyOpenSSL's bio_read raises (and
            # allocates) each time there is nothing to send, which is nearly always.
            n = bio_read(bio, buf, _RECORD_MAX)
            if n > 0:
                await ice._send(buffer(buf, n)[:])
                dtls._RTCDtlsTransport__tx_bytes += n
                dtls._RTCDtlsTransport__tx_packets += 1

        dtls._write_ssl = write_ssl
        recv_next, at_once = self._bridge_receiver(dtls, write_ssl)
        dtls._recv_next = recv_next
        pair = ice._connection._nominated.get(1)
        protocol: Any = getattr(pair, "protocol", None)
        receiver = getattr(protocol, "receiver", None)
        component = getattr(getattr(protocol, "local_candidate", None), "component", None)
        if receiver is None or component is None:
            return
        stun_or_other = protocol.datagram_received

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            # aioice tries to parse every datagram as STUN first, and a DTLS record fails that with an
            # exception. The first byte tells them apart (RFC 7983): 20-63 is DTLS.
            if data and 19 < data[0] < 64:
                if not at_once(data):
                    receiver.data_received(data, component)
            else:
                stun_or_other(data, addr)

        protocol.datagram_received = datagram_received

    @staticmethod
    def _bridge_receiver(dtls: Any, write_ssl: Any) -> tuple[Any, Any]:
        """The DTLS receive side once the handshake is over, without pyOpenSSL's wrappers: one BIO_write and
        one SSL_read into a reused buffer per record. The same outcomes as aiortc's: a record with data goes
        to the SCTP transport; a close_notify ends the connection (ConnectionError); a record without data,
        or one that does not decrypt, is dropped (``record``, a coroutine, takes one datagram so). Two
        functions:

        - ``recv_next()``, aiortc's RTCDtlsTransport._recv_next (its task calls it in a loop): the next
          datagram from aioice's queue through ``record``. Before the handshake is done, aiortc's own runs;
        - ``at_once(data)``: run ``record`` now, in the socket's callback, rather than queue the datagram
          for the DTLS task (False: queue it), which saves a queue put, a task wake-up and three coroutine
          frames per datagram (about 6% of the CPU of a 32 MiB transfer between two bridge transports in one
          process). It runs only when nothing is queued or half done, so records keep their order. A
          record that suspends (none does on the lean path, but aiortc's own code may) goes on in a task,
          and the DTLS task waits for it before the next datagram; an error is handed to the DTLS task,
          which ends the connection as before.
        """
        aiortcs = dtls._recv_next
        connection = dtls.transport._connection
        datagrams = connection._queue  # what aioice's recv() awaits, two coroutines down
        ssl, into = dtls._ssl._ssl, dtls._ssl._into_ssl
        buf = _ffi.new("char[]", _RECORD_MAX)
        buffer, bio_write, ssl_read = _ffi.buffer, _lib.BIO_write, _lib.SSL_read
        # pending: what at_once left for the DTLS task (a record's task, or its error); busy: the DTLS
        # task is inside a record.
        state: dict[str, Any] = {"pending": None, "busy": False}
        connected = DtlsState.CONNECTED

        async def record(data: bytes) -> None:
            if not connection._nominated:
                raise ConnectionError("Cannot receive data, not connected")
            dtls._RTCDtlsTransport__rx_bytes += len(data)
            dtls._RTCDtlsTransport__rx_packets += 1
            if not 19 < data[0] < 64:
                return  # RTP or RTCP: a data-channel-only connection has no receiver for it
            if bio_write(into, data, len(data)) <= 0:
                raise ConnectionError("DTLS could not take a record")
            n = ssl_read(ssl, buf, _RECORD_MAX)
            if n > 0:
                plain = buffer(buf, n)[:]
                await write_ssl()
                if dtls._data_receiver:
                    await dtls._data_receiver._handle_data(plain)
                return
            closed = _lib.SSL_get_error(ssl, n) == _lib.SSL_ERROR_ZERO_RETURN
            _lib.ERR_clear_error()
            await write_ssl()
            if closed:
                raise ConnectionError("DTLS shut down by the remote party")

        async def recv_next() -> None:
            if not dtls._RTCDtlsTransport__handshake_done:
                await aiortcs()
                return
            item = datagrams.get_nowait() if datagrams.qsize() else await datagrams.get()
            state["busy"] = True
            try:
                pending = state["pending"]
                if pending is not None:
                    state["pending"] = None
                    if isinstance(pending, BaseException):
                        raise pending  # from a record at_once ran
                    await pending  # a record at_once began
                if item is _WAKE:
                    return
                if item is None:
                    raise ConnectionError("Connection lost while receiving data")
                await record(item[0])
            finally:
                state["busy"] = False

        def at_once(data: bytes) -> bool:
            if state["busy"] or state["pending"] is not None or datagrams.qsize() or dtls._state is not connected:
                return False
            coro = record(data)
            try:
                step = coro.send(None)
            except StopIteration:
                return True
            except Exception as exc:  # the DTLS task raises it, as if it had run the record
                state["pending"] = exc
            else:
                task = asyncio.ensure_future(_Resumed(coro, step))
                task.add_done_callback(_retrieved)  # the DTLS task may be gone before it awaits this
                state["pending"] = task
            datagrams.put_nowait(_WAKE)
            return True

        return recv_next, at_once

    def _bridge_chunks(self, data: bytes) -> list[tuple[int, int, int, int]] | None:
        """``(type, flags, body start, body end)`` of each chunk if ``data`` is a packet for us, its checksum
        is right, and it holds DATA and SACK chunks only (what flows once a data channel is open); None for
        anything else, which aiortc's parser then handles (and drops, where it must)."""
        size = len(data)
        if size < 16 or _UNPACK_TAG(data, 4)[0] != self._local_verification_tag:
            return None
        if _crc32c(data[:8] + b"\0\0\0\0" + data[12:]) != _UNPACK_CRC(data, 8)[0]:
            return None
        chunks = []
        pos = 12
        while pos + 4 <= size:
            kind, flags, length = _UNPACK_CHUNK(data, pos)
            # a DATA chunk holds at least one byte (RFC 9260 section 3.3.1), a SACK its 12-byte body
            if kind not in _FAST_CHUNKS or length < _FAST_CHUNKS[kind] or pos + length > size:
                return None
            chunks.append((kind, flags, pos + 4, pos + length))
            pos += (length + 3) & ~3
        return chunks

    async def _handle_data(self, data: bytes) -> None:
        if not self._bridge_rx_ready:
            self._bridge_setup_rx()
        try:
            chunks = self._bridge_chunks(data)
            if chunks is None:
                await RTCSctpTransport._handle_data(self, data)
                return
            for kind, flags, start, end in chunks:
                if kind == 3:
                    await self._receive_sack_chunk(SackChunk(flags=flags, body=data[start:end]))
                elif not await self._bridge_data_in_order(flags, data, start, end):
                    await self._receive_data_chunk(DataChunk(flags=flags, body=data[start:end]))
            if self._sack_needed:
                await self._send_sack()
        except _MALFORMED as exc:
            raise _malformed(exc) from None

    async def _bridge_data_in_order(self, flags: int, data: bytes, start: int, end: int) -> bool:
        """Take a DATA chunk the way aiortc's _receive_data_chunk would, in the usual case only: the next TSN,
        nothing out of order or duplicated, an ordered stream, the next fragment of the message in progress
        (or the first of the next one). False, having changed nothing, for anything else (aiortc's then)."""
        tsn, stream_id, stream_seq, protocol = _UNPACK_DATA(data, start)
        if ((tsn - self._last_received_tsn) % TSN_MODULO != 1 or self._sack_misordered or self._sack_duplicates
                or flags & SCTP_DATA_UNORDERED or self._reconfig_deferred is not None):
            return False
        stream = self._get_inbound_stream(stream_id)
        held = stream.reassembly
        if bool(flags & SCTP_DATA_FIRST_FRAG) == bool(held) or stream_seq != stream.sequence_number:
            return False
        if held and not (held[0].flags & SCTP_DATA_FIRST_FRAG and held[0].stream_seq == stream_seq
                         and (tsn - held[0].tsn) % TSN_MODULO == len(held)):
            return False  # what is held is not this message's fragments so far, all of them in a row
        self._last_received_tsn = tsn
        self._sack_needed = True
        user_data = data[start + 12 : end]
        if not flags & SCTP_DATA_LAST_FRAG:
            chunk = object.__new__(DataChunk)
            chunk.__dict__ = {"flags": flags, "tsn": tsn, "stream_id": stream_id, "stream_seq": stream_seq,
                              "protocol": protocol, "user_data": user_data}
            held.append(chunk)
            self._advertised_rwnd -= len(user_data)
            return True
        if held:
            before = sum(len(c.user_data) for c in held)
            user_data = b"".join([c.user_data for c in held] + [user_data])
            stream.reassembly = []
            self._advertised_rwnd += before
        stream.sequence_number = (stream_seq + 1) & 0xFFFF
        await self._data_channel_receive(stream_id, protocol, user_data)
        return True

    # -------------------------------------------------------------------------------- our SACKs
    async def _send_sack(self) -> None:
        """aiortc calls this after each packet with DATA (or a FORWARD TSN) from the peer."""
        self._sack_needed = False
        self._bridge_sack_owed += 1
        if self._bridge_sack_owed >= 2 or self._bridge_sack_now or self._sack_misordered or self._sack_duplicates:
            self._bridge_sack_alone()
        elif self._bridge_sack_owed == 1:
            loop = asyncio.get_running_loop()
            self._bridge_sack_deadline = loop.time() + SACK_DELAY
            if self._bridge_sack_timer is None:
                self._bridge_sack_timer = loop.call_at(self._bridge_sack_deadline, self._bridge_sack_expired)

    def _bridge_sack_alone(self) -> None:
        self._bridge_sack_taken()
        self.bridge_sacks_alone += 1
        self._bridge_send_packets([self._bridge_packet(self._bridge_sack_chunk())])

    def _bridge_sack_taken(self) -> None:
        # The timer, if one is set, stays: when it fires it finds nothing owed, or a later deadline to wait
        # for. Cancelling it and setting another for every second packet would cost more.
        self._bridge_sack_owed = 0
        self._bridge_sack_now = False

    def _bridge_sack_expired(self) -> None:
        self._bridge_sack_timer = None
        if not self._bridge_sack_owed or self._association_state != self.State.ESTABLISHED:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._bridge_sack_deadline - 0.001:  # owed since after the deadline it was set for
            self._bridge_sack_timer = loop.call_at(self._bridge_sack_deadline, self._bridge_sack_expired)
            return
        try:
            self._bridge_sack_alone()
        except ConnectionError:
            pass  # the connection is going; nothing is owed to it

    async def _receive_forward_tsn_chunk(self, chunk: Any) -> None:
        await super()._receive_forward_tsn_chunk(chunk)
        self._bridge_sack_now = True

    # -------------------------------------------------------------------------------- sending
    def _bridge_send_packets(self, packets: list[bytes]) -> None:
        """Encrypt SCTP packets as DTLS records and send each as one datagram on the selected ICE pair."""
        dtls: Any = self.transport  # aiortc's and pyOpenSSL's internals, not typed for this
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted data, not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        ssl, bio, buf = dtls._ssl._ssl, dtls._ssl._from_ssl, self._bridge_buf
        sendto, addr = pair.protocol.transport.sendto, pair.remote_addr
        ssl_write, bio_read, buffer = _lib.SSL_write, _lib.BIO_read, _ffi.buffer
        size = 0
        for packet in packets:
            if ssl_write(ssl, packet, len(packet)) <= 0:
                _lib.ERR_clear_error()  # as pyOpenSSL would, so that no later call sees this error
                raise ConnectionError("DTLS refused to encrypt a packet (the connection is closing)")
            n = bio_read(bio, buf, _RECORD_MAX)
            if n > 0:
                sendto(buffer(buf, n)[:], addr)
                size += n
        dtls._RTCDtlsTransport__tx_bytes += size
        dtls._RTCDtlsTransport__tx_packets += len(packets)

    async def _send_chunk(self, chunk: Any) -> None:
        if isinstance(chunk, DataChunk):
            chunk._bridge_sent = next(self._bridge_sends)  # type: ignore[attr-defined]
        self._bridge_send_packets([self._bridge_packet(chunk)])

    def _bridge_packet(self, chunk: Any) -> bytes:
        """An SCTP packet of ours holding ``chunk`` alone, as aiortc's serialize_packet makes it."""
        return serialize_packet(self._local_port, self._remote_port or 0, self._remote_verification_tag, chunk)

    def _bridge_header(self) -> tuple[bytes, int]:
        """The common header of our packets without the checksum, and its CRC32c with a zero checksum."""
        fields = (self._local_port, self._remote_port, self._remote_verification_tag)
        cached = self._bridge_headers
        if cached is None or cached[0] != fields:
            header = _PACK_COMMON(*fields)
            cached = self._bridge_headers = (fields, header, _crc32c(header + b"\0\0\0\0"))
        return cached[1], cached[2]

    async def _send(self, stream_id: int, pp_id: int, user_data: bytes, expiry: float | None = None,
                    max_retransmits: int | None = None, ordered: bool = True) -> None:
        """aiortc's _send (a message into DATA chunks on the outbound queue, then transmit), building each
        chunk's attributes in one step."""
        stream_seq = self._outbound_stream_seq.get(stream_id, 0) if ordered else 0
        flags = 0 if ordered else SCTP_DATA_UNORDERED
        size = self._bridge_chunk_max
        last = -(-len(user_data) // size) - 1
        tsn = self._local_tsn
        out = self._outbound_queue
        for n, pos in enumerate(range(0, len(user_data), size)):
            data = user_data[pos : pos + size]
            chunk = object.__new__(DataChunk)
            chunk.__dict__ = {
                "flags": flags | (SCTP_DATA_FIRST_FRAG if n == 0 else 0) | (SCTP_DATA_LAST_FRAG if n == last else 0),
                "tsn": tsn, "stream_id": stream_id, "stream_seq": stream_seq, "protocol": pp_id,
                "user_data": data, "_abandoned": False, "_acked": False, "_book_size": len(data),
                "_expiry": expiry, "_in_flight": False, "_max_retransmits": max_retransmits, "_misses": 0,
                "_retransmit": False, "_sent_count": 0, "_sent_time": None,
            }
            tsn = (tsn + 1) % TSN_MODULO
            out.append(chunk)
        self._local_tsn = tsn
        if ordered:
            self._outbound_stream_seq[stream_id] = (stream_seq + 1) % 65536
        await self._transmit()

    async def _transmit(self) -> None:
        if self._forward_tsn_chunk is not None or self._bridge_rtx:
            await super()._transmit()
            self._bridge_rtx = any(c._retransmit for c in self._sent_queue)
            return
        out = self._outbound_queue
        if not out:
            return
        burst = (2 if self._fast_recovery_exit is not None else 4) * self._bridge_chunk_max
        flight = self._flight_size
        cwnd = min(flight + burst, self._cwnd)
        if flight >= cwnd:
            return
        header, header_crc = self._bridge_header()
        sent, sends, now = self._sent_queue, self._bridge_sends, time.time()
        rwnd = self._bridge_rwnd
        packets = []
        sack_owed = self._bridge_sack_owed > 0
        while out and flight < cwnd:
            if rwnd is not None:
                # The peer's receive window (RFC 9260 section 6.1, rule A): no new data beyond it, except one
                # chunk when nothing is in flight, which probes a closed window.
                if rwnd < out[0]._book_size and flight > 0:
                    break
                rwnd -= out[0]._book_size
            chunk = out.popleft()
            sent.append(chunk)
            if not chunk._in_flight:
                chunk._in_flight = True
                flight += chunk._book_size
            chunk._sent_count += 1
            chunk._sent_time = now
            chunk._bridge_sent = next(sends)  # type: ignore[attr-defined]
            # room beside the padded DATA chunk
            if sack_owed and (room := self._bridge_chunk_max - ((chunk._book_size + 3) & ~3)) >= _SACK_PLAIN_LENGTH:
                sack_owed = False
                self._bridge_sack_taken()
                sack_chunk = self._bridge_sack_chunk()
                sack = bytes(sack_chunk)
                if len(sack) <= room:
                    self.bridge_sacks_bundled += 1
                    packets.append(data_packet(header, header_crc, chunk, sack))
                    continue
                # Grown past the room (gap blocks; not the usual case, which sends those at once): alone.
                self.bridge_sacks_alone += 1
                packets.append(self._bridge_packet(sack_chunk))
            packets.append(data_packet(header, header_crc, chunk))
        self._flight_size = flight
        self._bridge_rwnd = rwnd
        if not packets:
            return
        if self._t3_handle is None:
            self._t3_start()
        self._bridge_send_packets(packets)

    # -------------------------------------------------------------------------------- the T3 timer
    def _t3_start(self) -> None:
        self._bridge_t3_deadline = time.monotonic() + self._rto
        super()._t3_start()

    def _t3_restart(self) -> None:
        if self._t3_handle is None:
            self._t3_start()
        else:
            self._bridge_t3_deadline = time.monotonic() + self._rto

    def _t3_expired(self) -> None:
        left = self._bridge_t3_deadline - time.monotonic()
        if left > 0.001:
            self._t3_handle = asyncio.get_running_loop().call_later(left, self._t3_expired)
            return
        self._bridge_rtx = True
        if self.bridge_packet_max > pmtu.BASE_PACKET:
            # Two expiries in a row without a SACK between them, at a packet size a probe raised: the path
            # may no longer carry it (RFC 8899 section 4.3, black-hole detection). New data goes back to
            # the size every path takes.
            if self._bridge_t3_mark == self._last_sacked_tsn:
                self._bridge_pmtu_fall_back()
            else:
                self._bridge_t3_mark = self._last_sacked_tsn
        super()._t3_expired()

    # -------------------------------------------------------------------------------- the packet size
    def _set_state(self, state: Any) -> None:
        super()._set_state(state)
        if state == self.State.ESTABLISHED and self._bridge_probe_timer is None and self._bridge_probe_sizes is None:
            self._bridge_probe_timer = asyncio.get_running_loop().call_soon(self._bridge_probe_round)
        elif state == self.State.CLOSED and self._bridge_probe_timer is not None:
            self._bridge_probe_timer.cancel()
            self._bridge_probe_timer = None

    def _bridge_probe_round(self) -> None:
        """Send one round of packet-size probes (see :mod:`bridge.net.pmtu`): each candidate larger than the
        size in use, and then again, up to PROBE_ROUNDS times, until an answer leaves none larger."""
        self._bridge_probe_timer = None
        if self._association_state != self.State.ESTABLISHED:
            return
        if self._bridge_probe_sizes is None:
            self._bridge_probe_sizes = self._bridge_probe_candidates()
            self._bridge_probe_rounds = 0
        sizes = [size for size in self._bridge_probe_sizes if size > self.bridge_packet_max]
        if not sizes or self._bridge_probe_rounds >= pmtu.PROBE_ROUNDS:
            return
        self._bridge_probe_rounds += 1
        try:
            self._bridge_send_packets([self._bridge_probe(size) for size in sizes])
        except ConnectionError:
            return
        self._bridge_probe_timer = asyncio.get_running_loop().call_later(pmtu.PROBE_INTERVAL, self._bridge_probe_round)

    def _bridge_probe_candidates(self) -> list[int]:
        dtls: Any = self.transport
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or getattr(pair.local_candidate, "type", None) == "relay":
            return []  # a TURN relay adds its own headers on a route of its own: left at the base size
        address = pair.remote_addr
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        overhead = pmtu.dtls_overhead(dtls._ssl.get_cipher_name())
        return pmtu.probe_sizes(pmtu.route_mtu(address), family, overhead, self.bridge_packet_max)

    def _bridge_probe(self, size: int) -> bytes:
        """An SCTP packet of ``size`` bytes (a multiple of 4) that the peer answers with a HEARTBEAT ACK if it
        gets it whole."""
        nonce = random.getrandbits(32)
        while nonce in self._bridge_probes:
            nonce = random.getrandbits(32)
        self._bridge_probes[nonce] = size
        header, header_crc = self._bridge_header()
        pad = size - _PROBE_HEARTBEAT_END
        body = _PACK_PROBE(4, 0, 16, 1, 12, _PROBE_INFO.pack(nonce, size), _PAD_CHUNK, 0, pad) + bytes(pad - 4)
        return header + _PACK_CRC(_crc32c_extend(header_crc, body)) + body

    async def _receive_chunk(self, chunk: Any) -> None:
        if isinstance(chunk, HeartbeatAckChunk):
            self._bridge_probe_answered(chunk)
        else:
            await super()._receive_chunk(chunk)

    def _bridge_probe_answered(self, chunk: HeartbeatAckChunk) -> None:
        """A HEARTBEAT ACK: if it answers a probe of ours, the peer got a packet of that size whole, and new
        DATA chunks fill packets of it."""
        for kind, value in chunk.params:
            if kind != 1 or len(value) != _PROBE_INFO.size:
                continue
            nonce, size = _PROBE_INFO.unpack(value)
            if self._bridge_probes.pop(nonce, None) == size and size > self.bridge_packet_max:
                log.debug("SCTP: packets of %d bytes get through (a probe was answered)", size)
                self._bridge_use_packets(size)

    def _bridge_use_packets(self, size: int) -> None:
        """New DATA chunks fill SCTP packets of ``size`` bytes."""
        self.bridge_packet_max = size
        self._bridge_chunk_max = pmtu.chunk_payload(size)
        self._bridge_t3_mark = None

    def _bridge_pmtu_fall_back(self) -> None:
        log.info("SCTP: back to %d-byte packets: the peer stopped answering at %d bytes", pmtu.BASE_PACKET,
                 self.bridge_packet_max)
        self._bridge_use_packets(pmtu.BASE_PACKET)
        self._bridge_probes.clear()
        self._bridge_probe_sizes = None
        if self._bridge_probe_timer is not None:
            self._bridge_probe_timer.cancel()
        self._bridge_probe_timer = asyncio.get_running_loop().call_later(pmtu.RAISE_INTERVAL, self._bridge_probe_round)

    async def _data_channel_flush(self) -> None:
        if self._outbound_queue and not self._reconfig_queue:
            return  # aiortc would move no message (the outbound queue is not empty) and reset no stream
        await super()._data_channel_flush()


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
    sctp._bridge_rtx = False  # type: ignore[attr-defined]
    sctp._bridge_rwnd = None  # type: ignore[attr-defined]
    if _lean_fits(sctp):
        sctp._bridge_t3_deadline = 0.0  # type: ignore[attr-defined]
        sctp._bridge_buf = _ffi.new("char[]", _RECORD_MAX)  # type: ignore[attr-defined]
        sctp._bridge_rx_ready = False  # type: ignore[attr-defined]
        sctp._bridge_headers = None  # type: ignore[attr-defined]
        sctp._bridge_sack_owed = 0  # type: ignore[attr-defined]
        sctp._bridge_sack_timer = None  # type: ignore[attr-defined]
        sctp._bridge_sack_deadline = 0.0  # type: ignore[attr-defined]
        sctp._bridge_sack_now = False  # type: ignore[attr-defined]
        sctp.bridge_sacks_alone = sctp.bridge_sacks_bundled = 0  # type: ignore[attr-defined]
        sctp.bridge_packet_max = pmtu.BASE_PACKET  # type: ignore[attr-defined]
        sctp._bridge_probes = {}  # type: ignore[attr-defined]
        sctp._bridge_probe_sizes = None  # type: ignore[attr-defined]
        sctp._bridge_probe_rounds = 0  # type: ignore[attr-defined]
        sctp._bridge_probe_timer = None  # type: ignore[attr-defined]
        sctp._bridge_t3_mark = None  # type: ignore[attr-defined]
        sctp.__class__ = LeanSctpTransport
    else:
        sctp.__class__ = BridgeSctpTransport
    return True


#: aiortc, aioice and pyOpenSSL internals the lean path uses; without them the transport gets the fixes only.
_LEAN_SCTP_STATE = ("_outbound_stream_seq", "_local_tsn", "_reconfig_queue", "_local_verification_tag",
                    "_forward_tsn_chunk", "_t3_handle", "_association_state", "_inbound_streams",
                    "_reconfig_deferred", "_rto", "_local_port", "_remote_port", "_remote_verification_tag")
_LEAN_SCTP_METHODS = ("_receive_forward_tsn_chunk", "_get_inbound_stream", "_t3_start", "_t3_expired")


_LEAN_OPENSSL = ("SSL_write", "SSL_read", "BIO_read", "BIO_write", "SSL_get_error", "ERR_clear_error",
                 "SSL_ERROR_ZERO_RETURN")
_LEAN_DTLS_STATE = ("_ssl", "_state", "_data_receiver", "_write_ssl", "_RTCDtlsTransport__tx_bytes",
                    "_RTCDtlsTransport__tx_packets", "_RTCDtlsTransport__rx_bytes", "_RTCDtlsTransport__rx_packets",
                    "_RTCDtlsTransport__handshake_done")


def _lean_fits(sctp: RTCSctpTransport) -> bool:
    dtls = sctp.transport
    ice = getattr(dtls, "transport", None)
    missing = [n for n in _LEAN_SCTP_STATE if not hasattr(sctp, n)]
    missing += [n for n in _LEAN_SCTP_METHODS if not callable(getattr(RTCSctpTransport, n, None))]
    if _lib is None or not all(hasattr(_lib, f) for f in _LEAN_OPENSSL):
        missing.append("pyOpenSSL's _util.lib")
    if not all(hasattr(dtls, n) for n in _LEAN_DTLS_STATE) or not callable(getattr(dtls, "_recv_next", None)):
        missing.append("RTCDtlsTransport internals")
    connection = getattr(ice, "_connection", None)
    if not hasattr(connection, "_nominated") or not isinstance(getattr(connection, "_queue", None), asyncio.Queue):
        missing.append("aioice Connection._nominated and _queue")
    if missing:
        log.info("lean SCTP send path not installed: this aiortc lacks %s", ", ".join(missing))
        return False
    return True


__all__ = ["decode_params", "install_params_guard", "MAX_DATA_CHANNELS", "MAX_RECEIVE_AHEAD", "MAX_SACK_DUPLICATES", "MAX_SACK_GAPS", "BridgeSctpTransport", "LeanSctpTransport", "data_packet", "install",
           "valid_gaps"]
