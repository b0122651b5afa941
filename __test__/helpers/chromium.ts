/**
 * Drives Debian's headless Chromium (`/usr/bin/chromium`, found in PATH) through the
 * DevTools protocol over a pipe (`--remote-debugging-pipe`: commands go to the
 * browser's fd 3, replies and events come back on its fd 4, each message JSON ended by
 * a NUL byte). No driver package and no downloaded browser: the system's own build.
 *
 *   const browser = await Chromium.launch({ width: 1280, height: 1600 })
 *   const page = await browser.newPage()
 *   await page.goto('http://127.0.0.1:8080/')
 *   const title = await page.evaluate<string>('document.title')
 *   writeFileSync('shot.png', await page.screenshot())
 *   await browser.close()
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable, Writable } from 'node:stream'
import { which } from './env'

/** One DevTools protocol message. */
export interface Message {
  id?: number
  method?: string
  params?: Record<string, unknown>
  result?: Record<string, unknown>
  error?: { code: number; message: string }
  sessionId?: string
}

export interface LaunchOptions {
  /** Viewport size in CSS pixels. */
  width?: number
  height?: number
  /** Milliseconds any one protocol command may take. Default 30 s. */
  timeoutMs?: number
}

export class Chromium {
  private nextId = 1
  private readonly waiting = new Map<number, { resolve: (m: Message) => void; reject: (e: Error) => void; method: string }>()
  private readonly listeners = new Set<(m: Message) => void>()
  private exited: Error | undefined
  /** What the browser printed on stderr (the tail), for failure messages. */
  stderr = ''

  private constructor(
    private readonly proc: ChildProcess,
    private readonly profile: string,
    private readonly timeoutMs: number,
    /** The executable launched. */
    readonly executable: string,
    /** The viewport of every page, in CSS pixels (device scale 1). */
    readonly viewport: { width: number; height: number },
  ) {
    const input = proc.stdio[4] as Readable
    let pending = Buffer.alloc(0)
    input.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk])
      let end: number
      while ((end = pending.indexOf(0)) !== -1) {
        const msg = JSON.parse(pending.subarray(0, end).toString('utf8')) as Message
        pending = pending.subarray(end + 1)
        this.dispatch(msg)
      }
    })
    proc.stderr!.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString('utf8')).slice(-4000)
    })
    proc.on('exit', (code, signal) => {
      this.exited = new Error(`chromium exited (code ${code}, signal ${signal}); stderr:\n${this.stderr}`)
      for (const w of this.waiting.values()) w.reject(this.exited)
      this.waiting.clear()
    })
  }

  /** Starts headless Chromium with a throw-away profile. */
  static async launch(opts: LaunchOptions = {}): Promise<Chromium> {
    const executable = which('chromium')
    if (!executable) throw new Error('chromium not found in PATH (Debian package `chromium`)')
    const profile = mkdtempSync(join(tmpdir(), 'md-bitmap-chromium-'))
    const args = [
      '--headless',
      // Root (as in CI) cannot use Chromium's sandbox; the pages are our own, from 127.0.0.1.
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--no-first-run',
      '--no-default-browser-check',
      '--disable-extensions',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--hide-scrollbars',
      '--mute-audio',
      `--user-data-dir=${profile}`,
      `--window-size=${opts.width ?? 1280},${opts.height ?? 1600}`,
      '--remote-debugging-pipe',
      'about:blank',
    ]
    const proc = spawn(executable, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] })
    const viewport = { width: opts.width ?? 1280, height: opts.height ?? 1600 }
    const browser = new Chromium(proc, profile, opts.timeoutMs ?? 30_000, executable, viewport)
    // The first reply proves the pipe is up.
    await browser.send('Browser.getVersion')
    return browser
  }

  private dispatch(msg: Message): void {
    if (msg.id !== undefined) {
      const w = this.waiting.get(msg.id)
      if (!w) return
      this.waiting.delete(msg.id)
      if (msg.error) w.reject(new Error(`${w.method}: ${msg.error.message} (${msg.error.code})`))
      else w.resolve(msg)
      return
    }
    for (const l of this.listeners) l(msg)
  }

  /** Sends one protocol command (to a page when `sessionId` is given) and waits for its reply. */
  send<T = Record<string, unknown>>(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<T> {
    if (this.exited) return Promise.reject(this.exited)
    const id = this.nextId++
    const msg: Message = { id, method, params }
    if (sessionId) msg.sessionId = sessionId
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id)
        reject(new Error(`${method}: no reply from chromium within ${this.timeoutMs} ms`))
      }, this.timeoutMs)
      this.waiting.set(id, {
        method,
        resolve: (m) => {
          clearTimeout(timer)
          resolve((m.result ?? {}) as T)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        },
      })
      ;(this.proc.stdio[3] as Writable).write(JSON.stringify(msg) + '\0')
    })
  }

  /** Resolves with the first event `method` (of `sessionId`) for which `match` holds. */
  waitFor(method: string, sessionId: string | undefined, match: (params: Record<string, unknown>) => boolean = () => true): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.listeners.delete(listener)
        reject(new Error(`no ${method} event within ${this.timeoutMs} ms`))
      }, this.timeoutMs)
      const listener = (m: Message) => {
        if (m.method === method && m.sessionId === sessionId && match(m.params ?? {})) {
          clearTimeout(timer)
          this.listeners.delete(listener)
          resolve(m.params ?? {})
        }
      }
      this.listeners.add(listener)
    })
  }

  /** Calls `listener` with every event the browser sends (any session). */
  onEvent(listener: (m: Message) => void): void {
    this.listeners.add(listener)
  }

  /** A new tab, attached. */
  async newPage(): Promise<Page> {
    const { targetId } = await this.send<{ targetId: string }>('Target.createTarget', { url: 'about:blank' })
    const { sessionId } = await this.send<{ sessionId: string }>('Target.attachToTarget', { targetId, flatten: true })
    await this.send('Page.enable', {}, sessionId)
    await this.send('Runtime.enable', {}, sessionId)
    // The window size includes the window's frame; the page's viewport is set exactly.
    await this.send('Emulation.setDeviceMetricsOverride', { ...this.viewport, deviceScaleFactor: 1, mobile: false }, sessionId)
    return new Page(this, sessionId, this.timeoutMs)
  }

  /** The browser's product string, e.g. `Chrome/131.0.6778.85`. */
  async version(): Promise<string> {
    return (await this.send<{ product: string }>('Browser.getVersion')).product
  }

  /** Closes the browser (killing it if it does not go) and removes its profile. */
  async close(): Promise<void> {
    if (!this.exited) {
      const gone = new Promise<void>((r) => this.proc.once('exit', () => r()))
      this.send('Browser.close').catch(() => {})
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000)
      await gone
      clearTimeout(timer)
    }
    rmSync(this.profile, { recursive: true, force: true })
  }
}

export class Page {
  /** Uncaught exceptions and console errors the page reported. */
  readonly errors: string[] = []

  constructor(
    private readonly browser: Chromium,
    readonly sessionId: string,
    private readonly timeoutMs: number,
  ) {
    const record = (m: Message) => {
      if (m.sessionId !== sessionId) return
      if (m.method === 'Runtime.exceptionThrown') {
        const d = (m.params as { exceptionDetails?: { text?: string; exception?: { description?: string } } }).exceptionDetails
        this.errors.push(`exception: ${d?.exception?.description ?? d?.text}`)
      } else if (m.method === 'Runtime.consoleAPICalled' && (m.params as { type?: string }).type === 'error') {
        const args = ((m.params as { args?: { value?: unknown; description?: string }[] }).args ?? []).map((a) => a.value ?? a.description)
        this.errors.push(`console.error: ${args.join(' ')}`)
      }
    }
    browser.onEvent(record)
  }

  /** Navigates and waits for the load event; rejects when the navigation fails (e.g. HTTP error page). */
  async goto(url: string): Promise<void> {
    const loaded = this.browser.waitFor('Page.loadEventFired', this.sessionId)
    const r = await this.browser.send<{ errorText?: string }>('Page.navigate', { url }, this.sessionId)
    if (r.errorText) throw new Error(`navigating to ${url}: ${r.errorText}`)
    await loaded
  }

  /** Evaluates `expression` in the page (awaiting a promise) and returns its value. */
  async evaluate<T>(expression: string): Promise<T> {
    const r = await this.browser.send<{ result: { value?: T }; exceptionDetails?: { text: string; exception?: { description?: string } } }>(
      'Runtime.evaluate',
      { expression, returnByValue: true, awaitPromise: true },
      this.sessionId,
    )
    if (r.exceptionDetails) throw new Error(`evaluate: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`)
    return r.result.value as T
  }

  /** Polls `expression` until it is truthy; rejects after the timeout with `what`. */
  async waitUntil(expression: string, what: string, timeoutMs = this.timeoutMs): Promise<void> {
    const end = Date.now() + timeoutMs
    for (;;) {
      if (await this.evaluate<boolean>(`Boolean(${expression})`)) return
      if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }

  /** A PNG of the viewport. */
  async screenshot(): Promise<Buffer> {
    const { data } = await this.browser.send<{ data: string }>('Page.captureScreenshot', { format: 'png' }, this.sessionId)
    return Buffer.from(data, 'base64')
  }
}
