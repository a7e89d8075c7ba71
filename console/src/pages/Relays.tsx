import { useQuery } from '@tanstack/react-query';
import { Link, useParams } from 'react-router';
import { usePoll } from '../live';
import { api, enc, type RelayInfo, type TenantRelayInfo } from '../api';
import { ago, when } from '../format';
import { ErrorText, Loading } from '../ui';

function Live({ live, lastReport }: { live: boolean; lastReport: string | null }) {
  return (
    <span className={`status ${live ? 'on' : 'off'}`} title={lastReport ? `last report ${when(lastReport)}` : 'never reported'}>
      <span className="dot" aria-hidden="true" />{live ? 'Live' : 'Not live'}
    </span>
  );
}

const nobody = <p className="empty">No relays yet. Register one with <code>larktun admin relays create NAME HOST:PORT</code> (operator key) and start <code>larktund --relay</code> with its token.</p>;

/** Operator: every relay, shared and dedicated, with each tenant's links on it. */
export function OperatorRelays() {
  const q = useQuery({ queryKey: ['relays'], queryFn: () => api<{ relays: RelayInfo[] }>('GET', '/relays'), refetchInterval: 5_000 });
  return (
    <section aria-label="Relays">
      {q.isPending && <Loading what="relays" />}
      <ErrorText error={q.error} />
      {q.data && q.data.relays.length === 0 && nobody}
      {q.data && q.data.relays.length > 0 && (
        <table className="grid">
          <thead>
            <tr><th scope="col">Relay</th><th scope="col">Serves</th><th scope="col">State</th><th scope="col">Last report</th><th scope="col">Endpoints</th><th scope="col">Links per tenant</th></tr>
          </thead>
          <tbody>
            {q.data.relays.map((r) => (
              <tr key={r.id} data-relay={r.name}>
                <td><div className="strong">{r.name}</div><div className="muted small">id {r.id} · since {when(r.created_at)}</div></td>
                <td>{r.tenant ? <><span className="badge warn">dedicated</span> <Link to={`/${r.tenant}/relays`}>{r.tenant}</Link></> : <span className="badge">shared</span>}</td>
                <td><Live live={r.live} lastReport={r.last_report} /></td>
                <td className="small" title={r.last_report ?? ''}>{ago(r.last_report)}</td>
                <td className="mono small">{r.endpoints.map((e) => <div key={e}>{e}</div>)}</td>
                <td className="small">
                  {r.tenants.length === 0 && <span className="muted">no links</span>}
                  {r.tenants.map((t) => (
                    <div key={t.tenant ?? '?'} data-links={`${t.tenant}:${t.links}`}>
                      {t.tenant ? <Link to={`/${t.tenant}/machines`}>{t.tenant}</Link> : '?'}: {t.links} {t.links === 1 ? 'link' : 'links'}
                      <span className="muted"> · node seen {ago(t.last_seen)}</span>
                    </div>
                  ))}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

/** Tenant: the relays serving it (shared ones and its own), with only its own links. */
export function TenantRelays() {
  const { tenant = '' } = useParams();
  const poll = usePoll();
  const q = useQuery({
    queryKey: ['relays', tenant],
    queryFn: () => api<{ relays: TenantRelayInfo[] }>('GET', `/tenants/${enc(tenant)}/relays`),
    refetchInterval: Math.min(poll, 10_000),
  });
  // The relay every machine homes on: the daemon's homeRelay() order (live, then dedicated, then lowest id).
  const rank = (r: TenantRelayInfo): number => (r.live ? 0 : 2) + (r.dedicated ? 0 : 1);
  const home = [...(q.data?.relays ?? [])].sort((a, b) => rank(a) - rank(b) || a.id - b.id)[0]?.id;
  return (
    <section aria-label="Relays">
      <p className="muted">Every machine has a link to each relay below; all of them use the same relay (marked in use: a live one first, a dedicated one before a shared one), and move together when it stops reporting.</p>
      {q.isPending && <Loading what="relays" />}
      <ErrorText error={q.error} />
      {q.data && q.data.relays.length === 0 && nobody}
      {q.data && q.data.relays.length > 0 && (
        <table className="grid">
          <thead>
            <tr><th scope="col">Relay</th><th scope="col">Kind</th><th scope="col">State</th><th scope="col">Last report</th><th scope="col">Endpoints</th><th scope="col" className="num">Links</th><th scope="col">A machine last seen</th></tr>
          </thead>
          <tbody>
            {q.data.relays.map((r) => (
              <tr key={r.id} data-relay={r.name}>
                <td><div className="strong">{r.name}</div>{home === r.id && <span className="badge ok">in use</span>}</td>
                <td>{r.dedicated ? <span className="badge warn">dedicated</span> : <span className="badge">shared</span>}</td>
                <td><Live live={r.live} lastReport={r.last_report} /></td>
                <td className="small" title={r.last_report ?? ''}>{ago(r.last_report)}</td>
                <td className="mono small">{r.endpoints.map((e) => <div key={e}>{e}</div>)}</td>
                <td className="num" data-links={r.links}>{r.links}</td>
                <td className="small" title={r.last_seen ?? ''}>{ago(r.last_seen)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
