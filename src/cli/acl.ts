// `larktun acl check|compile`: offline policy validation and compilation.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { Command } from 'commander';
import { type AclNetwork, checkPolicy, compileToJson } from '../acl/index.js';
import { fail, printJson } from './util.js';

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    return fail(`cannot read ${what} ${path}: ${(err as Error).message}`);
  }
}

function readNetwork(path: string): AclNetwork {
  let v: unknown;
  try {
    v = JSON.parse(readText(path, 'network file'));
  } catch (err) {
    return fail(`${path}: not valid JSON: ${(err as Error).message}`);
  }
  const o = v as Partial<AclNetwork> | null;
  if (!o || typeof o !== 'object' || !Array.isArray(o.users) || !Array.isArray(o.nodes)) {
    return fail(`${path}: expected an object with "users" and "nodes" arrays (and optionally "pool")`);
  }
  if (o.pool !== undefined && !Array.isArray(o.pool)) return fail(`${path}: "pool" must be an array of prefixes`);
  for (const n of o.nodes) {
    n.tags ??= [];
    n.announced_routes ??= [];
    n.approved_routes ??= [];
    n.online ??= true;
    n.ipv4 ??= null;
    n.ipv6 ??= null;
    n.user ??= null;
  }
  return { users: o.users, nodes: o.nodes, ...(o.pool ? { pool: o.pool } : {}) };
}

export function registerAcl(program: Command): void {
  const acl = program.command('acl').description('policy tools (offline)');

  acl
    .command('check')
    .description('validate a HuJSON policy and run its tests')
    .argument('<policy>', 'policy file (HuJSON)')
    .option('--network <file>', 'tenant users and nodes (JSON) to run the policy tests against')
    .action((policyPath: string, opts: { network?: string }) => {
      const text = readText(policyPath, 'policy');
      const net = opts.network ? readNetwork(opts.network) : undefined;
      const r = checkPolicy(text, net, basename(policyPath));
      if (!r.valid) fail(r.errors.join('\n'));
      if (!net && r.policy && (r.policy.tests.length > 0 || r.policy.sshTests.length > 0)) {
        process.stderr.write('note: tests not run (no --network given)\n');
      }
      process.stdout.write('policy ok\n');
    });

  acl
    .command('compile')
    .description('compile a policy for a network: packet filters, peers, routes, SSH policy')
    .argument('<policy>', 'policy file (HuJSON)')
    .requiredOption('--network <file>', 'tenant users and nodes (JSON)')
    .action((policyPath: string, opts: { network: string }) => {
      const text = readText(policyPath, 'policy');
      const net = readNetwork(opts.network);
      const r = checkPolicy(text, net, basename(policyPath));
      if (!r.valid || !r.policy) {
        printJson({ valid: false, errors: r.errors });
        process.exitCode = 1;
        return;
      }
      printJson(compileToJson(r.policy, net));
    });
}
