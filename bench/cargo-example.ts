/**
 * The engine crate's examples (crates/md-bitmap-io/examples), built with cargo for the
 * benchmarks that run the engine without Node.
 *
 * @module
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { execFileP } from './common'

/** The example `name`'s binary once built (release), or why it could not be built. */
export async function buildExample(name: string): Promise<{ binary: string } | { skipped: string }> {
  const root = path.resolve(__dirname, '..')
  try {
    await execFileP('cargo', ['build', '--release', '--quiet', '--example', name, '-p', 'md-bitmap-io'], { cwd: root })
  } catch (e) {
    return { skipped: `cargo build --example ${name} failed: ${(e as Error).message.split('\n')[0]}` }
  }
  const binary = path.join(process.env.CARGO_TARGET_DIR ? path.resolve(root, process.env.CARGO_TARGET_DIR) : path.join(root, 'target'), 'release', 'examples', name)
  return fs.existsSync(binary) ? { binary } : { skipped: `${binary} not found after cargo build` }
}
