import { useEffect, useState, type FormEvent } from 'react';
import { keepPreviousData, useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { Link, useParams } from 'react-router';
import { usePoll } from '../live';
import { api, enc, type NodeInfo, type NodePage } from '../api';
import { ago, rtt } from '../format';
import { can, useSession } from '../session';
import { Confirm, ErrorText, Loading, Modal, Pager, Status, useSettled } from '../ui';

const PAGE = 50;
type Filter = 'all' | 'online' | 'offline';
type Action = { kind: 'rename' | 'tags' | 'expire' | 'delete'; node: NodeInfo } | null;

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
  const [search, setSearch] = useState('');
  const [filter, setFilter] = useState<Filter>('all');
  const [page, setPage] = useState(0);
  const [action, setAction] = useState<Action>(null);
  const [newName, setNewName] = useState('');
  const [newTags, setNewTags] = useState<string[]>([]);
  const needle = useSettled(search.trim(), 200);
  // The server pages, searches and filters: the browser holds one page of 50.
  const qs = new URLSearchParams({ limit: String(PAGE), offset: String(page * PAGE), status: filter });
  if (needle) qs.set('q', needle);
  const q = useQuery({
    queryKey: ['nodes', tenant, qs.toString()],
    queryFn: () => api<NodePage>('GET', `/tenants/${enc(tenant)}/nodes?${qs.toString()}`),
    refetchInterval: poll,
    placeholderData: keepPreviousData,
  });
  const tags = useQuery({
    queryKey: ['tags', tenant],
    queryFn: () => api<{ tags: string[] }>('GET', `/tenants/${enc(tenant)}/tags`),
    enabled: action?.kind === 'tags',
  });

  const nodes = q.data?.nodes ?? [];
  const counts = q.data?.counts ?? { all: 0, online: 0, offline: 0 };
  const pages = Math.max(1, Math.ceil((q.data?.total ?? 0) / PAGE));
  const cur = Math.min(page, pages - 1);
  useEffect(() => {
    if (page > pages - 1) setPage(pages - 1);
  }, [page, pages]);

  const change = useMutation({
    mutationFn: async (a: NonNullable<Action>) => {
      const base = `/tenants/${enc(tenant)}/nodes/${a.node.id}`;
      if (a.kind === 'rename') return api('PATCH', base, { name: newName.trim() });
      if (a.kind === 'tags') return api('PUT', `${base}/tags`, { tags: newTags });
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
    setNewTags(a.node.tags);
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
              {nodes.map((n) => (
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
                      <button type="button" onClick={() => open({ kind: 'tags', node: n })} aria-label={`Edit tags of ${n.name}`}>Tags</button>
                      <button type="button" onClick={() => open({ kind: 'expire', node: n })} aria-label={`Expire ${n.name}`} disabled={n.expired}>Expire</button>
                      <button type="button" className="danger" onClick={() => open({ kind: 'delete', node: n })} aria-label={`Delete ${n.name}`}>Delete</button>
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
          {nodes.length === 0 && <p className="empty">{counts.all === 0 ? 'No machines yet. Create an auth key on the Keys page and run larktun up with it.' : 'No machine matches.'}</p>}
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
      <Modal open={action?.kind === 'tags'} title={`Tags of ${action?.node.name ?? ''}`} onClose={() => setAction(null)}>
        <form onSubmit={(e: FormEvent) => { e.preventDefault(); if (action) change.mutate(action); }} aria-label="Edit tags">
          {tags.isPending && <Loading what="the policy's tags" />}
          <ErrorText error={tags.error} />
          {tags.data && tags.data.tags.length === 0 && <p className="muted">The policy defines no tags. Add them under <code>tagOwners</code> on the Access controls page.</p>}
          {tags.data && (
            <fieldset className="tag-choices">
              <legend className="small-h">Tags the policy defines</legend>
              {tags.data.tags.map((t) => (
                <label key={t} className="check-label">
                  <input type="checkbox" checked={newTags.includes(t)} onChange={(e) => setNewTags(e.target.checked ? [...newTags, t].sort() : newTags.filter((x) => x !== t))} />
                  <span className="mono">{t}</span>
                </label>
              ))}
            </fieldset>
          )}
          {tags.data && newTags.filter((t) => !tags.data.tags.includes(t)).map((t) => (
            <p key={t} className="muted small">
              <span className="mono">{t}</span> is no longer in the policy&apos;s tagOwners: saving removes it.{' '}
              <button type="button" className="link" onClick={() => setNewTags(newTags.filter((x) => x !== t))}>Remove it</button>
            </p>
          ))}
          <p className="muted small">The policy&apos;s rules that name these tags apply to this machine from its next map on.</p>
          <ErrorText error={change.error} />
          <div className="actions">
            <button type="button" onClick={() => setAction(null)}>Cancel</button>
            <button type="submit" className="primary" disabled={change.isPending || !tags.data || newTags.some((t) => !tags.data.tags.includes(t)) || newTags.join(' ') === [...(action?.node.tags ?? [])].sort().join(' ')}>Save tags</button>
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
