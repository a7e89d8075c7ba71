// Messages between the server's event loop and its compile workers
// (compile/worker.ts). Everything here crosses a thread boundary by structured
// clone: plain data, typed arrays and Maps only — no class instances.
import type { AclNetwork, Reach, TestResult } from '../../acl/index.js';

/** Size caps checked by the worker after parsing (the byte cap is checked before). */
export interface SizeBudget {
  /** Most `hosts` entries. */
  maxHosts: number;
  /** Most ACL + grant + SSH rules. */
  maxRules: number;
  /** Most alias entries over every rule's sources and destinations (groups expanded). */
  maxEntries: number;
}

/** Brings a tenant's compiled state up to this input; answers views for `connected` nodes that changed and for `missing`. */
export interface SyncJob {
  kind: 'sync';
  tenant: number;
  policy: string;
  net: AclNetwork;
  primaries: [string, number][];
  /** Nodes whose views the event loop keeps (streaming or recently asked for). */
  connected: number[];
  /** Nodes among those whose view the event loop does not hold: always answered. */
  missing: number[];
}

/** Validates a candidate policy and compiles it completely (the cost a PUT would cause), within the budget. */
export interface CheckJob {
  kind: 'check';
  tenant: number;
  policy: string;
  net: AclNetwork;
  primaries: [string, number][];
  size: SizeBudget;
  /** Keep the compiled state as the tenant's candidate (a PUT about to store this text). */
  keep: boolean;
}

/** The reach of some nodes under a candidate policy (POST …/policy/preview), within the budget. */
export interface PreviewJob {
  kind: 'preview';
  tenant: number;
  policy: string;
  net: AclNetwork;
  primaries: [string, number][];
  size: SizeBudget;
  /** Node ids of `net` whose reach is asked for. */
  subjects: number[];
}

/** A whole-tenant compile for the relays' view: primaries, the global filter and exit choices. */
export interface RelayJob {
  kind: 'relay';
  tenant: number;
  policy: string;
  net: AclNetwork;
  primaries: [string, number][];
  /** node id → its use_exit_node wish (a node name or id). */
  wishes: [number, string][];
}

/** The small parts of a policy the event loop evaluates itself (tag owners, auto-approvers). */
export interface FactsJob {
  kind: 'facts';
  tenant: number;
  policy: string;
}

export type Job = SyncJob | CheckJob | RelayJob | FactsJob | PreviewJob;

/** One node's compiled view in transit: its peers are `bases[base]` minus the id at `cut` (base length: none). */
export interface WireView {
  id: number;
  base: number;
  cut: number;
  routes: Map<number, string[]>;
  filter: unknown;
  ssh: unknown;
  primary: string[];
}

export interface WireViews {
  bases: (Int32Array | Float64Array)[];
  views: WireView[];
}

export interface SyncResult {
  kind: 'sync';
  /** The state was (re)built from scratch rather than updated. */
  full: boolean;
  /** Every node whose compiled result changed (ascending). */
  changed: Int32Array;
  out: WireViews;
  primaries: [string, number][];
  /** The facts text of this policy when it is large (see FactsResult), else null. */
  facts: string | null;
  ms: number;
}

export interface CheckResult {
  kind: 'check';
  valid: boolean;
  errors: string[];
  /** A size cap the policy exceeds (then valid is false and errors says so). */
  over: { limit: keyof SizeBudget; value: number; max: number } | null;
  /** Every expectation of the policy's `tests` block with its outcome. */
  tests: TestResult[];
  facts: string | null;
  ms: number;
}

export interface PreviewResult {
  kind: 'preview';
  valid: boolean;
  errors: string[];
  over: { limit: keyof SizeBudget; value: number; max: number } | null;
  reach: [number, Reach][];
  ms: number;
}

export interface RelayResult {
  kind: 'relay';
  ok: boolean;
  primaries: [string, number][];
  globalFilter: unknown;
  exitFor: [number, number][];
  ms: number;
}

export interface FactsResult {
  kind: 'facts';
  /** HuJSON of only groups, tagOwners and autoApprovers (null: the policy does not parse). */
  facts: string | null;
  ms: number;
}

export type JobResult = SyncResult | CheckResult | RelayResult | FactsResult | PreviewResult;

/** Main → worker. `drop`: forget a tenant's state (it moved to another worker). */
export type ToWorker = { id: number; job: Job } | { id: 0; drop: number };

/** Worker → main. `ready`: the worker has loaded and takes jobs (budgets start only then). */
export type FromWorker = { id: number; ok: true; result: JobResult } | { id: number; ok: false; error: string } | { id: 0; ready: true };
