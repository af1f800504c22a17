/**
 * Simulated sensors for the manifest-v2 demo models (issue #13), each a real MQTT client with
 * its own sensor credentials publishing to one agent input, with `stream` = its sensor id:
 *
 * - SimulatedAccelerometer (bearing-anomaly): a triaxial accelerometer at 500 Hz, published as
 *   `samples` chunks. Chunks carry one `ts` (the agent gives every sample of a chunk the chunk's
 *   ts) on the sensor's own sample clock, so consecutive chunks are `chunk` samples apart, below
 *   the model's maxGapMs whatever the machine's timer jitter. The signal comes from
 *   scripts/lib/synthetic-v2.ts vibrationWindow in long records (one shaft speed and phase per
 *   record); between records the clock skips past maxGapMs, so the agent starts a fresh window
 *   instead of one spanning two records. An optional fault starts at `fault.atS` seconds into
 *   the run and grows in severity record by record.
 * - SimulatedSpindle (spindle-rul): a 128-reading burst at 1024 Hz as one `samples` chunk every
 *   `periodMs`; the spindle's hours advance over the run so wear rises and the true RUL falls.
 * - SimulatedLineDrive (line-state): a conveyor drive's 1 Hz log (lineSequence) replayed at
 *   `ratePerSecond` readings per second, one reading per message; optionally with a developing
 *   drag from step `drag.onset`.
 *
 * Everything is seeded: the same seed and options give the same readings.
 */
import type { MqttClient } from 'mqtt';
import { topics } from '../../shared/protocol.ts';
import { createRng, type Rng } from '../lib/rng.ts';
import {
  LINE_FEATURES,
  lineSequence,
  spindleBurst,
  spindleLife,
  SPINDLE_BURST,
  SPINDLE_CHANNELS,
  VIB_RATE_HZ,
  vibrationWindow,
  type BearingFault,
  type LineDrift,
  type SpindleLife,
} from '../lib/synthetic-v2.ts';
import { connectSensor } from './sensors.ts';

interface Connection {
  sensorId: string;
  token: string;
  deviceId: string;
  mqttUrl: string;
  /** Input name on the agent (pipeline name). */
  input: string;
  seed: number;
}

/** Connects, then calls `produce` on a timer with the seconds since start; publishes what it returns. */
abstract class PacedSensor<O extends Connection> {
  #client: MqttClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  #started = 0;
  /** Messages published. */
  sent = 0;
  protected readonly rng: Rng;
  protected readonly topic: string;

  constructor(readonly opts: O, readonly tickMs: number) {
    this.rng = createRng(opts.seed);
    this.topic = topics.input(opts.deviceId, opts.input);
  }

  /** Seconds since start() (0 before). */
  get elapsedS(): number {
    return this.#started ? (performance.now() - this.#started) / 1000 : 0;
  }

  /** Connects (a hub under load may take a while to check the credentials). */
  async connect(): Promise<void> {
    const o = this.opts;
    this.#client ??= await connectSensor({ mqttUrl: o.mqttUrl, sensorId: o.sensorId, token: o.token, reconnectPeriod: 1000 });
  }

  /** Starts publishing, its clock starting at `origin` (performance.now(); default now): sensors run from one origin. */
  run(origin = performance.now()): void {
    this.#started = origin;
    const tick = (): void => {
      this.#timer = setTimeout(tick, this.tickMs);
      const c = this.#client;
      const connected = c?.connected ?? false;
      for (const payload of this.produce(this.elapsedS, connected)) {
        if (!connected || !c) continue;
        c.publish(this.topic, JSON.stringify(payload), { qos: 0 });
        this.sent++;
      }
    };
    tick();
  }

  async start(): Promise<void> {
    await this.connect();
    this.run();
  }

  /** Messages due by `elapsedS`; when offline they are generated and skipped (no burst on reconnect). */
  protected abstract produce(elapsedS: number, connected: boolean): Iterable<Record<string, unknown>>;

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#client?.endAsync();
    this.#client = undefined;
  }
}

// ------------------------------------------------------------------------------ bearing

export interface AccelerometerOptions extends Connection {
  /** Samples per message; chunk / 500 Hz must stay below the model's maxGapMs (20 ms): at most 9. */
  chunk?: number;
  /** Samples per record (one shaft speed and phase), default 8192 (16 s). */
  recordSamples?: number;
  /** A bearing fault developing from `atS` seconds into the run. */
  fault?: { kind: BearingFault; atS: number };
}

/** Severity of the fault's successive records: incipient, then developed. */
const FAULT_SEVERITY = [0.6, 0.8, 1.0, 1.2, 1.4];
/** Samples per faulty record (4 s): the severity steps up with each. */
const FAULT_RECORD = 2048;
/** Clock skip between records: over the model's maxGapMs, so a window never spans two records. */
const RECORD_GAP_MS = 50;

export class SimulatedAccelerometer extends PacedSensor<AccelerometerOptions> {
  readonly chunk: number;
  #record: Float64Array = new Float64Array(0);
  #pos = 0;
  #faultRecords = 0;
  #samples = 0;
  /** The sample clock (epoch ms of the next sample). */
  #clock = Date.now();
  /** Seconds into the run at which the first faulty record started, if it has. */
  faultStartedS: number | undefined;

  constructor(opts: AccelerometerOptions) {
    super(opts, 40);
    this.chunk = opts.chunk ?? 8;
  }

  #nextRecord(elapsedS: number): void {
    const f = this.opts.fault;
    if (f && elapsedS >= f.atS) {
      this.faultStartedS ??= elapsedS;
      const severity = FAULT_SEVERITY[Math.min(this.#faultRecords++, FAULT_SEVERITY.length - 1)];
      this.#record = vibrationWindow(this.rng, FAULT_RECORD, { fault: f.kind, severity });
    } else {
      this.#record = vibrationWindow(this.rng, this.opts.recordSamples ?? 8192);
    }
    this.#pos = 0;
    if (this.#samples > 0) this.#clock += RECORD_GAP_MS;
  }

  protected *produce(elapsedS: number): Iterable<Record<string, unknown>> {
    const due = Math.floor(elapsedS * VIB_RATE_HZ);
    const f = this.opts.fault;
    while (this.#samples + this.chunk <= due) {
      // The fault starts at its time: the healthy record is cut there.
      const faultDue = f !== undefined && this.faultStartedS === undefined && this.#samples / VIB_RATE_HZ >= f.atS;
      if (this.#pos + this.chunk > this.#record.length / 3 || faultDue) this.#nextRecord(this.#samples / VIB_RATE_HZ);
      const samples: number[][] = [];
      for (let i = 0; i < this.chunk; i++) {
        const k = (this.#pos + i) * 3;
        samples.push([this.#record[k]!, this.#record[k + 1]!, this.#record[k + 2]!]);
      }
      const msg = { id: `${this.opts.sensorId}-${this.#samples}`, stream: this.opts.sensorId, ts: Math.round(this.#clock * 1000) / 1000, samples };
      this.#pos += this.chunk;
      this.#samples += this.chunk;
      this.#clock += (this.chunk * 1000) / VIB_RATE_HZ;
      yield msg;
    }
  }
}

// ------------------------------------------------------------------------------ spindle

export interface SpindleOptions extends Connection {
  /** One burst this often. */
  periodMs: number;
  /** Seconds of the run over which the spindle goes from `startFraction` of its life to its end. */
  horizonS: number;
  /** Fraction of its life the spindle has run at the start, default 0.4. */
  startFraction?: number;
  /** Past the horizon, replace the spindle and age it again (open-ended runs); else it stays at its end of life. */
  replace?: boolean;
}

export class SimulatedSpindle extends PacedSensor<SpindleOptions> {
  readonly life: SpindleLife;
  #bursts = 0;
  /** True remaining life (h, capped at 150 as the model is) per burst id (the result id). */
  readonly truth = new Map<string, number>();

  constructor(opts: SpindleOptions) {
    super(opts, Math.min(100, opts.periodMs));
    this.life = spindleLife(this.rng);
  }

  protected *produce(elapsedS: number): Iterable<Record<string, unknown>> {
    const o = this.opts;
    const due = Math.floor((elapsedS * 1000) / o.periodMs) + 1;
    while (this.#bursts < due) {
      const t = (this.#bursts * o.periodMs) / 1000;
      const f0 = o.startFraction ?? 0.4;
      const cycle = o.replace ? (t % o.horizonS) / o.horizonS : Math.min(1, t / o.horizonS);
      const frac = f0 + (1 - f0) * cycle;
      const hours = frac * this.life.life;
      const burst = spindleBurst(this.rng, this.life, hours);
      const samples: number[][] = [];
      for (let i = 0; i < SPINDLE_BURST; i++) samples.push(SPINDLE_CHANNELS.map((_, c) => burst[i * SPINDLE_CHANNELS.length + c]!));
      const id = `${o.sensorId}-${this.#bursts}`;
      this.truth.set(id, Math.min(150, Math.max(0, this.life.life - hours)));
      yield { id, stream: o.sensorId, ts: Date.now(), samples };
      this.#bursts++;
    }
  }
}

// --------------------------------------------------------------------------- line drive

export interface LineDriveOptions extends Connection {
  /** 1 Hz log readings replayed per wall-clock second. */
  ratePerSecond: number;
  /** Readings per drive run (a fresh run, healthy, follows each). */
  steps: number;
  /** A developing drag in the first run. */
  drag?: LineDrift;
}

export class SimulatedLineDrive extends PacedSensor<LineDriveOptions> {
  #run: number[][] = [];
  #pos = 0;
  #n = 0;
  #runs = 0;

  constructor(opts: LineDriveOptions) {
    super(opts, Math.max(20, Math.min(200, 1000 / opts.ratePerSecond)));
  }

  /** Seconds into the run at which the drag begins (replayed time), if there is one. */
  get dragOnsetS(): number | undefined {
    return this.opts.drag ? this.opts.drag.onset / this.opts.ratePerSecond : undefined;
  }

  protected *produce(elapsedS: number): Iterable<Record<string, unknown>> {
    const o = this.opts;
    const due = Math.floor(elapsedS * o.ratePerSecond) + 1;
    while (this.#n < due) {
      if (this.#pos >= this.#run.length) {
        this.#run = lineSequence(this.rng, o.steps, this.#runs === 0 ? o.drag : undefined).readings;
        this.#runs++;
        this.#pos = 0;
      }
      const r = this.#run[this.#pos++]!;
      const features = Object.fromEntries(LINE_FEATURES.map((f, i) => [f, r[i]]));
      yield { id: `${o.sensorId}-${this.#n}`, stream: o.sensorId, ts: Date.now(), features };
      this.#n++;
    }
  }
}
