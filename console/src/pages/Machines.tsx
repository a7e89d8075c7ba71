import { useMemo, useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { Link, useParams } from 'react-router';
import { usePoll } from '../live';
import { api, enc, type NodeInfo } from '../api';
import { ago, rtt } from '../format';
import { can, useSession } from '../session';
import { Confirm, ErrorText, Loading, Modal, Pager, Status } from '../ui';

const PAGE = 50;
type Filter = 'all' | 'online' | 'offline';
type Action = { kind: 'rename' | 'expire' | 'delete'; node: NodeInfo } | null;

function os(n: NodeInfo): string {
  const h = n.hostinfo;
  const parts = [h.os, h.os_version ?? h.osVersion, h.version ? `larktun ${String(h.version)}` : null].filter((x) => typeof x === 'string' && x !== '');
  return parts.join(' · ');
}

export function Machines() {
  const { tenant = '' } = useParams();
  const poll = usePoll();
  const s = useSession();
  const qc = useQueryClient();
  const q = useQuery({
    queryKey: ['nodes', tenant],
    queryFn: () => api<{ nodes: NodeInfo[] }>('GET', `/tenants/${enc(tenant)}/nodes`),
    refetchInterval: poll,
  });
  const [search, setSearch] = useState('');
  const [filter, setFilter] = useState<Filter>('all');
  const [page, setPage] = useState(0);
  const [action, setAction] = useState<Action>(null);
  const [newName, setNewName] = useState('');

  const nodes = q.data?.nodes ?? [];
  const counts = { all: nodes.length, online: nodes.filter((n) => n.online).length, offline: nodes.filter((n) => !n.online).length };
  const shown = useMemo(() => {
    const needle = search.trim().toLowerCase();
    return nodes
      .filter((n) => (filter === 'all' ? true : filter === 'online' ? n.online : !n.online))
      .filter((n) => !needle || [n.name, n.hostname, n.user ?? '', n.ipv4 ?? '', n.ipv6 ?? '', ...n.tags, ...n.announced_routes].some((x) => x.toLowerCase().includes(needle)))
      .sort((a, b) => a.name.localeCompare(b.name));
  }, [nodes, search, filter]);
  const pages = Math.max(1, Math.ceil(shown.length / PAGE));
  const cur = Math.min(page, pages - 1);

  const change = useMutation({
    mutationFn: async (a: NonNullable<Action>) => {
      const base = `/tenants/${enc(tenant)}/nodes/${a.node.id}`;
      if (a.kind === 'rename') return api('PATCH', base, { name: newName.trim() });
      if (a.kind === 'expire') return api('POST', `${base}/expire`);
      return api('DELETE', base);
    },
    onSuccess: () => {
      setAction(null);
      void qc.invalidateQueries({ queryKey: ['nodes', tenant] });
      void qc.invalidateQueries({ queryKey: ['routes', tenant] });
    },
  });
  const open = (a: NonNullable<Action>) => {
    change.reset();
    setNewName(a.node.name);
    setAction(a);
  };
  const mayChange = can(s, 'nodes');

  return (
    <section aria-label="Machines">
      <div className="toolbar">
        <label className="search">
          <span className="sr-only">Search machines</span>
          <input type="search" placeholder="Search by name, user, tag, address or route" value={search} onChange={(e) => { setSearch(e.target.value); setPage(0); }} />
        </label>
        <div className="segmented" role="group" aria-label="Show">
          {(['all', 'online', 'offline'] as const).map((f) => (
            <button key={f} type="button" aria-pressed={filter === f} onClick={() => { setFilter(f); setPage(0); }}>
              {f[0]?.toUpperCase()}{f.slice(1)} <span className="count">{counts[f]}</span>
            </button>
          ))}
        </div>
        {can(s, 'admin') && <Link className="button primary" to={`/${tenant}/keys`}>Add machine</Link>}
      </div>
      {q.isPending && <Loading what="machines" />}
      <ErrorText error={q.error} />
      {q.data && (
        <>
          <table className="grid">
            <thead>
              <tr><th scope="col">Machine</th><th scope="col">Owner</th><th scope="col">Addresses</th><th scope="col">Status</th><th scope="col">Relay RTT</th><th scope="col">Routes</th>{mayChange && <th scope="col"><span className="sr-only">Actions</span></th>}</tr>
            </thead>
            <tbody>
              {shown.slice(cur * PAGE, cur * PAGE + PAGE).map((n) => (
                <tr key={n.id} data-node={n.id}>
                  <td>
                    <div className="strong">{n.name}</div>
                    <div className="muted small sub">{n.hostname !== n.name && <span title="host name">{n.hostname}</span>}{os(n) && <span>{os(n)}</span>}</div>
                    {n.expired && <span className="badge warn">expired</span>}
                  </td>
                  <td>{n.user && <div>{n.user}</div>}{n.tags.map((t) => <span key={t} className="badge">{t}</span>)}</td>
                  <td className="mono small"><div>{n.ipv4 ?? ''}</div><div>{n.ipv6 ?? ''}</div></td>
                  <td><Status online={n.online} /><div className="muted small" title={n.last_seen ?? ''}>{n.online ? '' : `seen ${ago(n.last_seen)}`}</div></td>
                  <td className="num">{rtt(n.relay_rtt_ms)}</td>
                  <td className="small">
                    {n.exit_node && <span className="badge ok">exit node</span>}
                    {n.announced_routes.filter((r) => r !== '0.0.0.0/0' && r !== '::/0').map((r) => (
                      <div key={r} className="mono">{r} <span className="muted">{n.primary_routes.includes(r) ? 'primary' : n.approved_routes.includes(r) ? 'approved' : 'awaiting approval'}</span></div>
                    ))}
                  </td>
                  {mayChange && (
                    <td className="row-actions">
                      <button type="button" onClick={() => open({ kind: 'rename', node: n })} aria-label={`Rename ${n.name}`}>Rename</button>
                      <button type="button" onClick={() => open({ kind: 'expire', node: n })} aria-label={`Expire ${n.name}`} disabled={n.expired}>Expire</button>
                      <button type="button" className="danger" onClick={() => open({ kind: 'delete', node: n })} aria-label={`Delete ${n.name}`}>Delete</button>
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
          {shown.length === 0 && <p className="empty">{nodes.length === 0 ? 'No machines yet. Create an auth key on the Keys page and run larktun up with it.' : 'No machine matches.'}</p>}
          <Pager page={cur} pages={pages} onPage={setPage} />
        </>
      )}
      <Modal open={action?.kind === 'rename'} title={`Rename ${action?.node.name ?? ''}`} onClose={() => setAction(null)}>
        <form onSubmit={(e: FormEvent) => { e.preventDefault(); if (action) change.mutate(action); }}>
          <label>New name<input value={newName} onChange={(e) => setNewName(e.target.value)} required pattern="[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?" title="lowercase letters, digits and dashes" autoFocus /></label>
          <ErrorText error={change.error} />
          <div className="actions">
            <button type="button" onClick={() => setAction(null)}>Cancel</button>
            <button type="submit" className="primary" disabled={change.isPending}>Rename</button>
          </div>
        </form>
      </Modal>
      <Confirm
        open={action?.kind === 'expire'} title={`Expire ${action?.node.name ?? ''}?`} action="Expire" danger busy={change.isPending} error={change.error}
        body={<p>The machine loses access now and must log in again with <code>larktun up</code>.</p>}
        onConfirm={() => action && change.mutate(action)} onClose={() => setAction(null)}
      />
      <Confirm
        open={action?.kind === 'delete'} title={`Delete ${action?.node.name ?? ''}?`} action="Delete" danger busy={change.isPending} error={change.error}
        body={<p>The machine is removed from the network, with its addresses and route approvals.</p>}
        onConfirm={() => action && change.mutate(action)} onClose={() => setAction(null)}
      />
    </section>
  );
}
