// The published shape: ESM and CommonJS entries export the same API through package.json
// "exports", declarations exist for both, and bundlers can drop what an app does not import.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const require = createRequire(import.meta.url);
const root = fileURLToPath(new URL('..', import.meta.url));

test('import and require resolve the same API through package exports', async () => {
  const esm = await import('@aviary/client');
  const cjs = require('@aviary/client');
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  assert.equal(typeof cjs.Aviary, 'function');
  assert.ok(existsSync(`${root}dist/esm/index.d.ts`));
  assert.ok(existsSync(`${root}dist/cjs/index.d.ts`));
});

test('unused exports are tree-shaken away', async () => {
  const bundle = async (contents) => {
    const out = await build({
      stdin: { contents, resolveDir: root, loader: 'js' },
      bundle: true,
      minify: true,
      format: 'esm',
      write: false,
    });
    return out.outputFiles[0].text;
  };
  const small = await bundle("import { Backoff } from '@aviary/client'; console.log(new Backoff().next());");
  const full = await bundle("import { Aviary } from '@aviary/client'; console.log(new Aviary({ url: 'wss://x', getToken: async () => '' }));");
  assert.ok(!small.includes('/v1/connect'), 'the client is not pulled in by Backoff alone');
  assert.ok(small.length < 1_000, `Backoff alone bundles to ${small.length} bytes`);
  assert.ok(full.includes('/v1/connect'));
});
