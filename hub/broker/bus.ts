/**
 * What the hub needs from an MQTT broker, whichever it is: receive what devices publish on
 * fleet-wide topic filters, publish replies, and tell whether a client is connected.
 * The embedded aedes broker implements it in-process; ExternalBus (external-bus.ts) connects to
 * an existing broker (Mosquitto) as a client with shared subscriptions, without touching ingest.
 */
export type MessageHandler = (topic: string, payload: Buffer) => Promise<void>;

export interface MessageBus {
  /** Delivers every matching publish to `handler`; delivery waits for the handler to settle. */
  subscribe(filter: string, handler: MessageHandler): Promise<void>;
  publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }): Promise<void>;
  /** Whether a client with this id is connected right now (undefined when the bus cannot tell). */
  isConnected(clientId: string): boolean | undefined;
  /** Called with `true` when a principal's client is ready and `false` when it goes away. */
  onPresence(listener: (id: string, online: boolean) => void): void;
}
