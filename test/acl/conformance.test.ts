// Every case of test/fixtures/conformance/tailscale-policy-cases.json, loaded
// directly and compared the way each case says.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { IPSet } from '../../src/net/ipset.js';
import {
  type AclNetwork,
  type AclNode,
  type FilterRule,
  PrimaryElector,
  autoApprove,
  checkPolicy,
  compileToJson,
  parsePolicy,
  setApprovedRoutes,
} from '../../src/acl/index.js';

const CASES_URL = new URL('../fixtures/conformance/tailscale-policy-cases.json', import.meta.url);

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;
const cases: Json[] = JSON.parse(readFileSync(CASES_URL, 'utf8'));

const netOf = (c: Json): AclNetwork => ({ users: c.users, nodes: c.nodes });

const DEFAULT_PROTO = [1, 6, 17, 58];

function multiset(a: string[]): string {
  return JSON.stringify([...a].sort());
}

function normRule(r: FilterRule, internetAsSet: boolean): Json {
  const dst = (r.DstPorts ?? []).map((d) => `${d.IP}|${d.Ports.First}-${d.Ports.Last}`);
  let dstKey = multiset(dst);
  if (internetAsSet) {
    // Address-set comparison per port range.
    const byPorts = new Map<string, IPSet>();
    for (const d of r.DstPorts ?? []) {
      const k = `${d.Ports.First}-${d.Ports.Last}`;
      byPorts.set(k, (byPorts.get(k) ?? IPSet.EMPTY).union(IPSet.parse(d.IP)!));
    }
    dstKey = JSON.stringify([...byPorts.entries()].sort().map(([k, s]) => [k, s.toString()]));
  }
  return {
    src: multiset(r.SrcIPs),
    dst: dstKey,
    proto: JSON.stringify([...(r.IPProto ?? DEFAULT_PROTO)].sort((a, b) => a - b)),
    cap: JSON.stringify(r.CapGrant ?? null),
  };
}

function sortedMap(m: Record<string, string[]> | undefined): Json {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(m ?? {})) if (v.length > 0) out[k] = multiset(v);
  return out;
}

function errorsContain(errors: string[], want: string): void {
  const joined = errors.join('\n');
  assert.ok(joined.includes(want), `expected an error containing ${JSON.stringify(want)}, got:\n${joined}`);
}

describe('tailscale-policy-cases.json', () => {
  it('has 40 cases', () => assert.equal(cases.length, 40));

  for (const c of cases) {
    it(`${c.name} (${c.kind})`, () => {
      const e = c.expect;
      switch (c.kind) {
        case 'validation_error': {
          const r = checkPolicy(JSON.stringify(c.policy, null, 2), netOf(c));
          assert.equal(r.valid, false, 'policy should be rejected');
          errorsContain(r.errors, e.error_contains);
          for (const err of r.errors) assert.match(err, /^policy\.hujson:\d+:\d+: /);
          break;
        }
        case 'validation_error_matrix': {
          for (const row of e.matrix) {
            const r = checkPolicy(row.policy_json, netOf(c));
            assert.equal(r.valid, row.valid, `row ${row.policy_json}`);
            errorsContain(r.errors, row.error_contains);
          }
          break;
        }
        case 'filter':
        case 'routes':
        case 'grant': {
          const p = parsePolicy(JSON.stringify(c.policy));
          assert.ok(p.ok, p.ok ? '' : p.errors.join('\n'));
          if (!p.ok) return;
          const out = compileToJson(p.policy, netOf(c));
          const internetAsSet = String(c.compare ?? '').includes('EXCEPTION');
          for (const [node, rules] of Object.entries(e.packet_filter as Record<string, FilterRule[]>)) {
            const got = (out.packet_filter[node] ?? []).map((r) => normRule(r, internetAsSet));
            const want = rules.map((r) => normRule(r, internetAsSet));
            assert.deepEqual(got, want, `packet_filter[${node}]\n got: ${JSON.stringify(out.packet_filter[node])}`);
          }
          for (const [node, peers] of Object.entries(e.peers as Record<string, string[]>)) {
            assert.deepEqual(multiset(out.peers[node] ?? []), multiset(peers), `peers[${node}]`);
          }
          if (e.peer_allowed_routes) {
            const names = c.nodes.map((n: AclNode) => n.name);
            for (const viewer of names) {
              assert.deepEqual(
                sortedMap(out.peer_allowed_routes[viewer]),
                sortedMap(e.peer_allowed_routes[viewer]),
                `peer_allowed_routes[${viewer}]`,
              );
            }
          }
          if (e.primary_routes) {
            assert.deepEqual(sortedMap(out.primary_routes), sortedMap(e.primary_routes), 'primary_routes');
          }
          break;
        }
        case 'route_approval': {
          const p = parsePolicy(JSON.stringify(c.policy));
          assert.ok(p.ok);
          if (!p.ok) return;
          const start: AclNetwork = {
            users: c.users,
            nodes: c.nodes.map((n: AclNode) => ({ ...n, approved_routes: [] })),
          };
          for (const n of c.nodes as AclNode[]) {
            const got = autoApprove(p.policy, start, n.id, n.announced_routes);
            assert.deepEqual(multiset(got), multiset(e.approved_routes_after_autoapproval[n.name]), n.name);
          }
          break;
        }
        case 'route_approval_matrix': {
          for (const row of e.matrix) {
            const p = parsePolicy(JSON.stringify(row.policy));
            assert.ok(p.ok, `${row.row}: ${p.ok ? '' : p.errors.join('\n')}`);
            if (!p.ok) continue;
            const node = (c.nodes as AclNode[]).find((n) => n.name === row.node)!;
            const got = autoApprove(p.policy, netOf(c), node.id, [row.route]).length === 1;
            assert.equal(got, row.can_approve, `${row.row}: ${row.why}`);
          }
          break;
        }
        case 'ssh': {
          const p = parsePolicy(JSON.stringify(c.policy));
          assert.ok(p.ok);
          if (!p.ok) return;
          const out = compileToJson(p.policy, netOf(c));
          const norm = (rules: Json[]): Json =>
            rules.map((r) => ({ ...r, principals: multiset(r.principals.map((x: Json) => x.nodeIP)) }));
          for (const [node, rules] of Object.entries(e.ssh_rules as Record<string, Json[]>)) {
            assert.deepEqual(norm(out.ssh_policy[node]!.rules), norm(rules), `ssh_rules[${node}]`);
          }
          break;
        }
        case 'policy_tests': {
          const r = checkPolicy(JSON.stringify(c.policy, null, 2), netOf(c));
          assert.equal(r.valid, e.valid, r.errors.join('\n'));
          if (e.error_contains) errorsContain(r.errors, e.error_contains);
          break;
        }
        case 'ha_primary': {
          const nodes = new Map<string, AclNode & { healthy?: boolean }>(
            (c.nodes as AclNode[]).map((n) => [n.name, { ...n }]),
          );
          const elector = new PrimaryElector();
          const nameOf = (id: number): string => [...nodes.values()].find((n) => n.id === id)!.name;
          for (const step of e.steps) {
            const ev: string = step.event;
            for (const part of ev.split(',').map((s) => s.trim())) {
              let m: RegExpMatchArray | null;
              if ((m = part.match(/^(\w+) (online|offline)$/))) nodes.get(m[1]!)!.online = m[2] === 'online';
              else if ((m = part.match(/^(\w+) marked unhealthy/))) nodes.get(m[1]!)!.healthy = false;
              else if ((m = part.match(/^(\w+) healthy again/))) nodes.get(m[1]!)!.healthy = true;
              else if ((m = part.match(/^set approved routes of (\w+) to \[(.*)\]$/))) {
                nodes.get(m[1]!)!.approved_routes = m[2] ? m[2].split(/\s*,\s*/) : [];
              } else assert.equal(part, 'initial', `unknown event ${part}`);
            }
            const got = elector.update(nodes.values());
            const gotNamed: Record<string, string> = {};
            for (const [p, id] of got) gotNamed[p] = nameOf(id);
            assert.deepEqual(gotNamed, step.primary, ev);
          }
          break;
        }
        case 'approve_routes_api': {
          for (const step of e.steps) {
            const r = setApprovedRoutes(step.request_routes);
            if (step.error) {
              assert.equal(r.ok, false);
              if (!r.ok) assert.ok(r.error.includes('parsing route'), r.error);
              continue;
            }
            assert.ok(r.ok);
            if (!r.ok) continue;
            assert.deepEqual(r.routes, step.approved_routes);
            if ('is_exit_node' in step) assert.equal(r.isExitNode, step.is_exit_node);
            if (step.serving_subnet_routes) {
              const ann = new Set<string>(c.nodes[0].announced_routes);
              assert.deepEqual(r.routes.filter((x) => ann.has(x)), step.serving_subnet_routes);
            }
          }
          break;
        }
        default:
          assert.fail(`unhandled case kind ${c.kind}`);
      }
    });
  }
});
