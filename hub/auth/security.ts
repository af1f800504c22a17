/**
 * Credentials that operators manage: operator API tokens with roles, per-group enrollment
 * tokens that let new devices register themselves (zero-touch), and revocation that takes
 * effect at once. Revocation marks the store row first (so no new connection or request can
 * authenticate), then drops the verification caches and tells listeners (the broker
 * disconnects a connected client), so the window between "revoked" and "out" is one event
 * loop turn, not a cache lifetime.
 *
 * Token formats: operator `<16 hex id>.<secret>` (auth/tokens.ts), enrollment
 * `enr_<16 hex id>.<secret>`; secrets are 256 random bits, stored as scrypt hashes, shown once.
 *
 * Enrollment attempts with a wrong token cost the hub a scrypt each; they count into the
 * per-address failure budget shared with MQTT and the API (auth/failures.ts).
 *
 * Labels (issue #14): an enrolled device gets the token's labels, which win; it may add only
 * the keys listed in the token's `allowDeviceLabels` (default none), so a device cannot place
 * itself in a label-targeted rollout. A request with any other label (or a token label with a
 * different value) is refused whole with BAD_INPUT naming the keys, after the token verified
 * and before a use is counted: the device's configured labels never silently differ from what
 * the hub holds, and the operator fixes either the token or the device's config.
 */
import { randomBytes } from 'node:crypto';
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/log.ts';
import { formatIssues } from '../../shared/codec.ts';
import { DeviceIdSchema, GroupSchema, LabelKeySchema, LabelsSchema } from '../../shared/ids.ts';
import { enrollmentRefusal, refusedDeviceLabels } from '../store/sqlite-security.ts';
import type { ApiTokenRecord, EnrollmentTokenRecord, HubStore, PrincipalKind } from '../store/store.ts';
import { checkFailureBudget, type AuthFailureLimiter } from './failures.ts';
import type { Operator } from './operators.ts';
import { ROLES } from './roles.ts';
import { hashToken, newApiToken, newSecret, verifyOrDummy } from './tokens.ts';


export const CreateOperatorTokenSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/, 'name: 1-64 of [A-Za-z0-9._@-]'),
  role: z.enum(ROLES as [string, ...string[]]).transform((r) => r as Operator['role']),
});

export const CreateEnrollmentTokenSchema = z
  .strictObject({
    group: GroupSchema,
    labels: LabelsSchema.default({}),
    /** Label keys an enrolling device may add (default none); the token's own labels always win. */
    allowDeviceLabels: z.array(LabelKeySchema).max(32).default([]),
    /** How many devices may register with it (1 = one-time). */
    maxUses: z.number().int().min(1).max(100_000).default(1),
    /** Lifetime in seconds (default a day, at most 30 days). */
    ttlSeconds: z.number().int().min(60).max(30 * 86_400).default(86_400),
  })
  .refine((b) => b.allowDeviceLabels.every((k) => !Object.hasOwn(b.labels, k)), {
    message: 'allowDeviceLabels: a key the token sets in labels cannot be left to the device',
    path: ['allowDeviceLabels'],
  });

export const EnrollRequestSchema = z.strictObject({
  token: z.string().min(1).max(256),
  id: DeviceIdSchema,
  labels: LabelsSchema.default({}),
});

const ENROLL_TOKEN = /^enr_([a-f0-9]{16})\.([A-Za-z0-9_-]{20,128})$/;

export interface SecurityOptions {
  store: HubStore;
  log: Logger;
  now?: () => number;
  /** Failed credential checks per address (shared with MQTT and the API): enrollment counts into it. */
  failures: AuthFailureLimiter;
  registry?: Registry;
  /** Principals on an external broker (Mosquitto dynsec, issue #15): provisioned on registration, revoked with the hub. */
  provisioning?: PrincipalProvisioning;
}

/** Creates and revokes principals on the MQTT broker that checks their logins (hub/broker/dynsec-sync.ts). */
export interface PrincipalProvisioning {
  provision(p: { id: string; kind: PrincipalKind; deviceId: string | null }, token: string): Promise<void>;
  revoke(p: { id: string; kind: PrincipalKind; deviceId: string | null }): Promise<boolean>;
}

export function operatorTokenView(t: ApiTokenRecord): Record<string, unknown> {
  return {
    id: t.id,
    name: t.name,
    role: t.role,
    createdAt: new Date(t.createdAt).toISOString(),
    createdBy: t.createdBy ?? null,
    revokedAt: t.revokedAt ? new Date(t.revokedAt).toISOString() : null,
  };
}

export function enrollmentTokenView(t: EnrollmentTokenRecord, now: number): Record<string, unknown> {
  return {
    id: t.id,
    group: t.group,
    labels: t.labels,
    allowDeviceLabels: t.allowDeviceLabels,
    maxUses: t.maxUses,
    uses: t.uses,
    expiresAt: new Date(t.expiresAt).toISOString(),
    createdAt: new Date(t.createdAt).toISOString(),
    createdBy: t.createdBy,
    revokedAt: t.revokedAt ? new Date(t.revokedAt).toISOString() : null,
    usable: enrollmentRefusal(t, now) === undefined,
  };
}

export class SecurityService {
  readonly #o: SecurityOptions;
  readonly #now: () => number;
  readonly #revoked: ((id: string) => void)[] = [];
  readonly #registering = new Set<string>();
  readonly #tokenRevoked: ((tokenId: string) => void)[] = [];
  readonly #enrollRefused: Counter<'reason'> | undefined;

  constructor(opts: SecurityOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#enrollRefused = opts.registry
      ? new Counter({
          name: 'edgefleet_hub_enrollment_refused_total',
          help: 'Enrollments refused after the request parsed: token unknown, used_up, expired or revoked; labels the token does not allow.',
          labelNames: ['reason'],
          registers: [opts.registry],
        })
      : undefined;
  }

  /** Called with the id of every revoked principal (broker disconnect, cache eviction). */
  onPrincipalRevoked(listener: (id: string) => void): void {
    this.#revoked.push(listener);
  }

  /** Called with the id of every revoked operator token (cache eviction). */
  onOperatorTokenRevoked(listener: (tokenId: string) => void): void {
    this.#tokenRevoked.push(listener);
  }

  async createOperatorToken(by: Operator, body: unknown): Promise<Record<string, unknown>> {
    const b = parse(CreateOperatorTokenSchema, body);
    const t = newApiToken();
    const rec: ApiTokenRecord = { id: t.id, name: b.name, role: b.role, token: await hashToken(t.secret), createdAt: this.#now(), createdBy: by.name };
    await this.#o.store.createApiToken(rec);
    return { ...operatorTokenView(rec), token: t.token };
  }

  async listOperatorTokens(): Promise<Record<string, unknown>[]> {
    return (await this.#o.store.listApiTokens()).map(operatorTokenView);
  }

  async revokeOperatorToken(id: string): Promise<Record<string, unknown>> {
    if (!(await this.#o.store.revokeApiToken(id, this.#now()))) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no operator token ${id}`);
    for (const l of this.#tokenRevoked) l(id);
    const rec = await this.#o.store.getApiToken(id);
    return rec ? operatorTokenView(rec) : { id };
  }

  async createEnrollmentToken(by: Operator, body: unknown): Promise<Record<string, unknown>> {
    const b = parse(CreateEnrollmentTokenSchema, body);
    const id = randomBytes(8).toString('hex');
    const secret = newSecret();
    const now = this.#now();
    const rec: EnrollmentTokenRecord = {
      id,
      group: b.group,
      labels: b.labels,
      allowDeviceLabels: [...new Set(b.allowDeviceLabels)].sort(),
      token: await hashToken(secret),
      maxUses: b.maxUses,
      uses: 0,
      expiresAt: now + b.ttlSeconds * 1000,
      createdAt: now,
      createdBy: by.name,
      revokedAt: null,
    };
    await this.#o.store.createEnrollmentToken(rec);
    return { ...enrollmentTokenView(rec, now), token: `enr_${id}.${secret}` };
  }

  async listEnrollmentTokens(): Promise<Record<string, unknown>[]> {
    const now = this.#now();
    return (await this.#o.store.listEnrollmentTokens()).map((t) => enrollmentTokenView(t, now));
  }

  async revokeEnrollmentToken(id: string): Promise<Record<string, unknown>> {
    if (!(await this.#o.store.revokeEnrollmentToken(id, this.#now()))) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no enrollment token ${id}`);
    const rec = await this.#o.store.getEnrollmentToken(id);
    return rec ? enrollmentTokenView(rec, this.#now()) : { id };
  }

  /**
   * A device registers itself with an enrollment token and gets its own credential (shown
   * once). Refusals are UNAUTHORIZED without saying which check failed (the audit log and the
   * hub log say); a taken id is CONFLICT.
   */
  async enroll(body: unknown, remote: string): Promise<{ id: string; group: string; token: string; tokenId: string }> {
    checkFailureBudget(this.#o.failures, remote);
    const b = parse(EnrollRequestSchema, body);
    const m = ENROLL_TOKEN.exec(b.token);
    const rec = m ? await this.#o.store.getEnrollmentToken(m[1] as string) : undefined;
    // Unknown ids are verified against a dummy hash, so timing does not reveal which ids exist.
    const ok = await verifyOrDummy(m ? (m[2] as string) : b.token, rec?.token);
    if (!m || !rec || !ok) throw this.#refuse(remote, 'unknown', m?.[1]);
    const early = enrollmentRefusal(rec, this.#now());
    if (early) throw this.#refuse(remote, early, rec.id);
    const refusedLabels = refusedDeviceLabels(rec, b.labels);
    if (refusedLabels.length > 0) {
      // The caller holds a valid token: say which keys, do not count a failed login.
      this.#enrollRefused?.inc({ reason: 'labels' });
      this.#o.log.warn({ remote, id: b.id, enrollmentToken: rec.id, refusedLabels }, 'enrollment refused: labels the token does not allow');
      throw new EdgefleetError(
        ErrorCode.BAD_INPUT,
        `labels not allowed by this enrollment token: ${refusedLabels.join(', ')} (the token sets ${Object.keys(rec.labels).join(', ') || 'no labels'}; a device may add ${rec.allowDeviceLabels.join(', ') || 'none'})`,
        { details: { refusedLabels, tokenId: rec.id } },
      );
    }
    const secret = newSecret();
    const out = await this.register(
      { id: b.id, kind: 'device', deviceId: null },
      secret,
      async () => this.#o.store.enrollPrincipal(rec.id, { id: b.id, labels: b.labels, token: await hashToken(secret), createdAt: this.#now() }),
      (r) => !('refused' in r),
    );
    if ('refused' in out) throw this.#refuse(remote, out.refused, rec.id);
    this.#o.log.info({ id: b.id, group: out.group, enrollmentToken: rec.id }, 'device enrolled');
    return { id: b.id, group: out.group, token: secret, tokenId: rec.id };
  }

  /**
   * Registers a principal whose token is `token` by running `create` (the store insert) and, on
   * an external broker, provisions it there first, so the broker never lacks a principal the hub
   * has: a provisioning failure stores nothing and is the caller's error (UNAVAILABLE); a failed
   * or refused insert (`stored` false) takes the broker's client away again. An id the store
   * already has is left to `create` to refuse, without touching the broker's client.
   */
  async register<T>(p: { id: string; kind: PrincipalKind; deviceId: string | null }, token: string, create: () => Promise<T>, stored: (r: T) => boolean = () => true): Promise<T> {
    const broker = this.#o.provisioning;
    if (!broker || (await this.#o.store.getCredentials(p.id))) return create();
    if (this.#registering.has(p.id)) throw new EdgefleetError(ErrorCode.CONFLICT, `${p.id} is being registered`);
    this.#registering.add(p.id);
    try {
      try {
        await broker.provision(p, token);
      } catch (err) {
        const e = toEdgefleetError(err, ErrorCode.UNAVAILABLE);
        this.#o.log.error({ err: e, id: p.id }, 'principal not provisioned on the mqtt broker; not registered');
        throw new EdgefleetError(ErrorCode.UNAVAILABLE, `${p.id} not registered: the MQTT broker could not provision it (${e.message}); retry`, { cause: e, details: { publicMessage: true } });
      }
      let ok = false;
      try {
        const r = await create();
        ok = stored(r);
        return r;
      } finally {
        if (!ok) await broker.revoke(p).catch((err: unknown) => this.#o.log.error({ err: toEdgefleetError(err), id: p.id }, 'cannot take back a broker client whose registration failed'));
      }
    } finally {
      this.#registering.delete(p.id);
    }
  }

  /**
   * Revokes a device, sensor or consumer: refused from now on, disconnected at once. On an
   * external broker the principal is revoked there too; when the broker does not confirm, the
   * hub's revocation stands and the caller gets UNAVAILABLE (the next start reconciles).
   */
  async revokePrincipal(id: string): Promise<{ id: string; kind: string; revokedAt: string }> {
    const r = await this.#o.store.revokePrincipal(id, this.#now());
    if (!r) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no device, sensor or consumer ${id}`);
    for (const l of this.#revoked) l(id);
    this.#o.log.warn({ id, kind: r.kind }, 'principal revoked');
    try {
      await this.#o.provisioning?.revoke({ id: r.id, kind: r.kind, deviceId: null });
    } catch (err) {
      const e = toEdgefleetError(err, ErrorCode.UNAVAILABLE);
      this.#o.log.error({ err: e, id }, 'revoked in the hub, not on the mqtt broker');
      throw new EdgefleetError(ErrorCode.UNAVAILABLE, `${id} is revoked in the hub, but the MQTT broker did not confirm (${e.message}): it may stay connected until the hub reconciles at its next start; retry the revocation`, { cause: e, details: { publicMessage: true } });
    }
    return { id: r.id, kind: r.kind, revokedAt: new Date(r.revokedAt).toISOString() };
  }

  #refuse(remote: string, why: string, tokenId: string | undefined): EdgefleetError {
    this.#o.failures.fail(remote);
    this.#enrollRefused?.inc({ reason: why });
    this.#o.log.warn({ remote, why, enrollmentToken: tokenId }, 'enrollment refused');
    return new EdgefleetError(ErrorCode.UNAUTHORIZED, 'enrollment token is not valid (unknown, used up, expired or revoked)', { details: { why, tokenId } });
  }
}

function parse<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  const r = schema.safeParse(body);
  if (!r.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(r.error));
  return r.data;
}
