/**
 * NBD benchmark (`npm run bench:nbd`). Two parts, in one run, on 127.0.0.1:
 *
 * 1. Ack latency of 4 KiB writes (random 4 KiB-aligned offsets, 1 in flight) through
 *    a mirror of a local file and a remote write-mostly member on qemu-nbd (an
 *    NbdMember), write-behind (writeBehind 256) against synchronous (writeBehind 0).
 *    Twice: the remote as it is (loopback qemu-nbd, sub-millisecond), and with every
 *    remote write started `--rtt-ms` later (SlowMember over the NbdMember: a distant
 *    replica). Each configuration is a fresh mirror over the same files
 *    (`assumeClean`), runs `--duration` seconds per round, the configurations in
 *    rotated order round after round. Behind writes still draining at the end of a
 *    run are waited for outside the timing. Printed: writes/s, p50/p99/max ack
 *    latency, and behind / sync ratios.
 * 2. `qemu-img convert -n -f raw -O raw SRC nbd://…` of a `--source` MiB file of random
 *    data into (a) the served mirror (serveNbd in this process; members: a local file
 *    and the remote write-mostly qemu-nbd member, write-behind 256), (b) a plain
 *    qemu-nbd export of a file, same size, and (c) a served mirror of the local file
 *    alone (the cost of serving without the second copy); wall time including
 *    qemu-img's final flush, MB/s, and the ratio (a)/(b). For (a) the time until the
 *    write-mostly member caught up is printed too ("drain"). The three run in rotated
 *    order round after round.
 * 3. TLS against plain text, and several connections against one (certificates made
 *    with certtool, as in the tests):
 *    a. ack latency (p50/p99) of 4 KiB writes, 1 in flight, through a mirror whose
 *       remote member is on qemu-nbd with synchronous mirroring (writeBehind 0, so
 *       every ack waits for the remote): `nbd://` against `nbds://` (qemu-nbd
 *       `--tls-creds`, X.509);
 *    b. `qemu-img convert` of the source into a served mirror of one local member,
 *       plain against `tls` (serveNbd with X.509 credentials; qemu-img through
 *       `--object tls-creds-x509`): MB/s and the ratio TLS/plain;
 *    c. `nbdcopy --connections=1` against `--connections=4` (and `--threads` the
 *       same) of the source into that served mirror (NBD_FLAG_CAN_MULTI_CONN):
 *       MB/s and the ratio 4/1.
 *    d. the same four transfers, in the same rounds, into qemu-nbd (C, GnuTLS; `--cache=none
 *       --aio=native` on a file of the same size, `--shared=8`, which advertises
 *       multi-conn): the reference a goal can be read against, TLS/plain and 4/1 of a
 *       server that is not ours on this machine with these clients.
 *    For b and c, CPU is counted beside the wall time, since a shared machine's wall
 *    times swing with other work: the server's (this process, `process.cpuUsage`,
 *    its I/O threads included) per request and per MB, the client's (the child,
 *    from the children's times in /proc/self/stat), and the event-loop utilisation
 *    of the serving thread; each run's line gives the load average. Ratios are
 *    given per round (the kinds of a round run back to back, in rotated order) and
 *    over all rounds.

 *
 * Options:
 *   --dir DIR        where the files go (a temp dir is made in it; default /var/tmp), removed at the end
 *   --duration S     seconds per latency configuration per round (default 3)
 *   --rounds R       default 2
 *   --rtt-ms MS      delay added to each remote write in the second latency set (default 2)
 *   --source MIB     size of the convert source (default 256)
 *   --quick          1 s per configuration, 1 round, 64 MiB source
 *   --parts LIST     which parts to run, e.g. `3` or `1,2` (default 1,2,3)
 *   --out FILE       default bench/out/nbd.json
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomFillSync } from 'node:crypto'
import * as fs from 'node:fs'
import { connect } from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { MiB, KiB, Prng, fmt, loadLine, parseOptions, percentile, sleep, table, workDir } from './common'
import { FileMember, Mirror, NbdMember, SlowMember, allocAligned, isNbdUrl, readServerTlsCredentials, serveNbd, type Member, type MemberSpec, type NbdServerTlsCredentials } from '../src/index'
import { makePki } from '../__test__/helpers/certs'
import { freePort } from '../__test__/helpers/net'

interface Options {
  dir: string
  durationS: number
  rounds: number
  rttMs: number
  sourceMiB: number
  parts: Set<number>
  out: string
}

function parseArgs(argv: string[]): Options {
  const a = parseOptions(
    argv,
    { quick: 'flag', dir: 'value', duration: 'value', rounds: 'value', 'rtt-ms': 'value', source: 'value', parts: 'value', out: 'value' },
    'usage: npm run bench:nbd -- [--quick] [--dir DIR] [--duration S] [--rounds R] [--rtt-ms MS] [--source MIB] [--parts 1,2,3] [--out FILE]',
  )
  const quick = a.flag('quick')
  const o: Options = {
    dir: path.resolve(a.value('dir') ?? '/var/tmp'),
    durationS: a.number('duration', quick ? 1 : 3),
    rounds: a.number('rounds', quick ? 1 : 2),
    rttMs: a.number('rtt-ms', 2),
    sourceMiB: a.number('source', quick ? 64 : 256),
    parts: new Set((a.value('parts') ?? '1,2,3').split(',').map(Number)),
    out: path.resolve(a.value('out') ?? path.join(__dirname, 'out', 'nbd.json')),
  }
  if (!(o.durationS > 0) || !(o.rounds >= 1) || !(o.rttMs >= 0) || !(o.sourceMiB >= 1) || ![...o.parts].every((p) => p >= 1 && p <= 3)) throw new Error('bad option value')
  return o
}

// ---------------------------------------------------------------------------------------


async function waitPort(port: number, proc: ChildProcess): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (proc.exitCode !== null) throw new Error('qemu-nbd exited at start')
    const ok = await new Promise<boolean>((r) => {
      const s = connect({ host: '127.0.0.1', port }, () => (s.destroy(), r(true)))
      s.on('error', () => r(false))
    })
    if (ok) return
    await sleep(20)
  }
  throw new Error(`nothing listens on ${port}`)
}

const children = new Set<ChildProcess>()
async function qemuNbd(file: string, name: string, extra: string[] = []): Promise<{ url: string; port: number; pid: number; stop: () => Promise<void> }> {
  const port = await freePort()
  const proc = spawn('qemu-nbd', ['-f', 'raw', '-b', '127.0.0.1', '-p', String(port), '-x', name, '--persistent', '--shared=8', ...(extra.some((a) => a.startsWith('--cache')) ? [] : ['--cache=writeback']), ...extra, file], { stdio: 'ignore' })
  children.add(proc)
  const exited = new Promise<void>((r) => proc.once('exit', () => r()))
  await waitPort(port, proc)
  return {
    url: `nbd://127.0.0.1:${port}/${name}`,
    port,
    pid: proc.pid!,
    stop: async () => {
      proc.kill('SIGTERM')
      await exited
      children.delete(proc)
    },
  }
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { maxBuffer: 16 * MiB }, (e, _o, stderr) => (e ? reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || e.message}`)) : resolve())),
  )
}

// ---------------------------------------------------------------------------------------
// Part 1: ack latency

interface LatencyResult {
  key: string
  writes: number
  seconds: number
  latenciesUs: number[]
  behindWrites: number
  drainMs: number
}

async function latencyRun(o: Options, files: { bitmap: string; local: string }, remoteUrl: string, writeBehind: number, rttMs: number, seed: number): Promise<Omit<LatencyResult, 'key'>> {
  const REGION = 64 * MiB
  const openMember = async (spec: MemberSpec): Promise<Member> => {
    if (!isNbdUrl(spec.path)) return FileMember.open(spec.path)
    const m = await NbdMember.open(spec.path)
    return rttMs > 0 ? new SlowMember(m, rttMs) : m
  }
  const mirror = await Mirror.create({
    bitmap: files.bitmap,
    members: [{ path: files.local }, { path: remoteUrl, writeMostly: true }],
    size: REGION,
    chunkSize: 4 * MiB,
    writeBehind,
    daemonSleep: 5,
    assumeClean: true,
    overwrite: true,
    openMember,
  })
  const buf = allocAligned(4 * KiB)
  randomFillSync(buf)
  const prng = new Prng(seed)
  const lat: number[] = []
  const t0 = performance.now()
  const end = t0 + o.durationS * 1000
  while (performance.now() < end) {
    const off = (prng.next() % (REGION / 4096)) * 4096
    const s = performance.now()
    await mirror.write(buf, off)
    lat.push((performance.now() - s) * 1000)
  }
  const seconds = (performance.now() - t0) / 1000
  const d0 = performance.now()
  while (mirror.stats().behindInFlight > 0) await sleep(1)
  const drainMs = performance.now() - d0
  const behindWrites = mirror.stats().behindWrites
  await mirror.close()
  return { writes: lat.length, seconds, latenciesUs: lat, behindWrites, drainMs }
}

// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2))
  const dir = workDir(o.dir, 'md-bitmap-bench-nbd-', () => {
    for (const c of children) c.kill('SIGKILL')
  })
  console.log(`NBD benchmark in ${dir}; ${os.cpus().length} CPUs; node ${process.version}`)
  console.log(`at start: ${loadLine()}`)
  const local = path.join(dir, 'local.img')
  const remote = path.join(dir, 'remote.img')
  const size = Math.max(64, o.sourceMiB) * MiB
  for (const f of [local, remote]) {
    fs.writeFileSync(f, '')
    fs.truncateSync(f, size)
  }
  // The latency region written in full first, so no configuration pays for allocation.
  const fill = Buffer.alloc(64 * MiB, 0x5a)
  for (const f of [local, remote]) {
    const fd = fs.openSync(f, 'r+')
    fs.writeSync(fd, fill, 0, fill.length, 0)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
  }
  const src = path.join(dir, 'src.raw')
  const srcSize = o.sourceMiB * MiB
  {
    const fd = fs.openSync(src, 'w')
    const piece = Buffer.alloc(4 * MiB)
    for (let off = 0; off < srcSize; off += piece.length) {
      randomFillSync(piece)
      fs.writeSync(fd, piece, 0, Math.min(piece.length, srcSize - off), off)
    }
    fs.fsyncSync(fd)
    fs.closeSync(fd)
  }
  const q = await qemuNbd(remote, 'remote')
  const latency = o.parts.has(1) ? await latencyPart(o, dir, local, q.url) : undefined
  const convert = o.parts.has(2) ? await convertPart(o, dir, local, q.url, src, srcSize) : undefined
  await q.stop()
  const tls = o.parts.has(3) ? await tlsPart(o, dir, { local, remote, src, srcSize }) : undefined
  console.log(`at end: ${loadLine()}`)
  fs.mkdirSync(path.dirname(o.out), { recursive: true })
  fs.writeFileSync(o.out, JSON.stringify({ date: new Date().toISOString(), options: { ...o, parts: [...o.parts] }, ...latency, convert, tls }, null, 2))
}

// ---------------------------------------------------------------------------------------
// Part 1: ack latency, write-behind against synchronous

async function latencyPart(o: Options, dir: string, local: string, remoteUrl: string) {
  const configs = [
    { key: `sync, remote as is`, writeBehind: 0, rtt: 0 },
    { key: `behind, remote as is`, writeBehind: 256, rtt: 0 },
    { key: `sync, remote +${o.rttMs} ms`, writeBehind: 0, rtt: o.rttMs },
    { key: `behind, remote +${o.rttMs} ms`, writeBehind: 256, rtt: o.rttMs },
  ]
  const results = new Map<string, LatencyResult>(configs.map((c) => [c.key, { key: c.key, writes: 0, seconds: 0, latenciesUs: [], behindWrites: 0, drainMs: 0 }]))
  for (let round = 0; round < o.rounds; round++) {
    const order = configs.map((_, i) => configs[(i + round) % configs.length])
    for (const c of order) {
      const r = await latencyRun(o, { bitmap: path.join(dir, 'bitmap'), local }, remoteUrl, c.writeBehind, c.rtt, 1234 + round)
      const acc = results.get(c.key)!
      acc.writes += r.writes
      acc.seconds += r.seconds
      acc.latenciesUs.push(...r.latenciesUs)
      acc.behindWrites += r.behindWrites
      acc.drainMs += r.drainMs
      process.stderr.write(`  round ${round + 1} ${c.key}: ${r.writes} writes\n`)
    }
  }
  const rows = [['4 KiB random writes, 1 in flight', 'writes/s', 'p50 µs', 'p99 µs', 'max µs', 'behind', 'drain ms']]
  const summary: Record<string, { iops: number; p50: number; p99: number; max: number }> = {}
  for (const c of configs) {
    const r = results.get(c.key)!
    const s = r.latenciesUs
    summary[c.key] = { iops: r.writes / r.seconds, p50: percentile(s, 50), p99: percentile(s, 99), max: percentile(s, 100) }
    rows.push([c.key, fmt(summary[c.key].iops), fmt(summary[c.key].p50), fmt(summary[c.key].p99), fmt(summary[c.key].max), fmt(r.behindWrites), fmt(r.drainMs)])
  }
  console.log('\nAck latency, mirror = local file + remote write-mostly NbdMember on qemu-nbd (127.0.0.1)\n')
  console.log(table(rows))
  const ratio = (a: string, b: string, k: 'p50' | 'p99' | 'iops') => summary[a][k] / summary[b][k]
  const ratios: Record<string, number> = {}
  for (const rtt of ['remote as is', `remote +${o.rttMs} ms`]) {
    ratios[`${rtt}: p50 behind/sync`] = ratio(`behind, ${rtt}`, `sync, ${rtt}`, 'p50')
    ratios[`${rtt}: p99 behind/sync`] = ratio(`behind, ${rtt}`, `sync, ${rtt}`, 'p99')
    ratios[`${rtt}: writes/s behind/sync`] = ratio(`behind, ${rtt}`, `sync, ${rtt}`, 'iops')
  }
  console.log('\nRatios (behind / sync):')
  for (const [k, v] of Object.entries(ratios)) console.log(`  ${k.padEnd(40)} ${v.toFixed(2)}`)

  return { latency: summary, ratios }
}

// ---------------------------------------------------------------------------------------
// Part 2: qemu-img convert into the served mirror and into qemu-nbd

async function convertPart(o: Options, dir: string, local: string, remoteUrl: string, src: string, srcSize: number) {
  const plain = path.join(dir, 'plain.img')
  fs.writeFileSync(plain, '')
  fs.truncateSync(plain, srcSize)
  const p = await qemuNbd(plain, 'plain')
  const convert = async (url: string) => {
    const t0 = performance.now()
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, url])
    return (performance.now() - t0) / 1000
  }
  const conv: { mirror: number[]; single: number[]; plain: number[]; drainMs: number[] } = { mirror: [], single: [], plain: [], drainMs: [] }
  const kinds = ['mirror', 'plain', 'single'] as const
  for (let round = 0; round < o.rounds; round++) {
    for (const which of kinds.map((_, i) => kinds[(i + round) % kinds.length])) {
      if (which === 'plain') {
        conv.plain.push(await convert(p.url))
        continue
      }
      const mirror = await Mirror.create({
        bitmap: path.join(dir, 'bitmap'),
        members: which === 'single' ? [{ path: local }] : [{ path: local }, { path: remoteUrl, writeMostly: true }],
        size: srcSize,
        chunkSize: 4 * MiB,
        writeBehind: 256,
        daemonSleep: 5,
        assumeClean: true,
        overwrite: true,
        openMember: async (spec) => (isNbdUrl(spec.path) ? NbdMember.open(spec.path) : FileMember.open(spec.path)),
      })
      const server = await serveNbd(mirror, { port: 0, exportName: 'mirror' })
      conv[which].push(await convert(server.url))
      const d0 = performance.now()
      while (mirror.stats().behindInFlight > 0) await sleep(1)
      if (which === 'mirror') conv.drainMs.push(performance.now() - d0)
      await server.close()
      await mirror.close()
    }
    process.stderr.write(`  convert round ${round + 1} done\n`)
  }
  const mean = (a: number[]) => a.reduce((s, x) => s + x, 0) / a.length
  const mbps = (secs: number[]) => srcSize / 1e6 / mean(secs)
  console.log(`\nqemu-img convert -n -O raw of ${o.sourceMiB} MiB of random data\n`)
  console.log(
    table([
      ['target', 'seconds (mean)', 'MB/s', 'per run (s)'],
      ['served mirror (local + remote write-mostly, behind 256)', fmt(mean(conv.mirror), 2), fmt(mbps(conv.mirror), 1), conv.mirror.map((x) => x.toFixed(2)).join(' / ')],
      ['served mirror of one local member (no remote)', fmt(mean(conv.single), 2), fmt(mbps(conv.single), 1), conv.single.map((x) => x.toFixed(2)).join(' / ')],
      ['plain qemu-nbd export of a file', fmt(mean(conv.plain), 2), fmt(mbps(conv.plain), 1), conv.plain.map((x) => x.toFixed(2)).join(' / ')],
    ]),
  )
  const convRatio = mbps(conv.mirror) / mbps(conv.plain)
  console.log(`\nRatio served mirror / plain qemu-nbd (MB/s): ${convRatio.toFixed(2)}; one-member served mirror / plain: ${(mbps(conv.single) / mbps(conv.plain)).toFixed(2)}`)
  console.log(`write-mostly member drained ${conv.drainMs.map((x) => fmt(x)).join(' / ')} ms after qemu-img exited`)
  console.log(`at ${loadLine()}`)


  await p.stop()
  return { ...conv, mbMirror: mbps(conv.mirror), mbSingle: mbps(conv.single), mbPlain: mbps(conv.plain), ratio: convRatio }
}

// ---------------------------------------------------------------------------------------
// Part 3: TLS against plain, nbdcopy with 1 and 4 connections

async function tlsPart(o: Options, dir: string, f: { local: string; remote: string; src: string; srcSize: number }) {
  const pki = await makePki(path.join(dir, 'pki'))
  const creds: NbdServerTlsCredentials = await readServerTlsCredentials({ dir: pki.server })
  // a. ack latency, synchronous mirroring to qemu-nbd, plain and TLS
  const plainRemote = await qemuNbd(f.remote, 'remote')
  const tlsRemote = await qemuNbd(f.remote, 'remote', ['--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.server},verify-peer=off`, '--tls-creds', 'tls0'])
  const remotes = { plain: plainRemote.url, tls: `${tlsRemote.url.replace(/^nbd:/, 'nbds:')}?tls-certificates=${pki.anonymous}` }
  const lat: Record<'plain' | 'tls', number[]> = { plain: [], tls: [] }
  for (let round = 0; round < o.rounds; round++) {
    for (const k of round % 2 ? (['tls', 'plain'] as const) : (['plain', 'tls'] as const)) {
      const r = await latencyRun(o, { bitmap: path.join(dir, 'bitmap'), local: f.local }, remotes[k], 0, 0, 99 + round)
      lat[k].push(...r.latenciesUs)
    }
  }
  await plainRemote.stop()
  await tlsRemote.stop()
  const latency = Object.fromEntries(
    (['plain', 'tls'] as const).map((k) => {
      const s = [...lat[k]].sort((a, b) => a - b)
      return [k, { writes: s.length, p50: percentile(s, 50), p99: percentile(s, 99) }]
    }),
  ) as Record<'plain' | 'tls', { writes: number; p50: number; p99: number }>
  console.log('\nTLS: 4 KiB random writes, 1 in flight, synchronous mirror (local + remote qemu-nbd member)\n')
  console.log(table([['remote', 'writes', 'p50 µs', 'p99 µs'], ...(['plain', 'tls'] as const).map((k) => [k === 'plain' ? 'nbd:// (plain)' : 'nbds:// (TLS 1.3, X.509)', fmt(latency[k].writes), fmt(latency[k].p50), fmt(latency[k].p99)])]))

  // b, c. qemu-img convert (plain, TLS) and nbdcopy (1, 4 connections) into a served mirror of one local member
  const served = async (tls: NbdServerTlsCredentials | undefined, work: (port: number, url: string) => Promise<void>): Promise<StreamRun> => {
    const mirror = await Mirror.create({ bitmap: path.join(dir, 'bitmap'), members: [{ path: f.local }], size: f.srcSize, chunkSize: 4 * MiB, writeBehind: 0, daemonSleep: 5, assumeClean: true, overwrite: true })
    const server = await serveNbd(mirror, { port: 0, exportName: 'mirror', tls })
    try {
      const elu0 = performance.eventLoopUtilization()
      const cpu0 = process.cpuUsage()
      const child0 = childrenCpuSeconds()
      const t0 = performance.now()
      await work((server.address as { port: number }).port, server.url)
      const seconds = (performance.now() - t0) / 1000
      const cpu = process.cpuUsage(cpu0)
      return {
        seconds,
        serverCpu: (cpu.user + cpu.system) / 1e6,
        clientCpu: childrenCpuSeconds() - child0,
        requests: server.requests,
        elu: performance.eventLoopUtilization(elu0).utilization,
        load1: os.loadavg()[0],
      }
    } finally {
      await server.close()
      await mirror.close()
    }
  }
  // d. The reference: qemu-nbd on a file of the same size, plain and TLS, direct I/O as the mirror's member.
  // A file each: qemu-nbd locks the image it writes.
  const refFiles = ['reference-plain.img', 'reference-tls.img'].map((n) => path.join(dir, n))
  for (const file of refFiles) {
    fs.closeSync(fs.openSync(file, 'w'))
    fs.truncateSync(file, f.srcSize)
  }
  const refPlain = await qemuNbd(refFiles[0], 'ref', ['--cache=none', '--aio=native'])
  const refTls = await qemuNbd(refFiles[1], 'ref', ['--cache=none', '--aio=native', '--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.server},verify-peer=off`, '--tls-creds', 'tls0'])
  /** One transfer into qemu-nbd: its CPU from /proc/PID/stat. */
  const reference = async (q: { pid: number }, work: () => Promise<void>): Promise<StreamRun> => {
    const cpu0 = processCpuSeconds(q.pid)
    const child0 = childrenCpuSeconds()
    const t0 = performance.now()
    await work()
    const seconds = (performance.now() - t0) / 1000
    return { seconds, serverCpu: processCpuSeconds(q.pid) - cpu0, clientCpu: childrenCpuSeconds() - child0, requests: NaN, elu: NaN, load1: os.loadavg()[0] }
  }
  const tlsConvert = (port: number, name: string) =>
    run('qemu-img', ['convert', '-n', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.anonymous}`, '-f', 'raw', f.src, '--target-image-opts', `driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port=${port},file.export=${name},file.tls-creds=tls0`])
  const kinds = ['plain', 'tls', 'copy1', 'copy4', 'refPlain', 'refTls', 'refCopy1', 'refCopy4'] as const
  const runs: Record<(typeof kinds)[number], StreamRun[]> = { plain: [], tls: [], copy1: [], copy4: [], refPlain: [], refTls: [], refCopy1: [], refCopy4: [] }
  const label = {
    plain: 'qemu-img convert, plain',
    tls: 'qemu-img convert, TLS (X.509)',
    copy1: 'nbdcopy --connections=1',
    copy4: 'nbdcopy --connections=4',
    refPlain: 'qemu-nbd: qemu-img convert, plain',
    refTls: 'qemu-nbd: qemu-img convert, TLS',
    refCopy1: 'qemu-nbd: nbdcopy --connections=1',
    refCopy4: 'qemu-nbd: nbdcopy --connections=4',
  }
  for (let round = 0; round < o.rounds; round++) {
    for (const k of kinds.map((_, i) => kinds[(i + round) % kinds.length])) {
      let r: StreamRun
      const copies = (n: number, url: string) => run('nbdcopy', [`--connections=${n}`, `--threads=${n}`, f.src, url])
      if (k === 'plain') r = await served(undefined, (_p, url) => run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', f.src, url]))
      else if (k === 'tls') r = await served(creds, (port) => tlsConvert(port, 'mirror'))
      else if (k === 'copy1' || k === 'copy4') r = await served(undefined, (_p, url) => copies(k === 'copy1' ? 1 : 4, url))
      else if (k === 'refPlain') r = await reference(refPlain, () => run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', f.src, refPlain.url]))
      else if (k === 'refTls') r = await reference(refTls, () => tlsConvert(refTls.port, 'ref'))
      else r = await reference(refPlain, () => copies(k === 'refCopy1' ? 1 : 4, refPlain.url))
      runs[k].push(r)
      process.stderr.write(
        `  round ${round + 1} ${label[k]}: ${fmt(f.srcSize / 1e6 / r.seconds, 1)} MB/s, server CPU ${r.serverCpu.toFixed(2)} s${Number.isNaN(r.requests) ? '' : ` (${fmt((r.serverCpu * 1e6) / r.requests)} µs/request)`}, client CPU ${r.clientCpu.toFixed(2)} s${Number.isNaN(r.elu) ? '' : `, event loop ${(r.elu * 100).toFixed(0)} % busy`}, load ${r.load1.toFixed(2)}\n`,
      )
    }
  }
  await refPlain.stop()
  await refTls.stop()
  for (const file of refFiles) fs.rmSync(file)
  const sum = (a: StreamRun[], key: 'seconds' | 'serverCpu' | 'clientCpu' | 'requests') => a.reduce((n, r) => n + r[key], 0)
  const mbOf = (a: StreamRun[]) => (f.srcSize * a.length) / 1e6 / sum(a, 'seconds')
  /** Server CPU milliseconds per MB copied. */
  const cpuPerMb = (a: StreamRun[]) => (sum(a, 'serverCpu') * 1000) / ((f.srcSize * a.length) / 1e6)
  console.log(`\nInto a served mirror of one local member, ${o.sourceMiB} MiB of random data\n`)
  console.log(
    table([
      ['client', 'MB/s', 'per run (s)', 'server CPU ms/MB', 'µs/request', 'client CPU s', 'loop busy', 'load (1 min)'],
      ...kinds.map((k) => {
        const a = runs[k]
        return [
          label[k],
          fmt(mbOf(a), 1),
          a.map((r) => r.seconds.toFixed(2)).join(' / '),
          fmt(cpuPerMb(a), 2),
          k.startsWith('ref') ? '–' : fmt((sum(a, 'serverCpu') * 1e6) / sum(a, 'requests')),
          fmt(sum(a, 'clientCpu') / a.length, 2),
          k.startsWith('ref') ? '–' : `${fmt((100 * a.reduce((n, r) => n + r.elu, 0)) / a.length)} %`,
          a.map((r) => r.load1.toFixed(1)).join(' / '),
        ]
      }),
    ]),
  )
  // Per round: the kinds of one round ran back to back, so their ratio shares that round's load.
  const perRound = (num: (typeof kinds)[number], den: (typeof kinds)[number]) => runs[num].map((r, i) => runs[den][i].seconds / r.seconds)
  const tlsRatio = mbOf(runs.tls) / mbOf(runs.plain)
  const connRatio = mbOf(runs.copy4) / mbOf(runs.copy1)
  const tlsCpuRatio = cpuPerMb(runs.plain) / cpuPerMb(runs.tls)
  console.log(`\nRatio TLS / plain (MB/s): ${tlsRatio.toFixed(2)} (goal ≥ 0.85); per round ${perRound('tls', 'plain').map((x) => x.toFixed(2)).join(' / ')}`)
  console.log(`  server CPU per MB, plain / TLS: ${tlsCpuRatio.toFixed(2)} (what TLS costs the serving process)`)
  console.log(`nbdcopy 4 / 1 connections (MB/s): ${connRatio.toFixed(2)} (goal ≥ 1.5); per round ${perRound('copy4', 'copy1').map((x) => x.toFixed(2)).join(' / ')}`)
  const refTlsRatio = mbOf(runs.refTls) / mbOf(runs.refPlain)
  const refConnRatio = mbOf(runs.refCopy4) / mbOf(runs.refCopy1)
  console.log(`reference, qemu-nbd in the same rounds: TLS / plain ${refTlsRatio.toFixed(2)} (per round ${perRound('refTls', 'refPlain').map((x) => x.toFixed(2)).join(' / ')}); nbdcopy 4 / 1 ${refConnRatio.toFixed(2)} (per round ${perRound('refCopy4', 'refCopy1').map((x) => x.toFixed(2)).join(' / ')})`)
  console.log(`  served mirror ÷ qemu-nbd (MB/s): plain ${(mbOf(runs.plain) / mbOf(runs.refPlain)).toFixed(2)}, TLS ${(mbOf(runs.tls) / mbOf(runs.refTls)).toFixed(2)}, nbdcopy 1 ${(mbOf(runs.copy1) / mbOf(runs.refCopy1)).toFixed(2)}, 4 ${(mbOf(runs.copy4) / mbOf(runs.refCopy4)).toFixed(2)}`)
  console.log(`TLS ack latency p50 ${(latency.tls.p50 / latency.plain.p50).toFixed(2)}×, p99 ${(latency.tls.p99 / latency.plain.p99).toFixed(2)}× plain`)
  return {
    latency,
    runs,
    mbPlain: mbOf(runs.plain),
    mbTls: mbOf(runs.tls),
    mbCopy1: mbOf(runs.copy1),
    mbCopy4: mbOf(runs.copy4),
    cpuMsPerMb: Object.fromEntries(kinds.map((k) => [k, cpuPerMb(runs[k])])),
    tlsRatio,
    tlsCpuRatio,
    connRatio,
    reference: { tlsRatio: refTlsRatio, connRatio: refConnRatio, mbPlain: mbOf(runs.refPlain), mbTls: mbOf(runs.refTls), mbCopy1: mbOf(runs.refCopy1), mbCopy4: mbOf(runs.refCopy4) },
  }
}

/** One run of part 3: wall seconds, CPU seconds of the server (this process) and of the client (the child), requests served, event-loop utilisation, 1-minute load at its end. */
interface StreamRun {
  seconds: number
  serverCpu: number
  clientCpu: number
  requests: number
  elu: number
  load1: number
}

/** CPU seconds (user + system) of this process's children that have ended and been waited for, from /proc/self/stat. */
function childrenCpuSeconds(): number {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8')
  // Fields after the command name (which may hold spaces) start at field 3; cutime and cstime are fields 16 and 17.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS
}
/** CPU seconds (user + system) of process `pid` so far, from /proc/PID/stat (utime, stime: fields 14 and 15). */
function processCpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
}
/** USER_HZ: the unit of /proc's times (100 on Linux everywhere it runs). */
const CLOCK_TICKS = 100

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
