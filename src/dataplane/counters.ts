// Data-plane counters: every packet either moves (rx/tx/relay/keepalive) or is
// dropped for exactly one named reason. Plain numeric fields keep the hot path
// monomorphic; status and metrics read them by name.
import { RxCode } from '../wire/index.js';

export const COUNTER_HELP = {
  tun_rx_packets: 'packets read from the TUN device',
  tun_tx_packets: 'packets written to the TUN device',
  udp_rx_packets: 'authenticated datagrams received',
  udp_tx_packets: 'datagrams sent',
  udp_rx_bytes: 'bytes of authenticated datagrams received',
  udp_tx_bytes: 'bytes of datagrams sent',
  relay_packets: 'packets relayed from one peer to another',
  keepalive_rx: 'keepalives received',
  keepalive_tx: 'keepalives sent',
  endpoint_changes: 'times a peer was relearned at a new address or port',
  drop_unknown_peer: 'datagrams no configured peer could authenticate (unknown sender or junk)',
  drop_scan_limited: 'datagrams from an unlearned endpoint dropped untried: the budget for trying every key was spent (junk flood)',
  drop_malformed: 'datagrams too short, too long or with a bad header',
  drop_auth: 'datagrams that failed authentication',
  drop_replay: 'datagrams replayed or too old for the replay window',
  drop_old_epoch: 'datagrams from an older session epoch',
  drop_spoof: 'packets whose inner source is outside the peer allowed_src',
  drop_no_route: 'packets with no forwarding rule for their destination',
  drop_policy: 'packets matched by a drop rule',
  drop_filter: 'packets the packet filter (ACL) did not admit',
  drop_no_reflect: 'packets that would be sent back to the peer they came from',
  drop_oversized: 'packets larger than the link can carry',
  drop_no_endpoint: 'packets for a peer whose address is not known yet',
  drop_send_error: 'datagrams the kernel refused to send or TUN writes that failed',
  drop_not_ip: 'TUN or tunnel payloads that are not IPv4/IPv6',
  drop_tun_vnet: 'packets read from the TUN with a virtio_net_hdr (offload header) that does not describe them',
} as const;

export type CounterName = keyof typeof COUNTER_HELP;
export const COUNTER_NAMES = Object.keys(COUNTER_HELP) as CounterName[];

export class Counters {
  tun_rx_packets = 0;
  tun_tx_packets = 0;
  udp_rx_packets = 0;
  udp_tx_packets = 0;
  udp_rx_bytes = 0;
  udp_tx_bytes = 0;
  relay_packets = 0;
  keepalive_rx = 0;
  keepalive_tx = 0;
  endpoint_changes = 0;
  drop_unknown_peer = 0;
  drop_scan_limited = 0;
  drop_malformed = 0;
  drop_auth = 0;
  drop_replay = 0;
  drop_old_epoch = 0;
  drop_spoof = 0;
  drop_no_route = 0;
  drop_policy = 0;
  drop_filter = 0;
  drop_no_reflect = 0;
  drop_oversized = 0;
  drop_no_endpoint = 0;
  drop_send_error = 0;
  drop_not_ip = 0;
  drop_tun_vnet = 0;

  /** Counts a datagram the wire layer refused, under the drop reason its RxCode names. */
  rxDrop(code: number): void {
    switch (code) {
      case RxCode.OldEpoch:
        this.drop_old_epoch++;
        break;
      case RxCode.Replay:
        this.drop_replay++;
        break;
      case RxCode.AuthFail:
        this.drop_auth++;
        break;
      default:
        this.drop_malformed++;
    }
  }

  /** Copies every counter into `f[off .. off + COUNTER_NAMES.length]` (a packet worker publishing its totals). */
  writeTo(f: Float64Array, off: number): void {
    for (let i = 0; i < COUNTER_NAMES.length; i++) f[off + i] = this[COUNTER_NAMES[i]!];
  }

  /** Adds counters published with writeTo (summing the workers of one engine). */
  addFrom(f: Float64Array, off: number): void {
    for (let i = 0; i < COUNTER_NAMES.length; i++) this[COUNTER_NAMES[i]!] += f[off + i]!;
  }

  /** Adds another set (summing). */
  add(o: Counters): void {
    for (const k of COUNTER_NAMES) this[k] += o[k];
  }

  toJSON(): Record<CounterName, number> {
    const out = {} as Record<CounterName, number>;
    for (const k of COUNTER_NAMES) out[k] = this[k];
    return out;
  }
}
