/**
 * A registered fleet of thousands (issues #15, #16), written through the hub's own store
 * (HubStore.createPrincipal, setOnline, revokePrincipal) with one precomputed token hash, so
 * 10,000 principals take about a second instead of 10,000 hashings. Every principal's facts are
 * returned too: tests filter these themselves and compare with what the hub answers.
 */
import { hashToken, newSecret } from '../../hub/auth/tokens.ts';
import type { DeviceStatus, HubStore, PrincipalKind } from '../../hub/store/store.ts';

export interface SeededPrincipal {
  id: string;
  kind: PrincipalKind;
  group: string;
  labels: Record<string, string>;
  status: DeviceStatus;
}

export const SITES = ['berlin', 'porto', 'lyon'] as const;

/**
 * `n` devices `dev-00000`…, in groups line-0…line-9, labels site (3 values) and rack (r0…r49);
 * every 3rd online, every 97th revoked; a sensor for every 100th device (`<id>-vib`).
 */
export async function seedFleet(store: HubStore, n: number, at = Date.now()): Promise<SeededPrincipal[]> {
  const token = await hashToken(newSecret());
  const out: SeededPrincipal[] = [];
  const width = String(n - 1).length;
  for (let i = 0; i < n; i++) {
    const id = `dev-${String(i).padStart(Math.max(5, width), '0')}`;
    const p: SeededPrincipal = {
      id,
      kind: 'device',
      group: `line-${i % 10}`,
      labels: { site: SITES[i % SITES.length] ?? 'berlin', rack: `r${i % 50}` },
      status: i % 97 === 0 ? 'revoked' : i % 3 === 0 ? 'online' : 'offline',
    };
    await store.createPrincipal({ id, kind: 'device', group: p.group, labels: p.labels, token, createdAt: at });
    out.push(p);
    if (i % 100 === 0) {
      const s: SeededPrincipal = { id: `${id}-vib`, kind: 'sensor', group: p.group, labels: {}, status: 'offline' };
      await store.createPrincipal({ id: s.id, kind: 'sensor', group: s.group, labels: {}, deviceId: id, token, createdAt: at });
      out.push(s);
    }
  }
  for (const p of out) {
    if (p.status === 'online' || p.status === 'revoked') await store.setOnline(p.id, true, at);
    if (p.status === 'revoked') await store.revokePrincipal(p.id, at);
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}
