// Types shared by the policy parser, the compiler and their callers.
import type { Prefix } from '../net/addr.js';
import type { IPSet } from '../net/ipset.js';
import type { Pos } from './hujson.js';

export type { Pos } from './hujson.js';

// ---- tenant inputs -------------------------------------------------------

export interface AclUser {
  id: number;
  name: string;
  email?: string | null;
}

export interface AclNode {
  id: number;
  name: string;
  /** Owner's email (or name) for user-owned nodes; null for tagged nodes. */
  user: string | null;
  tags: string[];
  ipv4: string | null;
  ipv6: string | null;
  announced_routes: string[];
  approved_routes: string[];
  online: boolean;
  /** Health as seen by the HA prober; absent = healthy. */
  healthy?: boolean;
  /** Informational only: who registered a tagged node. */
  created_by?: string | null;
}

export interface AclNetwork {
  users: AclUser[];
  nodes: AclNode[];
  /** The tenant's address pool; replaces the default 100.64.0.0/10 (minus 100.115.92.0/23) + fd7a:115c:a1e0::/48. */
  pool?: string[];
}

// ---- tailcfg-shaped outputs ---------------------------------------------

export interface PortRange {
  First: number;
  Last: number;
}

export interface NetPortRange {
  IP: string;
  Ports: PortRange;
}

export interface CapGrant {
  Dsts: string[];
  /** Capability → values; null for the companion capabilities (drive-sharer, relay-target), as Tailscale sends them. */
  CapMap: Record<string, unknown[] | null>;
}

export interface FilterRule {
  SrcIPs: string[];
  DstPorts?: NetPortRange[];
  IPProto?: number[];
  CapGrant?: CapGrant[];
}

export interface SSHPrincipal {
  nodeIP: string;
}

export interface SSHAction {
  accept?: boolean;
  reject?: boolean;
  message?: string;
  holdAndDelegate?: string;
  sessionDuration?: number;
  allowAgentForwarding?: boolean;
  allowLocalPortForwarding?: boolean;
  allowRemotePortForwarding?: boolean;
}

export interface SSHRule {
  principals: SSHPrincipal[];
  sshUsers: Record<string, string>;
  action: SSHAction;
  acceptEnv?: string[];
}

export interface SSHPolicy {
  rules: SSHRule[];
}

// ---- parsed policy -------------------------------------------------------

export interface Str {
  readonly v: string;
  readonly pos: Pos;
}

export type AutogroupName = 'internet' | 'member' | 'tagged' | 'self' | 'nonroot' | 'danger-all';

export type Alias =
  | { kind: 'wildcard' }
  | { kind: 'user'; name: string }
  | { kind: 'group'; name: string }
  | { kind: 'tag'; name: string }
  | { kind: 'host'; name: string }
  | { kind: 'prefix'; prefix: Prefix; text: string }
  | { kind: 'autogroup'; name: AutogroupName };

export interface AliasRef {
  readonly text: string;
  readonly alias: Alias;
  readonly pos: Pos;
}

export interface DstRef extends AliasRef {
  readonly ports: PortRange[];
}

/** One protocol/ports element of a grant's `ip` (or an ACL's proto+ports). */
export interface IpSpec {
  /** undefined = every protocol (IPProto omitted). */
  readonly proto?: number[];
  readonly ports: PortRange[];
}

export interface AclRule {
  readonly pos: Pos;
  readonly proto?: number[];
  readonly src: AliasRef[];
  readonly dst: DstRef[];
}

export interface GrantRule {
  readonly pos: Pos;
  readonly src: AliasRef[];
  readonly dst: AliasRef[];
  readonly ip: IpSpec[];
  readonly app: Record<string, unknown[]> | null;
  readonly via: string[];
}

export interface SshPolicyRule {
  readonly pos: Pos;
  readonly action: 'accept' | 'check';
  readonly src: AliasRef[];
  readonly dst: AliasRef[];
  readonly users: string[];
  /** Seconds; only for check. */
  readonly checkPeriod?: number;
  readonly acceptEnv?: string[];
}

export interface PolicyTest {
  readonly pos: Pos;
  readonly src: string;
  readonly proto?: string;
  readonly accept: Str[];
  readonly deny: Str[];
}

export interface SshPolicyTest {
  readonly pos: Pos;
  readonly src: string;
  readonly dst: string[];
  readonly accept: string[];
  readonly deny: string[];
  readonly check: string[];
}

export interface NodeAttrRule {
  readonly pos: Pos;
  readonly target: AliasRef[];
  readonly attr: string[];
  readonly app: Record<string, unknown[]> | null;
}

export interface AutoApproverRoute {
  readonly prefix: Prefix;
  readonly text: string;
  readonly approvers: AliasRef[];
}

export interface Policy {
  readonly file: string;
  /** group name → member user tokens. */
  readonly groups: ReadonlyMap<string, string[]>;
  readonly hosts: ReadonlyMap<string, { set: IPSet; text: string }>;
  /** tag → owners (raw tokens). */
  readonly tagOwners: ReadonlyMap<string, string[]>;
  readonly acls: readonly AclRule[];
  readonly grants: readonly GrantRule[];
  readonly hasAcls: boolean;
  readonly hasGrants: boolean;
  readonly autoApprovers: { routes: AutoApproverRoute[]; exitNode: AliasRef[] };
  readonly ssh: readonly SshPolicyRule[];
  readonly tests: readonly PolicyTest[];
  readonly sshTests: readonly SshPolicyTest[];
  readonly nodeAttrs: readonly NodeAttrRule[];
}
