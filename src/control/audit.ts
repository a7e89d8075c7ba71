// Audit hash chain. Each tenant's entries form a chain: an entry's hash covers
// its own fields and the previous entry's hash, so editing, inserting or removing
// a row breaks verification from that point on.
import { createHash } from 'node:crypto';
import type { Selectable } from 'kysely';
import type { AuditTable } from './store/schema.js';

export const GENESIS_HASH = '0'.repeat(64);

/** The hashed part of an audit row: everything but its id and the chain links. */
export type AuditFields = Omit<Selectable<AuditTable>, 'id' | 'prev_hash' | 'hash'>;

/** JSON with object keys sorted, so equal values always hash alike. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
}

export function auditHash(prevHash: string, f: AuditFields): string {
  const body = canonicalJson({
    tenant_id: f.tenant_id,
    seq: f.seq,
    ts: f.ts,
    actor: f.actor,
    action: f.action,
    object_type: f.object_type,
    object_id: f.object_id,
    before: f.before,
    after: f.after,
  });
  return createHash('sha256').update(prevHash).update('\n').update(body).digest('hex');
}

export interface ChainEntry extends AuditFields {
  prev_hash: string;
  hash: string;
}

export interface VerifyResult {
  ok: boolean;
  entries: number;
  /** First entry (seq) at which the chain is broken, with the reason. */
  broken_at: number | null;
  reason: string | null;
}

/** Verifies entries ordered by seq, starting at seq 1. */
export function verifyChain(entries: ChainEntry[]): VerifyResult {
  let prev = GENESIS_HASH;
  let expectSeq = 1;
  for (const e of entries) {
    if (e.seq !== expectSeq) {
      return { ok: false, entries: entries.length, broken_at: e.seq, reason: `expected entry ${expectSeq}, found ${e.seq} (an entry was removed or inserted)` };
    }
    if (e.prev_hash !== prev) {
      return { ok: false, entries: entries.length, broken_at: e.seq, reason: 'prev_hash does not match the previous entry' };
    }
    const h = auditHash(prev, e);
    if (h !== e.hash) {
      return { ok: false, entries: entries.length, broken_at: e.seq, reason: 'entry content does not match its hash (modified)' };
    }
    prev = e.hash;
    expectSeq++;
  }
  return { ok: true, entries: entries.length, broken_at: null, reason: null };
}
