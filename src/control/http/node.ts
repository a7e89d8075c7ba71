// Node coordination API under /node/v1: registration with an auth key, hostinfo
// announcements, and the long-lived map stream (Server-Sent Events). A node's
// token is bound to its tenant at registration; every later request finds the
// tenant from the token alone, so nothing a node sends can move it elsewhere.
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import type { Store } from '../store/repo.js';
import { nowIso } from '../store/repo.js';
import { ApiError, badRequest, unauthorized } from '../errors.js';
import { newSecret, parseSecret, secretMatches } from '../secrets.js';
import { bearer } from './auth.js';
import { randomBytes } from 'node:crypto';
import { NONCE_BYTES, REGISTER_PROOF_LABEL, verifyRegistration } from '../nodekey.js';
import type { AuthKeyRow, NodeRow, TenantRow } from '../store/schema.js';
import type { TenantTx } from '../store/repo.js';
import {
  allocateAddresses, canonicalRoutes, nodeAuditView, runAutoApprove, uniqueNodeName, validateTagSyntax,
} from '../service.js';
import { userOwnsTag } from '../policy-engine.js';
import { CompileFailedError, jsonList, jsonObject, type BuiltMap, type MapHub, type MapStream } from '../netmap.js';
import type { RouteDoc } from './openapi.js';
import { parseHostPort } from '../../net/addr.js';
import type { ControlMetrics } from '../metrics.js';
import { ensureLinks } from '../relays.js';
import type { StreamExpiry } from '../stream-expiry.js';

export interface NodeDeps {
  store: Store;
  hub: MapHub;
  metrics: ControlMetrics;
  /** SSE heartbeat interval (ms, default 1000): a node that hears nothing for 3 intervals reconnects. */
  keepaliveMs?: number;
  /** A stream whose writes stay unread this long is cut (ms, default 3000): the node stopped reading. */
  stallMs?: number;
  /** Streams to end on shutdown. */
  openStreams: Set<() => void>;
  /** True once shutdown began: closing streams then is not the node going offline. */
  shuttingDown?: () => boolean;
  /** Ends a stream when its node expires (stream-expiry.ts). */
  expiry?: StreamExpiry;
  /** Most map streams one node token may hold open on this server (default 4; env LARKTUN_MAX_STREAMS_PER_NODE). */
  maxStreamsPerNode?: number;
}

export const DEFAULT_MAX_STREAMS_PER_NODE = 4;

type S = FastifySchema & RouteDoc;
const doc = (summary: string, auth = 'node'): S => ({ tags: ['node'], summary, 'x-auth': auth });

const NODE_KEY = { type: 'string', pattern: '^[A-Za-z0-9+/=_:-]{16,128}$', description: 'the node\'s public key' } as const;
const hostinfoProps = {
  hostname: { type: 'string', minLength: 1, maxLength: 253 },
  routes: { type: 'array', items: { type: 'string' }, maxItems: 1024, description: 'routes the node announces' },
  exit_node: { type: 'boolean', description: 'offer this node as an exit node' },
  use_exit_node: { type: ['string', 'null'], maxLength: 253, description: 'name or id of the exit node to use' },
  endpoints: { type: 'array', items: { type: 'string', maxLength: 300 }, maxItems: 64 },
  os: { type: 'string', maxLength: 100 },
  version: { type: 'string', maxLength: 100 },
} as const;

export interface HostinfoBody {
  hostname?: string;
  routes?: string[];
  exit_node?: boolean;
  use_exit_node?: string | null;
  endpoints?: string[];
  os?: string;
  version?: string;
}

interface RegisterBody extends HostinfoBody {
  auth_key: string;
  node_key: string;
  hostname: string;
  tags?: string[];
  nonce?: string;
  signature?: string;
}

/** How long a registration nonce is valid (ms; LARKTUN_REGISTER_NONCE_TTL_MS, default 60 s). */
const NONCE_TTL_MS = Number(process.env['LARKTUN_REGISTER_NONCE_TTL_MS']) > 0 ? Number(process.env['LARKTUN_REGISTER_NONCE_TTL_MS']) : 60_000;
/** Pending nonces per auth key (its oldest is dropped) and in all (beyond: 429). */
const NONCES_PER_KEY = 1000;
const NONCES_TOTAL = 100_000;

function announcedFrom(b: HostinfoBody, prev: string[]): string[] {
  const isExit = (r: string) => r === '0.0.0.0/0' || r === '::/0';
  const routes = (b.routes ?? prev).filter((r) => !isExit(r));
  const exitWanted = b.exit_node ?? prev.some(isExit);
  return canonicalRoutes([...routes, ...(exitWanted ? ['0.0.0.0/0', '::/0'] : [])], 'routes');
}

/** The routes a node announces (canonical; exit routes are the exit_node flag, not listed); throws on bad syntax. */
export function routesFromBody(b: HostinfoBody): string[] {
  return announcedFrom(b, []).filter((r) => r !== '0.0.0.0/0' && r !== '::/0');
}

/** The endpoints a node sends (undefined when none); throws on one that is not host:port. */
export function endpointsFromBody(b: HostinfoBody): string[] | undefined {
  return endpointsFrom(b);
}

function endpointsFrom(b: HostinfoBody): string[] | undefined {
  if (!b.endpoints) return undefined;
  const bad = b.endpoints.filter((e) => parseHostPort(e) === null);
  if (bad.length) throw badRequest(`endpoint "${bad[0]}" is not host:port`, { endpoints: bad });
  return b.endpoints;
}

function hostinfoJson(b: HostinfoBody, prev: Record<string, unknown>): string {
  const next: Record<string, unknown> = { ...prev };
  if (b.os !== undefined) next['os'] = b.os;
  if (b.version !== undefined) next['version'] = b.version;
  if (b.use_exit_node !== undefined) next['use_exit_node'] = b.use_exit_node;
  return JSON.stringify(next);
}

/** What admitNode needs: the proven node, its owner and the token it gets. */
export interface AdmitArgs {
  tenant: TenantRow;
  body: HostinfoBody & { hostname: string };
  nodeKey: string;
  /** Tags the node gets when new (sorted, unique). */
  requested: string[];
  /** The node named tags explicitly (re-registration keeps its tags and warns). */
  tagsGiven: boolean;
  /** Tags allowed without tagOwners (the auth key's own tags; none for an interactive login). */
  freeTags: string[];
  userId: number | null;
  authKeyId: number | null;
  ephemeral: number;
  token: { prefix: string; hash: string };
  /** The tenant's node with this key (or the unproven node of the prior token), if any. */
  existing: NodeRow | undefined;
  /** The unproven key the node moves from (existing found by token), else null. */
  previousKey: string | null;
  /** The refusal message of a tag neither free nor owned by the user. */
  tagRefusal: (tag: string) => string;
}

/**
 * The registration itself, inside the tenant's write transaction after the
 * caller proved the node key and checked who may own the node: a re-registered
 * node gets a new token and fresh hostinfo (its user and tags stay); a new node
 * gets addresses, its tags (each free or owned by its user under tagOwners), a
 * relay link and auto-approved routes. Used by /register (auth keys) and by an
 * approved interactive login (src/control/nodelogin.ts).
 */
export async function admitNode(tx: TenantTx, metrics: ControlMetrics, a: AdmitArgs, seen: { tagsKept: string[] | null }): Promise<NodeRow> {
  const { tenant, body: b, requested } = a;
  const announcedBase = announcedFrom(b, []);
  const endpoints = endpointsFrom(b) ?? [];
  const now = nowIso();
  let node: NodeRow;
  const existing = a.existing;
  if (existing) {
    // Re-registration: new token, fresh hostinfo; user and tags stay as
    // they are (as registered, or as an admin set them).
    if (a.tagsGiven && JSON.stringify(requested) !== JSON.stringify(jsonList(existing.tags))) seen.tagsKept = jsonList(existing.tags);
    const before = nodeAuditView(existing);
    const updated = await tx.updateNode(existing.id, {
      token_prefix: a.token.prefix, token_hash: a.token.hash, hostname: b.hostname, node_key: a.nodeKey, key_proven_at: now,
      auth_key_id: a.authKeyId, ephemeral: a.ephemeral, expires_at: null,
      announced_routes: JSON.stringify(announcedBase), endpoints: JSON.stringify(endpoints),
      hostinfo: hostinfoJson(b, jsonObject(existing.hostinfo)),
    });
    if (!updated) throw new ApiError(500, 'internal', 'node vanished during registration');
    node = updated;
    if (a.previousKey !== null) await tx.audit('node.key.prove', 'node', node.id, { node_key: a.previousKey, key_proven: false }, { node_key: node.node_key, key_proven: true });
    await tx.audit('node.reregister', 'node', node.id, before, nodeAuditView(node));
  } else {
    const pol = await tx.currentPolicy();
    const policyText = pol?.text ?? '{}';
    const needsOwner = requested.some((tag) => !a.freeTags.includes(tag));
    const user = needsOwner && a.userId !== null ? ((await tx.getUser(a.userId)) ?? null) : null;
    const notAllowed = requested.filter(
      (tag) => !a.freeTags.includes(tag) && !userOwnsTag(policyText, tag, user ? { id: user.id, name: user.name, email: user.email } : null),
    );
    if (notAllowed.length) {
      metrics.rejections.inc({ reason: 'tags_not_allowed' });
      throw new ApiError(403, 'tags_not_allowed', a.tagRefusal(notAllowed[0] as string), { tags: notAllowed });
    }
    const count = await tx.countNodes();
    if (count >= tenant.max_nodes) {
      metrics.rejections.inc({ reason: 'max_nodes' });
      throw new ApiError(409, 'limit_reached', `this tenant has reached its limit of ${tenant.max_nodes} nodes`);
    }
    const addrs = await allocateAddresses(tx, tenant, count);
    node = await tx.insertNode({
      name: await uniqueNodeName(tx, b.hostname), hostname: b.hostname, node_key: a.nodeKey, key_proven_at: now,
      token_prefix: a.token.prefix, token_hash: a.token.hash, user_id: a.userId, tags: JSON.stringify(requested),
      ipv4: addrs.ipv4, ipv6: addrs.ipv6, announced_routes: JSON.stringify(announcedBase), approved_routes: '[]',
      exit_node_wish: b.exit_node ? 1 : 0, endpoints: JSON.stringify(endpoints), hostinfo: hostinfoJson(b, {}),
      online: 0, last_seen: null, ephemeral: a.ephemeral, auth_key_id: a.authKeyId, expires_at: null,
      created_at: now, updated_at: now,
    });
    await tx.audit('node.register', 'node', node.id, null, nodeAuditView(node));
  }
  await ensureLinks(tx, await tx.relaysServing(), [node.id]);
  if (node.announced_routes === '[]') return node;
  const pol = await tx.currentPolicy();
  const changed = await runAutoApprove(tx, tenant, pol?.text ?? '{}', [node.id]);
  return changed > 0 ? ((await tx.getNode(node.id)) ?? node) : node;
}

export async function authenticateNode(store: Store, req: FastifyRequest): Promise<NodeRow> {
  const token = bearer(req);
  const parsed = token ? parseSecret(token) : null;
  if (!token || parsed?.kind !== 'lknode') throw unauthorized('missing or invalid node token');
  const node = await store.findNodeByToken(parsed.prefix);
  if (!node || !secretMatches(token, node.token_hash)) throw unauthorized('missing or invalid node token');
  if (node.expires_at !== null && node.expires_at <= nowIso()) throw new ApiError(401, 'node_expired', 'this node has expired: register again with an auth key');
  return node;
}

export function registerNodeRoutes(app: FastifyInstance, deps: NodeDeps): void {
  const { store, hub, metrics } = deps;

  // ---- registration: proof of the node key (src/control/nodekey.ts) -------------

  /** A refused registration: counted, and audited in the key's tenant when it concerns an existing node. */
  const refuse = async (reason: string, err: ApiError, audit: { tenantId: number; key: AuthKeyRow; node: NodeRow | undefined; nodeKey: string } | null): Promise<never> => {
    metrics.identityRefusals.inc({ reason });
    metrics.rejections.inc({ reason: `register_${reason}` });
    if (audit?.node) {
      await store.auditOnly(audit.tenantId, `authkey:${audit.key.prefix}`, 'node.register.refused', 'node', audit.node.id, null, {
        reason, node_key: audit.nodeKey, auth_key_user_id: audit.key.user_id, node_user_id: audit.node.user_id,
      }).catch((e: unknown) => app.log.warn({ err: e }, 'auditing a refused registration failed'));
    }
    throw err;
  };

  async function validAuthKey(secret: string): Promise<AuthKeyRow> {
    const parsed = parseSecret(secret);
    const key = parsed?.kind === 'lkauth' ? await store.findAuthKey(parsed.prefix) : undefined;
    if (!key || !secretMatches(secret, key.hash)) {
      metrics.rejections.inc({ reason: 'auth_key_invalid' });
      throw unauthorized('invalid auth key');
    }
    if (key.expires_at !== null && key.expires_at <= nowIso()) {
      metrics.rejections.inc({ reason: 'auth_key_expired' });
      throw unauthorized('this auth key has expired');
    }
    return key;
  }

  app.post<{ Body: { auth_key: string } }>(
    '/register/challenge',
    {
      schema: {
        ...doc(`Get a registration nonce for an auth key: single-use, valid ${Math.round(NONCE_TTL_MS / 1000)} s; sign it with the node key ("${REGISTER_PROOF_LABEL}" ‖ u8(32) ‖ nonce ‖ u16be(len) ‖ node_key ‖ u16be(len) ‖ tenant, Ed25519) and send nonce and signature to /register`, 'authkey'),
        body: { type: 'object', additionalProperties: false, required: ['auth_key'], properties: { auth_key: { type: 'string', maxLength: 200 } } },
      },
    },
    async (req) => {
      const key = await validAuthKey(req.body.auth_key);
      if (key.reusable !== 1 && key.used_count > 0) {
        metrics.rejections.inc({ reason: 'auth_key_used' });
        throw unauthorized('this auth key has already been used');
      }
      const tenant = await store.getTenant(key.tenant_id);
      if (!tenant) throw unauthorized('invalid auth key');
      const nonce = randomBytes(NONCE_BYTES).toString('base64url');
      const expires = new Date(Date.now() + NONCE_TTL_MS).toISOString();
      if (!(await store.issueRegisterNonce({ nonce, tenantId: key.tenant_id, authKeyId: key.id, ttlMs: NONCE_TTL_MS }, { perKey: NONCES_PER_KEY, total: NONCES_TOTAL }))) {
        metrics.rejections.inc({ reason: 'register_nonces_full' });
        throw new ApiError(429, 'too_many_challenges', `${NONCES_TOTAL} registrations are pending on this server: retry in a minute`);
      }
      return { nonce, tenant: tenant.name, expires_at: expires, label: REGISTER_PROOF_LABEL };
    },
  );

  app.post<{ Body: RegisterBody }>(
    '/register',
    {
      schema: {
        ...doc('Register a node with an auth key, its public key and a proof of that key (a signed nonce from /register/challenge). A node registered before keys were proven moves to a proven key by also sending its node token (Authorization: Bearer lknode_…)', 'authkey'),
        body: {
          type: 'object', additionalProperties: false, required: ['auth_key', 'node_key', 'hostname'],
          properties: {
            auth_key: { type: 'string', maxLength: 200 }, node_key: NODE_KEY,
            nonce: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$', description: 'the nonce from /register/challenge (base64url, 32 bytes)' },
            signature: { type: 'string', pattern: '^[A-Za-z0-9_-]{86}$', description: 'Ed25519 signature of the proof message by the node key (base64url, 64 bytes)' },
            tags: { type: 'array', items: { type: 'string' }, maxItems: 64 }, ...hostinfoProps,
          },
        },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const key = await validAuthKey(b.auth_key);
      const tenant = await store.getTenant(key.tenant_id);
      if (!tenant) throw unauthorized('invalid auth key');
      // Proof of possession, before anything is looked up or changed. The
      // nonce is taken (deleted) whatever follows: it never serves twice.
      const known = () => store.tenant(key.tenant_id).getNodeByKey(b.node_key);
      if (b.nonce === undefined || b.signature === undefined) {
        await refuse('proof_required', new ApiError(401, 'proof_required', 'registration needs proof of the node key: get a nonce from POST /node/v1/register/challenge, sign it with the node key and send "nonce" and "signature" (larktun up does this; update an older larktund)'), { tenantId: key.tenant_id, key, node: await known(), nodeKey: b.node_key });
      }
      const nonce = b.nonce as string;
      const taken = await store.takeRegisterNonce(nonce);
      if (!taken || taken.auth_key_id !== key.id) {
        await refuse('proof_nonce_invalid', new ApiError(401, 'proof_nonce_invalid', 'the registration nonce is unknown, expired, already used or was issued for another auth key: get a new one from POST /node/v1/register/challenge'), { tenantId: key.tenant_id, key, node: await known(), nodeKey: b.node_key });
      }
      if (!verifyRegistration(b.node_key, Buffer.from(nonce, 'base64url'), tenant.name, b.signature as string)) {
        await refuse('proof_invalid', new ApiError(401, 'proof_invalid', `the signature does not prove possession of node key "${b.node_key}" (expected an Ed25519 "nodekey:<64 hex>" key signing the "${REGISTER_PROOF_LABEL}" message for this nonce and tenant "${tenant.name}")`), { tenantId: key.tenant_id, key, node: await known(), nodeKey: b.node_key });
      }

      const keyTags = jsonList(key.tags);
      const requested = b.tags ? [...new Set(b.tags)].sort() : keyTags;
      validateTagSyntax(requested);
      announcedFrom(b, []); // route and endpoint syntax: refused before the key is used
      endpointsFrom(b);
      const s = newSecret('lknode');
      // A node registered before keys were proven has a key nobody can prove: its
      // token (sent as a bearer token) shows it is that node.
      const priorToken = bearer(req);
      const priorParsed = priorToken ? parseSecret(priorToken) : null;

      // What the transaction found, for after it (a refusal rolls it back).
      const seen: { owner: NodeRow | null; tagsKept: string[] | null } = { owner: null, tagsKept: null };
      let written;
      try {
        written = await store.write(key.tenant_id, `authkey:${key.prefix}`, async (tx) => {
          const k = await tx.getAuthKey(key.id); // re-read under the tenant lock
          if (!k) throw unauthorized('invalid auth key');
          let existing = await tx.getNodeByKey(b.node_key);
          let previousKey: string | null = null;
          if (!existing && priorToken && priorParsed?.kind === 'lknode') {
            const prior = await tx.getNodeByTokenPrefix(priorParsed.prefix);
            if (prior && prior.key_proven_at === null && secretMatches(priorToken, prior.token_hash)) {
              existing = prior;
              previousKey = prior.node_key;
            }
          }
          // The node stays its user's: another user's key (or a user's key for a
          // node without a user, and the other way round) never re-registers it.
          if (existing && existing.user_id !== k.user_id) {
            seen.owner = existing;
            throw new ApiError(403, 'node_owned_by_other_user', `node "${existing.name}" is registered to another ${existing.user_id === null ? 'owner (its tags)' : 'user'}: only an auth key of its own ${existing.user_id === null ? 'kind (without a user)' : 'user'} re-registers it; to join as a new node, run larktun logout first`);
          }
          if (!(await tx.consumeAuthKey(k.id))) {
            metrics.rejections.inc({ reason: 'auth_key_used' });
            throw unauthorized('this auth key has already been used');
          }
          return admitNode(tx, metrics, {
            tenant, body: b, nodeKey: b.node_key, requested, tagsGiven: b.tags !== undefined, freeTags: keyTags,
            userId: k.user_id, authKeyId: k.id, ephemeral: k.ephemeral, token: s, existing, previousKey,
            tagRefusal: (tag) => `tag "${tag}" is not permitted for this auth key (not one of its tags, and the key's user does not own it in tagOwners)`,
          }, seen);
        });
      } catch (err) {
        if (seen.owner !== null) await refuse('takeover', err as ApiError, { tenantId: key.tenant_id, key, node: seen.owner, nodeKey: b.node_key });
        throw err;
      }
      const result = written.result;
      const kept = seen.tagsKept;
      return reply.code(201).send({
        token: s.secret,
        tenant: tenant.name,
        node: { id: result.id, name: result.name, ipv4: result.ipv4, ipv6: result.ipv6, tags: jsonList(result.tags), approved_routes: jsonList(result.approved_routes) },
        ...(kept !== null ? { warning: `this node keeps its tags ${kept.length ? kept.join(',') : '(none)'}: a registered node's tags are changed by an admin (larktun admin nodes tag), not by registering again` } : {}),
      });
    },
  );

  // A node registered before node keys were proven (key_proven: false) proves a
  // new key with its token, without an auth key: the same node, same token.
  app.post('/key/challenge', { schema: doc('A nonce for a node whose key was never proven (registered before 0007) to prove a new key with its token: POST it to /key') }, async (req) => {
    const node = await authenticateNode(store, req);
    if (node.key_proven_at !== null) throw new ApiError(409, 'key_already_proven', 'this node\'s key is proven: a node moves to another key only by registering as a new node');
    const tenant = await store.getTenant(node.tenant_id);
    if (!tenant) throw unauthorized('missing or invalid node token');
    const nonce = randomBytes(NONCE_BYTES).toString('base64url');
    const expires = new Date(Date.now() + NONCE_TTL_MS).toISOString();
    if (!(await store.issueRegisterNonce({ nonce, tenantId: node.tenant_id, nodeId: node.id, ttlMs: NONCE_TTL_MS }, { perKey: NONCES_PER_KEY, total: NONCES_TOTAL }))) {
      metrics.rejections.inc({ reason: 'register_nonces_full' });
      throw new ApiError(429, 'too_many_challenges', `${NONCES_TOTAL} registrations are pending on this server: retry in a minute`);
    }
    return { nonce, tenant: tenant.name, expires_at: expires, label: REGISTER_PROOF_LABEL };
  });

  app.post<{ Body: { node_key: string; nonce: string; signature: string } }>(
    '/key',
    {
      schema: {
        ...doc('Prove a new node key with the node token (only a node whose key was never proven): the node keeps its id, addresses and token'),
        body: {
          type: 'object', additionalProperties: false, required: ['node_key', 'nonce', 'signature'],
          properties: {
            node_key: NODE_KEY,
            nonce: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' },
            signature: { type: 'string', pattern: '^[A-Za-z0-9_-]{86}$' },
          },
        },
      },
    },
    async (req) => {
      const node = await authenticateNode(store, req);
      const b = req.body;
      const tenant = await store.getTenant(node.tenant_id);
      if (!tenant) throw unauthorized('missing or invalid node token');
      const taken = await store.takeRegisterNonce(b.nonce);
      if (!taken || taken.node_id !== node.id) {
        metrics.identityRefusals.inc({ reason: 'proof_nonce_invalid' });
        throw new ApiError(401, 'proof_nonce_invalid', 'the nonce is unknown, expired, already used or was issued for another node: get a new one from POST /node/v1/key/challenge');
      }
      if (!verifyRegistration(b.node_key, Buffer.from(b.nonce, 'base64url'), tenant.name, b.signature)) {
        metrics.identityRefusals.inc({ reason: 'proof_invalid' });
        throw new ApiError(401, 'proof_invalid', `the signature does not prove possession of node key "${b.node_key}"`);
      }
      const { result } = await store.write(node.tenant_id, `node:${node.id}`, async (tx) => {
        const cur = await tx.getNode(node.id);
        if (!cur) throw unauthorized('missing or invalid node token');
        if (cur.key_proven_at !== null) throw new ApiError(409, 'key_already_proven', 'this node\'s key is proven: a node moves to another key only by registering as a new node');
        if (await tx.getNodeByKey(b.node_key)) throw new ApiError(409, 'conflict', 'another node of this tenant has this node key');
        const updated = await tx.updateNode(cur.id, { node_key: b.node_key, key_proven_at: nowIso() });
        if (!updated) throw unauthorized('missing or invalid node token');
        await tx.audit('node.key.prove', 'node', cur.id, { node_key: cur.node_key, key_proven: false }, { node_key: updated.node_key, key_proven: true });
        return updated;
      });
      return { node_key: result.node_key, key_proven: true };
    },
  );

  app.post<{ Body: HostinfoBody }>(
    '/hostinfo',
    { schema: { ...doc('Announce hostinfo: hostname, routes, exit-node wish, endpoints'), body: { type: 'object', additionalProperties: false, properties: hostinfoProps } } },
    async (req) => {
      const node = await authenticateNode(store, req);
      const b = req.body;
      const announced = announcedFrom(b, jsonList(node.announced_routes));
      const endpoints = endpointsFrom(b);
      const tenant = await store.getTenant(node.tenant_id);
      if (!tenant) throw unauthorized('missing or invalid node token');
      const { result } = await store.write(node.tenant_id, `node:${node.id}`, async (tx) => {
        const cur = await tx.getNode(node.id);
        if (!cur) throw unauthorized('missing or invalid node token');
        const before = { hostname: cur.hostname, announced_routes: jsonList(cur.announced_routes), endpoints: jsonList(cur.endpoints) };
        const after = { hostname: b.hostname ?? cur.hostname, announced_routes: announced, endpoints: endpoints ?? before.endpoints };
        await tx.updateNode(cur.id, {
          hostname: after.hostname, announced_routes: JSON.stringify(announced), endpoints: JSON.stringify(after.endpoints),
          exit_node_wish: announced.includes('0.0.0.0/0') ? 1 : 0, hostinfo: hostinfoJson(b, jsonObject(cur.hostinfo)), last_seen: nowIso(),
        });
        if (JSON.stringify(before) !== JSON.stringify(after)) await tx.audit('node.hostinfo', 'node', cur.id, before, after);
        const pol = await tx.currentPolicy();
        await runAutoApprove(tx, tenant, pol?.text ?? '{}', [cur.id]);
        return (await tx.getNode(cur.id)) ?? cur;
      });
      return { announced_routes: jsonList(result.announced_routes), approved_routes: jsonList(result.approved_routes) };
    },
  );

  app.post<{ Body: { relays: { relay_id: number; rtt_ms: number }[] } }>(
    '/latency',
    {
      schema: {
        ...doc('Report the node\'s measured round-trip time to its relays (from keepalive echoes); shown as relay_rtt_ms on the node'),
        body: {
          type: 'object', additionalProperties: false, required: ['relays'],
          properties: {
            relays: {
              type: 'array', maxItems: 64,
              items: {
                type: 'object', additionalProperties: false, required: ['relay_id', 'rtt_ms'],
                properties: { relay_id: { type: 'integer', minimum: 1 }, rtt_ms: { type: 'number', minimum: 0, maximum: 600000 } },
              },
            },
          },
        },
      },
    },
    async (req) => {
      const node = await authenticateNode(store, req);
      const updated = await store.setNodeRelayRtt(node.tenant_id, node.id, req.body.relays.map((r) => ({ relayId: r.relay_id, rttMs: r.rtt_ms })));
      return { updated };
    },
  );

  app.get('/map', { schema: doc('The node\'s current network map (one shot)') }, async (req, reply) => {
    const node = await authenticateNode(store, req);
    let map: BuiltMap | null;
    try {
      // From the tenant's last compiled state; never a compile per request.
      map = await hub.oneShot(node.tenant_id, node.id);
    } catch (err) {
      if (!(err instanceof CompileFailedError)) throw err;
      reply.header('retry-after', String(Math.max(1, Math.ceil((err.retryAt - Date.now()) / 1000))));
      throw new ApiError(503, 'policy_compile_failed', err.message);
    }
    if (!map) throw unauthorized('missing or invalid node token');
    return reply.type('application/json; charset=utf-8').send(map.json);
  });

  app.get<{ Querystring: { since?: string } }>(
    '/stream',
    {
      schema: {
        ...doc('Server-Sent Events stream of network maps. Resume with Last-Event-ID (or ?since=): an unchanged map is not sent again'),
        querystring: { type: 'object', additionalProperties: false, properties: { since: { type: 'string', maxLength: 100 } } },
      },
    },
    async (req, reply) => {
      const node = await authenticateNode(store, req);
      // A token may hold only a few streams: more are refused (the open ones keep working).
      const max = deps.maxStreamsPerNode ?? DEFAULT_MAX_STREAMS_PER_NODE;
      if (hub.nodeStreams(node.tenant_id, node.id) >= max) {
        metrics.rejections.inc({ reason: 'stream_limit' });
        throw new ApiError(429, 'too_many_streams', `this node already has ${max} map streams open on this server (the limit); close one first`, { limit: max });
      }
      const last = (req.headers['last-event-id'] as string | undefined) ?? req.query.since ?? null;
      const lastHash = last && last.includes('.') ? last.slice(last.indexOf('.') + 1) : null;
      await openStream(deps, req, reply, node, lastHash);
    },
  );
}

async function openStream(deps: NodeDeps, req: FastifyRequest, reply: FastifyReply, node: NodeRow, lastHash: string | null): Promise<void> {
  const { store, hub, metrics } = deps;
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  res.write(': larktun map stream\n\n');
  let closed = false;
  // A node that stopped reading (hung, or gone without closing its TCP
  // connection) leaves our writes in the socket buffer: once a write is not
  // drained within stallMs the stream is cut, which marks the node offline.
  let stall: NodeJS.Timeout | null = null;
  const write = (chunk: string) => {
    if (closed) return;
    if (!res.write(chunk) && !stall) {
      stall = setTimeout(() => {
        metrics.liveness.inc({ event: 'stream_stalled' });
        res.destroy();
      }, deps.stallMs ?? 3000);
      stall.unref();
    }
  };
  res.on('drain', () => {
    if (stall) clearTimeout(stall);
    stall = null;
  });
  const stream: MapStream = {
    tenantId: node.tenant_id,
    nodeId: node.id,
    lastHash,
    first: true,
    sent: null,
    patch(map: BuiltMap) {
      write(`id: ${map.version}.${map.hash}\nevent: patch\ndata: ${map.json}\n\n`);
    },
    send(map: BuiltMap) {
      write(`id: ${map.version}.${map.hash}\nevent: map\ndata: ${map.json}\n\n`);
    },
    peerStatus(version: number, online: Record<number, boolean>) {
      write(`event: peers\ndata: ${JSON.stringify({ version, online })}\n\n`);
    },
    unchanged(map: BuiltMap) {
      write(`id: ${map.version}.${map.hash}\nevent: unchanged\ndata: ${JSON.stringify({ version: map.version, hash: map.hash })}\n\n`);
    },
    end(reason: string) {
      write(`event: end\ndata: ${JSON.stringify({ reason })}\n\n`);
      finish();
    },
  };
  const keepalive = setInterval(() => write(': heartbeat\n\n'), deps.keepaliveMs ?? 1000);
  keepalive.unref();
  const finish = () => {
    if (closed) return;
    closed = true;
    clearInterval(keepalive);
    if (stall) clearTimeout(stall);
    deps.openStreams.delete(finish);
    res.end();
    const left = hub.detach(stream);
    if (left === 0 && !deps.shuttingDown?.()) void goneOffline(deps, node).catch((err: unknown) => req.log.warn({ err }, 'marking node offline failed'));
  };
  deps.openStreams.add(finish);
  res.on('close', finish);
  // The hub sends the first map (or "unchanged" on a resume) as soon as it has
  // compiled the tenant; coming online is itself a change that triggers it.
  const count = hub.attach(stream);
  deps.expiry?.watch(node, (reason) => stream.end(reason), res);
  if (count === 1) await store.setPresence(node.tenant_id, node.id, true);
}

async function goneOffline(deps: NodeDeps, node: NodeRow): Promise<void> {
  const { store } = deps;
  const cur = await store.tenant(node.tenant_id).getNode(node.id);
  if (!cur) return;
  if (cur.ephemeral === 1) {
    await store.write(node.tenant_id, 'system', async (tx) => {
      const n = await tx.getNode(node.id);
      if (!n) return;
      await tx.deleteNode(n.id);
      await tx.audit('node.delete.ephemeral', 'node', n.id, nodeAuditView(n), null);
    }).catch(() => undefined);
    return;
  }
  await store.setPresence(node.tenant_id, node.id, false);
}
