// Helpers for tests that build small networks in Linux network namespaces.
// Every address used lives inside namespaces these tests create.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { controlRequest } from '../../src/daemon/control.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN_LARKTUN = path.join(ROOT, 'bin', 'larktun');
export const BIN_LARKTUND = path.join(ROOT, 'bin', 'larktund');

/** Why namespace tests cannot run here, or null when they can. */
export function netnsSkipReason(tools: string[] = []): string | null {
  if (process.platform !== 'linux') return 'needs Linux network namespaces';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (network namespaces, TUN)';
  if (!existsSync('/dev/net/tun')) return 'needs /dev/net/tun';
  for (const t of ['ip', ...tools]) {
    if (spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) return `needs the ${t} command`;
  }
  const probe = `lkprobe${process.pid}`;
  if (spawnSync('ip', ['netns', 'add', probe]).status !== 0) return 'cannot create network namespaces here';
  spawnSync('ip', ['netns', 'del', probe]);
  if (!existsSync(path.join(ROOT, 'dist', 'daemon', 'main.js'))) return 'dist/ not built: run npm run build';
  return null;
}

export function sh(cmd: string, opts: { allowFail?: boolean; timeoutMs?: number } = {}): { status: number; out: string; err: string } {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8', timeout: opts.timeoutMs ?? 30_000 });
  const res = { status: r.status ?? -1, out: r.stdout ?? '', err: r.stderr ?? '' };
  if (!opts.allowFail && res.status !== 0) {
    throw new Error(`command failed (${res.status}): ${cmd}\n${res.out}${res.err}`);
  }
  return res;
}

export function nsExec(
  ns: string,
  cmd: string,
  opts: { allowFail?: boolean; timeoutMs?: number; env?: Record<string, string> } = {},
): { status: number; out: string; err: string } {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'sh', '-c', cmd], {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 30_000,
    env: { ...process.env, ...(opts.env ?? {}) },
  });
  const res = { status: r.status ?? -1, out: r.stdout ?? '', err: r.stderr ?? '' };
  if (!opts.allowFail && res.status !== 0) {
    throw new Error(`command failed in ${ns} (${res.status}): ${cmd}\n${res.out}${res.err}`);
  }
  return res;
}

export class Lab {
  readonly namespaces: string[] = [];
  readonly procs: ChildProcess[] = [];
  readonly dir = mkdtempSync(path.join(tmpdir(), 'larktun-e2e-'));
  private readonly tag = (process.pid % 10000).toString(36);
  /**
   * Namespace name prefix: `prefix` when given (a test file's own), else
   * LARKTUN_LAB_PREFIX, else "lk", so parallel runs on one machine can tell theirs apart.
   */
  private readonly prefix: string;

  constructor(prefix?: string) {
    this.prefix = prefix ?? process.env.LARKTUN_LAB_PREFIX ?? 'lk';
  }

  name(base: string): string {
    return `${this.prefix}${this.tag}${base}`;
  }

  addNs(base: string): string {
    const ns = this.name(base);
    spawnSync('ip', ['netns', 'del', ns]);
    sh(`ip netns add ${ns}`);
    sh(`ip -n ${ns} link set lo up`);
    this.namespaces.push(ns);
    return ns;
  }

  /** A veth pair between two namespaces with the given addresses (CIDR). */
  link(a: string, aIf: string, aAddr: string, b: string, bIf: string, bAddr: string): void {
    sh(`ip link add ${aIf} netns ${a} type veth peer name ${bIf} netns ${b}`);
    sh(`ip -n ${a} addr add ${aAddr} dev ${aIf} && ip -n ${a} link set ${aIf} up`);
    sh(`ip -n ${b} addr add ${bAddr} dev ${bIf} && ip -n ${b} link set ${bIf} up`);
  }

  writeJson(file: string, value: unknown): string {
    const p = path.join(this.dir, file);
    writeFileSync(p, JSON.stringify(value, null, 2));
    return p;
  }

  /** Starts larktund in `ns`; resolves once its control socket answers. */
  /** `bin`: another build's larktund (benchmarks comparing two builds); default this checkout's. */
  async daemon(ns: string, name: string, config: unknown, extraArgs: string[] = [], extraEnv: Record<string, string> = {}, nodeArgs: string[] = [], bin: string = BIN_LARKTUND): Promise<DaemonHandle> {
    const cfgPath = this.writeJson(`${name}.json`, config);
    const sock = path.join(this.dir, `${name}.sock`);
    const stateDir = path.join(this.dir, `${name}-state`);
    const env = { LARKTUN_SOCK: sock, LARKTUN_STATE_DIR: stateDir, LARKTUN_TUN: 'lark0', ...extraEnv };
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...nodeArgs, bin, '--config', cfgPath, ...extraArgs], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    this.procs.push(child);
    const h = new DaemonHandle(ns, sock, child, () => log, env);
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`larktund ${name} exited ${child.exitCode}:\n${log}`);
      if (existsSync(sock) && h.cli('status --json', true).status === 0) return h;
      await sleep(100);
    }
    throw new Error(`larktund ${name} did not come up:\n${log}`);
  }

  cleanup(): void {
    for (const p of this.procs) {
      if (p.exitCode === null) p.kill('SIGKILL');
    }
    for (const ns of this.namespaces) spawnSync('ip', ['netns', 'del', ns]);
  }
}

export class DaemonHandle {
  constructor(
    readonly ns: string,
    readonly sock: string,
    readonly proc: ChildProcess,
    readonly log: () => string,
    readonly env: Record<string, string>,
  ) {}

  cli(args: string, allowFail = false): { status: number; out: string; err: string } {
    return sh(`LARKTUN_SOCK=${this.sock} ${process.execPath} ${BIN_LARKTUN} ${args}`, { allowFail });
  }

  status(): { peers: { id: number; endpoint: string | null; online: boolean }[]; counters: Record<string, number> } {
    return JSON.parse(this.cli('status --json').out) as ReturnType<DaemonHandle['status']>;
  }

  /** Status over the control socket from this process (no CLI spawn: cheap under load). */
  async statusFast(): Promise<ReturnType<DaemonHandle['status']>> {
    return JSON.parse(await controlRequest(this.sock, 'status --json', 10_000)) as ReturnType<DaemonHandle['status']>;
  }

  async stop(): Promise<number | null> {
    if (this.proc.exitCode !== null) return this.proc.exitCode;
    this.proc.kill('SIGTERM');
    await new Promise<void>((r) => this.proc.once('exit', () => r()));
    return this.proc.exitCode;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `count` pings; returns how many replies came back. */
export function ping(ns: string, dst: string, count = 3, opts: { interval?: number; wait?: number; src?: string } = {}): number {
  const i = opts.interval ?? 0.2;
  const w = opts.wait ?? 1;
  const src = opts.src ? `-I ${opts.src}` : '';
  const r = nsExec(ns, `ping -n -q -c ${count} -i ${i} -W ${w} ${src} ${dst}`, { allowFail: true, timeoutMs: 60_000 });
  const m = /(\d+) (?:packets )?received/.exec(r.out);
  return m ? Number(m[1]) : 0;
}

export function hexKey(byte: number): string {
  return Buffer.alloc(32, byte).toString('hex');
}
