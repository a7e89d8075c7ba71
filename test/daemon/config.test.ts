import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  deriveRules,
  filePermissionProblems,
  formatProblem,
  loadConfig,
  parseConfigText,
  validateConfig,
  type Config,
  type Problem,
  type Rule,
} from '../../src/daemon/config.js';
import { formatPlan, networkPlan } from '../../src/daemon/plan.js';
import { formatIP, formatPrefix, parsePrefix } from '../../src/net/addr.js';
import { formatRule } from '../../src/net/lpm.js';

const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));
const fixturePath = (name: string): string => join(FIX, name);

type Json = Record<string, unknown>;
type PeerJson = Record<string, unknown>;

function fixture(name: string): Json {
  return JSON.parse(readFileSync(fixturePath(`${name}.json`), 'utf8')) as Json;
}
const peersOf = (raw: Json): PeerJson[] => raw.peers as PeerJson[];

function mustLoad(name: string): Config {
  const r = loadConfig(fixturePath(`${name}.json`));
  assert.deepEqual(r.problems, [], `${name}.json should have no problems`);
  assert.ok(r.config);
  return r.config;
}

/** Validates `raw` after `edit` and returns the problems. */
function check(base: string, edit: (raw: Json) => void): { problems: Problem[]; config?: Config } {
  const raw = fixture(base);
  edit(raw);
  return validateConfig(raw, `${base}.json`);
}

/** Asserts a problem at `path` whose message contains `fragment`. */
function expectProblem(
  r: { problems: Problem[]; config?: Config },
  path: string,
  fragment: string,
  severity: 'error' | 'warning' = 'error',
): void {
  const hit = r.problems.find((p) => p.path === path && p.message.includes(fragment));
  assert.ok(
    hit,
    `expected a problem at ${path} containing ${JSON.stringify(fragment)}; got:\n${r.problems.map(formatProblem).join('\n')}`,
  );
  assert.equal(hit.severity, severity);
  if (severity === 'error') assert.equal(r.config, undefined, 'an error must withhold the config');
}

const P = (s: string) => parsePrefix(s);
const fwd = (dst: string, target: number): Rule => {
  const d = P(dst);
  return { src: P(d.family === 4 ? '0.0.0.0/0' : '::/0'), dst: d, action: 'forward', target };
};

describe('valid fixtures and defaults', () => {
  test('hub: parsed values and defaults (keepalive 0, port 18020, obfuscate, mtu 1400)', () => {
    const cfg = mustLoad('hub');
    assert.equal(cfg.role, 'hub');
    assert.equal(cfg.localId, 1);
    assert.equal(formatPrefix(cfg.virtualSubnet!), '10.0.0.0/24');
    assert.deepEqual(cfg.tunAddrs, []);
    assert.equal(cfg.keepaliveSecs, 0);
    assert.deepEqual(cfg.listenPorts, [18020]);
    assert.equal(cfg.obfuscate, true);
    assert.equal(cfg.mtu, 1400);
    assert.deepEqual(
      cfg.peers.map((p) => [p.id, p.name, p.endpoint, p.allowedSrc.map(formatPrefix)]),
      [
        [2, 'bj-office-gw', { host: '203.0.113.2', port: 18020 }, ['10.0.0.2/32', '192.168.10.0/24']],
        [3, 'alice-laptop', null, ['10.0.0.3/32']],
        [4, '', { host: '2001:db8::4', port: 18020 }, ['10.0.0.4/32', 'fd00::4/128']],
      ],
    );
    assert.ok(Buffer.isBuffer(cfg.peers[0]!.psk));
    assert.equal(cfg.peers[0]!.psk.toString('hex'), 'e06c1e4eae14fc95c6a7295b076c7fe5a85f0c82e2da29c2d4b9947f16c5dbdd');
  });

  test('spoke: keepalive defaults to 20, LAN local_routes, DNS endpoint', () => {
    const cfg = mustLoad('spoke');
    assert.equal(cfg.role, 'spoke');
    assert.equal(cfg.keepaliveSecs, 20);
    assert.deepEqual(cfg.listenPorts, [18020]);
    assert.equal(cfg.obfuscate, true);
    assert.equal(cfg.mtu, 1400);
    assert.deepEqual(cfg.tunAddrs.map((t) => `${formatIP(t.addr)}/${t.bits}`), ['10.0.0.2/24']);
    assert.deepEqual(cfg.localRoutes.map(formatPrefix), ['10.0.0.2/32', '192.168.10.0/24']);
    assert.deepEqual(cfg.remoteRoutes.map(formatPrefix), ['10.0.0.0/24', '192.168.31.0/24']);
    assert.deepEqual(cfg.peers[0]!.endpoint, { host: 'hub.example.net', port: 18020 });
  });

  test('manual: role defaults to manual; explicit values and dual-stack tun', () => {
    const cfg = mustLoad('manual');
    assert.equal(cfg.role, 'manual');
    assert.equal(cfg.virtualSubnet, null);
    assert.equal(cfg.keepaliveSecs, 25);
    assert.deepEqual(cfg.listenPorts, [51820, 51821]);
    assert.equal(cfg.obfuscate, false);
    assert.equal(cfg.mtu, 1280);
    assert.deepEqual(cfg.tunAddrs.map((t) => `${formatIP(t.addr)}/${t.bits}`), ['10.9.0.7/24', 'fd00:9::7/64']);
  });

  test('listen_port (single) becomes listenPorts; agreeing listen_port + listen_ports is fine', () => {
    assert.deepEqual(check('hub', (r) => { r.listen_port = 51820; }).config?.listenPorts, [51820]);
    assert.deepEqual(check('hub', (r) => { r.listen_port = 2; r.listen_ports = [1, 2]; }).config?.listenPorts, [1, 2]);
  });

  test('peer name defaults to "" and endpoint may be omitted on a hub', () => {
    const r = check('hub', (raw) => { delete peersOf(raw)[1]!.endpoint; delete peersOf(raw)[1]!.name; });
    assert.deepEqual(r.problems, []);
    assert.equal(r.config!.peers[1]!.endpoint, null);
    assert.equal(r.config!.peers[1]!.name, '');
  });
});

describe('checks: keys and types', () => {
  test('the root must be an object', () => {
    expectProblem(validateConfig([], 'x.json'), '$', 'must be a JSON object');
  });
  test('unknown top-level key names the closest known key and lists them', () => {
    const r = check('spoke', (raw) => { raw.local_tun_mut = 1400; });
    expectProblem(r, '$.local_tun_mut', 'did you mean "local_tun_mtu"');
    expectProblem(r, '$.local_tun_mut', 'Known keys: role, virtual_subnet, local_id');
  });
  test('unknown peer key', () => {
    expectProblem(check('hub', (raw) => { peersOf(raw)[0]!.allowed_srcs = []; }), '$.peers[0].allowed_srcs', 'did you mean "allowed_src"');
  });
  test('a legacy mesh-wide psk is rejected with a pointer to peers[].psk', () => {
    expectProblem(check('hub', (raw) => { raw.psk = 'ab'.repeat(32); }), '$.psk', 'peers[].psk');
  });
  test('role must be manual, spoke or hub', () => {
    expectProblem(check('hub', (raw) => { raw.role = 'router'; }), '$.role', 'must be one of "manual", "spoke", "hub"');
  });
  test('obfuscate must be a boolean', () => {
    expectProblem(check('hub', (raw) => { raw.obfuscate = 'yes'; }), '$.obfuscate', 'must be true or false');
  });
  test('peers must be an array of objects', () => {
    expectProblem(check('hub', (raw) => { raw.peers = {}; }), '$.peers', 'must be an array');
    expectProblem(check('hub', (raw) => { peersOf(raw)[0] = 'x' as unknown as PeerJson; }), '$.peers[0]', 'must be an object');
  });
  test('peer name: printable ASCII only', () => {
    expectProblem(check('hub', (raw) => { peersOf(raw)[0]!.name = 'bj\noffice'; }), '$.peers[0].name', 'printable ASCII');
    expectProblem(check('hub', (raw) => { peersOf(raw)[0]!.name = 7; }), '$.peers[0].name', 'must be a string');
  });
});

describe('checks: ids', () => {
  test('local_id is required and 1..65535', () => {
    expectProblem(check('hub', (raw) => { delete raw.local_id; }), '$', 'missing "local_id"');
    expectProblem(check('hub', (raw) => { raw.local_id = 0; }), '$.local_id', 'must be 1..65535, got 0');
    expectProblem(check('hub', (raw) => { raw.local_id = '1'; }), '$.local_id', 'whole number 1..65535, got the string "1"');
  });
  test('peer id is required and 1..65535', () => {
    expectProblem(check('hub', (raw) => { peersOf(raw)[0]!.id = 70000; }), '$.peers[0].id', 'must be 1..65535, got 70000');
    expectProblem(check('hub', (raw) => { delete peersOf(raw)[2]!.id; }), '$.peers[2]', 'missing "id"');
  });
  test('local_id must differ from every peer id', () => {
    expectProblem(check('hub', (raw) => { peersOf(raw)[1]!.id = 1; }), '$.peers[1].id', "1 is this node's own local_id");
  });
  test('duplicate peer ids name the first peer', () => {
    expectProblem(check('hub', (raw) => { peersOf(raw)[1]!.id = 2; }), '$.peers[1].id', 'already used by peer 2 ("bj-office-gw") at $.peers[0]');
  });
});

describe('checks: endpoints', () => {
  const ep = (v: unknown) => check('hub', (raw) => { peersOf(raw)[0]!.endpoint = v; });
  test('duplicate endpoints (IPv6 compared canonically)', () => {
    expectProblem(check('hub', (raw) => { peersOf(raw)[1]!.endpoint = '203.0.113.2:18020'; }), '$.peers[1].endpoint', 'same endpoint as peer 2 ("bj-office-gw")');
    expectProblem(check('hub', (raw) => { peersOf(raw)[0]!.endpoint = '[2001:DB8:0::4]:18020'; }), '$.peers[2].endpoint', 'same endpoint as peer 2');
  });
  test('bare IPv6 needs brackets', () => {
    expectProblem(ep('2001:db8::9:18020'), '$.peers[0].endpoint', 'need brackets: write "[2001:db8::9]:18020"');
    expectProblem(ep('2001:db8::9'), '$.peers[0].endpoint', 'bare IPv6 address: put it in brackets and add a port');
  });
  test('missing or bad port', () => {
    expectProblem(ep('203.0.113.9'), '$.peers[0].endpoint', 'needs a port, e.g. "203.0.113.9:18020"');
    expectProblem(ep('[2001:db8::9]'), '$.peers[0].endpoint', 'needs a port after the brackets');
    expectProblem(ep('203.0.113.9:0'), '$.peers[0].endpoint', 'invalid port "0"');
    expectProblem(ep('203.0.113.9:70000'), '$.peers[0].endpoint', 'expected 1..65535');
  });
  test('bad hosts and types', () => {
    expectProblem(ep('300.1.1.1:18020'), '$.peers[0].endpoint', 'not a valid IPv4 address');
    expectProblem(ep('bad_host:18020'), '$.peers[0].endpoint', 'not an IP address or DNS name');
    expectProblem(ep(18020), '$.peers[0].endpoint', 'must be "host:port"');
    expectProblem(ep(''), '$.peers[0].endpoint', 'is empty');
  });
  test('an endpoint inside a route into the TUN would loop', () => {
    expectProblem(check('spoke', (raw) => { peersOf(raw)[0]!.endpoint = '10.0.0.1:18020'; }), '$.peers[0].endpoint', 'the tunnel would carry its own packets');
    expectProblem(check('spoke', (raw) => { peersOf(raw)[0]!.endpoint = '192.168.31.9:18020'; }), '$.peers[0].endpoint', 'inside 192.168.31.0/24');
  });
});

describe('checks: psk', () => {
  const psk = (v: unknown) => check('hub', (raw) => { peersOf(raw)[0]!.psk = v; });
  test('exactly 64 hex characters, with the openssl hint', () => {
    expectProblem(psk('abc123abc123'), '$.peers[0].psk', 'must be 64 hex characters (32 bytes), got 12 characters; generate one with: openssl rand -hex 32');
    expectProblem(psk('g'.repeat(64)), '$.peers[0].psk', 'only hex digits');
    expectProblem(psk(12), '$.peers[0].psk', 'must be a string of 64 hex characters');
  });
  test('not all zeros', () => {
    expectProblem(psk('0'.repeat(64)), '$.peers[0].psk', 'all zeros');
  });
  test('required', () => {
    expectProblem(check('hub', (raw) => { delete peersOf(raw)[0]!.psk; }), '$.peers[0]', 'missing "psk"');
  });
  test('a key shared across links is rejected (case-insensitive)', () => {
    const r = check('hub', (raw) => {
      peersOf(raw)[2]!.psk = String(peersOf(raw)[0]!.psk).toUpperCase();
    });
    expectProblem(r, '$.peers[2].psk', 'same key as peer 2 ("bj-office-gw") at $.peers[0].psk');
  });
  test('a placeholder key is a warning only', () => {
    const r = psk('a'.repeat(64));
    expectProblem(r, '$.peers[0].psk', 'placeholder', 'warning');
    assert.ok(r.config, 'warnings keep the config');
  });
});

describe('checks: numbers and ports', () => {
  test('mtu 68..1500', () => {
    expectProblem(check('hub', (raw) => { raw.local_tun_mtu = 9000; }), '$.local_tun_mtu', 'must be 68..1500, got 9000');
    expectProblem(check('hub', (raw) => { raw.local_tun_mtu = 67; }), '$.local_tun_mtu', 'got 67');
    expectProblem(check('hub', (raw) => { raw.local_tun_mtu = 1400.5; }), '$.local_tun_mtu', 'whole number');
  });
  test('mtu below 1280 with an IPv6 address', () => {
    expectProblem(check('manual', (raw) => { raw.local_tun_mtu = 1200; }), '$.local_tun_mtu', 'IPv6 needs an MTU of at least 1280');
  });
  test('ports 1..65535, no duplicates, no conflict', () => {
    expectProblem(check('hub', (raw) => { raw.listen_ports = [0]; }), '$.listen_ports[0]', 'must be 1..65535, got 0');
    expectProblem(check('hub', (raw) => { raw.listen_ports = [18020, 18020]; }), '$.listen_ports[1]', 'listed twice');
    expectProblem(check('hub', (raw) => { raw.listen_ports = []; }), '$.listen_ports', 'is empty');
    expectProblem(check('hub', (raw) => { raw.listen_ports = 18020; }), '$.listen_ports', 'must be an array');
    expectProblem(check('hub', (raw) => { raw.listen_port = 70000; }), '$.listen_port', 'got 70000');
    expectProblem(check('hub', (raw) => { raw.listen_port = 1; raw.listen_ports = [2]; }), '$.listen_port', 'conflicts with listen_ports [2]');
  });
  test('keepalive_secs integer >= 0', () => {
    expectProblem(check('spoke', (raw) => { raw.keepalive_secs = -1; }), '$.keepalive_secs', '>= 0');
    expectProblem(check('spoke', (raw) => { raw.keepalive_secs = 1.5; }), '$.keepalive_secs', 'whole number');
    expectProblem(check('spoke', (raw) => { raw.keepalive_secs = '20'; }), '$.keepalive_secs', 'got the string "20"');
    expectProblem(check('spoke', (raw) => { raw.keepalive_secs = 0; }), '$.keepalive_secs', 'NAT', 'warning');
  });
});

describe('checks: prefixes', () => {
  test('host bits set → the masked form', () => {
    expectProblem(check('spoke', (raw) => { raw.local_routes = ['192.168.10.1/24']; }), '$.local_routes[0]', 'host bits set: use 192.168.10.0/24');
    expectProblem(check('hub', (raw) => { peersOf(raw)[2]!.allowed_src = ['10.0.0.4/32', 'fd00::4/64']; }), '$.peers[2].allowed_src[1]', 'use fd00::/64');
    expectProblem(check('hub', (raw) => { raw.virtual_subnet = '10.0.0.1/24'; }), '$.virtual_subnet', 'use 10.0.0.0/24');
  });
  test('syntax: length required, valid length, valid address, right type', () => {
    expectProblem(check('spoke', (raw) => { raw.remote_routes = ['192.168.31.0']; }), '$.remote_routes[0]', 'needs a prefix length');
    expectProblem(check('spoke', (raw) => { raw.remote_routes = ['10.0.0.0/33']; }), '$.remote_routes[0]', 'invalid prefix length');
    expectProblem(check('spoke', (raw) => { raw.remote_routes = ['office-lan']; }), '$.remote_routes[0]', 'not an IP prefix');
    expectProblem(check('spoke', (raw) => { raw.local_routes = '192.168.10.0/24'; }), '$.local_routes', 'must be an array of CIDR strings');
    expectProblem(check('spoke', (raw) => { raw.local_routes = ['192.168.10.0/24', '192.168.10.0/24']; }), '$.local_routes[1]', 'listed twice');
  });
  test('local_tun_ip: needs a length, a host address, no junk', () => {
    expectProblem(check('spoke', (raw) => { raw.local_tun_ip = '10.0.0.2'; }), '$.local_tun_ip', 'needs the prefix length');
    expectProblem(check('spoke', (raw) => { raw.local_tun_ip = '10.0.0.0/24'; }), '$.local_tun_ip', 'network address of 10.0.0.0/24');
    expectProblem(check('spoke', (raw) => { raw.local_tun_ip = ['10.0.0.2/24', 5]; }), '$.local_tun_ip[1]', 'must be an interface address');
  });
  test('no default route as a local route', () => {
    expectProblem(check('spoke', (raw) => { raw.local_routes = ['0.0.0.0/0']; }), '$.local_routes[0]', 'every destination');
    expectProblem(check('hub', (raw) => { raw.local_routes = ['::/0']; }), '$.local_routes[0]', 'every destination');
  });
  test('allowed_src present and non-empty for every peer', () => {
    expectProblem(check('hub', (raw) => { delete peersOf(raw)[1]!.allowed_src; }), '$.peers[1]', 'missing "allowed_src"');
    expectProblem(check('hub', (raw) => { peersOf(raw)[1]!.allowed_src = []; }), '$.peers[1].allowed_src', 'is empty');
  });
  test('local_tun_ip outside virtual_subnet is an error; a wider interface prefix a warning', () => {
    expectProblem(check('spoke', (raw) => { raw.local_tun_ip = '10.1.0.2/24'; }), '$.local_tun_ip', 'outside virtual_subnet 10.0.0.0/24');
    const r = check('spoke', (raw) => { raw.local_tun_ip = '10.0.0.2/16'; });
    expectProblem(r, '$.local_tun_ip', 'wider than virtual_subnet', 'warning');
    assert.ok(r.config);
  });
});

describe('checks: roles', () => {
  test('spoke: exactly one peer, saying how many were found', () => {
    const two = check('spoke', (raw) => {
      peersOf(raw).push({ id: 5, endpoint: '203.0.113.5:18020', allowed_src: '10.0.0.5/32', psk: 'cb4df88cab8823a82e04588b86b6e8fb518ccfd5836773ccf7fd87e5ac2fde0f' });
    });
    expectProblem(two, '$.peers', 'exactly one peer, its hub; found 2 (ids 1, 5)');
    expectProblem(check('spoke', (raw) => { raw.peers = []; }), '$.peers', 'found none');
  });
  test('spoke: the hub needs an endpoint', () => {
    expectProblem(check('spoke', (raw) => { peersOf(raw)[0]!.endpoint = null; }), '$.peers[0]', 'needs an "endpoint"');
  });
  test('spoke: a local target must exist', () => {
    expectProblem(check('spoke', (raw) => { delete raw.local_tun_ip; delete raw.local_routes; }), '$', 'needs something to deliver locally');
  });
  test('spoke: virtual_subnet required without remote_routes', () => {
    expectProblem(check('spoke', (raw) => { delete raw.virtual_subnet; delete raw.remote_routes; }), '$', 'needs "virtual_subnet"');
  });
  test('spoke: a destination cannot be both local and remote', () => {
    expectProblem(check('spoke', (raw) => { raw.remote_routes = ['192.168.10.0/24']; }), '$.remote_routes[0]', 'both a local target');
  });
  test('spoke: remote routes the hub may not send from are a warning', () => {
    expectProblem(check('spoke', (raw) => { peersOf(raw)[0]!.allowed_src = '10.0.0.0/24'; }), '$.remote_routes[1]', 'dropped as spoofed', 'warning');
  });
  test('spoke: a default remote route is forwarded but not installed in the plan', () => {
    const r = check('spoke', (raw) => { raw.remote_routes = ['0.0.0.0/0']; peersOf(raw)[0]!.allowed_src = '0.0.0.0/0'; });
    expectProblem(r, '$.remote_routes[0]', 'installs no default route', 'warning');
    assert.deepEqual(deriveRules(r.config!).map(formatRule).at(-1), 'policy add --src 0.0.0.0/0 --dst 0.0.0.0/0 --action forward --target 1');
    assert.ok(!networkPlan(r.config!, 'lark0').some((a) => a.includes('0.0.0.0/0')));
  });
  test('hub: allowed_src must not be /0', () => {
    expectProblem(check('hub', (raw) => { peersOf(raw)[1]!.allowed_src = '0.0.0.0/0'; }), '$.peers[1].allowed_src', 'not allowed on a hub');
  });
  test('hub: overlapping allowed_src names both peers, every pair', () => {
    const r = check('hub', (raw) => { peersOf(raw)[1]!.allowed_src = '10.0.0.0/24'; });
    expectProblem(r, '$.peers[1].allowed_src', '10.0.0.0/24 of peer 3 ("alice-laptop") overlaps 10.0.0.2/32 of peer 2 ("bj-office-gw")');
    expectProblem(r, '$.peers[2].allowed_src[0]', '10.0.0.4/32 of peer 4 overlaps 10.0.0.0/24 of peer 3 ("alice-laptop")');
  });
  test('hub: at least one peer; own address not owned by a peer; unreachable-hub warning', () => {
    expectProblem(check('hub', (raw) => { raw.peers = []; }), '$.peers', 'at least one peer');
    expectProblem(check('hub', (raw) => { raw.local_tun_ip = '10.0.0.2/24'; }), '$.local_tun_ip', 'allowed_src of peer 2');
    expectProblem(check('hub', (raw) => { raw.local_tun_ip = '10.0.0.1/24'; }), '$.local_tun_ip', 'no local_routes', 'warning');
  });
});

describe('several problems at once, with positions', () => {
  test('every problem of the file is reported, in file order, with line:column', () => {
    const r = loadConfig(fixturePath('several-problems.json'));
    assert.equal(r.config, undefined);
    assert.deepEqual(
      r.problems.map((p) => `${p.line}:${p.column} ${p.path}`),
      [
        '3:21 $.virtual_subnet',
        '5:20 $.local_tun_mtu',
        '7:3 $.keepalive_sec',
        '8:12 $.peers',
        '11:19 $.peers[0].endpoint',
        '13:14 $.peers[0].psk',
        '16:13 $.peers[1].id',
      ],
    );
    const psk = r.problems.find((p) => p.path === '$.peers[0].psk')!;
    assert.match(formatProblem(psk), /several-problems\.json:13:14: error: \$\.peers\[0\]\.psk: must be 64 hex characters \(32 bytes\), got 12 characters; generate one with: openssl rand -hex 32$/);
  });
  test('a key given twice is reported at the second one', () => {
    const text = '{\n  "local_id": 1,\n  "local_id": 2\n}\n';
    const r = parseConfigText(text, 'dup.json');
    const p = r.problems.find((x) => x.path === '$.local_id')!;
    assert.match(p.message, /appears more than once/);
    assert.deepEqual([p.line, p.column], [3, 15]);
    assert.equal(r.config, undefined);
  });
});

describe('JSON syntax errors and unreadable files', () => {
  test('trailing comma: file:line:column from the error position', () => {
    const file = fixturePath('syntax-error.json');
    const r = loadConfig(file);
    assert.equal(r.config, undefined);
    assert.equal(r.problems.length, 1);
    const p = r.problems[0]!;
    assert.equal(p.path, '$');
    assert.deepEqual([p.line, p.column], [4, 34]);
    assert.ok(p.message.startsWith(`invalid JSON at ${file}:4:34: trailing comma`), p.message);
    assert.equal(formatProblem(p), `error: ${p.message}`);
  });
  test('other syntax errors, including ones V8 reports without a position', () => {
    const at = (text: string) => {
      const p = parseConfigText(text, 'c.json').problems[0]!;
      return `${p.line}:${p.column} ${p.message}`;
    };
    assert.match(at('{\n  "a": tru\n}'), /^2:8 invalid JSON at c\.json:2:8: unexpected "tru"/);
    assert.match(at('{\n  "a": }'), /^2:8 .*expected a value/);
    assert.match(at('{\n  "a": 1\n  "b": 2\n}'), /^3:3 .*expected "," between items/);
    assert.match(at('{ "a": 1 } // note'), /^1:12 .*comments are not allowed/);
    assert.match(at(''), /^1:1 .*the file is empty/);
    assert.match(at('\uFEFF{\n "a" 1}'), /^2:6 .*expected ":"/);
  });
  test('a missing file is a problem, not a throw', () => {
    const r = loadConfig(fixturePath('does-not-exist.json'));
    assert.equal(r.problems.length, 1);
    assert.match(r.problems[0]!.message, /cannot read the config file: no such file/);
  });
  test('file permissions: a warning when group/others can read the keys', { skip: process.platform === 'win32' ? 'POSIX modes only' : false }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'larktun-cfg-'));
    try {
      const f = join(dir, 'c.json');
      writeFileSync(f, '{}');
      chmodSync(f, 0o600);
      assert.deepEqual(filePermissionProblems(f), []);
      chmodSync(f, 0o644);
      const [w] = filePermissionProblems(f);
      assert.equal(w?.severity, 'warning');
      assert.match(w!.message, /mode 0644.*chmod 600/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('derived forwarding table', () => {
  test('spoke: local targets to TUN, then remote routes to the hub', () => {
    assert.deepEqual(deriveRules(mustLoad('spoke')), [
      fwd('10.0.0.2/32', 0),
      fwd('192.168.10.0/24', 0),
      fwd('10.0.0.0/24', 1),
      fwd('192.168.31.0/24', 1),
    ]);
  });
  test('spoke without routes: host address of each tun ip, and the virtual subnet', () => {
    const r = check('spoke', (raw) => {
      delete raw.local_routes;
      delete raw.remote_routes;
      raw.local_tun_ip = ['10.0.0.2/24', 'fd00::2/64'];
      peersOf(raw)[0]!.allowed_src = '10.0.0.0/24';
    });
    assert.deepEqual(r.problems, []);
    assert.deepEqual(deriveRules(r.config!), [fwd('10.0.0.2/32', 0), fwd('fd00::2/128', 0), fwd('10.0.0.0/24', 1)]);
  });
  test('hub: each peer allowed_src to that peer, then local routes to TUN', () => {
    assert.deepEqual(deriveRules(mustLoad('hub')), [
      fwd('10.0.0.2/32', 2),
      fwd('192.168.10.0/24', 2),
      fwd('10.0.0.3/32', 3),
      fwd('10.0.0.4/32', 4),
      fwd('fd00::4/128', 4),
    ]);
    const r = check('hub', (raw) => { raw.local_tun_ip = '10.0.0.1/24'; raw.local_routes = ['10.0.0.1/32']; });
    assert.deepEqual(r.problems, []);
    assert.deepEqual(deriveRules(r.config!).at(-1), fwd('10.0.0.1/32', 0));
  });
  test('manual: empty', () => {
    assert.deepEqual(deriveRules(mustLoad('manual')), []);
  });
});

describe('network plan', () => {
  test('spoke: mtu, address, up, and routes only outside the connected subnet', () => {
    const plan = networkPlan(mustLoad('spoke'), 'lark0');
    assert.deepEqual(plan, [
      ['ip', 'link', 'set', 'dev', 'lark0', 'mtu', '1400'],
      ['ip', 'addr', 'add', '10.0.0.2/24', 'dev', 'lark0'],
      ['ip', 'link', 'set', 'dev', 'lark0', 'up'],
      ['ip', 'route', 'replace', '192.168.31.0/24', 'dev', 'lark0'],
    ]);
    assert.equal(
      formatPlan(plan),
      'ip link set dev lark0 mtu 1400\n' +
        'ip addr add 10.0.0.2/24 dev lark0\n' +
        'ip link set dev lark0 up\n' +
        'ip route replace 192.168.31.0/24 dev lark0\n',
    );
  });
  test('spoke with a /32 address routes the virtual subnet', () => {
    const r = check('spoke', (raw) => { raw.local_tun_ip = '10.0.0.2/32'; delete raw.remote_routes; peersOf(raw)[0]!.allowed_src = '10.0.0.0/24'; });
    assert.deepEqual(networkPlan(r.config!, 'lark0').at(-1), ['ip', 'route', 'replace', '10.0.0.0/24', 'dev', 'lark0']);
  });
  test('hub without local_tun_ip: no addresses, one route per peer prefix (IPv6 with -6)', () => {
    assert.deepEqual(networkPlan(mustLoad('hub'), 'snr0'), [
      ['ip', 'link', 'set', 'dev', 'snr0', 'mtu', '1400'],
      ['ip', 'link', 'set', 'dev', 'snr0', 'up'],
      ['ip', 'route', 'replace', '10.0.0.2/32', 'dev', 'snr0'],
      ['ip', 'route', 'replace', '192.168.10.0/24', 'dev', 'snr0'],
      ['ip', 'route', 'replace', '10.0.0.3/32', 'dev', 'snr0'],
      ['ip', 'route', 'replace', '10.0.0.4/32', 'dev', 'snr0'],
      ['ip', '-6', 'route', 'replace', 'fd00::4/128', 'dev', 'snr0'],
    ]);
  });
  test('manual dual-stack: ip -6 addr add, no routes', () => {
    assert.deepEqual(networkPlan(mustLoad('manual'), 'lark0'), [
      ['ip', 'link', 'set', 'dev', 'lark0', 'mtu', '1280'],
      ['ip', 'addr', 'add', '10.9.0.7/24', 'dev', 'lark0'],
      ['ip', '-6', 'addr', 'add', 'fd00:9::7/64', 'dev', 'lark0'],
      ['ip', 'link', 'set', 'dev', 'lark0', 'up'],
    ]);
  });
  test('bad interface names are refused; formatPlan quotes for the shell', () => {
    assert.throws(() => networkPlan(mustLoad('spoke'), 'a-very-long-name0'), /1\.\.15 characters/);
    assert.throws(() => networkPlan(mustLoad('spoke'), 'tun 0'), /may contain only/);
    assert.equal(formatPlan([['echo', "it's", 'a b'], []]), "echo 'it'\\''s' 'a b'\n\n");
    assert.equal(formatPlan([]), '');
  });
});
