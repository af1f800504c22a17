/**
 * The CLI conventions (issue #7): every route in cli/router.ts answers --help with exit 0 and a
 * usage line and is named in `edgefleet --help`; usage errors exit 2 with the usage; thrown
 * errors map to exit codes 1-4; the table printer and positional checks. Operator commands run
 * in process; the two services (they own the process) as real child processes.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { EXIT, exitCodeOf, runCommand, runSubcommands, table, type CliIo } from '../../cli/command.ts';
import { HubError, UsageError } from '../../cli/commands/http-client.ts';
import { dispatch, findRoute, HELP, ROUTES } from '../../cli/router.ts';
import { CLI, REPO_ROOT } from '../../scripts/fleet/processes.ts';

function capture(env: NodeJS.ProcessEnv = {}): { io: CliIo; out: () => string; err: () => string } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (s) => out.push(s), err: (s) => err.push(s), env }, out: () => out.join(''), err: () => err.join('') };
}

describe('edgefleet CLI conventions', () => {
  for (const route of ROUTES.filter((r) => !r.service)) {
    const name = route.words.join(' ');
    test(`${name} --help: exit 0, a usage line, named in edgefleet --help`, async () => {
      for (const flag of ['--help', '-h']) {
        const c = capture();
        assert.equal(await dispatch([...route.words, flag], c.io), EXIT.OK, c.err());
        assert.match(c.out(), /^usage: edgefleet /im);
        assert.ok(c.out().includes(`edgefleet ${name}`), `${name} usage names the command:\n${c.out()}`);
        assert.equal(c.err(), '');
      }
      assert.ok(HELP.includes(`  ${name}`), `edgefleet --help lists ${name}`);
    });
  }

  test('agent --help and hub --help (services, real processes), edgefleet --help', () => {
    for (const words of [...ROUTES.filter((r) => r.service).map((r) => r.words), []]) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, ...words, '--help'], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000 });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /usage: edgefleet/i);
      if (words.length) assert.ok(HELP.includes(`  ${words.join(' ')} `), `edgefleet --help lists ${words.join(' ')}`);
      else assert.match(r.stdout, /exit codes\n {2}0 {2}ok\n {2}1 .*\n {2}2 {2}usage.*\n {2}3 {2}hub unreachable.*\n {2}4 {2}not authorized/);
    }
  });

  test('unknown commands and subcommands, missing subcommands: exit 2 with the usage on stderr', async () => {
    for (const argv of [['nope'], ['rollout'], ['rollout', 'explode'], ['model', 'frob'], ['alerts', 'snooze'], ['devices', '--bogus'], ['kpis', 'extra']]) {
      const c = capture();
      assert.equal(await dispatch(argv, c.io), EXIT.USAGE, argv.join(' '));
      assert.match(c.err(), /usage: edgefleet/, argv.join(' '));
      assert.equal(c.out(), '');
    }
  });

  test('exit codes: usage 2, unreachable 3, auth 4, anything else 1', () => {
    assert.equal(exitCodeOf(new UsageError('x')), EXIT.USAGE);
    assert.equal(exitCodeOf(new HubError('no hub found', 0, 'UNAVAILABLE')), EXIT.UNREACHABLE);
    assert.equal(exitCodeOf(new HubError('refused', 401, 'UNAUTHORIZED')), EXIT.AUTH);
    assert.equal(exitCodeOf(new HubError('forbidden', 403, 'FORBIDDEN')), EXIT.AUTH);
    assert.equal(exitCodeOf(new HubError('no token', 0, 'UNAUTHORIZED')), EXIT.AUTH);
    assert.equal(exitCodeOf(new HubError('conflict', 409, 'CONFLICT')), EXIT.FAILED);
    assert.equal(exitCodeOf(new HubError('hub down', 503, 'UNAVAILABLE')), EXIT.FAILED, 'a hub that answers is reachable');
    assert.equal(exitCodeOf(new Error('boom')), EXIT.FAILED);
  });

  test('a closed port is exit 3, a missing token is exit 4, through a real command', async () => {
    let c = capture();
    assert.equal(await dispatch(['devices', '--hub', 'http://127.0.0.1:1', '--token', 't'], c.io), EXIT.UNREACHABLE);
    assert.match(c.err(), /^devices: cannot reach the hub at http:\/\/127\.0\.0\.1:1/);
    c = capture();
    assert.equal(await dispatch(['rollout', 'list', '--hub', 'http://127.0.0.1:1', '--data', '/nonexistent-ef'], c.io), EXIT.AUTH);
    assert.match(c.err(), /no API token/);
  });

  test('runCommand: positional counts, --help before strict parsing, body exit code', async () => {
    const spec = { name: 'thing do', usage: 'usage: edgefleet thing do <id>\n', options: { must: { type: 'string' } }, positionals: { min: 1, max: 2, what: 'a thing id' } } as const;
    const seen: string[][] = [];
    const body = ({ positionals }: { positionals: string[] }): Promise<number> => {
      seen.push(positionals);
      return Promise.resolve(positionals.length === 2 ? EXIT.FAILED : EXIT.OK);
    };
    let c = capture();
    assert.equal(await runCommand([], c.io, spec, body), EXIT.USAGE);
    assert.match(c.err(), /^thing do: a thing id is required\n\nusage: edgefleet thing do/);
    c = capture();
    assert.equal(await runCommand(['a', 'b', 'c'], c.io, spec, body), EXIT.USAGE);
    assert.match(c.err(), /unexpected argument c/);
    c = capture();
    assert.equal(await runCommand(['--nope', '--help'], c.io, spec, body), EXIT.OK, 'help wins over a bad flag');
    assert.equal(c.out(), spec.usage);
    assert.equal(await runCommand(['a'], capture().io, spec, body), EXIT.OK);
    assert.equal(await runCommand(['a', 'b'], capture().io, spec, body), EXIT.FAILED);
    assert.deepEqual(seen, [['a'], ['a', 'b']]);
    c = capture();
    assert.equal(
      await runCommand(['a'], c.io, spec, () => Promise.reject(new HubError('cannot pause rollout r1: it is paused', 409, 'CONFLICT'))),
      EXIT.FAILED,
    );
    assert.equal(c.err(), 'thing do: cannot pause rollout r1: it is paused (HTTP 409 CONFLICT)\n');
  });

  test('runCommand --json: show() prints JSON only, text builder not called', async () => {
    const c = capture();
    const code = await runCommand(['--json'], c.io, { name: 'x', usage: 'usage: edgefleet x\n' }, ({ show }) => {
      show({ a: 1 }, () => assert.fail('text built under --json'));
      return Promise.resolve();
    });
    assert.equal(code, EXIT.OK);
    assert.deepEqual(JSON.parse(c.out()), { a: 1 });
  });

  test('runSubcommands: fallback for flags only, help, unknown', async () => {
    const calls: string[] = [];
    const spec = {
      name: 'alerts',
      usage: 'usage: edgefleet alerts\n',
      commands: { ack: (a: string[]): Promise<number> => (calls.push(`ack ${a.join(' ')}`), Promise.resolve(0)) },
      fallback: (a: string[]): Promise<number> => (calls.push(`list ${a.join(' ')}`), Promise.resolve(0)),
    };
    assert.equal(await runSubcommands(['ack', 'a1'], capture().io, spec), 0);
    assert.equal(await runSubcommands(['--state', 'open'], capture().io, spec), 0);
    assert.equal(await runSubcommands([], capture().io, spec), 0);
    assert.equal(await runSubcommands(['help'], capture().io, spec), 0);
    assert.equal(await runSubcommands(['toString'], capture().io, spec), EXIT.USAGE, 'no prototype lookups');
    assert.deepEqual(calls, ['ack a1', 'list --state open', 'list ']);
  });

  test('routes: longest match wins', () => {
    assert.deepEqual(findRoute(['devices', 'history', 'd1'])?.route.words, ['devices', 'history']);
    assert.deepEqual(findRoute(['devices', '--json'])?.rest, ['--json']);
    assert.deepEqual(findRoute(['hub', 'install-service', '--dry-run'])?.route.words, ['hub', 'install-service']);
    assert.equal(findRoute(['device']), undefined);
  });

  test('table: padded columns, no trailing blanks', () => {
    const t = table(
      [
        { id: 'a', n: 1 },
        { id: 'longer', n: 22 },
      ],
      { ID: (r) => r.id, N: (r) => String(r.n), NOTE: () => '' },
    );
    assert.equal(t, 'ID      N   NOTE\na       1\nlonger  22\n');
  });
});
