// /login/:id — the link `larktun up` (without an auth key) prints. A signed-in
// user of the machine's tenant sees what asks to join (name, requested tags, key
// fingerprint, where the request came from, how long the link lasts) and approves
// or rejects it; approved, the machine joins as that user. Everything shown is
// rendered as text.
import { useEffect, useState } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { Link, Navigate, useLocation, useParams } from 'react-router';
import { api, ApiError, enc, type NodeLogin } from '../api';
import { useSessionQuery } from '../Shell';
import { Confirm, ErrorText } from '../ui';
import { can } from '../session';

function useCountdown(until: string | undefined): number | null {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!until) return;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [until]);
  return until ? Math.max(0, Math.floor((Date.parse(until) - now) / 1000)) : null;
}

const mmss = (s: number) => `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;

export function NodeLoginPage() {
  const { id = '' } = useParams();
  const loc = useLocation();
  const session = useSessionQuery();
  const s = session.data;
  useEffect(() => {
    document.title = 'Approve a machine · Larktun';
  }, []);
  if (!s) return <Navigate to="/signin" replace state={{ from: loc.pathname }} />;
  return (
    <main className="signin login-approve" id="main">
      <section className="panel" aria-labelledby="login-title">
        <div className="brand big"><span className="logo" aria-hidden="true">L</span> Larktun</div>
        <h1 id="login-title">A machine asks to join</h1>
        {s.kind === 'operator' || !s.tenant
          ? <p className="error" role="alert">A machine joins as the user who approves it: sign in as a user of the machine's tenant to approve it (the operator key can approve through the Admin API, naming the user).</p>
          : <LoginDetails id={id} tenant={s.tenant} username={s.username ?? ''} mayDecide={can(s, 'nodes')} />}
      </section>
    </main>
  );
}

function LoginDetails({ id, tenant, username, mayDecide }: { id: string; tenant: string; username: string; mayDecide: boolean }) {
  const qc = useQueryClient();
  const path = `/tenants/${enc(tenant)}/node-logins/${enc(id)}`;
  // Refreshed while pending: another user may decide it meanwhile.
  const q = useQuery({ queryKey: ['node-login', tenant, id], queryFn: () => api<NodeLogin>('GET', path), refetchInterval: (qq) => (qq.state.data?.state === 'pending' ? 5000 : false) });
  const [ask, setAsk] = useState<'approve' | 'reject' | null>(null);
  const decide = useMutation({
    mutationFn: (what: 'approve' | 'reject') => api<NodeLogin>('POST', `${path}/${what}`, {}),
    onSuccess: (l) => {
      qc.setQueryData(['node-login', tenant, id], l);
      setAsk(null);
    },
  });
  const left = useCountdown(q.data?.expires_at);
  if (q.isPending) return <p className="muted" role="status">Loading the login…</p>;
  if (q.isError) {
    const e = q.error;
    if (e instanceof ApiError && e.code === 'login_expired') return <p className="error" role="alert">This login link has expired. Run <code>larktun up</code> again on the machine for a new one.</p>;
    if (e instanceof ApiError && e.status === 404) return <p className="error" role="alert">No such login in tenant {tenant}. The link may be for another tenant, or mistyped.</p>;
    return <ErrorText error={e} />;
  }
  const l = q.data;
  const expired = l.state === 'pending' && left === 0;
  const state = expired ? 'expired' : l.state;
  return (
    <>
      <dl className="facts">
        <dt>Machine</dt><dd className="strong" data-testid="machine-name">{l.machine_name}</dd>
        <dt>Tenant</dt><dd>{l.tenant}</dd>
        <dt>Requested tags</dt>
        <dd data-testid="requested-tags">{l.requested_tags.length ? l.requested_tags.map((t) => <span key={t} className="badge">{t}</span>) : <span className="muted">none (the machine will be yours)</span>}</dd>
        <dt>Key fingerprint</dt><dd className="mono small" data-testid="key-fingerprint">{l.key_fingerprint}</dd>
        <dt>Requested from</dt><dd className="mono small">{l.source_addr}</dd>
        {l.os && <><dt>System</dt><dd>{l.os}{l.version ? ` · larktund ${l.version}` : ''}</dd></>}
        {l.routes.length > 0 && <><dt>Routes offered</dt><dd className="mono small">{l.routes.join(', ')}</dd></>}
        <dt>Link expires</dt>
        <dd data-testid="expiry">{state === 'pending' && left !== null ? <span title={l.expires_at}>in {mmss(left)}</span> : <span className="muted">{new Date(l.expires_at).toLocaleString()}</span>}</dd>
      </dl>
      {state === 'pending' && (mayDecide ? (
        <>
          <p className="muted small">Approve only a machine you are setting up now: compare the key fingerprint with the machine if in doubt. Approved, it joins as <strong>{username}</strong>.</p>
          <div className="actions">
            <button type="button" className="danger" onClick={() => { decide.reset(); setAsk('reject'); }}>Reject</button>
            <button type="button" className="primary" onClick={() => { decide.reset(); setAsk('approve'); }}>Approve</button>
          </div>
        </>
      ) : <p className="error" role="alert">Your role may look at this login but not approve it: ask an admin or operator of {l.tenant}.</p>)}
      {state !== 'pending' && <Outcome l={l} state={state} />}
      <Confirm
        open={ask !== null}
        title={ask === 'approve' ? `Approve ${l.machine_name}?` : `Reject ${l.machine_name}?`}
        body={ask === 'approve'
          ? <p>{l.machine_name} joins tenant {l.tenant} as {username}{l.requested_tags.length ? `, tagged ${l.requested_tags.join(', ')}` : ''}.</p>
          : <p>The waiting <code>larktun up</code> on {l.machine_name} ends with an error; this link cannot be used again.</p>}
        action={ask === 'approve' ? 'Approve' : 'Reject'}
        danger={ask === 'reject'}
        busy={decide.isPending}
        error={decide.error}
        onConfirm={() => ask && decide.mutate(ask)}
        onClose={() => setAsk(null)}
      />
    </>
  );
}

function Outcome({ l, state }: { l: NodeLogin; state: string }) {
  if (state === 'approved' || state === 'used') {
    return (
      <p className="ok-text" role="status" data-testid="outcome">
        Approved{l.decided_by ? ` by ${l.decided_by.replace(/^user:/, '')}` : ''}: {l.node ? l.node.name : l.machine_name} {state === 'used' ? 'has joined' : 'is joining'} the network.{' '}
        <Link to={`/${l.tenant}/machines`}>Machines</Link>
      </p>
    );
  }
  if (state === 'rejected') return <p className="error" role="status" data-testid="outcome">Rejected{l.decided_by ? ` by ${l.decided_by.replace(/^user:/, '')}` : ''}: {l.machine_name} was not let in.</p>;
  return <p className="error" role="status" data-testid="outcome">This login link has expired. Run <code>larktun up</code> again on the machine for a new one.</p>;
}
