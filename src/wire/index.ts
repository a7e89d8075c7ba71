// src/wire: the subnetra v1 link protocol (byte-compatible), used by the data
// plane (WireTx/WireRx per peer), the daemon and the offline debug CLI.
export {
  WIRE_VERSION,
  HEADER_LEN,
  TAG_LEN,
  MAX_PLAINTEXT,
  OVERHEAD,
  MIN_DATAGRAM,
  MAX_DATAGRAM,
  FLAG_KEEPALIVE,
  MIN_EPOCH,
  MAX_EPOCH,
  MIN_NODE_ID,
  MAX_NODE_ID,
  MAX_SEQ,
  KEY_LEN,
  PSK_LEN,
} from './constants.js';
export { linkKey, sessionKey } from './kdf.js';
export { headerKeyId, decodeHeader, unmaskHeader, type WireHeader } from './header.js';
export { ReplayWindow, REPLAY_WINDOW } from './replay.js';
export { WireTx, type WireTxOptions } from './tx.js';
export { WireRx, RxCode, RX_CODE_NAMES, type WireRxOptions } from './rx.js';
export { wallClockEpoch } from './validate.js';
export { newTxShared, newRxShared, TX_SHARED_WORDS, RX_SHARED_WORDS } from './shared.js';
export { lock, unlock, sharedWords } from './lock.js';
