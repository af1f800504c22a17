/**
 * The operator dashboard in a real browser: Debian's headless Chromium driven by playwright-core
 * (which never downloads a browser) against a running test fleet, the real hub and three real
 * agents in process (test/helpers/fleet-in-process.ts), releases pushed through the API.
 *
 *   1. Serving: / redirects to /ui/, files carry the CSP and the other security headers, ETags
 *      revalidate, nothing outside the allow-list is served (no traversal, no .ts source).
 *   2. Login: a wrong token is refused on screen; the admin token shows the fleet, devices online.
 *   3. A device's detail page; the model registry with each version's task, and the page of a
 *      manifest v2 model (pushed through the API) with its inputs' sources and postprocessing.
 *   4. A rollout created from the form advances wave by wave to completed, paused and resumed on
 *      the way; a second one (approval per wave) is aborted from its page.
 *   5. Drift: summaries with temp_c shifted by 1 SD in the last two windows raise an alert; the
 *      chart shows the series (GET /v1/drift?series=fleet, checked against the API too) with the
 *      alert on it, and the alert is acknowledged from the list.
 *   6. A viewer token: actions disabled; forcing one shows the hub's 403.
 *
 * Drift summaries are handed to the hub's aggregator the way ingest hands it a stored batch
 * (the MQTT path to it has its own tests in test/integration/hub-drift.test.ts), for windows that
 * closed an hour ago: the hub tests them at once, no waiting for 15-minute windows.
 *
 * Screenshots of every step go to test-artifacts/dashboard/ (git-ignored; CI keeps them).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { hashToken, newApiToken } from '../../hub/auth/tokens.ts';
import { createHub, loadHubConfig } from '../../hub/main.ts';
import { DRIFT_KIND, DRIFT_STREAM } from '../../shared/drift/summary.ts';
import { silentLogger } from '../../shared/log.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { writeReleaseVariant } from '../../scripts/lib/release-variants.ts';
import { makeModels, makeModelsV2 } from '../../scripts/make-models.ts';
import { InProcessFleet, MODELS_DIR, until } from '../helpers/fleet-in-process.ts';
import { DriftFixture, MODEL, WINDOW_MS } from '../integration/hub-drift-fixture.ts';

const CHROMIUM = process.env.EDGEFLEET_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(REPO_ROOT, 'test-artifacts', 'dashboard');
const DEVICES = ['press-1', 'press-2', 'press-3'];
const GROUP = 'test'; // InProcessFleet's group
const READINGS = 300;

interface RolloutStatus {
  id: string;
  state: string;
  phase: string;
  waves: { status: string }[];
}

describe('dashboard in headless Chromium against a running fleet', { timeout: 150_000 }, () => {
  const fleet = new InProcessFleet();
  let browser: Browser | undefined;
  let page: Page;
  let steps = 0;
  let shots = 0;
  const consoleErrors: string[] = [];

  const url = (path: string): string => `${fleet.hub.httpUrl}${path}`;
  const step = async (name: string): Promise<void> => {
    steps++;
    shots++;
    await page.screenshot({ path: join(ARTIFACTS, `${String(steps).padStart(2, '0')}-${name}.png`), fullPage: true });
  };
  const push = async (variant: 'retrained', version: string): Promise<void> => {
    const r = await writeReleaseVariant(join(fleet.root, 'releases'), variant, version);
    await fleet.api('POST', '/v1/models', { manifest: r.manifest });
    await putArtifact(r.manifest.name, version, r.bytes);
  };
  const putArtifact = async (name: string, version: string, bytes: Uint8Array): Promise<void> => {
    const res = await fetch(url(`/v1/models/${name}/${version}/artifact`), {
      method: 'PUT',
      headers: { authorization: `Bearer ${fleet.hub.adminToken}`, 'content-type': 'application/octet-stream' },
      body: bytes,
    });
    assert.equal(res.status, 201, await res.text());
  };
  const rolloutState = async (id: string): Promise<RolloutStatus> => fleet.api<RolloutStatus>('GET', `/v1/rollouts/${id}`);
  /** Two waves (a canary, then the rest of the group), each baked 0.5 s. */
  const fillRolloutForm = async (version: string): Promise<void> => {
    await page.click('#nav a[data-view=rollouts]');
    await page.selectOption('#ro-model', `machine-state@${version}`);
    await page.fill('#ro-target', GROUP);
    await page.fill('#ro-waves', '1, 100%');
    await page.fill('#ro-bake', '0.5');
  };
  const currentRolloutId = (): string => decodeURIComponent(/#\/rollouts\/([^/?]+)/.exec(page.url())?.[1] ?? '');

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(
        `Chromium not found at ${CHROMIUM}. The dashboard test drives Debian's Chromium (playwright-core never downloads a browser): ` +
          'install it with `sudo apt-get install -y chromium`, or point EDGEFLEET_CHROMIUM at a Chromium binary.',
      );
    }
    rmSync(ARTIFACTS, { recursive: true, force: true });
    mkdirSync(ARTIFACTS, { recursive: true });
    await makeModels({ outDir: MODELS_DIR });
    await makeModelsV2({ outDir: MODELS_DIR }); // line-state, pushed as a v2 release below
    const config = loadHubConfig({
      env: {},
      overrides: {
        dataDir: join(fleet.root, 'hub'),
        mqtt: { host: '127.0.0.1', port: 0 },
        http: { host: '127.0.0.1', port: 0 },
        rollouts: { tickMs: 200 },
        // Windows are tested when the test says (hub.drift.tick()), never half-merged.
        drift: { tickMs: 600_000, graceMs: 1000 },
      },
    });
    fleet.hub = await createHub(config, { log: silentLogger() });
    await fleet.hub.start(new AbortController().signal);

    // The shipped model as release 1.0.0 (its manifest is the drift reference), and a good 1.1.0.
    const manifest = JSON.parse(await readFile(join(MODELS_DIR, 'machine-state.manifest.json'), 'utf8')) as Record<string, unknown>;
    await fleet.api('POST', '/v1/models', { manifest });
    await putArtifact(MODEL.name, MODEL.version, await readFile(join(MODELS_DIR, 'machine-state.onnx')));
    await push('retrained', '1.1.0');
    await push('retrained', '1.2.0');
    const keys = await fleet.api<{ keys: { publicKeyPem: string }[] }>('GET', '/v1/keys');
    const trustedKeys = keys.keys.map((k, i) => {
      const path = join(fleet.root, `hub-key-${i}.pem`);
      writeFileSync(path, k.publicKeyPem);
      return path;
    });
    await Promise.all(DEVICES.map((id) => fleet.startAgent(id, { hub: { httpUrl: fleet.hub.httpUrl }, updates: { trustedKeys, probationMs: 0 } })));
    await until(async () => (await fleet.api<{ devices: { online: number } }>('GET', '/v1/fleet')).devices.online === DEVICES.length, 30_000, 'every agent online');

    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
    page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.setDefaultTimeout(15_000);
    page.on('pageerror', (err) => consoleErrors.push(`pageerror: ${err.message}`));
    page.on('console', (m) => {
      // Chromium logs every non-2xx fetch as "Failed to load resource"; the refusals here are deliberate.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) consoleErrors.push(m.text());
    });
  });

  after(async () => {
    await browser?.close();
    await fleet.stop();
    process.stdout.write(`dashboard: steps=${steps} screenshots=${shots}\n`);
  });

  it('serves the dashboard from the hub with security headers, and nothing else from disk', async () => {
    const root = await fetch(url('/'), { redirect: 'manual' });
    assert.equal(root.status, 302);
    assert.equal(root.headers.get('location'), '/ui/');
    const index = await fetch(url('/ui/'));
    assert.equal(index.status, 200);
    assert.equal(index.headers.get('content-type'), 'text/html; charset=utf-8');
    const csp = index.headers.get('content-security-policy') ?? '';
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /script-src 'self';/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
    assert.equal(index.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(index.headers.get('x-frame-options'), 'DENY');
    assert.equal(index.headers.get('referrer-policy'), 'no-referrer');
    const html = await index.text();
    assert.doesNotMatch(html, /<script>|<style|style=|https?:\/\//, 'no inline script or style, no external asset');
    const js = await fetch(url('/ui/app.js'));
    assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8');
    const etag = js.headers.get('etag') ?? '';
    assert.ok(etag, 'an ETag');
    assert.equal((await fetch(url('/ui/app.js'), { headers: { 'if-none-match': etag } })).status, 304);
    for (const path of ['/ui/static.ts', '/ui/..%2Fapi%2Fserver.ts', '/ui/%2e%2e%2fmain.ts', '/ui/nope.js']) {
      assert.equal((await fetch(url(path))).status, 404, path);
    }
    const who = await fleet.api<{ role: string }>('GET', '/v1/whoami');
    assert.equal(who.role, 'admin');
  });

  it('login: a wrong token is refused on screen; the admin token shows the fleet with every device online', async () => {
    await page.goto(url('/'));
    await page.locator('#login').waitFor();
    await step('login');
    await page.fill('#token', 'deadbeef00000000.not-a-real-secret');
    await page.click('#login button[type=submit]');
    await page.locator('#login-error', { hasText: 'refused' }).waitFor();
    await step('login-refused');

    await page.fill('#token', fleet.hub.adminToken);
    await page.click('#login button[type=submit]');
    const table = page.getByTestId('devices');
    for (const id of DEVICES) {
      await table.locator(`tr[data-id="${id}"]`, { hasText: 'online' }).waitFor();
      await table.locator(`tr[data-id="${id}"]`, { hasText: 'machine-state@1.0.0' }).waitFor();
    }
    assert.match(await page.getByTestId('fleet-totals').innerText(), /3 \/ 3/);
    await step('fleet');
  });

  it('device detail and the model registry', async () => {
    await page.getByTestId('devices').getByRole('link', { name: 'press-2' }).click();
    await page.getByRole('heading', { name: 'Device press-2' }).waitFor();
    await page.locator('dl.kv', { hasText: 'online' }).waitFor();
    await step('device');

    // A manifest v2 model (anomaly: a reading and its own state h fed back from output h_out), pushed like any release.
    const v2 = JSON.parse(await readFile(join(REPO_ROOT, 'models', 'line-state.manifest.json'), 'utf8')) as { name: string; version: string };
    await fleet.api('POST', '/v1/models', { manifest: v2 });
    await putArtifact(v2.name, v2.version, await readFile(join(REPO_ROOT, 'models', 'line-state.onnx')));

    await page.click('#nav a[data-view=models]');
    const models = page.getByTestId('models');
    for (const v of ['1.0.0', '1.1.0', '1.2.0']) await models.locator(`tr[data-id="machine-state@${v}"]`).locator('.badge', { hasText: 'classification' }).waitFor();
    const v2Row = models.locator(`tr[data-id="${v2.name}@${v2.version}"]`);
    await v2Row.locator('.badge', { hasText: 'anomaly' }).waitFor();
    await step('models');

    // Its page: inputs with their sources, the postprocessing in one line.
    await v2Row.getByRole('link', { name: v2.name }).click();
    await page.getByRole('heading', { name: `Model ${v2.name}@${v2.version}` }).waitFor();
    await page.getByTestId('model-info').locator('.badge', { hasText: 'anomaly' }).waitFor();
    const inputs = page.getByTestId('model-inputs');
    assert.match(await inputs.locator('tr[data-id="x"]').innerText(), /reading of 4 features \(belt_speed, motor_current, motor_temp, vib_rms\)/);
    assert.match(await inputs.locator('tr[data-id="h"]').innerText(), /state from h_out/);
    assert.match(await page.getByTestId('postprocessing').innerText(), /score score\[0\], alarm at ≥ 6\.428/);
    await step('model-v2');
  });

  it('a rollout started from the form advances wave by wave to completed, paused and resumed on the way', async () => {
    await fillRolloutForm('1.1.0');
    await step('rollout-form');
    await page.click('#rollout-form button[type=submit]');
    await page.getByRole('heading', { name: /Rollout of machine-state@1\.1\.0/ }).waitFor();
    const id = currentRolloutId();
    assert.ok(id, page.url());

    await page.getByRole('button', { name: 'Pause' }).click();
    await page.locator('h1 .badge', { hasText: 'paused' }).waitFor();
    assert.equal((await rolloutState(id)).state, 'paused');
    await step('rollout-paused');
    await page.getByRole('button', { name: 'Resume' }).click();
    await page.locator('h1 .badge', { hasText: 'running' }).waitFor();

    // Watch the waves advance on the page (it refreshes itself while the rollout runs).
    const waves = page.getByTestId('waves');
    await waves.locator('tr[data-id="wave-0"]', { hasText: 'done' }).waitFor({ timeout: 60_000 });
    await step('rollout-wave-1-done');
    await page.locator('h1 .badge', { hasText: 'completed' }).waitFor({ timeout: 60_000 });
    await waves.locator('tr[data-id="wave-1"]', { hasText: 'done' }).waitFor();
    const devices = page.getByTestId('rollout-devices');
    for (const d of DEVICES) await devices.locator('tr', { hasText: d }).filter({ hasText: 'succeeded' }).waitFor();
    assert.ok((await page.getByTestId('gates').locator('tbody tr').count()) >= 2, 'gate results shown');
    const s = await rolloutState(id);
    assert.equal(s.state, 'completed');
    assert.deepEqual(
      s.waves.map((w) => w.status),
      ['done', 'done'],
    );
    await step('rollout-completed');

    // The devices now report the new version on the fleet page.
    await page.click('#nav a[data-view=fleet]');
    for (const d of DEVICES) await page.getByTestId('devices').locator(`tr[data-id="${d}"]`, { hasText: 'machine-state@1.1.0' }).waitFor({ timeout: 30_000 });
  });

  it('a rollout waiting for approval of its second wave is aborted from its page', async () => {
    await fillRolloutForm('1.2.0');
    await page.check('#ro-approval');
    await page.click('#rollout-form button[type=submit]');
    await page.getByRole('heading', { name: /Rollout of machine-state@1\.2\.0/ }).waitFor();
    const id = currentRolloutId();
    // The canary wave starts at once; the next one waits for an approval that never comes.
    await page.getByTestId('rollout-summary').filter({ hasText: 'awaiting_approval' }).waitFor({ timeout: 60_000 });
    assert.equal(await page.getByRole('button', { name: 'Approve next wave' }).isEnabled(), true);
    page.once('dialog', (d) => void d.accept());
    await page.getByRole('button', { name: 'Abort' }).click();
    await page.locator('h1 .badge', { hasText: 'aborted' }).waitFor();
    assert.equal((await rolloutState(id)).state, 'aborted');
    assert.equal(await page.getByRole('button', { name: 'Resume' }).isDisabled(), true);
    await step('rollout-aborted');
  });

  it('drift: the shifted feature is charted with its alert, and the alert is acknowledged', async () => {
    // Six closed hub windows an hour or so ago: four nominal, then temp_c up 1 SD on every device.
    const drift = new DriftFixture(join(fleet.root, 'unused'));
    drift.features = (JSON.parse(await readFile(join(MODELS_DIR, 'machine-state.manifest.json'), 'utf8')) as { drift: { features: DriftFixture['features'] } }).drift.features;
    const first = Math.floor(Date.now() / WINDOW_MS) * WINDOW_MS - 7 * WINDOW_MS;
    let seq = 0;
    for (let w = 0; w < 6; w++) {
      const windowStart = first + w * WINDOW_MS;
      for (const d of DEVICES) {
        const body = drift.summary(d, windowStart, READINGS, w >= 4 ? { feature: 'temp_c', sd: 1 } : undefined);
        fleet.hub.driftAggregator.onRecords(d, [{ stream: DRIFT_STREAM, kind: DRIFT_KIND, epoch: 1, seq: seq++, ts: Date.now(), body }]);
      }
    }
    await fleet.hub.driftAggregator.idle();
    await fleet.hub.drift.tick();
    const open = await fleet.api<{ alerts: { feature: string; state: string }[] }>('GET', '/v1/alerts?state=open');
    assert.ok(open.alerts.some((a) => a.feature === 'temp_c'), JSON.stringify(open.alerts));

    // The series the chart draws: fleet mean in reference SDs, ~0 then ~1.
    const api = await fleet.api<{ series: { windowStart: string; devices: number; features: Record<string, { shiftSd: number | null; n: number }> }[] }>(
      'GET',
      `/v1/drift?model=${MODEL.name}&version=${MODEL.version}&series=fleet&feature=temp_c`,
    );
    assert.equal(api.series.length, 6);
    assert.deepEqual(Object.keys(api.series[0]?.features ?? {}), ['temp_c']);
    for (const [w, p] of api.series.entries()) {
      const f = p.features.temp_c;
      assert.equal(p.devices, DEVICES.length);
      assert.equal(f?.n, DEVICES.length * READINGS);
      const shift = f?.shiftSd ?? NaN;
      if (w < 4) assert.ok(Math.abs(shift) < 0.3, `window ${w}: ${shift}`);
      else assert.ok(shift > 0.7 && shift < 1.3, `window ${w}: ${shift}`);
    }
    const noModel = await fetch(url('/v1/drift?series=fleet'), { headers: { authorization: `Bearer ${fleet.hub.adminToken}` } });
    assert.equal(noModel.status, 400);

    await page.goto(url(`/ui/#/drift?model=${MODEL.name}&version=${MODEL.version}&feature=temp_c`));
    const chart = page.getByTestId('drift-chart');
    await chart.waitFor();
    assert.equal(await chart.locator('circle.point').count(), 6);
    assert.ok((await chart.locator('rect.band').count()) >= 1, 'the alert is shaded on the chart');
    assert.ok((await chart.locator('path.marker').count()) >= 1, 'findings are marked on the chart');
    const alertRow = page.getByTestId('alerts').locator('tr', { hasText: 'temp_c' }).filter({ hasText: 'open' }).first();
    await alertRow.waitFor();
    await step('drift-alert');
    await alertRow.getByRole('button', { name: 'Acknowledge' }).click();
    await page.getByTestId('alerts').locator('tr', { hasText: 'temp_c' }).filter({ hasText: 'acknowledged' }).first().waitFor();
    await step('drift-acknowledged');
  });

  it('a login link (#token=, as npm run demo prints) logs in and leaves no token in the address or history', async () => {
    const ctx = await browser!.newContext({ viewport: { width: 1400, height: 1000 } });
    const p = await ctx.newPage();
    try {
      await p.goto(url(`/ui/#token=${encodeURIComponent(fleet.hub.adminToken)}`));
      await p.getByTestId('devices').locator('tr[data-id="press-1"]').waitFor();
      assert.equal(new URL(p.url()).hash, '#/fleet');
      assert.ok(!p.url().includes(fleet.hub.adminToken.slice(0, 12)), `token left in the address: ${p.url()}`);
      await p.goBack().catch(() => undefined);
      assert.ok(!p.url().includes(fleet.hub.adminToken.slice(0, 12)), `token reachable through history: ${p.url()}`);
      // A refused token in a link shows the login with the reason.
      const q = await ctx.newPage();
      await q.goto(url('/ui/#token=deadbeef00000000.not-a-real-secret'));
      await q.locator('#login-error', { hasText: 'refused' }).waitFor();
      assert.ok(!q.url().includes('not-a-real-secret'));
    } finally {
      await ctx.close();
    }
  });

  it('a viewer token sees everything and can change nothing; a forced action shows the 403', async () => {
    const t = newApiToken();
    await fleet.hub.store.createApiToken({ id: t.id, name: 'wall-screen', role: 'viewer', token: await hashToken(t.secret), createdAt: Date.now() });
    const ctx = await browser!.newContext({ viewport: { width: 1400, height: 1000 } });
    const viewer = await ctx.newPage();
    try {
      await viewer.goto(url('/ui/'));
      await viewer.fill('#token', t.token);
      await viewer.click('#login button[type=submit]');
      await viewer.locator('#who', { hasText: 'viewer' }).waitFor();
      await viewer.getByTestId('devices').locator('tr[data-id="press-1"]').waitFor();
      await viewer.click('#nav a[data-view=rollouts]');
      assert.equal(await viewer.locator('#ro-target').isDisabled(), true);
      assert.equal(await viewer.locator('#rollout-form button[type=submit]').isDisabled(), true);
      await viewer.getByTestId('rollouts').getByRole('link').first().click();
      const abort = viewer.getByRole('button', { name: 'Abort' });
      await abort.waitFor();
      assert.equal(await abort.isDisabled(), true);
      await viewer.click('#nav a[data-view=drift]');
      const ack = viewer.getByTestId('alerts').getByRole('button', { name: 'Resolve' }).first();
      await ack.waitFor();
      assert.equal(await ack.isDisabled(), true);
      // Force it: the hub refuses, and the page says so.
      await ack.evaluate((b: { disabled: boolean; click: () => void }) => {
        b.disabled = false;
        b.click();
      });
      await viewer.locator('#error', { hasText: '403 FORBIDDEN' }).waitFor();
      steps++;
      shots++;
      await viewer.screenshot({ path: join(ARTIFACTS, `${String(steps).padStart(2, '0')}-viewer-403.png`), fullPage: true });
      // Logging out forgets the token.
      await viewer.click('#logout');
      await viewer.locator('#login').waitFor();
      assert.equal(await viewer.evaluate('sessionStorage.length'), 0);
    } finally {
      await ctx.close();
    }
    assert.deepEqual(consoleErrors, [], 'no script error and no CSP violation in the page');
  });
});
