/**
 * Operator roles, ordered: a viewer reads; an operator also runs the fleet (models, rollouts,
 * alerts, feedback); an admin also manages credentials (devices and sensors, operator tokens,
 * enrollment tokens, revocation) and reads the audit log. Credentials sit above operations
 * because whoever can mint a device token can impersonate a device.
 */
import type { ApiRole } from '../store/store.ts';

export type Role = ApiRole;
export const ROLES: readonly Role[] = ['viewer', 'operator', 'admin'];

const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

/** Whether a token with role `have` may use a route that needs `need`. */
export function allows(have: Role, need: Role): boolean {
  return RANK[have] >= RANK[need];
}
