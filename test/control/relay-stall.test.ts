// A relay stream whose client stops reading is cut (bounded time and
// backlog); a relay that reads keeps its stream.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import net from 'node:net';
import { pino } from 'pino';
import { startServer } from '../../src/control/index.js';
import { guardedWriter } from '../../src/control/http/stream-guard.js';
import { SseReader, cleanup, sleep, tempDir } from './harness.js';
import { generateNodeKey, signRegistration } from '../../src/control/nodekey.js';

const py = spawnSync('python3', ['-c', 'import socket']).status === 0;
const procs: ChildProcess[] = [];
after(() => procs.forEach((p) => p.exitCode === null && p.kill('SIGKILL')));

/** An HTTP client with a 2 KiB receive buffer that sends one request and then never reads. */
function stuckClient(port: number, path: string, token: string): ChildProcess {
  const script = `
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
s.connect(("127.0.0.1", ${port}))
s.sendall(b"GET ${path} HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer ${token}\\r\\n\\r\\n")
print("sent", flush=True)
time.sleep(60)
`;
  const p = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  procs.push(p);
  return p;
}

test('relay stream: a relay that stops reading is cut within the stall time; one that reads is kept', { skip: py ? false : 'python3 not found (needed for a client with a small receive buffer)' }, async () => {
  const dir = tempDir();
  const STALL = 600;
  const srv = await startServer({ listen: '127.0.0.1:0', dataDir: dir, logger: pino({ level: 'silent' }), keepaliveMs: 20, relayStallMs: STALL });
  try {
    const op = readFileSync(`${dir}/operator.key`, 'utf8').trim();
    const inject = async (method: 'GET' | 'POST', url: string, payload?: Record<string, unknown>, key: string | null = op) => {
      const r = await srv.app.inject({ method, url, headers: key ? { authorization: `Bearer ${key}` } : {}, ...(payload ? { payload } : {}) });
      return { status: r.statusCode, body: r.json() as Record<string, unknown> };
    };
    assert.equal((await inject('POST', '/api/v1/tenants', { name: 'acme' })).status, 201);
    assert.equal((await inject('POST', '/api/v1/tenants/acme/users', { name: 'alice' })).status, 201);
    const relay = await inject('POST', '/api/v1/relays', { name: 'r1', endpoints: ['127.0.0.1:41642'] });
    assert.equal(relay.status, 201);
    const token = relay.body['token'] as string;
    const ak = (await inject('POST', '/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body['key'] as string;
    // a view of some size: 150 links
    for (let i = 0; i < 150; i++) {
      const id = generateNodeKey();
      const ch = (await inject('POST', '/node/v1/register/challenge', { auth_key: ak }, null)).body;
      const signature = signRegistration(id.privateKey, ch['nonce'] as string, id.nodeKey, ch['tenant'] as string);
      const r = await inject('POST', '/node/v1/register', { auth_key: ak, node_key: id.nodeKey, nonce: ch['nonce'], signature, hostname: `n${i}` }, null);
      assert.equal(r.status, 201);
    }
    const view = await inject('GET', '/relay/v1/map', undefined, token);
    assert.ok(JSON.stringify(view.body).length > 30_000, 'view large enough to fill the socket buffers');

    const reader = await SseReader.open(`${srv.url}/relay/v1/stream`, token);
    assert.equal((await reader.next()).event, 'map');
    const port = Number(new URL(srv.url).port);
    const stuck = stuckClient(port, '/relay/v1/stream', token);
    await new Promise<void>((r) => stuck.stdout?.once('data', () => r()));
    const stalled = async () => {
      const text = (await srv.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${op}` } })).body;
      return Number(/larktun_node_liveness_events_total\{event="relay_stream_(?:stalled|backlog)"\} (\d+)/.exec(text)?.[1] ?? 0);
    };
    await sleep(300);
    assert.equal(srv.relayHub.streamCount(), 2, 'both streams open');
    // push views until the stuck client's buffers are full, then wait out the stall time
    const t0 = Date.now();
    // (each rotate recompiles the relay's view: on a loaded machine 20 s of rotations once did not fill the buffers)
    while ((await stalled()) === 0 && Date.now() - t0 < 60_000) {
      await inject('POST', '/api/v1/relays/1/rotate');
      await sleep(50);
    }
    assert.equal(await stalled(), 1, 'the stuck relay stream was cut');
    await sleep(100);
    assert.equal(srv.relayHub.streamCount(), 1, 'only the reading relay is left');
    // the reading relay was never cut and still gets views
    assert.ok(!reader.closed);
    while (reader.pending() > 0) await reader.next();
    await inject('POST', '/api/v1/relays/1/rotate');
    let got = false;
    for (let i = 0; i < 50 && !got; i++) got = (await reader.next(5000)).event === 'map';
    assert.ok(got, 'the reading relay still receives views');
    reader.close();
  } finally {
    await srv.close();
    cleanup(dir);
  }
});

test('guardedWriter: cuts a stalled response after stallMs, and at once past the backlog limit', async () => {
  const cuts: string[] = [];
  let mode: 'stall' | 'backlog' = 'stall';
  const server = createServer((_req, res) => {
    res.writeHead(200);
    const w = guardedWriter(res, {
      stallMs: mode === 'stall' ? 300 : 60_000,
      maxBacklog: mode === 'stall' ? 1 << 30 : 256 * 1024,
      onCut: (reason) => cuts.push(reason),
    });
    const chunk = 'x'.repeat(64 * 1024);
    const pump = setInterval(() => {
      if (!w.write(chunk)) clearInterval(pump);
    }, 5);
    res.on('close', () => {
      clearInterval(pump);
      w.dispose();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  try {
    for (const m of ['stall', 'backlog'] as const) {
      mode = m;
      const c = net.connect(port, '127.0.0.1');
      c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      c.pause(); // never read
      const t0 = Date.now();
      while (cuts.length === (m === 'stall' ? 0 : 1) && Date.now() - t0 < 20_000) await sleep(20);
      c.destroy();
      assert.equal(cuts.at(-1), m === 'stall' ? 'stalled' : 'backlog');
    }
  } finally {
    server.close();
  }
});
