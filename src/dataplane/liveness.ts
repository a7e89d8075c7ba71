// Liveness timing shared by the managed node (keepalives), the relay (health
// reports) and the control server (verdicts): how fast a dead path is noticed.
// Only timing; the wire format is subnetra v1 unchanged (a keepalive is an
// ordinary keepalive datagram, just sent more often by routers).

/** A managed node's keepalive interval towards its relay. */
export const KEEPALIVE_MS = 1000;
/** A node with approved routes (subnet router, exit node) keepalives four times a second. */
export const ROUTER_KEEPALIVE_MS = 250;

/** A node not heard by its relay for longer than this is unseen (offline). */
export const NODE_UNSEEN_MS = 3000;
/**
 * A router not heard for longer than this is unseen (four keepalives in a row
 * lost): its primary routes fail over.
 */
export const ROUTER_UNSEEN_MS = 1000;
/**
 * Hysteresis: a router reported unseen counts as seen again only once it was
 * heard within this many ms (between this and ROUTER_UNSEEN_MS the previous
 * verdict holds), so a path that delivers only every other keepalive burst
 * does not toggle the verdict.
 */
export const ROUTER_SEEN_MS = 500;

/** The relay's routine health report period. */
export const HEALTH_REPORT_MS = 1000;
/**
 * The relay checks its route-carrying links this often and reports at once
 * when one crosses ROUTER_UNSEEN_MS (or comes back), instead of waiting for
 * the routine report.
 */
export const ROUTER_CHECK_MS = 100;
