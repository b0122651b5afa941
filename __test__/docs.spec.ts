/**
 * The API reference as a reader sees it: `npm run docs` builds it with typedoc
 * (warnings are errors, every export documented), a small HTTP server serves docs/api
 * on 127.0.0.1, and Debian's headless Chromium opens the Bitmap and Mirror pages. The
 * checks run on the DOM after the page's own scripts ran (the side navigation is
 * built by script), and each page's screenshot is kept in docs/screenshots/
 * (gitignored: it is redrawn on every run, from the sources of that run).
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { type AddressInfo } from 'node:net'
import { extname, join, normalize, resolve, sep } from 'node:path'
import { inflateSync } from 'node:zlib'
import { requires } from './helpers/env'
import { Chromium } from './helpers/chromium'

const ROOT = resolve(__dirname, '..')
const API = join(ROOT, 'docs', 'api')
const SHOTS = join(ROOT, 'docs', 'screenshots')

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json',
  '.png': 'image/png',
}

/** Serves `dir` read-only on 127.0.0.1, an ephemeral port. Records every request's status. */
function serve(dir: string): Promise<{ server: Server; base: string; log: string[] }> {
  const log: string[] = []
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)
    let file = normalize(join(dir, path))
    if (!file.startsWith(dir + sep) && file !== dir) {
      res.writeHead(403).end()
      log.push(`403 ${path}`)
      return
    }
    try {
      if (statSync(file).isDirectory()) file = join(file, 'index.html')
      const body = readFileSync(file)
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(body)
      log.push(`200 ${path}`)
    } catch {
      res.writeHead(404).end('not found')
      log.push(`404 ${path}`)
    }
  })
  return new Promise((ok) =>
    server.listen(0, '127.0.0.1', () => ok({ server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, log })),
  )
}

/** Width, height and whether the pixels vary (a blank or one-colour image does not). */
function pngFacts(png: Buffer): { width: number; height: number; distinctBytes: number } {
  if (png.subarray(0, 8).toString('hex') !== '89504e470d0a1a0a') throw new Error('not a PNG')
  const width = png.readUInt32BE(16)
  const height = png.readUInt32BE(20)
  const idat: Buffer[] = []
  for (let at = 8; at < png.length; ) {
    const len = png.readUInt32BE(at)
    const type = png.toString('latin1', at + 4, at + 8)
    if (type === 'IDAT') idat.push(png.subarray(at + 8, at + 8 + len))
    at += 12 + len
  }
  const seen = new Set<number>()
  for (const b of inflateSync(Buffer.concat(idat))) seen.add(b)
  return { width, height, distinctBytes: seen.size }
}

/** What the page shows, read from the live DOM. */
interface PageFacts {
  title: string
  h1: string
  members: string[]
  code: string[]
  navLinks: string[]
  highlighted: number
}

const READ_PAGE = `(() => ({
  title: document.title,
  h1: document.querySelector('.tsd-page-title h1')?.textContent.trim() ?? '',
  members: [...document.querySelectorAll('section.tsd-member h3.tsd-anchor-link > span')].map((h) => h.textContent.trim()),
  code: [...document.querySelectorAll('.tsd-comment pre code, .tsd-panel pre code, pre code')].map((c) => c.textContent),
  navLinks: [...document.querySelectorAll('#tsd-nav-container a')].map((a) => a.textContent.trim()),
  highlighted: document.querySelectorAll('pre code span[class^="hl-"]').length,
}))()`

const WIDTH = 1280
const HEIGHT = 1600

const PAGES = [
  {
    name: 'Bitmap',
    methods: ['create', 'open', 'startWrite', 'endWrite', 'startSync', 'endSync', 'settle', 'close', 'dirtyChunks', 'stats'],
    example: ['Bitmap.create', 'startWrite', 'endWrite', 'close'],
  },
  {
    name: 'Mirror',
    methods: ['create', 'open', 'write', 'read', 'resync', 'check', 'discard', 'writeZeroes', 'addMember', 'removeMember', 'reAdd', 'flush', 'close', 'stats'],
    example: ['Mirror.create', 'writeMostly: true', 'mirror.write', 'Mirror.open', 'resync(', 'onProgress'],
  },
]

const chromium = requires(['chromium'])

chromium.serial('npm run docs builds the reference, and Chromium renders the Bitmap and Mirror pages', async (t) => {
  // Build: typedoc with warnings as errors. A missing doc comment fails here.
  const started = Date.now()
  const build = spawnSync('npm', ['run', 'docs'], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 })
  t.is(build.status, 0, `npm run docs failed:\n${build.stdout}\n${build.stderr}`)
  t.notRegex(build.stdout + build.stderr, /\[warning\]/, 'typedoc printed warnings')
  t.log(`npm run docs: ${Date.now() - started} ms`)

  const { server, base, log } = await serve(API)
  const browser = await Chromium.launch({ width: WIDTH, height: HEIGHT })
  try {
    t.log(`browser: ${browser.executable} (${await browser.version()})`)
    mkdirSync(SHOTS, { recursive: true })
    for (const spec of PAGES) {
      const page = await browser.newPage()
      const url = `${base}/classes/${spec.name}.html`
      await page.goto(url)
      // The side navigation is filled in by the page's script: wait for it.
      await page.waitUntil(`document.querySelectorAll('#tsd-nav-container a').length > 10`, `the navigation of ${url}`)
      const facts = await page.evaluate<PageFacts>(READ_PAGE)

      t.is(facts.h1, `Class ${spec.name}`, `${spec.name}: the heading`)
      t.regex(facts.title, new RegExp(`^${spec.name} \\| md-bitmap`), `${spec.name}: the title`)
      for (const m of spec.methods) t.true(facts.members.includes(m), `${spec.name}: member ${m} is listed (members: ${facts.members.join(', ')})`)
      const example = facts.code.find((c) => c.includes(`${spec.name}.create`))
      t.truthy(example, `${spec.name}: the @example is rendered (code blocks: ${facts.code.length})`)
      for (const s of spec.example) t.true(example?.includes(s), `${spec.name}: the example shows ${s}`)
      t.true(facts.highlighted > 10, `${spec.name}: the example is syntax-highlighted (${facts.highlighted} spans)`)
      for (const n of ['Bitmap', 'Mirror', 'PageStore', 'MdBitmapError', 'decodeSuperblock']) {
        t.true(facts.navLinks.includes(n), `${spec.name}: the navigation links ${n}`)
      }
      t.deepEqual(page.errors, [], `${spec.name}: no script errors`)

      const png = await page.screenshot()
      const shot = join(SHOTS, `${spec.name.toLowerCase()}-api.png`)
      writeFileSync(shot, png)
      const p = pngFacts(png)
      t.is(p.width, WIDTH, `${spec.name}: screenshot width`)
      t.is(p.height, HEIGHT, `${spec.name}: screenshot height`)
      t.true(p.distinctBytes > 64, `${spec.name}: the screenshot is not blank (${p.distinctBytes} distinct byte values)`)
      t.log(`${spec.name}: ${facts.members.length} members, ${facts.navLinks.length} navigation links; screenshot ${shot} (${png.length} bytes)`)
    }
    // The browser asks for /favicon.ico on its own; typedoc makes none.
    const failed = log.filter((l) => !l.startsWith('200') && l !== '404 /favicon.ico')
    t.deepEqual(failed, [], 'every request the pages made was served')
  } finally {
    await browser.close()
    await new Promise((r) => server.close(r))
  }
})
