#!/usr/bin/env node
// The md-bitmap command: a thin entry over the compiled CLI in dist/cli (built by
// `npm run build:ts`; a fresh clone builds it during `npm install`).
'use strict'
let cli
try {
  cli = require('../dist/cli/main.js')
} catch (e) {
  if (e && e.code === 'MODULE_NOT_FOUND' && String(e.message).includes('dist/cli/main')) {
    process.stderr.write('md-bitmap: ENOTBUILT: the compiled CLI (dist/cli) is missing; run `npm run build` in the md-bitmap package\n')
    process.exit(1)
  }
  throw e
}
cli.run()
