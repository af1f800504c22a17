/**
 * Input samples devices upload for labelling after a `drift.sample` command (the retraining
 * hook): POST /v1/samples/<deviceId> with the device's own credentials, stored as one JSON file
 * `<dataDir>/samples/<deviceId>/<ts>.json` (written to a temp name and renamed, so a listed file
 * is always complete). Bodies are size-capped by drift.samples.maxBytes at the HTTP layer and
 * item-capped here. Files are the hand-off to a labelling tool; the hub does not read them back
 * except to list them.
 */
import { mkdir, readdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { DeviceIdSchema, NameSchema } from '../../shared/protocol.ts';

export const SampleUploadSchema = z.strictObject({
  pipeline: NameSchema,
  /** Empty when the device kept no input (the agent sends what its ring holds). */
  model: z.string().max(64),
  version: z.string().max(64),
  /** Opaque to the hub (inputs, predictions, ids); what the agent's ring buffer holds. */
  items: z.array(z.unknown()),
  /** The alert (command id) that asked for the sample, when known. */
  request: z.string().max(200).optional(),
});
export type SampleUpload = z.infer<typeof SampleUploadSchema>;

export interface SampleFile {
  deviceId: string;
  file: string;
  bytes: number;
  receivedAt: string;
}

export class SampleStore {
  constructor(
    readonly dir: string,
    private readonly now: () => number,
  ) {}

  /** Stores one upload; returns the file name (relative to the samples directory). */
  async save(deviceId: string, body: SampleUpload): Promise<string> {
    DeviceIdSchema.parse(deviceId);
    const dir = join(this.dir, deviceId);
    await mkdir(dir, { recursive: true });
    const ts = this.now();
    let name = `${ts}.json`;
    for (let i = 1; await exists(join(dir, name)); i++) name = `${ts}-${i}.json`;
    const tmp = join(dir, `.${name}.tmp`);
    await writeFile(tmp, JSON.stringify({ deviceId, receivedAt: new Date(ts).toISOString(), ...body }));
    await rename(tmp, join(dir, name));
    return `${deviceId}/${name}`;
  }

  /** Stored uploads, newest first, optionally of one device. */
  async list(deviceId?: string): Promise<SampleFile[]> {
    const devices = deviceId ? [deviceId] : await readdir(this.dir).catch(() => [] as string[]);
    const out: SampleFile[] = [];
    for (const d of devices) {
      if (!DeviceIdSchema.safeParse(d).success) continue;
      const files = await readdir(join(this.dir, d)).catch(() => [] as string[]);
      for (const f of files) {
        if (!f.endsWith('.json') || f.startsWith('.')) continue;
        const st = await stat(join(this.dir, d, f)).catch(() => undefined);
        if (st) out.push({ deviceId: d, file: `${d}/${f}`, bytes: st.size, receivedAt: new Date(Number.parseInt(f, 10) || st.mtimeMs).toISOString() });
      }
    }
    return out.sort((a, b) => b.receivedAt.localeCompare(a.receivedAt) || a.file.localeCompare(b.file));
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
