/**
 * `npm run openapi`: writes docs/openapi.json, the committed copy of the hub's OpenAPI document
 * (hub/api/openapi.ts), so API changes show up in review. test/unit/openapi.test.ts fails while
 * the copy is stale. `--check` only compares (exit 1 when stale), for CI scripts.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildOpenApiDocument, formatOpenApi } from '../hub/api/openapi.ts';
import { REPO_ROOT } from './fleet/processes.ts';

const file = join(REPO_ROOT, 'docs', 'openapi.json');
const text = formatOpenApi(buildOpenApiDocument());
let current: string | undefined;
try {
  current = readFileSync(file, 'utf8');
} catch {
  current = undefined;
}
if (process.argv.includes('--check')) {
  if (current !== text) {
    console.error(`${file} is stale: run \`npm run openapi\``);
    process.exit(1);
  }
  console.log(`${file} is current`);
} else if (current === text) {
  console.log(`${file} unchanged`);
} else {
  writeFileSync(file, text);
  console.log(`wrote ${file} (${Buffer.byteLength(text)} bytes)`);
}
