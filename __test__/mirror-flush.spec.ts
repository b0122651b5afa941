/**
 * Mirror.flush()'s contract: once it resolves, every write whose write() was called
 * before flush() was called (and was acknowledged) is durable on every member that is
 * not write-mostly. So flush must not sync a member while such a write is still on its
 * way to it: in flight on the member, or not yet issued (held at a resync's chunk
 * barrier). It must not wait for writes called after it, nor for behind writes on a
 * write-mostly member.
 *
 * Each member is a real FileMember wrapped in an OrderProbe (a DelegatingMember) that
 * logs, in one shared log, when a write completes and when the member is flushed, and
 * can hold a chosen write in flight until the test releases it. The assertions are on
 * the order of those events: a flush of a member logged before the completion of a
 * write it must cover is the bug.
 */
import test, { type ExecutionContext } from 'ava'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { DelegatingMember, FileMember, Mirror, type Member, type MemberSpec, type OpenMember } from '../src'
import { removeDir } from './helpers/tmp'
import { IDLE, KiB, MiB, pattern, rigParent } from './helpers/mirror'
import { sleep, until } from './helpers/wait'

const parent = rigParent('md-mirror-flush-spec-')
test.after.always(() => removeDir(parent))

const CS = 64 * KiB
const LEN = 8 * KiB

/** The events of all members of one mirror, in the order they happened. */
class OrderLog {
  readonly events: string[] = []
  /** Writes held in flight, by `member:offset`, until released. */
  private readonly holds = new Map<string, { gate: Promise<void>; open: () => void }>()

  /** Holds the next writes of `member` at `offset` (issued, not completed) until the release. */
  hold(member: number, offset: number): () => void {
    let open = () => {}
    const gate = new Promise<void>((r) => (open = r))
    const key = `${member}:${offset}`
    this.holds.set(key, { gate, open })
    return () => {
      this.holds.delete(key)
      open()
    }
  }

  gateFor(member: number, offset: number): Promise<void> | undefined {
    return this.holds.get(`${member}:${offset}`)?.gate
  }

  /** Position of the first event equal to `event`, or -1. */
  at(event: string): number {
    return this.events.indexOf(event)
  }

  /** Positions of every flush of `member`. */
  flushesOf(member: number): number[] {
    return this.events.flatMap((e, i) => (e === `flush ${member}` ? [i] : []))
  }
}

/** Logs `issued`/`done` of every write and `flush` of the member; holds writes the log says to hold. */
class OrderProbe extends DelegatingMember {
  constructor(
    inner: Member,
    private readonly index: number,
    private readonly log: OrderLog,
  ) {
    super(inner)
  }
  override async write(data: Uint8Array, offset: number): Promise<void> {
    this.log.events.push(`issued ${this.index} ${offset}`)
    const gate = this.log.gateFor(this.index, offset)
    if (gate) await gate
    await this.inner.write(data, offset)
    this.log.events.push(`done ${this.index} ${offset}`)
  }
  override flush(): Promise<void> {
    this.log.events.push(`flush ${this.index}`)
    return this.inner.flush()
  }
}

function probeOpener(log: OrderLog): OpenMember {
  return async (spec: MemberSpec) => new OrderProbe(await FileMember.open(spec.path), spec.index, log)
}

/** A mirror of two members (the second write-mostly if asked) under a fresh folder; `existing`: member files made here first, so every chunk needs a first resync. */
async function mirrorWith(log: OrderLog, o: { writeMostly?: boolean; writeBehind?: number; existing?: boolean } = {}): Promise<Mirror> {
  const dir = mkdtempSync(join(parent, 'flush-'))
  const paths = [join(dir, 'm0.img'), join(dir, 'm1.img')]
  if (o.existing) for (const p of paths) writeFileSync(p, Buffer.alloc(MiB))
  return Mirror.create({
    bitmap: join(dir, 'bitmap'),
    members: [{ path: paths[0] }, { path: paths[1], writeMostly: o.writeMostly }],
    size: MiB,
    chunkSize: CS,
    daemonSleep: IDLE,
    writeBehind: o.writeBehind,
    openMember: probeOpener(log),
  })
}

/** Writes at `offset` with member 0's write held in flight; resolves once member 0 has it issued. */
async function heldWrite(log: OrderLog, m: Mirror, offset: number, seed: number): Promise<{ write: Promise<void>; release: () => void }> {
  const release = log.hold(0, offset)
  const write = m.write(pattern(LEN, seed), offset)
  await until(() => log.at(`issued 0 ${offset}`) >= 0, 5000, `the write at ${offset} to reach member 0`)
  return { write, release }
}

/** Asserts that member 0 completed the write at `offset` and was not flushed before that. */
function flushedOnlyAfter(t: ExecutionContext, log: OrderLog, offset: number): void {
  const done = log.at(`done 0 ${offset}`)
  t.true(done >= 0, `member 0 completed the write at ${offset}`)
  t.deepEqual(
    log.flushesOf(0).filter((i) => i < done),
    [],
    `member 0 was flushed only after the write at ${offset} completed on it (log: ${log.events.join(', ')})`,
  )
}

/** Resolves with `p`, or rejects after `ms` saying what did not happen. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)))
  return Promise.race([p, late]).finally(() => clearTimeout(timer))
}

/** Whether `p` has settled, looked at after `ms`. */
async function settledAfter(p: Promise<unknown>, ms: number): Promise<boolean> {
  let settled = false
  void p.then(
    () => (settled = true),
    () => (settled = true),
  )
  await sleep(ms)
  return settled
}

test('flush waits for a write in flight on a member before it syncs that member', async (t) => {
  const log = new OrderLog()
  const m = await mirrorWith(log)
  try {
    const { write, release } = await heldWrite(log, m, 0, 1)
    const flush = m.flush()
    t.false(await settledAfter(flush, 50), 'flush does not resolve while the write it covers is in flight')
    release()
    await within(Promise.all([write, flush]), 10_000, 'the write and the flush')
    flushedOnlyAfter(t, log, 0)
    t.true(log.flushesOf(0).length > 0 && log.flushesOf(1).length > 0, 'both members were flushed')
  } finally {
    await m.close()
  }
})

test('flush waits for a write called before it that is not yet issued (held at a resync chunk barrier)', async (t) => {
  const log = new OrderLog()
  const m = await mirrorWith(log, { existing: true })
  try {
    t.true(m.needsResync, 'members that held data: every chunk is marked for the first resync')
    // The resync copies chunk 0 first; its write to member 1 is held, so chunk 0 stays locked.
    const releaseCopy = log.hold(1, 0)
    const resync = m.resync()
    await until(() => log.at('issued 1 0') >= 0, 5000, 'the resync to copy chunk 0')
    const write = m.write(pattern(LEN, 2), 0)
    await sleep(20)
    t.is(log.at('issued 0 0'), -1, 'the write waits at the barrier: not issued to member 0')
    const flush = m.flush()
    t.false(await settledAfter(flush, 50), 'flush does not resolve while a write called before it waits at the barrier')
    releaseCopy()
    await within(Promise.all([write, flush, resync]), 10_000, 'the write, the flush and the resync')
    flushedOnlyAfter(t, log, 0)
  } finally {
    await m.close()
  }
})

test('a second flush also waits for a write in flight before the first one; flush does not wait for writes called after it', async (t) => {
  const log = new OrderLog()
  const m = await mirrorWith(log)
  try {
    const early = await heldWrite(log, m, 0, 3)
    const first = m.flush()
    const middle = await heldWrite(log, m, CS, 4)
    const second = m.flush()
    // The middle write completes; the early one is still held: neither flush may sync yet.
    middle.release()
    await within(middle.write, 10_000, 'the middle write')
    t.false(await settledAfter(second, 50), 'the second flush waits for the early write too')
    t.deepEqual(log.flushesOf(0), [], `no member 0 flush while the early write is in flight (log: ${log.events.join(', ')})`)
    // A write called after both flushes, held until they resolved: they must not wait for it.
    const late = await heldWrite(log, m, 2 * CS, 5)
    early.release()
    await within(Promise.all([early.write, first, second]), 10_000, 'both flushes, with a later write still in flight')
    flushedOnlyAfter(t, log, 0)
    t.is(log.at(`done 0 ${2 * CS}`), -1, 'the late write is still in flight: the flushes did not wait for it')
    late.release()
    await within(late.write, 10_000, 'the late write')
  } finally {
    await m.close()
  }
})

test('flush does not wait for a behind write on a write-mostly member; its chunk stays marked until close', async (t) => {
  const log = new OrderLog()
  const m = await mirrorWith(log, { writeMostly: true, writeBehind: 8 })
  try {
    const release = log.hold(1, 0)
    await within(m.write(pattern(LEN, 6), 0), 10_000, 'the behind write to be acknowledged')
    t.is(m.stats().behindWrites, 1, 'the write went behind')
    await within(m.flush(), 10_000, 'flush with a behind write held on the write-mostly member')
    t.is(log.at('done 1 0'), -1, 'the write-mostly member has not completed the behind write')
    t.deepEqual(
      m.bitmap!.dirtyChunks().map((r) => r.offset),
      [0],
      'the chunk of the lagging write is marked',
    )
    release()
  } finally {
    await m.close()
  }
  t.true(log.at('done 1 0') >= 0, 'close waited for the behind write')
})
