import { useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { useParams } from 'react-router';
import { api, enc, type ConsoleUser } from '../api';
import { ago, when } from '../format';
import { can, useSession } from '../session';
import { Confirm, ErrorText, Loading } from '../ui';

interface NetUser { id: number; name: string; email: string | null; display_name: string | null; created_at: string }

export function Users() {
  const { tenant = '' } = useParams();
  const s = useSession();
  const qc = useQueryClient();
  const mayAdmin = can(s, 'admin');
  const cu = useQuery({ queryKey: ['console-users', tenant], queryFn: () => api<{ console_users: ConsoleUser[] }>('GET', `/tenants/${enc(tenant)}/console-users`) });
  const nu = useQuery({ queryKey: ['users', tenant], queryFn: () => api<{ users: NetUser[] }>('GET', `/tenants/${enc(tenant)}/users`) });
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [role, setRole] = useState('operator');
  const [email, setEmail] = useState('');
  const [del, setDel] = useState<ConsoleUser | null>(null);
  const create = useMutation({
    mutationFn: () => api<ConsoleUser>('POST', `/tenants/${enc(tenant)}/console-users`, { username: username.trim(), password, role, ...(email.trim() ? { email: email.trim() } : {}) }),
    onSuccess: () => {
      setUsername('');
      setPassword('');
      setEmail('');
      void qc.invalidateQueries({ queryKey: ['console-users', tenant] });
    },
  });
  const remove = useMutation({
    mutationFn: (u: ConsoleUser) => api('DELETE', `/tenants/${enc(tenant)}/console-users/${u.id}`),
    onSuccess: () => {
      setDel(null);
      void qc.invalidateQueries({ queryKey: ['console-users', tenant] });
    },
  });

  return (
    <section aria-label="Users">
      <h2>Console users</h2>
      <p className="muted small">People who sign in to this console. Roles match API-key roles: admin (everything), operator (machines and routes), auditor (read, keys and logs).</p>
      {cu.isPending && <Loading what="console users" />}
      <ErrorText error={cu.error} />
      {cu.data && (
        <table className="grid">
          <thead><tr><th scope="col">Username</th><th scope="col">Email</th><th scope="col">Sign-in</th><th scope="col">Role</th><th scope="col">Last sign-in</th><th scope="col">Created</th>{mayAdmin && <th scope="col"><span className="sr-only">Actions</span></th>}</tr></thead>
          <tbody>
            {cu.data.console_users.map((u) => (
              <tr key={u.id}>
                <td className="strong">{u.username}</td>
                <td>{u.email ?? ''}</td>
                <td>{u.source === 'sso' ? <span className="badge" title="Signs in at the tenant's identity provider; no password">SSO</span> : <span className="muted small">password</span>}</td>
                <td><span className="badge">{u.role}</span></td>
                <td className="small">{ago(u.last_signin_at)}</td>
                <td className="small">{when(u.created_at)} <span className="muted">by {u.created_by}</span></td>
                {mayAdmin && <td className="row-actions"><button type="button" className="danger" onClick={() => { remove.reset(); setDel(u); }} aria-label={`Delete ${u.username}`}>Delete</button></td>}
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {mayAdmin && (
        <form className="inline-form" onSubmit={(e: FormEvent) => { e.preventDefault(); create.mutate(); }} aria-label="Add a console user">
          <h3 className="small-h">Add a console user</h3>
          <label>Username<input value={username} onChange={(e) => setUsername(e.target.value)} required pattern="[A-Za-z0-9._@\-]{1,64}" autoComplete="off" /></label>
          <label>Password<input type="password" value={password} onChange={(e) => setPassword(e.target.value)} required minLength={10} maxLength={256} autoComplete="new-password" /></label>
          <label>Email <span className="muted small">(optional, for SSO)</span><input type="email" value={email} onChange={(e) => setEmail(e.target.value)} maxLength={254} autoComplete="off" /></label>
          <label>Role
            <select value={role} onChange={(e) => setRole(e.target.value)}>
              <option value="admin">admin</option><option value="operator">operator</option><option value="auditor">auditor</option>
            </select>
          </label>
          <button type="submit" className="primary" disabled={create.isPending}>Add user</button>
          <ErrorText error={create.error} />
        </form>
      )}
      <h2>Network users</h2>
      <p className="muted small">Owners of machines and the names the policy refers to.</p>
      {nu.isPending && <Loading what="users" />}
      <ErrorText error={nu.error} />
      {nu.data && (
        <table className="grid">
          <thead><tr><th scope="col">Name</th><th scope="col">Email</th><th scope="col">Display name</th><th scope="col">Created</th></tr></thead>
          <tbody>
            {nu.data.users.map((u) => (
              <tr key={u.id}><td className="strong">{u.name}</td><td>{u.email ?? ''}</td><td>{u.display_name ?? ''}</td><td className="small">{when(u.created_at)}</td></tr>
            ))}
          </tbody>
        </table>
      )}
      {nu.data && nu.data.users.length === 0 && <p className="empty">No network users yet.</p>}
      <Confirm open={del !== null} title={`Delete ${del?.username ?? ''}?`} action="Delete" danger busy={remove.isPending} error={remove.error}
        body={<p>Their console sessions end now.</p>} onConfirm={() => del && remove.mutate(del)} onClose={() => setDel(null)} />
    </section>
  );
}
