// The managed daemon's control socket. Same socket and framing as standalone
// mode (one request line per connection, mode 0600), with JSON requests for the
// client verbs: {"op":"up"|"login-wait"|"set"|"down"|"logout"|"status"|"exit-nodes"|"ping", ...}
// answered by one JSON line {"ok":true,"result":…} or {"ok":false,"error":{"code","message"}}.
// The plain lines `status` and `status --json` work as in standalone mode.
import type net from 'node:net';
import { listenControlSocket } from './control.js';
import { ClientError, managedStatusText, type ManagedNode } from './managed.js';
import type { PrefFlags } from './prefs.js';

export interface ClientRequest {
  op: string;
  flags?: PrefFlags;
  authkey?: string | null;
  /** up without an auth key: log in interactively to this tenant (the answer carries the URL to approve at). */
  tenant?: string | null;
  reset?: boolean;
  peer?: string;
  count?: number;
  timeout_ms?: number;
  interval_ms?: number;
  /** ping: 4 or 6 forces an address family; null/absent: the target decides (IPv4 first). */
  family?: 4 | 6 | null;
}

const MAX_LINE = 64 * 1024;

async function handle(node: ManagedNode, line: string): Promise<string> {
  const t = line.trim();
  if (t === 'status' || t === 'status --json') await node.refreshStatus();
  if (t === 'status') return managedStatusText(node.status());
  if (t === 'status --json') return `${JSON.stringify(node.status())}\n`;
  let req: ClientRequest;
  try {
    req = JSON.parse(t) as ClientRequest;
  } catch {
    return `error: this daemon runs in managed mode: use larktun up/set/down/logout/status/ping (standalone policy commands are not available)\n`;
  }
  try {
    let result: unknown;
    switch (req.op) {
      case 'up':
        result = await node.up(req.flags ?? {}, req.authkey ?? null, req.reset === true, typeof req.tenant === 'string' ? { tenant: req.tenant } : null);
        break;
      case 'login-wait':
        result = await node.loginWait(Math.min(Math.max(req.timeout_ms ?? 600_000, 1000), 3600_000));
        break;
      case 'set':
        result = await node.set(req.flags ?? {});
        break;
      case 'down':
        result = await node.down();
        break;
      case 'logout':
        result = await node.logout();
        break;
      case 'status':
        await node.refreshStatus();
        result = node.status();
        break;
      case 'exit-nodes':
        result = node.exitNodes();
        break;
      case 'ping':
        result = await node.ping(String(req.peer ?? ''), Math.min(Math.max(req.count ?? 3, 1), 1000), req.timeout_ms ?? 2000, req.interval_ms ?? 200, req.family === 4 || req.family === 6 ? req.family : null);
        break;
      default:
        throw new ClientError('bad_request', `unknown op "${req.op}"`);
    }
    return `${JSON.stringify({ ok: true, result })}\n`;
  } catch (err) {
    const e = err as Error;
    const code = err instanceof ClientError ? err.code : 'internal';
    return `${JSON.stringify({ ok: false, error: { code, message: e.message } })}\n`;
  }
}

export function startManagedControl(sockPath: string, node: ManagedNode): Promise<net.Server> {
  return listenControlSocket(sockPath, MAX_LINE, (line) => handle(node, line));
}
