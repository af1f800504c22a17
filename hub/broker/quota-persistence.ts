/**
 * The aedes persistence with the broker quotas applied (issue #14): wraps aedes' own in-memory
 * persistence and refuses, where aedes stores things, what BrokerQuotas (hub/broker/quotas.ts)
 * refuses: messages queued for a persistent session, retained messages, and subscription filters
 * of a persistent session that were not granted. aedes 1.x calls its persistence through
 * promises (`persistence.outgoingEnqueueCombi(subs, packet).then(...)`), so that is the one
 * interface here.
 *
 * Why filters are checked again when stored: for a persistent session aedes stores the whole
 * SUBSCRIBE packet's filter list (lib/handlers/subscribe.js `storeSubscriptions` passes
 * `packet.subscriptions`), refused ones included, so a device sending ['<own>/cmd', '#'] got
 * SUBACK [1, 128] and still had '#' in its session: every QoS 1 message of the fleet was queued
 * for it while it was offline (and withheld at delivery by authorizeForward).
 */
import type { Readable } from 'node:stream';
import aedesPersistence from 'aedes-persistence';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { packetBytes, type BrokerQuotas } from './quotas.ts';

/** The fields of an aedes packet read here. */
export interface StoredPacket {
  topic: string;
  payload: Buffer | string;
  /** Set on publishes from clients (and wills); absent on the hub's own publishes. */
  clientId?: string;
  brokerId?: string;
  brokerCounter?: number;
  messageId?: number;
}

interface ClientRef {
  id: string;
}

interface SessionSub {
  clientId: string;
}

interface SubscriptionRequest {
  topic: string;
  qos: number;
}

/** aedes' persistence, promise style (aedes-persistence's types only declare the callback style). */
export interface AsyncPersistence {
  setup(broker: unknown): Promise<void>;
  storeRetained(packet: StoredPacket): Promise<void>;
  createRetainedStream(pattern: string): Readable;
  createRetainedStreamCombi(patterns: string[]): Readable;
  addSubscriptions(client: ClientRef, subs: SubscriptionRequest[]): Promise<unknown>;
  removeSubscriptions(client: ClientRef, subs: string[]): Promise<unknown>;
  subscriptionsByClient(client: ClientRef): Promise<unknown>;
  countOffline(): Promise<unknown>;
  subscriptionsByTopic(pattern: string): Promise<SessionSub[]>;
  cleanSubscriptions(client: ClientRef): Promise<unknown>;
  outgoingEnqueue(sub: SessionSub, packet: StoredPacket): Promise<unknown>;
  outgoingEnqueueCombi(subs: SessionSub[], packet: StoredPacket): Promise<unknown>;
  outgoingUpdate(client: ClientRef, packet: StoredPacket): Promise<unknown>;
  outgoingClearMessageId(client: ClientRef, packet: StoredPacket): Promise<StoredPacket | undefined>;
  outgoingStream(client: ClientRef): Readable;
  incomingStorePacket(client: ClientRef, packet: StoredPacket): Promise<unknown>;
  incomingGetPacket(client: ClientRef, packet: StoredPacket): Promise<unknown>;
  incomingDelPacket(client: ClientRef, packet: StoredPacket): Promise<unknown>;
  cleanIncoming(client: ClientRef): Promise<unknown>;
  putWill(client: ClientRef, packet: StoredPacket): Promise<unknown>;
  getWill(client: ClientRef): Promise<unknown>;
  delWill(client: ClientRef): Promise<unknown>;
  streamWill(brokers: unknown): Readable;
  getClientList(topic: string): Readable;
  destroy(): Promise<unknown>;
}

/** aedes' default persistence (what aedes builds without one). A CommonJS module whose types declare an ES default export: at run time the default import is the factory. */
const memoryPersistence = aedesPersistence as unknown as () => AsyncPersistence;

/** Packets dropped for connected clients remembered at most (see outgoingUpdate). */
const RECENT_DROPS = 4096;

export class QuotaPersistence implements AsyncPersistence {
  readonly #inner: AsyncPersistence;
  readonly #quotas: BrokerQuotas;
  readonly #isConnected: (clientId: string) => boolean;
  /** `${clientId}\0${brokerId}\0${brokerCounter}` of packets dropped for connected clients, oldest first. */
  readonly #recentDrops = new Set<string>();

  constructor(quotas: BrokerQuotas, isConnected: (clientId: string) => boolean, inner?: AsyncPersistence) {
    this.#quotas = quotas;
    this.#isConnected = isConnected;
    this.#inner = inner ?? memoryPersistence();
  }

  // aedes checks that setup is an async function.
  async setup(broker: unknown): Promise<void> {
    await this.#inner.setup(broker);
  }

  // --- what the quotas bound ----------------------------------------------------------------

  async storeRetained(packet: StoredPacket): Promise<void> {
    const empty = packetBytes({ topic: '', payload: packet.payload }) === 0;
    // Refused: not retained, the publish itself still goes out (aedes' next step).
    if (!this.#quotas.admitRetained(packet.clientId, packet.topic, packetBytes(packet), empty)) return;
    await this.#inner.storeRetained(packet);
  }

  outgoingEnqueue(sub: SessionSub, packet: StoredPacket): Promise<unknown> {
    return this.outgoingEnqueueCombi([sub], packet);
  }

  async outgoingEnqueueCombi(subs: SessionSub[], packet: StoredPacket): Promise<unknown> {
    const bytes = packetBytes(packet);
    const fromHub = packet.clientId === undefined;
    const admitted = subs.filter((s) => {
      if (this.#quotas.admitQueued(s.clientId, bytes, fromHub)) return true;
      if (this.#isConnected(s.clientId)) this.#rememberDrop(s.clientId, packet);
      return false;
    });
    if (admitted.length > 0) return this.#inner.outgoingEnqueueCombi(admitted, packet);
  }

  /**
   * aedes looks up the queued copy of a packet before it sends it to a connected persistent
   * client. A packet the quota dropped has none; without this the client would be disconnected
   * with "no such packet". It is sent live instead, at most once (a reconnect does not resend it).
   */
  async outgoingUpdate(client: ClientRef, packet: StoredPacket): Promise<unknown> {
    try {
      return await this.#inner.outgoingUpdate(client, packet);
    } catch (err) {
      const key = dropKey(client.id, packet);
      if (this.#recentDrops.delete(key)) return;
      throw this.#quotas.queueFull(client.id) ? new EdgefleetError(ErrorCode.OVERLOADED, `queue quota of ${client.id} reached`, { cause: err }) : err;
    }
  }

  async outgoingClearMessageId(client: ClientRef, packet: StoredPacket): Promise<StoredPacket | undefined> {
    const removed = await this.#inner.outgoingClearMessageId(client, packet);
    if (removed) this.#quotas.releaseQueued(client.id, packetBytes(removed));
    return removed;
  }

  /** Stores only the filters BrokerQuotas granted to this connection (see the header). */
  async addSubscriptions(client: ClientRef, subs: SubscriptionRequest[]): Promise<unknown> {
    const granted = subs.filter((s) => this.#quotas.granted(client, s.topic));
    if (granted.length > 0) return this.#inner.addSubscriptions(client, granted);
  }

  /** Drops the offline session of `clientId`: its subscriptions and everything queued for it. */
  async dropSession(clientId: string): Promise<void> {
    const ref = { id: clientId };
    await this.#inner.cleanSubscriptions(ref);
    const queued: StoredPacket[] = [];
    for await (const p of this.#inner.outgoingStream(ref)) queued.push(p as StoredPacket);
    // The memory persistence removes the first packet with the packet's id: one call per packet.
    for (const p of queued) await this.outgoingClearMessageId(ref, p);
  }

  #rememberDrop(clientId: string, packet: StoredPacket): void {
    this.#recentDrops.add(dropKey(clientId, packet));
    if (this.#recentDrops.size > RECENT_DROPS) {
      const oldest = this.#recentDrops.values().next();
      if (!oldest.done) this.#recentDrops.delete(oldest.value);
    }
  }

  // --- passed through -----------------------------------------------------------------------

  createRetainedStream(pattern: string): Readable {
    return this.#inner.createRetainedStream(pattern);
  }
  createRetainedStreamCombi(patterns: string[]): Readable {
    return this.#inner.createRetainedStreamCombi(patterns);
  }
  removeSubscriptions(client: ClientRef, subs: string[]): Promise<unknown> {
    return this.#inner.removeSubscriptions(client, subs);
  }
  subscriptionsByClient(client: ClientRef): Promise<unknown> {
    return this.#inner.subscriptionsByClient(client);
  }
  countOffline(): Promise<unknown> {
    return this.#inner.countOffline();
  }
  subscriptionsByTopic(pattern: string): Promise<SessionSub[]> {
    return this.#inner.subscriptionsByTopic(pattern);
  }
  cleanSubscriptions(client: ClientRef): Promise<unknown> {
    return this.#inner.cleanSubscriptions(client);
  }
  outgoingStream(client: ClientRef): Readable {
    return this.#inner.outgoingStream(client);
  }
  incomingStorePacket(client: ClientRef, packet: StoredPacket): Promise<unknown> {
    return this.#inner.incomingStorePacket(client, packet);
  }
  incomingGetPacket(client: ClientRef, packet: StoredPacket): Promise<unknown> {
    return this.#inner.incomingGetPacket(client, packet);
  }
  incomingDelPacket(client: ClientRef, packet: StoredPacket): Promise<unknown> {
    return this.#inner.incomingDelPacket(client, packet);
  }
  cleanIncoming(client: ClientRef): Promise<unknown> {
    return this.#inner.cleanIncoming(client);
  }
  putWill(client: ClientRef, packet: StoredPacket): Promise<unknown> {
    return this.#inner.putWill(client, packet);
  }
  getWill(client: ClientRef): Promise<unknown> {
    return this.#inner.getWill(client);
  }
  delWill(client: ClientRef): Promise<unknown> {
    return this.#inner.delWill(client);
  }
  streamWill(brokers: unknown): Readable {
    return this.#inner.streamWill(brokers);
  }
  getClientList(topic: string): Readable {
    return this.#inner.getClientList(topic);
  }
  destroy(): Promise<unknown> {
    return this.#inner.destroy();
  }
}

function dropKey(clientId: string, packet: StoredPacket): string {
  return `${clientId}\0${packet.brokerId ?? ''}\0${packet.brokerCounter ?? ''}`;
}
