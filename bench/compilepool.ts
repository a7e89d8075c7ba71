// Compile pool benchmark (issue 11): what moving compilation off the event
// loop costs and saves. Measures, through a CompilePool like the server's:
// - the 20 000-host policy (test/control/bigpolicy.ts): a PUT's check
//   (parse + caps + complete compile) and the sync that adopts it;
// - a tenant of N nodes (LARKTUN_BENCH_NODES, default 2 000; every node
//   connected, default policy: everyone sees everyone): the first full sync
//   and one join, each split into worker time and transfer (round trip minus
//   worker time, which covers cloning the input, encoding, transferring and
//   decoding the views on the event loop);
// - the event loop's longest stall over the whole run (monitorEventLoopDelay).
// Prints one JSON line.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { CompilePool, compileLimits, decodeViews } from '../src/control/compile/index.js';
import { DEFAULT_POLICY, type AclNetwork, type AclNode } from '../src/control/policy-engine.js';
import { bigPolicy, routerRoutes } from '../test/control/bigpolicy.js';

const N = Number(process.env['LARKTUN_BENCH_NODES'] ?? 2000);
const ms = (x: number): number => Number(x.toFixed(1));

const node = (id: number, extra: Partial<AclNode> = {}): AclNode => ({
  id, name: `n${id}`, user: 'u', tags: [], ipv4: `100.64.${id >> 8}.${id & 255}`, ipv6: null, announced_routes: [], approved_routes: [], online: true, ...extra,
});

async function main(): Promise<void> {
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const pool = new CompilePool(compileLimits({ timeMs: 120_000 }));
  const out: Record<string, unknown> = { bench: 'compilepool', nodes: N, workers: pool.limits.workers };
  try {
    // The 20 000-host policy with its 1 024-route router.
    const big = bigPolicy();
    const routes = routerRoutes();
    const bigNet: AclNetwork = { users: [{ id: 1, name: 'u' }], pool: ['100.64.0.0/10'], nodes: [node(1, { user: null, tags: ['tag:r'], announced_routes: routes, approved_routes: routes }), node(2)] };
    // the stored primaries, as the server passes them (a PUT's compile is adopted only when they agree)
    const prim = new Map(routes.map((r) => [r, 1] as [string, number]));
    let t0 = performance.now();
    const chk = await pool.check(1, big, bigNet, prim, true);
    out['big_policy_bytes'] = big.length;
    out['big_check_ms'] = ms(chk.ms);
    out['big_check_roundtrip_ms'] = ms(performance.now() - t0);
    t0 = performance.now();
    const adopt = await pool.sync({ tenant: 1, policy: big, net: bigNet, primaries: [...prim], connected: [1, 2], missing: [1, 2] });
    const adoptRt = performance.now() - t0;
    t0 = performance.now();
    decodeViews(adopt.out);
    out['big_adopt_worker_ms'] = ms(adopt.ms);
    out['big_adopt_transfer_ms'] = ms(adoptRt - adopt.ms);
    out['big_router_filter_bytes'] = JSON.stringify(adopt.out.views.find((v) => v.id === 1)?.filter ?? null).length;

    // A tenant of N nodes, all connected.
    const nodes = Array.from({ length: N }, (_, i) => node(i + 1));
    const net: AclNetwork = { users: [{ id: 1, name: 'u' }], pool: ['100.64.0.0/10'], nodes };
    const ids = nodes.map((n) => n.id);
    t0 = performance.now();
    const first = await pool.sync({ tenant: 2, policy: DEFAULT_POLICY, net, primaries: [], connected: ids, missing: ids });
    const firstRt = performance.now() - t0;
    const d0 = performance.now();
    const views = decodeViews(first.out);
    const decodeMs = performance.now() - d0;
    out['tenant_full_worker_ms'] = ms(first.ms);
    out['tenant_full_transfer_ms'] = ms(firstRt - first.ms);
    out['tenant_full_decode_ms'] = ms(decodeMs);
    out['tenant_full_views'] = views.size;
    out['tenant_full_peer_vectors'] = first.out.bases.length;
    const joined: AclNetwork = { ...net, nodes: [...nodes, node(N + 1)] };
    t0 = performance.now();
    const join = await pool.sync({ tenant: 2, policy: DEFAULT_POLICY, net: joined, primaries: [], connected: [...ids, N + 1], missing: [N + 1] });
    const joinRt = performance.now() - t0;
    out['join_worker_ms'] = ms(join.ms);
    out['join_transfer_ms'] = ms(joinRt - join.ms);
    out['join_views'] = join.out.views.length;
    out['event_loop_max_stall_ms'] = ms(loop.max / 1e6);
  } finally {
    loop.disable();
    await pool.close();
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

void main();
