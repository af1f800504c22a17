/**
 * Config loading for both services from one zod schema: typed defaults, a YAML or JSON file,
 * environment overrides derived from the schema (`<PREFIX>__HUB__URL=...` sets `hub.url`; keys
 * match case-insensitively, ignoring `_`), explicit overrides (CLI flags), every problem reported
 * at once, the result deep-frozen.
 */
import { readFileSync, statSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { EdgefleetError, ErrorCode } from './errors.ts';
import { formatIssues } from './codec.ts';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Unwraps optional/default/nullable wrappers to reach an object schema's shape, if any. */
function shapeOf(schema: unknown): Record<string, unknown> | undefined {
  let s = schema as { _zod?: { def?: { type?: string; innerType?: unknown; in?: unknown; shape?: Record<string, unknown> } } } | undefined;
  for (let i = 0; i < 10 && s?._zod?.def; i++) {
    const def = s._zod.def;
    if (def.type === 'object') return (s as unknown as { shape: Record<string, unknown> }).shape;
    if (def.innerType) s = def.innerType;
    else if (def.in) s = def.in;
    else return undefined;
  }
  return undefined;
}

const norm = (k: string): string => k.replace(/_/g, '').toLowerCase();

function parseEnvValue(raw: string): unknown {
  const t = raw.trim();
  if (/^(-?\d+(\.\d+)?|true|false|null|\[.*\]|\{.*\})$/s.test(t)) {
    try {
      return JSON.parse(t);
    } catch {
      return raw;
    }
  }
  return raw;
}

/** Environment overrides as a nested object; unknown keys are reported as problems. */
export function envOverrides(schema: z.ZodType, env: NodeJS.ProcessEnv, prefix: string): { value: Obj; problems: string[] } {
  const value: Obj = {};
  const problems: string[] = [];
  const head = `${prefix}__`;
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith(head) || raw === undefined) continue;
    const parts = name.slice(head.length).split('__');
    let shape = shapeOf(schema);
    let target = value;
    const path: string[] = [];
    let ok = true;
    for (const [i, part] of parts.entries()) {
      const key = shape ? Object.keys(shape).find((k) => norm(k) === norm(part)) : undefined;
      if (!key || !shape) {
        problems.push(`${name}: no setting ${[...path, part.toLowerCase()].join('.')}`);
        ok = false;
        break;
      }
      path.push(key);
      if (i === parts.length - 1) target[key] = parseEnvValue(raw);
      else {
        const next = isObj(target[key]) ? (target[key]) : {};
        target[key] = next;
        target = next;
        shape = shapeOf(shape[key]);
      }
    }
    if (!ok) continue;
  }
  return { value, problems };
}

export function deepMerge(base: Obj, over: Obj): Obj {
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    out[k] = isObj(v) && isObj(out[k]) ? deepMerge(out[k], v) : v;
  }
  return out;
}

export function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v as Obj)) deepFreeze(x);
  }
  return v;
}

/**
 * Largest config file read. Real configs are a few KB; the YAML parser needs ~9 s and over 1 GB
 * of heap for a 1.6 MB document (found by the fuzz suite), so a damaged or generated file this
 * large is refused with a clear error instead of stalling a service start.
 */
export const MAX_CONFIG_BYTES = 1024 * 1024;

export function readConfigFile(file: string): Obj {
  let text: string;
  try {
    const size = statSync(file).size;
    if (size > MAX_CONFIG_BYTES) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `config ${file} is ${size} bytes; the limit is ${MAX_CONFIG_BYTES}`);
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof EdgefleetError) throw err;
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `cannot read config ${file}: ${(err as Error).message}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = /\.json$/i.test(file) ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `config ${file} is not valid ${/\.json$/i.test(file) ? 'JSON' : 'YAML'}: ${(err as Error).message}`, { cause: err });
  }
  if (!isObj(raw)) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `config ${file} must hold an object`);
  return raw;
}

/** file < env < overrides; then validate once and report every problem together. */
export function loadConfig<S extends z.ZodType>(
  schema: S,
  opts: { file?: string; env?: NodeJS.ProcessEnv; envPrefix: string; overrides?: Obj },
): Readonly<z.infer<S>> {
  const fromFile = opts.file ? readConfigFile(opts.file) : {};
  const env = envOverrides(schema, opts.env ?? {}, opts.envPrefix);
  const merged = deepMerge(deepMerge(fromFile, env.value), opts.overrides ?? {});
  const parsed = schema.safeParse(merged);
  const problems = [...env.problems];
  if (!parsed.success) problems.push(...formatIssues(parsed.error).split('; '));
  if (problems.length || !parsed.success) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `invalid config${opts.file ? ` ${opts.file}` : ''}:\n  - ${problems.join('\n  - ')}`, {
      details: { problems },
    });
  }
  return deepFreeze(parsed.data);
}
