/**
 * Simulated IoT sensors: each is a real MQTT client with its own credentials, publishing
 * machine-state feature vectors (shared synthetic generator) to its agent's input topic at a
 * fixed rate. Readings carry ids so results and telemetry can be traced back to them.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { topics } from '../../shared/protocol.ts';
import { MACHINE_STATES, mulberry32, sensorSample, SENSOR_FEATURES } from '../lib/synthetic.ts';

export interface SensorOptions {
  sensorId: string;
  token: string;
  deviceId: string;
  mqttUrl: string;
  /** Input name on the agent (pipeline name). */
  input: string;
  ratePerSecond: number;
  seed: number;
  /** Probability of each machine state per reading. */
  mix?: [number, number, number];
}

/** Connects as a sensor principal (client id = user name = sensor id); reconnects on its own. */
export async function connectSensor(o: { mqttUrl: string; sensorId: string; token: string; reconnectPeriod: number }): Promise<MqttClient> {
  const client = await mqtt.connectAsync(o.mqttUrl, {
    clientId: o.sensorId,
    username: o.sensorId,
    password: o.token,
    protocolVersion: 4,
    reconnectPeriod: o.reconnectPeriod,
    queueQoSZero: false,
  });
  // A connection error must not become an unhandled 'error' event; reconnects handle it.
  client.on('error', () => undefined);
  return client;
}

export class SimulatedSensor {
  #client: MqttClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  #n = 0;
  sent = 0;
  readonly #rng: () => number;

  constructor(readonly opts: SensorOptions) {
    this.#rng = mulberry32(opts.seed);
  }

  async start(): Promise<void> {
    const o = this.opts;
    this.#client = await connectSensor({ mqttUrl: o.mqttUrl, sensorId: o.sensorId, token: o.token, reconnectPeriod: 1000 });
    const topic = topics.input(o.deviceId, o.input);
    const mix = o.mix ?? [0.7, 0.2, 0.1];
    const periodMs = 1000 / o.ratePerSecond;
    const started = performance.now();
    const tick = (): void => {
      // Catch up to the wall clock so the rate holds even when timers run late.
      const due = Math.floor((performance.now() - started) / periodMs);
      while (this.#n < due && this.#client?.connected) {
        const r = this.#rng();
        const cls = r < mix[0] ? 0 : r < mix[0] + mix[1] ? 1 : 2;
        const values = sensorSample(this.#rng, MACHINE_STATES[cls]);
        const features = Object.fromEntries(SENSOR_FEATURES.map((f, i) => [f, values[i]]));
        this.#client.publish(topic, JSON.stringify({ id: `${o.sensorId}-${this.#n}`, ts: Date.now(), features }), { qos: 0 });
        this.#n++;
        this.sent++;
      }
      if (!this.#client?.connected) this.#n = due; // offline: skip, do not burst on reconnect
      this.#timer = setTimeout(tick, Math.max(1, periodMs));
    };
    tick();
  }

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#client?.endAsync();
    this.#client = undefined;
  }
}
