// npm run demo (root, Linux): builds a whole Larktun installation in network
// namespaces (see demo/world.ts for the map), shows allowed and denied paths
// working as acme's policy says, shows beta cannot reach acme although their
// address pools overlap, and tears everything down.
import { World, worldSkipReason, DB, INTERNET_HOST, SERVER_URL, ACME_POLICY, type NodeName } from './world.js';

const say = (s: string): void => void process.stdout.write(`${s}\n`);
const mark = (ok: boolean, expected: boolean): string => (ok === expected ? (ok ? 'allowed, as the policy says' : 'denied, as the policy says') : `UNEXPECTED (${ok ? 'allowed' : 'denied'})`);

async function main(): Promise<number> {
  const why = worldSkipReason();
  if (why) {
    say(`larktun demo: ${why}`);
    return 2;
  }
  const w = new World();
  let failures = 0;
  const check = (label: string, ok: boolean, expected: boolean): void => {
    if (ok !== expected) failures++;
    say(`  ${label.padEnd(58)} ${mark(ok, expected)}`);
  };
  const up = (n: NodeName, args: string): void => {
    const r = w.cli(n, `up --login-server ${SERVER_URL} --hostname ${n} ${args}`);
    say(`  larktun up (${n}) → ${r.out.trim()}`);
  };
  const onSignal = (): void => {
    w.teardown();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    say('Building namespaces: hub (server + shared relay), router, router2, exit-hk, dev, ops, guest, b1, b2, lan, inet');
    w.build();
    await w.startServer();
    await w.bootstrap();
    await w.startRelay();
    say(`Control server ${SERVER_URL}; relay relay-1 at 10.99.255.1:41642 serving tenants acme and beta`);
    say('acme policy:');
    for (const l of ACME_POLICY.trim().split('\n')) say(`  | ${l}`);
    for (const n of ['router', 'router2', 'exit-hk', 'dev', 'ops', 'guest', 'b1', 'b2'] as const) await w.startNode(n);
    say('\nJoining nodes (auth keys from the Admin API):');
    up('router', `--authkey ${w.authKeys['ops']} --advertise-routes=192.168.6.0/24 --advertise-tags=tag:router`);
    up('router2', `--authkey ${w.authKeys['ops']} --advertise-routes=192.168.6.0/24 --advertise-tags=tag:router`);
    up('exit-hk', `--authkey ${w.authKeys['ops']} --advertise-exit-node --advertise-tags=tag:exit`);
    up('dev', `--authkey ${w.authKeys['dev']} --accept-routes`);
    up('ops', `--authkey ${w.authKeys['ops']} --accept-routes --exit-node=exit-hk`);
    up('guest', `--authkey ${w.authKeys['guest']} --accept-routes`);
    up('b1', `--authkey ${w.authKeys['beta']}`);
    up('b2', `--authkey ${w.authKeys['beta']}`);
    await w.waitFor(() => w.tcp('dev', DB, 5432, 1), 10_000, 200);
    await w.waitFor(() => w.ping('ops', INTERNET_HOST, 1, 1) === 1, 10_000, 200);

    say('\nacme paths:');
    check(`dev → db ${DB}:5432 (subnet route via router)`, w.tcp('dev', DB, 5432, 1), true);
    check(`dev → db ${DB}:5433`, w.tcp('dev', DB, 5433, 1), false);
    check(`dev → internet ${INTERNET_HOST}`, w.ping('dev', INTERNET_HOST, 1, 1) === 1, false);
    check(`ops → internet ${INTERNET_HOST} (through exit-hk)`, w.ping('ops', INTERNET_HOST, 1, 1) === 1, true);
    check(`ops → db ${DB}:5432`, w.tcp('ops', DB, 5432, 1), false);
    check(`guest → db ${DB}:5432`, w.tcp('guest', DB, 5432, 1), false);
    check(`guest → internet ${INTERNET_HOST}`, w.ping('guest', INTERNET_HOST, 1, 1) === 1, false);

    say('\nbeta (same address pool as acme):');
    const b2 = w.status('b2').self.addresses[0].split('/')[0] as string;
    const twin = (['router', 'router2', 'exit-hk', 'dev', 'ops', 'guest'] as const).find((n) => w.status(n).self.addresses[0].split('/')[0] === b2);
    check(`b1 → ${b2} reaches beta's b2${twin ? ` (acme's ${twin} has the same address)` : ''}`, w.ping('b1', b2, 1, 1) === 1, true);
    check(`b1 → acme db ${DB}`, w.ping('b1', DB, 1, 1) === 1, false);

    say('\nlarktun status (ops):');
    for (const l of w.cli('ops', 'status').out.trimEnd().split('\n')) say(`  ${l}`);
    say('\nlarktun admin routes list (acme):');
    const routes = w.cli('dev', `admin --server http://10.99.254.2:8080 --api-key ${w.adminKey['acme']} --tenant acme routes list`, true);
    for (const l of (routes.out || routes.err).trimEnd().split('\n')) say(`  ${l}`);
    const relay = w.relayStatus();
    say('\nrelay-1 per-tenant namespaces:');
    for (const t of relay.tenants as { tenant: string; links: number; counters: Record<string, number> }[]) {
      say(`  ${t.tenant.padEnd(6)} links ${t.links}  relayed ${t.counters['relay_packets']}  dropped: filter ${t.counters['drop_filter']}, spoof ${t.counters['drop_spoof']}, no route ${t.counters['drop_no_route']}`);
    }
  } finally {
    say('\nTearing down.');
    w.teardown();
  }
  say(failures === 0 ? 'Every path behaved as the policy says.' : `${failures} path(s) did not behave as expected.`);
  return failures === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`larktun demo failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
