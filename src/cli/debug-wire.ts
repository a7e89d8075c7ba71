// `larktun debug wire seal|open`: offline encoding and decoding of single
// subnetra v1 datagrams, for interop checks and packet-capture debugging.
import type { Command } from 'commander';
import {
  MAX_DATAGRAM,
  MAX_EPOCH,
  MAX_NODE_ID,
  MAX_PLAINTEXT,
  MAX_SEQ,
  MIN_DATAGRAM,
  MIN_EPOCH,
  MIN_NODE_ID,
  RxCode,
  WireRx,
  WireTx,
  decodeHeader,
  linkKey,
  unmaskHeader,
} from '../wire/index.js';
import { fail } from './util.js';

const USAGE = 2;
const HEX_RE = /^(?:[0-9a-fA-F]{2})*$/;
const DEC_RE = /^[0-9]+$/;

interface SealFlags {
  psk?: string;
  from?: string;
  to?: string;
  epoch?: string;
  seq?: string;
  keepalive?: boolean;
  obfuscate?: boolean;
  payload?: string;
}

interface OpenFlags {
  psk?: string;
  from?: string;
  to?: string;
  obfuscate?: boolean;
  datagram?: string;
}

function required(value: string | undefined, flag: string, expected: string): string {
  if (value === undefined) fail(`${flag} is required: ${expected}`, USAGE);
  return value;
}

function parsePsk(value: string | undefined): Buffer {
  const v = required(value, '--psk', 'the link pre-shared key as 64 hex characters');
  if (v.length !== 64 || !HEX_RE.test(v)) {
    fail(`--psk must be exactly 64 hex characters (a 32-byte key); got ${v.length} characters`, USAGE);
  }
  return Buffer.from(v, 'hex');
}

function parseNodeId(value: string | undefined, flag: string, role: string): number {
  const v = required(value, flag, `the ${role} node id, an integer in ${MIN_NODE_ID}..${MAX_NODE_ID}`);
  const n = DEC_RE.test(v) ? Number(v) : NaN;
  if (!(Number.isInteger(n) && n >= MIN_NODE_ID && n <= MAX_NODE_ID)) {
    fail(`${flag} must be the ${role} node id, an integer in ${MIN_NODE_ID}..${MAX_NODE_ID}; got '${v}'`, USAGE);
  }
  return n;
}

function parseEpoch(value: string | undefined): bigint {
  const expected = `a decimal count of nanoseconds since 1970, at least ${MIN_EPOCH} (2024-01-01T00:00:00Z) and below 2^64`;
  const v = required(value, '--epoch', `the sender's session epoch, ${expected}`);
  if (!DEC_RE.test(v)) fail(`--epoch must be ${expected}; got '${v}'`, USAGE);
  const e = BigInt(v);
  if (e === 0n) fail(`--epoch must not be zero; expected ${expected}`, USAGE);
  if (e < MIN_EPOCH || e > MAX_EPOCH) fail(`--epoch must be ${expected}; got ${v}`, USAGE);
  return e;
}

function parseSeq(value: string | undefined): bigint {
  const expected = `a decimal integer in 1..${MAX_SEQ}`;
  const v = required(value, '--seq', `the sequence number, ${expected}`);
  if (!DEC_RE.test(v)) fail(`--seq must be ${expected}; got '${v}'`, USAGE);
  const s = BigInt(v);
  if (s < 1n || s > MAX_SEQ) fail(`--seq must be ${expected}; got ${v}`, USAGE);
  return s;
}

function parseHex(value: string, flag: string, what: string): Buffer {
  if (!HEX_RE.test(value)) {
    fail(`${flag} must be ${what} as an even number of hex digits (no 0x prefix or spaces)`, USAGE);
  }
  return Buffer.from(value, 'hex');
}

function sealCommand(opts: SealFlags): void {
  const psk = parsePsk(opts.psk);
  const from = parseNodeId(opts.from, '--from', 'sending');
  const to = parseNodeId(opts.to, '--to', 'receiving');
  const epoch = parseEpoch(opts.epoch);
  const seq = parseSeq(opts.seq);
  const payload = parseHex(opts.payload ?? '', '--payload', 'the inner packet');
  if (payload.length > MAX_PLAINTEXT) {
    fail(`--payload is ${payload.length} bytes; a datagram carries at most ${MAX_PLAINTEXT}`, USAGE);
  }
  if (opts.keepalive === true && payload.length > 0) {
    fail('--keepalive datagrams carry no inner packet; drop --payload or --keepalive', USAGE);
  }
  const tx = new WireTx({ psk, from, to, epoch, obfuscate: opts.obfuscate === true });
  const out = Buffer.alloc(MAX_DATAGRAM);
  const n = tx.sealWithSeq(seq, payload, 0, payload.length, out, opts.keepalive === true);
  process.stdout.write(`${out.subarray(0, n).toString('hex')}\n`);
}

/** Explains a Malformed result in terms of what the header actually holds. */
function malformedReason(dgram: Buffer, from: number, to: number, psk: Buffer, obfuscate: boolean): string {
  if (dgram.length < MIN_DATAGRAM) {
    return `malformed datagram: ${dgram.length} bytes is shorter than the ${MIN_DATAGRAM}-byte minimum (header + tag)`;
  }
  if (dgram.length > MAX_DATAGRAM) {
    return `malformed datagram: ${dgram.length} bytes exceeds the ${MAX_DATAGRAM}-byte maximum`;
  }
  const hdr = decodeHeader(obfuscate ? unmaskHeader(dgram, dgram.length, linkKey(psk, from, to)) : dgram);
  if (obfuscate && (hdr.version !== 1 || hdr.keyId !== from)) {
    return (
      `header does not unmask to a v1 header from node ${from}: wrong --psk, wrong --from/--to direction, ` +
      'or the datagram is not obfuscated (omit --obfuscate)'
    );
  }
  if (hdr.version !== 1) {
    return (
      `malformed datagram: version byte is ${hdr.version}, expected 1` +
      (obfuscate ? '' : ' (if the sender obfuscates headers, add --obfuscate)')
    );
  }
  if ((hdr.flags & 0xfe) !== 0) {
    return `malformed datagram: reserved flag bits set (flags 0x${hdr.flags.toString(16).padStart(2, '0')})`;
  }
  if (hdr.keyId !== from) return `datagram is from node ${hdr.keyId}, not --from ${from}`;
  if (hdr.epoch === 0n) return 'malformed datagram: epoch is zero';
  return 'malformed datagram';
}

function openCommand(opts: OpenFlags): void {
  const psk = parsePsk(opts.psk);
  const from = parseNodeId(opts.from, '--from', 'sending');
  const to = parseNodeId(opts.to, '--to', 'receiving');
  const dgram = parseHex(
    required(opts.datagram, '--datagram', 'the received UDP payload as hex'),
    '--datagram',
    'the received UDP payload',
  );
  const obfuscate = opts.obfuscate === true;
  const rx = new WireRx({ psk, from, to, obfuscate });
  const out = Buffer.alloc(MAX_PLAINTEXT);
  const code = rx.open(dgram, dgram.length, out);
  switch (code) {
    case RxCode.Accept:
      process.stdout.write(
        `${JSON.stringify({
          keepalive: rx.keepalive,
          epoch: rx.epoch.toString(),
          seq: rx.lastSeq.toString(),
          payload: out.subarray(0, rx.plaintextLen).toString('hex'),
        })}\n`,
      );
      return;
    case RxCode.Malformed:
      fail(malformedReason(dgram, from, to, psk, obfuscate), 1);
      break;
    case RxCode.AuthFail:
      fail('authentication failed: wrong key, wrong direction or corrupted datagram', 1);
      break;
    default:
      // A fresh receiver has no epoch or window yet, so this cannot happen.
      fail(`datagram dropped (code ${code})`, 1);
  }
}

/** Adds `debug wire seal` and `debug wire open` (creating `debug` if needed). */
export function registerDebugWire(program: Command): void {
  const debug =
    program.commands.find((c) => c.name() === 'debug') ??
    program.command('debug').description('offline diagnostics and protocol tools');
  const wire = debug.command('wire').description('encode and decode single subnetra v1 datagrams');

  wire
    .command('seal')
    .description('seal one inner packet into a datagram; prints the datagram as hex')
    .option('--psk <hex>', 'link pre-shared key, 64 hex characters')
    .option('--from <id>', `sending node id (${MIN_NODE_ID}..${MAX_NODE_ID})`)
    .option('--to <id>', `receiving node id (${MIN_NODE_ID}..${MAX_NODE_ID})`)
    .option('--epoch <ns>', `sender session epoch in ns, >= ${MIN_EPOCH}`)
    .option('--seq <n>', `sequence number (1..${MAX_SEQ}, a full u64)`)
    .option('--keepalive', 'set the keepalive flag (empty payload)')
    .option('--obfuscate', 'mask the header as subnetra does by default')
    .option('--payload <hex>', 'inner packet as hex (default: empty)')
    .action((opts: SealFlags) => sealCommand(opts));

  wire
    .command('open')
    .description('authenticate and decrypt one datagram; prints JSON, or exits 1 with the reason')
    .option('--psk <hex>', 'link pre-shared key, 64 hex characters')
    .option('--from <id>', `sending node id (${MIN_NODE_ID}..${MAX_NODE_ID})`)
    .option('--to <id>', `receiving node id (${MIN_NODE_ID}..${MAX_NODE_ID})`)
    .option('--obfuscate', 'the header is masked (subnetra default)')
    .option('--datagram <hex>', 'the UDP payload as hex')
    .action((opts: OpenFlags) => openCommand(opts));
}
