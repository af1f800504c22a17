/**
 * `edgefleet model push|list|show`: the hub's model registry from the command line.
 * push checks the manifest and the file locally first (schema, size, sha256), so the common
 * mistakes fail before any upload; then announces the manifest (POST /v1/models) and streams
 * the file (PUT .../artifact) through a byte counter that draws progress on stderr
 * (cli/progress.ts: a bar on a terminal, plain lines with --progress, nothing with --json).
 */
import { manifestLabels } from '../../shared/model-spec.ts';
import type { InputSource, TaskSpec } from '../../shared/tasks/specs.ts';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { sha256File } from '../../shared/files.ts';
import { ManifestSchema } from '../../shared/manifest.ts';
import { HUB_OPTIONS_HELP, UsageError, humanBytes as human, parseRef, runCommand, runSubcommands, table, type CliIo } from '../command.ts';
import { Progress, bar, progressMode } from '../progress.ts';
import type { HubClient } from './http-client.ts';
import { esc } from '../render.ts';

const USAGE = `usage: edgefleet model push <file.onnx> --manifest <manifest.json> [--progress] [--json]
       edgefleet model list [--json]
       edgefleet model show <name>@<version> [--json]
       edgefleet model init <file.onnx> [--out <m.manifest.json>] [...]   (local; see model init --help)

push   uploads a model to the hub's registry. The hub checks the file against the manifest
       (size, sha256, the model's own inputs and outputs, test vectors), signs the release
       (ed25519) and gives it the next release counter.
list   lists releases, newest first.
show   one release: manifest summary, counter, signing key.
init   drafts a manifest v2 from the model itself (inputs, outputs, guessed task and
       sources, test vectors from a reference run); no hub needed.

Options:
  --manifest <file>    (push) the model's manifest
  --progress           (push) upload progress on stderr even when it is not a terminal
                       (a line per quarter); on a terminal a bar is drawn anyway
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
const AnnouncedSchema = z.object({
  name: z.string(),
  version: z.string(),
  upload: z.object({ method: z.literal('PUT'), path: z.string().startsWith('/') }),
  vectors: z.object({ method: z.literal('PUT'), path: z.string().startsWith('/') }).optional(),
});
const StoredSchema = z.object({ sha256: z.string(), size: z.number() });
const ShowSchema = ModelSchema.extend({
  manifest: ManifestSchema,
  release: z.looseObject({ release: z.looseObject({ counter: z.number(), createdAt: z.string() }), signature: z.looseObject({ keyId: z.string(), alg: z.string() }) }),
});

/** Uploads can take long (big file, slow link, and the hub loads the model before answering). */
const UPLOAD_TIMEOUT_MS = 30 * 60_000;

/**
 * A pass-through that counts bytes: the live bar on a terminal, a line per quarter with
 * --progress in a log, and a last line when the upload ends and the hub starts checking.
 */
export function uploadProgress(progress: Progress, size: number): Transform {
  let sent = 0;
  let quarter = 0;
  const text = (): string => `uploading ${bar(size ? sent / size : 1)} ${Math.floor(size ? (sent / size) * 100 : 100)}%  ${human(sent)} / ${human(size)}`;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      sent += chunk.length;
      progress.update(text());
      const q = size ? Math.floor((sent / size) * 4) : 4;
      if (progress.mode === 'lines' && q > quarter && q < 4) progress.step(text());
      quarter = Math.max(quarter, q);
      cb(null, chunk);
    },
    flush(cb) {
      progress.update(text(), true);
      progress.done();
      progress.step(`uploaded ${human(sent)}; the hub is checking the model (test vectors in a sandbox)...`);
      cb();
    },
  });
}

/** PUTs a file as the raw request body, streamed through the progress counter when there is one. */
function putFile<T>(client: HubClient, path: string, file: string, size: number, answer: z.ZodType<T>, progress?: Progress): Promise<T> {
  const stream = createReadStream(file);
  const body = Readable.toWeb(progress ? stream.pipe(uploadProgress(progress, size)) : stream) as ReadableStream<Uint8Array>;
  const init = { method: 'PUT', headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) }, body, duplex: 'half' } as const;
  return client.send(path, answer, init, UPLOAD_TIMEOUT_MS);
}

/** Size and sha256 of `file`, checked against what the manifest says (`what` names it in errors). */
async function checkFile(file: string, want: { size: number; sha256: string }, what: string): Promise<number> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch (err) {
    throw new Error(`cannot read ${what} ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (size !== want.size) throw new Error(`${file} has ${size} bytes, the manifest says ${want.size}`);
  const sha = await sha256File(file);
  if (sha !== want.sha256) throw new Error(`${file} has sha256 ${sha}, the manifest says ${want.sha256}`);
  return size;
}

function push(argv: string[], io: CliIo): Promise<number> {
  const spec = { name: 'model push', usage: USAGE, options: { manifest: { type: 'string' }, progress: { type: 'boolean' } }, positionals: { min: 1, what: 'a model file' } } as const;
  return runCommand(argv, io, spec, async ({ values, positionals, hub, show }) => {
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
    const size = await checkFile(file, m.artifact, 'model');
    // A v2 manifest's test-vector sidecar lives beside the manifest (the schema allows a bare name).
    const tf = m.manifestVersion === 2 ? m.testVectorsFile : undefined;
    const sidecar = tf ? join(dirname(values.manifest), tf.file) : undefined;
    if (tf && sidecar) await checkFile(sidecar, tf, 'test vectors file');

    // Sent as read, not as parsed: the hub validates it again and signs what it parsed.
    const client = await hub(60_000);
    const announced = await client.request('POST', '/v1/models', AnnouncedSchema, { manifest: raw });
    if (tf && sidecar) {
      if (!announced.vectors) throw new Error('the hub did not ask for the test vectors file: it predates test-vector sidecars (upgrade the hub)');
      await putFile(client, announced.vectors.path, sidecar, tf.size, StoredSchema);
    }
    const r = await putFile(client, announced.upload.path, file, size, ModelSchema, new Progress(io, progressMode(io, values)));
    show(r, () => `released ${r.name}@${r.version}: counter ${r.counter}, ${human(r.size)}, sha256 ${r.sha256.slice(0, 12)}…, signed by key ${r.keyId}\n`);
  });
}

export function formatModels(models: ModelRow[]): string {
  return table(models, {
    NAME: (m) => m.name,
    VERSION: (m) => m.version,
    COUNTER: (m) => String(m.counter),
    QUANT: (m) => m.quantization ?? '-',
    SIZE: (m) => human(m.size),
    SHA256: (m) => m.sha256.slice(0, 12),
    KEY: (m) => m.keyId,
    CREATED: (m) => m.createdAt,
  });
}

function list(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'model list', usage: USAGE }, async ({ hub, show }) => {
    const { models } = await (await hub()).request('GET', '/v1/models', ListSchema);
    show(models, () => (models.length === 0 ? 'no models released (push one with: edgefleet model push <file.onnx> --manifest <m.json>)\n' : formatModels(models)));
  });
}

function describeSource(s: InputSource): string {
  switch (s.kind) {
    case 'image':
      return `image ${s.width}x${s.height} ${s.fit} ${s.colour} ${s.layout}`;
    case 'reading':
      return `reading, ${s.features.length} features`;
    case 'window':
      return `window of ${s.size} readings (hop ${s.hop}) × ${s.features.length} features${s.derive ? ', derived features' : ''}`;
    case 'constant':
      return `constant [${s.values.slice(0, 4).join(', ')}${s.values.length > 4 ? ', ...' : ''}]`;
    case 'state':
      return `state from ${s.output}`;
    case 'upstream':
      return `upstream ${s.output} (${s.frames} frames)`;
  }
}

function describePost(p: TaskSpec): string {
  switch (p.kind) {
    case 'detection':
      return `detection (${p.decoder}), score ≥ ${p.scoreThreshold}, IoU ${p.iouThreshold}, ≤ ${p.maxDetections}`;
    case 'regression':
      return `regression: ${p.targets.map((t) => `${t.name}${t.unit ? ` [${t.unit}]` : ''}`).join(', ')}`;
    case 'anomaly':
      return `anomaly, alarm above ${p.threshold}${p.reconstructs ? ` (reconstruction of ${p.reconstructs})` : ''}`;
    case 'segmentation':
      return `segmentation (${p.activation})`;
    case 'embedding':
      return `embedding: ${p.outputs.join(', ')}`;
    case 'classification':
      return `classification (${p.activation})`;
  }
}

function formatShow(m: z.infer<typeof ShowSchema>): string {
  const man = m.manifest;
  const dims = (s: (number | string)[]): string => `[${s.join(', ')}]`;
  const lines = [
    esc`${m.name}@${m.version}${man.description ? `: ${man.description}` : ''}`,
    `  release      counter ${m.counter}, created ${m.createdAt}`,
    `  signature    ${m.release.signature.alg}, key ${m.release.signature.keyId}`,
    `  artifact     ${man.artifact.file}, ${human(m.size)}, sha256 ${m.sha256}`,
    `  task         ${man.task}, ${man.quantization}`,
    ...man.inputs.map((t) => `  input        ${t.name} ${t.dtype} ${dims(t.shape)}`),
    ...man.outputs.map((t) => `  output       ${t.name} ${t.dtype} ${dims(t.shape)}`),
    ...(man.manifestVersion === 1
      ? [
          `  preprocess   ${man.preprocessing.kind === 'tabular' ? `tabular, ${man.preprocessing.features.length} features` : `image ${man.preprocessing.width}x${man.preprocessing.height} ${man.preprocessing.colour} ${man.preprocessing.layout} ${man.preprocessing.dtype}`}`,
        ]
      : man.inputs.map((t) => `  source       ${t.name} ← ${describeSource(t.source)}`)),
    ...(manifestLabels(man).length ? [`  labels       ${manifestLabels(man).join(', ')}`] : []),
    ...(man.manifestVersion === 2 ? [`  postprocess  ${describePost(man.postprocessing)}`] : []),
    `  test vectors ${man.testVectors.length}`,
    ...(man.evaluation ? [`  evaluation   ${(man.evaluation.accuracy * 100).toFixed(2)}% on ${man.evaluation.samples} (${man.evaluation.dataset})`] : []),
  ];
  return `${lines.join('\n')}\n`;
}

function show(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'model show', usage: USAGE, positionals: { min: 1, what: '<name>@<version>' } }, async ({ positionals, hub, show }) => {
    const { name, version } = parseRef(positionals[0]);
    const m = await (await hub()).request('GET', `/v1/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}`, ShowSchema);
    show(m, () => formatShow(m));
  });
}

/** Loaded on use: the other subcommands need neither the guesser nor sharp. */
const init = async (argv: string[], io: CliIo): Promise<number> => (await import('./model-init.ts')).run(argv, io);

export function run(argv: string[], io: CliIo): Promise<number> {
  return runSubcommands(argv, io, { name: 'model', usage: USAGE, commands: { push, list, show, init } });
}
