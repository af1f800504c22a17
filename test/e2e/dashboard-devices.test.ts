/**
 * The dashboard's fleet page at 10,000 devices (issue #16), in Debian's headless Chromium driven
 * by playwright-core (never downloads a browser) against a real hub whose store holds 10,000
 * devices and 100 sensors (test/helpers/many-devices.ts): the page shows the total, pages with
 * Next / Previous through the API's cursor, searches, and filters by status, group, kind and
 * label, each checked against the seeded facts. Every /v1/devices call the page makes is
 * recorded: none asks for more than one page, none returns more.
 *
 * Screenshots go to test-artifacts/dashboard-devices/ (git-ignored). Timings (click to rows on
 * screen) are printed, never asserted.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { silentLogger } from '../../shared/log.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { seedFleet, type SeededPrincipal } from '../helpers/many-devices.ts';

const CHROMIUM = process.env.EDGEFLEET_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(REPO_ROOT, 'test-artifacts', 'dashboard-devices');
const DEVICES = 10_000;
/** hub/ui/fleet.js PAGE_SIZE. */
const PAGE_SIZE = 50;

describe('dashboard fleet page at 10,000 devices', { timeout: 120_000 }, () => {
  let dir: string;
  let hub: Hub;
  let seeded: SeededPrincipal[];
  let browser: Browser | undefined;
  let page: Page;
  let shots = 0;
  const calls: { url: string; items: number }[] = [];
  const consoleErrors: string[] = [];

  const shot = async (name: string): Promise<void> => {
    shots++;
    await page.screenshot({ path: join(ARTIFACTS, `${String(shots).padStart(2, '0')}-${name}.png`), fullPage: true });
  };
  const rowIds = async (): Promise<string[]> =>
    page
      .getByTestId('devices')
      .locator('tbody tr')
      .evaluateAll((rows: { getAttribute: (name: string) => string | null }[]) => rows.map((r) => r.getAttribute('data-id') ?? ''));
  const range = (): Promise<string> => page.getByTestId('device-range').innerText();
  /** Waits until the table shows exactly these rows (the first ones of the expected list) and the range says `text`. */
  const shows = async (expected: string[], text: RegExp, what: string): Promise<number> => {
    const t0 = performance.now();
    const want = expected.slice(0, PAGE_SIZE);
    for (;;) {
      const ids = want.length ? await rowIds().catch(() => []) : [];
      const r = await range().catch(() => '');
      if (JSON.stringify(ids) === JSON.stringify(want) && text.test(r)) break;
      if (performance.now() - t0 > 15_000) assert.fail(`${what}: rows ${JSON.stringify(ids.slice(0, 3))}… range "${r}", want ${JSON.stringify(want.slice(0, 3))}… ${text}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return performance.now() - t0;
  };
  const num = (n: number): string => n.toLocaleString('en-US');

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`Chromium not found at ${CHROMIUM} (playwright-core never downloads one): install it with \`sudo apt-get install -y chromium\`, or set EDGEFLEET_CHROMIUM.`);
    }
    rmSync(ARTIFACTS, { recursive: true, force: true });
    mkdirSync(ARTIFACTS, { recursive: true });
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-dash-devices-'));
    const config = loadHubConfig({ env: {}, overrides: { dataDir: dir, mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, store: { synchronous: 'NORMAL' } } });
    hub = await createHub(config, { log: silentLogger() });
    await hub.start(new AbortController().signal);
    seeded = await seedFleet(hub.store, DEVICES);

    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
    // en-US: the range reads 1–50 of 10,100 whatever the machine's locale.
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 }, locale: 'en-US' });
    page = await ctx.newPage();
    page.setDefaultTimeout(15_000);
    page.on('pageerror', (err) => consoleErrors.push(`pageerror: ${err.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) consoleErrors.push(m.text());
    });
    page.on('response', (res) => {
      const u = new URL(res.url());
      if (u.pathname !== '/v1/devices' || res.request().method() !== 'GET') return;
      void res.json().then(
        (b: { items?: unknown[] }) => calls.push({ url: u.search, items: b.items?.length ?? -1 }),
        () => calls.push({ url: u.search, items: -1 }),
      );
    });
  });

  after(async () => {
    await browser?.close();
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
    process.stdout.write(`dashboard-devices: screenshots=${shots} in ${ARTIFACTS}, /v1/devices calls=${calls.length}\n`);
  });

  it('shows the total and pages forward and back through the cursor', async () => {
    await page.goto(`${hub.httpUrl}/ui/`);
    await page.fill('#token', hub.adminToken);
    const t0 = performance.now();
    await page.click('#login button[type=submit]');
    const all = seeded.map((p) => p.id);
    await shows(all, new RegExp(`^1–${PAGE_SIZE} of ${num(seeded.length)}$`), 'first page');
    process.stdout.write(`dashboard-devices: login to the first page of ${num(seeded.length)}: ${Math.round(performance.now() - t0)} ms\n`);
    assert.match(await page.getByTestId('fleet-totals').innerText(), new RegExp(`${num(seeded.filter((p) => p.kind === 'device' && p.status !== 'offline').length)} / ${num(DEVICES)}`));
    assert.equal(await page.getByTestId('page-prev').isDisabled(), true);
    await shot('first-page');

    const turns: number[] = [];
    for (let n = 1; n <= 3; n++) {
      await page.getByTestId('page-next').click();
      turns.push(await shows(all.slice(n * PAGE_SIZE), new RegExp(`^${num(n * PAGE_SIZE + 1)}–${num((n + 1) * PAGE_SIZE)} of `), `page ${n + 1}`));
    }
    await shot('page-4');
    await page.getByTestId('page-prev').click();
    turns.push(await shows(all.slice(2 * PAGE_SIZE), new RegExp(`^${num(2 * PAGE_SIZE + 1)}–`), 'back to page 3'));
    process.stdout.write(`dashboard-devices: page turn, click to rows on screen: ${turns.map((t) => Math.round(t)).join(', ')} ms\n`);
  });

  it('searches, and filters by status, group, kind and label; a filter change starts at page 1', async () => {
    const expect = async (what: string, keep: (p: SeededPrincipal) => boolean): Promise<void> => {
      const want = seeded.filter(keep).map((p) => p.id);
      const ms = await shows(want, new RegExp(`^${want.length ? `1–${Math.min(PAGE_SIZE, want.length)}` : '0'} of ${num(want.length)}$`), what);
      assert.equal(await page.getByTestId('page-next').isDisabled(), want.length <= PAGE_SIZE, `${what}: Next only when more follow`);
      process.stdout.write(`dashboard-devices: ${what.padEnd(36)} ${String(want.length).padStart(5)} match, on screen in ${Math.round(ms)} ms\n`);
    };
    await page.fill('#dev-search', 'dev-042');
    await expect('search "dev-042"', (p) => p.id.includes('dev-042'));
    assert.match(page.url(), /#\/fleet\?q=dev-042$/, 'the filter is in the URL');
    await shot('search');
    await page.fill('#dev-search', '');
    await page.selectOption('#dev-status', 'revoked');
    await expect('status revoked', (p) => p.status === 'revoked');
    assert.ok((await page.getByTestId('devices').locator('.badge', { hasText: 'revoked' }).count()) >= 1);
    await shot('revoked');
    await page.selectOption('#dev-status', 'online');
    await page.fill('#dev-group', 'line-4');
    await page.fill('#dev-label', 'site=berlin');
    await expect('online, group line-4, site=berlin', (p) => p.status === 'online' && p.group === 'line-4' && p.labels.site === 'berlin');
    await page.getByTestId('page-next').click();
    const want = seeded.filter((p) => p.status === 'online' && p.group === 'line-4' && p.labels.site === 'berlin').map((p) => p.id);
    await shows(want.slice(PAGE_SIZE), new RegExp(`^${PAGE_SIZE + 1}–`), 'filtered page 2');
    await shot('filtered-page-2');
    await page.selectOption('#dev-status', '');
    await page.fill('#dev-group', '');
    await page.fill('#dev-label', '');
    await page.selectOption('#dev-kind', 'sensor');
    await expect('kind sensor', (p) => p.kind === 'sensor');
    await page.fill('#dev-search', 'no-such-device');
    await shows([], /^0 of 0$/, 'no match');
    await page.getByTestId('devices').filter({ hasText: 'No device matches these filters.' }).waitFor();
    await shot('no-match');

    // A malformed label filter: the hub's 400 on screen, and gone once it is fixed.
    await page.fill('#dev-search', '');
    await page.selectOption('#dev-kind', '');
    await page.fill('#dev-label', 'site');
    await page.locator('#error', { hasText: '400 BAD_INPUT: label' }).waitFor();
    await shot('bad-label');
    await page.fill('#dev-label', 'rack=r7');
    await expect('label rack=r7', (p) => p.labels.rack === 'r7');
    await page.locator('#error').waitFor({ state: 'hidden' });

    // A linked view opens filtered.
    await page.goto(`${hub.httpUrl}/ui/#/fleet?group=line-9&status=offline`);
    await expect('linked: group line-9, offline', (p) => p.group === 'line-9' && p.status === 'offline');
    assert.equal(await page.inputValue('#dev-group'), 'line-9');
    assert.equal(await page.inputValue('#dev-status'), 'offline');
  });

  it('never asked for or got more than a page', () => {
    assert.ok(calls.length > 10, `calls recorded: ${calls.length}`);
    for (const c of calls) {
      assert.match(c.url, new RegExp(`[?&]limit=${PAGE_SIZE}(&|$)`), c.url);
      assert.ok(c.items >= -1 && c.items <= PAGE_SIZE, `${c.url}: ${c.items} items`);
    }
    assert.deepEqual(consoleErrors, [], 'no script error and no CSP violation in the page');
  });
});
