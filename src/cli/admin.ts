// `larktun admin …`: the Admin API from the command line. Tables for people,
// --json for scripts. Server and key from --server/--api-key or
// LARKTUN_SERVER/LARKTUN_API_KEY; the tenant from --tenant or LARKTUN_TENANT.
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { verifyChain, type ChainEntry } from '../control/index.js';
import { fail, printJson } from './util.js';

interface GlobalOpts {
  server?: string;
  apiKey?: string;
  tenant?: string;
  json?: boolean;
}

type JsonObject = Record<string, unknown>;

class AdminClient {
  constructor(
    readonly server: string,
    readonly key: string | null,
  ) {}

  async call(method: string, path: string, body?: unknown): Promise<JsonObject> {
    const headers: Record<string, string> = {};
    if (this.key) headers['authorization'] = `Bearer ${this.key}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(`${this.server.replace(/\/+$/, '')}${path}`, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    } catch (err) {
      const cause = (err as { cause?: { message?: string } }).cause?.message;
      fail(`cannot reach the server at ${this.server}: ${cause ?? (err as Error).message}`);
    }
    const text = await res.text();
    let parsed: unknown = null;
    try {
      parsed = text ? JSON.parse(text) : {};
    } catch {
      fail(`the server answered ${res.status} with non-JSON: ${text.slice(0, 200)}`);
    }
    if (!res.ok) {
      const e = (parsed as { error?: { code?: string; message?: string; details?: unknown } } | null)?.error;
      const lines = [`error (${res.status} ${e?.code ?? 'unknown'}): ${e?.message ?? text}`];
      const d = e?.details as { errors?: unknown[] } | unknown[] | null | undefined;
      const list = Array.isArray(d) ? d : Array.isArray((d as { errors?: unknown[] } | null)?.errors) ? (d as { errors: unknown[] }).errors : [];
      for (const x of list) lines.push(`  ${typeof x === 'string' ? x : JSON.stringify(x)}`);
      fail(lines.join('\n'));
    }
    return (parsed ?? {}) as JsonObject;
  }
}

function globals(cmd: Command): GlobalOpts {
  return cmd.optsWithGlobals<GlobalOpts>();
}

function client(cmd: Command): AdminClient {
  const o = globals(cmd);
  const server = o.server ?? process.env['LARKTUN_SERVER'] ?? 'http://127.0.0.1:8080';
  const key = o.apiKey ?? process.env['LARKTUN_API_KEY'] ?? null;
  if (!key) fail('no API key: pass --api-key or set LARKTUN_API_KEY (the operator key is in DATA/operator.key)');
  return new AdminClient(server, key);
}

function tenantOf(cmd: Command): string {
  const t = globals(cmd).tenant ?? process.env['LARKTUN_TENANT'];
  if (!t) fail('which tenant? pass --tenant NAME or set LARKTUN_TENANT');
  return encodeURIComponent(t);
}

const cell = (v: unknown): string => {
  if (v === null || v === undefined) return '-';
  if (Array.isArray(v)) return v.length ? v.map(String).join(',') : '-';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
};

export function formatTable(rows: JsonObject[], cols: string[]): string {
  const data = rows.map((r) => cols.map((c) => cell(r[c])));
  const width = cols.map((c, i) => Math.max(c.length, ...data.map((d) => (d[i] as string).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(width[i] as number)).join('  ').trimEnd();
  return [line(cols.map((c) => c.toUpperCase())), ...data.map(line)].join('\n') + '\n';
}

function output(cmd: Command, value: JsonObject, table?: { rows: JsonObject[]; cols: string[] } | string): void {
  if (globals(cmd).json || table === undefined) {
    printJson(value);
    return;
  }
  process.stdout.write(typeof table === 'string' ? `${table}\n` : formatTable(table.rows, table.cols));
}

const list = (v: JsonObject, k: string): JsonObject[] => (Array.isArray(v[k]) ? (v[k] as JsonObject[]) : []);
const csv = (s: string | undefined): string[] => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : []);
const num = (s: string, what: string): number => {
  if (!/^[0-9]+$/.test(s)) fail(`${what} must be a number, got "${s}"`);
  return Number(s);
};

const strs = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
const EXIT = new Set(['0.0.0.0/0', '::/0']);

/**
 * One row per (node, prefix) from the Admin API's node objects: the prefix's
 * state (approved, or only announced), whether the node is its primary
 * (exit routes have none: "-"), and the node's health (online/offline).
 */
export function routeRows(nodes: JsonObject[]): JsonObject[] {
  const rows: JsonObject[] = [];
  for (const n of nodes) {
    const announced = strs(n['announced_routes']);
    const approved = new Set(strs(n['approved_routes']));
    const primary = new Set(strs(n['primary_routes']));
    const prefixes = [...new Set([...announced, ...approved])].sort();
    for (const prefix of prefixes) {
      rows.push({
        node: n['name'],
        node_id: n['id'],
        prefix,
        state: approved.has(prefix) ? 'approved' : 'announced',
        primary: EXIT.has(prefix) ? '-' : primary.has(prefix) ? 'yes' : 'no',
        health: n['online'] === true ? 'online' : 'offline',
      });
    }
  }
  return rows;
}

export function registerAdmin(program: Command): void {
  const admin = program
    .command('admin')
    .description('manage tenants, keys, users, nodes, routes, policy, audit and relays through the Admin API')
    .option('--server <url>', 'control server URL (env LARKTUN_SERVER, default http://127.0.0.1:8080)')
    .option('--api-key <key>', 'API key or operator key (env LARKTUN_API_KEY)')
    .option('--tenant <name>', 'tenant (env LARKTUN_TENANT)')
    .option('--json', 'print JSON instead of tables');

  // tenants
  const tenants = admin.command('tenants').description('tenants (operator key)');
  const TCOLS = ['name', 'pool4', 'pool6', 'dns_base', 'max_nodes', 'created_at'];
  tenants.command('list').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('GET', '/api/v1/tenants');
    output(cmd, r, { rows: list(r, 'tenants'), cols: TCOLS });
  });
  tenants
    .command('create <name>')
    .option('--pool4 <prefix>', 'IPv4 pool (default 100.64.0.0/10)')
    .option('--pool6 <prefix>', 'IPv6 pool, or "none"')
    .option('--dns-base <domain>', 'DNS base name')
    .option('--max-nodes <n>', 'node limit')
    .action(async (name: string, o: { pool4?: string; pool6?: string; dnsBase?: string; maxNodes?: string }, cmd: Command) => {
      const body: JsonObject = { name };
      if (o.pool4) body['pool4'] = o.pool4;
      if (o.pool6) body['pool6'] = o.pool6 === 'none' ? null : o.pool6;
      if (o.dnsBase) body['dns_base'] = o.dnsBase;
      if (o.maxNodes) body['max_nodes'] = num(o.maxNodes, '--max-nodes');
      const r = await client(cmd).call('POST', '/api/v1/tenants', body);
      output(cmd, r, { rows: [r], cols: TCOLS });
    });
  tenants.command('get <name>').action(async (name: string, _o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/tenants/${encodeURIComponent(name)}`);
    output(cmd, r, { rows: [r], cols: TCOLS });
  });
  tenants
    .command('update <name>')
    .option('--pool4 <prefix>')
    .option('--pool6 <prefix>')
    .option('--dns-base <domain>')
    .option('--max-nodes <n>')
    .action(async (name: string, o: { pool4?: string; pool6?: string; dnsBase?: string; maxNodes?: string }, cmd: Command) => {
      const body: JsonObject = {};
      if (o.pool4) body['pool4'] = o.pool4;
      if (o.pool6) body['pool6'] = o.pool6 === 'none' ? null : o.pool6;
      if (o.dnsBase) body['dns_base'] = o.dnsBase;
      if (o.maxNodes) body['max_nodes'] = num(o.maxNodes, '--max-nodes');
      const r = await client(cmd).call('PATCH', `/api/v1/tenants/${encodeURIComponent(name)}`, body);
      output(cmd, r, { rows: [r], cols: TCOLS });
    });
  tenants.command('delete <name>').action(async (name: string, _o, cmd: Command) => {
    const r = await client(cmd).call('DELETE', `/api/v1/tenants/${encodeURIComponent(name)}`);
    output(cmd, r, `deleted tenant ${name}`);
  });

  // API keys
  const apikeys = admin.command('apikeys').description('tenant API keys');
  const KCOLS = ['id', 'prefix', 'role', 'description', 'expires_at', 'last_used_at'];
  apikeys.command('list').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}/apikeys`);
    output(cmd, r, { rows: list(r, 'apikeys'), cols: KCOLS });
  });
  apikeys
    .command('create')
    .requiredOption('--role <role>', 'admin | operator | auditor')
    .option('--description <text>')
    .option('--expires <iso-time>')
    .action(async (o: { role: string; description?: string; expires?: string }, cmd: Command) => {
      const body: JsonObject = { role: o.role };
      if (o.description) body['description'] = o.description;
      if (o.expires) body['expires_at'] = o.expires;
      const r = await client(cmd).call('POST', `/api/v1/tenants/${tenantOf(cmd)}/apikeys`, body);
      output(cmd, r, `${String(r['key'])}\n(shown once: store it now; role ${String(r['role'])}, id ${String(r['id'])})`);
    });
  apikeys.command('delete <id>').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('DELETE', `/api/v1/tenants/${tenantOf(cmd)}/apikeys/${num(id, 'id')}`);
    output(cmd, r, `revoked API key ${id}`);
  });

  // users
  const users = admin.command('users').description('users of a tenant');
  const UCOLS = ['id', 'name', 'email', 'display_name', 'created_at'];
  users.command('list').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}/users`);
    output(cmd, r, { rows: list(r, 'users'), cols: UCOLS });
  });
  users
    .command('create <name>')
    .option('--email <email>')
    .option('--display-name <name>')
    .action(async (name: string, o: { email?: string; displayName?: string }, cmd: Command) => {
      const body: JsonObject = { name };
      if (o.email) body['email'] = o.email;
      if (o.displayName) body['display_name'] = o.displayName;
      const r = await client(cmd).call('POST', `/api/v1/tenants/${tenantOf(cmd)}/users`, body);
      output(cmd, r, { rows: [r], cols: UCOLS });
    });
  users.command('delete <id>').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('DELETE', `/api/v1/tenants/${tenantOf(cmd)}/users/${num(id, 'id')}`);
    output(cmd, r, `deleted user ${id}`);
  });

  // auth keys
  const authkeys = admin.command('authkeys').description('node auth keys');
  const ACOLS = ['id', 'prefix', 'user', 'tags', 'reusable', 'ephemeral', 'used_count', 'usable', 'expires_at'];
  authkeys.command('list').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}/authkeys`);
    output(cmd, r, { rows: list(r, 'authkeys'), cols: ACOLS });
  });
  authkeys
    .command('create')
    .option('--user <name>', 'the user the nodes belong to')
    .option('--tags <tag,...>', 'tags for the nodes (defined in tagOwners)')
    .option('--reusable', 'usable for many nodes')
    .option('--ephemeral', 'nodes are removed when they go offline')
    .option('--expires <iso-time>')
    .option('--description <text>')
    .action(async (o: { user?: string; tags?: string; reusable?: boolean; ephemeral?: boolean; expires?: string; description?: string }, cmd: Command) => {
      const body: JsonObject = {};
      if (o.user) body['user'] = o.user;
      if (o.tags) body['tags'] = csv(o.tags);
      if (o.reusable) body['reusable'] = true;
      if (o.ephemeral) body['ephemeral'] = true;
      if (o.expires) body['expires_at'] = o.expires;
      if (o.description) body['description'] = o.description;
      const r = await client(cmd).call('POST', `/api/v1/tenants/${tenantOf(cmd)}/authkeys`, body);
      output(cmd, r, `${String(r['key'])}\n(shown once: store it now; id ${String(r['id'])})`);
    });
  authkeys.command('delete <id>').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('DELETE', `/api/v1/tenants/${tenantOf(cmd)}/authkeys/${num(id, 'id')}`);
    output(cmd, r, `revoked auth key ${id}`);
  });

  // nodes
  const nodes = admin.command('nodes').description('nodes of a tenant');
  const NCOLS = ['id', 'name', 'ipv4', 'ipv6', 'user', 'tags', 'online', 'last_seen', 'relay_rtt_ms', 'approved_routes', 'primary_routes'];
  nodes.command('list').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}/nodes`);
    output(cmd, r, { rows: list(r, 'nodes'), cols: NCOLS });
  });
  nodes.command('get <id>').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}/nodes/${num(id, 'id')}`);
    output(cmd, r, { rows: [r], cols: [...NCOLS, 'announced_routes', 'expired'] });
  });
  nodes.command('rename <id> <name>').action(async (id: string, name: string, _o, cmd: Command) => {
    const r = await client(cmd).call('PATCH', `/api/v1/tenants/${tenantOf(cmd)}/nodes/${num(id, 'id')}`, { name });
    output(cmd, r, { rows: [r], cols: NCOLS });
  });
  nodes.command('tag <id> [tags]').description('set the node\'s tags (comma separated; empty clears)').action(async (id: string, tags: string | undefined, _o, cmd: Command) => {
    const r = await client(cmd).call('PUT', `/api/v1/tenants/${tenantOf(cmd)}/nodes/${num(id, 'id')}/tags`, { tags: csv(tags) });
    output(cmd, r, { rows: [r], cols: NCOLS });
  });
  nodes.command('expire <id>').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('POST', `/api/v1/tenants/${tenantOf(cmd)}/nodes/${num(id, 'id')}/expire`);
    output(cmd, r, `expired node ${id}`);
  });
  nodes.command('delete <id>').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('DELETE', `/api/v1/tenants/${tenantOf(cmd)}/nodes/${num(id, 'id')}`);
    output(cmd, r, `deleted node ${id}`);
  });

  // routes
  const routes = admin.command('routes').description('subnet and exit routes');
  routes.command('list [node]').description('every route of the tenant: node, prefix, state (announced/approved), primary, health (or one node\'s routes)').action(async (node: string | undefined, _o, cmd: Command) => {
    const c = client(cmd);
    const t = tenantOf(cmd);
    if (node) {
      const r = await c.call('GET', `/api/v1/tenants/${t}/nodes/${num(node, 'node')}/routes`);
      output(cmd, r, { rows: [r], cols: ['node', 'announced', 'approved', 'primary'] });
      return;
    }
    const r = await c.call('GET', `/api/v1/tenants/${t}/nodes`);
    const rows = routeRows(list(r, 'nodes'));
    output(cmd, { routes: rows }, { rows, cols: ['node', 'node_id', 'prefix', 'state', 'primary', 'health'] });
  });
  routes
    .command('approve <node> [routes...]')
    .description('replace the approved routes of a node (none clears; 0.0.0.0/0 or ::/0 approves both)')
    .action(async (node: string, list: string[], _o, cmd: Command) => {
      const r = await client(cmd).call('POST', `/api/v1/tenants/${tenantOf(cmd)}/nodes/${num(node, 'node')}/routes`, { approved: list.flatMap((x) => csv(x)) });
      output(cmd, r, { rows: [r], cols: ['node', 'announced', 'approved', 'primary'] });
    });

  // relays
  const relays = admin.command('relays').description('relays (operator key; a tenant key sees its dedicated relays)');
  const RCOLS = ['id', 'name', 'endpoints', 'tenant', 'relay_link_id', 'live', 'last_report'];
  relays.command('list').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('GET', '/api/v1/relays');
    output(cmd, r, { rows: list(r, 'relays'), cols: RCOLS });
  });
  relays
    .command('create <name> <endpoints...>')
    .description('register a relay with its public UDP endpoint(s) host:port; the relay token is shown once')
    .option('--for-tenant <name>', 'dedicate the relay to one tenant (default: shared by every tenant)')
    .action(async (name: string, endpoints: string[], o: { forTenant?: string }, cmd: Command) => {
      const body: JsonObject = { name, endpoints: endpoints.flatMap((x) => csv(x)) };
      if (o.forTenant) body['tenant'] = o.forTenant;
      const r = await client(cmd).call('POST', '/api/v1/relays', body);
      output(cmd, r, `${String(r['token'])}\n(relay token, shown once: give it to the relay; relay ${String(r['name'])}, id ${String(r['id'])}, ${r['tenant'] ? `tenant ${String(r['tenant'])}` : 'shared'})`);
    });
  relays.command('get <id>').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/relays/${num(id, 'id')}`);
    output(cmd, r, { rows: [r], cols: RCOLS });
  });
  relays.command('delete <id>').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('DELETE', `/api/v1/relays/${num(id, 'id')}`);
    output(cmd, r, `deleted relay ${id}`);
  });
  relays.command('rotate <id>').description('new keys for every link of the relay (old keys stay valid for the grace period)').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('POST', `/api/v1/relays/${num(id, 'id')}/rotate`);
    output(cmd, r, `rotated ${String(r['rotated'])} link key(s); old keys valid for ${String(r['grace_seconds'])} s`);
  });
  nodes.command('links <id>').description('the node\'s relay links (keys are never shown)').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}/nodes/${num(id, 'id')}/links`);
    output(cmd, r, { rows: list(r, 'links'), cols: ['relay', 'relay_name', 'link_id', 'relay_link_id', 'rotated_at'] });
  });
  nodes.command('rotate-links <id>').description('new keys for the node\'s relay links').action(async (id: string, _o, cmd: Command) => {
    const r = await client(cmd).call('POST', `/api/v1/tenants/${tenantOf(cmd)}/nodes/${num(id, 'id')}/links/rotate`);
    output(cmd, r, `rotated ${String(r['rotated'])} link key(s)`);
  });

  // policy
  const acl = admin.command('acl').description('the tenant policy (HuJSON)');
  acl.command('get').option('--version <n>').action(async (o: { version?: string }, cmd: Command) => {
    const path = o.version ? `/policy/versions/${num(o.version, '--version')}` : '/policy';
    const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}${path}`);
    output(cmd, r, String(r['policy']).replace(/\n$/, ''));
  });
  const readPolicy = (file: string): string => {
    try {
      return readFileSync(file === '-' ? 0 : file, 'utf8');
    } catch (err) {
      fail(`cannot read ${file}: ${(err as Error).message}`);
    }
  };
  acl.command('set <file>').description('replace the policy (validated, tests run; unchanged on error)').action(async (file: string, _o, cmd: Command) => {
    const r = await client(cmd).call('PUT', `/api/v1/tenants/${tenantOf(cmd)}/policy`, { policy: readPolicy(file) });
    output(cmd, r, `policy version ${String(r['version'])} is live`);
  });
  acl.command('check <file>').action(async (file: string, _o, cmd: Command) => {
    const r = await client(cmd).call('POST', `/api/v1/tenants/${tenantOf(cmd)}/policy/check`, { policy: readPolicy(file) });
    const errors = Array.isArray(r['errors']) ? (r['errors'] as string[]) : [];
    output(cmd, r, r['valid'] ? 'policy is valid' : errors.join('\n'));
    if (!r['valid']) process.exitCode = 1;
  });
  acl.command('versions').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}/policy/versions`);
    output(cmd, r, { rows: list(r, 'versions'), cols: ['version', 'created_at', 'created_by'] });
  });

  // audit
  const audit = admin.command('audit').description('the tenant audit trail');
  audit
    .command('list')
    .option('--since <iso-time>')
    .option('--limit <n>', 'at most n entries', '100')
    .option('--action <action>')
    .action(async (o: { since?: string; limit: string; action?: string }, cmd: Command) => {
      const q = new URLSearchParams({ limit: String(num(o.limit, '--limit')) });
      if (o.since) q.set('since', o.since);
      if (o.action) q.set('action', o.action);
      const r = await client(cmd).call('GET', `/api/v1/tenants/${tenantOf(cmd)}/audit?${q.toString()}`);
      const rows = list(r, 'entries').map((e) => ({ ...e, change: `${cell(e['before'])} -> ${cell(e['after'])}` }));
      output(cmd, r, { rows, cols: ['seq', 'ts', 'actor', 'action', 'object_type', 'object_id', 'change'] });
    });
  audit
    .command('verify')
    .description('fetch the whole chain and recompute every hash locally')
    .action(async (_o, cmd: Command) => {
      const c = client(cmd);
      const t = tenantOf(cmd);
      const entries: ChainEntry[] = [];
      let tenantId = 0;
      for (let after = 0; ; ) {
        const r = await c.call('GET', `/api/v1/tenants/${t}/audit?limit=10000&after=${after}`);
        const page = list(r, 'entries');
        for (const e of page) {
          entries.push({
            tenant_id: tenantId,
            seq: Number(e['seq']),
            ts: String(e['ts']),
            actor: String(e['actor']),
            action: String(e['action']),
            object_type: String(e['object_type']),
            object_id: String(e['object_id']),
            before: (e['before_json'] as string | null) ?? null,
            after: (e['after_json'] as string | null) ?? null,
            prev_hash: String(e['prev_hash']),
            hash: String(e['hash']),
          });
        }
        if (page.length < 10000) break;
        after = Number(page[page.length - 1]?.['seq']);
      }
      // The tenant id is part of each hash; the server's verify answers with it implicitly,
      // so the local check tries the id the server reports.
      const server = await c.call('GET', `/api/v1/tenants/${t}/audit/verify`);
      tenantId = Number(server['tenant_id'] ?? 0);
      for (const e of entries) e.tenant_id = tenantId;
      const local = verifyChain(entries);
      const result = { ...local, server_ok: server['ok'] === true };
      output(cmd, result as unknown as JsonObject, local.ok && result.server_ok
        ? `audit chain intact: ${local.entries} entries verified locally and by the server`
        : `audit chain BROKEN at entry ${String(local.broken_at ?? server['broken_at'])}: ${String(local.reason ?? server['reason'])}`);
      if (!local.ok || !result.server_ok) process.exitCode = 1;
    });
}
