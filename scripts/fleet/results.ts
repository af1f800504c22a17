/**
 * What the fleet's models said, as a dashboard would see it: connects as a `consumer` principal
 * (README "Principals"), subscribes to every device's results (`edgefleet/v1/+/out/#`) and keeps
 * per device and pipeline the figures the demo prints: class mix (classification), detections
 * per frame and per label (detection), alarms and scores (anomaly), the latest values
 * (regression), engine latency. Results with `buffered: true` (a window still filling) are
 * counted apart; the agent does not publish those, so the count stays 0 unless that changes.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { parseTopic } from '../../shared/protocol.ts';

export interface PipelineStats {
  device: string;
  pipeline: string;
  model: string;
  task: string;
  results: number;
  buffered: number;
  latencyMsSum: number;
  /** classification: results per label */
  labels: Record<string, number>;
  /** detection */
  detections: number;
  counts: Record<string, number>;
  /** anomaly */
  alarms: number;
  /** Seconds since the collector started of the first alarm. */
  firstAlarmS: number | undefined;
  lastScore: number | undefined;
  maxScore: number | undefined;
  threshold: number | undefined;
  /** Every anomaly result: seconds since the clock was reset, and whether it alarmed. */
  events: { t: number; alarm: boolean; id: string | undefined }[];
  /** regression: the first and latest value of each target */
  first: Record<string, { value: number; unit?: string }>;
  latest: Record<string, { value: number; unit?: string }>;
  /** Result ids in arrival order for the caller's own comparisons (detection, regression; last 10 000). */
  ids: string[];
  /** Per result id: detections (detection), the first target's value (regression). */
  perId: Map<string, number>;
}

interface Mark {
  results: number;
  alarms: number;
  detections: number;
}

export class ResultCollector {
  readonly stats = new Map<string, PipelineStats>();
  #marks = new Map<string, Mark>();
  #client: MqttClient | undefined;
  #t0 = performance.now();
  /** Messages that did not parse as results. */
  unparsed = 0;

  async start(o: { mqttUrl: string; id: string; token: string }): Promise<void> {
    const client = await mqtt.connectAsync(o.mqttUrl, { clientId: o.id, username: o.id, password: o.token, protocolVersion: 4, reconnectPeriod: 1000 });
    client.on('error', () => undefined);
    client.on('message', (topic, payload) => this.#onMessage(topic, payload));
    const granted = await client.subscribeAsync('edgefleet/v1/+/out/#', { qos: 0 });
    if (granted.some((g) => g.qos === 128)) throw new Error('the hub refused the consumer subscription to edgefleet/v1/+/out/#');
    this.#client = client;
    this.#t0 = performance.now();
  }

  /** Restarts the clock first-alarm times are measured on (call when the sensors start). */
  resetClock(): void {
    this.#t0 = performance.now();
  }

  async stop(): Promise<void> {
    await this.#client?.endAsync();
    this.#client = undefined;
  }

  #onMessage(topic: string, payload: Buffer): void {
    const t = parseTopic(topic);
    if (!t?.rest.startsWith('out/')) return;
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
    } catch {
      this.unparsed++;
      return;
    }
    const pipeline = typeof r.pipeline === 'string' ? r.pipeline : t.rest.slice(4);
    const key = `${t.deviceId}\u0000${pipeline}`;
    const model = (r.model as { name?: string } | undefined)?.name ?? '?';
    let s = this.stats.get(key);
    if (!s) {
      s = {
        device: t.deviceId,
        pipeline,
        model,
        task: typeof r.task === 'string' ? r.task : 'classification',
        results: 0,
        buffered: 0,
        latencyMsSum: 0,
        labels: {},
        detections: 0,
        counts: {},
        alarms: 0,
        firstAlarmS: undefined,
        lastScore: undefined,
        maxScore: undefined,
        threshold: undefined,
        events: [],
        first: {},
        latest: {},
        ids: [],
        perId: new Map(),
      };
      this.stats.set(key, s);
    }
    if (r.buffered === true) {
      s.buffered++;
      return;
    }
    s.results++;
    if (typeof r.latencyMs === 'number') s.latencyMsSum += r.latencyMs;
    switch (s.task) {
      case 'classification': {
        const label = typeof r.label === 'string' ? r.label : '?';
        s.labels[label] = (s.labels[label] ?? 0) + 1;
        break;
      }
      case 'detection': {
        const count = typeof r.count === 'number' ? r.count : 0;
        s.detections += count;
        for (const [label, n] of Object.entries((r.counts as Record<string, number> | undefined) ?? {})) s.counts[label] = (s.counts[label] ?? 0) + n;
        this.#keep(s, r.id, count);
        break;
      }
      case 'anomaly': {
        const score = typeof r.score === 'number' ? r.score : NaN;
        s.lastScore = score;
        s.maxScore = s.maxScore === undefined || score > s.maxScore ? score : s.maxScore;
        if (typeof r.threshold === 'number') s.threshold = r.threshold;
        const t = (performance.now() - this.#t0) / 1000;
        if (r.alarm === true) {
          s.alarms++;
          s.firstAlarmS ??= t;
        }
        // A window's result names its last reading; a single reading's result is that reading.
        const lastId = (r.window as { lastId?: string } | undefined)?.lastId ?? (typeof r.id === 'string' ? r.id : undefined);
        if (s.events.length < 1_000_000) s.events.push({ t, alarm: r.alarm === true, id: lastId });
        break;
      }
      case 'regression': {
        const targets = Object.entries((r.values as Record<string, { value: number; unit?: string }> | undefined) ?? {});
        for (const [name, v] of targets) {
          s.first[name] ??= v;
          s.latest[name] = v;
        }
        if (targets[0]) this.#keep(s, r.id, targets[0][1].value);
        break;
      }
      default:
        break;
    }
  }

  #keep(s: PipelineStats, id: unknown, value: number): void {
    if (typeof id !== 'string') return;
    s.perId.set(id, value);
    s.ids.push(id);
    if (s.ids.length > 10_000) s.perId.delete(s.ids.shift()!);
  }

  /** Results, alarms and detections since the previous call for this pipeline. */
  delta(s: PipelineStats): Mark {
    const key = `${s.device}\u0000${s.pipeline}`;
    const prev = this.#marks.get(key) ?? { results: 0, alarms: 0, detections: 0 };
    const now = { results: s.results, alarms: s.alarms, detections: s.detections };
    this.#marks.set(key, now);
    return { results: now.results - prev.results, alarms: now.alarms - prev.alarms, detections: now.detections - prev.detections };
  }

  /** Pipelines of one device, in `order` (others after, by name). */
  ofDevice(device: string, order: readonly string[] = []): PipelineStats[] {
    const rank = (p: string): number => (order.includes(p) ? order.indexOf(p) : order.length);
    return [...this.stats.values()].filter((s) => s.device === device).sort((a, b) => rank(a.pipeline) - rank(b.pipeline) || a.pipeline.localeCompare(b.pipeline));
  }
}
