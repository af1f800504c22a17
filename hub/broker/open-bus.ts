/**
 * Picks the hub's broker from config (issue #15): the embedded aedes broker, or the bus on an
 * external broker (external-bus.ts) with, when `broker.dynsec.enabled`, the dynsec sync that
 * provisions principals on Mosquitto (dynsec-sync.ts). Everything else in the hub sees the
 * same HubBroker surface; what only the embedded broker can do (quotas, disconnecting a client)
 * is a no-op or refused on the external one, where the broker's own limits and dynsec apply.
 */
import { readFileSync } from 'node:fs';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { clientTlsOptions, hasClientTls } from '../../shared/tls.ts';
import type { HubConfig } from '../config.ts';
import { EmbeddedBroker, type BrokerOptions } from './broker.ts';
import type { MessageBus } from './bus.ts';
import { DynsecSync } from './dynsec-sync.ts';
import { ExternalBus, type ExternalBusOptions } from './external-bus.ts';
import type { QuotaUsage } from './quotas.ts';

export interface HubBroker extends MessageBus, Component {
  /** The embedded broker's bound port; 0 on an external broker. */
  readonly port: number;
  disconnect(clientId: string, reason: string): boolean;
  forgetSession(id: string): void;
  quotaUsage(id: string): QuotaUsage;
  expireSessions(): Promise<string[]>;
}

export type BrokerDeps = Pick<BrokerOptions, 'failures' | 'connections' | 'store' | 'log' | 'registry' | 'now'>;

export interface OpenedBroker {
  broker: HubBroker;
  /** The external broker's URL (what mqttUrl reports); undefined for the embedded one. */
  externalUrl: string | undefined;
  /** Principal provisioning on Mosquitto; start it before the broker (it creates the hub's user). */
  provisioning: DynsecSync | undefined;
}

/** The bus on an external broker, with the embedded-only parts answered for it. */
class ExternalHubBroker extends ExternalBus implements HubBroker {
  readonly port = 0;
  /** Revocation reaches an external broker through dynsec (the client is disabled, the broker drops it). */
  disconnect(): boolean {
    return false;
  }
  forgetSession(): void {}
  quotaUsage(): QuotaUsage {
    throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'broker quotas are the external broker\'s (its own limits apply)');
  }
  expireSessions(): Promise<string[]> {
    return Promise.resolve([]);
  }
}

function secret(inline: string | undefined, file: string | undefined, what: string): string | undefined {
  if (inline !== undefined || file === undefined) return inline;
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `${what}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}

export function openBroker(config: HubConfig, deps: BrokerDeps): OpenedBroker {
  const b = config.broker;
  if (b.kind === 'embedded' || !b.url) {
    const broker = new EmbeddedBroker({
      host: config.mqtt.host,
      port: config.mqtt.port,
      maxPayloadBytes: config.limits.maxPayloadBytes,
      maxTopicDepth: config.limits.maxTopicDepth,
      drainTimeoutMs: config.limits.drainTimeoutMs,
      tls: config.tls,
      maxTopicBytes: config.limits.maxTopicBytes,
      maxInflight: config.limits.maxInflight,
      quotas: config.limits.brokerQuotas,
      maxConnectsPerSecondPerIp: config.limits.maxConnectsPerSecondPerIp,
      ...deps,
    });
    return { broker, externalUrl: undefined, provisioning: undefined };
  }
  const password = secret(b.password, b.passwordFile, 'broker.passwordFile');
  const tls = hasClientTls(b.tls) ? clientTlsOptions(b.tls, 'broker.tls') : undefined;
  const options: ExternalBusOptions = {
    url: b.url,
    ...(b.username !== undefined ? { username: b.username } : {}),
    ...(password !== undefined ? { password } : {}),
    clientIdPrefix: b.clientIdPrefix,
    shareGroup: b.shareGroup,
    subscribers: b.subscribers,
    keepaliveSeconds: b.keepaliveSeconds,
    connectTimeoutMs: b.connectTimeoutMs,
    startTimeoutMs: b.startTimeoutMs,
    reconnect: b.reconnect,
    ...(tls ? { tls } : {}),
    log: deps.log,
    registry: deps.registry,
  };
  const broker = new ExternalHubBroker(options);
  let provisioning: DynsecSync | undefined;
  if (b.dynsec.enabled) {
    const adminPassword = secret(b.dynsec.adminPassword, b.dynsec.adminPasswordFile, 'broker.dynsec.adminPasswordFile') ?? '';
    provisioning = new DynsecSync({
      admin: { url: b.url, username: b.dynsec.adminUsername ?? '', password: adminPassword, ...(tls ? { mqtt: tls } : {}) },
      hubUser: { username: b.username ?? '', password: password ?? '' },
      store: deps.store,
      log: deps.log,
      registry: deps.registry,
    });
  }
  return { broker, externalUrl: b.url, provisioning };
}
