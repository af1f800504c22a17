/**
 * Synthetic sensor streams for the manifest-v2 demo models (issue #13), all driven by a seeded
 * Rng: triaxial accelerometer windows of a rotating shaft (healthy, outer-race bearing defect,
 * mechanical looseness), a conveyor drive's 1 Hz readings with a slowly developing drag, and a
 * machining spindle's run-to-failure vibration bursts. Readings are raw, in physical units; the
 * models' sources scale them.
 */
import { toRng } from './rng.ts';
import type { RandomSource } from './rng.ts';

// ---------------------------------------------------------------------------------- bearing

/** Accelerometer channels (g), in the model's feature order. */
export const VIB_CHANNELS = ['vib_x', 'vib_y', 'vib_z'] as const;
export const VIB_RATE_HZ = 500;
export const BEARING_FAULTS = ['outer_race', 'looseness'] as const;
export type BearingFault = (typeof BEARING_FAULTS)[number];

export interface VibrationOptions {
  fault?: BearingFault;
  /** Fault strength, about 0.5 (incipient) to 1.5 (developed); 1 by default. */
  severity?: number;
}

/**
 * `n` readings of a shaft at 11-14 Hz sampled at VIB_RATE_HZ, row-major [n][3] (vib_x, vib_y,
 * vib_z; z carries gravity). Healthy: rotating unbalance (1×, x/y in quadrature) plus 2× and
 * 3× harmonics and sensor noise, each amplitude and phase drawn per window. `outer_race` adds
 * the impacts of a race defect at BPFO = 3.57× shaft speed, each ringing the housing resonance
 * (140-170 Hz, 4 ms decay); `looseness` raises 2×/3× and adds a ½× sub-harmonic.
 */
export function vibrationWindow(random: RandomSource, n: number, opts: VibrationOptions = {}): Float64Array {
  const rng = toRng(random);
  const sev = opts.severity ?? 1;
  const f0 = rng.uniform(11, 14);
  const w = 2 * Math.PI * f0;
  const a1 = rng.uniform(0.5, 0.8);
  const yGain = rng.uniform(0.8, 1);
  const p1 = rng.uniform(0, 2 * Math.PI);
  const pz = rng.uniform(0, 2 * Math.PI);
  let a2 = a1 * rng.uniform(0.15, 0.3);
  let a3 = a1 * rng.uniform(0.05, 0.12);
  const p2 = [rng.uniform(0, 2 * Math.PI), rng.uniform(0, 2 * Math.PI), rng.uniform(0, 2 * Math.PI)];
  const p3 = [rng.uniform(0, 2 * Math.PI), rng.uniform(0, 2 * Math.PI), rng.uniform(0, 2 * Math.PI)];
  let aHalf = 0;
  const pHalf = rng.uniform(0, 2 * Math.PI);
  if (opts.fault === 'looseness') {
    a2 *= 1 + 2.5 * sev;
    a3 *= 1 + 4 * sev;
    aHalf = 0.12 * a1 * sev;
  }
  const gain2 = [1, 0.8, 0.6];
  const gain3 = [1, 0.9, 0.5];
  const out = new Float64Array(n * 3);
  for (let t = 0; t < n; t++) {
    const s = t / VIB_RATE_HZ;
    out[t * 3] = a1 * Math.cos(w * s + p1);
    out[t * 3 + 1] = a1 * yGain * Math.sin(w * s + p1);
    out[t * 3 + 2] = 1 + 0.15 * a1 * Math.cos(w * s + pz);
    for (let c = 0; c < 3; c++) {
      const i = t * 3 + c;
      out[i] =
        (out[i] as number) +
        a2 * (gain2[c] as number) * Math.cos(2 * w * s + (p2[c] as number)) +
        a3 * (gain3[c] as number) * Math.cos(3 * w * s + (p3[c] as number)) +
        aHalf * Math.cos(0.5 * w * s + pHalf + c) +
        rng.normal(0, 0.04);
    }
  }
  if (opts.fault === 'outer_race') {
    const bpfo = 3.57 * f0;
    const fr = rng.uniform(140, 170);
    const tau = 0.004;
    const amp = 0.7 * sev;
    const gains = [1, 0.7, 0.3];
    // Impacts before the window still ring into it.
    let ti = -rng.uniform(0, 1 / bpfo) - 0.02;
    const end = n / VIB_RATE_HZ;
    while (ti < end) {
      const a = amp * rng.uniform(0.7, 1.3);
      for (let t = Math.max(0, Math.ceil(ti * VIB_RATE_HZ)); t < n; t++) {
        const dt = t / VIB_RATE_HZ - ti;
        if (dt > 6 * tau) break;
        const v = a * Math.exp(-dt / tau) * Math.sin(2 * Math.PI * fr * dt);
        for (let c = 0; c < 3; c++) out[t * 3 + c] = (out[t * 3 + c] as number) + v * (gains[c] as number);
      }
      ti += (1 / bpfo) * (1 + rng.normal(0, 0.01));
    }
  }
  for (let i = 0; i < out.length; i++) out[i] = Math.round((out[i] as number) * 1e4) / 1e4;
  return out;
}

// ------------------------------------------------------------------------------- line drive

/** A conveyor drive's readings at 1 Hz, in the model's feature order. */
export const LINE_FEATURES = [
  'belt_speed', // m/s, held near 0.5 by the drive
  'motor_current', // A
  'motor_temp', // °C, lags the load
  'vib_rms', // mm/s
] as const;

export interface LineDrift {
  /** Step at which the drag starts. */
  onset: number;
  /** Steps until it is fully developed (linear ramp). */
  ramp: number;
  /** Scale of the developed drag: 1 is current +0.45 A, temperature +2 °C, vibration +0.12 mm/s. */
  magnitude: number;
}

export interface LineSequence {
  readings: number[][];
  /** Fraction of the developed drag at each step (0 before onset). */
  drift: number[];
}

/**
 * `steps` readings of a conveyor drive whose load wanders (an AR(1) with a ten-minute time
 * constant plus occasional steps as the product mix changes): load raises current, temperature
 * (through a one-minute lag) and vibration together and slows the belt slightly. A developing drag
 * (a seizing idler, a rubbing guard) raises current, temperature and vibration in proportions
 * load does not, by less than one reading's noise at first: only a run of readings shows it.
 */
export function lineSequence(random: RandomSource, steps: number, drift?: LineDrift): LineSequence {
  const rng = toRng(random);
  let load = rng.normal(0, 1);
  let tempLoad = load;
  // One calibrated drive: its baseline varies a little from day to day, far less than a drag moves it.
  const base = { speed: rng.normal(0.5, 0.0005), current: rng.normal(8, 0.04), temp: rng.normal(45, 0.15), vib: rng.normal(1.2, 0.01) };
  const readings: number[][] = [];
  const fraction: number[] = [];
  const phi = Math.exp(-1 / 600);
  for (let t = 0; t < steps; t++) {
    load = phi * load + Math.sqrt(1 - phi * phi) * rng.normal(0, 1);
    if (rng.next() < 1 / 900) load += rng.normal(0, 1);
    tempLoad += (load - tempLoad) / 60;
    const d = drift && t >= drift.onset ? Math.min(1, (t - drift.onset + 1) / drift.ramp) * drift.magnitude : 0;
    fraction.push(drift ? d / drift.magnitude : 0);
    const r = [
      base.speed - 0.004 * load - 0.001 * d + rng.normal(0, 0.006),
      base.current + 0.6 * load + 0.45 * d + rng.normal(0, 0.25),
      base.temp + 1.5 * tempLoad + 2 * d + rng.normal(0, 0.4),
      base.vib + 0.05 * load + 0.12 * d + rng.normal(0, 0.1),
    ];
    readings.push(r.map((v) => Math.round(v * 1e4) / 1e4));
  }
  return { readings, drift: fraction };
}

// ---------------------------------------------------------------------------------- spindle

/** The spindle's vibration channels (g), in the model's feature order. */
export const SPINDLE_CHANNELS = ['vib_radial', 'vib_axial'] as const;
export const SPINDLE_RATE_HZ = 1024;
/** Readings per burst: the spindle logs a 125 ms burst at each measurement. */
export const SPINDLE_BURST = 128;

export interface SpindleLife {
  /** Hours from installation to failure. */
  life: number;
  /** Wear exponent: wear = (t / life)^p. */
  p: number;
  /** Machine-specific gains on the wear signature (units differ a little between spindles). */
  gain: number;
  baseline: number;
}

export function spindleLife(random: RandomSource): SpindleLife {
  const rng = toRng(random);
  return { life: rng.uniform(180, 420), p: rng.uniform(1.6, 2.8), gain: rng.uniform(0.8, 1.2), baseline: rng.uniform(0.85, 1.15) };
}

/**
 * A burst of SPINDLE_BURST readings [n][2] at `hours` into `life`. The spindle runs at a speed
 * and load set by the job (a nuisance the model must see through); wear w ∈ [0, 1] raises the
 * broadband vibration, adds bearing-defect ringing in the upper half of the spectrum (300-480
 * Hz) and, late, a 2× component from growing clearance.
 */
export function spindleBurst(random: RandomSource, life: SpindleLife, hours: number): Float64Array {
  const rng = toRng(random);
  const wear = Math.min(1, Math.max(0, hours / life.life)) ** life.p;
  const f0 = rng.uniform(90, 110);
  const load = rng.uniform(0.6, 1.2);
  const a1 = 0.3 * life.baseline * load;
  const a2 = (0.04 + 0.25 * wear ** 2) * life.gain * load;
  const noise = (0.05 + 0.08 * wear) * life.baseline;
  const ring = 0.5 * wear * life.gain;
  const fr = rng.uniform(300, 480);
  const rate = 2 * f0 * rng.uniform(2.8, 3.2);
  const p = [rng.uniform(0, 2 * Math.PI), rng.uniform(0, 2 * Math.PI), rng.uniform(0, 2 * Math.PI)];
  const n = SPINDLE_BURST;
  const out = new Float64Array(n * 2);
  for (let t = 0; t < n; t++) {
    const s = t / SPINDLE_RATE_HZ;
    const x = a1 * Math.cos(2 * Math.PI * f0 * s + (p[0] as number)) + a2 * Math.cos(4 * Math.PI * f0 * s + (p[1] as number));
    out[t * 2] = x + rng.normal(0, noise);
    out[t * 2 + 1] = 0.4 * x * Math.cos(p[2] as number) + rng.normal(0, noise * 0.8);
  }
  if (ring > 0) {
    let ti = -rng.uniform(0, 1 / rate);
    const tau = 0.003;
    while (ti < n / SPINDLE_RATE_HZ) {
      const a = ring * rng.uniform(0.6, 1.4);
      for (let t = Math.max(0, Math.ceil(ti * SPINDLE_RATE_HZ)); t < n; t++) {
        const dt = t / SPINDLE_RATE_HZ - ti;
        if (dt > 5 * tau) break;
        const v = a * Math.exp(-dt / tau) * Math.sin(2 * Math.PI * fr * dt);
        out[t * 2] = (out[t * 2] as number) + v;
        out[t * 2 + 1] = (out[t * 2 + 1] as number) + 0.5 * v;
      }
      ti += (1 / rate) * (1 + rng.normal(0, 0.05));
    }
  }
  for (let i = 0; i < out.length; i++) out[i] = Math.round((out[i] as number) * 1e4) / 1e4;
  return out;
}

