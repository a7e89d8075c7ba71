// Loads the subnetra conformance vectors (test/fixtures/conformance). Epochs exceed 2^53, so large
// integer literals are turned into strings before JSON.parse to keep them exact.
import { readFileSync } from 'node:fs';

export interface SenderVector {
  name: string;
  input: { psk: string; from_id: number; to_id: number; epoch: string; seq: string; plaintext: string };
  output: { link_key: string; session_key: string; datagram: string };
}
export interface ReceiverStep {
  note: string;
  datagram: string;
  expect: 'accept' | 'drop';
  plaintext: string | null;
  epoch_after: string;
}
export interface ReceiverCase {
  name: string;
  link: { psk: string; from_id: number; to_id: number };
  init_epoch: string;
  steps: ReceiverStep[];
}
export interface ObfuscatedVector {
  name: string;
  datagram: string;
}
export interface VectorFile {
  wire_version: number;
  header_len: number;
  tag_len: number;
  max_plaintext: number;
  vectors: SenderVector[];
  receiver_cases: ReceiverCase[];
  obfuscated_vectors: ObfuscatedVector[];
}

export const VECTORS_URL = new URL('../fixtures/conformance/subnetra-protocol-vectors.json', import.meta.url);

export function loadVectors(): VectorFile {
  const text = readFileSync(VECTORS_URL, 'utf8');
  // Quote every bare integer value so that bigint-sized ones survive intact.
  const quoted = text.replace(/(:\s*)(\d+)(\s*[,}\n])/g, '$1"$2"$3');
  const raw = JSON.parse(quoted) as Record<string, unknown>;
  const file = raw as unknown as VectorFile;
  // Small numeric fields back to numbers.
  for (const k of ['wire_version', 'header_len', 'tag_len', 'max_plaintext'] as const) {
    (file as unknown as Record<string, number>)[k] = Number(raw[k]);
  }
  for (const v of file.vectors) {
    v.input.from_id = Number(v.input.from_id);
    v.input.to_id = Number(v.input.to_id);
  }
  for (const c of file.receiver_cases) {
    c.link.from_id = Number(c.link.from_id);
    c.link.to_id = Number(c.link.to_id);
  }
  return file;
}

export const hex = (s: string): Buffer => Buffer.from(s, 'hex');
