#!/usr/bin/env node
// An independent Yjs client (Node `yjs` + `y-protocols`) driven over JSON lines, for
// lattica_nb interop tests. It never opens a socket: stdin and stdout are its only wire.
//
//   node yjs_peer.mjs [--client-id N]
//
// The Y.Doc gets a 32-bit client id (random unless --client-id), as Yjs itself uses. First it
// prints one ready line:
//
//   {"ready": true, "client_id": N, "versions": {"node": ..., "yjs": ..., "y-protocols": ..., "lib0": ...}}
//
// Then every stdin line is one input and gets exactly one reply line, {"ok": true, ...} or
// {"ok": false, "error": "..."}. Messages this client sends to its peer are printed as their own
// lines *before* that reply, one line per message, with the y-protocols bytes in base64:
//
//   {"type": "sync", "data_b64": ...}       a y-protocols sync message (first varuint:
//                                           0 = SyncStep1, 1 = SyncStep2, 2 = Update), without
//                                           y-websocket's outer message-type byte
//   {"type": "awareness", "data_b64": ...}  an encoded awareness update (encodeAwarenessUpdate)
//
// Inputs:
//   {"type": "sync", "data_b64": ...}        readSyncMessage; a SyncStep1 is answered with a
//                                            SyncStep2 message line. Reply {"sync_type": 0|1|2}
//   {"type": "awareness", "data_b64": ...}   applyAwarenessUpdate
//   {"cmd": "step1"}                         send SyncStep1 (what a provider does on connect)
//   {"cmd": "set", "map": m, "key": k, "value": v}
//   {"cmd": "delete", "map": m, "key": k}
//   {"cmd": "push", "array": a, "value": v}  (or "values": [v, ...] to push several at once)
//   {"cmd": "insert", "array": a, "index": i, "value": v}
//   {"cmd": "text_insert", "text": t, "index": i, "value": s}
//   {"cmd": "copy", "from_map": m, "from_key": k, "to_map": m2, "to_key": k2}
//                                            read a value into JS and write it back (a JS round trip)
//   {"cmd": "transact", "ops": [{cmd...}, ...]}  several edits in one transaction (one Update)
//   {"cmd": "awareness_set", "state": {...} | null}  set the local awareness state
//   {"cmd": "dump", "types": {"name": "map"|"array"|"text"}?}
//        -> {"doc": {...}, "types": {...}, "awareness": {"<client id>": state}}
//   {"cmd": "quit"}                          -> {} and the process exits
//
// Every local edit is sent as one Update message. Updates that arrived from the peer are not
// echoed back (their transaction origin is the peer), as y-websocket does. Awareness messages
// are sent only for commands; the awareness renewal timer's own updates are not forwarded, so
// the output depends on the inputs alone.
//
// dump: root types created by a remote update are untyped until someone names their type;
// `types` names them, otherwise a root holding keys is read as a map, one holding string
// content as text, one holding any other content as an array, and an empty one is left out.
// JSON cannot carry everything Yjs stores, so dump writes bigint as {"$bigint": "<decimal>"},
// Uint8Array as {"$bytes_b64": ...}, non-finite numbers as {"$number": "NaN"|"Infinity"|
// "-Infinity"} and undefined as {"$undefined": true}.

import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'

import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as syncProtocol from 'y-protocols/sync'
import * as Y from 'yjs'

const REMOTE = Symbol('remote peer')
const CLIENT_ID_LIMIT = 2 ** 32

const require = createRequire(import.meta.url)
const packageVersion = (name) => {
  const path = require.resolve(`${name}/package.json`)
  return JSON.parse(readFileSync(path, 'utf8')).version
}

const parseClientId = (argv) => {
  const at = argv.indexOf('--client-id')
  if (at === -1) return null
  const id = Number(argv[at + 1])
  if (!Number.isInteger(id) || id < 0 || id >= CLIENT_ID_LIMIT) {
    throw new Error(`--client-id must be an integer in [0, 2**32), got ${argv[at + 1]}`)
  }
  return id
}

const doc = new Y.Doc()
const clientId = parseClientId(process.argv.slice(2))
if (clientId !== null) doc.clientID = clientId
const awareness = new awarenessProtocol.Awareness(doc)

let inCommand = false
const outbox = []

const emit = (line) => {
  process.stdout.write(JSON.stringify(line) + '\n')
}

const sendMessage = (type, bytes) => {
  outbox.push({ type, data_b64: Buffer.from(bytes).toString('base64') })
}

doc.on('update', (update, origin) => {
  if (origin === REMOTE) return
  const encoder = encoding.createEncoder()
  syncProtocol.writeUpdate(encoder, update)
  sendMessage('sync', encoding.toUint8Array(encoder))
})

awareness.on('update', ({ added, updated, removed }, origin) => {
  if (!inCommand || origin === REMOTE) return
  const changed = added.concat(updated, removed)
  sendMessage('awareness', awarenessProtocol.encodeAwarenessUpdate(awareness, changed))
})

const requireName = (command, field) => {
  const name = command[field]
  if (typeof name !== 'string') throw new Error(`"${field}" must be a string`)
  return name
}

const requireIndex = (command) => {
  const index = command.index
  if (!Number.isInteger(index) || index < 0) throw new Error('"index" must be a non-negative integer')
  return index
}

const fromBase64 = (command) => {
  if (typeof command.data_b64 !== 'string') throw new Error('"data_b64" must be a base64 string')
  return new Uint8Array(Buffer.from(command.data_b64, 'base64'))
}

const edit = (command) => {
  switch (command.cmd) {
    case 'set':
      doc.getMap(requireName(command, 'map')).set(requireName(command, 'key'), command.value)
      return
    case 'delete':
      doc.getMap(requireName(command, 'map')).delete(requireName(command, 'key'))
      return
    case 'push': {
      const values = 'values' in command ? command.values : [command.value]
      if (!Array.isArray(values)) throw new Error('"values" must be a list')
      doc.getArray(requireName(command, 'array')).push(values)
      return
    }
    case 'insert':
      doc.getArray(requireName(command, 'array')).insert(requireIndex(command), [command.value])
      return
    case 'text_insert':
      if (typeof command.value !== 'string') throw new Error('"value" must be a string')
      doc.getText(requireName(command, 'text')).insert(requireIndex(command), command.value)
      return
    case 'copy': {
      const source = doc.getMap(requireName(command, 'from_map'))
      const key = requireName(command, 'from_key')
      if (!source.has(key)) throw new Error(`map has no key ${JSON.stringify(key)}`)
      const value = source.get(key)
      if (value instanceof Y.AbstractType) throw new Error('copy takes plain values, not shared types')
      doc.getMap(requireName(command, 'to_map')).set(requireName(command, 'to_key'), value)
      return
    }
    default:
      throw new Error(`unknown edit ${JSON.stringify(command.cmd)}`)
  }
}

const inferType = (type) => {
  if (type._map.size > 0) return 'map'
  for (let item = type._start; item !== null; item = item.right) {
    if (item.deleted) continue
    const content = item.content
    if (content instanceof Y.ContentString || content instanceof Y.ContentFormat ||
        content instanceof Y.ContentEmbed) return 'text'
    return 'array'
  }
  return null
}

const typed = (name, kind) => {
  switch (kind) {
    case 'map': return doc.getMap(name)
    case 'array': return doc.getArray(name)
    case 'text': return doc.getText(name)
    default: throw new Error(`unknown type ${JSON.stringify(kind)} for ${JSON.stringify(name)}`)
  }
}

const kindOf = (type) => {
  if (type instanceof Y.Map) return 'map'
  if (type instanceof Y.Array) return 'array'
  if (type instanceof Y.Text) return 'text'
  return inferType(type)
}

const jsonSafe = (_key, value) => {
  if (typeof value === 'bigint') return { $bigint: value.toString() }
  if (value instanceof Uint8Array) return { $bytes_b64: Buffer.from(value).toString('base64') }
  if (typeof value === 'number' && !Number.isFinite(value)) return { $number: String(value) }
  if (value === undefined) return { $undefined: true }
  return value
}

const dump = (command) => {
  const declared = command.types ?? {}
  if (typeof declared !== 'object' || Array.isArray(declared)) throw new Error('"types" must be an object')
  const out = {}
  const kinds = {}
  for (const name of new Set([...doc.share.keys(), ...Object.keys(declared)])) {
    const kind = declared[name] ?? kindOf(doc.share.get(name))
    if (kind === null) continue
    out[name] = typed(name, kind).toJSON()
    kinds[name] = kind
  }
  const states = {}
  awareness.getStates().forEach((state, client) => { states[String(client)] = state })
  // Round-trip through the replacer so bigint, bytes and NaN survive as tagged JSON.
  return JSON.parse(JSON.stringify({ doc: out, types: kinds, awareness: states }, jsonSafe))
}

const handle = (command) => {
  if (command === null || typeof command !== 'object' || Array.isArray(command)) {
    throw new Error('each line must be a JSON object')
  }
  if (command.type === 'sync') {
    const decoder = decoding.createDecoder(fromBase64(command))
    const encoder = encoding.createEncoder()
    let failure = null
    const syncType = syncProtocol.readSyncMessage(decoder, encoder, doc, REMOTE, (error) => {
      failure = error
    })
    if (failure !== null) throw failure
    if (encoding.length(encoder) > 0) sendMessage('sync', encoding.toUint8Array(encoder))
    return { sync_type: syncType }
  }
  if (command.type === 'awareness') {
    awarenessProtocol.applyAwarenessUpdate(awareness, fromBase64(command), REMOTE)
    return {}
  }
  switch (command.cmd) {
    case 'step1': {
      const encoder = encoding.createEncoder()
      syncProtocol.writeSyncStep1(encoder, doc)
      sendMessage('sync', encoding.toUint8Array(encoder))
      return {}
    }
    case 'transact': {
      if (!Array.isArray(command.ops)) throw new Error('"ops" must be a list of edits')
      doc.transact(() => { command.ops.forEach(edit) })
      return {}
    }
    case 'awareness_set':
      awareness.setLocalState(command.state ?? null)
      return {}
    case 'dump':
      return dump(command)
    case 'quit':
      return {}
    default:
      edit(command)
      return {}
  }
}

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

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  if (line.trim() === '') return
  let command = null
  let reply
  inCommand = true
  try {
    command = JSON.parse(line)
    reply = { ok: true, ...handle(command) }
  } catch (error) {
    // Messages already queued stay: they describe edits the doc did make (a transaction that
    // failed halfway still commits what it did), and the peer must not miss them.
    reply = { ok: false, error: String(error && error.message ? error.message : error) }
  } finally {
    inCommand = false
  }
  for (const message of outbox.splice(0)) emit(message)
  emit(reply)
  if (command !== null && command.cmd === 'quit') lines.close()
})
lines.on('close', () => {
  awareness.destroy()
  doc.destroy()
  process.exitCode = 0
})
