import { useMemo, useState } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { useParams } from 'react-router';
import { usePoll } from '../live';
import { api, enc, type ExitNodeEntry, type NodeInfo, type RouteEntry } from '../api';
import { ago, rtt } from '../format';
import { can, useSession } from '../session';
import { Confirm, ErrorText, Loading, Status } from '../ui';

const STATE: Record<string, string> = {
  primary: 'Primary', standby: 'Standby', offline: 'Offline', not_approved: 'Awaiting approval', not_advertised: 'Approved, not advertised', expired: 'Expired',
};

type Change = { node: number; nodeName: string; prefix: string; approve: boolean; exit?: boolean } | null;

export function RoutesPage() {
  const { tenant = '' } = useParams();
  const poll = usePoll();
  const s = useSession();
  const qc = useQueryClient();
  const q = useQuery({
    queryKey: ['routes', tenant],
    queryFn: () => api<{ routes: RouteEntry[]; exit_nodes: ExitNodeEntry[] }>('GET', `/tenants/${enc(tenant)}/routes`),
    refetchInterval: poll,
  });
  const [search, setSearch] = useState('');
  const [filter, setFilter] = useState<'all' | 'approved' | 'pending'>('all');
  const [pending, setPending] = useState<Change>(null);
  const mayChange = can(s, 'nodes');

  const change = useMutation({
    mutationFn: async (c: NonNullable<Change>) => {
      const path = `/tenants/${enc(tenant)}/nodes/${c.node}`;
      const n = await api<NodeInfo>('GET', path);
      const targets = c.exit ? ['0.0.0.0/0', '::/0'] : [c.prefix];
      const next = c.approve ? [...new Set([...n.approved_routes, ...targets])] : n.approved_routes.filter((r) => !targets.includes(r));
      return api('POST', `${path}/routes`, { approved: next });
    },
    onSuccess: () => {
      setPending(null);
      void qc.invalidateQueries({ queryKey: ['routes', tenant] });
      void qc.invalidateQueries({ queryKey: ['nodes', tenant] });
    },
  });

  const routes = useMemo(() => {
    const needle = search.trim().toLowerCase();
    return (q.data?.routes ?? [])
      .filter((r) => !needle || r.prefix.includes(needle) || r.routers.some((x) => x.node.toLowerCase().includes(needle)))
      .filter((r) => filter === 'all' || (filter === 'approved' ? r.routers.some((x) => x.approved) : r.routers.some((x) => x.advertised && !x.approved)));
  }, [q.data, search, filter]);

  const ask = (c: NonNullable<Change>) => {
    change.reset();
    setPending(c);
  };

  return (
    <section aria-label="Routes">
      <div className="toolbar">
        <label className="search">
          <span className="sr-only">Search routes</span>
          <input type="search" placeholder="Search by prefix or machine" value={search} onChange={(e) => setSearch(e.target.value)} />
        </label>
        <div className="segmented" role="group" aria-label="Show">
          {(['all', 'approved', 'pending'] as const).map((f) => (
            <button key={f} type="button" aria-pressed={filter === f} onClick={() => setFilter(f)}>{f === 'pending' ? 'Awaiting approval' : f[0]?.toUpperCase() + f.slice(1)}</button>
          ))}
        </div>
      </div>
      {q.isPending && <Loading what="routes" />}
      <ErrorText error={q.error} />
      {q.data && (
        <>
          <h2>Subnet routes</h2>
          {routes.length === 0 && <p className="empty">{q.data.routes.length ? 'No route matches.' : 'No machine advertises a subnet route. Run larktun up --advertise-routes=… on a router.'}</p>}
          {routes.map((r) => (
            <article key={r.prefix} className="card" aria-label={`Route ${r.prefix}`}>
              <header className="card-head">
                <span className="mono strong">{r.prefix}</span>
                <span className="muted small">{r.primary ? `primary: ${r.primary} since ${ago(r.primary_since)}` : 'no primary (no approved router online)'}</span>
              </header>
              <table className="grid compact">
                <thead><tr><th scope="col">Router</th><th scope="col">State</th><th scope="col">Online</th><th scope="col">Relay RTT</th><th scope="col">Last seen</th>{mayChange && <th scope="col"><span className="sr-only">Approval</span></th>}</tr></thead>
                <tbody>
                  {r.routers.map((x) => (
                    <tr key={x.node_id} data-router={`${x.node}|${r.prefix}`}>
                      <td className="strong">{x.node}</td>
                      <td><span className={`badge ${x.state === 'primary' ? 'ok' : x.state === 'not_approved' ? 'warn' : ''}`}>{STATE[x.state]}</span></td>
                      <td><Status online={x.online} /></td>
                      <td className="num">{rtt(x.relay_rtt_ms)}</td>
                      <td className="small">{ago(x.last_seen)}</td>
                      {mayChange && (
                        <td className="row-actions">
                          {x.approved
                            ? <button type="button" className="danger" onClick={() => ask({ node: x.node_id, nodeName: x.node, prefix: r.prefix, approve: false })}>Revoke</button>
                            : <button type="button" className="primary" onClick={() => ask({ node: x.node_id, nodeName: x.node, prefix: r.prefix, approve: true })}>Approve</button>}
                        </td>
                      )}
                    </tr>
                  ))}
                </tbody>
              </table>
            </article>
          ))}
          <h2>Exit nodes</h2>
          {q.data.exit_nodes.length === 0 && <p className="empty">No machine offers itself as an exit node (larktun up --advertise-exit-node).</p>}
          {q.data.exit_nodes.length > 0 && (
            <table className="grid">
              <thead><tr><th scope="col">Machine</th><th scope="col">Advertises</th><th scope="col">Approval</th><th scope="col">Online</th><th scope="col">Relay RTT</th>{mayChange && <th scope="col"><span className="sr-only">Approval</span></th>}</tr></thead>
              <tbody>
                {q.data.exit_nodes.map((x) => (
                  <tr key={x.node_id} data-exit={x.node}>
                    <td className="strong">{x.node}</td>
                    <td className="mono small">{x.advertised.join(', ')}</td>
                    <td><span className={`badge ${x.approved ? 'ok' : 'warn'}`}>{x.approved ? 'Approved' : 'Awaiting approval'}</span></td>
                    <td><Status online={x.online} /></td>
                    <td className="num">{rtt(x.relay_rtt_ms)}</td>
                    {mayChange && (
                      <td className="row-actions">
                        {x.approved
                          ? <button type="button" className="danger" onClick={() => ask({ node: x.node_id, nodeName: x.node, prefix: 'exit', approve: false, exit: true })}>Revoke</button>
                          : <button type="button" className="primary" onClick={() => ask({ node: x.node_id, nodeName: x.node, prefix: 'exit', approve: true, exit: true })}>Approve</button>}
                      </td>
                    )}
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
      <Confirm
        open={pending !== null}
        title={pending ? `${pending.approve ? 'Approve' : 'Revoke'} ${pending.exit ? 'exit node' : pending.prefix} on ${pending.nodeName}?` : ''}
        action={pending?.approve ? 'Approve' : 'Revoke'} danger={!pending?.approve} busy={change.isPending} error={change.error}
        body={<p>{pending?.exit ? 'Both 0.0.0.0/0 and ::/0 change together. ' : ''}{pending?.approve ? 'Peers allowed by the policy will route this traffic through the machine.' : 'Peers stop routing this traffic through the machine; a standby takes over if there is one.'}</p>}
        onConfirm={() => pending && change.mutate(pending)} onClose={() => setPending(null)}
      />
    </section>
  );
}
