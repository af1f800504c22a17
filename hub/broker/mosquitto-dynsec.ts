/**
 * Provisions the fleet's principals into an existing Mosquitto 2 broker through its
 * dynamic-security plugin (issue #15, `broker: { kind: external }`): one dynsec client per
 * device, sensor and consumer (username = client id = principal id, password = its token) and
 * roles whose ACLs express hub/broker/acl.ts's matrix, so the same rules hold on Mosquitto as on
 * the embedded broker. It speaks the plugin's control API over MQTT: JSON commands to
 * `$CONTROL/dynamic-security/v1`, replies on `.../response`, matched by correlationData.
 *
 * Roles are per principal for devices and sensors (`edgefleet-device-<id>`,
 * `edgefleet-sensor-<id>`) with the ids written into the topics: Mosquitto 2.0's dynsec does not
 * substitute `%c`/`%u` in ACL topics (checked on 2.0.11: a `x/%c/#` subscribePattern refused
 * `x/<clientid>/#`), and a sensor's topics name its device, not itself, anyway. Consumers share
 * one role (`edgefleet-consumer`): their rules name no id.
 *
 * Where MQTT topic patterns cannot say what acl.ts says, the Mosquitto rules are narrower, never
 * wider: a sensor's `in/` topics are at most IN_DEPTH levels deep, and a consumer's feedback
 * device level is refused only for `$hub` and the empty level (acl.ts also checks the device id
 * syntax, which no ACL topic can).
 */
import { randomUUID } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { z } from 'zod';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/log.ts';
import { DeviceIdSchema, TOPIC_ROOT } from '../../shared/protocol.ts';
import type { PrincipalKind } from '../store/store.ts';
import { HUB_ALERTS_TOPIC } from './acl.ts';

export const DYNSEC_COMMAND_TOPIC = '$CONTROL/dynamic-security/v1';
export const DYNSEC_RESPONSE_TOPIC = '$CONTROL/dynamic-security/v1/response';
export const CONSUMER_ROLE = 'edgefleet-consumer';
/** Deepest `in/<l1>/.../<lN>` a sensor may publish to (the agent uses `in/<input>[/<id>]`). */
export const IN_DEPTH = 8;

export type DynsecAclType =
  | 'publishClientSend'
  | 'publishClientReceive'
  | 'subscribeLiteral'
  | 'subscribePattern'
  | 'unsubscribeLiteral'
  | 'unsubscribePattern';

export interface DynsecAcl {
  acltype: DynsecAclType;
  topic: string;
  /** Higher first: a deny above the allow it carves a hole into. */
  priority: number;
  allow: boolean;
}

export interface RoleSpec {
  rolename: string;
  acls: DynsecAcl[];
}

export interface DynsecPrincipal {
  id: string;
  kind: PrincipalKind;
  /** For sensors: the device whose `in/` topics they feed. */
  deviceId: string | null;
  /** The principal's token: the broker checks it as the MQTT password. */
  password: string;
}

const DENY = 10;
const ALLOW = 5;
const FLOOR = 0;
const acl = (acltype: DynsecAclType, topic: string, priority: number, allow: boolean): DynsecAcl => ({ acltype, topic, priority, allow });

/** Everything a client may not do unless a rule above says so (the broker's defaults may differ). */
function floor(): DynsecAcl[] {
  return [acl('publishClientSend', '#', FLOOR, false), acl('publishClientReceive', '#', FLOOR, false), acl('subscribePattern', '#', FLOOR, false)];
}

export function roleName(p: { id: string; kind: PrincipalKind }): string {
  return p.kind === 'consumer' ? CONSUMER_ROLE : `edgefleet-${p.kind}-${p.id}`;
}

/** The role that expresses acl.ts for one principal (consumers: the shared role). */
export function roleFor(p: { id: string; kind: PrincipalKind; deviceId: string | null }): RoleSpec {
  if (p.kind === 'consumer') {
    const out = `${TOPIC_ROOT}/+/out/#`;
    return {
      rolename: CONSUMER_ROLE,
      acls: [
        acl('publishClientSend', `${TOPIC_ROOT}/$hub/feedback`, DENY, false),
        acl('publishClientSend', `${TOPIC_ROOT}//feedback`, DENY, false),
        acl('publishClientSend', `${TOPIC_ROOT}/+/feedback`, ALLOW, true),
        acl('subscribePattern', out, ALLOW, true),
        acl('subscribeLiteral', HUB_ALERTS_TOPIC, ALLOW, true),
        acl('publishClientReceive', out, ALLOW, true),
        acl('publishClientReceive', HUB_ALERTS_TOPIC, ALLOW, true),
        ...floor(),
      ],
    };
  }
  if (p.kind === 'device') {
    const own = `${TOPIC_ROOT}/${p.id}`;
    return {
      rolename: roleName(p),
      acls: [
        // Only the hub publishes a device's acks and commands; the bare `<root>/<id>` is outside the tree.
        acl('publishClientSend', `${own}/ack`, DENY, false),
        acl('publishClientSend', `${own}/cmd`, DENY, false),
        acl('publishClientSend', own, DENY, false),
        acl('publishClientSend', `${own}/#`, ALLOW, true),
        acl('subscribeLiteral', own, DENY, false),
        acl('subscribePattern', `${own}/#`, ALLOW, true),
        acl('publishClientReceive', `${own}/#`, ALLOW, true),
        ...floor(),
      ],
    };
  }
  if (!p.deviceId) throw new EdgefleetError(ErrorCode.BAD_INPUT, `sensor ${p.id} has no device`);
  const dev = `${TOPIC_ROOT}/${p.deviceId}`;
  // `in/#` also matches `in` itself and empty levels, which acl.ts refuses: deny those, and depth
  // past IN_DEPTH (a `+/.../+/#` pattern per empty position cannot be written for any depth).
  const emptyAt = Array.from({ length: IN_DEPTH }, (_, k) => acl('publishClientSend', `${dev}/in/${'+/'.repeat(k)}/#`, DENY, false));
  return {
    rolename: roleName(p),
    acls: [
      acl('publishClientSend', `${dev}/in`, DENY, false),
      ...emptyAt,
      acl('publishClientSend', `${dev}/in/${'+/'.repeat(IN_DEPTH + 1)}#`, DENY, false),
      acl('publishClientSend', `${dev}/in/#`, ALLOW, true),
      acl('publishClientSend', `${dev}/feedback`, ALLOW, true),
      ...floor(),
    ],
  };
}

/** The hub's own client: the whole protocol tree (also through shared subscriptions), nothing else. */
export const HUB_ROLE: RoleSpec = {
  rolename: 'edgefleet-hub',
  acls: [
    acl('publishClientSend', `${TOPIC_ROOT}/#`, ALLOW, true),
    acl('subscribePattern', `${TOPIC_ROOT}/#`, ALLOW, true),
    // Hub workers subscribe `$share/<group>/<filter>`; 2.0.11 checks the whole filter, prefix included.
    acl('subscribePattern', `$share/+/${TOPIC_ROOT}/#`, ALLOW, true),
    acl('publishClientReceive', `${TOPIC_ROOT}/#`, ALLOW, true),
    ...floor(),
  ],
};

const PrincipalSchema = z
  .object({
    id: DeviceIdSchema,
    kind: z.enum(['device', 'sensor', 'consumer']),
    deviceId: DeviceIdSchema.nullable(),
    password: z.string().min(1).max(1024),
  })
  .refine((p) => (p.kind === 'sensor') === (p.deviceId !== null), { message: 'a sensor, and only a sensor, names its device', path: ['deviceId'] });

const AclSchema = z.object({
  acltype: z.string(),
  topic: z.string(),
  priority: z.number().int().optional(),
  allow: z.boolean(),
});
const ResponseSchema = z.object({
  command: z.string(),
  correlationData: z.string().optional(),
  error: z.string().optional(),
  data: z.unknown().optional(),
});
const ResponsesSchema = z.object({ responses: z.array(ResponseSchema) });
type Response = z.infer<typeof ResponseSchema>;
const RoleReplySchema = z.object({ role: z.object({ rolename: z.string(), acls: z.array(AclSchema).default([]) }) });
const ClientReplySchema = z.object({
  client: z.object({
    username: z.string(),
    clientid: z.string().optional(),
    disabled: z.boolean().optional(),
    roles: z.array(z.object({ rolename: z.string(), priority: z.number().optional() })).default([]),
  }),
});
export type DynsecClient = z.infer<typeof ClientReplySchema>['client'];

export interface DynsecCommand {
  command: string;
  [field: string]: unknown;
}

export interface DynsecProvisionerOptions {
  /** The broker, e.g. `mqtt://127.0.0.1:1883` or `mqtts://...`. */
  url: string;
  /** A dynsec admin client (one with the admin role `mosquitto_ctrl dynsec init` creates). */
  username: string;
  password: string;
  log: Logger;
  /** Per command round trip and for the connect. */
  timeoutMs?: number;
  /** Extra mqtt.js options (TLS: ca, cert, key). */
  mqtt?: mqtt.IClientOptions;
}

interface Pending {
  resolve: (r: Response) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

const NOT_FOUND = /not found/i;

export class DynsecProvisioner {
  readonly name = 'dynsec-provisioner';
  readonly #o: DynsecProvisionerOptions;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #pending = new Map<string, Pending>();
  #client: MqttClient | undefined;
  #ready: Promise<void> | undefined;

  constructor(o: DynsecProvisionerOptions) {
    this.#o = o;
    this.#log = o.log.child({ component: 'dynsec' });
    this.#timeoutMs = o.timeoutMs ?? 5000;
  }

  /** Connects as the dynsec admin and creates the shared consumer role. */
  async start(signal: AbortSignal): Promise<void> {
    if (this.#client) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'dynsec provisioner already started');
    const client = mqtt.connect(this.#o.url, {
      protocolVersion: 5,
      // A random id: two hubs (or a restart racing the old session) must not kick each other (mqtt.js #1585).
      clientId: `edgefleet-hub-dynsec-${randomUUID().slice(0, 8)}`,
      username: this.#o.username,
      password: this.#o.password,
      clean: true,
      connectTimeout: this.#timeoutMs,
      reconnectPeriod: 1000,
      ...this.#o.mqtt,
    });
    this.#client = client;
    client.on('message', (topic, payload) => {
      if (topic === DYNSEC_RESPONSE_TOPIC) this.#onResponse(payload);
    });
    client.on('error', (err) => this.#log.warn({ err }, 'dynsec admin connection error'));
    // Subscribe in the connect handler so the reply subscription survives reconnects.
    this.#ready = new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(new EdgefleetError(ErrorCode.ABORTED, 'dynsec connect aborted'));
      signal.addEventListener('abort', onAbort, { once: true });
      const timer = setTimeout(() => reject(new EdgefleetError(ErrorCode.UNAVAILABLE, `dynsec admin could not connect to ${this.#o.url} in ${this.#timeoutMs} ms`)), this.#timeoutMs);
      timer.unref();
      client.on('connect', () => {
        client.subscribe(DYNSEC_RESPONSE_TOPIC, { qos: 1 }, (err, granted) => {
          const code = granted?.[0]?.qos;
          if (err || code === undefined || code >= 0x80) {
            const e = new EdgefleetError(ErrorCode.FORBIDDEN, `dynsec admin may not subscribe to ${DYNSEC_RESPONSE_TOPIC} (is ${this.#o.username} a dynsec admin?)`, { cause: err });
            this.#log.error({ err: e }, 'dynsec reply subscription refused');
            reject(e);
            return;
          }
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          resolve();
        });
      });
      // A refused CONNACK (bad admin credentials) ends reconnecting: say so rather than time out.
      client.on('error', (err) => {
        if (typeof (err as { code?: unknown }).code === 'number' && !client.connected) reject(new EdgefleetError(ErrorCode.UNAUTHORIZED, `dynsec admin refused by the broker: ${err.message}`, { cause: err }));
      });
    });
    try {
      await this.#ready;
      await this.ensureRole(roleFor({ id: '', kind: 'consumer', deviceId: null }));
    } catch (err) {
      await this.stop();
      throw toEdgefleetError(err, ErrorCode.UNAVAILABLE);
    }
  }

  async stop(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    this.#ready = undefined;
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new EdgefleetError(ErrorCode.ABORTED, 'dynsec provisioner stopped'));
      this.#pending.delete(id);
    }
    if (client) await client.endAsync(true);
  }

  /** Creates or updates the principal's dynsec client and role; idempotent. */
  async provision(principal: DynsecPrincipal): Promise<void> {
    // Ids become ACL topic levels: a `+`, `#` or `/` in one would widen the rules (dynsec itself
    // takes an empty username and drops invalid ACL topics without an error).
    const parsed = PrincipalSchema.safeParse(principal);
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, `dynsec principal: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    const p = parsed.data;
    const role = roleFor(p);
    await this.ensureRole(role);
    const existing = await this.getClient(p.id);
    if (!existing) {
      await this.#check({ command: 'createClient', username: p.id, clientid: p.id, password: p.password, textname: `edgefleet ${p.kind}`, roles: [{ rolename: role.rolename }] });
    } else {
      // Re-provisioning (a hub restart, a new token): bind the client id, reset the password and the roles.
      await this.#check({ command: 'modifyClient', username: p.id, clientid: p.id, password: p.password, roles: [{ rolename: role.rolename }] });
      if (existing.disabled) await this.#check({ command: 'enableClient', username: p.id });
    }
    this.#log.info({ id: p.id, kind: p.kind, role: role.rolename }, 'principal provisioned on mosquitto');
  }

  /**
   * Revokes a principal: disabled first (the broker drops its connection), then deleted, with
   * its own role. False when the broker did not know it.
   */
  async revoke(p: { id: string; kind: PrincipalKind }): Promise<boolean> {
    const r = await this.command({ command: 'disableClient', username: p.id });
    if (r.error && NOT_FOUND.test(r.error)) return false;
    if (r.error) throw dynsecError(r);
    await this.#check({ command: 'deleteClient', username: p.id });
    if (p.kind !== 'consumer') {
      const d = await this.command({ command: 'deleteRole', rolename: roleName(p) });
      if (d.error && !NOT_FOUND.test(d.error)) throw dynsecError(d);
    }
    this.#log.info({ id: p.id, kind: p.kind }, 'principal revoked on mosquitto');
    return true;
  }

  /** The broker's view of one client, or undefined when it has none by that username. */
  async getClient(username: string): Promise<DynsecClient | undefined> {
    const r = await this.command({ command: 'getClient', username });
    if (r.error && NOT_FOUND.test(r.error)) return undefined;
    if (r.error) throw dynsecError(r);
    return parseData(ClientReplySchema, r).client;
  }

  /** Makes the role exist with exactly `spec`'s ACLs (only the differences are sent). */
  async ensureRole(spec: RoleSpec): Promise<void> {
    let have = await this.#roleAcls(spec.rolename);
    if (!have) {
      // Not createRole's own `acls`: 2.0.11 silently drops the ones it cannot parse (an invalid
      // topic, an unknown type), where addRoleACL answers with an error.
      await this.#check({ command: 'createRole', rolename: spec.rolename });
      have = [];
    }
    const key = (a: { acltype: string; topic: string; priority?: number | undefined; allow: boolean }): string => JSON.stringify([a.acltype, a.topic, a.priority ?? 0, a.allow]);
    const want = new Set(spec.acls.map(key));
    const haveKeys = new Set(have.map(key));
    // Removals first: a moment with too few rules denies, one with too many could allow.
    const commands: DynsecCommand[] = [
      ...have.filter((a) => !want.has(key(a))).map((a) => ({ command: 'removeRoleACL', rolename: spec.rolename, acltype: a.acltype, topic: a.topic })),
      ...spec.acls.filter((a) => !haveKeys.has(key(a))).map((a) => ({ command: 'addRoleACL', rolename: spec.rolename, ...a })),
    ];
    if (commands.length === 0) return;
    for (const reply of await this.commands(commands)) if (reply.error) throw dynsecError(reply);
    const now = (await this.#roleAcls(spec.rolename)) ?? [];
    if (now.length !== want.size || now.some((a) => !want.has(key(a)))) {
      throw new EdgefleetError(ErrorCode.CONFLICT, `dynsec role ${spec.rolename}: ACLs changed while being set (another admin?)`);
    }
  }

  /** The role's ACLs, undefined when there is no such role. */
  async #roleAcls(rolename: string): Promise<z.infer<typeof AclSchema>[] | undefined> {
    const r = await this.command({ command: 'getRole', rolename });
    if (r.error && NOT_FOUND.test(r.error)) return undefined;
    if (r.error) throw dynsecError(r);
    return parseData(RoleReplySchema, r).role.acls;
  }

  /**
   * The hub's own client on the broker: it reads and writes the whole protocol tree (acks,
   * commands, alerts; the embedded broker lets the hub's publishes bypass the ACL).
   */
  async provisionHub(h: { username: string; password: string; clientId?: string }): Promise<void> {
    await this.ensureRole(HUB_ROLE);
    const fields = { username: h.username, password: h.password, roles: [{ rolename: HUB_ROLE.rolename }], ...(h.clientId ? { clientid: h.clientId } : {}) };
    const existing = await this.getClient(h.username);
    await this.#check(existing ? { command: 'modifyClient', ...fields } : { command: 'createClient', textname: 'edgefleet hub', ...fields });
    if (existing?.disabled) await this.#check({ command: 'enableClient', username: h.username });
  }

  /** One command; resolves with its reply whether or not it carries an error. */
  async command(cmd: DynsecCommand): Promise<Response> {
    const [reply] = await this.commands([cmd]);
    return reply as Response;
  }

  /** Commands sent in one message (the plugin runs them in order); the replies in the same order. */
  async commands(cmds: DynsecCommand[]): Promise<Response[]> {
    const client = this.#client;
    if (!client || !this.#ready) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'dynsec provisioner not started');
    await this.#ready;
    const tagged = cmds.map((c) => ({ ...c, correlationData: randomUUID() }));
    const replies = tagged.map(
      (c) =>
        new Promise<Response>((resolve, reject) => {
          const timer = setTimeout(() => {
            this.#pending.delete(c.correlationData);
            reject(new EdgefleetError(ErrorCode.TIMEOUT, `dynsec ${c.command} got no reply in ${this.#timeoutMs} ms`));
          }, this.#timeoutMs);
          timer.unref();
          this.#pending.set(c.correlationData, { resolve, reject, timer });
        }),
    );
    const forget = (): void => {
      for (const c of tagged) {
        const p = this.#pending.get(c.correlationData);
        if (p) clearTimeout(p.timer);
        this.#pending.delete(c.correlationData);
      }
    };
    // Offline, mqtt.js would queue the publish until a reconnect: fail now instead (the caller,
    // e.g. an API request registering a device, must not hang on a broker that is away).
    if (!client.connected) {
      forget();
      throw new EdgefleetError(ErrorCode.UNAVAILABLE, `dynsec admin is not connected to ${this.#o.url}`);
    }
    const sent = client.publishAsync(DYNSEC_COMMAND_TOPIC, JSON.stringify({ commands: tagged }), { qos: 1 }).catch((err: unknown) => {
      forget();
      throw toEdgefleetError(err, ErrorCode.UNAVAILABLE);
    });
    // The reply timeouts also bound a publish that never completes (the connection dropped meanwhile).
    const [, ...out] = await Promise.all([sent, ...replies]);
    return out;
  }

  async #check(cmd: DynsecCommand): Promise<void> {
    const r = await this.command(cmd);
    if (r.error) throw dynsecError(r);
  }

  #onResponse(payload: Buffer): void {
    let parsed: z.infer<typeof ResponsesSchema>;
    try {
      parsed = ResponsesSchema.parse(JSON.parse(payload.toString('utf8')));
    } catch (err) {
      this.#log.warn({ err }, 'malformed dynsec reply ignored');
      return;
    }
    for (const r of parsed.responses) {
      // Replies to other admins' commands (mosquitto_ctrl, another hub) carry no id of ours.
      const p = r.correlationData === undefined ? undefined : this.#pending.get(r.correlationData);
      if (!p || r.correlationData === undefined) continue;
      this.#pending.delete(r.correlationData);
      clearTimeout(p.timer);
      p.resolve(r);
    }
  }
}

function dynsecError(r: Response): EdgefleetError {
  const text = r.error ?? 'unknown error';
  const code = /already exists/i.test(text) ? ErrorCode.CONFLICT : NOT_FOUND.test(text) ? ErrorCode.NOT_FOUND : /invalid|missing/i.test(text) ? ErrorCode.BAD_INPUT : ErrorCode.UNAVAILABLE;
  return new EdgefleetError(code, `dynsec ${r.command}: ${text}`, { details: { command: r.command, dynsecError: text } });
}

function parseData<T>(schema: z.ZodType<T>, r: Response): T {
  const parsed = schema.safeParse(r.data);
  if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_PAYLOAD, `dynsec ${r.command}: unexpected reply: ${parsed.error.message}`);
  return parsed.data;
}
