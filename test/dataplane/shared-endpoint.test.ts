// SharedEndpoint: one peer endpoint in shared memory, written by the worker
// that hears the peer, read (through a per-thread copy) by every sender.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SharedEndpoint } from '../../src/dataplane/workers/endpoint.js';

test('a write through one view is seen by another view of the same buffer, only after refresh', () => {
  const a = new SharedEndpoint();
  const b = new SharedEndpoint(a.buffer);
  assert.equal(b.refresh(), true, 'first look at an empty endpoint');
  assert.equal(b.addr, null);
  assert.equal(a.set('192.0.2.7', 51820, 4, 4242), true);
  assert.equal(a.set('192.0.2.7', 51820, 4, 4242), false, 'unchanged: no write');
  assert.equal(b.addr, null, 'the reader copy is stale until refreshed');
  assert.equal(b.refresh(), true);
  assert.deepEqual([b.addr, b.port, b.family, b.localPort], ['192.0.2.7', 51820, 4, 4242]);
  assert.equal(b.refresh(), false, 'nothing moved');
  assert.equal(b.set('2001:db8::1', 9, 6, 4243), true);
  assert.equal(a.refresh(), true);
  assert.deepEqual([a.addr, a.port, a.family, a.localPort], ['2001:db8::1', 9, 6, 4243]);
  assert.equal(a.set('not an address', 1, 4, 1), false, 'junk is refused, the endpoint kept');
  assert.equal(a.addr, '2001:db8::1');
  a.lastSeenMs = 1234.5;
  assert.equal(b.lastSeenMs, 1234.5);
  b.clear();
  a.refresh();
  assert.equal(a.addr, null);
  assert.throws(() => new SharedEndpoint(new SharedArrayBuffer(8)), /shared endpoint/);
});
