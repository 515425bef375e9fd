// Reference WebSocket tracker (WebTorrent signalling) for the tracker_ws tests.
//
// Usage: node ws_tracker.mjs [--host 127.0.0.1]
//
// Serves only the WebSocket tracker of bittorrent-tracker (no HTTP announce, no UDP) on HOST, port
// chosen by the kernel. When it listens it prints exactly one JSON line on stdout:
//   {"host": "127.0.0.1", "port": P, "url": "ws://127.0.0.1:P"}
// and then serves until it gets SIGTERM/SIGINT or its stdin closes (so it never outlives the test that
// started it). Announces, warnings and errors are logged on stderr.
import Server from 'bittorrent-tracker/server'

function parseArgs (argv) {
  const opts = { host: '127.0.0.1' }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--host') opts.host = argv[++i]
    else {
      console.error(`ws_tracker.mjs: unknown argument ${arg}`)
      process.exit(2)
    }
  }
  return opts
}

function log (...args) {
  console.error(new Date().toISOString(), ...args)
}

const opts = parseArgs(process.argv.slice(2))
const server = new Server({ http: false, udp: false, ws: true, stats: false })
server.on('error', (err) => log('error:', err.message))
server.on('warning', (err) => log('warning:', err.message))
for (const event of ['start', 'complete', 'update', 'stop']) {
  server.on(event, (peerId, params) => {
    const left = params && params.left !== undefined ? ` left=${params.left}` : ''
    const hash = params && params.info_hash ? ` ${params.info_hash}` : ''
    log(`${event} peer=${peerId}${hash}${left}`)
  })
}

server.listen(0, opts.host, () => {
  const port = server.ws.address().port
  process.stdout.write(JSON.stringify({ host: opts.host, port, url: `ws://${opts.host}:${port}` }) + '\n')
  log(`listening ws=${port}`)
})

function shutdown (why) {
  log(`${why}: closing`)
  server.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
process.stdin.on('end', () => shutdown('stdin closed'))
process.stdin.resume()
