// Compatibility re-exports: the UDP layer lives in ./io/ (batched addon path
// and the node:dgram fallback behind one interface).
export { BindError, BUF_SIZE, type UdpSock, type DatagramHandler, type UdpIo, type UdpIoStatus } from './io/index.js';
export { SEND_RING } from './io/dgram.js';
