// `node --import ./test/helpers/record-modules.mjs ...`: records what a process loads, one line
// each, appended to the file named by EF_RECORD_MODULES: `resolve <url>` for every module the
// ESM loader resolves (including the .ts files tsx hands on and the packages they import) and
// `dlopen <path>` for every native addon. Two independent signals, so a native module pulled in
// through CommonJS (no ESM resolve) still shows. Used by test/integration/cli-lazy.test.ts.
import { appendFileSync } from 'node:fs';
import { register } from 'node:module';

const file = process.env.EF_RECORD_MODULES;
if (!file) throw new Error('record-modules.mjs: set EF_RECORD_MODULES to the log file');

// The hooks run on the loader thread; they get the file name through `data`.
const hooks = `
import { appendFileSync } from 'node:fs';
let file;
export function initialize(data) { file = data.file; }
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(file, 'resolve ' + r.url + '\\n');
  return r;
}`;
register(`data:text/javascript,${encodeURIComponent(hooks)}`, { data: { file } });

const dlopen = process.dlopen;
process.dlopen = function recordDlopen(module, filename, ...rest) {
  appendFileSync(file, `dlopen ${filename}\n`);
  return dlopen.call(this, module, filename, ...rest);
};
