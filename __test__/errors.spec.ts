/**
 * Errors, once: every code the code base raises is a documented {@link MdBitmapErrorCode}
 * (so a new code cannot go undocumented), md-bitmap's own codes are all still raised
 * somewhere (so the list carries no dead code), and anything thrown becomes an
 * MdBitmapError through the one normaliser, the NBD byte queue and socket reader
 * included.
 */
import test from 'ava'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { createServer, connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'

import { ErrnoCode, LibraryErrorCode, MD_BITMAP_ERROR_CODES, MdBitmapError } from '../src'
import { toMdBitmapError } from '../src/errors'
import { ByteQueue } from '../src/nbd/protocol/byte-queue'
import { SocketReader } from '../src/nbd/socket-reader'

const ROOT = join(__dirname, '..')

function filesUnder(dir: string, ext: string): string[] {
  const out: string[] = []
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...filesUnder(p, ext))
    else if (e.name.endsWith(ext)) out.push(p)
  }
  return out
}

/** Every quoted error-code-shaped string in the sources, with where it occurs. */
function raisedCodes(): Map<string, string[]> {
  const found = new Map<string, string[]>()
  const scan = (files: string[], pattern: RegExp) => {
    for (const f of files) {
      const text = readFileSync(f, 'utf8')
      for (const m of text.matchAll(pattern)) {
        const at = `${relative(ROOT, f)}:${text.slice(0, m.index).split('\n').length}`
        found.set(m[1], [...(found.get(m[1]) ?? []), at])
      }
    }
  }
  // TypeScript: 'ECODE' or "ECODE"; src/errors.ts lists them all, so it proves nothing.
  scan(
    filesUnder(join(ROOT, 'src'), '.ts').filter((f) => f !== join(ROOT, 'src', 'errors.ts')),
    /['"](E[A-Z][A-Z0-9_]+)['"]/g,
  )
  // The native core and binding: "ECODE" (IoError::new, problem codes).
  scan(filesUnder(join(ROOT, 'crates'), '.rs'), /"(E[A-Z][A-Z0-9_]+)"/g)
  return found
}

test('every code raised in src/ and crates/ is a documented MdBitmapErrorCode', (t) => {
  const known = new Set<string>(MD_BITMAP_ERROR_CODES)
  const found = raisedCodes()
  // The scan must see the codes of every layer, or it checks nothing.
  for (const c of ['EEXTENT_HOLE', 'EDEVICE_PIN', 'EMIRROR_BUSY', 'ENBD_PROTOCOL', 'EUSAGE', 'EBADMAGIC', 'EIO']) {
    t.true(found.has(c), `the scan finds ${c}`)
  }
  t.true(found.size >= 60, `the scan found ${found.size} codes`)
  const undocumented = [...found].filter(([c]) => !known.has(c)).map(([c, at]) => `${c} (${at.join(', ')})`)
  t.deepEqual(undocumented, [], 'add each to LibraryErrorCode (or ErrnoCode) in src/errors.ts, with what it means')
})

test("every one of md-bitmap's own codes is still raised somewhere", (t) => {
  const found = raisedCodes()
  const dead = Object.keys(LibraryErrorCode).filter((c) => !found.has(c))
  t.deepEqual(dead, [], 'a code nothing raises any more should leave LibraryErrorCode')
})

test('the code lists: each key names itself, no code twice, the union is both lists', (t) => {
  for (const [k, v] of [...Object.entries(LibraryErrorCode), ...Object.entries(ErrnoCode)]) t.is(k, v)
  t.is(new Set(MD_BITMAP_ERROR_CODES).size, MD_BITMAP_ERROR_CODES.length)
  t.is(MD_BITMAP_ERROR_CODES.length, Object.keys(LibraryErrorCode).length + Object.keys(ErrnoCode).length)
  for (const c of MD_BITMAP_ERROR_CODES) t.regex(c, /^E[A-Z][A-Z0-9_]+$/)
})

test('toMdBitmapError: passes an MdBitmapError through, keeps errno codes, falls back, adds context and hint', (t) => {
  const own = new MdBitmapError('EBADMAGIC', 'not a bitmap')
  t.is(toMdBitmapError(own), own)

  const sys = Object.assign(new Error("ENOSPC: no space left on device, write"), { code: 'ENOSPC', errno: -28 })
  const e = toMdBitmapError(sys, { context: 'cannot write /x', hint: 'free some space' })
  t.true(e instanceof MdBitmapError)
  t.is(e.code, 'ENOSPC')
  t.is(e.errno, -28)
  t.is(e.message, 'cannot write /x: ENOSPC: no space left on device, write; free some space')
  t.is(e.cause, sys)

  const wrapped = toMdBitmapError(own, { context: '/x' })
  t.not(wrapped, own)
  t.is(wrapped.code, 'EBADMAGIC')
  t.is(wrapped.message, '/x: not a bitmap')

  t.is(toMdBitmapError(new TypeError('boom')).code, 'EIO')
  t.is(toMdBitmapError(Object.assign(new Error('x'), { code: 'ERR_INVALID_ARG_TYPE' })).code, 'EIO', 'a Node ERR_ code is not an errno')
  t.is(toMdBitmapError('a string', { fallback: 'EINTERNAL' }).code, 'EINTERNAL')
  t.is(toMdBitmapError('a string', { fallback: 'EINTERNAL' }).message, 'a string')
})

test('ByteQueue: taking more than is queued is an MdBitmapError (EINTERNAL), not a RangeError', (t) => {
  const q = new ByteQueue()
  q.push(new Uint8Array([1, 2, 3]))
  for (const f of [() => q.take(4), () => q.skip(4), () => q.copyTo(new Uint8Array(4), 0, 4)]) {
    const e = t.throws(f)
    t.true(e instanceof MdBitmapError)
    t.is((e as MdBitmapError).code, 'EINTERNAL')
  }
  t.deepEqual([...q.take(3)], [1, 2, 3], 'a refused take changes nothing')
})

test('SocketReader: a second read while one waits rejects with an MdBitmapError; a closed peer is ENBD_DISCONNECTED', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'md-bitmap-errors-'))
  const path = join(dir, 'sock')
  const accepted = new Promise<Socket>((resolve) => {
    const server = createServer((s) => {
      server.close()
      resolve(s)
    })
    server.listen(path)
  })
  const client = connect({ path })
  const peer = await accepted
  try {
    const reader = new SocketReader(client, 'test peer')
    const first = reader.read(4, 0, 'four bytes')
    const second = await reader.read(1, 0, 'one byte').then(
      () => undefined,
      (e: unknown) => e,
    )
    t.true(second instanceof MdBitmapError)
    t.is((second as MdBitmapError).code, 'EINTERNAL')
    peer.end()
    const e = await t.throwsAsync(first)
    t.true(e instanceof MdBitmapError)
    t.is((e as MdBitmapError).code, 'ENBD_DISCONNECTED')
  } finally {
    client.destroy()
    peer.destroy()
    rmSync(dir, { recursive: true, force: true })
  }
})
