/**
 * Simulated conveyor cameras for the conveyor-parts detector (issue #13): each is a real MQTT
 * client with its own sensor credentials, publishing 640×480 frames of parts on a belt
 * (scripts/lib/synthetic-conveyor.ts) as JPEG or PNG to its agent's image input
 * (`.../in/<input>/<frame id>`) at a fixed rate.
 *
 * Drawing a frame costs ~80 ms of CPU and a PNG ~40 ms more, too much to do live next to the
 * agents on a small machine, so each camera renders a seeded reel of frames before it starts
 * and plays it in a loop. It remembers how many parts each frame shows, so what the detector
 * found can be compared with what was in view. An optional `dim` switches to a second reel in
 * dimmer light from `dim.atS` seconds on (a failing lamp: the detector's recall drops).
 */
import type { MqttClient } from 'mqtt';
import sharp from 'sharp';
import { topics } from '../../shared/protocol.ts';
import { createRng, type Rng } from '../lib/rng.ts';
import { conveyorScene } from '../lib/synthetic-conveyor.ts';
import { connectSensor } from './sensors.ts';

export interface ConveyorCameraOptions {
  sensorId: string;
  token: string;
  deviceId: string;
  mqttUrl: string;
  /** Input name on the agent (pipeline name). */
  input: string;
  framesPerSecond: number;
  seed: number;
  /** Distinct frames per reel. */
  reel?: number;
  format?: 'jpeg' | 'png';
  /** From `atS` seconds on, frames lit at `illumination` (nominal 0.9-1.1). */
  dim?: { atS: number; illumination: number };
}

interface Frame {
  bytes: Buffer;
  parts: number;
}

async function renderReel(rng: Rng, n: number, format: 'jpeg' | 'png', illumination?: number): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let i = 0; i < n; i++) {
    const s = conveyorScene(rng, illumination === undefined ? {} : { illumination });
    const img = sharp(Buffer.from(s.rgb.buffer, s.rgb.byteOffset, s.rgb.byteLength), { raw: { width: s.width, height: s.height, channels: 3 } });
    const bytes = format === 'png' ? await img.png().toBuffer() : await img.jpeg({ quality: 92 }).toBuffer();
    frames.push({ bytes, parts: s.parts.length });
  }
  return frames;
}

export class SimulatedConveyorCamera {
  #client: MqttClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  #reel: Frame[] = [];
  #dimReel: Frame[] = [];
  #n = 0;
  #started = 0;
  sent = 0;
  /** Parts in view per frame id (the result id), for comparing with the detections. */
  readonly truth = new Map<string, number>();

  constructor(readonly opts: ConveyorCameraOptions) {}

  /** Renders the reels (deterministic by seed). Call before start(). */
  async prepare(): Promise<void> {
    const o = this.opts;
    const rng = createRng(o.seed);
    this.#reel = await renderReel(rng, o.reel ?? 12, o.format ?? 'jpeg');
    if (o.dim) this.#dimReel = await renderReel(rng, o.reel ?? 12, o.format ?? 'jpeg', o.dim.illumination);
  }

  async connect(): Promise<void> {
    const o = this.opts;
    if (this.#reel.length === 0) await this.prepare();
    this.#client ??= await connectSensor({ mqttUrl: o.mqttUrl, sensorId: o.sensorId, token: o.token, reconnectPeriod: 1000 });
  }

  /** Starts publishing, its clock starting at `origin` (performance.now(); default now). */
  run(origin = performance.now()): void {
    const o = this.opts;
    const periodMs = 1000 / o.framesPerSecond;
    this.#started = origin;
    const tick = (): void => {
      this.#timer = setTimeout(tick, Math.max(1, Math.min(100, periodMs)));
      const elapsed = performance.now() - this.#started;
      const due = Math.floor(elapsed / periodMs) + 1;
      const c = this.#client;
      while (this.#n < due && c?.connected) {
        const dim = o.dim !== undefined && elapsed / 1000 >= o.dim.atS;
        const reel = dim ? this.#dimReel : this.#reel;
        const f = reel[this.#n % reel.length]!;
        const id = `${o.sensorId}-${this.#n}`;
        this.truth.set(id, f.parts);
        c.publish(`${topics.input(o.deviceId, o.input)}/${id}`, f.bytes, { qos: 0 });
        this.#n++;
        this.sent++;
      }
      if (!c?.connected) this.#n = due; // offline: skip, do not burst on reconnect
    };
    tick();
  }

  async start(): Promise<void> {
    await this.connect();
    this.run();
  }

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#client?.endAsync();
    this.#client = undefined;
  }
}
