#!/usr/bin/env node
// A Node `yjs` + `y-protocols` client of a lattica_nb room bridge (lattica_nb.sync.bridge), for
// interop tests. It connects to the bridge over TCP and syncs as a y-websocket client does; the
// test drives its edits over JSON lines on stdin/stdout.
//
//   node yjs_bridge_client.mjs --port N [--host 127.0.0.1] [--client-id N]
//
// The wire to the bridge: frames of uvarint(length) || y-websocket message, where a message is
// varuint(0) || a y-protocols sync message (SyncStep1 / SyncStep2 / Update). On connect the client
// sends its SyncStep1, answers the bridge's SyncStep1 with a SyncStep2, applies what arrives with
// origin REMOTE and sends every local change as one Update (never echoing the bridge's own).
//
// Once connected it prints {"ready": true, "client_id": N, "versions": {...}}. Every stdin line
// is one command {"id": any, "cmd": ...} and gets one reply line {"id": same, "ok": true, ...}
// or {"id": same, "ok": false, "error": "..."}; the wait commands reply when their condition
// holds (or fail after timeout_ms, default 10000).
//
//   set / delete / push / insert / text_insert   as in yjs_peer.mjs
//   {"cmd": "append_row", "map": m, "key": k, "value": v}
//        push v onto the Y.Array m[k], creating it as Y.Array [v] when m has no key k
//   {"cmd": "transact", "ops": [{cmd...}, ...]}   several edits in one transaction (one Update)
//   {"cmd": "dump", "types": {"name": "map"|"array"|"text"}}   -> {"doc": {...}}
//   {"cmd": "wait_synced"}                         until the bridge's SyncStep2 arrived
//   {"cmd": "wait", "name": n, "kind": k, "equals": v}   until getX(n).toJSON() deep-equals v
//   {"cmd": "send_raw", "data_b64": ...}           send one frame with these bytes (bad input)
//   {"cmd": "wait_closed"}                         until the bridge closed the connection
//   {"cmd": "quit"}                                 close the connection and exit

import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { createInterface } from 'node:readline'

import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'
import * as Y from 'yjs'

const REMOTE = Symbol('bridge')
const MESSAGE_SYNC = 0
const MAX_FRAME_BYTES = 16 * 1024 * 1024
const DEFAULT_TIMEOUT_MS = 10000

const require = createRequire(import.meta.url)
const packageVersion = (name) =>
  JSON.parse(readFileSync(require.resolve(`${name}/package.json`), 'utf8')).version

const option = (name, fallback) => {
  const argv = process.argv.slice(2)
  const at = argv.indexOf(name)
  return at === -1 ? fallback : argv[at + 1]
}

const doc = new Y.Doc()
const clientId = option('--client-id', null)
if (clientId !== null) doc.clientID = Number(clientId)
const port = Number(option('--port', NaN))
if (!Number.isInteger(port)) throw new Error('--port N is required')

let synced = false
let closed = false
const waiters = new Set() // {check(): bool, resolve(), reject(error)}

const emit = (line) => process.stdout.write(JSON.stringify(line) + '\n')

// -- the wire ------------------------------------------------------------------------------
const socket = connect({ host: option('--host', '127.0.0.1'), port })

const writeFrame = (bytes) => {
  const prefix = encoding.createEncoder()
  encoding.writeVarUint(prefix, bytes.length)
  socket.write(Buffer.concat([encoding.toUint8Array(prefix), bytes]))
}

const sendSync = (write) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SYNC)
  write(encoder)
  writeFrame(encoding.toUint8Array(encoder))
}

const settle = () => {
  for (const waiter of [...waiters]) {
    if (waiter.check()) waiter.resolve()
  }
}

const handleMessage = (bytes) => {
  const decoder = decoding.createDecoder(bytes)
  const kind = decoding.readVarUint(decoder)
  if (kind !== MESSAGE_SYNC) return // awareness is not used here
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SYNC)
  const step = syncProtocol.readSyncMessage(decoder, encoder, doc, REMOTE)
  if (encoding.length(encoder) > 1) writeFrame(encoding.toUint8Array(encoder))
  if (step === syncProtocol.messageYjsSyncStep2) synced = true
  settle()
}

let pending = Buffer.alloc(0)
socket.on('data', (chunk) => {
  pending = Buffer.concat([pending, chunk])
  while (true) {
    let length = 0
    let shift = 0
    let at = 0
    for (;;) {
      if (at >= pending.length) return // the prefix is incomplete
      const byte = pending[at++]
      length += (byte & 0x7f) * 2 ** shift
      shift += 7
      if (byte < 0x80) break
      if (at > 8) { socket.destroy(new Error('frame length prefix is too long')); return }
    }
    if (length > MAX_FRAME_BYTES) {
      socket.destroy(new Error(`frame of ${length} bytes is too large`))
      return
    }
    if (pending.length < at + length) return
    const message = new Uint8Array(pending.subarray(at, at + length))
    pending = pending.subarray(at + length)
    handleMessage(message)
  }
})

socket.on('connect', () => {
  sendSync((encoder) => syncProtocol.writeSyncStep1(encoder, doc))
  emit({
    ready: true,
    client_id: doc.clientID,
    versions: {
      node: process.versions.node,
      yjs: packageVersion('yjs'),
      'y-protocols': packageVersion('y-protocols'),
      lib0: packageVersion('lib0')
    }
  })
})

socket.on('error', (error) => {
  process.stderr.write(`bridge connection failed: ${error.message}\n`)
})

socket.on('close', () => {
  closed = true
  settle()
  for (const waiter of [...waiters]) waiter.reject(new Error('the bridge closed the connection'))
})

doc.on('update', (update, origin) => {
  if (origin === REMOTE) return
  sendSync((encoder) => syncProtocol.writeUpdate(encoder, update))
})

// -- commands --------------------------------------------------------------------------------
const name = (command, field) => {
  const value = command[field]
  if (typeof value !== 'string') throw new Error(`"${field}" must be a string`)
  return value
}

const index = (command) => {
  if (!Number.isInteger(command.index) || command.index < 0) {
    throw new Error('"index" must be a non-negative integer')
  }
  return command.index
}

const typed = (rootName, kind) => {
  switch (kind) {
    case 'map': return doc.getMap(rootName)
    case 'array': return doc.getArray(rootName)
    case 'text': return doc.getText(rootName)
    default: throw new Error(`unknown type ${JSON.stringify(kind)}`)
  }
}

const edit = (command) => {
  switch (command.cmd) {
    case 'set':
      doc.getMap(name(command, 'map')).set(name(command, 'key'), command.value)
      return
    case 'delete':
      doc.getMap(name(command, 'map')).delete(name(command, 'key'))
      return
    case 'push':
      doc.getArray(name(command, 'array')).push('values' in command ? command.values : [command.value])
      return
    case 'insert':
      doc.getArray(name(command, 'array')).insert(index(command), [command.value])
      return
    case 'text_insert':
      doc.getText(name(command, 'text')).insert(index(command), name(command, 'value'))
      return
    case 'append_row': {
      const map = doc.getMap(name(command, 'map'))
      const key = name(command, 'key')
      const rows = map.get(key)
      if (rows === undefined) {
        map.set(key, Y.Array.from([command.value]))
      } else if (rows instanceof Y.Array) {
        rows.push([command.value])
      } else {
        throw new Error(`${key} is not a Y.Array`)
      }
      return
    }
    default:
      throw new Error(`unknown command ${JSON.stringify(command.cmd)}`)
  }
}

const deepEqual = (a, b) => {
  if (a === b) return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false
  if (Array.isArray(a) !== Array.isArray(b)) return false
  const keys = Object.keys(a)
  if (keys.length !== Object.keys(b).length) return false
  return keys.every((key) => Object.hasOwn(b, key) && deepEqual(a[key], b[key]))
}

const waitFor = (command, check, describe) => new Promise((resolve, reject) => {
  if (check()) { resolve({}); return }
  if (closed) { reject(new Error('the bridge closed the connection')); return }
  const timeoutMs = command.timeout_ms ?? DEFAULT_TIMEOUT_MS
  const waiter = {
    check,
    resolve: () => { finish(); resolve({}) },
    reject: (error) => { finish(); reject(error) }
  }
  const timer = setTimeout(() => waiter.reject(new Error(`timed out after ${timeoutMs} ms: ${describe()}`)), timeoutMs)
  const finish = () => { clearTimeout(timer); waiters.delete(waiter) }
  waiters.add(waiter)
})

const handle = async (command) => {
  switch (command.cmd) {
    case 'transact':
      if (!Array.isArray(command.ops)) throw new Error('"ops" must be a list of edits')
      doc.transact(() => { command.ops.forEach(edit) })
      return {}
    case 'dump': {
      const out = {}
      for (const [rootName, kind] of Object.entries(command.types ?? {})) {
        out[rootName] = typed(rootName, kind).toJSON()
      }
      return { doc: out }
    }
    case 'wait_synced':
      return waitFor(command, () => synced, () => 'no SyncStep2 from the bridge')
    case 'wait': {
      const root = typed(name(command, 'name'), name(command, 'kind'))
      return waitFor(command, () => deepEqual(root.toJSON(), command.equals),
        () => `${command.name} is ${JSON.stringify(root.toJSON())}`)
    }
    case 'wait_closed':
      return waitFor(command, () => closed, () => 'the connection is still open')
    case 'send_raw':
      writeFrame(new Uint8Array(Buffer.from(name(command, 'data_b64'), 'base64')))
      return {}
    case 'quit':
      socket.end()
      return {}
    default:
      edit(command)
      return {}
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  if (line.trim() === '') return
  let command = {}
  Promise.resolve()
    .then(() => { command = JSON.parse(line); return handle(command) })
    .then(
      (reply) => emit({ id: command.id ?? null, ok: true, ...reply }),
      (error) => emit({ id: command.id ?? null, ok: false, error: String(error?.message ?? error) })
    )
    .then(() => { if (command.cmd === 'quit') { lines.close(); socket.destroy() } })
})
lines.on('close', () => {
  socket.destroy()
  doc.destroy()
})
