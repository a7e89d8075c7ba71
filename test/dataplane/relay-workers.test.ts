// The relay engine's whole loopback suite (relay.test.ts) again, with the relay
// on two packet threads: the main thread and one worker, each with its own
// SO_REUSEPORT socket, so the simulated nodes are spread over both by the
// kernel and every cross-thread path (shared sessions, endpoints, flow
// tables, summed counters) is exercised by the same assertions.
process.env.LARKTUN_TEST_RELAY_WORKERS = '2';
await import('./relay.test.js');
