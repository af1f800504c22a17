/**
 * `edgefleet rollout create|list|status|pause|resume|abort|approve|watch` and
 * `edgefleet devices history <id>`: staged rollouts from the command line, over the hub's HTTP
 * API (hub/api/server.ts). Flags map one to one onto the POST /v1/rollouts body; the hub
 * validates it again and fills the defaults, so this file only parses what the shell gives it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { EXIT, HUB_OPTIONS_HELP, UsageError, exitCodeOf, parseRef, runCommand, runSubcommands, table, type CliIo } from '../command.ts';
import { Progress, bar, progressMode } from '../progress.ts';
import type { HubClient } from './http-client.ts';
import { esc } from '../render.ts';

const USAGE = `usage: edgefleet rollout create <name>@<version> --target <selector> [options]
       edgefleet rollout list [--json]
       edgefleet rollout status <id> [--json]
       edgefleet rollout pause|resume|abort|approve <id> [--json]
       edgefleet rollout watch <id> [--interval 2s] [--timeout <duration>] [--progress] [--json]

create   starts a staged rollout of a released model to the devices the selector matches
         (devices registered later that match are included too).
status   state, waves, device counts and behaviour gate results.
approve  lets the next wave start (rollouts created with --approval each-wave).
watch    polls the rollout until it ends, drawing wave progress on stderr (a terminal, or
         --progress for a line per change), then prints its status. Exit 0 when it completed,
         1 when it was rolled back or aborted (or --timeout passed), 3 when the hub stayed
         unreachable.

Selector (--target, repeatable; all given must match):
  devices=a,b,c        these device ids
  group=line-1         devices of a group
  labels=site=x,line=3 devices with all these labels

Options for create (defaults in brackets):
  --waves <list>        cumulative wave sizes, counts or percentages [1,10%,50%,100%]
  --bake <duration>     observation time after each wave, e.g. 90s, 10m, 1h [10m]
  --success <fraction>  share of a wave's reporting devices that must succeed [0.9]
  --abort <fraction>    failed/attempted over the rollout that stops it [0.2]
  --min-sample <n>      devices attempted before the abort threshold applies [5]
  --max-concurrent <n>  devices installing at once [50]
  --on-breach <policy>  rollback | pause [rollback]
  --approval <mode>     none | each-wave [none]
  --probation <duration> agent-side probation after activation [agent default]
  --with <name>@<version> another release installed with this one as one unit on each
                        device (a chain's stages whose interface changed together), repeatable
  --json                print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

const HISTORY_USAGE = `usage: edgefleet devices history <id> [--json]
       edgefleet device history <id> [--json]

The device's append-only model history: assigned, command sent, installed, rejected,
rolled back, probation passed, with times and details.

Options:
  --json               print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

const CountsSchema = z.looseObject({ pending: z.number(), dispatched: z.number(), succeeded: z.number(), failed: z.number(), rolled_back: z.number(), total: z.number() });
const GateSchema = z.looseObject({
  wave: z.number(),
  at: z.number(),
  verdict: z.string(),
  action: z.string(),
  baseline: z.string(),
  samples: z.object({ candidate: z.number(), baseline: z.number() }),
  breaches: z.array(z.looseObject({ metric: z.string(), detail: z.string() })),
  /** The output gate (hub/rollouts/output-gate.ts); absent for classifiers and older hubs. */
  output: z.looseObject({ verdict: z.string(), detail: z.string() }).optional(),
});
const StatusSchema = z.looseObject({
  id: z.string(),
  model: z.string(),
  version: z.string(),
  /** Releases installed with model@version as one unit; absent from older hubs. */
  with: z.array(z.object({ model: z.string(), version: z.string() })).optional(),
  state: z.string(),
  phase: z.string(),
  reason: z.string().nullable(),
  currentWave: z.number(),
  waves: z.array(z.looseObject({ index: z.number(), cumulative: z.number(), devices: z.number(), status: z.string(), counts: CountsSchema })),
  counts: CountsSchema,
  bake: z.object({ startedAt: z.string().nullable(), until: z.string().nullable(), extensions: z.number() }),
  gates: z.array(GateSchema),
  createdAt: z.string(),
  devices: z.array(z.looseObject({ id: z.string(), wave: z.number(), state: z.string(), detail: z.string().nullable() })).optional(),
});
type Status = z.infer<typeof StatusSchema>;
const ListSchema = z.object({ rollouts: z.array(StatusSchema) });
const HistorySchema = z.object({
  device: z.string(),
  history: z.array(z.looseObject({ at: z.string(), event: z.string(), name: z.string().optional(), version: z.string().optional(), details: z.record(z.string(), z.unknown()) })),
});

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `90s`, `10m`, `1h`, `500ms`, or plain milliseconds. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${flag} expects a duration like 90s, 10m or 1h, got "${text}"`);
  return Math.round(Number(m[1]) * (UNITS[m[2] ?? 'ms'] ?? 1));
}

function parseNumber(text: string, flag: string, integer = false): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new UsageError(`${flag} expects ${integer ? 'an integer' : 'a number'}, got "${text}"`);
  return n;
}

/** `devices=a,b` | `group=g` | `labels=k=v,k2=v2`, merged over repeated --target flags. */
export function parseTarget(values: readonly string[]): { devices?: string[]; group?: string; labels?: Record<string, string> } {
  if (values.length === 0) throw new UsageError('--target <selector> is required');
  const t: { devices?: string[]; group?: string; labels?: Record<string, string> } = {};
  for (const v of values) {
    const i = v.indexOf('=');
    const [kind, rest] = i > 0 ? [v.slice(0, i), v.slice(i + 1)] : [v, ''];
    if (rest === '') throw new UsageError(`--target expects devices=..., group=... or labels=..., got "${v}"`);
    if (kind === 'devices') t.devices = [...(t.devices ?? []), ...rest.split(',').filter(Boolean)];
    else if (kind === 'group') t.group = rest;
    else if (kind === 'labels') {
      for (const pair of rest.split(',')) {
        const j = pair.indexOf('=');
        if (j <= 0) throw new UsageError(`labels expects key=value pairs, got "${pair}"`);
        t.labels = { ...(t.labels ?? {}), [pair.slice(0, j)]: pair.slice(j + 1) };
      }
    } else throw new UsageError(`unknown selector "${kind}" (devices, group or labels)`);
  }
  return t;
}

export function parseWaves(text: string): (number | string)[] {
  return text.split(',').map((w) => {
    const s = w.trim();
    if (/^\d+(\.\d+)?%$/.test(s)) return s;
    if (/^\d+$/.test(s)) return Number(s);
    throw new UsageError(`--waves expects counts or percentages like 1,10%,50%,100%, got "${w}"`);
  });
}

interface CreateFlags {
  target?: string[];
  waves?: string;
  bake?: string;
  success?: string;
  abort?: string;
  'min-sample'?: string;
  'max-concurrent'?: string;
  'on-breach'?: string;
  approval?: string;
  probation?: string;
  with?: string[];
}

/** The POST /v1/rollouts body for `rollout create`. */
export function createBody(ref: string | undefined, f: CreateFlags): Record<string, unknown> {
  const { name, version } = parseRef(ref);
  const body: Record<string, unknown> = { model: name, version, target: parseTarget(f.target ?? []) };
  if (f.waves !== undefined) body.waves = parseWaves(f.waves);
  if (f.bake !== undefined) body.bakeMs = parseDuration(f.bake, '--bake');
  if (f.success !== undefined) body.successThreshold = parseNumber(f.success, '--success');
  if (f.abort !== undefined) body.abortThreshold = parseNumber(f.abort, '--abort');
  if (f['min-sample'] !== undefined) body.minSample = parseNumber(f['min-sample'], '--min-sample', true);
  if (f['max-concurrent'] !== undefined) body.maxConcurrent = parseNumber(f['max-concurrent'], '--max-concurrent', true);
  if (f['on-breach'] !== undefined) body.onBreach = f['on-breach'];
  if (f.approval !== undefined) body.approval = f.approval;
  if (f.probation !== undefined) body.probationMs = parseDuration(f.probation, '--probation');
  if (f.with?.length) {
    body.with = f.with.map((w) => {
      const r = parseRef(w, '<name>@<version> after --with');
      return { model: r.name, version: r.version };
    });
  }
  return body;
}

const countsText = (c: Status['counts']): string =>
  `${c.succeeded}/${c.total} ok${c.failed ? `, ${c.failed} failed` : ''}${c.rolled_back ? `, ${c.rolled_back} rolled back` : ''}${c.dispatched ? `, ${c.dispatched} installing` : ''}${c.pending ? `, ${c.pending} pending` : ''}`;

export function formatList(rollouts: Status[]): string {
  return table(rollouts, {
    ID: (r) => r.id,
    MODEL: (r) => `${r.model}@${r.version}${r.with?.length ? ` +${r.with.length}` : ''}`,
    STATE: (r) => r.state,
    PHASE: (r) => r.phase,
    WAVE: (r) => `${r.currentWave + 1}/${r.waves.length}`,
    DEVICES: (r) => countsText(r.counts),
    CREATED: (r) => r.createdAt,
  });
}

export function formatStatus(s: Status): string {
  const lines = [
    esc`${s.id}: ${s.model}@${s.version} ${s.state}${s.phase !== 'ended' && s.phase !== s.state ? ` (${s.phase})` : ''}${s.reason ? ` — ${s.reason}` : ''}`,
    ...(s.with?.length ? [esc`  with      ${s.with.map((w) => `${w.model}@${w.version}`).join(', ')} (installed as one unit)`] : []),
    `  devices   ${countsText(s.counts)}`,
    ...s.waves.map((w) => `  wave ${w.index + 1}    ${w.status.padEnd(7)} ${w.devices} device(s), cumulative ${w.cumulative}: ${countsText(w.counts)}`),
    ...(s.bake.until ? [`  bake      until ${s.bake.until}${s.bake.extensions ? ` (extended ${s.bake.extensions}×)` : ''}`] : []),
    ...s.gates.flatMap((g) => [
      esc`  gate      wave ${g.wave + 1}: ${g.verdict} → ${g.action} (${g.samples.candidate} vs ${g.samples.baseline} inferences, baseline ${g.baseline})${g.breaches.length ? `: ${g.breaches.map((b) => b.detail).join('; ')}` : ''}`,
      ...(g.output ? [esc`  output    wave ${g.wave + 1}: ${g.output.verdict}: ${g.output.detail}`] : []),
    ]),
  ];
  const troubled = (s.devices ?? []).filter((d) => d.state === 'failed' || d.state === 'rolled_back');
  for (const d of troubled) lines.push(esc`  ${d.state.padEnd(9)} ${d.id}${d.detail ? `: ${d.detail}` : ''}`);
  return `${lines.join('\n')}\n`;
}

const CREATE_OPTIONS = {
  target: { type: 'string', multiple: true },
  with: { type: 'string', multiple: true },
  waves: { type: 'string' },
  bake: { type: 'string' },
  success: { type: 'string' },
  abort: { type: 'string' },
  'min-sample': { type: 'string' },
  'max-concurrent': { type: 'string' },
  'on-breach': { type: 'string' },
  approval: { type: 'string' },
  probation: { type: 'string' },
} as const;

function create(argv: string[], io: CliIo): Promise<number> {
  const spec = { name: 'rollout create', usage: USAGE, options: CREATE_OPTIONS, positionals: { min: 1, what: '<name>@<version>' } } as const;
  return runCommand(argv, io, spec, async ({ values, positionals, hub, show }) => {
    const body = createBody(positionals[0], values);
    const s = await (await hub()).request('POST', '/v1/rollouts', StatusSchema, body);
    show(s, () => formatStatus(s));
  });
}

function list(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'rollout list', usage: USAGE }, async ({ hub, show }) => {
    const { rollouts } = await (await hub()).request('GET', '/v1/rollouts', ListSchema);
    show(rollouts, () => (rollouts.length === 0 ? 'no rollouts (start one with: edgefleet rollout create <name>@<version> --target group=<g>)\n' : formatList(rollouts)));
  });
}

/** `status <id>` (GET) and the actions on one rollout (POST .../<action>). */
function one(sub: 'status' | 'pause' | 'resume' | 'abort' | 'approve'): (argv: string[], io: CliIo) => Promise<number> {
  return (argv, io) =>
    runCommand(argv, io, { name: `rollout ${sub}`, usage: USAGE, positionals: { min: 1, what: 'a rollout id' } }, async ({ positionals, hub, show }) => {
      const client = await hub();
      const path = `/v1/rollouts/${encodeURIComponent(positionals[0] ?? '')}`;
      const s = sub === 'status' ? await client.request('GET', path, StatusSchema) : await client.request('POST', `${path}/${sub}`, StatusSchema);
      show(s, () => formatStatus(s));
    });
}

/** One line for a rollout in progress: wave i of n, devices done of total, phase, last gate. */
export function watchLine(s: Status): string {
  const c = s.counts;
  const done = c.succeeded + c.failed + c.rolled_back;
  const gate = s.gates.at(-1);
  const phase = s.phase === 'baking' && s.bake.until ? `baking until ${s.bake.until.slice(11, 19)}` : s.phase === 'ended' ? s.state : s.phase.replace('_', ' ');
  return [
    `${s.id} wave ${Math.min(s.currentWave + 1, s.waves.length)}/${s.waves.length} ${phase}`,
    `${bar(c.total ? done / c.total : 0, 16)} ${done}/${c.total} devices done${c.failed + c.rolled_back ? ` (${c.failed} failed, ${c.rolled_back} rolled back)` : ''}${c.dispatched ? `, ${c.dispatched} installing` : ''}`,
    ...(gate ? [`gate wave ${gate.wave + 1}: ${gate.verdict} → ${gate.action}`] : []),
  ].join('  ');
}

const ENDED = new Set(['completed', 'aborted', 'rolled_back']);
/** Polls that may fail in a row (hub restarting, a network blip) before watch gives up with exit 3. */
const UNREACHABLE_POLLS = 5;

async function poll(client: HubClient, path: string, misses: { n: number }): Promise<Status | undefined> {
  try {
    const s = await client.request('GET', path, StatusSchema);
    misses.n = 0;
    return s;
  } catch (err) {
    if (exitCodeOf(err) !== EXIT.UNREACHABLE || ++misses.n >= UNREACHABLE_POLLS) throw err;
    return undefined;
  }
}

function watch(argv: string[], io: CliIo): Promise<number> {
  const options = { interval: { type: 'string' }, timeout: { type: 'string' }, progress: { type: 'boolean' } } as const;
  return runCommand(argv, io, { name: 'rollout watch', usage: USAGE, options, positionals: { min: 1, what: 'a rollout id' } }, async ({ values, positionals, hub, show }) => {
    const intervalMs = parseDuration(values.interval ?? '2s', '--interval');
    if (intervalMs < 100) throw new UsageError('--interval must be at least 100ms');
    const deadline = values.timeout === undefined ? Infinity : Date.now() + parseDuration(values.timeout, '--timeout');
    const client = await hub();
    const path = `/v1/rollouts/${encodeURIComponent(positionals[0] ?? '')}`;
    const progress = new Progress(io, progressMode(io, values));
    const misses = { n: 0 };
    let milestone = '';
    for (;;) {
      const s = await poll(client, path, misses);
      if (s) {
        // A step per change of state, phase, wave or gate count; the live line for device counts.
        const key = `${s.state}/${s.phase}/${s.currentWave}/${s.gates.length}`;
        if (key !== milestone) progress.step(`${new Date().toISOString().slice(11, 19)} ${watchLine(s)}`);
        else progress.update(watchLine(s));
        milestone = key;
        if (ENDED.has(s.state)) {
          progress.done();
          show(s, () => formatStatus(s));
          return s.state === 'completed' ? EXIT.OK : EXIT.FAILED;
        }
      } else progress.update(`hub unreachable, retrying (${misses.n}/${UNREACHABLE_POLLS})`);
      if (Date.now() + intervalMs > deadline) {
        progress.done();
        throw new Error(`rollout ${positionals[0]} is still ${s?.state ?? 'not ended'} after --timeout ${values.timeout}`);
      }
      await sleep(intervalMs);
    }
  });
}

export function run(argv: string[], io: CliIo): Promise<number> {
  return runSubcommands(argv, io, {
    name: 'rollout',
    usage: USAGE,
    commands: { create, list, status: one('status'), pause: one('pause'), resume: one('resume'), abort: one('abort'), approve: one('approve'), watch },
  });
}

function formatHistory(history: z.infer<typeof HistorySchema>['history']): string {
  const detail = (d: Record<string, unknown>): string =>
    Object.entries(d)
      .filter(([, v]) => v !== null && typeof v !== 'object')
      .map(([k, v]) => `${k}=${String(v as string | number | boolean)}`)
      .join(' ');
  return table(history, { TIME: (e) => e.at, EVENT: (e) => e.event, MODEL: (e) => (e.name ? `${e.name}@${e.version ?? '?'}` : '-'), DETAILS: (e) => detail(e.details) });
}

/** `edgefleet devices history <id> [--json]` (also `device history`). */
export function runHistory(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'devices history', usage: HISTORY_USAGE, positionals: { min: 1, what: 'a device id' } }, async ({ positionals, hub, show }) => {
    const id = positionals[0] ?? '';
    const h = await (await hub()).request('GET', `/v1/devices/${encodeURIComponent(id)}/history`, HistorySchema);
    show(h.history, () => (h.history.length === 0 ? `no model history for ${id}\n` : formatHistory(h.history)));
  });
}
