/**
 * A write still in flight when a faulty member is re-added: it was issued to the other
 * members only, so the recovery must copy its chunk to the re-added member. The
 * write-mostly member holds the write (a gate, not a timer, so the write is surely in
 * flight) while reAdd starts; the recovery may list its chunks only after that write
 * ended (src/mirror/member-epochs.ts). Without that, the chunk is never copied, its bit
 * is cleared, and the re-added member lacks an acknowledged write.
 */
import test from 'ava'
import { IDLE, KiB, MiB, makeRig, onDisk, pattern, rigParent, sameBytes } from './helpers/mirror'
import { removeDir } from './helpers/tmp'
import { sleep } from './helpers/wait'

const parent = rigParent('readd-inflight')
test.after.always(() => removeDir(parent))

test('a write in flight to the other members when a member is re-added reaches the re-added member', async (t) => {
  const CHUNK = 64 * KiB
  const r = await makeRig(parent, [{}, {}, { writeMostly: true }], { size: MiB, chunkSize: CHUNK, writeBehind: 16, daemonSleep: IDLE })
  const m = r.mirror
  try {
    await m.failMember(1)
    t.is(m.members[1].state, 'faulty')
    // The first write to chunk 5 since the failure: acknowledged by member 0, held on
    // the write-mostly member 2 (a behind write), never issued to member 1.
    const offset = 5 * CHUNK
    const data = pattern(CHUNK, 77)
    r.ctl[2].hold()
    await m.write(data, offset)
    t.is(m.stats().behindInFlight, 1, 'the write is acknowledged and still in flight on the write-mostly member')
    let readded = false
    const readd = m.reAdd(1).then((report) => ((readded = true), report))
    await sleep(300)
    t.false(readded, 'reAdd waits for the write that missed member 1 to end')
    r.ctl[2].release()
    const report = await readd
    t.is(report.recovery, 'bitmap')
    t.true(report.chunks.includes(5), `chunk 5 was copied (copied ${JSON.stringify(report.chunks)})`)
    await r.ctl[2].idle()
    await m.flush()
    t.is(m.members[1].state, 'in-sync')
    sameBytes(t, onDisk(r.paths[1], offset, CHUNK), data, 'member 1 has the acknowledged write')
    sameBytes(t, onDisk(r.paths[2], offset, CHUNK), data, 'member 2 has it')
  } finally {
    r.ctl[2].release()
    await m.close()
  }
})
