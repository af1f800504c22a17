/**
 * Fleet presence as a Prometheus gauge, `edgefleet_hub_principals{kind, state}`: registered
 * devices and sensors, online (connected to the broker now) or offline. It is the hub's view
 * because an agent that lost its network cannot be scraped: a dashboard counting agents'
 * `edgefleet_agent_hub_connected` would show an outage as fewer series, not as offline devices.
 * Read from the store at scrape time (one aggregate query), so it is never stale; a failed read
 * keeps the previous values rather than failing the whole /metrics scrape.
 */
import { Gauge, type Registry } from 'prom-client';
import type { Logger } from '../shared/log.ts';
import type { FleetTotals } from './store/store.ts';

export function registerFleetMetrics(opts: { registry: Registry; fleetTotals: () => Promise<FleetTotals>; log: Logger }): void {
  new Gauge({
    name: 'edgefleet_hub_principals',
    help: 'Registered devices and sensors, by kind (device, sensor) and state (online = connected to the broker now, offline).',
    labelNames: ['kind', 'state'],
    registers: [opts.registry],
    async collect() {
      try {
        const t = await opts.fleetTotals();
        this.set({ kind: 'device', state: 'online' }, t.devicesOnline);
        this.set({ kind: 'device', state: 'offline' }, t.devices - t.devicesOnline);
        this.set({ kind: 'sensor', state: 'online' }, t.sensorsOnline);
        this.set({ kind: 'sensor', state: 'offline' }, t.sensors - t.sensorsOnline);
      } catch (err) {
        opts.log.warn({ err }, 'fleet totals for /metrics failed');
      }
    },
  });
}
