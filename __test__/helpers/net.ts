/**
 * Network helpers with no test-runner import, so benchmarks can use them too.
 */
import { readFileSync, readdirSync, readlinkSync } from 'node:fs'
import { createServer } from 'node:net'

/** A free TCP port on 127.0.0.1 (bound and released; the caller binds it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

/**
 * Whether process `pid` holds a socket listening on TCP `port` (the LISTEN entries of
 * /proc/net/tcp and tcp6 for that port, matched by inode against its descriptors). A
 * child told to serve on a port taken meanwhile by someone else fails its bind, while
 * the port does accept connections: only this says whose they are.
 */
export function listensOn(pid: number, port: number): boolean {
  const inodes = new Set<string>()
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string
    try {
      text = readFileSync(table, 'utf8')
    } catch {
      continue
    }
    // sl local_address rem_address st … inode: LISTEN is state 0A; the port is the local address's hex after ':'.
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/)
      if (c.length > 9 && c[3] === '0A' && parseInt(c[1].split(':')[1], 16) === port) inodes.add(c[9])
    }
  }
  if (inodes.size === 0) return false
  let fds: string[]
  try {
    fds = readdirSync(`/proc/${pid}/fd`)
  } catch {
    return false
  }
  return fds.some((fd) => {
    try {
      return inodes.has(/^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1] ?? '')
    } catch {
      return false
    }
  })
}
