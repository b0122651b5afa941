/**
 * The built package (dist/), for the specs that run it as users do: the CLI through
 * bin/md-bitmap.js, the CommonJS and ESM entries in fresh processes. Everything else
 * (specs, fixtures, crash children) runs src/ through tsx; these specs make sure dist/
 * is built from the same src/ first, so they never test a stale build.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

const ROOT = join(__dirname, '..', '..')
/** Files of dist/ that the package's entries load first. */
const ENTRIES = ['index.js', 'index.mjs', join('cli', 'main.js')].map((f) => join(ROOT, 'dist', f))

function newestMtime(path: string): number {
  const st = statSync(path)
  if (!st.isDirectory()) return st.mtimeMs
  return Math.max(0, ...readdirSync(path).map((n) => newestMtime(join(path, n))))
}

/** Rebuilds dist/ (tsc and the post-build step) when a file under src/ is newer than it. */
export function ensureBuilt(): void {
  const newest = newestMtime(join(ROOT, 'src'))
  if (ENTRIES.every((f) => existsSync(f) && statSync(f).mtimeMs >= newest)) return
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: ROOT, stdio: 'pipe' })
  execFileSync(process.execPath, [join(ROOT, 'scripts', 'postbuild-ts.js')], { cwd: ROOT, stdio: 'pipe' })
}
