import test from 'ava'
import fc from 'fast-check'
import { endianness } from 'node:os'

import { MdBitmapError } from '../src/errors'
import {
  BITMAP_MAGIC,
  HOST_BIT_ORDER,
  STATE_HOSTENDIAN,
  STATE_STALE,
  STATE_WRITE_ERROR,
  bitLocation,
  bitVersion,
  bitmapBytes,
  chunkCount,
  clearBit,
  decode,
  dirtyCount,
  encode,
  getBit,
  mdadmUuid,
  minFileSize,
  pagedFileSize,
  parseUuid,
  setBit,
  type BitOrder,
  type Superblock,
} from '../src/bitmap/superblock'

// ---------------------------------------------------------------------------------
// Arbitraries

const u32 = fc.integer({ min: 0, max: 0xffffffff })
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })

/** Any superblock `encode` must accept and `decode` must return unchanged. */
const validSb: fc.Arbitrary<Superblock> = fc.record({
  version: fc.constantFrom(3 as const, 4 as const),
  uuid: fc.uint8Array({ minLength: 16, maxLength: 16 }),
  events: u64,
  eventsCleared: u64,
  syncSize: fc.oneof(
    fc.integer({ min: 1, max: 1 << 24 }),
    fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
    fc.constant(Number.MAX_SAFE_INTEGER),
  ),
  state: fc.oneof(
    fc.constantFrom(0, STATE_STALE, STATE_HOSTENDIAN, STATE_STALE | STATE_HOSTENDIAN),
    u32.map((s) => (s & ~STATE_WRITE_ERROR) >>> 0),
  ),
  chunkSize: fc.integer({ min: 9, max: 31 }).map((e) => 2 ** e),
  daemonSleep: fc.oneof(fc.integer({ min: 1, max: 60 }), fc.integer({ min: 1, max: 86400 })),
  writeBehind: fc.integer({ min: 0, max: 16383 }),
  sectorsReserved: u32,
  nodes: u32,
  clusterName: fc
    .array(fc.integer({ min: 1, max: 255 }), { maxLength: 64 })
    .map((cs) => String.fromCharCode(...cs)),
})

function base(): Superblock {
  return {
    version: 4,
    uuid: Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i),
    events: 42n,
    eventsCleared: 40n,
    syncSize: 2_000_001,
    state: 0,
    chunkSize: 65536,
    daemonSleep: 5,
    writeBehind: 0,
    sectorsReserved: 0,
    nodes: 0,
    clusterName: '',
  }
}

function withU32(buf: Uint8Array, off: number, v: number): Uint8Array {
  const out = Uint8Array.from(buf)
  new DataView(out.buffer).setUint32(off, v, true)
  return out
}

function withU64(buf: Uint8Array, off: number, v: bigint): Uint8Array {
  const out = Uint8Array.from(buf)
  new DataView(out.buffer).setBigUint64(off, v, true)
  return out
}

function code(fn: () => unknown): string {
  try {
    fn()
  } catch (e) {
    if (e instanceof MdBitmapError) return e.code
    throw e
  }
  return 'no error'
}

// ---------------------------------------------------------------------------------
// Encoding

test('encode writes each field at its documented offset (hand-built vector)', (t) => {
  const sb: Superblock = {
    version: 4,
    uuid: Uint8Array.from({ length: 16 }, (_, i) => i + 1),
    events: 0x0102030405060708n,
    eventsCleared: 0x1112131415161718n,
    syncSize: 0x0000_2122_2324_2526,
    state: STATE_STALE,
    chunkSize: 0x0001_0000,
    daemonSleep: 0x31,
    writeBehind: 0x0102,
    sectorsReserved: 0x41424344,
    nodes: 0x51525354,
    clusterName: 'ab',
  }
  // Bytes written out by hand, little-endian, at the offsets of the on-disk format.
  const want = new Uint8Array(256)
  want.set([0x62, 0x69, 0x74, 0x6d], 0) // "bitm"
  want.set([4, 0, 0, 0], 4)
  want.set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], 8)
  want.set([8, 7, 6, 5, 4, 3, 2, 1], 24)
  want.set([0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11], 32)
  want.set([0x26, 0x25, 0x24, 0x23, 0x22, 0x21, 0, 0], 40)
  want.set([2, 0, 0, 0], 48)
  want.set([0, 0, 1, 0], 52)
  want.set([0x31, 0, 0, 0], 56)
  want.set([2, 1, 0, 0], 60)
  want.set([0x44, 0x43, 0x42, 0x41], 64)
  want.set([0x54, 0x53, 0x52, 0x51], 68)
  want.set([0x61, 0x62], 72)
  t.deepEqual(encode(sb), want)
  t.deepEqual(decode(want), sb)
})

test('encode fills defaults: version 4, daemon 5 s, zero counters', (t) => {
  const buf = encode({ uuid: new Uint8Array(16), syncSize: 8, chunkSize: 4096 })
  t.is(buf.length, 256)
  const sb = decode(buf)
  t.deepEqual(sb, {
    version: 4,
    uuid: new Uint8Array(16),
    events: 0n,
    eventsCleared: 0n,
    syncSize: 8,
    state: 0,
    chunkSize: 4096,
    daemonSleep: 5,
    writeBehind: 0,
    sectorsReserved: 0,
    nodes: 0,
    clusterName: '',
  })
  t.is(new DataView(buf.buffer).getUint32(0, true), BITMAP_MAGIC)
})

test('property: decode(encode(x)) deep-equals x; padding is zero; re-encoding is identical', (t) => {
  let runs = 0
  fc.assert(
    fc.property(validSb, (sb) => {
      runs++
      const buf = encode(sb)
      if (buf.length !== 256) return false
      if (buf.subarray(136).some((b) => b !== 0)) return false
      const back = decode(buf)
      t.deepEqual(back, sb)
      t.deepEqual(encode(back), buf)
      return true
    }),
    { numRuns: 2000 },
  )
  t.log(`${runs} round trips`)
})

test('decode accepts a Buffer view at a non-zero offset and returns a plain, independent uuid', (t) => {
  const raw = Buffer.alloc(300, 0xee)
  Buffer.from(encode(base())).copy(raw, 17)
  const view = raw.subarray(17)
  const sb = decode(view)
  t.deepEqual(sb, base())
  t.is(Object.getPrototypeOf(sb.uuid), Uint8Array.prototype)
  view[8] ^= 0xff
  t.is(sb.uuid[0], 0xa0)
})

test('decode ignores the padding and bytes after the superblock', (t) => {
  const buf = new Uint8Array(1024).fill(0x5a)
  buf.set(encode(base()))
  buf.fill(0x77, 136, 256)
  t.deepEqual(decode(buf), base())
})

test('decode drops a stored WRITE_ERROR state bit and keeps the others', (t) => {
  const buf = withU32(encode(base()), 48, STATE_WRITE_ERROR | STATE_STALE | 0x10)
  t.is(decode(buf).state, STATE_STALE | 0x10)
})

test('cluster name: bytes up to the first NUL, one char per byte, 64 bytes without NUL', (t) => {
  const buf = encode(base())
  buf.set([0x41, 0xff, 0x80, 0, 0x42], 72)
  t.is(decode(buf).clusterName, 'A\u00ff\u0080')
  buf.fill(0x43, 72, 136)
  t.is(decode(buf).clusterName, 'C'.repeat(64))
  t.deepEqual(encode(decode(buf)).subarray(72, 136), new Uint8Array(64).fill(0x43))
})

// ---------------------------------------------------------------------------------
// Validation: one targeted mutation per error code

test('ESHORTBUFFER: fewer than 256 bytes', (t) => {
  const buf = encode(base())
  t.is(code(() => decode(buf.subarray(0, 255))), 'ESHORTBUFFER')
  t.is(code(() => decode(new Uint8Array(0))), 'ESHORTBUFFER')
  t.notThrows(() => decode(buf.subarray(0, 256)))
})

test('EBADMAGIC: any change to the magic', (t) => {
  for (let i = 0; i < 4; i++) {
    const buf = encode(base())
    buf[i] ^= 0x01
    t.is(code(() => decode(buf)), 'EBADMAGIC')
  }
  // A big-endian magic is still wrong.
  const be = encode(base())
  new DataView(be.buffer).setUint32(0, BITMAP_MAGIC, false)
  t.is(code(() => decode(be)), 'EBADMAGIC')
})

test('EBADVERSION / ECLUSTERED / ELOCKLESS: versions other than 3 and 4', (t) => {
  const buf = encode(base())
  for (const v of [0, 1, 2, 7, 8, 0x100, 0x04000000, 0xffffffff]) {
    t.is(code(() => decode(withU32(buf, 4, v))), 'EBADVERSION', `version ${v}`)
  }
  t.is(code(() => decode(withU32(buf, 4, 5))), 'ECLUSTERED')
  t.is(code(() => decode(withU32(buf, 4, 6))), 'ELOCKLESS')
  t.is(decode(withU32(buf, 4, 3)).version, 3)
  t.is(decode(withU32(buf, 4, 4)).version, 4)
  t.is(code(() => encode({ ...base(), version: 5 as 4 })), 'ECLUSTERED')
  t.is(code(() => encode({ ...base(), version: 6 as 4 })), 'ELOCKLESS')
  t.is(code(() => encode({ ...base(), version: 2 as 4 })), 'EBADVERSION')
})

test('EBADCHUNK: chunk size not a power of two, or below 512', (t) => {
  const buf = encode(base())
  for (const c of [0, 1, 256, 511, 513, 4097, 3 << 20, 0xffffffff, 0xc0000000]) {
    t.is(code(() => decode(withU32(buf, 52, c))), 'EBADCHUNK', `chunk ${c}`)
    t.is(code(() => encode({ ...base(), chunkSize: c })), 'EBADCHUNK', `encode chunk ${c}`)
  }
  for (const c of [512, 4096, 2 ** 31]) t.is(decode(withU32(buf, 52, c)).chunkSize, c)
})

test('EBADDAEMON: daemon sleep 0 or over a day', (t) => {
  const buf = encode(base())
  for (const d of [0, 86401, 0xffffffff]) {
    t.is(code(() => decode(withU32(buf, 56, d))), 'EBADDAEMON', `daemon ${d}`)
    t.is(code(() => encode({ ...base(), daemonSleep: d })), 'EBADDAEMON', `encode daemon ${d}`)
  }
  t.is(decode(withU32(buf, 56, 86400)).daemonSleep, 86400)
  t.is(decode(withU32(buf, 56, 1)).daemonSleep, 1)
})

test('EBADWRITEBEHIND: write-behind over 16383', (t) => {
  const buf = encode(base())
  for (const w of [16384, 65535, 0xffffffff]) {
    t.is(code(() => decode(withU32(buf, 60, w))), 'EBADWRITEBEHIND', `write-behind ${w}`)
    t.is(code(() => encode({ ...base(), writeBehind: w })), 'EBADWRITEBEHIND')
  }
  t.is(decode(withU32(buf, 60, 16383)).writeBehind, 16383)
})

test('EBADSIZE: sync size 0 (or beyond a safe integer)', (t) => {
  const buf = encode(base())
  t.is(code(() => decode(withU64(buf, 40, 0n))), 'EBADSIZE')
  t.is(code(() => decode(withU64(buf, 40, 1n << 53n))), 'EBADSIZE')
  t.is(code(() => decode(withU64(buf, 40, (1n << 64n) - 1n))), 'EBADSIZE')
  t.is(decode(withU64(buf, 40, (1n << 53n) - 1n)).syncSize, Number.MAX_SAFE_INTEGER)
  t.is(code(() => encode({ ...base(), syncSize: 0 })), 'EBADSIZE')
})

test('ESHORTFILE: a file shorter than 256 + ceil(chunks/8)', (t) => {
  const sb = base() // 2_000_001 sectors / 128 per chunk = 15626 chunks = 1954 bytes
  t.is(chunkCount(sb), 15626)
  t.is(bitmapBytes(sb), 1954)
  t.is(minFileSize(sb), 256 + 1954)
  const buf = encode(sb)
  t.is(code(() => decode(buf, { fileSize: 256 + 1953 })), 'ESHORTFILE')
  t.is(code(() => decode(buf, { fileSize: 256 })), 'ESHORTFILE')
  t.notThrows(() => decode(buf, { fileSize: 256 + 1954 }))
  t.notThrows(() => decode(buf, { fileSize: 4096 }))
  t.is(code(() => decode(buf, { fileSize: -1 })), 'EINVAL')
})

test('EUUID: the uuid differs from the one the caller expects', (t) => {
  const buf = encode(base())
  const uuid = base().uuid
  t.notThrows(() => decode(buf, { uuid }))
  t.notThrows(() => decode(buf, { uuid: mdadmUuid(uuid) }))
  t.notThrows(() => decode(buf, { uuid: 'A0A1A2A3-A4A5-A6A7-A8A9-AAABACADAEAF' }))
  for (let i = 0; i < 16; i++) {
    const other = Uint8Array.from(uuid)
    other[i] ^= 0x80
    t.is(code(() => decode(buf, { uuid: other })), 'EUUID', `byte ${i}`)
  }
  t.is(code(() => decode(buf, { uuid: new Uint8Array(15) })), 'EINVAL')
  t.is(code(() => decode(buf, { uuid: 'not a uuid' })), 'EINVAL')
})

test('every error carries a message saying what to do', (t) => {
  const buf = encode(base())
  const cases: Array<[string, () => unknown]> = [
    ['ESHORTBUFFER', () => decode(buf.subarray(0, 10))],
    ['EBADMAGIC', () => decode(withU32(buf, 0, 0))],
    ['EBADVERSION', () => decode(withU32(buf, 4, 9))],
    ['ECLUSTERED', () => decode(withU32(buf, 4, 5))],
    ['ELOCKLESS', () => decode(withU32(buf, 4, 6))],
    ['EBADCHUNK', () => decode(withU32(buf, 52, 100))],
    ['EBADDAEMON', () => decode(withU32(buf, 56, 0))],
    ['EBADWRITEBEHIND', () => decode(withU32(buf, 60, 20000))],
    ['EBADSIZE', () => decode(withU64(buf, 40, 0n))],
    ['ESHORTFILE', () => decode(buf, { fileSize: 300 })],
    ['EUUID', () => decode(buf, { uuid: new Uint8Array(16) })],
  ]
  for (const [c, fn] of cases) {
    const e = t.throws(fn, { instanceOf: MdBitmapError }, c)
    t.is(e?.code as string, c)
    t.is(e?.name, 'MdBitmapError')
    t.regex(e?.message ?? '', /(use|check|recreate|read|restore|clear|create)/i, `${c}: ${e?.message}`)
  }
})

test('encode rejects ill-typed or out-of-range values with EINVAL', (t) => {
  const bad: Array<Partial<Record<keyof Superblock, unknown>>> = [
    { uuid: new Uint8Array(15) },
    { uuid: 'xyz' },
    { events: -1n },
    { events: 1n << 64n },
    { events: 5 },
    { eventsCleared: -1n },
    { syncSize: -1 },
    { syncSize: 1.5 },
    { syncSize: 2 ** 53 },
    { state: STATE_WRITE_ERROR },
    { state: -1 },
    { chunkSize: 2 ** 32 },
    { daemonSleep: 1.5 },
    { writeBehind: -1 },
    { sectorsReserved: 2 ** 32 },
    { nodes: -1 },
    { clusterName: 'x'.repeat(65) },
    { clusterName: 'a\u0000b' },
    { clusterName: '\u0100' },
    { version: 3.5 },
  ]
  for (const patch of bad) {
    t.is(code(() => encode({ ...base(), ...patch } as Superblock)), 'EINVAL', JSON.stringify(patch, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)))
  }
})

// ---------------------------------------------------------------------------------
// Fuzz

const KNOWN = new Set([
  'ESHORTBUFFER',
  'EBADMAGIC',
  'EBADVERSION',
  'ECLUSTERED',
  'ELOCKLESS',
  'EBADCHUNK',
  'EBADDAEMON',
  'EBADWRITEBEHIND',
  'EBADSIZE',
  'ESHORTFILE',
])

type Mutation = { kind: 'flip'; at: number; bit: number } | { kind: 'set'; at: number; value: number } | { kind: 'cut'; at: number }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fc.integer({ min: 0, max: 300 }), bit: fc.integer({ min: 0, max: 7 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('set' as const), at: fc.integer({ min: 0, max: 300 }), value: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('cut' as const), at: fc.integer({ min: 0, max: 300 }) }) },
)

const mutated = fc
  .tuple(validSb, fc.integer({ min: 0, max: 64 }), fc.array(mutation, { minLength: 1, maxLength: 4 }))
  .map(([sb, extra, muts]) => {
    let buf = new Uint8Array(256 + extra)
    buf.set(encode(sb))
    for (const m of muts) {
      if (m.kind === 'cut') buf = buf.subarray(0, Math.min(m.at, buf.length))
      else if (m.at < buf.length) buf[m.at] = m.kind === 'flip' ? buf[m.at] ^ (1 << m.bit) : m.value
    }
    return { buf, fileSize: undefined as number | undefined }
  })

/** Random bytes of a length spread evenly over 0..600 (fast-check alone favours short arrays). */
const bytesOfLength = (min: number, max: number) =>
  fc.integer({ min, max }).chain((n) => fc.uint8Array({ minLength: n, maxLength: n }))

const randomBytes = bytesOfLength(0, 600).map((buf) => ({ buf, fileSize: undefined as number | undefined }))

/** Random bytes with the right magic, and often a readable version, so they get past the first checks. */
const magicBytes = fc.tuple(bytesOfLength(256, 600), fc.constantFrom(3, 4, -1)).map(([buf, version]) => {
  const dv = new DataView(buf.buffer, buf.byteOffset)
  dv.setUint32(0, BITMAP_MAGIC, true)
  if (version > 0) dv.setUint32(4, version, true)
  return { buf, fileSize: undefined as number | undefined }
})

function key(sb: Superblock): string {
  return JSON.stringify(sb, (_, v) => (typeof v === 'bigint' ? `${v}n` : v instanceof Uint8Array ? [...v] : v))
}

const fuzzCase = fc.tuple(fc.oneof({ arbitrary: mutated, weight: 2 }, { arbitrary: randomBytes, weight: 1 }, { arbitrary: magicBytes, weight: 1 }), fc.option(fc.integer({ min: 0, max: 1 << 20 }))).map(([c, fs]) => ({
  buf: c.buf,
  fileSize: fs ?? undefined,
}))

test('fuzz: 100 000 buffers either decode to a valid superblock or throw MdBitmapError', (t) => {
  let cases = 0
  const outcomes = new Map<string, number>()
  fc.assert(
    fc.property(fuzzCase, ({ buf, fileSize }) => {
      cases++
      let sb: Superblock
      try {
        sb = decode(buf, fileSize === undefined ? {} : { fileSize })
      } catch (e) {
        if (!(e instanceof MdBitmapError) || typeof e.code !== 'string' || !KNOWN.has(e.code) || e.message.length === 0) {
          throw new Error(`unexpected exception ${String(e)} (${(e as { code?: unknown })?.code})`)
        }
        outcomes.set(e.code, (outcomes.get(e.code) ?? 0) + 1)
        return true
      }
      outcomes.set('ok', (outcomes.get('ok') ?? 0) + 1)
      // A returned superblock is valid: it re-encodes to the same fields...
      const again = encode(sb)
      if (key(decode(again)) !== key(sb)) return false
      // ...and the fields it reports are the bytes that were there.
      const dv = new DataView(buf.buffer, buf.byteOffset, 256)
      return (
        sb.version === dv.getUint32(4, true) &&
        sb.events === dv.getBigUint64(24, true) &&
        BigInt(sb.syncSize) === dv.getBigUint64(40, true) &&
        sb.chunkSize === dv.getUint32(52, true) &&
        (fileSize === undefined || fileSize >= minFileSize(sb))
      )
    }),
    { numRuns: 100_000 },
  )
  t.is(cases, 100_000)
  t.log(`fuzz: ${cases} buffers; outcomes ${JSON.stringify(Object.fromEntries([...outcomes].sort()))}`)
  // The generators must reach both sides, or the fuzz proves little.
  for (const c of ['ok', 'EBADMAGIC', 'ESHORTBUFFER', 'EBADVERSION', 'EBADCHUNK', 'ESHORTFILE']) {
    t.true((outcomes.get(c) ?? 0) > 500, `${c} reached only ${outcomes.get(c) ?? 0} times`)
  }
})

// ---------------------------------------------------------------------------------
// Sizes

test('property: chunkCount is ceil(syncSize*512/chunkSize), computed exactly', (t) => {
  fc.assert(
    fc.property(validSb, (sb) => {
      const bytes = BigInt(sb.syncSize) * 512n
      const want = (bytes + BigInt(sb.chunkSize) - 1n) / BigInt(sb.chunkSize)
      return (
        BigInt(chunkCount(sb)) === want &&
        BigInt(bitmapBytes(sb)) === (want + 7n) / 8n &&
        minFileSize(sb) === 256 + bitmapBytes(sb) &&
        pagedFileSize(sb) % 4096 === 0 &&
        pagedFileSize(sb) >= minFileSize(sb) &&
        pagedFileSize(sb) - minFileSize(sb) < 4096
      )
    }),
    { numRuns: 5000 },
  )
  t.is(chunkCount({ syncSize: 1, chunkSize: 2 ** 31 }), 1)
  t.is(chunkCount({ syncSize: 8, chunkSize: 4096 }), 1)
  t.is(chunkCount({ syncSize: 9, chunkSize: 4096 }), 2)
  t.is(chunkCount({ syncSize: Number.MAX_SAFE_INTEGER, chunkSize: 512 }), Number.MAX_SAFE_INTEGER)
})

// ---------------------------------------------------------------------------------
// UUID

test('mdadmUuid: four colon-separated groups of 8 hex digits, bytes in file order', (t) => {
  t.is(mdadmUuid(Uint8Array.from({ length: 16 }, (_, i) => i + 1)), '01020304:05060708:090a0b0c:0d0e0f10')
  t.is(mdadmUuid(new Uint8Array(16).fill(0xab)), 'abababab:abababab:abababab:abababab')
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (u) => {
      const s = mdadmUuid(u)
      return /^[0-9a-f]{8}(:[0-9a-f]{8}){3}$/.test(s) && parseUuid(s).every((b, i) => b === u[i])
    }),
  )
  t.is(code(() => mdadmUuid(new Uint8Array(3))), 'EINVAL')
})

// ---------------------------------------------------------------------------------
// Bit accessors

/** Bit c read through an independent model: the array as words of the given order. */
function modelBit(bits: Uint8Array, c: number, order: BitOrder): boolean {
  const dv = new DataView(bits.buffer, bits.byteOffset, bits.byteLength)
  if (order === 'be32') return ((dv.getUint32(Math.floor(c / 32) * 4, false) >>> c % 32) & 1) === 1
  const word = dv.getBigUint64(Math.floor(c / 64) * 8, order === 'le')
  return ((word >> BigInt(c % 64)) & 1n) === 1n
}

test('property: bitLocation agrees with word-based models for le, be64 and be32', (t) => {
  for (const order of ['le', 'be64', 'be32'] as const) {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 32 }), fc.nat(), (words, n) => {
        const bits = new Uint8Array(words * 8)
        const c = n % (words * 64)
        const { byte, mask } = bitLocation(c, order)
        bits[byte] |= mask
        for (let k = 0; k < words * 64; k++) if (modelBit(bits, k, order) !== (k === c)) return false
        return true
      }),
      { numRuns: 300 },
    )
  }
  t.deepEqual(bitLocation(0, 'be64'), { byte: 7, mask: 1 })
  t.deepEqual(bitLocation(63, 'be64'), { byte: 0, mask: 0x80 })
  t.deepEqual(bitLocation(9, 'be32'), { byte: 2, mask: 2 })
  t.deepEqual(bitLocation(9, 'le'), { byte: 1, mask: 2 })
})

test('version 3 uses this host\'s order; on little-endian hosts it is version 4', (t) => {
  t.is(HOST_BIT_ORDER === 'le', endianness() === 'LE')
  const bits = new Uint8Array(64)
  for (let c = 0; c < 512; c += 7) setBit(bits, c, 3)
  for (let c = 0; c < 512; c++) t.is(getBit(bits, c, 3), modelBit(bits, c, HOST_BIT_ORDER))
  if (endianness() === 'LE') t.deepEqual(bits, (() => {
    const b = new Uint8Array(64)
    for (let c = 0; c < 512; c += 7) setBit(b, c, 4)
    return b
  })())
})

test('property: setBit / clearBit change exactly one bit, getBit reads it back', (t) => {
  let checks = 0
  fc.assert(
    fc.property(
      fc.constantFrom(3, 4),
      fc.integer({ min: 1, max: 64 }).chain((w) => fc.tuple(fc.uint8Array({ minLength: w * 8, maxLength: w * 8 }), fc.nat({ max: w * 64 - 1 }))),
      fc.boolean(),
      (version, [start, c], set) => {
        const bits = Uint8Array.from(start)
        const before = getBit(bits, c, version)
        const was = set ? setBit(bits, c, version) : clearBit(bits, c, version)
        if (was !== before || getBit(bits, c, version) !== set) return false
        // No other bit changed: compare every bit index against the original.
        for (let k = 0; k < bits.length * 8; k++) {
          checks++
          if (k !== c && getBit(bits, k, version) !== getBit(start, k, version)) return false
        }
        // And only one byte changed, by exactly the located mask (or not at all).
        let changed = 0
        for (let i = 0; i < bits.length; i++) if (bits[i] !== start[i]) changed++
        return changed === (before === set ? 0 : 1)
      },
    ),
    { numRuns: 1000 },
  )
  t.true(checks > 0)
  t.log(`${checks} untouched-bit checks`)
})

test('bit accessors reject indexes outside the array and bad versions', (t) => {
  const bits = new Uint8Array(4)
  t.is(code(() => getBit(bits, 32)), 'EINVAL')
  t.is(code(() => setBit(bits, -1)), 'EINVAL')
  t.is(code(() => clearBit(bits, 1.5)), 'EINVAL')
  t.is(code(() => getBit(bits, 0, 5)), 'EINVAL')
  t.false(setBit(bits, 31))
  t.true(getBit(bits, 31))
  t.is(bits[3], 0x80)
})

test('property: dirtyCount counts set bits among the first `chunks` only', (t) => {
  fc.assert(
    fc.property(fc.constantFrom(3, 4), fc.uint8Array({ minLength: 8, maxLength: 256 }).filter((b) => b.length % 8 === 0), fc.nat(), (version, bits, n) => {
      const chunks = n % (bits.length * 8 + 1)
      let naive = 0
      for (let c = 0; c < chunks; c++) if (getBit(bits, c, version)) naive++
      return dirtyCount(bits, chunks, version) === naive
    }),
    { numRuns: 2000 },
  )
  t.is(dirtyCount(Uint8Array.of(0xff, 0xff), 9), 9)
  t.is(dirtyCount(Uint8Array.of(0x00, 0xfe), 9), 0)
  t.is(code(() => dirtyCount(Uint8Array.of(0xff), 9)), 'EINVAL')
})

test('bitVersion: version 3, or version 4 with the HOSTENDIAN state bit, is host-endian', (t) => {
  t.is(bitVersion({ version: 4, state: 0 }), 4)
  t.is(bitVersion({ version: 4, state: STATE_STALE }), 4)
  t.is(bitVersion({ version: 4, state: STATE_HOSTENDIAN }), 3)
  t.is(bitVersion({ version: 3, state: 0 }), 3)
})
