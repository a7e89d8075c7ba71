// `larktun debug wire seal|open` end to end, in a child process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { hex, loadVectors } from './vectors.js';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const file = loadVectors();

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function larktun(...args: string[]): Run {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'test/wire/cli-entry.ts', ...args], {
    cwd: repo,
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const v1 = file.vectors[0]!;
const base = (v = v1): string[] => [
  '--psk',
  v.input.psk,
  '--from',
  String(v.input.from_id),
  '--to',
  String(v.input.to_id),
];

test('seal reproduces the plain and obfuscated vector datagrams', () => {
  for (const v of file.vectors.slice(0, 3)) {
    const args = [...base(v), '--epoch', v.input.epoch, '--seq', v.input.seq, '--payload', v.input.plaintext];
    const plain = larktun('debug', 'wire', 'seal', ...args);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(plain.stdout, `${v.output.datagram}\n`);
    const masked = larktun('debug', 'wire', 'seal', ...args, '--obfuscate');
    assert.equal(masked.code, 0, masked.stderr);
    const o = file.obfuscated_vectors.find((x) => x.name === v.name)!;
    assert.equal(masked.stdout, `${o.datagram}\n`);
  }
});

test('open round-trips a vector, plain and obfuscated', () => {
  const plain = larktun('debug', 'wire', 'open', ...base(), '--datagram', v1.output.datagram);
  assert.equal(plain.code, 0, plain.stderr);
  assert.deepEqual(JSON.parse(plain.stdout), {
    keepalive: false,
    epoch: v1.input.epoch,
    seq: v1.input.seq,
    payload: v1.input.plaintext,
  });
  assert.ok(plain.stdout.endsWith('}\n'));
  const o = file.obfuscated_vectors.find((x) => x.name === v1.name)!;
  const masked = larktun('debug', 'wire', 'open', ...base(), '--obfuscate', '--datagram', o.datagram);
  assert.equal(masked.code, 0, masked.stderr);
  assert.equal(JSON.parse(masked.stdout).payload, v1.input.plaintext);
});

test('keepalive seal then open', () => {
  const sealed = larktun('debug', 'wire', 'seal', ...base(), '--epoch', v1.input.epoch, '--seq', '9', '--keepalive');
  assert.equal(sealed.code, 0, sealed.stderr);
  assert.equal(hex(sealed.stdout.trim()).length, 36);
  const opened = larktun('debug', 'wire', 'open', ...base(), '--datagram', sealed.stdout.trim());
  assert.equal(opened.code, 0, opened.stderr);
  assert.deepEqual(JSON.parse(opened.stdout), { keepalive: true, epoch: v1.input.epoch, seq: '9', payload: '' });
});

test('wrong key, wrong direction and obfuscation mismatch exit 1 with a reason', () => {
  const wrongPsk = '00'.repeat(32);
  const r1 = larktun('debug', 'wire', 'open', '--psk', wrongPsk, '--from', '1', '--to', '2', '--datagram', v1.output.datagram);
  assert.equal(r1.code, 1);
  assert.equal(r1.stdout, '');
  assert.match(r1.stderr, /^authentication failed: wrong key, wrong direction or corrupted datagram\n$/);

  const r2 = larktun('debug', 'wire', 'open', '--psk', v1.input.psk, '--from', '2', '--to', '1', '--datagram', v1.output.datagram);
  assert.equal(r2.code, 1);
  assert.match(r2.stderr, /from node 1, not --from 2/);

  const o = file.obfuscated_vectors.find((x) => x.name === v1.name)!;
  const r3 = larktun('debug', 'wire', 'open', ...base(), '--datagram', o.datagram);
  assert.equal(r3.code, 1);
  assert.match(r3.stderr, /--obfuscate/);

  const r4 = larktun('debug', 'wire', 'open', ...base(), '--datagram', '0100');
  assert.equal(r4.code, 1);
  assert.match(r4.stderr, /shorter than the 36-byte minimum/);
});

test('bad arguments exit 2 naming the flag', () => {
  const seal = (...extra: string[]): Run =>
    larktun('debug', 'wire', 'seal', '--epoch', v1.input.epoch, '--seq', '1', '--payload', '', ...extra);
  const cases: [Run, RegExp][] = [
    [seal('--psk', 'abcd', '--from', '1', '--to', '2'), /--psk must be exactly 64 hex characters/],
    [seal('--psk', 'zz'.repeat(32), '--from', '1', '--to', '2'), /--psk must be exactly 64 hex/],
    [seal('--psk', v1.input.psk, '--from', '0', '--to', '2'), /--from must be the sending node id, an integer in 1\.\.65535; got '0'/],
    [seal('--psk', v1.input.psk, '--from', '1', '--to', '65536'), /--to must be .* 1\.\.65535; got '65536'/],
    [seal('--psk', v1.input.psk, '--from', 'x', '--to', '2'), /--from must be/],
    [seal('--psk', v1.input.psk, '--to', '2'), /--from is required/],
    [
      larktun('debug', 'wire', 'seal', ...base(), '--epoch', '0', '--seq', '1'),
      /--epoch must not be zero/,
    ],
    [
      larktun('debug', 'wire', 'seal', ...base(), '--epoch', '1600000000000000000', '--seq', '1'),
      /--epoch must be .*at least 1704067200000000000 \(2024-01-01T00:00:00Z\)/,
    ],
    [larktun('debug', 'wire', 'seal', ...base(), '--seq', '1'), /--epoch is required/],
    [larktun('debug', 'wire', 'seal', ...base(), '--epoch', v1.input.epoch, '--seq', '0'), /--seq must be/],
    [
      larktun('debug', 'wire', 'seal', ...base(), '--epoch', v1.input.epoch, '--seq', '1', '--payload', 'abc'),
      /--payload must be the inner packet as an even number of hex digits/,
    ],
    [
      larktun('debug', 'wire', 'seal', ...base(), '--epoch', v1.input.epoch, '--seq', '1', '--payload', '00'.repeat(1453)),
      /--payload is 1453 bytes; a datagram carries at most 1452/,
    ],
    [
      larktun('debug', 'wire', 'seal', ...base(), '--epoch', v1.input.epoch, '--seq', '1', '--keepalive', '--payload', '00'),
      /--keepalive datagrams carry no inner packet/,
    ],
    [larktun('debug', 'wire', 'open', ...base(), '--datagram', 'xyz'), /--datagram must be/],
    [larktun('debug', 'wire', 'open', ...base()), /--datagram is required/],
  ];
  for (const [r, re] of cases) {
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, re);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
});
