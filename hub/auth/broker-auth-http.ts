/**
 * HTTP authentication and authorization for external MQTT brokers (issue #15): the endpoints
 * EMQX 5 (HTTP authn/authz), VerneMQ (vmq_webhooks) and RabbitMQ (rabbitmq_auth_backend_http)
 * call, answered from the hub's own principals (PrincipalVerifier, the token check behind the
 * embedded broker's CONNECT) and its ACL (hub/broker/acl.ts, the very functions the embedded
 * broker calls), so the same matrix holds behind a broker the user runs.
 *
 *   POST /v1/broker-auth/emqx/authn        {clientid, username, password, peerhost} → {result, is_superuser: false}
 *   POST /v1/broker-auth/emqx/authz        {clientid, username, topic, action, qos, retain} → {result}
 *   POST /v1/broker-auth/vernemq/<hook>    auth_on_register|publish|subscribe (and _m5) → {result: "ok"} / {result: {error}}
 *   GET|POST /v1/broker-auth/rabbitmq/<check>   user|vhost|resource|topic → text `allow` / `deny`
 *
 * The endpoints are protected by a shared secret (hub config `brokerAuth.secretFile`), sent as
 * `Authorization: Bearer <secret>`, as the password of `Authorization: Basic`, or, for brokers
 * that can only be given a URL (RabbitMQ, VerneMQ), as the query parameter `key`. It is compared
 * in constant time (SHA-256 of both sides) and redacted from logged URLs (`redactBrokerSecret`).
 *
 * Rules beyond the ACL, as on the embedded broker: the client id must equal the username (the
 * principal id), so nobody takes over another principal's session; a revoked principal is
 * refused at login and in every later check; topics longer than limits.maxTopicBytes are refused.
 * Failed logins count into the hub's failed-login budget (hub/auth/failures.ts) under the peer
 * address the broker reports (EMQX `peerhost`, VerneMQ `peer_addr`); RabbitMQ's user check
 * carries no address, so its failures count under `user:<username>`: past the budget that
 * principal's logins through the broker are refused for the rest of the minute, without a check.
 *
 * Nothing is cached: every check reads the principal from the store, so a revocation holds for
 * the next login, publish or subscribe the broker asks about. (Brokers cache on their side:
 * RabbitMQ keeps topic decisions per connection, VerneMQ caches when told by cache-control, which
 * these replies never send; a revoked principal's open connection on the external broker is not
 * closed by the hub: README "External brokers: HTTP auth endpoint".)
 *
 * RabbitMQ maps MQTT topics to AMQP routing keys by turning `/` into `.` (and `+` into `*`), so
 * a `.` inside a topic level cannot be told apart from a level separator there. A device `a.b`
 * and a device `a` publishing to `a/b/...` would share routing keys, so on RabbitMQ principals
 * whose id contains a `.` (or whose sensor's device id does) are refused; other levels are read
 * with `.` as separator, which can only make a decision stricter.
 *
 * Every request is counted in edgefleet_hub_broker_auth_requests_total{broker,kind,result} and
 * every refusal is logged (throttled per reason and principal, with the suppressed count). A
 * malformed body is a refusal with status 400, never an exception.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { publishRefusal, subscribeRefusal, type Identity } from '../broker/acl.ts';
import type { HubStore } from '../store/store.ts';
import type { AuthFailureLimiter } from './failures.ts';
import { PrincipalVerifier } from './principals.ts';
import { readBody } from '../api/http.ts';

export const BrokerAuthConfigSchema = z
  .object({
    /** Serve /v1/broker-auth/... (404 when off). */
    enabled: z.boolean().default(false),
    /** File holding the shared secret the brokers send (at least 32 characters; read at start). Relative paths resolve against the config file. */
    secretFile: z.string().min(1).optional(),
  })
  .superRefine((c, ctx) => {
    if (c.enabled && !c.secretFile) ctx.addIssue({ code: 'custom', path: ['secretFile'], message: 'brokerAuth.enabled needs brokerAuth.secretFile (the shared secret the brokers send)' });
  });
export type BrokerAuthConfig = z.infer<typeof BrokerAuthConfigSchema>;

export const VERNEMQ_HOOKS = ['auth_on_register', 'auth_on_publish', 'auth_on_subscribe', 'auth_on_register_m5', 'auth_on_publish_m5', 'auth_on_subscribe_m5'] as const;
export const RABBITMQ_CHECKS = ['user', 'vhost', 'resource', 'topic'] as const;
type VerneHook = (typeof VERNEMQ_HOOKS)[number];
type RabbitCheck = (typeof RABBITMQ_CHECKS)[number];

export type BrokerEndpoint = { broker: 'emqx'; kind: 'authn' | 'authz' } | { broker: 'vernemq'; kind: VerneHook } | { broker: 'rabbitmq'; kind: RabbitCheck };

// Brokers add fields between versions: unknown keys are accepted (z.object), the ones read are checked.
const str = z.string().max(65_535);
const optStr = str.nullish().transform((v) => v ?? undefined);

export const EmqxAuthnSchema = z.object({ clientid: optStr, username: optStr, password: optStr, peerhost: optStr });
export const EmqxAuthzSchema = z.object({ clientid: optStr, username: optStr, topic: str, action: z.enum(['publish', 'subscribe']), qos: z.unknown().optional(), retain: z.unknown().optional(), peerhost: optStr });
const VerneRegisterSchema = z.object({ client_id: optStr, username: optStr, password: optStr, peer_addr: optStr, mountpoint: optStr });
const VernePublishSchema = z.object({ client_id: optStr, username: optStr, topic: str, mountpoint: optStr });
const VerneSubscribeSchema = z.object({
  client_id: optStr,
  username: optStr,
  mountpoint: optStr,
  topics: z.array(z.object({ topic: str, qos: z.number().int().min(0).max(255) })).min(1).max(1000),
});
const RabbitUserSchema = z.object({ username: str, password: optStr, client_id: optStr });
const RabbitVhostSchema = z.object({ username: str, vhost: str, ip: optStr, client_id: optStr });
const RabbitResourceSchema = z.object({ username: str, vhost: str, resource: z.enum(['exchange', 'queue', 'topic']), name: str, permission: z.enum(['configure', 'write', 'read']) });
const RabbitTopicSchema = RabbitResourceSchema.extend({ routing_key: str, 'variable_map.client_id': optStr });

/** The exchange RabbitMQ's MQTT plugin publishes to and binds on (mqtt.exchange, default amq.topic). */
const RABBIT_MQTT_EXCHANGE = 'amq.topic';

export type Decision = { allow: true } | { allow: false; reason: string; status?: number };

export interface BrokerAuthOptions {
  config: BrokerAuthConfig;
  store: Pick<HubStore, 'getCredentials'>;
  failures?: AuthFailureLimiter;
  /** Longest topic (bytes) accepted, as on the embedded broker (limits.maxTopicBytes). */
  maxTopicBytes: number;
  /** Largest request body (VerneMQ's auth_on_publish carries the payload, base64). */
  maxBodyBytes: number;
  log: Logger;
  registry: Registry;
}

/** Replaces the `key` query parameter's value in a URL meant for a log line. */
export function redactBrokerSecret(url: string | undefined): string | undefined {
  return url?.replace(/([?&]key=)[^&?#]*/g, '$1[redacted]');
}

const sha = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

class BadBody extends Error {}

/** VerneMQ subscribe: every filter with its granted qos, or 128 (135 for MQTT 5) where refused. */
type SubscribeAnswer = { topic: string; qos: number }[];

export class BrokerAuthHttp implements Component {
  readonly name = 'broker-auth';
  readonly #o: BrokerAuthOptions;
  readonly #verifier: PrincipalVerifier;
  readonly #requests: Counter<'broker' | 'kind' | 'result'>;
  readonly #throttle = new LogThrottle(5000);
  #secret: Buffer | undefined;

  constructor(opts: BrokerAuthOptions) {
    this.#o = opts;
    this.#verifier = new PrincipalVerifier(opts.store);
    this.#requests = new Counter({
      name: 'edgefleet_hub_broker_auth_requests_total',
      help: 'Requests of external brokers to /v1/broker-auth, by broker (emqx, vernemq, rabbitmq), kind (authn, authz, vhost, resource) and result (allow, deny, bad_request, unauthorized, unavailable).',
      labelNames: ['broker', 'kind', 'result'],
      registers: [opts.registry],
    });
  }

  get enabled(): boolean {
    return this.#o.config.enabled;
  }

  async start(): Promise<void> {
    const file = this.#o.config.secretFile;
    if (!this.#o.config.enabled || !file) return;
    let text: string;
    try {
      text = (await readFile(file, 'utf8')).trim();
    } catch (err) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, `brokerAuth.secretFile ${file}: ${(err as Error).message}`, { cause: err });
    }
    if (text.length < 32) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `brokerAuth.secretFile ${file}: the secret must have at least 32 characters`);
    this.#secret = sha(text);
  }

  stop(): Promise<void> {
    this.#secret = undefined;
    return Promise.resolve();
  }

  /** Answers one broker request; never throws (a failure is a refusal in the broker's format). */
  async handle(req: IncomingMessage, res: ServerResponse, ep: BrokerEndpoint): Promise<void> {
    if (!this.enabled || !this.#secret) throw new EdgefleetError(ErrorCode.NOT_FOUND, 'broker authentication is not enabled on this hub (brokerAuth.enabled)');
    const kind = metricKind(ep);
    let decision: Decision;
    let subscribeQos: SubscribeAnswer | undefined;
    let principal: string | undefined;
    try {
      // RabbitMQ's GET appends `?<params>` to a URL that may already hold `?key=`: a second `?` can only be that separator (its values are percent-encoded).
      const rawQuery = (req.url ?? '').split('?').slice(1).join('&');
      const query = new URLSearchParams(rawQuery);
      if (!this.#secretOk(req, query)) {
        await readBody(req, this.#o.maxBodyBytes).catch(() => undefined);
        decision = { allow: false, reason: 'bad broker secret', status: 401 };
      } else {
        const body = await this.#body(req, ep, query);
        const r = await this.#decide(ep, body);
        decision = r.decision;
        subscribeQos = r.qos;
        principal = r.principal;
      }
    } catch (err) {
      const e = err instanceof BadBody ? undefined : toEdgefleetError(err);
      if (e && e.code !== ErrorCode.BAD_INPUT && e.code !== ErrorCode.PAYLOAD_TOO_LARGE) this.#o.log.error({ err: e, broker: ep.broker, kind: ep.kind }, 'broker auth check failed');
      decision =
        err instanceof BadBody || e?.code === ErrorCode.BAD_INPUT
          ? { allow: false, reason: `malformed request: ${(err as Error).message.slice(0, 200)}`, status: 400 }
          : e?.code === ErrorCode.PAYLOAD_TOO_LARGE
            ? { allow: false, reason: 'body too large', status: 413 }
            : { allow: false, reason: 'unavailable', status: 503 };
    }
    const result = decision.allow ? 'allow' : decision.status === 400 || decision.status === 413 ? 'bad_request' : decision.status === 401 ? 'unauthorized' : decision.status === 503 ? 'unavailable' : 'deny';
    this.#requests.inc({ broker: ep.broker, kind, result });
    if (!decision.allow) {
      const why = decision.reason;
      this.#throttle.run(`${ep.broker}:${ep.kind}:${principal ?? ''}:${why}`, (suppressed) =>
        this.#o.log.warn({ broker: ep.broker, check: ep.kind, principal, remote: req.socket.remoteAddress, reason: why, result, suppressed }, 'broker auth refused'),
      );
    }
    reply(res, ep, decision, subscribeQos);
  }

  #secretOk(req: IncomingMessage, query: URLSearchParams): boolean {
    const secret = this.#secret;
    if (!secret) return false;
    const auth = req.headers.authorization ?? '';
    let given: string | undefined;
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    const basic = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(auth);
    if (bearer) given = bearer[1];
    else if (basic) {
      const decoded = Buffer.from(basic[1] as string, 'base64').toString('utf8');
      given = decoded.includes(':') ? decoded.slice(decoded.indexOf(':') + 1) : undefined;
    } else given = query.get('key') ?? undefined;
    return given !== undefined && timingSafeEqual(sha(given), secret);
  }

  async #body(req: IncomingMessage, ep: BrokerEndpoint, query: URLSearchParams): Promise<Record<string, unknown>> {
    if (ep.broker === 'rabbitmq') {
      const params = req.method === 'GET' ? query : new URLSearchParams((await readBody(req, this.#o.maxBodyBytes)).toString('utf8'));
      params.delete('key');
      return Object.fromEntries(params);
    }
    const text = (await readBody(req, this.#o.maxBodyBytes)).toString('utf8');
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new BadBody('not JSON');
    }
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new BadBody('not a JSON object');
    return raw as Record<string, unknown>;
  }

  async #decide(ep: BrokerEndpoint, body: Record<string, unknown>): Promise<{ decision: Decision; qos?: SubscribeAnswer; principal?: string }> {
    const parse = <S extends z.ZodType>(schema: S): z.infer<S> => {
      const r = schema.safeParse(body);
      if (!r.success) throw new BadBody(r.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
      return r.data;
    };
    switch (ep.broker) {
      case 'emqx': {
        if (ep.kind === 'authn') {
          const b = parse(EmqxAuthnSchema);
          return { decision: await this.authenticate(b.username, b.password, b.clientid, b.peerhost), principal: b.username };
        }
        const b = parse(EmqxAuthzSchema);
        return { decision: await this.authorize(b.username, b.clientid, b.action, b.topic), principal: b.username };
      }
      case 'vernemq': {
        if (ep.kind === 'auth_on_register' || ep.kind === 'auth_on_register_m5') {
          const b = parse(VerneRegisterSchema);
          return { decision: await this.authenticate(b.username, b.password, b.client_id, b.peer_addr), principal: b.username };
        }
        if (ep.kind === 'auth_on_publish' || ep.kind === 'auth_on_publish_m5') {
          const b = parse(VernePublishSchema);
          return { decision: await this.authorize(b.username, b.client_id, 'publish', b.topic), principal: b.username };
        }
        const b = parse(VerneSubscribeSchema);
        const refused = ep.kind === 'auth_on_subscribe_m5' ? 135 : 128;
        const decisions: Decision[] = [];
        for (const t of b.topics) decisions.push(await this.authorize(b.username, b.client_id, 'subscribe', t.topic));
        const denied = decisions.find((d): d is Extract<Decision, { allow: false }> => !d.allow);
        const qos = b.topics.map((t, i) => ({ topic: t.topic, qos: decisions[i]?.allow ? t.qos : refused }));
        // All allowed: a plain ok. Some refused: ok with the refused filters at qos 128 (135 for MQTT 5), as the embedded broker's SUBACK.
        return { decision: denied ? { allow: false, reason: denied.reason, status: 200 } : { allow: true }, qos: denied ? qos : undefined, principal: b.username };
      }
      case 'rabbitmq':
        return this.#rabbit(ep.kind, body, parse);
    }
  }

  async #rabbit(kind: RabbitCheck, body: Record<string, unknown>, parse: <S extends z.ZodType>(schema: S) => z.infer<S>): Promise<{ decision: Decision; principal?: string }> {
    const username = typeof body.username === 'string' ? body.username : undefined;
    if (username?.includes('.')) return { decision: { allow: false, reason: 'principal ids with a dot are ambiguous in RabbitMQ routing keys' }, principal: username };
    switch (kind) {
      case 'user': {
        const b = parse(RabbitUserSchema);
        return { decision: await this.authenticate(b.username, b.password, b.client_id, undefined), principal: b.username };
      }
      case 'vhost': {
        const b = parse(RabbitVhostSchema);
        return { decision: await this.#principal(b.username, b.client_id), principal: b.username };
      }
      case 'resource': {
        const b = parse(RabbitResourceSchema);
        const who = await this.#principal(b.username, undefined);
        if (!who.allow) return { decision: who, principal: b.username };
        // The MQTT plugin's own objects only: the exchange it publishes to (topic checks decide
        // what on), and the subscription queues named after the client id (= the username).
        const ok =
          (b.resource === 'exchange' && b.name === RABBIT_MQTT_EXCHANGE && b.permission !== 'configure') ||
          (b.resource === 'queue' && /^mqtt-subscription-(.+)qos[01]$/.exec(b.name)?.[1] === b.username);
        return { decision: ok ? { allow: true } : { allow: false, reason: `${b.resource} ${b.name.slice(0, 128)} (${b.permission}) is not an MQTT object of this principal` }, principal: b.username };
      }
      case 'topic': {
        const b = parse(RabbitTopicSchema);
        if (b.resource !== 'topic' || b.name !== RABBIT_MQTT_EXCHANGE || b.permission === 'configure') return { decision: { allow: false, reason: `topic check on ${b.name.slice(0, 128)} (${b.permission})` }, principal: b.username };
        // AMQP routing key → MQTT topic: `.` separates levels, `*` is MQTT's `+` (rabbit_mqtt_util).
        const topic = b.routing_key.replaceAll('.', '/').replaceAll('*', '+');
        const action = b.permission === 'write' ? 'publish' : 'subscribe';
        return { decision: await this.authorize(b.username, b['variable_map.client_id'], action, topic), principal: b.username };
      }
    }
  }

  /** A login: the principal's token, client id = username, not revoked, within the failed-login budget. */
  async authenticate(username: string | undefined, password: string | undefined, clientId: string | undefined, peer: string | undefined): Promise<Decision> {
    if (!username || !password) return { allow: false, reason: 'username and password required' };
    if (clientId !== undefined && clientId !== username) return { allow: false, reason: 'client id must equal the username' };
    const key = peer ? peer : `user:${username}`;
    if (this.#o.failures && !this.#o.failures.allowed(key)) return { allow: false, reason: 'too many failed logins; retry later' };
    const creds = await this.#verifier.verify(username, password);
    if (!creds) {
      this.#o.failures?.fail(key);
      return { allow: false, reason: 'bad user name or password' };
    }
    if (creds.revokedAt !== null) return { allow: false, reason: 'credentials revoked' };
    return { allow: true };
  }

  /** A publish or subscribe of an authenticated client: hub/broker/acl.ts decides, for the principal as stored now. */
  async authorize(username: string | undefined, clientId: string | undefined, action: 'publish' | 'subscribe', topic: string): Promise<Decision> {
    const who = await this.#identity(username, clientId);
    if ('allow' in who) return who;
    if (Buffer.byteLength(topic) > this.#o.maxTopicBytes) return { allow: false, reason: `topic longer than ${this.#o.maxTopicBytes} bytes` };
    const why = action === 'publish' ? publishRefusal(who, topic) : subscribeRefusal(who, topic);
    return why ? { allow: false, reason: why } : { allow: true };
  }

  async #principal(username: string | undefined, clientId: string | undefined): Promise<Decision> {
    const who = await this.#identity(username, clientId);
    return 'allow' in who ? who : { allow: true };
  }

  /** The stored, unrevoked principal `username` as an ACL identity, or why there is none. */
  async #identity(username: string | undefined, clientId: string | undefined): Promise<Identity | Extract<Decision, { allow: false }>> {
    if (!username) return { allow: false, reason: 'no username' };
    if (clientId !== undefined && clientId !== username) return { allow: false, reason: 'client id must equal the username' };
    const creds = await this.#o.store.getCredentials(username);
    if (!creds) return { allow: false, reason: 'unknown principal' };
    if (creds.revokedAt !== null) return { allow: false, reason: 'credentials revoked' };
    return { id: creds.id, kind: creds.kind, deviceId: creds.deviceId };
  }
}

function metricKind(ep: BrokerEndpoint): string {
  if (ep.broker === 'emqx') return ep.kind;
  if (ep.broker === 'vernemq') return ep.kind.startsWith('auth_on_register') ? 'authn' : 'authz';
  return ep.kind === 'user' ? 'authn' : ep.kind === 'topic' ? 'authz' : ep.kind;
}

/** The decision in the shape the broker reads. */
function reply(res: ServerResponse, ep: BrokerEndpoint, d: Decision, subscribeQos: SubscribeAnswer | undefined): void {
  const status = d.allow ? 200 : (d.status ?? 200);
  const send = (type: string, text: string): void => {
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  };
  const json = (body: unknown): void => send('application/json; charset=utf-8', JSON.stringify(body));
  switch (ep.broker) {
    case 'emqx':
      // Never a superuser: every client stays under the ACL.
      return ep.kind === 'authn' ? json({ result: d.allow ? 'allow' : 'deny', is_superuser: false }) : json({ result: d.allow ? 'allow' : 'deny' });
    case 'vernemq':
      if (subscribeQos && status === 200) {
        return json(ep.kind === 'auth_on_subscribe_m5' ? { result: 'ok', modifiers: { topics: subscribeQos } } : { result: 'ok', topics: subscribeQos });
      }
      return json(d.allow ? { result: 'ok' } : { result: { error: 'not_allowed' } });
    case 'rabbitmq':
      return send('text/plain; charset=utf-8', d.allow ? 'allow' : 'deny');
  }
}
