// webtorrent-bridge browser demo: plain ES module, no build step.
//
// Opens a magnet link (URL ?magnet=…, #magnet:?…, the form, or window.demo.open),
// streams the first video file through WebTorrent's service worker, and shows
// live figures, with the bridge's peers told apart from other browsers.
//
// State for automated tests lives on window.demo (see `demo` below).
// Torrent-provided strings are only ever written with textContent.

const BRIDGE_PEER_ID_PREFIX = '2d5742' // ASCII "-WB", hex as in wire.peerId
const VIDEO_EXTENSIONS = ['.mp4', '.webm', '.m4v', '.mkv', '.mov', '.ogv']
const TICK_MS = 500
const SW_TIMEOUT_MS = 10000
const CONTROLLER_TIMEOUT_MS = 3000

const params = new URLSearchParams(window.location.search)
const extraTrackers = params.getAll('tracker').map(s => s.trim()).filter(Boolean)
const iceServers = params.getAll('stun').map(s => s.trim()).filter(Boolean).map(urls => ({ urls }))

// ---------------------------------------------------------------------------
// window.demo: the contract for automated tests
// ---------------------------------------------------------------------------

const demo = {
  ready: false, // page script (and WebTorrent bundle) loaded
  state: 'idle', // 'idle' | 'loading' | 'playing' | 'done' | 'error'
  error: null, // string | null
  torrent: emptyTorrentFigures(),
  peers: { bridge: 0, browser: 0, webseed: 0 },
  fromBridge: 0, // bytes of piece data received from bridge wires
  firstTimeupdateMs: null, // ms from page load (navigation start) to the video's first timeupdate
  openToTimeupdateMs: null, // ms from open() to the video's first timeupdate
  videoFile: null, // name of the file being played, or null
  file: null, // name of the file selected (video or largest file)
  mode: null, // 'stream' (service worker) | 'blob' (played once complete) | null
  downloadRate: 0, // bytes/s
  uploadRate: 0 // bytes/s
}
// Not enumerable, so that serialising window.demo (e.g. Playwright's evaluate) sees data only.
Object.defineProperty(demo, 'open', { value: magnet => open(magnet), enumerable: false })
window.demo = demo

function emptyTorrentFigures () {
  return { infoHash: null, name: null, progress: 0, downloaded: 0, uploaded: 0, numPeers: 0, length: null }
}

function log (...args) {
  console.log('[demo]', ...args)
}

// ---------------------------------------------------------------------------
// DOM
// ---------------------------------------------------------------------------

const $ = id => document.getElementById(id)
const el = {
  form: $('open-form'),
  input: $('magnet-input'),
  message: $('message'),
  player: $('player'),
  fileName: $('file-name'),
  video: $('video'),
  download: $('download'),
  downloadLink: $('download-link'),
  downloadNote: $('download-note'),
  state: $('stat-state'),
  progress: $('stat-progress'),
  downloaded: $('stat-downloaded'),
  down: $('stat-down'),
  up: $('stat-up'),
  uploaded: $('stat-uploaded'),
  bridge: $('stat-bridge'),
  browser: $('stat-browser'),
  webseed: $('stat-webseed'),
  fromBridge: $('stat-from-bridge'),
  first: $('stat-first'),
  mode: $('stat-mode'),
  infoHash: $('stat-infohash')
}

function showMessage (text, { error = false } = {}) {
  el.message.textContent = text
  el.message.classList.toggle('error', error)
  el.message.hidden = !text
}

function formatBytes (n) {
  if (!Number.isFinite(n) || n <= 0) return '0 B'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`
}

function formatMs (ms) {
  return ms == null ? '–' : `${(ms / 1000).toFixed(2)} s`
}

// ---------------------------------------------------------------------------
// WebTorrent bundle, client and service worker
// ---------------------------------------------------------------------------

let WebTorrentClass = null
let client = null
let server = null // BrowserServer of `client`, when streaming through the service worker
let swPromise = null
let swProblem = null // why streaming through the service worker is unavailable

// The WebTorrent 3 bundle relies on two things some browsers lack:
// - Uint8Array.prototype.toHex/toBase64 and Uint8Array.fromHex/fromBase64
//   (Chromium < 140, Firefox < 133, Safari < 18.2);
// - crypto.subtle.digest('SHA-1'), which browsers only expose in secure contexts
//   (https, http://localhost, http://127.0.0.1) - a phone opening http://192.168.x.y:port
//   would otherwise fail to verify any piece.
// Both are filled in here, before the bundle is imported.
function installPolyfills () {
  const U8 = Uint8Array
  if (!U8.prototype.toHex) {
    const hex = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))
    Object.defineProperty(U8.prototype, 'toHex', {
      configurable: true,
      writable: true,
      value: function toHex () {
        let s = ''
        for (let i = 0; i < this.length; i++) s += hex[this[i]]
        return s
      }
    })
  }
  if (!U8.fromHex) {
    Object.defineProperty(U8, 'fromHex', {
      configurable: true,
      writable: true,
      value: function fromHex (str) {
        if (typeof str !== 'string' || str.length % 2 || /[^0-9a-f]/i.test(str)) throw new SyntaxError('invalid hex string')
        const out = new U8(str.length / 2)
        for (let i = 0; i < out.length; i++) out[i] = parseInt(str.substr(i * 2, 2), 16)
        return out
      }
    })
  }
  if (!U8.prototype.toBase64) {
    Object.defineProperty(U8.prototype, 'toBase64', {
      configurable: true,
      writable: true,
      value: function toBase64 () {
        let bin = ''
        for (let i = 0; i < this.length; i += 0x8000) bin += String.fromCharCode.apply(null, this.subarray(i, i + 0x8000))
        return btoa(bin)
      }
    })
  }
  if (!U8.fromBase64) {
    Object.defineProperty(U8, 'fromBase64', {
      configurable: true,
      writable: true,
      value: function fromBase64 (str) {
        const bin = atob(String(str).replace(/[\s]/g, '').replace(/-/g, '+').replace(/_/g, '/'))
        const out = new U8(bin.length)
        for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i)
        return out
      }
    })
  }
  if (globalThis.crypto && !globalThis.crypto.subtle) {
    Object.defineProperty(globalThis.crypto, 'subtle', {
      configurable: true,
      value: {
        async digest (algorithm, data) {
          const name = String(algorithm?.name ?? algorithm).toUpperCase().replace('-', '')
          if (name !== 'SHA1') throw new Error(`${algorithm} is unavailable outside a secure context`)
          const bytes = ArrayBuffer.isView(data)
            ? new U8(data.buffer, data.byteOffset, data.byteLength)
            : new U8(data)
          return sha1(bytes)
        }
      }
    })
    log('crypto.subtle is missing (not a secure context): using a JavaScript SHA-1')
  }
}

// Plain SHA-1 (FIPS 180-4), only used where crypto.subtle is unavailable.
function sha1 (bytes) {
  const len = bytes.length
  const blocks = ((len + 8) >> 6) + 1
  const w = new Uint32Array(blocks * 16)
  for (let i = 0; i < len; i++) w[i >> 2] |= bytes[i] << (24 - (i & 3) * 8)
  w[len >> 2] |= 0x80 << (24 - (len & 3) * 8)
  w[blocks * 16 - 1] = len * 8 // bit length, low 32 bits (ToUint32 wraps)
  w[blocks * 16 - 2] = Math.floor(len / 0x20000000)
  let h0 = 0x67452301; let h1 = 0xefcdab89; let h2 = 0x98badcfe; let h3 = 0x10325476; let h4 = 0xc3d2e1f0
  const x = new Uint32Array(80)
  for (let b = 0; b < blocks; b++) {
    for (let t = 0; t < 16; t++) x[t] = w[b * 16 + t]
    for (let t = 16; t < 80; t++) {
      const v = x[t - 3] ^ x[t - 8] ^ x[t - 14] ^ x[t - 16]
      x[t] = (v << 1) | (v >>> 31)
    }
    let a = h0; let b2 = h1; let c = h2; let d = h3; let e = h4
    for (let t = 0; t < 80; t++) {
      let f, k
      if (t < 20) { f = (b2 & c) | (~b2 & d); k = 0x5a827999 } else if (t < 40) { f = b2 ^ c ^ d; k = 0x6ed9eba1 } else if (t < 60) { f = (b2 & c) | (b2 & d) | (c & d); k = 0x8f1bbcdc } else { f = b2 ^ c ^ d; k = 0xca62c1d6 }
      const temp = (((a << 5) | (a >>> 27)) + f + e + k + x[t]) >>> 0
      e = d; d = c; c = (b2 << 30) | (b2 >>> 2); b2 = a; a = temp
    }
    h0 = (h0 + a) >>> 0; h1 = (h1 + b2) >>> 0; h2 = (h2 + c) >>> 0; h3 = (h3 + d) >>> 0; h4 = (h4 + e) >>> 0
  }
  const out = new ArrayBuffer(20)
  const view = new DataView(out)
  ;[h0, h1, h2, h3, h4].forEach((h, i) => view.setUint32(i * 4, h))
  return out
}

async function loadWebTorrent () {
  if (!WebTorrentClass) {
    installPolyfills()
    const mod = await import('/webtorrent.min.js')
    WebTorrentClass = mod.default
    log('WebTorrent bundle loaded, version', WebTorrentClass.VERSION || '?')
  }
  return WebTorrentClass
}

function getClient () {
  if (client && !client.destroyed) return client
  client = new WebTorrentClass({ tracker: { rtcConfig: { iceServers } } })
  server = null
  log('client created, peer id', client.peerId, iceServers.length ? `ICE servers ${JSON.stringify(iceServers)}` : 'no STUN/TURN')
  const self = client
  client.on('error', err => {
    log('client error:', errorText(err))
    // WebTorrent destroys the client after an 'error'; a later open() makes a new one.
    if (self === client) fail(`WebTorrent error: ${errorText(err)}`)
  })
  client.on('warning', err => log('client warning:', errorText(err)))
  return client
}

function getServiceWorker () {
  if (!swPromise) {
    swPromise = setupServiceWorker().catch(err => {
      swProblem = errorText(err)
      log('service worker unavailable:', swProblem)
      return null
    })
  }
  return swPromise
}

async function setupServiceWorker () {
  if (!window.isSecureContext) {
    throw new Error('this page is not a secure context (use https://, or http://localhost / http://127.0.0.1)')
  }
  if (!('serviceWorker' in navigator)) {
    throw new Error('this browser offers no service workers (private browsing?)')
  }
  const registration = await navigator.serviceWorker.register('/sw.min.js', { scope: '/' })
  log('service worker registered, scope', registration.scope)
  await withTimeout(navigator.serviceWorker.ready, SW_TIMEOUT_MS, 'the service worker did not become ready')
  const worker = registration.active
  if (!worker) throw new Error('the service worker has no active worker')
  if (worker.state !== 'activated') {
    await withTimeout(new Promise(resolve => {
      const onChange = () => {
        if (worker.state === 'activated') {
          worker.removeEventListener('statechange', onChange)
          resolve()
        }
      }
      worker.addEventListener('statechange', onChange)
      onChange()
    }), SW_TIMEOUT_MS, 'the service worker did not activate')
  }
  // The worker calls clients.claim() when it activates, which makes it this page's
  // controller; the video's requests only go through it once that has happened.
  if (!navigator.serviceWorker.controller) {
    await new Promise(resolve => {
      const timer = setTimeout(resolve, CONTROLLER_TIMEOUT_MS)
      navigator.serviceWorker.addEventListener('controllerchange', () => {
        clearTimeout(timer)
        resolve()
      }, { once: true })
    })
  }
  if (!navigator.serviceWorker.controller) {
    throw new Error('the service worker does not control this page (after a forced reload, reload normally)')
  }
  log('service worker active and controlling the page')
  return registration
}

function withTimeout (promise, ms, message) {
  let timer
  return Promise.race([
    promise,
    new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(message)), ms) })
  ]).finally(() => clearTimeout(timer))
}

function errorText (err) {
  if (!err) return 'unknown error'
  return err.message || String(err)
}

// ---------------------------------------------------------------------------
// Magnet links
// ---------------------------------------------------------------------------

// Returns a magnet URI, or throws an Error saying what is wrong with `input`.
function normalizeMagnet (input) {
  let text = String(input ?? '').trim()
  if (!text) throw new Error('no magnet link given')
  if (/^magnet%3a/i.test(text)) {
    try { text = decodeURIComponent(text) } catch { throw new Error('the magnet link is badly percent-encoded') }
  }
  if (/^[0-9a-f]{40}$/i.test(text) || /^[a-z2-7]{32}$/i.test(text)) {
    text = `magnet:?xt=urn:btih:${text}`
  }
  if (!/^magnet:\?/i.test(text)) throw new Error('a magnet link starts with "magnet:?"')
  const xts = new URLSearchParams(text.slice(text.indexOf('?') + 1)).getAll('xt')
  const ok = xts.some(xt => /^urn:btih:([0-9a-f]{40}|[a-z2-7]{32})$/i.test(xt) ||
                           /^urn:btmh:1220[0-9a-f]{64}$/i.test(xt))
  if (!ok) throw new Error('the magnet link has no valid "xt=urn:btih:<info hash>"')
  return text
}

// Lower-case hex info hash of a magnet's first BitTorrent v1 xt, or null.
function infoHashOf (magnet) {
  const m = /[?&]xt=urn:btih:([0-9a-f]{40}|[a-z2-7]{32})(?:&|$)/i.exec(magnet)
  if (!m) return null
  const id = m[1]
  if (id.length === 40) return id.toLowerCase()
  let bits = ''
  for (const ch of id.toUpperCase()) bits += 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'.indexOf(ch).toString(2).padStart(5, '0')
  let hex = ''
  for (let i = 0; i + 4 <= bits.length; i += 4) hex += parseInt(bits.slice(i, i + 4), 2).toString(16)
  return hex.slice(0, 40)
}

// Another tab of this browser profile may be playing the same torrent from the same
// stored folder: a Web Lock per info hash, held while the torrent is open, tells.
// Returns the function that releases the lock.
async function claimStore (infoHash) {
  const noop = () => {}
  if (!infoHash || !navigator.storage?.getDirectory) return noop
  if (!navigator.locks) {
    await forgetStoredCopy(infoHash)
    return noop
  }
  let release = noop
  const held = new Promise(resolve => { release = resolve })
  const got = await new Promise(resolve => {
    navigator.locks.request(`webtorrent-bridge-demo ${infoHash}`, { ifAvailable: true }, lock => {
      resolve(Boolean(lock))
      return lock ? held : undefined
    }).catch(err => {
      log('web lock failed:', errorText(err))
      resolve(false)
    })
  })
  if (got) {
    await forgetStoredCopy(infoHash)
    return release
  }
  log('another tab is using this torrent; keeping the data it stored')
  return noop
}

// WebTorrent keeps downloads in the origin-private file system, in a folder named
// "<torrent name> - <first 8 hex digits of the info hash>".
async function forgetStoredCopy (infoHash) {
  if (!infoHash || !navigator.storage?.getDirectory) return
  const suffix = ` - ${infoHash.slice(0, 8)}`
  try {
    await withTimeout((async () => {
      const root = await navigator.storage.getDirectory()
      const stale = []
      for await (const name of root.keys()) if (name.endsWith(suffix)) stale.push(name)
      for (const name of stale) {
        await root.removeEntry(name, { recursive: true })
        log('removed a copy stored by an earlier visit:', name)
      }
    })(), 5000, 'timed out')
  } catch (err) {
    log('could not clear stored data:', errorText(err))
  }
}

function magnetFromLocation () {
  const fromQuery = params.get('magnet')
  if (fromQuery) return fromQuery
  const hash = window.location.hash.slice(1)
  if (/^magnet(:|%3a)/i.test(hash)) return hash
  return null
}

// Keep the page URL shareable: ?magnet=… plus the tracker/stun parameters it came with.
function rememberInUrl (magnet) {
  try {
    const next = new URLSearchParams()
    next.set('magnet', magnet)
    for (const t of extraTrackers) next.append('tracker', t)
    for (const s of iceServers) next.append('stun', s.urls)
    const url = `${window.location.pathname}?${next}`
    if (url !== window.location.pathname + window.location.search || window.location.hash) {
      window.history.replaceState(null, '', url)
    }
  } catch (err) {
    log('could not update the URL:', errorText(err))
  }
}

// ---------------------------------------------------------------------------
// Opening a torrent
// ---------------------------------------------------------------------------

let current = null // { torrent, file, isVideo, started, openedAt, playBlocked, objectUrl, wantDownload, releaseStore, unwatchVideo }
let openSeq = 0

async function open (input) {
  let magnet
  try {
    magnet = normalizeMagnet(input)
  } catch (err) {
    fail(`Invalid magnet link: ${err.message}`)
    return false
  }
  const seq = ++openSeq
  log('opening', magnet)
  el.input.value = magnet
  rememberInUrl(magnet)
  closeCurrent()
  resetFigures()
  demo.error = null
  demo.state = 'loading'
  showMessage('Starting…')
  updateView()

  try {
    await loadWebTorrent()
  } catch (err) {
    fail(`Could not load WebTorrent (/webtorrent.min.js): ${errorText(err)}`)
    return false
  }
  const registration = await getServiceWorker()
  if (seq !== openSeq) return false // superseded by a newer open()

  let c
  try {
    c = getClient()
    if (registration && !server) {
      server = c.createServer({ controller: registration })
      log('WebTorrent service-worker server created at', server.pathname)
    }
  } catch (err) {
    if (!c) {
      fail(`Could not start WebTorrent: ${errorText(err)}`)
      return false
    }
    swProblem = errorText(err)
    log('cannot stream through the service worker:', swProblem)
  }
  demo.mode = server ? 'stream' : 'blob'
  if (!server) {
    showMessage(`Streaming is unavailable: ${swProblem || 'no service worker'}. ` +
      'The file will be shown once it has downloaded completely.', { error: true })
  } else {
    showMessage('Looking for peers…')
  }

  // Start from nothing, so that every visit really downloads (and the figures show it):
  // drop a copy of this torrent left in the browser's storage (OPFS) by an earlier visit,
  // and have WebTorrent delete its store when the torrent is removed or the page closes.
  const releaseStore = await claimStore(infoHashOf(magnet))
  if (seq !== openSeq) {
    releaseStore()
    return false
  }
  const opts = { destroyStoreOnDestroy: true }
  if (extraTrackers.length) opts.announce = extraTrackers
  closeCurrent() // in case another open() finished while this one was waiting
  let torrent
  try {
    torrent = c.add(magnet, opts)
  } catch (err) {
    releaseStore()
    fail(`Could not add the torrent: ${errorText(err)}`)
    return false
  }
  current = { torrent, file: null, isVideo: false, started: false, openedAt: performance.now(), playBlocked: false, objectUrl: null, releaseStore }
  watchTorrent(torrent, current)
  updateView()
  return true
}

// Synchronous: the torrent leaves the client at once (so the same magnet can be re-added).
function closeCurrent () {
  const prev = current
  current = null
  if (!prev) return
  prev.unwatchVideo?.()
  prev.releaseStore?.()
  resetPlayer(prev)
  if (!prev.torrent.destroyed) {
    try {
      prev.torrent.destroy({ destroyStore: true }, () => log('previous torrent removed'))
    } catch (err) {
      log('could not remove the previous torrent:', errorText(err))
    }
  }
}

function resetPlayer (prev) {
  el.video.pause()
  el.video.removeAttribute('src')
  el.video.load()
  el.video.hidden = true
  el.player.hidden = true
  el.download.hidden = true
  el.downloadLink.removeAttribute('href')
  el.fileName.textContent = ''
  if (prev?.objectUrl) URL.revokeObjectURL(prev.objectUrl)
}

function resetFigures () {
  demo.torrent = emptyTorrentFigures()
  demo.peers = { bridge: 0, browser: 0, webseed: 0 }
  demo.fromBridge = 0
  demo.firstTimeupdateMs = null
  demo.openToTimeupdateMs = null
  demo.videoFile = null
  demo.file = null
  demo.mode = null
  demo.downloadRate = 0
  demo.uploadRate = 0
}

function isBridgeWire (wire) {
  return typeof wire.peerId === 'string' && wire.peerId.toLowerCase().startsWith(BRIDGE_PEER_ID_PREFIX)
}

function wireKind (wire) {
  if (wire.type === 'webSeed') return 'webseed'
  return isBridgeWire(wire) ? 'bridge' : 'browser'
}

// First bytes of a peer id as printable ASCII, e.g. "-WB0100-" or "-WW3021-".
function peerIdLabel (wire) {
  const hex = typeof wire.peerId === 'string' ? wire.peerId : ''
  let s = ''
  for (let i = 0; i + 1 < Math.min(hex.length, 16); i += 2) {
    const code = parseInt(hex.slice(i, i + 2), 16)
    s += code >= 0x20 && code < 0x7f ? String.fromCharCode(code) : '.'
  }
  return s || '?'
}

function watchTorrent (torrent, session) {
  const live = () => current === session

  torrent.on('infoHash', () => {
    if (!live()) return
    demo.torrent.infoHash = torrent.infoHash
    log('info hash', torrent.infoHash)
  })

  torrent.on('metadata', () => {
    if (!live()) return
    demo.torrent.name = torrent.name
    demo.torrent.length = torrent.length
    log(`metadata: "${torrent.name}", ${torrent.files.length} file(s), ${torrent.length} bytes`)
    showMessage('Got the torrent metadata, fetching data…')
  })

  torrent.on('ready', () => {
    if (!live()) return
    log('torrent ready')
    startPlayback(session)
  })

  torrent.on('wire', wire => {
    if (!live()) return
    const kind = wireKind(wire)
    log(`peer connected: ${kind} (${wire.type}) ${peerIdLabel(wire)} ${wire.remoteAddress || ''}`.trim())
    if (kind === 'bridge') {
      let first = true
      wire.on('download', n => {
        if (!live()) return
        demo.fromBridge += n
        if (first) {
          first = false
          log('first piece data from the bridge')
        }
      })
    }
    wire.once('close', () => {
      if (live()) log(`peer disconnected: ${kind} ${peerIdLabel(wire)}`)
    })
  })

  torrent.on('noPeers', announceType => {
    if (!live()) return
    log('no peers found yet via', announceType)
    if (torrent.numPeers === 0 && demo.state === 'loading') {
      showMessage(`No peers found yet (${announceType}). Is the bridge seeding this torrent and announcing to the tracker in the magnet link?`)
    }
  })

  torrent.on('done', () => {
    if (!live()) return
    log('download complete,', torrent.downloaded, 'bytes,', demo.fromBridge, 'from the bridge')
    onDone(session)
  })

  torrent.on('warning', err => {
    if (!live()) return
    log('torrent warning:', errorText(err))
    // e.g. "Error connecting to ws://…": worth showing while nothing else is happening
    if (torrent.numPeers === 0 && demo.state === 'loading' && !demo.error) {
      showMessage(`Still looking for peers. ${errorText(err)}`)
    }
  })

  torrent.on('error', err => {
    log('torrent error:', errorText(err))
    if (live()) fail(`Torrent error: ${errorText(err)}`)
  })
}

function pickFile (files) {
  // ?file=<path in the torrent> picks one file (a torrent with several videos); else the first video.
  const wanted = params.get('file')
  const chosen = wanted ? files.find(f => f.path === wanted) : null
  if (chosen) return { file: chosen, isVideo: VIDEO_EXTENSIONS.some(ext => chosen.name.toLowerCase().endsWith(ext)) }
  const video = files.find(f => VIDEO_EXTENSIONS.some(ext => f.name.toLowerCase().endsWith(ext)))
  if (video) return { file: video, isVideo: true }
  const largest = files.reduce((a, b) => (b.length > a.length ? b : a), files[0])
  return { file: largest, isVideo: false }
}

function startPlayback (session) {
  const { torrent } = session
  if (!torrent.files.length) {
    fail('The torrent has no files')
    return
  }
  const { file, isVideo } = pickFile(torrent.files)
  session.file = file
  session.isVideo = isVideo
  demo.file = file.name
  demo.videoFile = isVideo ? file.name : null
  el.fileName.textContent = file.name
  el.player.hidden = false
  log(`selected ${isVideo ? 'video' : 'file'} "${file.name}" (${file.length} bytes, ${file.type})`)

  if (!isVideo) {
    showMessage('This torrent has no video file; its largest file is offered as a download.')
    offerDownload(session)
    return
  }

  el.video.hidden = false
  watchVideo(session)
  if (demo.mode === 'stream') {
    file.streamTo(el.video)
    log('streaming through the service worker from', file.streamURL)
    showMessage('Buffering…')
    play(session)
  } else if (torrent.done) {
    onDone(session)
  } else {
    showMessage(`Streaming is unavailable: ${swProblem || 'no service worker'}. ` +
      'The video will play once it has downloaded completely.', { error: true })
  }
}

function play (session) {
  const video = el.video
  video.play().catch(err => {
    if (current !== session) return
    if (err.name === 'NotAllowedError' && !video.muted) {
      log('autoplay with sound refused, playing muted')
      video.muted = true
      return video.play().then(() => {
        if (current === session) showMessage('Playing muted (the browser blocks autoplay with sound); unmute in the video controls.')
      })
    }
    throw err
  }).catch(err => {
    if (current !== session) return
    if (err.name === 'AbortError') return // a new source replaced this one
    session.playBlocked = true
    log('play() failed:', err.name, errorText(err))
    if (err.name === 'NotAllowedError') showMessage('Press play to start the video.')
  })
}

function watchVideo (session) {
  const video = el.video
  const onTimeupdate = () => {
    if (current !== session || video.error) return
    if (!session.started) {
      session.started = true
      session.playBlocked = false
      demo.firstTimeupdateMs = Math.round(performance.now())
      demo.openToTimeupdateMs = Math.round(performance.now() - session.openedAt)
      log(`first timeupdate ${demo.firstTimeupdateMs} ms after page load (${demo.openToTimeupdateMs} ms after open)`)
      if (!demo.error) showMessage(demo.mode === 'stream'
        ? 'Playing while downloading.'
        : `Playing the fully downloaded file (streaming unavailable: ${swProblem || 'no service worker'}).`)
      updateView()
    }
  }
  const onError = () => {
    if (current !== session) return
    const e = video.error
    if (!e) return
    const what = { 1: 'aborted', 2: 'network error', 3: 'decoding failed', 4: 'format or codec not supported' }[e.code] || `code ${e.code}`
    log('video error:', what, e.message || '')
    fail(`This browser cannot play "${session.file?.name}": ${what}${e.message ? ` (${e.message})` : ''}. ` +
      'It is offered as a download instead.')
    offerDownload(session)
  }
  const onPlaying = () => {
    if (current === session) log('video playing')
  }
  const onWaiting = () => {
    if (current === session) log('video waiting for data at', video.currentTime.toFixed(2), 's')
  }
  const onEnded = () => {
    if (current === session) log('video ended')
  }
  video.addEventListener('timeupdate', onTimeupdate)
  video.addEventListener('error', onError)
  video.addEventListener('playing', onPlaying)
  video.addEventListener('waiting', onWaiting)
  video.addEventListener('ended', onEnded)
  session.unwatchVideo = () => {
    video.removeEventListener('timeupdate', onTimeupdate)
    video.removeEventListener('error', onError)
    video.removeEventListener('playing', onPlaying)
    video.removeEventListener('waiting', onWaiting)
    video.removeEventListener('ended', onEnded)
  }
}

async function onDone (session) {
  const { file, isVideo } = session
  if (!file) return // 'ready' not handled yet; startPlayback calls back here
  if (isVideo && !session.wantDownload && demo.mode === 'stream') {
    if (!demo.error) showMessage(session.started ? 'Download complete.' : 'Download complete, starting playback…')
    return
  }
  const url = await objectUrlOf(session)
  if (!url || current !== session) return
  if (isVideo && !session.wantDownload) {
    el.video.src = url
    play(session)
    if (!demo.error && !session.started) showMessage('Download complete, starting playback…')
  } else {
    el.downloadLink.href = url
    el.downloadLink.download = file.name
    el.downloadNote.textContent = formatBytes(file.length)
    if (!demo.error) showMessage('Download complete.')
  }
}

// The whole file as an object URL (memory: fine for a demo-sized file).
async function objectUrlOf (session) {
  if (!session.objectUrl) {
    try {
      const blob = await session.file.blob()
      if (current !== session) return null
      session.objectUrl ||= URL.createObjectURL(blob)
      log('file assembled in memory,', blob.size, 'bytes')
    } catch (err) {
      if (current === session) fail(`Could not read the downloaded file: ${errorText(err)}`)
      return null
    }
  }
  return session.objectUrl
}

// Offers session.file as a download link, usable once the torrent is complete.
function offerDownload (session) {
  const { file, torrent } = session
  session.wantDownload = true
  el.download.hidden = false
  el.downloadLink.textContent = `Download ${file.name}`
  el.downloadNote.textContent = 'available once the download is complete'
  if (torrent.done) onDone(session)
}

function fail (message) {
  demo.error = message
  demo.state = 'error'
  log('error:', message)
  showMessage(message, { error: true })
  updateView()
}

// ---------------------------------------------------------------------------
// Live figures (every TICK_MS)
// ---------------------------------------------------------------------------

function computeState () {
  if (demo.error) return 'error'
  if (!current) return demo.state === 'loading' ? 'loading' : 'idle'
  const { torrent } = current
  const done = Boolean(torrent.done)
  if (current.isVideo) {
    if (current.started) {
      const video = el.video
      return done && (video.paused || video.ended) ? 'done' : 'playing'
    }
    return done && current.playBlocked ? 'done' : 'loading'
  }
  return done && current.file ? 'done' : 'loading'
}

function sample () {
  if (!current) return
  const { torrent } = current
  const peers = { bridge: 0, browser: 0, webseed: 0 }
  for (const wire of torrent.wires || []) peers[wireKind(wire)]++
  demo.peers = peers
  demo.torrent = {
    infoHash: torrent.infoHash || null,
    name: torrent.name || null,
    progress: Number(torrent.progress) || 0,
    downloaded: torrent.downloaded || 0,
    uploaded: torrent.uploaded || 0,
    numPeers: torrent.numPeers || 0,
    length: torrent.length ?? null
  }
  demo.downloadRate = torrent.downloadSpeed || 0
  demo.uploadRate = torrent.uploadSpeed || 0
}

function updateView () {
  demo.state = computeState()
  const t = demo.torrent
  el.state.textContent = demo.state
  el.progress.textContent = t.infoHash && t.length != null ? `${(t.progress * 100).toFixed(1)} %` : '–'
  el.downloaded.textContent = t.length != null ? `${formatBytes(t.downloaded)} of ${formatBytes(t.length)}` : formatBytes(t.downloaded)
  el.down.textContent = `${formatBytes(demo.downloadRate)}/s`
  el.up.textContent = `${formatBytes(demo.uploadRate)}/s`
  el.uploaded.textContent = formatBytes(t.uploaded)
  el.bridge.textContent = String(demo.peers.bridge)
  el.browser.textContent = String(demo.peers.browser)
  el.webseed.textContent = String(demo.peers.webseed)
  el.fromBridge.textContent = formatBytes(demo.fromBridge)
  el.first.textContent = demo.firstTimeupdateMs == null
    ? '–'
    : `${formatMs(demo.firstTimeupdateMs)} (${formatMs(demo.openToTimeupdateMs)} after open)`
  el.mode.textContent = demo.mode === 'stream'
    ? 'streaming (service worker)'
    : demo.mode === 'blob' ? 'after full download' : '–'
  el.infoHash.textContent = t.infoHash || '–'
}

function tick () {
  try {
    sample()
    updateView()
  } catch (err) {
    log('tick failed:', errorText(err))
  }
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

async function init () {
  el.form.addEventListener('submit', event => {
    event.preventDefault()
    open(el.input.value)
  })
  window.addEventListener('hashchange', () => {
    const hash = window.location.hash.slice(1)
    if (/^magnet(:|%3a)/i.test(hash)) open(hash)
  })
  window.addEventListener('pagehide', event => {
    if (!event.persisted && client && !client.destroyed) client.destroy()
  })
  setInterval(tick, TICK_MS)

  // Start the service worker early; open() waits for it.
  getServiceWorker()
  try {
    await loadWebTorrent()
  } catch (err) {
    demo.ready = true
    fail(`Could not load WebTorrent (/webtorrent.min.js): ${errorText(err)}`)
    return
  }
  demo.ready = true
  log('page ready')
  updateView()

  const magnet = magnetFromLocation()
  if (magnet) open(magnet)
}

init()
