import { createContext, useContext } from 'react';
import type { Session } from './api';

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error('useSession outside a signed-in page');
  return s;
}

/** What the session's role may do (mirrors the server's grants; the server decides). */
export function can(s: Session, what: 'nodes' | 'admin' | 'audit' | 'keys'): boolean {
  if (s.kind === 'operator') return true;
  switch (what) {
    case 'nodes': return s.role === 'admin' || s.role === 'operator';
    case 'admin': return s.role === 'admin';
    case 'audit':
    case 'keys': return s.role === 'admin' || s.role === 'auditor';
  }
}
