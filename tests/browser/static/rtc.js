// A browser-side WebRTC peer for tests/browser: plain RTCPeerConnection + one data channel, driven by
// the Python test through page.evaluate(). Signalling is non-trickle, as in WebTorrent (simple-peer):
// each SDP is returned only once ICE gathering is complete, so it carries every candidate.

const WAIT_MS = 20000;
const CHUNK = 16 * 1024;            // what simple-peer / WebTorrent send at most per message
const HIGH = 1024 * 1024;           // pause sending above this bufferedAmount...
const LOW = 256 * 1024;             // ...until it drains to this

const state = { pc: null, channel: null, received: [], receivedBytes: 0, maxMessage: 0, waiters: [], closed: false };

function bounded(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function gatheringComplete(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
  });
}

function wakeWaiters() {
  for (const w of state.waiters.splice(0)) w();
}

function adopt(channel) {
  channel.binaryType = 'arraybuffer';
  channel.bufferedAmountLowThreshold = LOW;
  channel.onmessage = (event) => {
    if (typeof event.data === 'string') {
      state.textMessages = (state.textMessages || 0) + 1;
      return;
    }
    const bytes = new Uint8Array(event.data);
    state.received.push(bytes);
    state.receivedBytes += bytes.length;
    state.maxMessage = Math.max(state.maxMessage, bytes.length);
    wakeWaiters();
  };
  channel.onclose = () => { state.closed = true; wakeWaiters(); };
  state.channel = channel;
}

function channelOpen(channel) {
  if (channel.readyState === 'open') return Promise.resolve();
  return new Promise((resolve, reject) => {
    channel.addEventListener('open', () => resolve());
    channel.addEventListener('close', () => reject(new Error('data channel closed before opening')));
  });
}

// --- the page offers -----------------------------------------------------------------------------
// ``config``: an RTCConfiguration (a TURN server and iceTransportPolicy 'relay', say); none by default.
window.makeOffer = async (config = { iceServers: [] }) => {
  const pc = new RTCPeerConnection(config);
  state.pc = pc;
  const label = Array.from(crypto.getRandomValues(new Uint8Array(20)), (b) => b.toString(16).padStart(2, '0')).join('');
  adopt(pc.createDataChannel(label, { ordered: true }));
  await pc.setLocalDescription(await pc.createOffer());
  await bounded(gatheringComplete(pc), 'ICE gathering');
  return pc.localDescription.sdp;
};

window.acceptAnswer = async (sdp) => {
  await state.pc.setRemoteDescription({ type: 'answer', sdp });
  await bounded(channelOpen(state.channel), 'data channel open');
  return state.channel.label;
};

// --- the page answers ----------------------------------------------------------------------------
window.answerOffer = async (sdp, config = { iceServers: [] }) => {
  const pc = new RTCPeerConnection(config);
  state.pc = pc;
  state.incoming = new Promise((resolve) => {
    pc.ondatachannel = (event) => { adopt(event.channel); resolve(event.channel); };
  });
  await pc.setRemoteDescription({ type: 'offer', sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  await bounded(gatheringComplete(pc), 'ICE gathering');
  return pc.localDescription.sdp;
};

window.waitChannel = async () => {
  const channel = await bounded(state.incoming, 'incoming data channel');
  await bounded(channelOpen(channel), 'data channel open');
  return channel.label;
};

// --- data ----------------------------------------------------------------------------------------
async function sha256hex(parts) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const all = new Uint8Array(total);
  let pos = 0;
  for (const p of parts) { all.set(p, pos); pos += p.length; }
  const digest = await crypto.subtle.digest('SHA-256', all);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

// Wait for n bytes; returns their SHA-256 (or null when hash is false), the largest message seen and
// the milliseconds from the first byte to the last.
window.receive = async (n, hash = true) => {
  const started = performance.now();
  while (state.receivedBytes < n) {
    if (state.closed) throw new Error(`channel closed after ${state.receivedBytes} of ${n} bytes`);
    if (performance.now() - started > WAIT_MS * 3) throw new Error(`only ${state.receivedBytes} of ${n} bytes`);
    await new Promise((resolve) => { state.waiters.push(resolve); setTimeout(resolve, 1000); });
  }
  const parts = state.received.splice(0);
  state.receivedBytes -= n;
  return { sha256: hash ? await sha256hex(parts) : null, maxMessage: state.maxMessage, textMessages: state.textMessages || 0 };
};

// Send n pseudo-random bytes in 16 KiB messages, pausing above HIGH buffered bytes the way simple-peer
// does; returns their SHA-256 (or null).
window.send = async (n, hash = true) => {
  const channel = state.channel;
  const data = new Uint8Array(n);
  for (let pos = 0; pos < n; pos += 65536) crypto.getRandomValues(data.subarray(pos, Math.min(n, pos + 65536)));
  for (let pos = 0; pos < n; pos += CHUNK) {
    if (channel.bufferedAmount > HIGH) {
      await bounded(new Promise((resolve) => channel.addEventListener('bufferedamountlow', resolve, { once: true })), 'bufferedamountlow');
    }
    channel.send(data.subarray(pos, Math.min(n, pos + CHUNK)));
  }
  return hash ? await sha256hex([data]) : null;
};

window.closePeer = () => { state.pc.close(); };

window.rtcReady = true;
window.rtcState = () => ({ closed: state.closed, receivedBytes: state.receivedBytes });
