/**
 * Credentials and the audit trail, over the hub's HTTP API (admin role):
 *   edgefleet token create <name> --role viewer|operator|admin | token list | token revoke <id>
 *   edgefleet enroll-token create --group <g> [--max-uses n] [--ttl 24h] [--label k=v]... [--allow-device-label k]... |
 *     enroll-token list | enroll-token revoke <id>
 *   edgefleet device revoke <id>
 *   edgefleet audit [--since 24h] [--actor a] [--action x] [--outcome ok|denied|failed] [--limit n]
 *   edgefleet audit verify [--file export.jsonl] [--against earlier.jsonl] | audit export [--out file]
 * New secrets (operator tokens, enrollment tokens) are printed once, on stdout, and never again.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { AuditChainVerifier, AuditExportHeaderSchema, ChainedAuditRowSchema, type AuditExportHeader, type AuditVerifyResult } from '../../shared/audit-chain.ts';
import { EXIT, HUB_OPTIONS_HELP, UsageError, runCommand, runSubcommands, table, type CliIo } from '../command.ts';
import { esc } from '../render.ts';
import { HubError, parseLabels, type HubTarget } from './http-client.ts';
import { parseDuration } from './rollout.ts';

const TOKEN_USAGE = `usage: edgefleet token create <name> --role viewer|operator|admin [--json]
       edgefleet token list [--json]
       edgefleet token revoke <token-id> [--json]

Operator API tokens. A viewer reads; an operator also pushes models, runs rollouts, acts on
alerts and sends feedback; an admin also manages devices, tokens, enrollment and revocation and
reads the audit log. The token is printed once. Revocation takes effect at once.

Options:
  --role <r>           viewer, operator or admin
  --json               print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

const ENROLL_USAGE = `usage: edgefleet enroll-token create --group <g> [--max-uses <n>] [--ttl <duration>] [--label k=v]... [--allow-device-label <key>]... [--json]
       edgefleet enroll-token list [--json]
       edgefleet enroll-token revoke <token-id> [--json]

Enrollment tokens let new devices register themselves into a group (zero-touch): put the token
in the agent's config (hub.enrollment.token or tokenFile) with hub.httpUrl; at its first start
the agent enrolls and keeps its own credential in <dataDir>/credentials.json. One-time by
default (--max-uses 1), valid for --ttl (default 24h, at most 30d). Printed once.
Enrolled devices get the token's labels; a device may add only the keys given with
--allow-device-label (default none), and an enrollment asking for any other label is refused.

Options:
  --group <g>          the group enrolled devices join
  --max-uses <n>       how many devices may enroll with it (default 1)
  --ttl <duration>     lifetime, e.g. 30m, 24h, 7d (default 24h)
  --label key=value    labels every enrolled device gets; repeatable
  --allow-device-label <key>
                       a label key the enrolling device may set itself; repeatable
${HUB_OPTIONS_HELP}
`;

const REVOKE_USAGE = `usage: edgefleet device revoke <id> [--json]

Revokes a device, sensor or consumer: it is disconnected at once and can never authenticate
again (MQTT or HTTP). Not undone: a replacement device is registered under a new id.

Options:
${HUB_OPTIONS_HELP}
`;

const AUDIT_USAGE = `usage: edgefleet audit [--since <duration>] [--actor <name>] [--action <a>] [--outcome ok|denied|failed] [--limit <n>] [--json]
       edgefleet audit verify [--file <export.jsonl>] [--against <earlier-export.jsonl>] [--json]
       edgefleet audit export [--out <file>]

The hub's audit log, newest first: every operator action (allowed, denied or failed), every
enrollment and revocation, with who, what, when, from where and the HTTP status. Refusals of
requests without valid credentials are folded into one auth.refused row per address per
minute, with their count.

verify checks the log's hash chain (on the hub, or an exported file offline with --file) and
prints ok or the first broken row and why: a gap in ids is a deleted row, a hash mismatch an
edited one; exit 1 when broken. --against takes an earlier export and also checks that its
newest row is still in the log unchanged, which catches a chain rewritten end to end.
export writes the whole log as JSON lines with the hashes (stdout, or --out), for auditors.

Options:
  --since <duration>   only entries from this long ago, e.g. 1h, 7d
  --actor <name>       operator token name (e.g. admin), enrollment:<id> or anonymous
  --action <a>         e.g. rollout.create, device.revoke, token.create, device.enroll
  --outcome <o>        ok, denied or failed
  --limit <n>          at most this many (default 100, at most 1000)
${HUB_OPTIONS_HELP}
`;

const OperatorTokenSchema = z.looseObject({ id: z.string(), name: z.string(), role: z.string(), createdAt: z.string(), createdBy: z.string().nullable(), revokedAt: z.string().nullable(), token: z.string().optional() });
const EnrollmentTokenSchema = z.looseObject({
  id: z.string(),
  group: z.string(),
  allowDeviceLabels: z.array(z.string()).default([]),
  maxUses: z.number(),
  uses: z.number(),
  expiresAt: z.string(),
  revokedAt: z.string().nullable(),
  usable: z.boolean(),
  token: z.string().optional(),
});
const AuditSchema = z.looseObject({
  id: z.number(),
  at: z.string(),
  actor: z.string(),
  role: z.string().nullable(),
  action: z.string(),
  target: z.string().nullable(),
  outcome: z.string(),
  status: z.number().nullable(),
  remote: z.string().nullable(),
});

function tokenCreate(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'token create', usage: TOKEN_USAGE, options: { role: { type: 'string' } }, positionals: { min: 1, what: 'a token name' } }, async ({ values, positionals, hub, show }) => {
    if (!values.role) throw new UsageError('--role is required (viewer, operator or admin)');
    const t = await (await hub()).request('POST', '/v1/tokens', OperatorTokenSchema, { name: positionals[0], role: values.role });
    show(t, () => `created ${t.role} token ${t.name} (id ${t.id}); shown once, keep it safe:\n  ${t.token ?? ''}\n`);
  });
}

function tokenList(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'token list', usage: TOKEN_USAGE }, async ({ hub, show }) => {
    const { tokens } = await (await hub()).request('GET', '/v1/tokens', z.object({ tokens: z.array(OperatorTokenSchema) }));
    show(tokens, () =>
      table(tokens, { ID: (t) => t.id, NAME: (t) => t.name, ROLE: (t) => t.role, CREATED: (t) => t.createdAt, BY: (t) => t.createdBy ?? '-', REVOKED: (t) => t.revokedAt ?? '-' }),
    );
  });
}

function tokenRevoke(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'token revoke', usage: TOKEN_USAGE, positionals: { min: 1, what: 'a token id' } }, async ({ positionals, hub, show }) => {
    const t = await (await hub()).request('POST', `/v1/tokens/${encodeURIComponent(positionals[0] ?? '')}/revoke`, OperatorTokenSchema);
    show(t, () => `revoked token ${t.name} (${t.id}) at ${t.revokedAt ?? '?'}\n`);
  });
}

function enrollCreate(argv: string[], io: CliIo): Promise<number> {
  const options = {
    group: { type: 'string' },
    'max-uses': { type: 'string' },
    ttl: { type: 'string' },
    label: { type: 'string', multiple: true },
    'allow-device-label': { type: 'string', multiple: true },
  } as const;
  return runCommand(argv, io, { name: 'enroll-token create', usage: ENROLL_USAGE, options }, async ({ values, hub, show }) => {
    if (!values.group) throw new UsageError('--group is required');
    const maxUses = values['max-uses'] === undefined ? 1 : Number(values['max-uses']);
    if (!Number.isInteger(maxUses) || maxUses < 1) throw new UsageError(`--max-uses expects a positive integer, got "${values['max-uses'] ?? ''}"`);
    const ttlSeconds = Math.round(parseDuration(values.ttl ?? '24h', '--ttl') / 1000);
    const body = { group: values.group, maxUses, ttlSeconds, labels: parseLabels(values.label ?? []), allowDeviceLabels: values['allow-device-label'] ?? [] };
    const t = await (await hub()).request('POST', '/v1/enrollment-tokens', EnrollmentTokenSchema, body);
    const deviceLabels = t.allowDeviceLabels.length ? `devices may add labels ${t.allowDeviceLabels.join(', ')}` : 'devices may add no labels';
    show(t, () => `enrollment token ${t.id} for group ${t.group}: ${t.maxUses} use(s), expires ${t.expiresAt}, ${deviceLabels}; shown once:\n  ${t.token ?? ''}\n`);
  });
}

function enrollList(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'enroll-token list', usage: ENROLL_USAGE }, async ({ hub, show }) => {
    const { tokens } = await (await hub()).request('GET', '/v1/enrollment-tokens', z.object({ tokens: z.array(EnrollmentTokenSchema) }));
    show(tokens, () =>
      table(tokens, {
        ID: (t) => t.id,
        GROUP: (t) => t.group,
        USES: (t) => `${t.uses}/${t.maxUses}`,
        'DEVICE LABELS': (t) => t.allowDeviceLabels.join(',') || '-',
        EXPIRES: (t) => t.expiresAt,
        REVOKED: (t) => t.revokedAt ?? '-',
        USABLE: (t) => (t.usable ? 'yes' : 'no'),
      }),
    );
  });
}

function enrollRevoke(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'enroll-token revoke', usage: ENROLL_USAGE, positionals: { min: 1, what: 'a token id' } }, async ({ positionals, hub, show }) => {
    const t = await (await hub()).request('POST', `/v1/enrollment-tokens/${encodeURIComponent(positionals[0] ?? '')}/revoke`, EnrollmentTokenSchema);
    show(t, () => `revoked enrollment token ${t.id} (group ${t.group}, used ${t.uses}/${t.maxUses})\n`);
  });
}

export function runToken(argv: string[], io: CliIo): Promise<number> {
  return runSubcommands(argv, io, { name: 'token', usage: TOKEN_USAGE, commands: { create: tokenCreate, list: tokenList, revoke: tokenRevoke } });
}

export function runEnrollToken(argv: string[], io: CliIo): Promise<number> {
  return runSubcommands(argv, io, { name: 'enroll-token', usage: ENROLL_USAGE, commands: { create: enrollCreate, list: enrollList, revoke: enrollRevoke } });
}

export function runDeviceRevoke(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'device revoke', usage: REVOKE_USAGE, positionals: { min: 1, what: 'a device id' } }, async ({ positionals, hub, show }) => {
    const r = await (await hub()).request('POST', `/v1/devices/${encodeURIComponent(positionals[0] ?? '')}/revoke`, z.looseObject({ id: z.string(), kind: z.string(), revokedAt: z.string() }));
    show(r, () => `revoked ${r.kind} ${r.id} at ${r.revokedAt}; it was disconnected and cannot connect again\n`);
  });
}

function auditList(argv: string[], io: CliIo): Promise<number> {
  const options = { since: { type: 'string' }, actor: { type: 'string' }, action: { type: 'string' }, outcome: { type: 'string' }, limit: { type: 'string' } } as const;
  return runCommand(argv, io, { name: 'audit', usage: AUDIT_USAGE, options }, async ({ values, hub, show }) => {
    const q = new URLSearchParams();
    if (values.since !== undefined) q.set('since', new Date(Date.now() - parseDuration(values.since, '--since')).toISOString());
    if (values.actor !== undefined) q.set('actor', values.actor);
    if (values.action !== undefined) q.set('action', values.action);
    if (values.outcome !== undefined) {
      if (!['ok', 'denied', 'failed'].includes(values.outcome)) throw new UsageError(`--outcome expects ok, denied or failed, got "${values.outcome}"`);
      q.set('outcome', values.outcome);
    }
    if (values.limit !== undefined) q.set('limit', values.limit);
    const { entries } = await (await hub()).request('GET', `/v1/audit?${q.toString()}`, z.object({ entries: z.array(AuditSchema) }));
    show(entries, () =>
      entries.length === 0
        ? 'no audit entries\n'
        : table(entries, {
            AT: (e) => e.at,
            ACTOR: (e) => e.actor,
            ROLE: (e) => e.role ?? '-',
            ACTION: (e) => e.action,
            TARGET: (e) => e.target ?? '-',
            OUTCOME: (e) => e.outcome,
            STATUS: (e) => String(e.status ?? '-'),
            FROM: (e) => e.remote ?? '-',
          }),
    );
  });
}

const VerifySchema = z.object({
  ok: z.boolean(),
  rows: z.number(),
  firstId: z.number().nullable(),
  head: z.object({ id: z.number(), hash: z.string() }).nullable(),
  start: z.string().nullable(),
  broken: z.object({ id: z.number(), reason: z.string(), message: z.string() }).optional(),
});

/** Checks an export file line by line (constant memory); its header's head must be its last row. */
async function verifyFile(file: string): Promise<{ header: AuditExportHeader; result: AuditVerifyResult }> {
  const lines = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
  const v = new AuditChainVerifier();
  let header: AuditExportHeader | undefined;
  let n = 0;
  for await (const line of lines) {
    n++;
    if (line.trim() === '') continue;
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch {
      throw new UsageError(`${file}:${n}: not JSON`);
    }
    if (!header) {
      const h = AuditExportHeaderSchema.safeParse(json);
      if (!h.success) throw new UsageError(`${file}: not an edgefleet audit export (the first line is not its header)`);
      header = h.data;
      continue;
    }
    const row = ChainedAuditRowSchema.safeParse(json);
    if (!row.success) throw new UsageError(`${file}:${n}: not an audit row`);
    v.push(row.data);
  }
  if (!header) throw new UsageError(`${file} is empty`);
  const result = v.result();
  const head = result.head;
  if (result.ok && (header.rows !== result.rows || head?.id !== header.head?.id || head?.hash !== header.head?.hash)) {
    const id = head?.id ?? 0;
    return { header, result: { ...result, ok: false, broken: { id, reason: 'head_mismatch', message: `the file holds ${result.rows} rows ending at ${id}; its header says ${header.rows} ending at ${header.head?.id ?? '-'} (rows cut off or added)` } } };
  }
  return { header, result };
}

function verifyText(r: z.infer<typeof VerifySchema>, what: string): string {
  if (r.ok) return esc`${what}: ok, ${r.rows} rows${r.firstId !== null ? ` (${r.firstId}..${r.head?.id ?? '?'}, from the ${r.start === 'checkpoint' ? 'last prune checkpoint' : 'start'})` : ''}${r.head ? `, head ${r.head.hash}` : ''}\n`;
  const b = r.broken;
  return esc`${what}: BROKEN at row ${b?.id ?? '?'} (${b?.reason ?? '?'}): ${b?.message ?? ''}; ${r.rows} rows checked\n`;
}

function auditVerify(argv: string[], io: CliIo): Promise<number> {
  const options = { file: { type: 'string' }, against: { type: 'string' } } as const;
  return runCommand(argv, io, { name: 'audit verify', usage: AUDIT_USAGE, options }, async ({ values, hub, show }) => {
    if (values.file !== undefined && values.against !== undefined) throw new UsageError('--against checks the live log; with --file there is nothing to compare against');
    let r: z.infer<typeof VerifySchema>;
    let what: string;
    if (values.file !== undefined) {
      r = (await verifyFile(values.file)).result;
      what = values.file;
    } else {
      const q = new URLSearchParams();
      if (values.against !== undefined) {
        const { header, result } = await verifyFile(values.against);
        if (!result.ok) throw new UsageError(`${values.against} does not verify itself: ${result.broken?.message ?? ''}`);
        if (header.head) {
          q.set('anchorId', String(header.head.id));
          q.set('anchorHash', header.head.hash);
        }
      }
      r = await (await hub(60_000)).request('GET', `/v1/audit/verify${q.size ? `?${q.toString()}` : ''}`, VerifySchema);
      what = 'audit log';
    }
    show(r, () => verifyText(r, what));
    return r.ok ? EXIT.OK : EXIT.FAILED;
  });
}

async function fetchExport(t: HubTarget): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(`${t.url}/v1/audit/export`, { headers: { authorization: `Bearer ${t.token}` } });
  } catch (err) {
    throw new HubError(`cannot reach the hub at ${t.url}: ${(err as Error).message}`, 0, 'UNAVAILABLE');
  }
  if (!res.ok || !res.body) {
    const body = z.object({ error: z.object({ code: z.string(), message: z.string() }) }).safeParse(await res.json().catch(() => undefined));
    throw new HubError(body.success ? body.data.error.message : `hub answered HTTP ${res.status}`, res.status, body.success ? body.data.error.code : 'INTERNAL');
  }
  return res;
}

function auditExport(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'audit export', usage: AUDIT_USAGE, options: { out: { type: 'string', short: 'o' } } }, async ({ values, target }) => {
    const res = await fetchExport(await target());
    const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
    if (values.out !== undefined) {
      await pipeline(body, createWriteStream(values.out, { mode: 0o600 }));
      io.err(`audit log exported to ${values.out}\n`);
      return;
    }
    // stdout: JSON lines are already escaped JSON (controls appear as \uXXXX), so nothing raw reaches the terminal.
    for await (const chunk of body) io.out(String(chunk));
  });
}

export function runAudit(argv: string[], io: CliIo): Promise<number> {
  return runSubcommands(argv, io, { name: 'audit', usage: AUDIT_USAGE, commands: { verify: auditVerify, export: auditExport }, fallback: auditList });
}
