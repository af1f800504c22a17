/**
 * Prometheus naming shared by the agent and the hub (issue #7, and
 * https://prometheus.io/docs/practices/naming/): every metric of a program starts with its
 * prefix, `edgefleet_agent_` or `edgefleet_hub_` (the process and Node.js runtime metrics too,
 * so one PromQL regex selects a program's series and the two never collide on a host running
 * both); base units in the name (`_seconds`, `_bytes`, `_ratio`), counters end in `_total`.
 * test/integration/metrics-names.test.ts scrapes both registries and checks every name.
 */
import { collectDefaultMetrics, type Registry } from 'prom-client';

export const METRIC_PREFIX = { agent: 'edgefleet_agent_', hub: 'edgefleet_hub_' } as const;

/** prom-client's process and Node.js metrics (CPU, memory, event-loop lag, GC) under the program's prefix. */
export function collectProcessMetrics(registry: Registry, program: keyof typeof METRIC_PREFIX): void {
  collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX[program] });
}
