/**
 * `edgefleet model push|list|show`: the hub's model registry from the command line.
 * push checks the manifest and the file locally first (schema, size, sha256), so the common
 * mistakes fail before any upload; then announces the manifest (POST /v1/models) and streams
 * the file (PUT .../artifact), showing bytes sent when stdout is a terminal.
 */
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { sha256File } from '../../shared/files.ts';
import { ManifestSchema } from '../../shared/manifest.ts';
import { EXIT, HUB_OPTIONS, HUB_OPTIONS_HELP, HubClient, HubError, UsageError, failure, resolveHub, type CliIo, type HubTarget } from './http-client.ts';

const USAGE = `usage: edgefleet model push <file.onnx> --manifest <manifest.json> [--json]
       edgefleet model list [--json]
       edgefleet model show <name>@<version> [--json]

push   uploads a model to the hub's registry. The hub checks the file against the manifest
       (size, sha256, the model's own inputs and outputs, test vectors), signs the release
       (ed25519) and gives it the next release counter.
list   lists releases, newest first.
show   one release: manifest summary, counter, signing key.

Options:
  --manifest <file>    (push) the model's manifest
  --json               print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

const ModelSchema = z.looseObject({
  name: z.string(),
  version: z.string(),
  counter: z.number(),
  sha256: z.string(),
  size: z.number(),
  keyId: z.string(),
  quantization: z.string().optional(),
  description: z.string().optional(),
  createdAt: z.string(),
});
type ModelRow = z.infer<typeof ModelSchema>;
const ListSchema = z.object({ models: z.array(ModelSchema) });
const AnnouncedSchema = z.object({ name: z.string(), version: z.string(), upload: z.object({ method: z.literal('PUT'), path: z.string().startsWith('/') }) });
const ShowSchema = ModelSchema.extend({
  manifest: ManifestSchema,
  release: z.looseObject({ release: z.looseObject({ counter: z.number(), createdAt: z.string() }), signature: z.looseObject({ keyId: z.string(), alg: z.string() }) }),
});
const ErrorBodySchema = z.object({ error: z.object({ code: z.string(), message: z.string() }) });

/** Uploads can take long (big file, slow link, and the hub loads the model before answering). */
const UPLOAD_TIMEOUT_MS = 30 * 60_000;

function human(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

/** PUTs a file as the raw request body, streamed; progress to stderr when stdout is a TTY. */
async function putFile(target: HubTarget, path: string, file: string, size: number, progress: boolean): Promise<unknown> {
  let sent = 0;
  let lastDraw = 0;
  const draw = (final: boolean): void => {
    const now = Date.now();
    if (!progress || (!final && now - lastDraw < 100)) return;
    lastDraw = now;
    process.stderr.write(`\rsending ${human(sent)} / ${human(size)} (${Math.floor((sent / size) * 100)}%)${final ? '\n' : ''}`);
  };
  const counting = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      sent += chunk.length;
      draw(false);
      cb(null, chunk);
    },
    flush(cb) {
      draw(true);
      if (progress) process.stderr.write('checking the model at the hub...\n');
      cb();
    },
  });
  const body = Readable.toWeb(createReadStream(file).pipe(counting)) as ReadableStream<Uint8Array>;
  let res: Response;
  try {
    res = await fetch(`${target.url}${path}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${target.token}`, 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body,
      duplex: 'half',
      signal: AbortSignal.timeout(UPLOAD_TIMEOUT_MS),
    });
  } catch (err) {
    throw new HubError(`upload to ${target.url} failed: ${(err as Error).message}`, 0, 'UNAVAILABLE');
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const e = ErrorBodySchema.safeParse(json);
    throw e.success ? new HubError(e.data.error.message, res.status, e.data.error.code) : new HubError(`hub answered HTTP ${res.status}`, res.status, 'INTERNAL');
  }
  return json;
}

async function push(positionals: string[], values: { manifest?: string; json?: boolean; hub?: string; token?: string; data?: string }, io: CliIo): Promise<number> {
  if (positionals.length !== 1) throw new UsageError(positionals.length ? `one model file expected, got ${positionals.join(' ')}` : 'a model file is required');
  if (!values.manifest) throw new UsageError('--manifest <file> is required');
  const file = positionals[0] as string;
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(values.manifest, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read manifest ${values.manifest}: ${(err as Error).message}`, { cause: err });
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) throw new Error(`manifest ${values.manifest} is not valid: ${formatIssues(parsed.error)}`);
  const m = parsed.data;
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (size !== m.artifact.size) throw new Error(`${file} has ${size} bytes, the manifest says ${m.artifact.size}`);
  const sha = await sha256File(file);
  if (sha !== m.artifact.sha256) throw new Error(`${file} has sha256 ${sha}, the manifest says ${m.artifact.sha256}`);

  const target = await resolveHub(values, io.env);
  const client = new HubClient(target, 60_000);
  // Sent as read, not as parsed: the hub validates it again and signs what it parsed.
  const announced = await client.request('POST', '/v1/models', AnnouncedSchema, { manifest: raw });
  const progress = !values.json && process.stdout.isTTY === true;
  const released = ModelSchema.safeParse(await putFile(target, announced.upload.path, file, size, progress));
  if (!released.success) throw new HubError('unexpected answer from the hub for the artifact upload', 201, 'BAD_PAYLOAD');
  const r = released.data;
  if (values.json) io.out(`${JSON.stringify(r)}\n`);
  else io.out(`released ${r.name}@${r.version}: counter ${r.counter}, ${human(r.size)}, sha256 ${r.sha256.slice(0, 12)}…, signed by key ${r.keyId}\n`);
  return EXIT.OK;
}

export function formatModels(models: ModelRow[]): string {
  const head = ['NAME', 'VERSION', 'COUNTER', 'QUANT', 'SIZE', 'SHA256', 'KEY', 'CREATED'];
  const rows = models.map((m) => [m.name, m.version, String(m.counter), m.quantization ?? '-', human(m.size), m.sha256.slice(0, 12), m.keyId, m.createdAt]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return `${[line(head), ...rows.map(line)].join('\n')}\n`;
}

async function list(positionals: string[], values: { json?: boolean; hub?: string; token?: string; data?: string }, io: CliIo): Promise<number> {
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals.join(' ')}`);
  const client = new HubClient(await resolveHub(values, io.env));
  const { models } = await client.request('GET', '/v1/models', ListSchema);
  if (values.json) io.out(`${JSON.stringify(models, null, 2)}\n`);
  else if (models.length === 0) io.out('no models released (push one with: edgefleet model push <file.onnx> --manifest <m.json>)\n');
  else io.out(formatModels(models));
  return EXIT.OK;
}

async function show(positionals: string[], values: { json?: boolean; hub?: string; token?: string; data?: string }, io: CliIo): Promise<number> {
  const ref = positionals[0];
  const at = ref?.lastIndexOf('@') ?? -1;
  if (positionals.length !== 1 || !ref || at <= 0 || at === ref.length - 1) throw new UsageError('expected one <name>@<version>');
  const [name, version] = [ref.slice(0, at), ref.slice(at + 1)];
  const client = new HubClient(await resolveHub(values, io.env));
  const m = await client.request('GET', `/v1/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}`, ShowSchema);
  if (values.json) {
    io.out(`${JSON.stringify(m, null, 2)}\n`);
    return EXIT.OK;
  }
  const man = m.manifest;
  const dims = (s: (number | string)[]): string => `[${s.join(', ')}]`;
  const lines = [
    `${m.name}@${m.version}${man.description ? `: ${man.description}` : ''}`,
    `  release      counter ${m.counter}, created ${m.createdAt}`,
    `  signature    ${m.release.signature.alg}, key ${m.release.signature.keyId}`,
    `  artifact     ${man.artifact.file}, ${human(m.size)}, sha256 ${m.sha256}`,
    `  task         ${man.task}, ${man.quantization}`,
    ...man.inputs.map((t) => `  input        ${t.name} ${t.dtype} ${dims(t.shape)}`),
    ...man.outputs.map((t) => `  output       ${t.name} ${t.dtype} ${dims(t.shape)}`),
    `  preprocess   ${man.preprocessing.kind === 'tabular' ? `tabular, ${man.preprocessing.features.length} features` : `image ${man.preprocessing.width}x${man.preprocessing.height} ${man.preprocessing.colour} ${man.preprocessing.layout} ${man.preprocessing.dtype}`}`,
    `  labels       ${man.postprocessing.labels.join(', ')}`,
    `  test vectors ${man.testVectors.length}`,
    ...(man.evaluation ? [`  evaluation   ${(man.evaluation.accuracy * 100).toFixed(2)}% on ${man.evaluation.samples} (${man.evaluation.dataset})`] : []),
  ];
  io.out(`${lines.join('\n')}\n`);
  return EXIT.OK;
}

export async function run(argv: string[], io: CliIo): Promise<number> {
  const [sub, ...rest] = argv;
  try {
    if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
      io.out(USAGE);
      return sub === undefined ? EXIT.USAGE : EXIT.OK;
    }
    const { values, positionals } = parseArgs({
      args: rest,
      options: { ...HUB_OPTIONS, json: { type: 'boolean' }, ...(sub === 'push' ? { manifest: { type: 'string' } } : {}) },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      io.out(USAGE);
      return EXIT.OK;
    }
    switch (sub) {
      case 'push':
        return await push(positionals, values as typeof values & { manifest?: string }, io);
      case 'list':
        return await list(positionals, values, io);
      case 'show':
        return await show(positionals, values, io);
      default:
        throw new UsageError(`unknown model command '${sub}'`);
    }
  } catch (err) {
    return failure(io, `model${sub && ['push', 'list', 'show'].includes(sub) ? ` ${sub}` : ''}`, err, USAGE);
  }
}
