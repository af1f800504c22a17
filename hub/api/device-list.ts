/**
 * GET /v1/devices at fleet scale (issues #15, #16): the query (limit, cursor, q, group, kind,
 * status, label) parsed with zod at the boundary, the opaque cursor, and the reply page
 * `{ items, nextCursor, total }`. Paging is keyset on the principal id (HubStore.queryDevices),
 * never OFFSET: page 100 costs what page 1 costs, and principals registered while a client pages
 * do not shift the pages it has not read yet.
 */
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { GroupSchema, LabelKeySchema } from '../../shared/ids.ts';
import type { DeviceQuery } from '../store/store.ts';

export const DEVICE_PAGE_DEFAULT = 100;
export const DEVICE_PAGE_MAX = 1000;
/** Label pairs one query may require (each is one indexed lookup). */
const MAX_LABEL_FILTERS = 8;

/** `key=value`; several per parameter with commas, or the parameter repeated. */
const LabelFilterSchema = z
  .string()
  .max(2048)
  .describe('`key=value`, several separated by commas or with the parameter repeated: every pair must match');

/** The query GET /v1/devices takes; repeated parameters other than `label` are refused. */
export const DeviceListQuerySchema = z.strictObject({
  limit: z.coerce.number().int().min(1).max(DEVICE_PAGE_MAX).default(DEVICE_PAGE_DEFAULT).describe(`Page size (at most ${DEVICE_PAGE_MAX})`),
  cursor: z.string().max(512).optional().describe('The `nextCursor` of the previous page, as it was given'),
  q: z.string().max(128).optional().describe('Case-insensitive substring of the id or of a label value; empty: no search'),
  group: GroupSchema.optional(),
  kind: z.enum(['device', 'sensor', 'consumer']).optional(),
  status: z.enum(['online', 'offline', 'revoked']).optional().describe('revoked: revoked principals; online/offline: the others by presence'),
  label: z.array(LabelFilterSchema).max(MAX_LABEL_FILTERS).optional(),
});

const CursorSchema = z.strictObject({ after: z.string().min(1).max(256) });

/** The cursor that continues after `lastId`: opaque to clients (base64url of a small JSON). */
export function encodeDeviceCursor(lastId: string): string {
  return Buffer.from(JSON.stringify({ after: lastId }), 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): string {
  let parsed: unknown;
  try {
    if (!/^[A-Za-z0-9_-]+$/.test(cursor)) throw new Error('not base64url');
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    parsed = undefined;
  }
  const c = CursorSchema.safeParse(parsed);
  if (!c.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'cursor: not a cursor this hub gave out (pass the nextCursor of the previous page as it was)');
  return c.data.after;
}

function parseLabels(values: readonly string[]): [string, string][] {
  const pairs: [string, string][] = [];
  for (const part of values.flatMap((v) => v.split(','))) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (eq <= 0 || !LabelKeySchema.safeParse(key).success) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `label: expected key=value with a key of [A-Za-z0-9._/-], got "${part.slice(0, 80)}"`);
    }
    const value = part.slice(eq + 1);
    if (value.length > 256) throw new EdgefleetError(ErrorCode.BAD_INPUT, `label: the value of ${key} is longer than 256 characters`);
    pairs.push([key, value]);
  }
  if (pairs.length > MAX_LABEL_FILTERS) throw new EdgefleetError(ErrorCode.BAD_INPUT, `label: at most ${MAX_LABEL_FILTERS} pairs`);
  return pairs;
}

/** The store query for a request's query string; BAD_INPUT (400) naming each problem. */
export function parseDeviceListQuery(query: URLSearchParams): DeviceQuery {
  const raw: Record<string, unknown> = {};
  const known = Object.keys(DeviceListQuerySchema.shape);
  for (const key of new Set(query.keys())) {
    if (!known.includes(key)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `unknown parameter "${key.slice(0, 64)}" (${known.join(', ')})`);
    const values = query.getAll(key);
    if (key === 'label') raw[key] = values;
    else if (values.length > 1) throw new EdgefleetError(ErrorCode.BAD_INPUT, `${key.slice(0, 64)}: given ${values.length} times, give it once`);
    else raw[key] = values[0];
  }
  const parsed = DeviceListQuerySchema.safeParse(raw);
  if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(parsed.error));
  const q = parsed.data;
  const labels = q.label ? parseLabels(q.label) : [];
  return {
    limit: q.limit,
    ...(q.cursor === undefined ? {} : { after: decodeCursor(q.cursor) }),
    ...(q.q ? { search: q.q } : {}),
    ...(q.group === undefined ? {} : { group: q.group }),
    ...(q.kind === undefined ? {} : { kind: q.kind }),
    ...(q.status === undefined ? {} : { status: q.status }),
    ...(labels.length ? { labels } : {}),
  };
}
