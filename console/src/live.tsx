import { createContext, useContext, useEffect, useState } from 'react';
import { useQueryClient } from '@tanstack/react-query';
import { enc } from './api';

/** True while the tenant's event stream is connected (pages then poll only as a fallback). */
export const LiveContext = createContext(false);
export const useLive = (): boolean => useContext(LiveContext);

/** Polling interval for a page's data: slow while live events arrive, 10 s without. */
export function usePoll(): number {
  return useLive() ? 60_000 : 10_000;
}

/**
 * Subscribes to GET /api/v1/tenants/{t}/events (Server-Sent Events, the session
 * cookie authenticates it) and refetches the tenant's data on every change.
 */
export function useTenantEvents(tenant: string): boolean {
  const qc = useQueryClient();
  const [live, setLive] = useState(false);
  useEffect(() => {
    if (!tenant || typeof EventSource === 'undefined') return;
    const es = new EventSource(`/api/v1/tenants/${enc(tenant)}/events`);
    es.addEventListener('hello', () => setLive(true));
    es.addEventListener('changed', () => {
      void qc.invalidateQueries({ predicate: (q) => q.queryKey[1] === tenant });
    });
    es.onerror = () => setLive(false);
    return () => {
      es.close();
      setLive(false);
    };
  }, [tenant, qc]);
  return live;
}
