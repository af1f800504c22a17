/**
 * Identifiers every message schema uses (device ids, names, model references). Their own module
 * so that protocol.ts and updates.ts can both import them without an import cycle.
 */
import { z } from 'zod';

/** Device ids double as MQTT client ids and topic levels: no wildcards, slashes or `$`. */
export const DeviceIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'device id: 1-64 of [A-Za-z0-9._-], starting alphanumeric');
export type DeviceId = z.infer<typeof DeviceIdSchema>;

/** Stream names (outbox streams) and input names: one topic level, same alphabet. */
export const NameSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'name: 1-64 of [A-Za-z0-9._-]');

export const ModelRefSchema = z.object({ name: NameSchema, version: z.string().min(1).max(64) });
export type ModelRef = z.infer<typeof ModelRefSchema>;

/** Device groups (rollout targets, enrollment scope, maintenance windows). */
export const GroupSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'group: 1-64 of [A-Za-z0-9._-]');

export const LabelKeySchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/, 'label key: 1-63 of [A-Za-z0-9._/-]');
/** Device labels (rollout selectors): at most 32 short key/value pairs. */
export const LabelsSchema = z
  .record(LabelKeySchema, z.string().max(256))
  .refine((l) => Object.keys(l).length <= 32, 'at most 32 labels');
