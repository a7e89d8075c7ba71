// A node that stops reading its stream (hung process, or a peer gone without
// closing TCP) is detected server-side: once writes stay undrained for 3 s the
// stream is cut and the node goes offline.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { Client, cleanup, registerNode, sleep, spawnServer, tempDir } from './harness.js';

it('a stream that stopped reading is cut and its node marked offline', async () => {
  const dir = tempDir();
  const srv = await spawnServer({ dataDir: dir, db: 'sqlite' });
  try {
    const op = new Client(srv.url, srv.operatorKey());
    await op.post('/api/v1/tenants', { name: 'big' });
    const adm = op.as((await op.post('/api/v1/tenants/big/apikeys', { role: 'admin' })).body.key);
    await adm.post('/api/v1/tenants/big/users', { name: 'u' });
    const ak = (await adm.post('/api/v1/tenants/big/authkeys', { user: 'u', reusable: true })).body.key;
    const ids: number[] = [];
    let token = '';
    for (let i = 0; i < 200; i++) {
      const r = await registerNode(op.as(null), { auth_key: ak, hostname: `n${i}`, endpoints: ['198.51.100.1:41641', '198.51.100.2:41641'] });
      ids.push(r.body.node.id);
      if (i === 0) token = r.body.token;
    }
    // n0 opens its stream and then never reads again
    const { hostname, port } = new URL(srv.url);
    const sock = connect(Number(port), hostname);
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.write(`GET /node/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`);
    sock.pause();
    const online = async () => (await adm.get(`/api/v1/tenants/big/nodes/${ids[0]}`)).body.online as boolean;
    for (let i = 0; i < 50 && !(await online()); i++) await sleep(50);
    assert.equal(await online(), true, 'streaming');
    // every rename changes every map's peers: full maps (~60 KB) pile up unread
    const t0 = Date.now();
    let cut = -1;
    for (let i = 0; i < 400 && cut < 0; i++) {
      await adm.patch(`/api/v1/tenants/big/nodes/${ids[1 + (i % 10)]}`, { name: `r${i}` });
      if (i % 10 === 9 && !(await online())) cut = Date.now() - t0;
      await sleep(20);
    }
    for (let i = 0; i < 100 && cut < 0; i++) {
      if (!(await online())) cut = Date.now() - t0;
      else await sleep(100);
    }
    sock.destroy();
    assert.ok(cut >= 0, 'the stalled stream was cut');
    const metrics = await (await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${srv.operatorKey()}` } })).text();
    assert.match(metrics, /larktun_node_liveness_events_total\{event="stream_stalled"\} 1/);
    process.stderr.write(`# stalled stream cut ${cut} ms after the pushes began\n`);
  } finally {
    await srv.stop();
    cleanup(dir);
  }
});
