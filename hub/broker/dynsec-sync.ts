/**
 * Keeps Mosquitto's dynamic-security plugin in step with the hub's principals (issue #15, with
 * `broker.dynsec.enabled`): at start it creates the hub's own broker user (HUB_ROLE) and
 * reconciles every principal the store holds; afterwards SecurityService calls `provision` for
 * each principal it registers (while it holds the plaintext token) and `revoke` for each it
 * revokes. Reconciliation is idempotent: revoked principals still on the broker are revoked
 * there; live ones get their role's ACLs re-set and are re-enabled. A live principal the broker
 * does not know cannot be created here (the store keeps only a hash of its token, and Mosquitto
 * 2.0's dynsec takes passwords in plaintext only): it is logged as an error, counted in
 * edgefleet_hub_external_broker_principals_missing, and must be registered again.
 */
import { Gauge, type Registry } from 'prom-client';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import type { HubStore, PrincipalKind } from '../store/store.ts';
import { DynsecProvisioner, roleFor, type DynsecProvisionerOptions } from './mosquitto-dynsec.ts';

export interface DynsecSyncOptions {
  admin: Omit<DynsecProvisionerOptions, 'log'>;
  /** The hub's own broker user, created or reset with HUB_ROLE at start. */
  hubUser: { username: string; password: string };
  store: Pick<HubStore, 'queryDevices'>;
  log: Logger;
  registry: Registry;
}

export interface Principal {
  id: string;
  kind: PrincipalKind;
  deviceId: string | null;
}

const PAGE = 500;

export class DynsecSync implements Component {
  readonly name = 'dynsec-sync';
  readonly #o: DynsecSyncOptions;
  readonly #dynsec: DynsecProvisioner;
  readonly #missing: Gauge;

  constructor(o: DynsecSyncOptions) {
    this.#o = o;
    this.#dynsec = new DynsecProvisioner({ ...o.admin, log: o.log });
    this.#missing = new Gauge({
      name: 'edgefleet_hub_external_broker_principals_missing',
      help: 'Live principals the external broker (dynsec) did not know at the last reconciliation: they cannot connect until registered again.',
      registers: [o.registry],
    });
  }

  async start(signal: AbortSignal): Promise<void> {
    await this.#dynsec.start(signal);
    try {
      await this.#dynsec.provisionHub(this.#o.hubUser);
      await this.reconcile();
    } catch (err) {
      await this.#dynsec.stop();
      throw err;
    }
  }

  stop(): Promise<void> {
    return this.#dynsec.stop();
  }

  /** Creates (or resets) the principal's broker client with `token` as its password. */
  provision(p: Principal, token: string): Promise<void> {
    return this.#dynsec.provision({ ...p, password: token });
  }

  /** Disables (the broker drops its connection) and deletes the principal's broker client. */
  revoke(p: Principal): Promise<boolean> {
    return this.#dynsec.revoke(p);
  }

  /** Brings the broker in line with the store; returns the live principals it does not know. */
  async reconcile(): Promise<string[]> {
    const missing: string[] = [];
    let revoked = 0;
    let checked = 0;
    let after: string | undefined;
    for (;;) {
      const page = await this.#o.store.queryDevices({ limit: PAGE, ...(after !== undefined ? { after } : {}) });
      for (const d of page.items) {
        const p: Principal = { id: d.id, kind: d.kind, deviceId: d.deviceId };
        if (d.revokedAt !== null) {
          if (await this.#dynsec.revoke(p)) revoked++;
          continue;
        }
        checked++;
        const have = await this.#dynsec.getClient(d.id);
        if (!have) {
          missing.push(d.id);
          continue;
        }
        const role = roleFor(p);
        await this.#dynsec.ensureRole(role);
        if (have.disabled || !have.roles.some((r) => r.rolename === role.rolename)) {
          const replies = await this.#dynsec.commands([
            { command: 'modifyClient', username: d.id, clientid: d.id, roles: [{ rolename: role.rolename }] },
            { command: 'enableClient', username: d.id },
          ]);
          const failed = replies.find((r) => r.error);
          if (failed) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `dynsec ${failed.command} ${d.id}: ${failed.error ?? ''}`);
        }
      }
      const last = page.items[page.items.length - 1];
      if (!page.more || !last) break;
      after = last.id;
    }
    this.#missing.set(missing.length);
    if (missing.length) this.#o.log.error({ missing: missing.slice(0, 100), count: missing.length }, 'principals unknown to the external broker: they cannot connect; register them again (the hub cannot recreate their passwords)');
    this.#o.log.info({ checked, revoked, missing: missing.length }, 'dynsec reconciled');
    return missing;
  }
}

