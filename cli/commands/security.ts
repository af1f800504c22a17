/**
 * Credentials and the audit trail, over the hub's HTTP API (admin role):
 *   edgefleet token create <name> --role viewer|operator|admin | token list | token revoke <id>
 *   edgefleet enroll-token create --group <g> [--max-uses n] [--ttl 24h] [--label k=v]... [--allow-device-label k]... |
 *     enroll-token list | enroll-token revoke <id>
 *   edgefleet device revoke <id>
 *   edgefleet audit [--since 24h] [--actor a] [--action x] [--outcome ok|denied|failed] [--limit n]
 * New secrets (operator tokens, enrollment tokens) are printed once, on stdout, and never again.
 */
import { z } from 'zod';
import { HUB_OPTIONS_HELP, UsageError, runCommand, runSubcommands, table, type CliIo } from '../command.ts';
import { parseLabels } from './http-client.ts';
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

The hub's audit log, newest first: every operator action (allowed, denied or failed), every
enrollment and revocation, with who, what, when, from where and the HTTP status.

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

export function runAudit(argv: string[], io: CliIo): Promise<number> {
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
