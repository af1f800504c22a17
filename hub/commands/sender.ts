/**
 * The one way the hub sends a command to a device (issue #14): signed for that device with the
 * hub's active release signing key (hub/models/signing-keys.ts) over a fresh validity window
 * and nonce (shared/command-signing.ts), then published QoS 1 on `<device>/cmd`. Every send signs
 * anew, so a re-send of a command id (rollout retry, reconcile after a reconnect) is never
 * mistaken by the agent for a replay. The window is on the hub's wall clock, not on an injected
 * test clock: agents check it against theirs.
 */
import { encodeJson } from '../../shared/codec.ts';
import { DEFAULT_COMMAND_TTL_MS, signCommand } from '../../shared/command-signing.ts';
import { topics, type Command } from '../../shared/protocol.ts';
import type { SigningKey } from '../../shared/signing.ts';
import type { MessageBus } from '../broker/bus.ts';

export interface CommandSenderOptions {
  bus: Pick<MessageBus, 'publish'>;
  /** The active signing key; read at every send (it is loaded at start and may rotate). */
  key: () => Pick<SigningKey, 'keyId' | 'privateKey'>;
  ttlMs?: number;
  /** Wall clock for the validity window. */
  now?: () => number;
}

export class CommandSender {
  readonly #o: CommandSenderOptions;

  constructor(opts: CommandSenderOptions) {
    this.#o = opts;
  }

  /** Signs `cmd` for `deviceId` and publishes it; throws when it cannot (the caller logs). */
  async send(deviceId: string, cmd: Command): Promise<Command> {
    const signed = signCommand(cmd, deviceId, this.#o.key(), { now: (this.#o.now ?? Date.now)(), ttlMs: this.#o.ttlMs ?? DEFAULT_COMMAND_TTL_MS });
    await this.#o.bus.publish(topics.of(deviceId, 'cmd'), encodeJson(signed), { qos: 1 });
    return signed;
  }
}
