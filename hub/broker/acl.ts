/**
 * Who may publish and subscribe where. A device lives in its own subtree
 * `edgefleet/v1/<ownId>/...` and nowhere else; a sensor may only publish readings into the
 * `in/` topics of the one device it feeds, and receives nothing; a consumer only reads the
 * `out/` (results) topics of devices and the hub's alert topic `edgefleet/v1/$hub/alerts`
 * (device ids cannot contain `$`, so no device owns that subtree). Pure functions: the broker
 * calls them, the tests read them.
 *
 * Ground truth (`<device>/feedback`, hub/feedback/mqtt-feedback.ts) may come from the device,
 * from a sensor of that device (a gauge downstream that measures the true state), or from a
 * consumer (an MES that learns at end-of-line test whether a part was really bad). Consumers
 * read every device's results, so they may label any device's inferences; that is the only
 * topic a consumer may publish to.
 */
import { DeviceIdSchema, TOPIC_ROOT } from '../../shared/protocol.ts';
import type { PrincipalKind } from '../store/store.ts';

export interface Identity {
  id: string;
  kind: PrincipalKind;
  /** For sensors: the device they feed. */
  deviceId: string | null;
}

/** Topics only the hub publishes to (the hub's publishes bypass these checks). */
const HUB_TO_AGENT = new Set(['ack', 'cmd']);
/** Ground truth for a device's inferences. */
const FEEDBACK = 'feedback';
const ROOT = TOPIC_ROOT.split('/');
/** Drift alerts the hub publishes (hub/alerts/delivery.ts ALERTS_TOPIC); consumers may read them. */
export const HUB_ALERTS_TOPIC = `${TOPIC_ROOT}/$hub/alerts`;

/** Splits a topic under the protocol root into (deviceId level, rest levels). */
function split(topic: string): { device: string; rest: string[] } | undefined {
  const levels = topic.split('/');
  if (levels.length < ROOT.length + 2) return undefined;
  for (const [i, r] of ROOT.entries()) if (levels[i] !== r) return undefined;
  return { device: levels[ROOT.length] as string, rest: levels.slice(ROOT.length + 1) };
}

/** Returns why `who` may not publish to `topic`, or undefined when it may. */
export function publishRefusal(who: Identity, topic: string): string | undefined {
  if (topic.startsWith('$')) return 'reserved topic';
  if (topic.includes('+') || topic.includes('#')) return 'wildcard in topic';
  const t = split(topic);
  if (!t) return 'outside the protocol tree';
  const feedback = t.rest.length === 1 && t.rest[0] === FEEDBACK;
  // A real device id only: not `$hub` (the hub's own subtree) nor an empty level.
  if (who.kind === 'consumer') return feedback && DeviceIdSchema.safeParse(t.device).success ? undefined : 'consumers publish only <device>/feedback';
  if (who.kind === 'device') {
    if (t.device !== who.id) return "another device's subtree";
    if (t.rest.length === 1 && HUB_TO_AGENT.has(t.rest[0] as string)) return 'topic reserved for the hub';
    return undefined;
  }
  if (t.device !== who.deviceId) return "not the sensor's device";
  if (feedback) return undefined;
  if (t.rest[0] !== 'in' || t.rest.length < 2 || t.rest.some((l) => l === '')) return 'sensors publish only to in/<input>';
  return undefined;
}

/** Returns why `who` may not subscribe to `filter`, or undefined when it may. */
export function subscribeRefusal(who: Identity, filter: string): string | undefined {
  if (who.kind === 'sensor') return 'sensors do not subscribe';
  if (filter.startsWith('$')) return 'reserved topic';
  const t = split(filter);
  if (who.kind === 'consumer') {
    if (filter === HUB_ALERTS_TOPIC) return undefined;
    // Results of any device (`+` allowed at the device level), nothing else.
    if (!t || t.device === '#' || t.rest[0] !== 'out') return 'consumers subscribe only to <device>/out/...';
    return undefined;
  }
  // The device level must be the literal own id: `+` or `#` there would reach other devices.
  if (!t || t.device !== who.id) return "outside the device's subtree";
  return undefined;
}

/** Last line of defence at delivery time (retained messages included). */
export function mayReceive(who: Identity, topic: string): boolean {
  if (who.kind === 'consumer') return topic === HUB_ALERTS_TOPIC || split(topic)?.rest[0] === 'out';
  return who.kind === 'device' && topic.startsWith(`${TOPIC_ROOT}/${who.id}/`);
}
