// Preview: what a node (or a user's nodes) may reach under the text in the
// editor, before saving. The server compiles the draft (within its compile
// budget) and reads the answer off the same filters the maps would carry.
import { useState, type FormEvent } from 'react';
import { useMutation, useQuery } from '@tanstack/react-query';
import { api, ApiError, enc, type NodeInfo } from '../../api';
import { ErrorText } from '../../ui';

interface PortGrant { protocols: string[]; ports: string }
interface Peer { id: number; name: string; addresses: string[]; tags: string[]; user: string | null; ports: PortGrant[] }
interface Route { prefix: string; via: { id: number; name: string }; ports: PortGrant[] }
interface Exit { id: number; name: string; ports: PortGrant[] }
export interface PreviewSubject {
  node: { id: number; name: string; addresses: string[]; tags: string[]; user: string | null; hypothetical: boolean };
  peers: Peer[];
  routes: Route[];
  exit_nodes: Exit[];
  inbound: Peer[];
}
interface NetUser { id: number; name: string; email: string | null }

const ALL = 'tcp+udp+icmp+ipv6-icmp';
function portsText(ports: PortGrant[]): string {
  if (ports.length === 0) return 'none';
  return ports.map((g) => {
    const p = g.protocols.join('+');
    const what = g.ports === '*' ? 'all ports' : `port ${g.ports}`;
    return p === ALL ? what : `${g.protocols.join('/')} ${what}`;
  }).join(', ');
}

/** `text`: the editor's current text (to say when a shown preview no longer matches it). */
export default function PreviewPanel({ tenant, text }: { tenant: string; text: string }) {
  const [mode, setMode] = useState<'node' | 'user'>('node');
  const [node, setNode] = useState('');
  const [user, setUser] = useState('');
  const nodes = useQuery({ queryKey: ['nodes', tenant], queryFn: () => api<{ nodes: NodeInfo[] }>('GET', `/tenants/${enc(tenant)}/nodes`) });
  const users = useQuery({ queryKey: ['users', tenant], queryFn: () => api<{ users: NetUser[] }>('GET', `/tenants/${enc(tenant)}/users`) });
  const run = useMutation({
    mutationFn: async (body: { node?: number; user?: string }) => {
      const policy = text;
      const r = await api<{ subjects: PreviewSubject[] }>('POST', `/tenants/${enc(tenant)}/policy/preview`, { policy, ...body });
      return { ...r, policy };
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (mode === 'node' && node) run.mutate({ node: Number(node) });
    if (mode === 'user' && user) run.mutate({ user });
  };
  const invalid = run.error instanceof ApiError && run.error.code === 'invalid_policy';
  return (
    <section className="preview" aria-label="Preview">
      <h2>Preview</h2>
      <p className="muted small">What a node may reach under the text in the editor, computed by the server before you save.</p>
      <form className="inline-form" onSubmit={submit} aria-label="Preview reach">
        <div className="segmented" role="group" aria-label="Preview for">
          <button type="button" aria-pressed={mode === 'node'} onClick={() => setMode('node')}>Node</button>
          <button type="button" aria-pressed={mode === 'user'} onClick={() => setMode('user')}>User</button>
        </div>
        {mode === 'node' ? (
          <label>Node
            <select value={node} onChange={(e) => setNode(e.target.value)} aria-label="Node to preview">
              <option value="">Choose a node…</option>
              {(nodes.data?.nodes ?? []).filter((n) => !n.expired).map((n) => <option key={n.id} value={n.id}>{n.name}{n.tags.length ? ` (${n.tags.join(', ')})` : n.user ? ` (${n.user})` : ''}</option>)}
            </select>
          </label>
        ) : (
          <label>User
            <select value={user} onChange={(e) => setUser(e.target.value)} aria-label="User to preview">
              <option value="">Choose a user…</option>
              {(users.data?.users ?? []).map((u) => <option key={u.id} value={u.name}>{u.name}{u.email ? ` (${u.email})` : ''}</option>)}
            </select>
          </label>
        )}
        <button type="submit" className="primary" disabled={run.isPending || (mode === 'node' ? !node : !user)}>Preview</button>
        {run.isPending && <span className="muted small">Compiling…</span>}
      </form>
      <ErrorText error={nodes.error ?? users.error} />
      {invalid ? <p className="error" role="alert">The text has errors (listed above); fix them to preview.</p> : <ErrorText error={run.error} />}
      {run.data && run.data.policy !== text && <p className="muted small" role="status" data-preview-stale>The text has changed since this preview: press Preview again to see its effect.</p>}
      {run.data && run.data.subjects.length === 0 && <p className="muted">No node to preview.</p>}
      {run.data?.subjects.map((s) => <SubjectReach key={s.node.id} s={s} />)}
    </section>
  );
}

function SubjectReach({ s }: { s: PreviewSubject }) {
  return (
    <div className="card" data-preview-node={s.node.name}>
      <div className="card-head">
        <h3 className="preview-node">
          {s.node.name} <span className="mono muted small">{s.node.addresses.join(', ')}</span>
          {s.node.hypothetical && <span className="badge">a new node of {s.node.user}</span>}
        </h3>
        <span className="muted small">{s.peers.length} peer{s.peers.length === 1 ? '' : 's'}, {s.routes.length} route{s.routes.length === 1 ? '' : 's'}, {s.exit_nodes.length} exit node{s.exit_nodes.length === 1 ? '' : 's'}, reachable from {s.inbound.length}</span>
      </div>
      <table className="grid compact" aria-label={`Reach of ${s.node.name}`}>
        <thead><tr><th scope="col">Kind</th><th scope="col">Target</th><th scope="col">Addresses</th><th scope="col">Allowed</th></tr></thead>
        <tbody>
          {s.peers.map((p) => <tr key={`p${p.id}`} data-kind="peer"><td>may reach</td><td>{p.name}</td><td className="mono small">{p.addresses.join(', ')}</td><td className="small">{portsText(p.ports)}</td></tr>)}
          {s.routes.map((r) => <tr key={`r${r.prefix}-${r.via.id}`} data-kind="route"><td>route</td><td className="mono">{r.prefix}</td><td className="small">via {r.via.name}</td><td className="small">{portsText(r.ports)}</td></tr>)}
          {s.exit_nodes.map((x) => <tr key={`x${x.id}`} data-kind="exit"><td>exit node</td><td>{x.name}</td><td className="small">internet</td><td className="small">{portsText(x.ports)}</td></tr>)}
          {s.inbound.map((p) => <tr key={`i${p.id}`} data-kind="inbound"><td>reachable from</td><td>{p.name}</td><td className="mono small">{p.addresses.join(', ')}</td><td className="small">{portsText(p.ports)}</td></tr>)}
          {s.peers.length + s.routes.length + s.exit_nodes.length + s.inbound.length === 0 && <tr><td colSpan={4} className="muted">Nothing: this node can neither reach nor be reached by any other.</td></tr>}
        </tbody>
      </table>
    </div>
  );
}
