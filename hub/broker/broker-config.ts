/**
 * The hub's `broker` config section (issue #15): `embedded` (default, aedes in the hub, the
 * `mqtt` and `limits` sections apply) or `external` (the hub is a client of an existing broker,
 * hub/broker/external-bus.ts; with `dynsec.enabled` it provisions principals on Mosquitto's
 * dynamic-security plugin, hub/broker/dynsec-sync.ts). Secrets come inline or from a file
 * (`passwordFile`, `dynsec.adminPasswordFile`), read at start.
 */
import { z } from 'zod';
import { BackoffSchema } from '../../shared/backoff.ts';
import { ClientTlsSchema } from '../../shared/tls.ts';

export const BrokerConfigSchema = z
  .object({
    kind: z.enum(['embedded', 'external']).default('embedded'),
    /** `mqtt://host:port` or `mqtts://host:port` (external only). */
    url: z.string().regex(/^mqtts?:\/\/[^/]+\/?$/, 'broker.url: mqtt://host:port or mqtts://host:port').optional(),
    /** The hub's own broker user (with dynsec enabled, the hub creates it with the role it needs). */
    username: z.string().min(1).max(256).optional(),
    password: z.string().min(1).max(1024).optional(),
    passwordFile: z.string().min(1).optional(),
    /** Client ids are `<prefix>-<random>-<role>`. */
    clientIdPrefix: z.string().regex(/^[A-Za-z0-9._-]{1,32}$/).default('edgefleet-hub'),
    /** Shared-subscription group: hub workers in one group split the fleet's messages. */
    shareGroup: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/).default('edgefleet-hub'),
    /** Worker connections per hub process = messages handled at once. */
    subscribers: z.number().int().min(1).max(64).default(4),
    keepaliveSeconds: z.number().int().min(5).max(3600).default(30),
    connectTimeoutMs: z.number().int().min(500).max(120_000).default(10_000),
    /** How long start waits for the broker before the hub gives up. */
    startTimeoutMs: z.number().int().min(500).max(600_000).default(30_000),
    reconnect: BackoffSchema.prefault({}),
    tls: ClientTlsSchema.prefault({}),
    dynsec: z
      .object({
        enabled: z.boolean().default(false),
        adminUsername: z.string().min(1).max(256).optional(),
        adminPassword: z.string().min(1).max(1024).optional(),
        adminPasswordFile: z.string().min(1).optional(),
      })
      .prefault({}),
  })
  .superRefine((b, ctx) => {
    if (b.kind !== 'external') return;
    if (!b.url) ctx.addIssue({ code: 'custom', path: ['url'], message: 'broker.kind external needs broker.url' });
    if (b.password && b.passwordFile) ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'broker.password or broker.passwordFile, not both' });
    if (b.dynsec.enabled) {
      if (!b.dynsec.adminUsername) ctx.addIssue({ code: 'custom', path: ['dynsec', 'adminUsername'], message: 'broker.dynsec.enabled needs adminUsername' });
      if (!b.dynsec.adminPassword === !b.dynsec.adminPasswordFile) ctx.addIssue({ code: 'custom', path: ['dynsec', 'adminPassword'], message: 'broker.dynsec.enabled needs one of adminPassword, adminPasswordFile' });
      if (!b.username || !(b.password ?? b.passwordFile)) ctx.addIssue({ code: 'custom', path: ['username'], message: 'broker.dynsec.enabled needs the hub user (broker.username and a password) it provisions for itself' });
    }
  })
  .prefault({});
export type BrokerConfig = z.infer<typeof BrokerConfigSchema>;

/** Resolves the section's file paths with `file` (relative to the config file). */
export function resolveBrokerFiles(b: BrokerConfig, file: (f: string | undefined) => string | undefined): BrokerConfig {
  return {
    ...b,
    passwordFile: file(b.passwordFile),
    tls: { ...b.tls, caFile: file(b.tls.caFile), certFile: file(b.tls.certFile), keyFile: file(b.tls.keyFile) },
    dynsec: { ...b.dynsec, adminPasswordFile: file(b.dynsec.adminPasswordFile) },
  };
}
