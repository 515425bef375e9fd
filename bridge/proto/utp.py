"""uTP (BEP 29), the Micro Transport Protocol, as a sans-IO state machine, interoperable with libutp
(uTorrent, Transmission) and libtorrent's own implementation (qBittorrent, Deluge).

One :class:`UtpConnection` is one connection. Datagrams go in with ``receive_datagram(data, now)``;
``datagrams_to_send(now)`` returns what to put on the wire; ``get_timer()`` says when ``handle_timer(now)``
must run next; ``next_event()`` yields :class:`Connected`, :class:`DataReceived` and
:class:`ConnectionClosed`. No sockets, no clocks: ``now`` is any monotonic clock in seconds.

Wire format (20 bytes, big-endian): ``type << 4 | version``, first extension, connection_id, timestamp_us,
timestamp_diff_us, wnd_size, seq_nr, ack_nr; then a chain of ``[next u8][len u8][payload]`` extensions,
then the payload. Behaviour follows libutp where BEP 29 is silent, with these details worth knowing:

* Connection ids: the initiator picks ``recv_id``, sends the SYN *with* ``recv_id`` and everything else
  with ``send_id = recv_id + 1``; the acceptor receives on ``syn_id + 1`` and sends on ``syn_id``.
* The acceptor answers the SYN with an ST_STATE whose seq_nr (random) it does not consume: its first
  ST_DATA reuses it, so the initiator starts with ``ack_nr = seq_nr - 1``. Like libutp, the acceptor sends
  no data before the initiator's first ST_DATA (a spoofed SYN cannot make it send a window of data), and
  reports :class:`Connected` then.
* An ST_STATE carries the sender's *next* seq_nr and never enters the reorder buffer, so its seq_nr is not
  checked here: libtorrent does not advance seq_nr for its FIN, libutp does, and both kinds of ACK must
  be taken after a FIN.
* Selective ACK (extension 1): bit ``i`` (LSB first in each byte) stands for ``ack_nr + 2 + i``. We send a
  multiple of 4 bytes (BEP 29); libtorrent sends any length, which we accept. Unknown extensions (2:
  libutp's extension bits, 3: libtorrent's close reason) are skipped.
* ``timestamp_diff_us == INT_MAX`` means "no sample" (an old uTorrent bug), as 0 does.

The adapter demultiplexes by (address, connection_id) with ``recv_id``. Two exceptions: an ST_RESET may
carry either id (libutp answers unknown connections with the id it received, libtorrent with its own send
id: look up ``(addr, id)`` and, failing that, a connection whose ``send_id == id``), and a retransmitted
SYN carries ``recv_id - 1`` of the acceptor (route a SYN whose ``(addr, id + 1)`` exists to that
connection: it answers with its ST_STATE again).
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass

from ..errors import LocalProtocolError, RemoteProtocolError

ST_DATA, ST_FIN, ST_STATE, ST_RESET, ST_SYN = 0, 1, 2, 3, 4
VERSION = 1
HEADER_SIZE = 20
EXT_SACK = 1

# ----------------------------------------------------------------------------------------------- sizes
#: Largest datagram we send to an IPv4 peer: libutp's UDP_IPV4_MTU, 1500 minus the IPv4 (20) and UDP (8)
#: headers minus room for GRE (24), PPPoE (8), MPPE (2) and a 36-byte fudge. No path MTU discovery is
#: done: this size crosses common tunnels without fragmentation, and a DATA packet carries at most
#: ``mtu - HEADER_SIZE`` = 1382 bytes of payload. The ``mtu`` argument can lower it, never raise it.
UDP_IPV4_MTU = 1402
#: The same for IPv6 (libutp's UDP_TEREDO_MTU): the IPv6 minimum MTU 1280 minus 40 + 8 header bytes.
UDP_IPV6_MTU = 1232
#: Smallest ``mtu`` accepted: the 576-byte datagram every IPv4 host must take, minus IP and UDP headers.
MIN_MTU = 548
#: Default receive buffer: the window we advertise when nothing is waiting for the application. It must
#: hold MAX_PACKETS_IN_FLIGHT packets (2.8 MB); 4 MiB keeps a 10 ms path at 400 MB/s. It bounds what the
#: peer can make us hold for an application that does not read (out-of-order data is bounded apart, by
#: MAX_REORDER_DISTANCE packets).
DEFAULT_RECV_BUFFER = 4 * 1024 * 1024
#: Bytes a peer may send beyond our advertised window before we drop its packets: room for a zero-window
#: probe and for senders (libutp) that count their window against an advertisement a few packets old.
RECV_WINDOW_SLACK = 64 * 1024
#: Farthest a DATA packet may be ahead of the next expected one (libutp's REORDER_BUFFER_MAX_SIZE and
#: its 0x3ff check). Farther packets are dropped: we never allocate reorder state from a guessed seq_nr.
MAX_REORDER_DISTANCE = 1024
#: Largest selective ACK we send: 1024 bits, which covers MAX_REORDER_DISTANCE. A received SACK is at
#: most 255 bytes (its length is a u8) and only the bits of packets we have in flight are looked at.
MAX_SACK_BYTES = 128
#: Longest extension chain accepted. Three kinds exist (SACK, extension bits, close reason); a longer
#: chain is garbage.
MAX_EXTENSIONS = 8
#: Packets we keep in flight at most while the connection has lost none, far from the 16-bit sequence
#: space wrapping onto itself. On a fast path that is the limit, not the windows: 1,000 packets of
#: 1,382 bytes at a 5-10 ms round trip (a busy Python receiver) cap a loopback transfer near 140 MB/s,
#: 2,000 let it reach about 200 (bench/utp_throughput.py).
MAX_PACKETS_IN_FLIGHT = 2000
#: The cap from the first loss (fast retransmit or timeout) on: below the 1,024-packet reorder buffer of
#: libutp, libtorrent and ours (MAX_REORDER_DISTANCE), so that once one packet is lost, the packets sent
#: after it are not dropped by the receiver as too far ahead.
LOSSY_PACKETS_IN_FLIGHT = 1000
#: Upper bound of the congestion window (libutp clamps to its send buffer). The peer's advertised window
#: limits us as well.
MAX_CWND = 4 * 1024 * 1024

# ---------------------------------------------------------------------------------- congestion control
#: LEDBAT target queueing delay, microseconds (BEP 29, libutp, libtorrent).
TARGET_DELAY_US = 100_000
#: Most the window may grow per round trip when the delay is at zero (libutp's
#: MAX_CWND_INCREASE_BYTES_PER_RTT); scaled by how far below the target the delay is.
MAX_CWND_INCREASE_BYTES_PER_RTT = 3000
#: Recent delay samples whose minimum is "the current delay" (libutp's CUR_DELAY_SIZE), filtering jitter.
CUR_DELAY_SIZE = 3
#: Stands in for the round trip when an ACK acknowledges only resent packets (no sample: Karn's rule).
_NO_RTT_BOUND = 1 << 62
#: Minutes of base-delay history: the base delay is the lowest one-way delay sample of the last this-many
#: one-minute slots (libutp keeps 13 slots but its comment and BEP 29 speak of two minutes; a short memory
#: follows clock drift and route changes, a long one resists a queue that never drains).
DELAY_BASE_HISTORY = 2
#: Seconds per base-delay history slot.
DELAY_BASE_SLOT = 60.0
#: The window is halved on loss at most once per this many seconds (libutp's MAX_WINDOW_DECAY).
LOSS_DECAY_INTERVAL = 0.1
#: Duplicate ACKs, or packets selectively acknowledged past a hole, that make us resend (libutp, TCP).
DUPLICATE_ACKS_BEFORE_RESEND = 3
#: Most packets resent because of one selective ACK (libutp).
MAX_FAST_RESENDS_PER_ACK = 4
#: How far an ack_nr may lag behind our in-flight window and still be acted on (libutp's
#: ACK_NR_ALLOWED_WINDOW). Any ack of a packet never sent is dropped as forged.
ACK_NR_ALLOWED_WINDOW = DUPLICATE_ACKS_BEFORE_RESEND
#: A packet whose ack_nr lags further (it was overtaken on the way, so its ACK is stale) still delivers its
#: data, if the ack is for one of our last this-many packets; its ACK and window are ignored. libutp and
#: libtorrent drop such packets whole, which makes every reordered data packet a retransmission.
STALE_ACK_WINDOW = 2 * MAX_REORDER_DISTANCE
#: Without the cwnd being the limit for this long, the window does not grow (libutp: a rate-limited
#: sender must not inflate a window it never uses).
CWND_GROWTH_IDLE = 1.0

# ------------------------------------------------------------------------------------------- timers
#: First retransmission timeout for the SYN and for data before any RTT sample (BEP 29: 1000 ms).
INITIAL_RTO = 1.0
#: Smallest retransmission timeout (BEP 29: max(rtt + 4 * rtt_var, 500 ms)).
MIN_RTO = 0.5
#: Largest retransmission timeout after exponential backoff (libtorrent caps at one minute).
MAX_RTO = 60.0
#: Consecutive timeouts of a SYN before the connection attempt fails: 1 + 2 + 4 = 7 s (libutp gives up
#: after the same 2 resends).
MAX_SYN_RESENDS = 2
#: Consecutive retransmission timeouts with nothing heard from the peer before the connection is dead.
#: libutp stops at 4. With the exponential backoff from MIN_RTO, 6 is 0.5 * (2**7 - 1) = 63.5 s of silence,
#: and it keeps a 20%-loss path alive: in simulation (0.5 MB each way, 20% loss both ways), 15 of 300
#: transfers died with 4 (a resend or its ACK lost again and again), none with 6. (At that loss rate 4.7%
#: of connection attempts still fail: 3 SYNs, as libutp.)
MAX_RESENDS = 6
#: Send an ST_STATE after this many seconds without sending anything (libutp: 29 s, "from measuring many
#: home NAT devices").
KEEPALIVE_INTERVAL = 29.0
#: An idle peer (nothing of ours in flight) silent for this long is dead: five missed keep-alives of a
#: libutp peer. The BitTorrent layer drops silent peers after 120 s; this is the transport's backstop.
#: With packets in flight, MAX_RESENDS decides instead.
DEAD_PEER_TIMEOUT = 150.0
#: After the peer advertised a zero window, send one packet anyway after this long (libutp), in case its
#: window update was lost.
ZERO_WINDOW_PROBE_DELAY = 15.0
#: An acceptor whose initiator never sends data gives up after this long (spoofed or abandoned SYN).
SYN_RECV_TIMEOUT = 30.0
#: After our FIN was acknowledged, wait this long (from the last packet heard) for the peer's FIN.
FIN_WAIT_TIMEOUT = 10.0
#: After the peer closed, keep delivering our queued data and FIN for at most this long.
LINGER_TIMEOUT = 30.0

_HEADER = struct.Struct(">BBHIIIHH")
_SEQ_MASK = 0xFFFF
_TS_MASK = 0xFFFFFFFF
_INT_MAX = 0x7FFFFFFF
_SEQ_SPACE = 0x10000

_SYN_SENT, _SYN_RECV, _CONNECTED = 0, 1, 2
#: first byte of an ST_DATA datagram of version 1
_DATA_V1 = (ST_DATA << 4) | VERSION


# ------------------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake is complete: the initiator got the answer to its SYN, or the acceptor got the
    initiator's first data packet."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """In-order payload bytes. Consecutive packets delivered before ``next_event()`` are joined."""

    #: the bytes; call ``data_consumed(len(data))`` once the application has taken them
    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is over for the application; emitted exactly once.

    Clean (``error=False``): the peer's FIN arrived with everything before it delivered, or our FIN was
    acknowledged and the peer did not close in time. ``error=True``: a RESET, or the peer stopped answering.
    The connection may still send a few datagrams afterwards (our FIN, ACKs) until ``closed`` is true.
    """

    #: human-readable cause, for logs
    reason: str
    #: the peer initiated it (its FIN or RESET)
    by_peer: bool
    #: an abort rather than an orderly close: data we sent may not have arrived
    error: bool


Event = Connected | DataReceived | ConnectionClosed


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed 20-byte header of a uTP datagram."""

    #: ST_DATA .. ST_SYN
    type: int
    #: always 1 for uTP
    version: int
    #: type of the first extension, 0 for none
    extension: int
    connection_id: int
    #: sender's clock, microseconds mod 2**32, when it sent the packet
    timestamp_us: int
    #: sender's receive time minus our timestamp of the last packet it got, microseconds mod 2**32
    timestamp_diff_us: int
    #: bytes the sender can still take
    wnd_size: int
    seq_nr: int
    #: the last packet the sender received in order
    ack_nr: int


def looks_like_utp(data: bytes) -> bool:
    """Cheap first-byte test for demultiplexing one UDP socket: version 1 and a known type."""
    return len(data) > 0 and (data[0] & 0x0F) == VERSION and data[0] >> 4 <= ST_SYN


def parse_header(data: bytes) -> Header | None:
    """The header of a datagram if it looks like uTP v1 (type 0..4, version 1, >= 20 bytes), else None."""
    if len(data) < HEADER_SIZE or not looks_like_utp(data):
        return None
    b0, ext, cid, ts, tsd, wnd, seq, ack = _HEADER.unpack_from(data)
    return Header(b0 >> 4, b0 & 0x0F, ext, cid, ts, tsd, wnd, seq, ack)


def parse_extensions(data: bytes | memoryview, first: int) -> tuple[int, bytes | None] | None:
    """Walk the extension chain of a datagram whose first extension type is ``first``.

    Returns (offset of the payload, the selective ACK bitmask or None), or None when the chain is
    malformed (runs past the end, or is longer than MAX_EXTENSIONS). Unknown extensions are skipped."""
    pos = HEADER_SIZE
    end = len(data)
    ext = first
    sack: bytes | None = None
    count = 0
    while ext:
        count += 1
        if count > MAX_EXTENSIONS or pos + 2 > end:
            return None
        nxt = data[pos]
        length = data[pos + 1]
        pos += 2
        if pos + length > end:
            return None
        if ext == EXT_SACK and sack is None and length:
            sack = bytes(data[pos : pos + length])
        pos += length
        ext = nxt
    return pos, sack


def _wrap_less32(a: int, b: int) -> bool:
    """a < b for 32-bit timestamps that wrap (libutp's wrapping_compare_less)."""
    return ((b - a) & _TS_MASK) < ((a - b) & _TS_MASK)


class _Packet:
    """One packet of ours that the peer has not acknowledged yet."""

    __slots__ = ("seq", "type", "payload", "transmissions", "time_sent", "need_resend")

    def __init__(self, seq: int, type: int, payload: bytes) -> None:
        self.seq = seq
        self.type = type
        self.payload = payload
        self.transmissions = 0
        self.time_sent = 0.0
        #: counted lost by a timeout: not in flight until resent
        self.need_resend = False


class UtpConnection:
    """One uTP connection. Build it with :meth:`connect` or :meth:`accept`."""

    def __init__(self, *, recv_id: int, send_id: int, seq_nr: int, now: float, mtu: int, recv_buffer: int,
                 state: int) -> None:
        if mtu < MIN_MTU:
            raise LocalProtocolError(f"uTP mtu {mtu} is below the minimum of {MIN_MTU}")
        if recv_buffer < 1:
            raise LocalProtocolError("uTP receive buffer must be positive")
        #: connection id of the packets addressed to us (the demultiplexing key with the address)
        self.recv_id = recv_id
        #: connection id of the packets we send (but the SYN)
        self.send_id = send_id
        self._state = state
        self._mtu = min(mtu, UDP_IPV4_MTU)
        #: payload bytes per DATA packet
        self._mss = self._mtu - HEADER_SIZE
        self._recv_buffer = recv_buffer
        self._created = now

        # sending
        self._seq_nr = seq_nr  # next sequence number to use
        self._ack_nr = 0  # last packet received in order
        self._cur_window_packets = 0  # seq numbers from the oldest unacked one up to _seq_nr - 1
        self._outbuf: dict[int, _Packet] = {}
        self._outbuf_bytes = 0  # payload bytes in _outbuf
        self._cur_window = 0  # payload bytes in flight (sent, not acked, not counted lost)
        self._resend: deque[int] = deque()  # packets to (re)send as the windows allow, oldest first
        self._fast: list[int] = []  # packets to resend at once (fast retransmit)
        self._sendq = bytearray()  # application bytes not packetized yet
        self._peer_wnd = 0
        self._zero_window_deadline: float | None = None
        self._probing = False
        self._max_in_flight = MAX_PACKETS_IN_FLIGHT  # LOSSY_PACKETS_IN_FLIGHT after a loss

        # congestion control
        self._cwnd = float(self._mss)
        self._slow_start = True
        self._ssthresh = float(MAX_CWND)
        self._last_decay = now - LOSS_DECAY_INTERVAL
        self._last_maxed_out = now
        self._base_hist = [0] * DELAY_BASE_HISTORY
        self._base_idx = 0
        self._base_time = now
        self._base = 0
        self._base_init = False
        self._cur_delay = [0] * CUR_DELAY_SIZE
        self._cur_delay_idx = 0
        self._reply_micro = 0

        # retransmission
        self._rtt: float | None = None
        self._rtt_var = 0.0
        self._rto = INITIAL_RTO
        self._retransmit_timeout = INITIAL_RTO
        self._rto_deadline: float | None = None
        self._retransmit_count = 0
        self._fast_resend_seq_nr = seq_nr
        self._dup_acks = 0

        # receiving
        self._reorder: dict[int, bytes] = {}  # out-of-order payloads by seq_nr
        self._reorder_bytes = 0
        self._sack_mask = 0  # bit k: ack_nr + 2 + k is in _reorder
        self._unconsumed = 0  # delivered, not yet data_consumed()
        self._got_fin = False
        self._eof_seq = 0
        self._eof_reached = False

        # what to send besides data
        self._ack_pending = False
        self._synack_pending = False
        self._keepalive_pending = False
        self._reset_pending = False
        self._last_adv_wnd = recv_buffer
        self._syn_seq = 0  # acceptor: the initiator's SYN seq_nr (to recognise a retransmission)

        # closing
        self._close_requested = False
        self._fin_seq: int | None = None
        self._fin_acked = False
        self._close_emitted = False
        self._finished = False
        self._close_deadline: float | None = None

        self._last_sent = now
        self._last_recv = now
        self._events: deque[Event | bytearray] = deque()

        #: statistics (benchmarks, tests, logs)
        self.packets_sent = 0
        self.packets_received = 0
        self.bytes_sent = 0  # whole datagrams
        self.payload_sent = 0  # application bytes, first transmissions only
        self.payload_received = 0  # application bytes delivered
        self.retransmits = 0  # packets sent again (timeouts and fast retransmits)
        self.fast_retransmits = 0
        self.timeouts = 0
        self.dropped = 0  # datagrams dropped as garbage, forged or out of window
        self.duplicates = 0  # data packets received twice
        self.stale = 0  # packets overtaken by later ones: ACK ignored (and an ST_STATE dropped)
        self.window_drops = 0  # data packets dropped because the peer overran our window

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def connect(cls, now: float, rng: random.Random, *, mtu: int = UDP_IPV4_MTU,
                recv_buffer: int = DEFAULT_RECV_BUFFER) -> UtpConnection:
        """A connection we initiate; its SYN is queued for ``datagrams_to_send``."""
        recv_id = rng.randrange(_SEQ_SPACE)
        conn = cls(recv_id=recv_id, send_id=(recv_id + 1) & _SEQ_MASK, seq_nr=rng.randrange(_SEQ_SPACE), now=now,
                   mtu=mtu, recv_buffer=recv_buffer, state=_SYN_SENT)
        syn = conn._new_packet(ST_SYN, b"")
        syn.need_resend = True
        conn._resend.append(syn.seq)
        return conn

    @classmethod
    def accept(cls, syn: bytes, now: float, rng: random.Random, *, mtu: int = UDP_IPV4_MTU,
               recv_buffer: int = DEFAULT_RECV_BUFFER) -> UtpConnection:
        """The connection a peer opens with the datagram ``syn``; the answering ST_STATE is queued.

        Raises RemoteProtocolError if ``syn`` is not a well-formed SYN."""
        h = parse_header(syn)
        if h is None or h.type != ST_SYN:
            raise RemoteProtocolError("uTP: not a SYN")
        if parse_extensions(syn, h.extension) is None:
            raise RemoteProtocolError("uTP: SYN with a malformed extension chain")
        conn = cls(recv_id=(h.connection_id + 1) & _SEQ_MASK, send_id=h.connection_id,
                   seq_nr=rng.randrange(_SEQ_SPACE), now=now, mtu=mtu, recv_buffer=recv_buffer, state=_SYN_RECV)
        conn._ack_nr = h.seq_nr
        conn._syn_seq = h.seq_nr
        conn._peer_wnd = h.wnd_size  # libtorrent sends 0 here; its first DATA carries the real window
        if h.timestamp_us:
            conn._reply_micro = (_micros(now) - h.timestamp_us) & _TS_MASK
        conn._synack_pending = True
        conn.packets_received = 1
        return conn

    # ---------------------------------------------------------------------------------- properties
    @property
    def closed(self) -> bool:
        """The connection is finished: nothing more to send, no timer. The adapter may forget it."""
        return self._finished

    @property
    def connected(self) -> bool:
        return self._state == _CONNECTED and not self._close_emitted

    @property
    def send_buffered(self) -> int:
        """Bytes queued or in flight and not yet acknowledged (for the adapter's back-pressure)."""
        return len(self._sendq) + self._outbuf_bytes

    @property
    def send_queued(self) -> int:
        """Bytes queued by ``send`` and not yet put in a packet (the adapter's back-pressure: what is in
        flight is bounded by the windows already)."""
        return len(self._sendq)

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time in seconds, None before the first sample."""
        return self._rtt

    @property
    def rto(self) -> float:
        return self._retransmit_timeout

    @property
    def cwnd(self) -> int:
        """Congestion window, bytes."""
        return int(self._cwnd)

    @property
    def peer_window(self) -> int:
        return self._peer_wnd

    @property
    def in_flight(self) -> int:
        return self._cur_window

    @property
    def recv_window(self) -> int:
        """The window we advertise: free receive buffer."""
        return max(0, self._recv_buffer - self._unconsumed - self._reorder_bytes)

    @property
    def queuing_delay(self) -> float:
        """The current LEDBAT delay estimate (one-way queueing delay towards the peer), seconds."""
        return min(self._cur_delay) / 1e6

    @property
    def seq_nr(self) -> int:
        return self._seq_nr

    @property
    def ack_nr(self) -> int:
        return self._ack_nr

    @property
    def mss(self) -> int:
        """Payload bytes per DATA packet."""
        return self._mss

    # ---------------------------------------------------------------------------- application API
    def send(self, data: bytes) -> None:
        """Queue application bytes; they go out as the windows allow."""
        if self._close_requested or self._close_emitted or self._finished:
            raise LocalProtocolError("uTP: send() after close")
        self._sendq += data

    def data_consumed(self, n: int) -> None:
        """The application took ``n`` delivered bytes: reopen that much of the advertised window."""
        if n < 0 or n > self._unconsumed:
            raise LocalProtocolError(f"uTP: data_consumed({n}) with {self._unconsumed} bytes delivered")
        before = self.recv_window
        self._unconsumed -= n
        after = self.recv_window
        # Tell the peer when the window reopens from below one packet, or grew by a quarter of the
        # buffer since we last advertised it (libutp sends an ACK on every read; this is fewer).
        if self._state == _CONNECTED and not self._finished and after > before and (
                self._last_adv_wnd < self._mss <= after or after - self._last_adv_wnd >= self._recv_buffer // 4):
            self._ack_pending = True

    def close(self) -> None:
        """Send FIN after all queued data. ConnectionClosed follows once the peer closed too (or gave no
        FIN in FIN_WAIT_TIMEOUT after acknowledging ours), or on give-up."""
        if self._finished:
            return
        self._close_requested = True

    def reset(self) -> None:
        """Abort: send ST_RESET; ConnectionClosed(error=True) at once."""
        if self._finished:
            return
        self._reset_pending = True
        self._emit_closed("reset by us", by_peer=False, error=True)
        self._finished = True

    def next_event(self) -> Event | None:
        if not self._events:
            return None
        ev = self._events.popleft()
        if isinstance(ev, bytearray):
            return DataReceived(bytes(ev))
        return ev

    # ------------------------------------------------------------------------------------- input
    def receive_datagram(self, data: bytes | memoryview, now: float) -> None:
        """Process one datagram from the peer. Garbage, forged and out-of-window packets are dropped
        (counted in ``dropped``); this never raises on what the peer sends. ``data`` may be a view into a
        buffer that is reused afterwards: nothing keeps a reference to it."""
        self.packets_received += 1
        if self._finished or len(data) < HEADER_SIZE or data[0] & 0x0F != VERSION or data[0] >> 4 > ST_SYN:
            self.dropped += 1
            return
        b0, first_ext, cid, timestamp, timestamp_diff, wnd_size, seq_nr, ack_nr = _HEADER.unpack_from(data)
        if (b0 == _DATA_V1 and not first_ext and wnd_size and cid == self.recv_id
                and seq_nr == (self._ack_nr + 1) & _SEQ_MASK and ack_nr == (self._seq_nr - 1) & _SEQ_MASK
                and not self._cur_window_packets and not self._reorder and self._state == _CONNECTED
                and self._close_deadline is None and not self._got_fin):
            # The common case of a bulk download, in one step: the next DATA packet in order, with no
            # extension, acknowledging nothing new (we have nothing in flight). The general path below
            # does the same with every check spelled out.
            payload = data[HEADER_SIZE:]
            if self._unconsumed + len(payload) <= self._recv_buffer + RECV_WINDOW_SLACK:
                self._last_recv = now
                self._retransmit_count = 0
                if timestamp:
                    self._reply_micro = (int(now * 1_000_000) - timestamp) & _TS_MASK
                self._peer_wnd = wnd_size
                self._zero_window_deadline = None
                self._probing = False
                self._deliver(payload)
                self._ack_nr = seq_nr
                self._ack_pending = True
                return
        t = b0 >> 4
        if t == ST_RESET:
            self._on_reset(cid, ack_nr)
            return
        if t == ST_SYN:
            # The initiator did not get our answer and sent its SYN again: answer again.
            if self._state == _SYN_RECV and cid == self.send_id and seq_nr == self._syn_seq:
                self._synack_pending = True
                self._last_recv = now
            else:
                self.dropped += 1
            return
        if cid != self.recv_id:
            self.dropped += 1
            return
        # How far the ack lags behind the last packet we sent; an ack of a packet never sent is forged.
        lag = (self._seq_nr - 1 - ack_nr) & _SEQ_MASK
        stale = lag > self._cur_window_packets + ACK_NR_ALLOWED_WINDOW
        if stale:
            if lag > STALE_ACK_WINDOW or self._state == _SYN_SENT:
                self.dropped += 1
                return
            self.stale += 1
            if t == ST_STATE:
                return
        offset, sack = HEADER_SIZE, None
        if first_ext:
            parsed = parse_extensions(data, first_ext)
            if parsed is None:
                self.dropped += 1
                return
            offset, sack = parsed
        if self._state == _SYN_SENT:
            if lag != 0:  # must acknowledge our SYN
                self.dropped += 1
                return
            # The acceptor's ST_STATE carries the seq_nr its first DATA will use (not consumed).
            self._ack_nr = (seq_nr - 1) & _SEQ_MASK
        elif t != ST_STATE:
            ahead = (seq_nr - self._ack_nr - 1) & _SEQ_MASK
            if MAX_REORDER_DISTANCE <= ahead < _SEQ_SPACE - MAX_REORDER_DISTANCE:
                self.dropped += 1  # neither a recent duplicate nor within the reorder window
                return

        self._last_recv = now
        # Any valid packet shows the peer is alive (libtorrent resets its timeout count the same way).
        self._retransmit_count = 0
        if self._close_deadline is not None and not self._close_emitted:
            self._close_deadline = now + FIN_WAIT_TIMEOUT
        now_us = _micros(now)
        if timestamp:
            self._reply_micro = (now_us - timestamp) & _TS_MASK
        actual_delay = 0 if timestamp_diff == _INT_MAX else timestamp_diff

        if stale:  # overtaken on the way: only its data still counts
            if self._state == _CONNECTED:
                self._receive_payload(t, seq_nr, data[offset:])
                self._check_finished()
            return

        # ---- acknowledgements
        cwp = self._cur_window_packets
        acks = cwp - lag if lag < cwp else 0
        # A duplicate ACK is an ST_STATE repeating the ack before our oldest packet (libutp). Its seq_nr must
        # be the peer's next one: of the two ST_STATEs sent after a FIN (see datagrams_to_send) only one
        # counts.
        if cwp > 0 and t == ST_STATE and lag == cwp and seq_nr == (self._ack_nr + 1) & _SEQ_MASK:
            self._dup_acks += 1
        elif cwp > 0:
            self._dup_acks = 0
        acked_bytes = 0
        min_rtt = -1.0
        if acks:
            acked_bytes, min_rtt = self._ack_cumulative(acks, now)
        if sack is not None and self._cur_window_packets:
            b, r = self._ack_selective(ack_nr, sack, now)
            acked_bytes += b
            if r >= 0 and (min_rtt < 0 or r < min_rtt):
                min_rtt = r
        if acks or sack is not None:
            self._advance_oldest()

        # ---- one-way delay and congestion control. Only packets that acknowledge some of ours give delay
        # samples: the samples steer our sending, and a pure receiver skips the work on every data packet.
        if actual_delay and (acks or sack is not None):
            self._add_delay_sample(actual_delay, now)
            # (min_rtt is -1 when every packet acknowledged had been sent more than once: no bound then)
            min_rtt_us = int(min_rtt * 1e6) if min_rtt >= 0 else _NO_RTT_BOUND
            value = min(self._cur_delay)
            if value > min_rtt_us:  # the delay can not exceed the round trip: shift the base
                self._shift_base(value - min_rtt_us)
            if acked_bytes > 0:
                self._apply_ccontrol(acked_bytes, min_rtt_us, now)

        # ---- the peer's window
        if wnd_size == 0 and (self._peer_wnd != 0 or self._zero_window_deadline is None):
            self._zero_window_deadline = now + ZERO_WINDOW_PROBE_DELAY
        if wnd_size:
            self._zero_window_deadline = None
            self._probing = False
        self._peer_wnd = wnd_size

        # ---- handshake
        if self._state == _SYN_SENT:
            self._state = _CONNECTED
            self._events.append(Connected())
        elif self._state == _SYN_RECV and t != ST_STATE:
            self._state = _CONNECTED
            self._events.append(Connected())

        # ---- our FIN
        if self._fin_seq is not None and not self._fin_acked and self._fin_seq not in self._outbuf:
            self._fin_acked = True
            if not self._eof_reached and self._close_deadline is None:
                self._close_deadline = now + FIN_WAIT_TIMEOUT

        # ---- loss: three duplicate ACKs
        if self._dup_acks >= DUPLICATE_ACKS_BEFORE_RESEND and self._cur_window_packets:
            oldest = (self._seq_nr - self._cur_window_packets) & _SEQ_MASK
            if self._may_fast_resend(oldest) and self._fast_resend(oldest):
                self._dup_acks = 0
                self._decay(now)

        if t == ST_STATE or self._state != _CONNECTED:
            self._check_finished()
            return
        self._receive_payload(t, seq_nr, data[offset:])
        self._check_finished()

    def _on_reset(self, cid: int, ack_nr: int) -> None:
        if cid not in (self.recv_id, self.send_id):
            self.dropped += 1
            return
        # As libtorrent: a RESET acknowledging a packet we never sent is forged. (Its ack_nr is the seq_nr
        # of a packet of ours, which for an ST_STATE is our next seq_nr.)
        if 0 < ((ack_nr - self._seq_nr) & _SEQ_MASK) < 0x8000:
            self.dropped += 1
            return
        refused = self._state == _SYN_SENT
        self._emit_closed("connection refused" if refused else "connection reset by peer", by_peer=True,
                          error=True)
        self._finished = True

    def _ack_cumulative(self, acks: int, now: float) -> tuple[int, float]:
        acked = 0
        min_rtt = -1.0
        seq = (self._seq_nr - self._cur_window_packets) & _SEQ_MASK
        outbuf = self._outbuf
        done = 0
        for _ in range(acks):
            pkt = outbuf.get(seq)
            if pkt is not None:
                if pkt.transmissions == 0:
                    break  # never sent: whatever claims otherwise is wrong; stop here
                rtt = self._ack_packet(pkt, now)
                acked += len(pkt.payload)
                if rtt >= 0 and (min_rtt < 0 or rtt < min_rtt):
                    min_rtt = rtt
            seq = (seq + 1) & _SEQ_MASK
            done += 1
        self._cur_window_packets -= done
        if self._less16(self._fast_resend_seq_nr, seq):
            self._fast_resend_seq_nr = seq
        return acked, min_rtt

    def _ack_packet(self, pkt: _Packet, now: float) -> float:
        """Remove an acknowledged packet; returns its round-trip time, or -1 for a packet sent more than once
        (Karn's rule: which copy was acknowledged is unknown. Timed from the resend, a late ACK of the first
        copy looks like a round trip of a few milliseconds, and as LEDBAT's bound on the queueing delay that
        would hide the whole queue)."""
        del self._outbuf[pkt.seq]
        self._outbuf_bytes -= len(pkt.payload)
        if not pkt.need_resend:
            self._cur_window -= len(pkt.payload)
        rtt = max(0.0, now - pkt.time_sent)
        if pkt.transmissions == 1:  # Karn: only packets sent once give RTT samples
            if self._rtt is None:
                self._rtt = rtt
                self._rtt_var = rtt / 2
            else:
                self._rtt_var += (abs(self._rtt - rtt) - self._rtt_var) / 4
                self._rtt += (rtt - self._rtt) / 8
            self._rto = min(max(self._rtt + 4 * self._rtt_var, MIN_RTO), MAX_RTO)
        self._retransmit_timeout = self._rto
        self._rto_deadline = now + self._rto
        return rtt if pkt.transmissions == 1 else -1.0

    def _ack_selective(self, ack_nr: int, sack: bytes, now: float) -> tuple[int, float]:
        """Acknowledge the packets a SACK bitmask names, and resend those it shows lost."""
        base = (ack_nr + 2) & _SEQ_MASK
        # only bits of packets we have sent count
        span = (self._seq_nr - base) & _SEQ_MASK
        if span == 0 or span >= 0x8000:
            return 0, -1.0
        nbits = min(len(sack) * 8, span)
        mask = int.from_bytes(sack, "little") & ((1 << nbits) - 1)
        acked = 0
        min_rtt = -1.0
        outbuf = self._outbuf
        total = 0
        m = mask
        while m:
            low = m & -m
            i = low.bit_length() - 1
            m ^= low
            total += 1
            pkt = outbuf.get((base + i) & _SEQ_MASK)
            if pkt is not None and pkt.transmissions:
                rtt = self._ack_packet(pkt, now)
                acked += len(pkt.payload)
                if rtt >= 0 and (min_rtt < 0 or rtt < min_rtt):
                    min_rtt = rtt
        # A packet with DUPLICATE_ACKS_BEFORE_RESEND or more packets acknowledged after it is lost. Walk up
        # from ack_nr + 1 (implicitly missing) while enough acknowledged packets remain above.
        resent = 0
        above = total
        i = -1
        while above >= DUPLICATE_ACKS_BEFORE_RESEND and i < nbits and resent < MAX_FAST_RESENDS_PER_ACK:
            if i >= 0 and mask >> i & 1:
                above -= 1
            else:
                seq = (base + i) & _SEQ_MASK
                pkt = outbuf.get(seq)
                if pkt is not None and pkt.transmissions and self._may_fast_resend(seq) and self._fast_resend(seq):
                    resent += 1
            i += 1
        if resent:
            self._decay(now)
        return acked, min_rtt

    def _advance_oldest(self) -> None:
        # Packets acknowledged selectively leave gaps; the window starts at the oldest one still unacked.
        outbuf = self._outbuf
        while self._cur_window_packets and ((self._seq_nr - self._cur_window_packets) & _SEQ_MASK) not in outbuf:
            self._cur_window_packets -= 1
        if not self._cur_window_packets:
            self._rto_deadline = None
            self._dup_acks = 0

    def _may_fast_resend(self, seq: int) -> bool:
        return not self._less16(seq, self._fast_resend_seq_nr)

    def _fast_resend(self, seq: int) -> bool:
        pkt = self._outbuf.get(seq)
        if pkt is None or not pkt.transmissions:
            return False
        if seq not in self._fast:
            self._fast.append(seq)
        self.fast_retransmits += 1
        self._fast_resend_seq_nr = (seq + 1) & _SEQ_MASK
        return True

    def _receive_payload(self, t: int, seq: int, payload: bytes | memoryview) -> None:
        ahead = (seq - self._ack_nr - 1) & _SEQ_MASK
        if ahead >= MAX_REORDER_DISTANCE:  # an old packet again: our ACK was lost
            self.duplicates += 1
            self._ack_pending = True
            return
        if self._got_fin and not self._less16(seq, (self._eof_seq + 1) & _SEQ_MASK):
            self.dropped += 1  # past the peer's FIN
            return
        if t == ST_FIN and not self._got_fin:
            self._got_fin = True
            self._eof_seq = seq
        limit = self._recv_buffer + RECV_WINDOW_SLACK
        if ahead == 0:
            if payload and self._unconsumed + self._reorder_bytes + len(payload) > limit:
                self.window_drops += 1
                self._ack_pending = True
                return
            self._deliver(payload)
            self._ack_nr = seq
            self._sack_mask >>= 1
            reorder = self._reorder
            while reorder and not (self._got_fin and self._ack_nr == self._eof_seq):
                nxt = (self._ack_nr + 1) & _SEQ_MASK
                entry = reorder.pop(nxt, None)
                if entry is None:
                    break
                self._reorder_bytes -= len(entry)
                self._deliver(entry)
                self._ack_nr = nxt
                self._sack_mask >>= 1
            self._ack_pending = True
            if self._got_fin and self._ack_nr == self._eof_seq and not self._eof_reached:
                self._on_eof()
            return
        if seq in self._reorder:
            self.duplicates += 1
            self._ack_pending = True
            return
        if self._unconsumed + self._reorder_bytes + len(payload) > limit:
            self.window_drops += 1
            self._ack_pending = True
            return
        self._reorder[seq] = bytes(payload)
        self._reorder_bytes += len(payload)
        self._sack_mask |= 1 << (ahead - 1)
        self._ack_pending = True

    def _deliver(self, payload: bytes | memoryview) -> None:
        if not payload or self._eof_reached:
            return
        self._unconsumed += len(payload)
        self.payload_received += len(payload)
        events = self._events
        if events and isinstance(events[-1], bytearray):
            events[-1] += payload
        else:
            events.append(bytearray(payload))

    def _on_eof(self) -> None:
        self._eof_reached = True
        self._reorder.clear()
        self._reorder_bytes = 0
        self._sack_mask = 0
        if not self._close_emitted:
            by_peer = not self._close_requested
            self._emit_closed("closed by peer" if by_peer else "closed", by_peer=by_peer, error=False)
            # Answer with our own FIN after whatever is still queued, for at most LINGER_TIMEOUT.
            self._close_requested = True
            self._close_deadline = self._last_recv + LINGER_TIMEOUT

    def _emit_closed(self, reason: str, *, by_peer: bool, error: bool) -> None:
        if self._close_emitted:
            return
        self._close_emitted = True
        self._events.append(ConnectionClosed(reason, by_peer, error))

    def _check_finished(self) -> None:
        if self._close_emitted and self._eof_reached and self._fin_acked:
            self._finished = True

    # ------------------------------------------------------------------------ congestion control
    def _add_delay_sample(self, sample: int, now: float) -> None:
        hist = self._base_hist
        if not self._base_init:
            for i in range(DELAY_BASE_HISTORY):
                hist[i] = sample
            self._base = sample
            self._base_init = True
            self._base_time = now
        if _wrap_less32(sample, hist[self._base_idx]):
            hist[self._base_idx] = sample
        if _wrap_less32(sample, self._base):
            self._base = sample
        delay = (sample - self._base) & _TS_MASK
        if delay >= 0x80000000:  # the base was shifted past this sample: no queueing
            delay = 0
        self._cur_delay[self._cur_delay_idx] = delay
        self._cur_delay_idx = (self._cur_delay_idx + 1) % CUR_DELAY_SIZE
        if now - self._base_time > DELAY_BASE_SLOT:
            self._base_time = now
            self._base_idx = (self._base_idx + 1) % DELAY_BASE_HISTORY
            hist[self._base_idx] = sample
            base = hist[0]
            for v in hist:
                if _wrap_less32(v, base):
                    base = v
            self._base = base

    def _shift_base(self, offset: int) -> None:
        hist = self._base_hist
        for i in range(DELAY_BASE_HISTORY):
            hist[i] = (hist[i] + offset) & _TS_MASK
        self._base = (self._base + offset) & _TS_MASK
        for i in range(CUR_DELAY_SIZE):
            self._cur_delay[i] = max(0, self._cur_delay[i] - offset)

    def _apply_ccontrol(self, acked_bytes: int, min_rtt_us: int, now: float) -> None:
        """LEDBAT as libutp's apply_ccontrol, with TCP-like slow start (libtorrent) until the delay
        nears the target or a loss."""
        our_delay = min(min(self._cur_delay), min_rtt_us)
        cwnd = self._cwnd
        window_factor = min(acked_bytes, cwnd) / max(cwnd, acked_bytes)
        delay_factor = (TARGET_DELAY_US - our_delay) / TARGET_DELAY_US
        gain = MAX_CWND_INCREASE_BYTES_PER_RTT * window_factor * delay_factor
        limited = now - self._last_maxed_out <= CWND_GROWTH_IDLE
        if gain > 0 and not limited:
            gain = 0.0
        ledbat = cwnd + gain
        if self._slow_start:
            ss = cwnd + (acked_bytes if limited else 0)
            if ss > self._ssthresh:
                self._slow_start = False
            elif our_delay > TARGET_DELAY_US * 0.9:
                self._slow_start = False
                self._ssthresh = cwnd
            else:
                cwnd = max(ss, ledbat)
        else:
            cwnd = ledbat
        self._cwnd = min(max(cwnd, float(self._mss)), float(MAX_CWND))

    def _decay(self, now: float) -> None:
        """Loss: halve the window, at most once per LOSS_DECAY_INTERVAL."""
        self._max_in_flight = LOSSY_PACKETS_IN_FLIGHT
        if now - self._last_decay >= LOSS_DECAY_INTERVAL:
            self._cwnd = max(self._cwnd / 2, float(self._mss))
            self._last_decay = now
            self._slow_start = False
            self._ssthresh = self._cwnd

    # -------------------------------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (absolute, in ``now``'s clock), or None once closed."""
        if self._finished:
            return None
        if self._cur_window_packets and self._rto_deadline is not None:
            t = self._rto_deadline  # retransmission, and its give-up rule
        else:
            t = self._last_recv + DEAD_PEER_TIMEOUT  # idle: only keep-alives tell us the peer is there
        if self._state == _CONNECTED and self._fin_seq is None:
            t = min(t, self._last_sent + KEEPALIVE_INTERVAL)
        elif self._state == _SYN_RECV:
            t = min(t, self._created + SYN_RECV_TIMEOUT)
        if self._zero_window_deadline is not None and self._peer_wnd == 0:
            t = min(t, self._zero_window_deadline)
        if self._close_deadline is not None:
            t = min(t, self._close_deadline)
        return t

    def handle_timer(self, now: float) -> None:
        if self._finished:
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            if not self._close_emitted:
                self._emit_closed("closed (the peer sent no FIN)", by_peer=False, error=False)
            self._finished = True
            return
        if self._state == _SYN_RECV and now >= self._created + SYN_RECV_TIMEOUT:
            self._give_up("the initiator never sent data")
            return
        if not self._cur_window_packets and now >= self._last_recv + DEAD_PEER_TIMEOUT:
            self._give_up("the peer went silent")
            return
        if self._peer_wnd == 0 and self._zero_window_deadline is not None and now >= self._zero_window_deadline:
            self._peer_wnd = self._mss  # probe with one packet
            self._zero_window_deadline = None
            self._probing = True
        if self._cur_window_packets and self._rto_deadline is not None and now >= self._rto_deadline:
            self._on_timeout(now)
            if self._finished:
                return
        if self._state == _CONNECTED and self._fin_seq is None and now >= self._last_sent + KEEPALIVE_INTERVAL:
            self._keepalive_pending = True
            self._last_sent = now

    def _on_timeout(self, now: float) -> None:
        limit = MAX_SYN_RESENDS if self._state == _SYN_SENT else MAX_RESENDS
        if self._retransmit_count >= limit and not self._probing:
            oldest = self._outbuf.get((self._seq_nr - self._cur_window_packets) & _SEQ_MASK)
            if self._cur_window_packets == 1 and oldest is not None and oldest.type == ST_FIN:
                # Everything but our FIN arrived; the peer is gone without acknowledging the FIN.
                self._fin_acked = True
                if not self._close_emitted:
                    self._emit_closed("closed (our FIN was not acknowledged)", by_peer=False, error=False)
                self._finished = True
                return
            self._give_up("connection timed out" if self._state != _SYN_SENT else "no answer to SYN")
            return
        self.timeouts += 1
        self._max_in_flight = LOSSY_PACKETS_IN_FLIGHT
        self._retransmit_count += 1
        self._retransmit_timeout = min(self._retransmit_timeout * 2, MAX_RTO)
        self._rto_deadline = now + self._retransmit_timeout
        self._dup_acks = 0
        # Start over from one packet (libutp and TCP); slow start ends at half the old window (TCP; libutp
        # keeps the old threshold); every packet in flight counts as lost.
        self._ssthresh = max(self._cwnd / 2, float(self._mss))
        self._cwnd = float(self._mss)
        self._slow_start = True
        self._resend.clear()
        seq = (self._seq_nr - self._cur_window_packets) & _SEQ_MASK
        for _ in range(self._cur_window_packets):
            pkt = self._outbuf.get(seq)
            if pkt is not None and pkt.transmissions:
                if not pkt.need_resend:
                    pkt.need_resend = True
                    self._cur_window -= len(pkt.payload)
                self._resend.append(seq)
            seq = (seq + 1) & _SEQ_MASK

    def _give_up(self, reason: str) -> None:
        self._emit_closed(reason, by_peer=False, error=True)
        self._finished = True

    # ------------------------------------------------------------------------------------- output
    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The datagrams to send now, in order."""
        out: list[bytes] = []
        if self._reset_pending:
            self._reset_pending = False
            out.append(_HEADER.pack((ST_RESET << 4) | VERSION, 0, self.send_id, _micros(now), self._reply_micro, 0,
                                    self._seq_nr, self._ack_nr))
            self._count_sent(out)
            return out
        ts = _micros(now)
        wnd = self.recv_window
        if self._synack_pending:
            self._synack_pending = False
            out.append(self._state_packet(ts, wnd, self._ack_nr, self._seq_nr))
        carried_ack = False
        if not self._finished:
            outbuf = self._outbuf
            for seq in self._fast:
                pkt = outbuf.get(seq)
                if pkt is not None:
                    out.append(self._transmit(pkt, now, ts, wnd))
                    carried_ack = True
            self._fast.clear()
            resend = self._resend
            while resend:
                pkt = outbuf.get(resend[0])
                if pkt is None or not pkt.need_resend:
                    resend.popleft()
                    continue
                if self._cur_window and self._cur_window + len(pkt.payload) > min(self._cwnd, self._peer_wnd):
                    self._note_maxed_out(now)
                    break
                resend.popleft()
                out.append(self._transmit(pkt, now, ts, wnd))
                carried_ack = True
            if self._state == _CONNECTED and not resend:
                if self._sendq:
                    carried_ack |= self._send_new_data(out, now, ts, wnd)
                if self._close_requested and not self._sendq and self._fin_seq is None:
                    fin = self._new_packet(ST_FIN, b"")
                    self._fin_seq = fin.seq
                    out.append(self._transmit(fin, now, ts, wnd))
                    carried_ack = True
        if self._ack_pending and (not carried_ack or self._reorder) or self._keepalive_pending:
            ack_nr = self._ack_nr
            keepalive = self._keepalive_pending and not self._ack_pending
            if keepalive:
                # libutp's keep-alive: an old ACK nobody acts on. It carries no SACK: the bitmask is
                # relative to the ack_nr, and shifted by one it would acknowledge packets we never got.
                ack_nr = (ack_nr - 1) & _SEQ_MASK
            if self._fin_seq is not None:
                # After our FIN, libtorrent only takes an ST_STATE whose seq_nr is the FIN's (it does not
                # advance seq_nr for a FIN) and libutp only one with the next seq_nr: send both.
                out.append(self._state_packet(ts, wnd, ack_nr, self._fin_seq, sack=not keepalive))
            out.append(self._state_packet(ts, wnd, ack_nr, self._seq_nr, sack=not keepalive))
        self._ack_pending = False
        self._keepalive_pending = False
        if out:
            self._last_adv_wnd = wnd
            self._last_sent = now
            self._count_sent(out)
        return out

    def _send_new_data(self, out: list[bytes], now: float, ts: int, wnd: int) -> bool:
        sent = False
        sendq = self._sendq
        mss = self._mss
        while sendq:
            if self._cur_window_packets >= self._max_in_flight:
                break
            limit = min(self._cwnd, self._peer_wnd)
            size = min(mss, len(sendq))
            if self._cur_window + size > limit:
                if self._cur_window == 0 and self._peer_wnd > 0:
                    size = min(size, self._peer_wnd)  # nothing in flight: send what the peer can take
                else:
                    self._note_maxed_out(now)
                    break
            payload = bytes(sendq[:size])
            del sendq[:size]
            pkt = self._new_packet(ST_DATA, payload)
            self.payload_sent += size
            out.append(self._transmit(pkt, now, ts, wnd))
            sent = True
        return sent

    def _note_maxed_out(self, now: float) -> None:
        # Only a full congestion window (not the peer's window) lets the congestion window grow.
        if self._cwnd <= self._peer_wnd:
            self._last_maxed_out = now

    def _new_packet(self, type: int, payload: bytes) -> _Packet:
        pkt = _Packet(self._seq_nr, type, payload)
        self._outbuf[pkt.seq] = pkt
        self._outbuf_bytes += len(payload)
        self._seq_nr = (self._seq_nr + 1) & _SEQ_MASK
        self._cur_window_packets += 1
        return pkt

    def _transmit(self, pkt: _Packet, now: float, ts: int, wnd: int) -> bytes:
        if pkt.transmissions:
            self.retransmits += 1
        if pkt.transmissions == 0 or pkt.need_resend:
            self._cur_window += len(pkt.payload)
        pkt.need_resend = False
        pkt.transmissions += 1
        pkt.time_sent = now
        if self._rto_deadline is None:
            self._rto_deadline = now + self._retransmit_timeout
        if pkt.type == ST_SYN:
            return _HEADER.pack((ST_SYN << 4) | VERSION, 0, self.recv_id, ts, self._reply_micro, wnd, pkt.seq, 0)
        return _HEADER.pack((pkt.type << 4) | VERSION, 0, self.send_id, ts, self._reply_micro, wnd, pkt.seq,
                            self._ack_nr) + pkt.payload

    def _state_packet(self, ts: int, wnd: int, ack_nr: int, seq_nr: int, *, sack: bool = True) -> bytes:
        """An ST_STATE; with ``sack``, the selective ACK of what we hold past ``ack_nr``, which must then
        be our ack_nr."""
        mask = self._sack_mask if sack else 0
        if not mask:
            return _HEADER.pack((ST_STATE << 4) | VERSION, 0, self.send_id, ts, self._reply_micro, wnd, seq_nr, ack_nr)
        nbytes = min((mask.bit_length() + 31) // 32 * 4, MAX_SACK_BYTES)
        mask &= (1 << (nbytes * 8)) - 1
        return (_HEADER.pack((ST_STATE << 4) | VERSION, EXT_SACK, self.send_id, ts, self._reply_micro, wnd, seq_nr,
                             ack_nr)
                + bytes((0, nbytes)) + mask.to_bytes(nbytes, "little"))

    def _count_sent(self, out: list[bytes]) -> None:
        self.packets_sent += len(out)
        for d in out:
            self.bytes_sent += len(d)

    @staticmethod
    def _less16(a: int, b: int) -> bool:
        """a < b for 16-bit sequence numbers that wrap."""
        return ((b - a) & _SEQ_MASK) < ((a - b) & _SEQ_MASK)


def _micros(now: float) -> int:
    return int(now * 1_000_000) & _TS_MASK
