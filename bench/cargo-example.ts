/**
 * The engine crate's examples (crates/md-bitmap-io/examples), built with cargo and run
 * for the benchmarks that drive the engine without Node.
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

/** One timed run of an example (examples/common's `run_timed`). */
export interface ExampleSample {
  /** Rounds completed in the timed part. */
  rounds: number
  seconds: number
  /** User + system CPU time of the example's process. */
  cpuSeconds: number
}

/**
 * Runs an example `binary` with `args` and reads the one line of JSON it prints
 * (`run_timed`): `counted` names its count of rounds ("writes", "cycles").
 */
export async function runExample(binary: string, args: string[], counted: string, env?: NodeJS.ProcessEnv): Promise<ExampleSample> {
  const { stdout } = await execFileP(binary, args, env ? { env: { ...process.env, ...env } } : {})
  const r = JSON.parse(stdout) as Record<string, number>
  return { rounds: r[counted], seconds: r.seconds, cpuSeconds: (r.userUs + r.systemUs) / 1e6 }
}
