/**
 * The GitHub Actions workflow (.github/workflows/ci.yml) cannot run here, so it is
 * checked as a document: valid YAML (no duplicate keys), the napi-rs template's shape
 * (a build matrix of exactly package.json's napi.targets, test jobs that need it, a
 * publish job on version tags with provenance), every step runnable as written (an
 * action pinned to a major version, or a script whose files exist), and the Node
 * versions of its test matrix those of `npm run test:platforms`.
 */
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { parseDocument } from 'yaml'

const ROOT = resolve(__dirname, '..')
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { NODE_MATRIX } = require('../scripts/platforms.js') as { NODE_MATRIX: string[] }

interface Step {
  name?: string
  uses?: string
  run?: string
  with?: Record<string, unknown>
}
interface Job {
  needs?: string | string[]
  if?: string
  permissions?: Record<string, string>
  strategy?: { matrix: Record<string, unknown[]> }
  steps: Step[]
}

function load(): { on: Record<string, unknown>; jobs: Record<string, Job>; permissions: Record<string, string> } {
  const doc = parseDocument(readFileSync(join(ROOT, '.github', 'workflows', 'ci.yml'), 'utf8'), { uniqueKeys: true, prettyErrors: true })
  if (doc.errors.length) throw new Error(doc.errors.map((e) => e.message).join('\n'))
  return doc.toJS()
}

test('ci.yml is valid YAML with no duplicate keys, and so is a broken copy rejected', (t) => {
  t.notThrows(load)
  const broken = parseDocument('jobs:\n  a: 1\n  a: 2\n', { uniqueKeys: true })
  t.true(broken.errors.length > 0, 'the parser does report duplicate keys')
})

test('the napi-rs shape: build matrix of the four targets, tests that need it, publish with provenance on tags', (t) => {
  const wf = load()
  t.deepEqual(Object.keys(wf.on).sort(), ['pull_request', 'push'])
  t.deepEqual(wf.permissions, { contents: 'read' })
  const { build, test: tests, 'test-arm64': arm64, publish } = wf.jobs
  t.deepEqual(build.strategy?.matrix.target, pkg.napi.targets, 'one build per napi target')
  t.true(build.steps.some((s) => s.run?.includes('node scripts/build-all.js')), 'build uses the repository\'s build script')
  t.true(build.steps.some((s) => s.uses?.startsWith('actions/upload-artifact@')))
  for (const job of [tests, arm64]) {
    t.is(job.needs, 'build')
    t.true(job.steps.some((s) => s.uses?.startsWith('actions/download-artifact@')))
  }
  t.deepEqual(tests.strategy?.matrix.node, NODE_MATRIX, 'the Node versions of test:platforms')
  t.true(arm64.steps.some((s) => s.run?.includes('scripts/test-platforms.js arm64')))
  t.deepEqual(publish.needs, ['test', 'test-arm64'])
  t.is(publish.if, "startsWith(github.ref, 'refs/tags/v')")
  t.is(publish.permissions?.['id-token'], 'write', 'provenance needs an OIDC token')
  const publishRun = publish.steps.map((s) => s.run ?? '').join('\n')
  t.regex(publishRun, /npm publish "\$f" --provenance --access public/)
  t.regex(publishRun, /node scripts\/release\.js pack/)
  t.regex(publishRun, /node scripts\/check-binaries\.js/)
})

test('every step is runnable as written: actions pinned to a major version, scripts that exist, npm scripts that exist', (t) => {
  const wf = load()
  let steps = 0
  for (const [name, job] of Object.entries(wf.jobs)) {
    t.true(Array.isArray(job.steps) && job.steps.length > 0, `${name} has steps`)
    for (const s of job.steps) {
      steps++
      t.true((s.uses === undefined) !== (s.run === undefined), `${name}: a step has exactly one of uses/run: ${JSON.stringify(s)}`)
      if (s.uses) t.regex(s.uses, /^[a-z0-9-]+\/[a-z0-9-]+@(v\d+|stable)$/, `${name}: ${s.uses} is pinned`)
      if (s.run) {
        for (const m of s.run.matchAll(/scripts\/[\w.-]+\.(?:js|sh)/g)) t.true(existsSync(join(ROOT, m[0])), `${name}: ${m[0]} exists`)
        for (const m of s.run.matchAll(/npm run ([\w:-]+)/g)) t.truthy(pkg.scripts[m[1]], `${name}: npm run ${m[1]} exists`)
        const opened = (s.run.match(/\$\{\{/g) ?? []).length
        t.is(opened, (s.run.match(/\}\}/g) ?? []).length, `${name}: balanced \${{ }} in ${s.run}`)
      }
    }
  }
  t.true(steps > 20)
})
