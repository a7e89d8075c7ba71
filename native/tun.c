/*
 * larktun_tun: what JavaScript cannot do by itself, or not cheaply - open a
 * Linux TUN device (TUNSETIFF ioctl), set its offloads (TUNSETVNETHDRSZ,
 * TUNSETOFFLOAD), and read packets in batches into a ring the reader thread
 * publishes (readBatch: node's readSync costs about a microsecond of argument
 * handling per packet). Packets are written from JS on the file descriptor;
 * every byte is moved as it is, and all packet logic (virtio_net_hdr parsing, segmentation, coalescing, checksums)
 * lives in TypeScript (src/dataplane/offload.ts). Nothing else lives here.
 *
 *   open(name: string, opts?: { multiQueue?: boolean, offload?: boolean, offloadMask?: number })
 *     -> { fd: number, name: string, vnetHdr: boolean, offloads: number, note: string }
 *
 * With offload: the device is created with IFF_VNET_HDR (every read and write
 * starts with a 10-byte struct virtio_net_hdr) and TUNSETOFFLOAD is tried with
 * TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6|TUN_F_USO4|TUN_F_USO6 (UDP segmentation
 * offload, Linux >= 6.2; the kernel takes USO4 and USO6 only together), then
 * without USO, then TSO4 only, then CSUM only, then none (only the sets inside
 * offloadMask, default all five flags).
 * A kernel that refuses IFF_VNET_HDR gets a plain device (vnetHdr false).
 * `offloads` is the TUN_F_* mask in force; `note` says what was refused.
 *
 * attach (with multiQueue): add one more queue to a multi-queue device that
 * already exists (packet workers: one queue each). The device is never created
 * here (ENOENT when it is gone), the vnet header is taken as `offload` says
 * (the caller passes what the first queue got: TUNSETIFF sets the device's
 * flags from each attach), and exactly
 * `offloadMask` is set (what the first queue got; the offload features are the
 * device's, so a different mask would change them for every queue); any
 * refusal closes the new queue and throws.
 *
 *   readerFd(fd: number) -> number: a non-blocking duplicate for the reader thread (see below)
 *   readBatch(fd: number, data: Uint8Array, lens: Int32Array, ctrl: Int32Array,
 *             slots: number, slotSize: number, max: number, timeoutMs: number) -> number
 *
 * The TUN reader thread's loop body (src/dataplane/tun-worker.ts) over the
 * ring of src/dataplane/tun.ts: ctrl[0] counts packets written (only this
 * call stores it), ctrl[1] packets consumed; slot i is
 * data[i*slotSize, (i+1)*slotSize), its length lens[i]. Reads packets, one
 * read() each, into the free slots after ctrl[0] - at most `max` and never
 * into a slot not yet consumed - and publishes each with an atomic store of
 * ctrl[0], so a consumer that is awake sees it at once. It waits (poll, at
 * most timeoutMs) only for the first packet and returns as soon as the device
 * has no more to give: the caller wakes a sleeping consumer once per batch.
 * Returns the packets read: 0 when the wait timed out or the ring is full.
 * A packet the kernel fails to hand over (EINVAL, EFAULT: it is dropped
 * there) is counted in ctrl[4] when ctrl has that word, and reading goes on.
 * The fd must be non-blocking (readerFd). An error of the first read
 * throws (code EBADF, EBADFD, EIO, ...: the device is gone); an error after
 * some packets ends the batch and is met again on the next call.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <stdbool.h>
#include <stdint.h>
#include <poll.h>
#include <linux/if_tun.h>

/* Older UAPI headers lack the UDP segmentation offload flags (Linux 6.2). */
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

/* Throws an Error with `code`, `msg` and the errno value as .errno; returns NULL. */
static napi_value throw_coded(napi_env env, const char *code, const char *msg, int err) {
  napi_value code_v, msg_v, error, errno_v;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &msg_v);
  napi_create_error(env, code_v, msg_v, &error);
  napi_create_int32(env, err, &errno_v);
  napi_set_named_property(env, error, "errno", errno_v);
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_errno(napi_env env, const char *what, const char *name, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s %s: %s", what, name, strerror(err));
  return throw_coded(env, err == EPERM ? "EPERM" : err == ENOENT ? "ENOENT" : err == EBUSY ? "EBUSY" : "ETUN", msg, err);
}

static napi_value open_tun(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) {
    napi_throw_type_error(env, NULL, "open(name) needs an interface name");
    return NULL;
  }
  char name[IFNAMSIZ + 1];
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "interface name must be a string");
    return NULL;
  }
  if (len == 0 || len >= IFNAMSIZ) {
    napi_throw_range_error(env, NULL, "interface name must be 1 to 15 characters");
    return NULL;
  }
  int multi = 0;
  int offload = 0;
  int attach = 0;
  unsigned mask = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6;
  if (argc >= 2) {
    napi_valuetype t;
    napi_typeof(env, argv[1], &t);
    if (t == napi_object) {
      napi_value mq;
      if (napi_get_named_property(env, argv[1], "multiQueue", &mq) == napi_ok) {
        bool b = false;
        if (napi_get_value_bool(env, mq, &b) == napi_ok) multi = b;
      }
      napi_value off;
      if (napi_get_named_property(env, argv[1], "offload", &off) == napi_ok) {
        bool b = false;
        if (napi_get_value_bool(env, off, &b) == napi_ok) offload = b;
      }
      napi_value at;
      if (napi_get_named_property(env, argv[1], "attach", &at) == napi_ok) {
        bool b = false;
        if (napi_get_value_bool(env, at, &b) == napi_ok) attach = b;
      }
      napi_value m;
      if (napi_get_named_property(env, argv[1], "offloadMask", &m) == napi_ok) {
        uint32_t v;
        if (napi_get_value_uint32(env, m, &v) == napi_ok) mask = v;
      }
    }
  }

  if (attach && !multi) {
    napi_throw_type_error(env, NULL, "attach needs multiQueue");
    return NULL;
  }
  if (attach && if_nametoindex(name) == 0) return throw_errno(env, "cannot attach a queue to", name, ENOENT);
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) return throw_errno(env, "cannot open /dev/net/tun for", name, errno);
  struct ifreq ifr;
  char note[160] = "";
  int vnet = 0;
  unsigned offloads = 0;
  if (attach) {
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | (offload ? IFF_VNET_HDR : 0);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    /* The kernel refuses (EINVAL) a device that is not multi-queue. */
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
      int err = errno;
      close(fd);
      return throw_errno(env, "cannot attach a queue to", name, err);
    }
    if (offload) {
      int sz = 10;
      if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0 || ioctl(fd, TUNSETOFFLOAD, (unsigned long)mask) < 0) {
        int err = errno;
        close(fd);
        return throw_errno(env, "cannot set the offloads of the new queue of", name, err);
      }
      vnet = 1;
      offloads = mask;
    }
  } else if (offload) {
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | (multi ? IFF_MULTI_QUEUE : 0);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) == 0) {
      vnet = 1;
    } else if (errno == EINVAL) {
      snprintf(note, sizeof note, "kernel refused IFF_VNET_HDR (%s)", strerror(errno));
    } else {
      int err = errno;
      close(fd);
      return throw_errno(env, "cannot create TUN device", name, err);
    }
  }
  if (vnet && !attach) {
    int sz = 10; /* sizeof(struct virtio_net_hdr): no mergeable-buffer count */
    if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) {
      int err = errno;
      close(fd);
      return throw_errno(env, "cannot set the vnet header size of", name, err);
    }
    static const unsigned tries[] = {
      TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
      TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
      TUN_F_CSUM | TUN_F_TSO4,
      TUN_F_CSUM,
    };
    int refused = 0;
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
      if ((tries[i] & ~mask) != 0) continue;
      if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)tries[i]) == 0) {
        offloads = tries[i];
        break;
      }
      if (!refused) {
        refused = 1;
        snprintf(note, sizeof note, "kernel refused TUNSETOFFLOAD csum%s%s%s (%s)", tries[i] & TUN_F_TSO4 ? "|tso4" : "",
                 tries[i] & TUN_F_TSO6 ? "|tso6" : "", tries[i] & TUN_F_USO4 ? "|uso4|uso6" : "", strerror(errno));
      }
    }
    if (offloads == 0) {
      /* The header stays (it was fixed at TUNSETIFF); no offloads are in force. */
      ioctl(fd, TUNSETOFFLOAD, 0UL);
      if (refused) snprintf(note, sizeof note, "kernel refused every TUNSETOFFLOAD (%s)", strerror(errno));
    }
  } else if (!attach) {
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (multi ? IFF_MULTI_QUEUE : 0);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
      int err = errno;
      close(fd);
      return throw_errno(env, "cannot create TUN device", name, err);
    }
  }
  napi_value result, fd_v, name_v, vnet_v, off_v, note_v;
  napi_create_object(env, &result);
  napi_create_int32(env, fd, &fd_v);
  napi_create_string_utf8(env, ifr.ifr_name, NAPI_AUTO_LENGTH, &name_v);
  napi_set_named_property(env, result, "fd", fd_v);
  napi_set_named_property(env, result, "name", name_v);
  napi_get_boolean(env, vnet, &vnet_v);
  napi_set_named_property(env, result, "vnetHdr", vnet_v);
  napi_create_uint32(env, offloads, &off_v);
  napi_set_named_property(env, result, "offloads", off_v);
  napi_create_string_utf8(env, note, NAPI_AUTO_LENGTH, &note_v);
  napi_set_named_property(env, result, "note", note_v);
  return result;
}

static napi_value throw_read(napi_env env, int err) {
  char msg[128];
  snprintf(msg, sizeof msg, "TUN read: %s", strerror(err));
  return throw_coded(env, err == EBADF ? "EBADF" : err == EBADFD ? "EBADFD" : err == EIO ? "EIO" : err == EINVAL ? "EINVAL" : "ETUN", msg, err);
}

/*
 * readerFd(fd): a duplicate of fd (close-on-exec) with O_NONBLOCK, for the
 * reader thread, which closes it when it stops. The reader never uses a
 * number the device object may close: after close() that number can belong
 * to the next device opened (a managed node's TUN after down/up), whose
 * packets a reader still waiting on the old number would take.
 */
static napi_value reader_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "readerFd(fd) needs a file descriptor");
    return NULL;
  }
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) return throw_read(env, errno);
  /* O_NONBLOCK is the open file's: writes through fd are unaffected (a TUN write does not wait). */
  int fl = fcntl(d, F_GETFL);
  if (fl < 0 || ((fl & O_NONBLOCK) == 0 && fcntl(d, F_SETFL, fl | O_NONBLOCK) < 0)) {
    int err = errno;
    close(d);
    return throw_read(env, err);
  }
  napi_value out;
  napi_create_int32(env, d, &out);
  return out;
}

static napi_value read_batch(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 8) {
    napi_throw_type_error(env, NULL, "readBatch(fd, data, lens, ctrl, slots, slotSize, max, timeoutMs)");
    return NULL;
  }
  int32_t fd, slots, slot_size, max, timeout_ms;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int32(env, argv[4], &slots) != napi_ok ||
      napi_get_value_int32(env, argv[5], &slot_size) != napi_ok || napi_get_value_int32(env, argv[6], &max) != napi_ok ||
      napi_get_value_int32(env, argv[7], &timeout_ms) != napi_ok) {
    napi_throw_type_error(env, NULL, "readBatch: fd, slots, slotSize, max and timeoutMs must be integers");
    return NULL;
  }
  napi_typedarray_type dt, lt, ct;
  size_t dlen, llen, clen;
  void *dp, *lp, *cp;
  if (napi_get_typedarray_info(env, argv[1], &dt, &dlen, &dp, NULL, NULL) != napi_ok || dt != napi_uint8_array ||
      napi_get_typedarray_info(env, argv[2], &lt, &llen, &lp, NULL, NULL) != napi_ok || lt != napi_int32_array ||
      napi_get_typedarray_info(env, argv[3], &ct, &clen, &cp, NULL, NULL) != napi_ok || ct != napi_int32_array) {
    napi_throw_type_error(env, NULL, "readBatch: data must be a Uint8Array, lens and ctrl Int32Arrays");
    return NULL;
  }
  /* Every slot the call may touch lies inside the arrays. */
  if (slots <= 0 || slot_size <= 0 || (size_t)slots > llen || (size_t)slots * (size_t)slot_size > dlen || clen < 2) {
    napi_throw_range_error(env, NULL, "readBatch: ring geometry outside the given arrays");
    return NULL;
  }
  uint8_t *data = dp;
  int32_t *lens = lp;
  int32_t *ctrl = cp;
  /* Wrapping int32 counters, as the JavaScript side keeps them. */
  uint32_t written = (uint32_t)__atomic_load_n(&ctrl[0], __ATOMIC_SEQ_CST);
  int32_t got = 0;
  int32_t dropped = 0;
  int waited = 0;
  while (got < max) {
    uint32_t consumed = (uint32_t)__atomic_load_n(&ctrl[1], __ATOMIC_SEQ_CST);
    if (written - consumed >= (uint32_t)slots) break; /* full: the caller waits for the consumer */
    size_t slot = (size_t)(written % (uint32_t)slots);
    ssize_t n = read(fd, data + slot * (size_t)slot_size, (size_t)slot_size);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        if (got > 0 || waited) break;
        struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
        int r = poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);
        if (r < 0 && errno != EINTR) return throw_read(env, errno);
        if (r <= 0) break;
        /* POLLERR/POLLHUP: the read below says why. A wakeup with nothing to
         * read returns 0 rather than spinning here. */
        waited = 1;
        continue;
      }
      if (err == EINVAL || err == EFAULT) {
        /* The kernel could not hand this packet over (a virtio-net header it
         * cannot express, say) and has dropped it: count it and go on, the
         * next read takes the next packet. */
        if (clen >= 5) __atomic_add_fetch(&ctrl[4], 1, __ATOMIC_SEQ_CST);
        dropped++;
        if (dropped > max) break; /* a bound, should every read fail */
        continue;
      }
      if (got > 0) break;
      return throw_read(env, err);
    }
    if (n == 0) {
      if (got > 0) break;
      return throw_read(env, EIO);
    }
    lens[slot] = (int32_t)n;
    written++;
    __atomic_store_n(&ctrl[0], (int32_t)written, __ATOMIC_SEQ_CST);
    got++;
  }
  napi_value out;
  napi_create_int32(env, got, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "open", NAPI_AUTO_LENGTH, open_tun, NULL, &fn);
  napi_set_named_property(env, exports, "open", fn);
  napi_create_function(env, "readerFd", NAPI_AUTO_LENGTH, reader_fd, NULL, &fn);
  napi_set_named_property(env, exports, "readerFd", fn);
  napi_create_function(env, "readBatch", NAPI_AUTO_LENGTH, read_batch, NULL, &fn);
  napi_set_named_property(env, exports, "readBatch", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
