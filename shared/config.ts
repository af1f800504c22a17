/**
 * Config loading for both services from one zod schema: typed defaults, a YAML or JSON file,
 * environment overrides derived from the schema (`<PREFIX>__HUB__URL=...` sets `hub.url`; keys
 * match case-insensitively, ignoring `_`; each value coerced by the schema's type at its path),
 * explicit overrides (CLI flags), every problem reported at once, the result deep-frozen.
 */
import { readFileSync, statSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { EdgefleetError, ErrorCode } from './errors.ts';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The parts of a zod 4 schema definition this module reads (`schema._zod.def`). */
interface Def {
  type?: string;
  innerType?: unknown;
  in?: unknown;
  options?: readonly unknown[];
  values?: readonly unknown[];
}
const defOf = (schema: unknown): Def | undefined => (schema as { _zod?: { def?: Def } } | undefined)?._zod?.def;

/** Wrappers that do not change what an environment string must be coerced to. */
const WRAPPERS = new Set(['optional', 'default', 'prefault', 'nullable', 'readonly', 'catch', 'nonoptional', 'pipe']);

/**
 * Unwraps optional/default/prefault/nullable/readonly/catch and the input side of pipes to the
 * schema that decides the type; `nullable` says whether `null` was allowed on the way.
 */
function unwrap(schema: unknown): { schema: unknown; def: Def | undefined; nullable: boolean } {
  let s = schema;
  let nullable = false;
  for (let i = 0; i < 16; i++) {
    const def = defOf(s);
    if (!def?.type || !WRAPPERS.has(def.type)) return { schema: s, def, nullable };
    if (def.type === 'nullable') nullable = true;
    s = def.type === 'pipe' ? def.in : def.innerType;
  }
  return { schema: s, def: defOf(s), nullable };
}

/** An object schema's shape (behind any wrappers), if it is one. */
function shapeOf(schema: unknown): Record<string, unknown> | undefined {
  const { schema: s, def } = unwrap(schema);
  return def?.type === 'object' ? (s as { shape: Record<string, unknown> }).shape : undefined;
}

/** A value too odd to repeat in full (it may be long); quoted and cut. */
const shown = (raw: string): string => JSON.stringify(raw.length > 40 ? `${raw.slice(0, 40)}...` : raw);

type Coerced = { ok: true; value: unknown } | { ok: false; why: string };

/**
 * Turns an environment string into the type the schema expects at its path: by the schema, not
 * by the value's looks, so `EDGEFLEET_AGENT__DEVICEID=4711` stays the string "4711" (issue #12:
 * a digits-only device id was turned into a number and the config refused). Strings stay as
 * they are (untrimmed); numbers must be finite decimals; booleans are true/false; arrays,
 * objects and records are JSON. Range and format checks are left to the schema itself.
 */
export function coerceEnvValue(schema: unknown, raw: string): Coerced {
  const { def, nullable } = unwrap(schema);
  const t = raw.trim();
  if (nullable && t === 'null') return { ok: true, value: null };
  switch (def?.type) {
    case 'string':
    case 'enum':
    case 'template_literal':
      return { ok: true, value: raw };
    case 'number': {
      // Number('') is 0 and Number('0x10') is 16: accept decimal notation only.
      const n = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(t) ? Number(t) : Number.NaN;
      return Number.isFinite(n) ? { ok: true, value: n } : { ok: false, why: `${shown(raw)} is not a number` };
    }
    case 'boolean': {
      const b = t.toLowerCase();
      return b === 'true' || b === 'false' ? { ok: true, value: b === 'true' } : { ok: false, why: `${shown(raw)} is not a boolean (true or false)` };
    }
    case 'literal': {
      const values = def.values ?? [];
      for (const v of values) {
        if (String(v) === t || v === raw) return { ok: true, value: v };
      }
      return { ok: true, value: raw }; // the schema names the allowed values
    }
    case 'union': {
      // The first option the coerced value satisfies (qos: 0 | 1), else the first coercion.
      let first: Coerced | undefined;
      for (const option of def.options ?? []) {
        const c = coerceEnvValue(option, raw);
        if (!c.ok) continue;
        if ((option as z.ZodType).safeParse(c.value).success) return c;
        first ??= c;
      }
      return first ?? { ok: false, why: `${shown(raw)} matches none of the allowed types` };
    }
    case 'array':
    case 'tuple':
    case 'set':
    case 'object':
    case 'record':
    case 'map': {
      const list = def.type === 'array' || def.type === 'tuple' || def.type === 'set';
      let v: unknown;
      try {
        v = JSON.parse(t);
      } catch {
        return { ok: false, why: `${shown(raw)} is not JSON (expected ${list ? 'an array' : 'an object'})` };
      }
      if (list ? !Array.isArray(v) : !isObj(v)) return { ok: false, why: `expected a JSON ${list ? 'array' : 'object'}` };
      return { ok: true, value: v };
    }
    default:
      // unknown, any, bigint, date...: nothing in the configs; the schema judges the string.
      return { ok: true, value: raw };
  }
}

const norm = (k: string): string => k.replace(/_/g, '').toLowerCase();

/** Where an environment variable put its value: the setting's path and the variable's name. */
export interface EnvSource {
  path: readonly string[];
  name: string;
  /** A scalar or array: everything under `path` came from the variable (objects merge with the file). */
  whole: boolean;
}

/**
 * Environment overrides as a nested object, each value coerced by the schema's type at its
 * path (coerceEnvValue). Unknown settings and values that cannot be coerced are reported as
 * problems naming the variable.
 */
export function envOverrides(schema: z.ZodType, env: NodeJS.ProcessEnv, prefix: string): { value: Obj; problems: string[]; sources: EnvSource[] } {
  const value: Obj = {};
  const problems: string[] = [];
  const sources: EnvSource[] = [];
  const head = `${prefix}__`;
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith(head) || raw === undefined) continue;
    const parts = name.slice(head.length).split('__');
    let shape = shapeOf(schema);
    let target = value;
    const path: string[] = [];
    for (const [i, part] of parts.entries()) {
      const key = shape ? Object.keys(shape).find((k) => norm(k) === norm(part)) : undefined;
      if (!key || !shape) {
        problems.push(`${name}: no setting ${[...path, part.toLowerCase()].join('.')}`);
        break;
      }
      path.push(key);
      if (i === parts.length - 1) {
        const c = coerceEnvValue(shape[key], raw);
        if (!c.ok) {
          problems.push(`${name}: ${c.why} (setting ${path.join('.')})`);
          break;
        }
        target[key] = c.value;
        sources.push({ path, name, whole: !isObj(c.value) });
      } else {
        const next = isObj(target[key]) ? target[key] : {};
        target[key] = next;
        target = next;
        shape = shapeOf(shape[key]);
      }
    }
  }
  return { value, problems, sources };
}

/** True when `obj` has a value at `path`. */
function hasPath(obj: Obj, path: readonly (string | number | symbol)[]): boolean {
  let v: unknown = obj;
  for (const k of path) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, k)) return false;
    v = (v as Record<string | number | symbol, unknown>)[k];
  }
  return v !== undefined;
}

/**
 * Schema problems as text, each one whose value came from an environment variable naming it:
 * `http.port: Too big: expected number to be <=65535 (from EDGEFLEET_AGENT__HTTP__PORT)`.
 */
function schemaProblems(error: z.ZodError, sources: readonly EnvSource[], overrides: Obj): string[] {
  return error.issues.map((issue) => {
    // The shape of codec.ts formatIssues, one issue at a time.
    const text = `${issue.path.length ? issue.path.map(String).join('.') : '(root)'}: ${issue.message}`;
    const from = sources.find(
      (s) => s.path.length <= issue.path.length && s.path.every((k, i) => issue.path[i] === k) && (s.whole || s.path.length === issue.path.length) && !hasPath(overrides, s.path),
    );
    return from ? `${text} (from ${from.name})` : text;
  });
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
  const overrides = opts.overrides ?? {};
  const merged = deepMerge(deepMerge(fromFile, env.value), overrides);
  const parsed = schema.safeParse(merged);
  const problems = [...env.problems];
  if (!parsed.success) problems.push(...schemaProblems(parsed.error, env.sources, overrides));
  if (problems.length || !parsed.success) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `invalid config${opts.file ? ` ${opts.file}` : ''}:\n  - ${problems.join('\n  - ')}`, {
      details: { problems },
    });
  }
  return deepFreeze(parsed.data);
}
