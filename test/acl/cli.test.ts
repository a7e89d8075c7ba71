// `larktun acl check|compile` run as a child process.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const ENTRY = fileURLToPath(new URL('./cli-entry.ts', import.meta.url));
const CASES = JSON.parse(readFileSync(new URL('../fixtures/conformance/tailscale-policy-cases.json', import.meta.url), 'utf8'));
const dir = mkdtempSync(path.join(tmpdir(), 'larktun-acl-'));

function run(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', ENTRY, 'acl', ...args], { encoding: 'utf8', cwd: path.dirname(ENTRY) });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function write(name: string, content: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, content);
  return p;
}

describe('larktun acl', () => {
  const c = CASES.find((x: { name: string }) => x.name === 'routes-ha-two-routers');
  const policy = write('ha.hujson', `// HA routers\n${JSON.stringify(c.policy, null, 2)}`);
  const net = write('ha-net.json', JSON.stringify({ users: c.users, nodes: c.nodes }));

  it('check prints "policy ok"', () => {
    const r = run('check', policy, '--network', net);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'policy ok\n');
  });

  it('check prints every error and exits 1', () => {
    const bad = write('bad.hujson', '{\n  "acls": [{"action": "deny", "src": ["*"], "dst": ["tag:x:22"]}],\n}\n');
    const r = run('check', bad);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad\.hujson:2:23: action="deny" is not supported/);
    assert.match(r.stderr, /bad\.hujson:2:\d+: dst="tag:x": tag not found: "tag:x"/);
  });

  it('compile prints one JSON object with every per-node result', () => {
    const r = run('compile', policy, '--network', net);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.valid, true);
    assert.deepEqual(out.primary_routes.metapod, ['192.168.1.0/24']);
    assert.deepEqual(out.peers.beedrill, ['butterfree', 'metapod']);
    assert.deepEqual(out.peer_allowed_routes.beedrill, { metapod: ['192.168.1.0/24'] });
    assert.equal(out.packet_filter.metapod[0].DstPorts[0].IP, '192.168.1.0/24');
    for (const k of ['packet_filter', 'peers', 'peer_allowed_routes', 'primary_routes', 'approved_routes_after_autoapproval', 'ssh_policy']) {
      assert.ok(k in out, k);
    }
  });

  it('compile of an invalid policy prints valid:false with errors', () => {
    const bad = write('bad2.hujson', '{"grants": [{"src": ["*"], "dst": ["*"]}]}');
    const r = run('compile', bad, '--network', net);
    assert.equal(r.code, 1);
    const out = JSON.parse(r.stdout);
    assert.equal(out.valid, false);
    assert.ok(out.errors.some((e: string) => e.includes('ip and app can not both be empty')));
  });

  it('a test naming an undefined host is a failed test, not a crash (check and compile)', () => {
    const crash = write('nohost.hujson', '{"tests":[{"src":"nohost","accept":["1.2.3.4:80"]}]}');
    const c = run('check', crash, '--network', net);
    assert.equal(c.code, 1, c.stderr);
    assert.doesNotMatch(c.stderr, /Cannot read properties|TypeError|at /);
    assert.match(c.stderr, /nohost\.hujson:1:\d+: test\(s\) failed: src=host not defined in policy: "nohost"/);
    const k = run('compile', crash, '--network', net);
    assert.equal(k.code, 1, k.stderr);
    assert.equal(k.stderr, '');
    const out = JSON.parse(k.stdout);
    assert.equal(out.valid, false);
    assert.ok(out.errors.some((e: string) => e.includes('test(s) failed')));
  });
});
