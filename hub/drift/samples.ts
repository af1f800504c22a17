/**
 * Input samples devices upload for labelling after a `drift.sample` command (the retraining
 * hook), only against the open request it carries (hub/drift/sample-requests.ts): POST /v1/samples/<deviceId> with the device's own credentials, stored as one JSON file
 * `<dataDir>/samples/<deviceId>/<ts>.json` (written to a unique temp name, then hard-linked to the
 * first free `<ts>[-n].json`: a listed file is always complete, and link(), unlike rename(), never
 * replaces a file, so two uploads in the same millisecond keep both; with a shared temp name and
 * rename, concurrent uploads failed with 500 and could overwrite each other, found by
 * test/fuzz/http.fuzz.test.ts). Bodies are size-capped by drift.samples.maxBytes at the HTTP layer and
 * item-capped here. Files are the hand-off to a labelling tool; the hub does not read them back
 * except to list them.
 */
import { randomUUID } from 'node:crypto';
import { link, mkdir, readdir, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { DeviceIdSchema, NameSchema } from '../../shared/protocol.ts';

export const SampleUploadSchema = z.strictObject({
  pipeline: NameSchema,
  /** Empty when the device kept no input (the agent sends what its ring holds). */
  model: z.string().max(64),
  version: z.string().max(64),
  /** Opaque to the hub (inputs, predictions, ids); what the agent's ring buffer holds. */
  items: z.array(z.unknown()),
  /**
   * The hub's sample request this upload answers (the `drift.sample` command's `request`);
   * without an open one the upload is refused (403, hub/drift/sample-requests.ts). Optional in
   * the schema so that the refusal is a 403 saying why, not a 400.
   */
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

  /**
   * Stores one upload; returns the file name (relative to the samples directory) and its size.
   * A file that would exceed `maxBytes` is not written: PAYLOAD_TOO_LARGE.
   */
  async save(deviceId: string, body: SampleUpload, maxBytes = Infinity): Promise<{ file: string; bytes: number; ts: number }> {
    DeviceIdSchema.parse(deviceId);
    const ts = this.now();
    const text = JSON.stringify({ deviceId, receivedAt: new Date(ts).toISOString(), ...body });
    const bytes = Buffer.byteLength(text);
    if (bytes > maxBytes) throw new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `the sample file would take ${bytes} bytes, ${maxBytes} are allowed`);
    const dir = join(this.dir, deviceId);
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.${ts}-${randomUUID()}.tmp`);
    await writeFile(tmp, text);
    try {
      for (let i = 0; ; i++) {
        const name = i === 0 ? `${ts}.json` : `${ts}-${i}.json`;
        try {
          await link(tmp, join(dir, name));
          return { file: `${deviceId}/${name}`, bytes, ts };
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
      }
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
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

