/**
 * Mirror.close() and a member whose final fdatasync fails: the member's data is not
 * durable, so close must not record a clean shutdown. The member is failed (faulty in
 * the metadata, `'member-faulty'`), its chunks stay dirty in the bitmap, close goes
 * through every step all the same and then rejects with the member's error.
 *
 * The fault is a real one, made by the kernel: the member is a loop device in buffered
 * mode (`--direct-io=off`) over a fully written file on an ext4 whose own loop device
 * was shrunk so that the file's blocks lie past its end. The mirror's O_DIRECT writes
 * to the member succeed (the loop driver puts them in the file's page cache; nothing
 * needs the missing blocks yet); its fdatasync makes the loop driver fsync the file,
 * whose writeback hits the missing blocks: EIO, from fdatasync alone.
 */
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { MdBitmapError, Mirror, extents } from '../src'
import { fsCaps, requires } from './helpers/env'
import { deviceSize, writeWhole } from './helpers/io'
import { attachLoop, detach, sh, withFs } from './helpers/loopfs'
import { readDisk } from './helpers/mdadm'
import { KiB, MiB, makeRig, pattern, rigParent } from './helpers/mirror'
import { removeDir } from './helpers/tmp'

const parent = rigParent('md-mirror-close-')
test.after.always(() => removeDir(parent))

const CS = 64 * KiB
const SHRINK = 4 * MiB

const t = requires(['root', 'loop', 'losetup', 'truncate', ...fsCaps('ext4')])
t('a member whose final fdatasync fails (real EIO): close fails it, keeps its chunks dirty, records an unclean shutdown, finishes, and rejects with its error', async (t) => {
  await withFs(
    'ext4',
    32,
    async (mnt, dev, ctx) => {
      // A filler first, so the member's backing file lies past the size the device shrinks to.
      writeWhole(join(mnt, 'filler'), new Uint8Array(12 * MiB))
      const backing = join(mnt, 'member.img')
      writeWhole(backing, new Uint8Array(2 * MiB)) // written (not sparse): writes to it need no allocation
      const map = await extents(backing)
      t.true(map.extents.every((e) => e.physical >= SHRINK), `the backing file lies past ${SHRINK} (${JSON.stringify(map.extents)})`)
      const loop = attachLoop(backing, undefined, 'off')
      try {
        t.is(sh('losetup', ['-n', '-O', 'DIO', loop]).trim(), '0', 'the member loop device is buffered')
        const r = await makeRig(parent, [{}, {}], { size: MiB, memberPaths: [undefined, loop], assumeClean: true })
        const m = r.mirror
        try {
          const faulty: number[] = []
          m.on('member-faulty', (e) => faulty.push(e.index))
          sh('truncate', ['-s', String(SHRINK), ctx.image!])
          sh('losetup', ['-c', dev])
          t.is(deviceSize(dev), SHRINK)

          await m.write(pattern(64 * KiB, 1), 0)
          await m.write(pattern(16 * KiB, 2), 5 * CS)
          t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync'], 'both members took the writes')

          const err = await t.throwsAsync(m.close(), { instanceOf: MdBitmapError })
          t.log(`close: ${err?.code} ${err?.message}`)
          t.is(err?.code, 'EIO', 'close rejects with the member flush error')
          t.regex(err!.message, /member 1 .*final flush/, 'the error names the member and the final flush')
          t.deepEqual(faulty, [1], "'member-faulty' for member 1")
          const meta = JSON.parse(readFileSync(r.metaPath, 'utf8')) as { clean: boolean; members: { state: string; error?: { code: string } }[] }
          t.false(meta.clean, 'the shutdown is recorded unclean')
          t.is(meta.members[1].state, 'faulty', 'member 1 is faulty in the metadata')
          t.is(meta.members[1].error?.code, 'EIO')
          t.is(meta.members[0].state, 'in-sync')
          t.deepEqual(readDisk(r.bitmapPath).dirtyList(MiB / CS), [0, 5], 'the chunks written stay dirty on disk')

          // Everything was closed all the same: the lock is free, and the mirror reopens degraded.
          const again = await Mirror.open({ bitmap: r.bitmapPath, openMember: r.openMember })
          try {
            t.deepEqual(again.members.map((x) => x.state), ['in-sync', 'faulty'])
            t.deepEqual(again.bitmap!.neededChunks(), [0, 5], 'the reopened mirror has chunks 0 and 5 to copy to member 1')
          } finally {
            await again.close()
          }
        } finally {
          await m.close().catch(() => {})
        }
      } finally {
        detach(loop)
      }
    },
    { mkfsArgs: ['-b', '4096', '-O', '^has_journal'], mountOptions: 'errors=continue' },
  )
})
