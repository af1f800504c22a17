/**
 * Simulated inspection cameras: each is a real MQTT client with its own sensor credentials,
 * publishing PNG frames of parts on a conveyor (shared synthetic generator) to its agent's image
 * input (`.../in/<input>/<frame id>`) at a fixed rate. The scene can change while it runs —
 * lighting (`brightness`) and optical blur (a dirty lens) — which is what drift monitoring must
 * notice in the field.
 */
import type { MqttClient } from 'mqtt';
import { topics } from '../../shared/protocol.ts';
import { encodePartPng, jitteredPartImage, mulberry32 } from '../lib/synthetic.ts';
import { connectSensor } from './sensors.ts';

/**
 * The scene on top of the reference variation (scripts/lib/synthetic.ts jitteredPartImage): the
 * defaults reproduce the distribution the demo model's drift reference was built from.
 */
export interface CameraScene {
  /** Illumination factor, 1 nominal. */
  brightness: number;
  /** Extra gaussian blur sigma in pixels, 0 none. */
  blur: number;
  /** Fraction of defective parts (the reference data has 0.5). */
  defectRate: number;
}

export interface CameraOptions {
  sensorId: string;
  token: string;
  deviceId: string;
  mqttUrl: string;
  /** Input name on the agent (pipeline name). */
  input: string;
  framesPerSecond: number;
  seed: number;
  scene?: Partial<CameraScene>;
}

export class SimulatedCamera {
  #client: MqttClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  #scene: CameraScene;
  #n = 0;
  #busy = false;
  sent = 0;
  readonly #rng: () => number;

  constructor(readonly opts: CameraOptions) {
    this.#rng = mulberry32(opts.seed);
    this.#scene = { brightness: 1, blur: 0, defectRate: 0.5, ...opts.scene };
  }

  /** Changes the scene from the next frame on (a lamp fails, the lens gets dirty, ...). */
  setScene(scene: Partial<CameraScene>): void {
    this.#scene = { ...this.#scene, ...scene };
  }

  async start(): Promise<void> {
    const o = this.opts;
    this.#client = await connectSensor({ mqttUrl: o.mqttUrl, sensorId: o.sensorId, token: o.token, reconnectPeriod: 1000 });
    const periodMs = 1000 / o.framesPerSecond;
    const started = performance.now();
    const tick = (): void => {
      this.#timer = setTimeout(tick, Math.max(1, periodMs));
      if (this.#busy) return;
      this.#busy = true;
      void this.#catchUp(Math.floor((performance.now() - started) / periodMs)).finally(() => (this.#busy = false));
    };
    tick();
  }

  async #catchUp(due: number): Promise<void> {
    const o = this.opts;
    while (this.#n < due && this.#client?.connected) {
      const s = this.#scene;
      const px = jitteredPartImage(this.#rng, { defective: this.#rng() < s.defectRate, brightness: s.brightness, blur: s.blur });
      const id = `${o.sensorId}-${this.#n}`;
      this.#client.publish(`${topics.input(o.deviceId, o.input)}/${id}`, await encodePartPng(px), { qos: 0 });
      this.#n++;
      this.sent++;
    }
    if (!this.#client?.connected) this.#n = due; // offline: skip, do not burst on reconnect
  }

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#client?.endAsync();
    this.#client = undefined;
  }
}
