# Sends 1372-byte UDP datagrams (1400-byte IPv4 packets) to DST:PORT for SECONDS,
# ignoring ENOBUFS from a full TUN queue, and prints {"sent": N}.
import json, socket, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"\x5a" * 1372
end = time.time() + seconds
sent = 0
while time.time() < end:
    for _ in range(2000):
        try:
            s.sendto(payload, (dst, port))
            sent += 1
        except OSError:
            pass
print(json.dumps({"sent": sent}))
