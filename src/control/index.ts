// Public API of the control server module.
export { startServer, parseListen, readOperatorKey, operatorKeyPath, SERVER_VERSION } from './server.js';
export type { ServerOptions, RunningServer } from './server.js';
export { verifyChain, auditHash, canonicalJson, GENESIS_HASH } from './audit.js';
export type { ChainEntry, VerifyResult } from './audit.js';
export type { NetworkMap, MapPeer } from './netmap.js';
