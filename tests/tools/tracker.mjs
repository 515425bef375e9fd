// Reference BitTorrent tracker for the interop tests (HTTP + UDP, no WebSocket).
//
// Usage: node tracker.mjs [--host 127.0.0.1] [--interval SECONDS]
//
// Binds HTTP on HOST, port chosen by the kernel, then tries to bind the UDP
// tracker on the same port number (so one number names both trackers); if that
// port is taken for UDP it picks another. When both are up it prints exactly one
// JSON line on stdout:
//   {"host": "127.0.0.1", "http_port": P, "udp_port": Q,
//    "http_announce": "http://127.0.0.1:P/announce", "udp_announce": "udp://127.0.0.1:Q"}
// and then serves until it gets SIGTERM/SIGINT. Announces and errors are
// logged on stderr.
//
// Server.listen() is not used: it would also bind an IPv6 UDP socket on the
// wildcard address and could not ask for "the HTTP port number, over UDP".
import Server from 'bittorrent-tracker/server'

function parseArgs (argv) {
  const opts = { host: '127.0.0.1', interval: 2 }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--host') opts.host = argv[++i]
    else if (arg === '--interval') opts.interval = Number(argv[++i])
    else {
      console.error(`tracker.mjs: unknown argument ${arg}`)
      process.exit(2)
    }
  }
  if (!(opts.interval > 0)) {
    console.error('tracker.mjs: --interval must be a positive number of seconds')
    process.exit(2)
  }
  return opts
}

function log (...args) {
  console.error(new Date().toISOString(), ...args)
}

function once (emitter, okEvent) {
  return new Promise((resolve, reject) => {
    const onOk = () => { emitter.off('error', onErr); resolve() }
    const onErr = (err) => { emitter.off(okEvent, onOk); reject(err) }
    emitter.once(okEvent, onOk)
    emitter.once('error', onErr)
  })
}

function newServer (interval) {
  // The announce interval is short so that peers started later in a test
  // learn about each other within seconds instead of the default 10 minutes.
  const server = new Server({ http: true, udp: true, ws: false, stats: true, interval: interval * 1000 })
  // Only IPv4 loopback is used by the tests: drop the IPv6 UDP socket before it is bound.
  server.udp6.close()
  server.udp6 = null
  // Without a listener an 'error' event (e.g. EADDRINUSE while binding) would crash the process.
  server.on('error', (err) => log('error:', err.message))
  server.on('warning', (err) => log('warning:', err.message))
  return server
}

async function bindUdp (socket, port, host) {
  const bound = once(socket, 'listening')
  socket.bind(port, host)
  await bound
}

async function start ({ host, interval }) {
  const attempts = 20
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const server = newServer(interval)
    const httpUp = once(server.http, 'listening')
    server.http.listen(0, host)
    await httpUp
    const httpPort = server.http.address().port
    const sameUdp = attempt < attempts
    try {
      await bindUdp(server.udp4, sameUdp ? httpPort : 0, host)
    } catch (err) {
      if (err.code !== 'EADDRINUSE') throw err
      log(`udp port ${httpPort} busy, retrying`)
      server.http.close()
      continue
    }
    return server
  }
  throw new Error('could not bind the tracker')
}

const opts = parseArgs(process.argv.slice(2))
const server = await start(opts)
const httpPort = server.http.address().port
const udpPort = server.udp4.address().port

for (const event of ['start', 'complete', 'update', 'stop']) {
  server.on(event, (addr, params) => {
    const left = params && params.left !== undefined ? ` left=${params.left}` : ''
    const hash = params && params.info_hash ? ` ${params.info_hash}` : ''
    log(`${event} ${params && params.type ? params.type : ''} ${addr}${hash}${left}`)
  })
}

process.stdout.write(JSON.stringify({
  host: opts.host,
  http_port: httpPort,
  udp_port: udpPort,
  http_announce: `http://${opts.host}:${httpPort}/announce`,
  udp_announce: `udp://${opts.host}:${udpPort}`
}) + '\n')
log(`listening http=${httpPort} udp=${udpPort} interval=${opts.interval}s`)

function shutdown (signal) {
  log(`${signal}: closing`)
  server.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
