/**
 * The I/O layer's file operations (src/io: files, replace, folders, uncached-read,
 * volatile, file-error) on real files: a disk folder, a small loop-mounted ext4 that
 * fills up (ENOSPC), tmpfs and ramfs. Every failure must be an MdBitmapError with the
 * system's code and a hint, and must leave nothing behind.
 */
import test, { type ExecutionContext } from 'ava'
import * as fs from 'node:fs'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { Bitmap, MdBitmapError, check } from '../src'
import { fileError } from '../src/io/file-error'
import { createSparseFile, createWrittenFile, readWholeFile, removeFile, statPath } from '../src/io/files'
import { makeTempFolder, removeFolder, syncFolder } from '../src/io/folders'
import { replaceFile } from '../src/io/replace'
import { readFileStart } from '../src/io/uncached-read'
import { volatileFilesystem } from '../src/io/volatile'
import { fsCaps, requires } from './helpers/env'
import { diskTempDir, removeDir } from './helpers/tmp'
import { sh, withFs } from './helpers/loopfs'
import { rejectsWith, throwsWith } from './helpers/errors'

const MiB = 2 ** 20
const dir = diskTempDir('md-bitmap-io-files-')
test.after.always(() => removeDir(dir))

let n = 0
/** A fresh, empty folder under the disk folder. */
function freshFolder(): string {
  const d = join(dir, `case-${n++}`)
  fs.mkdirSync(d)
  return d
}

/** The names in a folder, sorted: what a failed operation must not have added to. */
const listing = (d: string) => fs.readdirSync(d).sort()

/** Fills the filesystem holding `d` to its last block (as root: reserved blocks too). */
function fillUp(t: ExecutionContext, d: string): void {
  const fd = fs.openSync(join(d, 'filler'), 'w')
  const block = Buffer.alloc(MiB, 0xee)
  let small = false
  try {
    for (;;) {
      try {
        fs.writeSync(fd, small ? block.subarray(0, 4096) : block)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e
        if (small) break
        small = true
      }
    }
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  t.true(fs.statfsSync(d).bavail * fs.statfsSync(d).bsize < MiB, 'the filesystem is full')
}

// ---------------------------------------------------------------------------------
// createWrittenFile

test('createWrittenFile: exactly the bytes given, every block allocated and written (no hole, no unwritten extent)', async (t) => {
  const d = freshFolder()
  const path = join(d, 'whole')
  const data = randomBytes(3 * MiB + 4096)
  await createWrittenFile(path, data)
  t.deepEqual(fs.readFileSync(path), data)
  const c = await check(path)
  t.true(c.fileModeOk, JSON.stringify(c.problems))
  t.deepEqual(c.problems.filter((p) => p.code.startsWith('EEXTENT_') && p.code !== 'EEXTENT_NOT_ALIGNED'), [], 'no hole or unsafe extent')
  t.true(fs.statSync(path).blocks * 512 >= data.length, 'allocated in full')
  t.deepEqual(listing(d), ['whole'], 'nothing else in the folder')
})

test('createWrittenFile: an existing file → EEXIST and it is left as it was; overwrite: true replaces it', async (t) => {
  const d = freshFolder()
  const path = join(d, 'taken')
  const before = randomBytes(8192)
  fs.writeFileSync(path, before)
  const e = await rejectsWith(t, createWrittenFile(path, randomBytes(4096)), 'EEXIST')
  t.regex(e.message, /cannot create .*taken/)
  t.deepEqual(fs.readFileSync(path), before, 'the existing file is untouched')
  t.deepEqual(listing(d), ['taken'])
  const after = randomBytes(4096)
  await createWrittenFile(path, after, { overwrite: true })
  t.deepEqual(fs.readFileSync(path), after)
})

test('createWrittenFile / createSparseFile / replaceFile in a missing folder → ENOENT with a hint; nothing is created', async (t) => {
  const d = freshFolder()
  const path = join(d, 'no', 'such', 'file')
  for (const attempt of [createWrittenFile(path, randomBytes(512)), createSparseFile(path, MiB), replaceFile(path, 'x')]) {
    const e = await rejectsWith(t, attempt, 'ENOENT')
    t.regex(e.message, /check the path/, 'the hint says what to do')
    t.is(e.errno, -2, 'the errno is kept')
  }
  t.deepEqual(listing(d), [], 'nothing was left behind')
})

const text4 = requires([...fsCaps('ext4')])
text4('on a filesystem that fills up: createWrittenFile → ENOSPC and removes its file; replaceFile → ENOSPC, the old file intact, no temporary file', async (t) => {
  await withFs('ext4', 16, async (mnt) => {
    const base = listing(mnt)
    // Bigger than the filesystem: the write runs out of space.
    const e = await rejectsWith(t, createWrittenFile(join(mnt, 'big'), new Uint8Array(32 * MiB)), 'ENOSPC')
    t.regex(e.message, /nothing was left behind/)
    t.regex(e.message, /filesystem is full/, 'the hint says what to do')
    t.deepEqual(listing(mnt), base, 'the half-written file is gone')

    const meta = join(mnt, 'meta.json')
    await replaceFile(meta, '{"v":1}\n')
    fillUp(t, mnt)
    const before = listing(mnt)
    await rejectsWith(t, replaceFile(meta, 'x'.repeat(4 * MiB)), 'ENOSPC')
    t.is(fs.readFileSync(meta, 'utf8'), '{"v":1}\n', 'the old contents are intact')
    t.deepEqual(listing(mnt), before, 'no temporary file is left beside it')
    await rejectsWith(t, createWrittenFile(join(mnt, 'more'), new Uint8Array(MiB)), 'ENOSPC')
    t.deepEqual(listing(mnt), before, 'nothing was left behind')
  })
})

// ---------------------------------------------------------------------------------
// createSparseFile

test('createSparseFile: the size asked for, nothing allocated, zeros; exclusive: an existing file → EEXIST, untouched', async (t) => {
  const d = freshFolder()
  const path = join(d, 'sparse')
  await createSparseFile(path, 64 * MiB)
  const st = fs.statSync(path)
  t.is(st.size, 64 * MiB)
  t.is(st.blocks, 0, 'no block allocated')
  t.deepEqual(fs.readFileSync(path).subarray(0, MiB), Buffer.alloc(MiB))
  fs.writeFileSync(path, 'mine')
  await rejectsWith(t, createSparseFile(path, MiB), 'EEXIST')
  t.is(fs.readFileSync(path, 'utf8'), 'mine', 'the existing file is untouched')
  t.deepEqual(listing(d), ['sparse'])
})

// ---------------------------------------------------------------------------------
// replaceFile

test('replaceFile: creates, then replaces by rename (a new inode), contents exact, no temporary file left', async (t) => {
  const d = freshFolder()
  const path = join(d, 'meta.json')
  await replaceFile(path, 'one\n')
  t.is(fs.readFileSync(path, 'utf8'), 'one\n')
  const ino = fs.statSync(path).ino
  const bytes = randomBytes(10000)
  await replaceFile(path, bytes)
  t.deepEqual(fs.readFileSync(path), bytes)
  t.not(fs.statSync(path).ino, ino, 'renamed over, not rewritten in place')
  t.deepEqual(listing(d), ['meta.json'])
})

test('replaceFile over a folder → EISDIR; the folder and its contents stay, no temporary file', async (t) => {
  const d = freshFolder()
  const target = join(d, 'target')
  fs.mkdirSync(target)
  fs.writeFileSync(join(target, 'inside'), 'kept')
  await rejectsWith(t, replaceFile(target, 'x'), 'EISDIR')
  t.is(fs.readFileSync(join(target, 'inside'), 'utf8'), 'kept')
  t.deepEqual(listing(d), ['target'])
})

// ---------------------------------------------------------------------------------
// reading, looking up, removing

test('readWholeFile: the bytes; a missing file → ENOENT; a folder → EISDIR', async (t) => {
  const d = freshFolder()
  const path = join(d, 'small')
  const data = randomBytes(777)
  fs.writeFileSync(path, data)
  t.deepEqual(await readWholeFile(path), data)
  await rejectsWith(t, readWholeFile(join(d, 'missing')), 'ENOENT')
  const e = await rejectsWith(t, readWholeFile(d), 'EISDIR')
  t.regex(e.message, /give the path of a file/)
})

test('statPath: file with its size, folder, other (a character device), null when nothing is there; ENOTDIR through a file', async (t) => {
  const d = freshFolder()
  const path = join(d, 'f')
  fs.writeFileSync(path, Buffer.alloc(1234))
  t.deepEqual(await statPath(path), { kind: 'file', size: 1234 })
  t.is((await statPath(d))?.kind, 'folder')
  t.is((await statPath('/dev/null'))?.kind, 'other')
  t.is(await statPath(join(d, 'missing')), null)
  await rejectsWith(t, statPath(join(path, 'below-a-file')), 'ENOTDIR')
})

test('removeFile: true when it removed one, false when there was none; a folder → EISDIR and it stays', async (t) => {
  const d = freshFolder()
  const path = join(d, 'gone')
  fs.writeFileSync(path, 'x')
  t.true(await removeFile(path))
  t.false(fs.existsSync(path))
  t.false(await removeFile(path))
  const sub = join(d, 'sub')
  fs.mkdirSync(sub)
  await rejectsWith(t, removeFile(sub), 'EISDIR')
  t.true(fs.existsSync(sub))
})

test('readFileStart: the first bytes as on disk, fewer at the end of a short file; a folder → ENOT_REGULAR_FILE; missing → ENOENT', async (t) => {
  const d = freshFolder()
  const path = join(d, 'f')
  const data = randomBytes(3 * 4096 + 100)
  fs.writeFileSync(path, data)
  const head = await readFileStart(path, 4096)
  t.is(head.fileSize, data.length)
  t.deepEqual(Buffer.from(head.data), data.subarray(0, 4096))
  const all = await readFileStart(path, 10 * 4096)
  t.deepEqual(Buffer.from(all.data), data, 'the whole file, short at its end')
  await rejectsWith(t, readFileStart(d, 4096), 'ENOT_REGULAR_FILE')
  await rejectsWith(t, readFileStart(join(d, 'missing'), 4096), 'ENOENT')
  t.deepEqual(listing(d), ['f'], 'reading never creates anything')
})

// ---------------------------------------------------------------------------------
// folders

test('makeTempFolder / syncFolder / removeFolder; a missing parent → ENOENT, nothing made', async (t) => {
  const d = freshFolder()
  const made = makeTempFolder(d, 'tmp-')
  t.true(fs.statSync(made).isDirectory())
  fs.writeFileSync(join(made, 'x'), 'y')
  await syncFolder(made)
  removeFolder(made)
  t.false(fs.existsSync(made))
  removeFolder(made) // nothing there: fine
  throwsWith(t, () => makeTempFolder(join(d, 'missing'), 'tmp-'), 'ENOENT')
  await rejectsWith(t, syncFolder(join(d, 'missing')), 'ENOENT')
  t.deepEqual(listing(d), [])
})

// ---------------------------------------------------------------------------------
// volatile?

test('volatileFilesystem: a disk folder and a file on it (by check()) are not volatile; a missing path → ENOENT', async (t) => {
  const d = freshFolder()
  const path = join(d, 'f')
  await createWrittenFile(path, new Uint8Array(4096))
  t.is(volatileFilesystem(d), null)
  t.is(volatileFilesystem(path), null)
  t.is(volatileFilesystem(await check(path)), null)
  const e = throwsWith(t, () => volatileFilesystem(join(d, 'missing')), 'ENOENT')
  t.regex(e.message, /which filesystem/)
})

const tvolatile = requires([...fsCaps('tmpfs'), 'fs:ramfs'])
tvolatile('volatileFilesystem: tmpfs and ramfs, asked by folder (statfs) and by check() on a file, agree; Bitmap.create there → EVOLATILE, nothing left behind', async (t) => {
  await withFs('tmpfs', 16, async (mnt) => {
    const ram = join(mnt, 'ram')
    fs.mkdirSync(ram)
    sh('mount', ['-t', 'ramfs', 'ramfs', ram])
    try {
      for (const [where, name] of [[mnt, 'tmpfs'], [ram, 'ramfs']] as const) {
        t.is(volatileFilesystem(where), name, `${name}: by folder`)
        const file = join(where, 'f')
        // The I/O layer itself writes anywhere; refusing volatile filesystems is the bitmap's call.
        await createWrittenFile(file, new Uint8Array(8192).fill(7))
        t.is(volatileFilesystem(file), name, `${name}: by path of a file`)
        t.is(volatileFilesystem(await check(file)), name, `${name}: by check()`)
        const head = await readFileStart(file, 4096)
        t.deepEqual(Buffer.from(head.data), Buffer.alloc(4096, 7), `${name}: readFileStart falls back where O_DIRECT is refused`)
        t.true(await removeFile(file))

        const before = listing(where)
        const bitmap = join(where, 'x.bitmap')
        const e = await rejectsWith(t, Bitmap.create(bitmap, { size: 10 * 4096, chunkSize: 4096 }), 'EVOLATILE')
        t.regex(e.message, new RegExp(name))
        t.deepEqual(listing(where), before, `${name}: nothing was left behind`)
      }
    } finally {
      sh('umount', [ram])
    }
  })
})

// ---------------------------------------------------------------------------------
// the hints

test('fileError: keeps the code and errno, says what was attempted, and adds the hint for the code', (t) => {
  const err = Object.assign(new Error("EACCES: permission denied, open '/x'"), { code: 'EACCES', errno: -13 })
  const e = fileError(err, 'cannot open /x')
  t.true(e instanceof MdBitmapError)
  t.is(e.code, 'EACCES')
  t.is(e.errno, -13)
  t.is(e.cause, err)
  t.regex(e.message, /^cannot open \/x: EACCES: permission denied, open '\/x'; permission denied; check the file mode/)
  const odd = fileError(Object.assign(new Error('strange'), { code: 'ESTRANGE' }), 'cannot read /y')
  t.is(odd.code as string, 'ESTRANGE')
  t.is(odd.message, 'cannot read /y: strange', 'no hint where none is known')
})
