/**
 * Runs probe-child.ts on an untrusted model (the hub: an upload; the agent: a downloaded release)
 * in a separate process with three guards, because a hostile ONNX file can segfault the process
 * that loads it or allocate gigabytes at load time (PITFALLS: onnxruntime-node; ARCHITECTURE §2):
 *   - a wall-clock timeout, then SIGKILL;
 *   - an RSS budget, watched in /proc/<pid>/status every `pollMs`, then SIGKILL;
 *   - an address-space limit (RLIMIT_AS) set with prlimit once the child has loaded Node and
 *     onnxruntime: baseline + budget. It cannot be set at spawn: under tsx, esbuild's Wasm
 *     reserves ~10 GB of address space and Node dies at start-up below that (checked here), and
 *     a fixed limit under 1 GB kills plain Node too (PITFALLS). Relative to the measured
 *     baseline it stops one huge native allocation before it is even touched.
 * Linux-only guards (/proc, prlimit) soft-fail elsewhere; the timeout always applies.
 *
 * Until the child prints READY it has not seen the model, so whatever ends it before then
 * (it cannot be spawned, tsx or onnxruntime fail to load, the start-up outgrows the budgets) is
 * the probe's own failure: runProbe rejects with PROBE_FAILED and nothing blames or quarantines
 * the model (issue #12: a probe that could not find tsx reported every good model as bad).
 */
import { execFile, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Manifest } from '../manifest.ts';
import { caseProblems, checkModelMetadata, type CheckedCase } from '../model-check.ts';
import { modelSpec } from '../model-spec.ts';
import { childExecArgv, siblingModule } from '../modules.ts';
import { inlineTestVectors, numbersOf, readTestVectorsFile } from '../test-vectors.ts';
import { ProbeResultSchema, READY_LINE, RESULT_PREFIX, type ProbeRequest, type ProbeResult } from './probe-protocol.ts';

export interface ProbeLimits {
  timeoutMs: number;
  /** Resident memory the child may use before it is killed. */
  maxRssBytes: number;
  /** Address space the child may add after start-up (RLIMIT_AS = baseline + this). */
  addressSpaceBudgetBytes: number;
  pollMs?: number;
}

export interface ProbeOutcome {
  /** Every way the model disagrees with its manifest or could not be loaded; empty = fine. */
  problems: string[];
  /** How the child ended, for logs. */
  exit: string;
  peakRssBytes: number;
}

async function procStatusKb(pid: number, field: 'VmRSS' | 'VmSize'): Promise<number | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function prlimitAs(pid: number, bytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('prlimit', [`--pid=${pid}`, `--as=${bytes}`], { timeout: 2000 }, (err) => (err ? reject(new Error(err.message, { cause: err })) : resolve()));
  });
}

/**
 * Runs the probe child on `path`; resolves with the raw result or a failure description once
 * the model is in the child's hands. Rejects with PROBE_FAILED when the child never got that
 * far (see the header): that says nothing about the model.
 */
export function runProbe(req: ProbeRequest, limits: ProbeLimits, log: Logger): Promise<{ result: ProbeResult | undefined; exit: string; peakRssBytes: number }> {
  const url = siblingModule(import.meta.url, './probe-child');
  const child = spawn(process.execPath, [...childExecArgv(url), fileURLToPath(url)], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  const pid = child.pid;
  let stdout = '';
  let stderr = '';
  let result: ProbeResult | undefined;
  let killedFor: string | undefined;
  let peakKb = 0;
  let ready = false;
  /** Set when the child failed for a reason of its own, before or without seeing the model. */
  let startFailure: string | undefined;

  const kill = (why: string): void => {
    if (killedFor === undefined) killedFor = why;
    child.kill('SIGKILL');
  };
  const timer = setTimeout(() => kill(`timed out after ${limits.timeoutMs} ms`), limits.timeoutMs);
  let polling = false;
  const poll = setInterval(() => {
    if (pid === undefined || polling) return;
    polling = true;
    void procStatusKb(pid, 'VmRSS')
      .then((kb) => {
        if (kb === undefined) return;
        peakKb = Math.max(peakKb, kb);
        if (kb * 1024 > limits.maxRssBytes) kill(`used ${Math.round(kb / 1024)} MiB of memory, more than ${Math.round(limits.maxRssBytes / 2 ** 20)} MiB allowed`);
      })
      .finally(() => (polling = false));
  }, limits.pollMs ?? 25);

  const onReady = async (): Promise<void> => {
    if (pid !== undefined) {
      const baseKb = await procStatusKb(pid, 'VmSize');
      if (baseKb !== undefined) {
        await prlimitAs(pid, baseKb * 1024 + limits.addressSpaceBudgetBytes).catch((err: unknown) =>
          log.warn({ err }, 'cannot cap the model probe address space (prlimit); relying on the RSS watch'),
        );
      }
    }
    child.stdin.end(JSON.stringify(req));
  };

  child.stdin.on('error', () => undefined); // the child may die before reading; its exit says why
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    stdout += chunk;
    if (stdout.length > 16 * 1024 * 1024) kill('wrote too much output');
    let nl: number;
    while ((nl = stdout.indexOf('\n')) >= 0) {
      const line = stdout.slice(0, nl);
      stdout = stdout.slice(nl + 1);
      if (line === READY_LINE && !ready) {
        ready = true;
        onReady().catch(() => {
          startFailure ??= 'could not be handed the request';
          kill('could not be started');
        });
      } else if (line.startsWith(RESULT_PREFIX)) {
        try {
          const parsed = ProbeResultSchema.safeParse(JSON.parse(line.slice(RESULT_PREFIX.length)));
          result = parsed.success ? parsed.data : { ok: false, error: 'the probe answered nonsense' };
        } catch {
          result = { ok: false, error: 'the probe answered nonsense' };
        }
      }
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    if (stderr.length < 8192) stderr += chunk;
  });

  return new Promise((resolve, reject) => {
    child.once('error', (err) => {
      startFailure ??= `could not be started: ${err.message}`;
      killedFor ??= `could not be started: ${err.message}`;
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      clearInterval(poll);
      const exit = killedFor ?? (signal ? `died with ${signal}` : `exited with code ${code ?? '?'}`);
      if (startFailure !== undefined || !ready) {
        const why = startFailure ?? `${exit} before it was ready`;
        // Node prints the error line amid a stack and its version: quote the error itself.
        const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('Node.js v'));
        const lastLine = (lines.find((l) => /^[\w.]*Error\b/.test(l)) ?? lines.at(-1))?.slice(0, 300);
        log.error({ exit, stderr: stderr.slice(-2000) }, 'the model probe itself failed (not the model)');
        reject(
          new EdgefleetError(ErrorCode.PROBE_FAILED, `the model probe could not run, the model was not checked: its child process ${why}${lastLine ? ` (${lastLine})` : ''}`, {
            details: { exit },
          }),
        );
        return;
      }
      if (!result || killedFor) log.debug({ exit, stderr: stderr.slice(-2000) }, 'model probe failed');
      resolve({ result: killedFor ? undefined : result, exit, peakRssBytes: peakKb * 1024 });
    });
  });
}

/**
 * Loads the artifact at `path` in a guarded child and checks it against `manifest`: metadata
 * first, then the manifest's test vectors: the inline ones and, for a v2 manifest with a
 * `testVectorsFile`, the sidecar at `sidecarPath` (the hub's stored copy, or the device's
 * download; its size and sha256 are checked against the manifest before it is parsed). Never
 * throws for anything the model does; a missing or altered sidecar is a problem of the release.
 */
export async function probeModel(path: string, manifest: Manifest, limits: ProbeLimits, log: Logger, sidecarPath?: string): Promise<ProbeOutcome> {
  let cases: ProbeCase[];
  try {
    cases = await probeCases(manifest, sidecarPath);
  } catch (err) {
    return { problems: [toEdgefleetError(err).message], exit: 'not started', peakRssBytes: 0 };
  }
  const req: ProbeRequest = { path, vectors: cases.map((c) => ({ inputs: c.inputs, outputs: Object.keys(c.expected) })) };
  const { result, exit, peakRssBytes } = await runProbe(req, limits, log);
  if (!result) return { problems: [`the model could not be loaded safely: the loader ${exit}`], exit, peakRssBytes };
  if (!result.ok) return { problems: [result.error], exit, peakRssBytes };
  const problems = checkModelMetadata({ inputs: result.inputs, outputs: result.outputs }, manifest);
  if (problems.length === 0) {
    const actual = cases.map((_, i) => {
      const got = result.vectors[i];
      return got ? Object.fromEntries(Object.entries(got).map(([k, v]) => [k, v.map((x) => x ?? NaN)])) : undefined;
    });
    problems.push(...caseProblems(cases, actual, manifest.manifestVersion === 1 ? 'vector' : 'output'));
    if (result.vectorErrors[0]) problems.push(`test vectors: ${result.vectorErrors[0]}`);
  }
  return { problems, exit, peakRssBytes };
}

/** A case as the probe child takes it (every input as plain numbers) and as its outputs are checked. */
interface ProbeCase extends CheckedCase {
  inputs: ProbeRequest['vectors'][number]['inputs'];
}

/**
 * The cases a probe runs: v1 vectors through the v2 view; v2 inline ones (named as earlier
 * messages named them, `test vector 0 output y`) and the sidecar's.
 */
async function probeCases(manifest: Manifest, sidecarPath: string | undefined): Promise<ProbeCase[]> {
  const values = (t: { dims: number[]; values: number[] }): { dims: number[]; values: number[] } => ({ dims: t.dims, values: t.values });
  if (manifest.manifestVersion !== 2) {
    return modelSpec(manifest).testVectors.map((tv, k) => ({
      label: `test vector ${k}`,
      inputs: Object.fromEntries(Object.entries(tv.inputs).map(([n, t]) => [n, values(t)])),
      expected: Object.fromEntries(Object.entries(tv.expected).map(([n, t]) => [n, { data: t.values }])),
      tolerance: tv.tolerance,
    }));
  }
  const tf = manifest.testVectorsFile;
  if (tf && !sidecarPath) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `the manifest names test vectors file ${tf.file}, which was not supplied with the model`);
  const inline = inlineTestVectors(manifest).map((c, k) => ({ ...c, label: `test vector ${k}` }));
  const all = [...inline, ...(tf && sidecarPath ? await readTestVectorsFile(manifest, sidecarPath) : [])];
  const dtypes = new Map(manifest.inputs.map((i) => [i.name, i.dtype]));
  return all.map((c) => ({
    label: c.label,
    inputs: Object.fromEntries(Object.entries(c.inputs).map(([n, t]) => [n, { dims: t.dims, values: Array.from(numbersOf({ dtype: dtypes.get(n) ?? 'float32', data: t.data })) }])),
    expected: c.expected,
    tolerance: c.tolerance,
  }));
}

/** Throws BAD_MODEL listing the problems, if any. */
export function assertNoProblems(outcome: ProbeOutcome, what: string): void {
  if (outcome.problems.length === 0) return;
  throw new EdgefleetError(ErrorCode.BAD_MODEL, `${what} refused: ${outcome.problems.join('; ')}`, {
    details: { problems: outcome.problems },
  });
}
