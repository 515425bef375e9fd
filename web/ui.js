// The torrent list of `webtorrent-bridge serve`: plain ES module, no build step.
//
// Talks to the JSON API under /api/v1/ (see /api/v1/openapi.json), refreshes every second, adds
// torrents (magnet or .torrent file), pauses, resumes and removes them, and shows one torrent's files
// with links to download them or play them in the player page (/index.html?magnet=…).
//
// Torrent-provided strings (names, paths, errors) are only ever written with textContent.
// State for automated tests lives on window.ui.

const API = '/api/v1'
const REFRESH_MS = 1000
const HIDDEN_REFRESH_MS = 5000 // while the tab is in the background
const TOKEN_KEY = 'webtorrent-bridge-api-token'
const VIDEO_EXTENSIONS = ['.mp4', '.webm', '.m4v', '.mkv', '.mov', '.ogv']
const PEER_KINDS = [['tcp', 'TCP'], ['utp', 'uTP'], ['webrtc', 'WebRTC'], ['webseed', 'web seed']]

const ui = {
  ready: false, // the script ran and wired the page
  refreshes: 0, // successful refreshes of the list
  needToken: false, // the server refused our (missing or wrong) token
  error: null, // the last error shown to the user, or null
  tracker: null // the bridge's ws tracker (from /api/v1/stats), or null
}
window.ui = ui

const $ = id => document.getElementById(id)
const el = {
  summary: $('summary'),
  message: $('message'),
  messageText: $('message-text'),
  messageClose: $('message-close'),
  tokenForm: $('token-form'),
  tokenInput: $('token-input'),
  add: $('add'),
  magnetForm: $('magnet-form'),
  magnetInput: $('magnet-input'),
  magnetButton: $('magnet-button'),
  fileForm: $('file-form'),
  fileInput: $('file-input'),
  fileButton: $('file-button'),
  addPaused: $('add-paused'),
  listSection: $('list-section'),
  empty: $('empty'),
  list: $('torrents'),
  rowTemplate: $('row-template'),
  detail: $('detail'),
  detailClose: $('detail-close'),
  detailName: $('detail-name'),
  detailState: $('detail-state'),
  detailProgress: $('detail-progress'),
  detailSize: $('detail-size'),
  detailPieces: $('detail-pieces'),
  detailDownloaded: $('detail-downloaded'),
  detailUploaded: $('detail-uploaded'),
  detailInfohash: $('detail-infohash'),
  detailSavePath: $('detail-save-path'),
  detailErrorRow: $('detail-error-row'),
  detailError: $('detail-error'),
  files: $('files'),
  noPeers: $('no-peers'),
  peers: $('peers'),
  peerRows: $('peer-rows'),
  detailMagnet: $('detail-magnet'),
  copyMagnet: $('copy-magnet'),
  removeDialog: $('remove-dialog'),
  removeName: $('remove-name'),
  removeData: $('remove-data')
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

function formatBytes (n) {
  if (n == null) return '–'
  if (!Number.isFinite(n) || n <= 0) return '0 B'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`
}

function formatRate (n) {
  return `${formatBytes(n)}/s`
}

// Never shows 100 % before the torrent really is complete.
function formatProgress (p) {
  const v = Number(p) || 0
  return v >= 1 ? '100%' : `${(Math.floor(v * 1000) / 10).toFixed(1)}%`
}

function formatPeers (peers) {
  return PEER_KINDS.map(([k, label]) => `${label} ${Number(peers?.[k]) || 0}`).join(' · ')
}

function errorText (err) {
  if (!err) return 'unknown error'
  return err.message || String(err)
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

function showError (text) {
  ui.error = text
  console.warn('[ui]', text)
  el.messageText.textContent = text
  el.message.classList.add('error')
  el.message.hidden = false
}

function showInfo (text) {
  el.messageText.textContent = text
  el.message.classList.remove('error')
  el.message.hidden = false
}

function clearMessage () {
  ui.error = null
  el.message.hidden = true
  el.messageText.textContent = ''
}

// ---------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------

let memoryToken = null // when localStorage is unavailable

function getToken () {
  try {
    return window.localStorage.getItem(TOKEN_KEY) || memoryToken
  } catch {
    return memoryToken
  }
}

function setToken (token) {
  memoryToken = token || null
  try {
    if (token) window.localStorage.setItem(TOKEN_KEY, token)
    else window.localStorage.removeItem(TOKEN_KEY)
  } catch {
    // private browsing or storage disabled: the token lasts as long as the page
  }
}

class ApiError extends Error {
  constructor (status, message) {
    super(message)
    this.status = status
  }
}

// `body`: undefined, a FormData (sent as multipart) or anything else (sent as JSON).
async function api (method, path, body) {
  const headers = { Accept: 'application/json' }
  const token = getToken()
  if (token) headers.Authorization = `Bearer ${token}`
  let payload
  if (body instanceof FormData) {
    payload = body
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json'
    payload = JSON.stringify(body)
  }
  let resp
  try {
    resp = await fetch(API + path, { method, headers, body: payload, cache: 'no-store', credentials: 'same-origin' })
  } catch (err) {
    throw new ApiError(0, `Cannot reach the server: ${errorText(err)}`)
  }
  const text = await resp.text().catch(() => '')
  let data = null
  try {
    data = text ? JSON.parse(text) : null
  } catch {
    data = null
  }
  if (resp.status === 401) {
    // Unless the user has given another token since this request left.
    if ((token || null) === (getToken() || null)) askForToken(Boolean(token))
    throw new ApiError(401, 'The server needs its API token.')
  }
  if (!resp.ok) {
    const message = data && typeof data.error === 'string' ? data.error : `${resp.status} ${resp.statusText}`.trim()
    throw new ApiError(resp.status, message)
  }
  return data
}

// ---------------------------------------------------------------------------
// Token form
// ---------------------------------------------------------------------------

function askForToken (refused) {
  if (refused) setToken(null)
  if (!ui.needToken) {
    el.tokenInput.value = ''
  }
  ui.needToken = true
  el.tokenForm.hidden = false
  el.add.hidden = true
  el.listSection.hidden = true
  el.detail.hidden = true
  el.summary.textContent = 'The API token is needed.'
  if (refused) showError('The server refused the token; enter the right one.')
  el.tokenInput.focus()
}

function onTokenSubmit (event) {
  event.preventDefault()
  const token = el.tokenInput.value.trim()
  if (!token) return
  setToken(token)
  ui.needToken = false
  el.tokenForm.hidden = true
  clearMessage()
  refresh()
}

// ---------------------------------------------------------------------------
// Refreshing
// ---------------------------------------------------------------------------

let timer = null
let refreshing = false
let again = false
let detailHash = null // info hash of the torrent shown in the detail, or null

async function refresh () {
  if (refreshing) {
    again = true
    return
  }
  refreshing = true
  clearTimeout(timer)
  try {
    const [list, stats] = await Promise.all([api('GET', '/torrents'), api('GET', '/stats')])
    ui.tracker = typeof stats?.tracker === 'string' ? stats.tracker : null
    el.add.hidden = false
    el.listSection.hidden = false
    el.summary.classList.remove('offline')
    renderSummary(stats)
    renderList(Array.isArray(list) ? list : [])
    if (detailHash) await refreshDetail(detailHash)
    ui.refreshes++
  } catch (err) {
    if (err.status !== 401) {
      el.summary.textContent = errorText(err)
      el.summary.classList.add('offline')
    }
  } finally {
    refreshing = false
    if (again) {
      again = false
      timer = setTimeout(refresh, 0)
    } else if (!ui.needToken) {
      timer = setTimeout(refresh, document.hidden ? HIDDEN_REFRESH_MS : REFRESH_MS)
    }
  }
}

function renderSummary (stats) {
  const n = Number(stats?.torrents) || 0
  const parts = [`${n} torrent${n === 1 ? '' : 's'}`,
    `↓ ${formatRate(stats?.download_rate)}`, `↑ ${formatRate(stats?.upload_rate)}`,
    `peers: ${formatPeers(stats?.peers)}`]
  el.summary.textContent = parts.join('  ·  ')
}

// ---------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------

const rows = new Map() // info hash -> { li, refs, torrent }

function renderList (list) {
  const seen = new Set()
  let previous = null
  for (const t of list) {
    if (!t || typeof t.infohash !== 'string') continue
    seen.add(t.infohash)
    let row = rows.get(t.infohash)
    if (!row) {
      row = makeRow(t.infohash)
      rows.set(t.infohash, row)
    }
    updateRow(row, t)
    const want = previous ? previous.nextSibling : el.list.firstChild
    if (want !== row.li) el.list.insertBefore(row.li, want)
    previous = row.li
  }
  for (const [ih, row] of rows) {
    if (!seen.has(ih)) {
      row.li.remove()
      rows.delete(ih)
    }
  }
  el.empty.hidden = rows.size > 0
}

function makeRow (infohash) {
  const li = el.rowTemplate.content.firstElementChild.cloneNode(true)
  li.dataset.infohash = infohash
  const q = sel => li.querySelector(sel)
  const refs = {
    name: q('.t-name'),
    state: q('.t-state'),
    bar: q('.bar'),
    fill: q('.fill'),
    pct: q('.t-pct'),
    size: q('.t-size'),
    down: q('.t-down'),
    up: q('.t-up'),
    peers: q('.t-peers'),
    error: q('.t-error'),
    toggle: q('.t-toggle'),
    details: q('.t-details'),
    remove: q('.t-remove')
  }
  const row = { li, refs, torrent: null }
  refs.name.href = `#torrent=${encodeURIComponent(infohash)}`
  refs.details.addEventListener('click', () => { window.location.hash = `torrent=${infohash}` })
  refs.toggle.addEventListener('click', () => {
    const stopped = isStopped(row.torrent?.state)
    act(refs.toggle, () => api('POST', `/torrents/${infohash}/${stopped ? 'resume' : 'pause'}`))
  })
  refs.remove.addEventListener('click', () => confirmRemove(row.torrent ?? { infohash, name: '' }))
  return row
}

function updateRow (row, t) {
  const { refs } = row
  row.torrent = t
  refs.name.textContent = t.name || t.infohash
  refs.state.textContent = t.state
  refs.state.dataset.state = String(t.state)
  row.li.dataset.state = String(t.state)
  const pct = Math.max(0, Math.min(100, (Number(t.progress) || 0) * 100))
  refs.fill.style.width = `${pct}%`
  refs.bar.setAttribute('aria-valuenow', pct.toFixed(1))
  refs.pct.textContent = formatProgress(t.progress)
  refs.size.textContent = t.size == null ? 'size unknown' : formatBytes(t.size)
  refs.down.textContent = `↓ ${formatRate(t.download_rate)}`
  refs.up.textContent = `↑ ${formatRate(t.upload_rate)}`
  refs.peers.textContent = formatPeers(t.peers)
  refs.error.textContent = t.error || ''
  refs.error.hidden = !t.error
  if (!refs.toggle.dataset.busy) refs.toggle.textContent = isStopped(t.state) ? 'Resume' : 'Pause'
}

// A paused torrent, or one stopped by an error (a full disk, say): "Resume" starts it again.
function isStopped (state) {
  return state === 'paused' || state === 'error'
}

// Runs an API action from `button`: the button is disabled meanwhile, errors are shown.
async function act (button, action) {
  if (button) {
    button.disabled = true
    button.dataset.busy = '1'
  }
  try {
    const result = await action()
    if (!el.message.hidden && el.message.classList.contains('error')) clearMessage()
    return result
  } catch (err) {
    if (err.status !== 401) showError(errorText(err))
    return undefined
  } finally {
    if (button) {
      button.disabled = false
      delete button.dataset.busy
    }
    refresh()
  }
}

// ---------------------------------------------------------------------------
// Removing
// ---------------------------------------------------------------------------

let removing = null // the torrent the remove dialog is about

function confirmRemove (t) {
  const label = t.name || t.infohash
  if (typeof el.removeDialog.showModal !== 'function') { // no <dialog>: plain confirms
    if (!window.confirm(`Remove ${label}?`)) return
    const deleteData = window.confirm('Also delete its downloaded files? (Cancel keeps them.)')
    remove(t.infohash, deleteData)
    return
  }
  removing = t
  el.removeName.textContent = label
  el.removeData.checked = false
  el.removeDialog.returnValue = ''
  el.removeDialog.showModal()
}

function onRemoveDialogClose () {
  const t = removing
  removing = null
  if (t && el.removeDialog.returnValue === 'remove') remove(t.infohash, el.removeData.checked)
}

function remove (infohash, deleteData) {
  const button = rows.get(infohash)?.refs.remove
  return act(button, async () => {
    const done = await api('DELETE', `/torrents/${infohash}?delete_data=${deleteData ? 'true' : 'false'}`)
    if (detailHash === infohash) closeDetail()
    const row = rows.get(infohash)
    if (row) {
      row.li.remove()
      rows.delete(infohash)
      el.empty.hidden = rows.size > 0
    }
    showInfo(done?.data_deleted ? 'Removed, and its files deleted.' : 'Removed (its files were kept).')
    return done
  })
}

// ---------------------------------------------------------------------------
// Adding
// ---------------------------------------------------------------------------

// A magnet link, or a bare info hash made into one; throws an Error saying what is wrong.
function normalizeMagnet (input) {
  const text = String(input ?? '').trim()
  if (!text) throw new Error('Enter a magnet link.')
  if (/^[0-9a-f]{40}$/i.test(text) || /^[a-z2-7]{32}$/i.test(text)) return `magnet:?xt=urn:btih:${text}`
  if (!/^magnet:\?/i.test(text)) throw new Error('A magnet link starts with "magnet:?".')
  return text
}

function onMagnetSubmit (event) {
  event.preventDefault()
  let magnet
  try {
    magnet = normalizeMagnet(el.magnetInput.value)
  } catch (err) {
    showError(errorText(err))
    return
  }
  act(el.magnetButton, async () => {
    const t = await api('POST', '/torrents', { magnet, paused: el.addPaused.checked })
    el.magnetInput.value = ''
    showInfo(`Added ${t?.name || t?.infohash || 'the torrent'}.`)
  })
}

function onFileSubmit (event) {
  event.preventDefault()
  const file = el.fileInput.files?.[0]
  if (!file) {
    showError('Choose a .torrent file.')
    return
  }
  const form = new FormData()
  form.append('torrent', file, file.name)
  if (el.addPaused.checked) form.append('paused', 'true')
  act(el.fileButton, async () => {
    const t = await api('POST', '/torrents', form)
    el.fileInput.value = ''
    showInfo(`Added ${t?.name || t?.infohash || 'the torrent'}.`)
  })
}

// ---------------------------------------------------------------------------
// The detail of one torrent (#torrent=<info hash>)
// ---------------------------------------------------------------------------

let filesKey = null // what the files list was last drawn from

function hashFromLocation () {
  const m = /^#torrent=([0-9a-fA-F]{40})$/.exec(window.location.hash)
  return m ? m[1].toLowerCase() : null
}

function onRoute () {
  const ih = hashFromLocation()
  if (ih === detailHash) return
  detailHash = ih
  filesKey = null
  if (!ih) {
    el.detail.hidden = true
    return
  }
  el.detailName.textContent = rows.get(ih)?.torrent?.name || ih
  el.files.replaceChildren()
  el.peerRows.replaceChildren()
  el.detail.hidden = ui.needToken
  refresh()
}

function closeDetail () {
  if (window.location.hash) {
    window.history.pushState(null, '', window.location.pathname + window.location.search)
  }
  detailHash = null
  filesKey = null
  el.detail.hidden = true
}

async function refreshDetail (ih) {
  let t
  try {
    t = await api('GET', `/torrents/${ih}`)
  } catch (err) {
    if (err.status === 404 && detailHash === ih) {
      closeDetail()
      showError('That torrent is no longer on the server.')
      return
    }
    throw err
  }
  if (detailHash !== ih) return
  renderDetail(t)
}

function renderDetail (t) {
  const wasHidden = el.detail.hidden
  el.detail.hidden = false
  el.detailName.textContent = t.name || t.infohash
  el.detailState.textContent = t.state
  el.detailProgress.textContent = formatProgress(t.progress)
  el.detailSize.textContent = t.size == null ? 'unknown (waiting for the metadata)' : formatBytes(t.size)
  const p = t.pieces || {}
  el.detailPieces.textContent = p.total == null
    ? '–'
    : `${p.have ?? 0} of ${p.total} (${formatBytes(p.length)} each)`
  el.detailDownloaded.textContent = formatBytes(t.downloaded)
  el.detailUploaded.textContent = formatBytes(t.uploaded)
  el.detailInfohash.textContent = t.infohash
  el.detailSavePath.textContent = t.save_path || '–'
  el.detailError.textContent = t.error || ''
  el.detailErrorRow.hidden = !t.error
  const magnet = typeof t.magnet === 'string' && /^magnet:\?/i.test(t.magnet) ? t.magnet : null
  if (magnet) el.detailMagnet.href = magnet
  else el.detailMagnet.removeAttribute('href')
  el.copyMagnet.hidden = !magnet
  renderFiles(t)
  renderPeers(t.peer_list || [])
  if (wasHidden) el.detail.scrollIntoView({ block: 'nearest' })
}

function isVideo (path) {
  const lower = String(path).toLowerCase()
  return VIDEO_EXTENSIONS.some(ext => lower.endsWith(ext))
}

// The bridge's ws tracker as this browser reaches it: a tracker bound to every address reports
// 127.0.0.1, which is this server's own address as seen from another machine.
function trackerForBrowser () {
  if (!ui.tracker) return null
  try {
    const url = new URL(ui.tracker)
    const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)
    const here = window.location.hostname
    if (loopback && here && !['127.0.0.1', 'localhost', '[::1]', '::1'].includes(here)) url.hostname = here
    return url.href.replace(/\/$/, '')
  } catch {
    return null
  }
}

// The player page with the torrent's magnet, plus the bridge's tracker (WebRTC) and its web seed
// and metadata (plain HTTP from this server), so the video plays even where WebRTC cannot connect.
function playerUrl (t, path) {
  let magnet = typeof t.magnet === 'string' && /^magnet:\?/i.test(t.magnet) ? t.magnet : `magnet:?xt=urn:btih:${t.infohash}`
  const tracker = trackerForBrowser()
  const existing = new URLSearchParams(magnet.slice(magnet.indexOf('?') + 1))
  if (tracker && !existing.getAll('tr').includes(tracker)) magnet += `&tr=${encodeURIComponent(tracker)}`
  const seed = `${window.location.origin}/torrents/${t.infohash}/files/`
  if (!existing.getAll('ws').includes(seed)) magnet += `&ws=${encodeURIComponent(seed)}`
  // The metadata too, over plain HTTP (WebTorrent fetches xs=): no peer is needed to start.
  const source = `${window.location.origin}/torrents/${t.infohash}.torrent`
  if (!existing.getAll('xs').includes(source)) magnet += `&xs=${encodeURIComponent(source)}`
  const file = path ? `&file=${encodeURIComponent(path)}` : ''
  return `/index.html?magnet=${encodeURIComponent(magnet)}${file}`
}

function renderFiles (t) {
  const files = (t.files || []).filter(f => f && !f.padding)
  const key = JSON.stringify([t.infohash, t.magnet, ui.tracker,
    files.map(f => [f.path, f.size, f.priority, f.stream_url])])
  if (key === filesKey) return
  filesKey = key
  const items = files.map(f => {
    const li = document.createElement('li')
    li.className = 'file'
    const name = document.createElement('span')
    name.className = 'f-path'
    name.textContent = f.path
    const size = document.createElement('span')
    size.className = 'f-size'
    size.textContent = formatBytes(f.size) + (f.priority === 0 ? ' · skipped' : '')
    const links = document.createElement('span')
    links.className = 'f-links'
    const url = typeof f.stream_url === 'string' && f.stream_url.startsWith('/torrents/') ? f.stream_url : null
    if (isVideo(f.path)) {
      const play = document.createElement('a')
      play.className = 'f-play'
      play.textContent = 'play'
      play.href = playerUrl(t, f.path)
      play.target = '_blank'
      play.rel = 'noopener'
      play.title = 'Play in the browser over WebTorrent'
      links.append(play)
    }
    if (url) {
      const dl = document.createElement('a')
      dl.className = 'f-download'
      dl.textContent = 'download'
      dl.href = url
      dl.download = String(f.path).split('/').pop() || 'file'
      links.append(dl)
    }
    li.append(name, size, links)
    return li
  })
  if (!items.length) {
    const li = document.createElement('li')
    li.className = 'hint'
    li.textContent = t.size == null ? 'Waiting for the metadata…' : 'No files.'
    items.push(li)
  }
  el.files.replaceChildren(...items)
}

function renderPeers (list) {
  el.noPeers.hidden = list.length > 0
  el.peers.hidden = list.length === 0
  el.peerRows.replaceChildren(...list.map(p => {
    const tr = document.createElement('tr')
    for (const text of [p.address, p.kind, formatRate(p.download_rate), formatRate(p.upload_rate)]) {
      const td = document.createElement('td')
      td.textContent = String(text ?? '')
      tr.append(td)
    }
    return tr
  }))
}

async function copyMagnet () {
  const magnet = el.detailMagnet.getAttribute('href')
  if (!magnet) return
  try {
    await navigator.clipboard.writeText(magnet)
    showInfo('Magnet link copied.')
  } catch {
    window.prompt('Copy the magnet link:', magnet)
  }
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

function init () {
  el.tokenForm.addEventListener('submit', onTokenSubmit)
  el.magnetForm.addEventListener('submit', onMagnetSubmit)
  el.fileForm.addEventListener('submit', onFileSubmit)
  el.messageClose.addEventListener('click', clearMessage)
  el.detailClose.addEventListener('click', closeDetail)
  el.copyMagnet.addEventListener('click', copyMagnet)
  el.removeDialog.addEventListener('close', onRemoveDialogClose)
  window.addEventListener('hashchange', onRoute)
  window.addEventListener('popstate', onRoute)
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && !ui.needToken) refresh()
  })
  ui.ready = true
  onRoute()
  refresh()
}

init()
