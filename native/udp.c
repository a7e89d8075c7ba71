/*
 * larktun_udp: batched UDP I/O for the data plane. Moves bytes only: the wire
 * format, keys, replay, routing, filter and counters stay in TypeScript.
 *
 *   open(family: 4|6, host: string, port: number, opts?: { reusePort?, bufSize?, offload? })
 *     -> handle (external); throws Error with .code (EADDRINUSE, ...) and .errno
 *   info(h) -> { port, gro, gso }
 *   start(h, rxArena: ArrayBuffer, rxMeta: ArrayBuffer, slots, slotSize, onBatch(count))
 *   send(h, txArena: ArrayBuffer, txMeta: ArrayBuffer, count) -> number of datagrams not sent
 *   stats(h) -> { rx_syscalls, rx_datagrams, gro_datagrams, tx_syscalls, tx_datagrams, gso_sends, gso_fallbacks }
 *   close(h)
 *
 * Receive: a uv_poll_t watches the non-blocking socket; on readability the
 * socket is drained with recvmmsg (up to BATCH per call, repeated until EAGAIN
 * or RX_CAP datagrams) straight into the caller's fixed-size slots, or, with
 * UDP_GRO, into private super-buffers that are split into slots. One JS call
 * per filled arena (or at the end of the drain) hands over the count; the
 * caller reads the slots in place before returning.
 *
 * Meta table: META_WORDS int32 per slot:
 *   [0] length (slotSize + 1: truncated, i.e. larger than a slot)
 *   [1] port   [2] family (4 or 6)   [3..6] address bytes (network order: 4 or 16)
 *
 * Send: the caller fills tx slots and the same meta layout, then calls send():
 * sendmmsg, and with UDP_SEGMENT one GSO super-datagram per run of consecutive
 * equal-length datagrams to the same destination (iovecs point into the
 * caller's slots: nothing is copied). A GSO send the route refuses is resent
 * plainly: EINVAL/EMSGSIZE (segment larger than the path MTU allows) limits GSO to
 * smaller segments, EIO (no checksum offload) turns it off for the socket.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define BATCH 64
#define META_WORDS 8
#define RX_CAP 2048       /* datagrams per readiness event before yielding to the loop */
#define GRO_BUF 65536
#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 60000

typedef struct {
  int fd;
  int family;
  bool gro, gso;
  bool polling, closed, poll_inited, poll_closed, finalized, in_cb;
  uv_poll_t poll;
  napi_env env;
  napi_ref cb, rx_ref, meta_ref;
  napi_async_context actx;
  uint8_t *rx;
  int32_t *rxmeta;
  uint32_t slots, slot_size;
  uint8_t *grobuf; /* BATCH * GRO_BUF when gro */
  struct mmsghdr rmsg[BATCH];
  struct iovec riov[BATCH];
  struct sockaddr_storage raddr[BATCH];
  char rctl[BATCH][CMSG_SPACE(sizeof(int))];
  struct mmsghdr tmsg[BATCH];
  struct iovec tiov[BATCH * GSO_MAX_SEGS];
  struct sockaddr_storage taddr[BATCH];
  char tctl[BATCH][CMSG_SPACE(sizeof(uint16_t))];
  uint32_t tsegs[BATCH];
  /* Largest segment size GSO is used for: lowered when the route refuses a size (EINVAL: above its MTU). */
  uint32_t gso_limit;
  double st_rx_sys, st_rx_dg, st_gro_dg, st_tx_sys, st_tx_dg, st_gso, st_gso_fb;
} usock;

static const char *errno_code(int e) {
  switch (e) {
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EINVAL: return "EINVAL";
    default: return "EUDP";
  }
}

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code_v, msg_v, error, errno_v;
  napi_create_string_utf8(env, errno_code(err), NAPI_AUTO_LENGTH, &code_v);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &msg_v);
  napi_create_error(env, code_v, msg_v, &error);
  napi_create_int32(env, err, &errno_v);
  napi_set_named_property(env, error, "errno", errno_v);
  napi_throw(env, error);
  return NULL;
}

static bool opt_bool(napi_env env, napi_value obj, const char *name, bool dflt) {
  napi_value v;
  bool has = false, b = dflt;
  if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has) return dflt;
  napi_get_named_property(env, obj, name, &v);
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_boolean) napi_get_value_bool(env, v, &b);
  return b;
}

static int32_t opt_int(napi_env env, napi_value obj, const char *name, int32_t dflt) {
  napi_value v;
  bool has = false;
  int32_t n = dflt;
  if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has) return dflt;
  napi_get_named_property(env, obj, name, &v);
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_number) napi_get_value_int32(env, v, &n);
  return n;
}

static void free_sock(usock *s) {
  free(s->grobuf);
  free(s);
}

static void on_poll_closed(uv_handle_t *h) {
  usock *s = (usock *)h->data;
  s->poll_closed = true;
  if (s->finalized) free_sock(s);
}

static void release_js(usock *s);

/* Stops polling and closes the socket; the struct lives until finalized and the poll handle closed. */
static void do_close(usock *s) {
  if (s->closed) return;
  s->closed = true;
  if (s->poll_inited) {
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_poll_closed);
  }
  close(s->fd);
  s->fd = -1;
  if (!s->in_cb) release_js(s);
}

/* Drops the JS references (not while the batch callback runs: deliver() does it after). */
static void release_js(usock *s) {
  if (!s->finalized && s->env != NULL) {
    if (s->cb) napi_delete_reference(s->env, s->cb);
    if (s->rx_ref) napi_delete_reference(s->env, s->rx_ref);
    if (s->meta_ref) napi_delete_reference(s->env, s->meta_ref);
    if (s->actx) napi_async_destroy(s->env, s->actx);
    s->cb = s->rx_ref = s->meta_ref = NULL;
    s->actx = NULL;
  }
}

static void finalize_sock(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  usock *s = (usock *)data;
  s->env = NULL; /* references die with the environment/finalization; do not touch them */
  s->finalized = true;
  if (!s->closed) {
    s->cb = s->rx_ref = s->meta_ref = NULL;
    s->actx = NULL;
    do_close(s);
  }
  if (!s->poll_inited || s->poll_closed) free_sock(s);
}

static usock *get_sock(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    napi_throw_type_error(env, NULL, "not a larktun_udp handle");
    return NULL;
  }
  return (usock *)p;
}

static napi_value udp_open(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) {
    napi_throw_type_error(env, NULL, "open(family, host, port, opts?)");
    return NULL;
  }
  int32_t family = 0, port = 0;
  napi_get_value_int32(env, argv[0], &family);
  napi_get_value_int32(env, argv[2], &port);
  char host[INET6_ADDRSTRLEN + 1];
  size_t hl = 0;
  if (napi_get_value_string_utf8(env, argv[1], host, sizeof host, &hl) != napi_ok) {
    napi_throw_type_error(env, NULL, "host must be a string");
    return NULL;
  }
  if ((family != 4 && family != 6) || port < 0 || port > 65535) {
    napi_throw_range_error(env, NULL, "family must be 4 or 6 and port 0..65535");
    return NULL;
  }
  bool reuse = false, offload = true;
  int32_t bufsize = 4 << 20;
  if (argc >= 4) {
    napi_valuetype t;
    napi_typeof(env, argv[3], &t);
    if (t == napi_object) {
      reuse = opt_bool(env, argv[3], "reusePort", false);
      offload = opt_bool(env, argv[3], "offload", true);
      bufsize = opt_int(env, argv[3], "bufSize", bufsize);
    }
  }
  struct sockaddr_storage ss;
  socklen_t sl;
  memset(&ss, 0, sizeof ss);
  if (family == 4) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
      napi_throw_type_error(env, NULL, "host is not an IPv4 address");
      return NULL;
    }
    sl = sizeof *a;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
      napi_throw_type_error(env, NULL, "host is not an IPv6 address");
      return NULL;
    }
    sl = sizeof *a;
  }
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  int one = 1;
  if (family == 6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (reuse && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "SO_REUSEPORT", e);
  }
  if (bufsize > 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
  }
  if (bind(fd, (struct sockaddr *)&ss, sl) < 0) {
    int e = errno;
    close(fd);
    char what[128];
    snprintf(what, sizeof what, "bind %s%s%s:%d", family == 6 ? "[" : "", host, family == 6 ? "]" : "", port);
    return throw_errno(env, what, e);
  }
  usock *s = calloc(1, sizeof *s);
  if (s == NULL) {
    close(fd);
    return throw_errno(env, "allocating a socket", ENOMEM);
  }
  s->fd = fd;
  s->family = family;
  s->env = env;
  s->gso_limit = 65535;
  if (offload) {
    int zero = 0;
    /* Probing with 0 (no default segment size) tells whether the kernel has UDP GSO. */
    s->gso = setsockopt(fd, SOL_UDP, UDP_SEGMENT, &zero, sizeof zero) == 0;
    s->gro = setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0;
    if (s->gro) {
      s->grobuf = malloc((size_t)BATCH * GRO_BUF);
      if (s->grobuf == NULL) {
        int zero2 = 0;
        setsockopt(fd, SOL_UDP, UDP_GRO, &zero2, sizeof zero2);
        s->gro = false;
      }
    }
  }
  napi_value ext;
  if (napi_create_external(env, s, finalize_sock, NULL, &ext) != napi_ok) {
    close(fd);
    free_sock(s);
    return NULL;
  }
  return ext;
}

static napi_value udp_info(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  usock *s = get_sock(env, argv[0]);
  if (s == NULL) return NULL;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  int port = 0;
  if (!s->closed && getsockname(s->fd, (struct sockaddr *)&ss, &sl) == 0) {
    port = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port) : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  napi_value r, v;
  napi_create_object(env, &r);
  napi_create_int32(env, port, &v);
  napi_set_named_property(env, r, "port", v);
  napi_get_boolean(env, s->gro, &v);
  napi_set_named_property(env, r, "gro", v);
  napi_get_boolean(env, s->gso, &v);
  napi_set_named_property(env, r, "gso", v);
  return r;
}

static napi_value udp_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  usock *s = get_sock(env, argv[0]);
  if (s == NULL) return NULL;
  napi_value r, v;
  napi_create_object(env, &r);
#define PUT(name, field)            \
  napi_create_double(env, s->field, &v); \
  napi_set_named_property(env, r, name, v);
  PUT("rx_syscalls", st_rx_sys);
  PUT("rx_datagrams", st_rx_dg);
  PUT("gro_datagrams", st_gro_dg);
  PUT("tx_syscalls", st_tx_sys);
  PUT("tx_datagrams", st_tx_dg);
  PUT("gso_sends", st_gso);
  PUT("gso_fallbacks", st_gso_fb);
#undef PUT
  return r;
}

static void put_addr(int32_t *m, const struct sockaddr_storage *ss) {
  memset(&m[3], 0, 16);
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    m[1] = ntohs(a->sin_port);
    m[2] = 4;
    memcpy(&m[3], &a->sin_addr, 4);
  } else {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    m[1] = ntohs(a->sin6_port);
    m[2] = 6;
    memcpy(&m[3], &a->sin6_addr, 16);
  }
}

/* Hands `count` filled slots to JS. Returns false when the socket was closed meanwhile. */
static bool deliver(usock *s, uint32_t count) {
  napi_env env = s->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, recv, arg, result;
  napi_get_reference_value(env, s->cb, &cb);
  napi_get_global(env, &recv);
  napi_create_uint32(env, count, &arg);
  s->in_cb = true;
  napi_status st = napi_make_callback(env, s->actx, recv, cb, 1, &arg, &result);
  s->in_cb = false;
  if (st == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
  napi_close_handle_scope(env, scope);
  if (s->closed) {
    release_js(s);
    return false;
  }
  return true;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  usock *s = (usock *)h->data;
  if (s->closed || status < 0) return;
  uint32_t filled = 0, total = 0;
  const uint32_t slots = s->slots, ss = s->slot_size;
  int errors = 0;
  while (total < RX_CAP) {
    unsigned vlen;
    if (s->gro) {
      vlen = BATCH;
      for (unsigned i = 0; i < vlen; i++) {
        s->riov[i].iov_base = s->grobuf + (size_t)i * GRO_BUF;
        s->riov[i].iov_len = GRO_BUF;
      }
    } else {
      if (filled == slots) {
        if (!deliver(s, filled)) return;
        filled = 0;
      }
      vlen = slots - filled < BATCH ? slots - filled : BATCH;
      for (unsigned i = 0; i < vlen; i++) {
        s->riov[i].iov_base = s->rx + (size_t)(filled + i) * ss;
        s->riov[i].iov_len = ss;
      }
    }
    for (unsigned i = 0; i < vlen; i++) {
      struct msghdr *m = &s->rmsg[i].msg_hdr;
      m->msg_name = &s->raddr[i];
      m->msg_namelen = sizeof s->raddr[i];
      m->msg_iov = &s->riov[i];
      m->msg_iovlen = 1;
      m->msg_control = s->gro ? s->rctl[i] : NULL;
      m->msg_controllen = s->gro ? sizeof s->rctl[i] : 0;
      m->msg_flags = 0;
    }
    int n = recvmmsg(s->fd, s->rmsg, vlen, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      /* e.g. a queued ICMP error: it is consumed by this call; try again a few times. */
      if (++errors > 8) break;
      continue;
    }
    s->st_rx_sys++;
    if (n == 0) break;
    for (int i = 0; i < n; i++) {
      struct msghdr *m = &s->rmsg[i].msg_hdr;
      uint32_t len = s->rmsg[i].msg_len;
      if (!s->gro) {
        int32_t *meta = s->rxmeta + (size_t)filled * META_WORDS;
        meta[0] = (m->msg_flags & MSG_TRUNC) ? (int32_t)ss + 1 : (int32_t)len;
        put_addr(meta, &s->raddr[i]);
        filled++;
        total++;
        s->st_rx_dg++;
        continue;
      }
      uint32_t seg = len;
      for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
          int g;
          memcpy(&g, CMSG_DATA(c), sizeof g);
          if (g > 0) seg = (uint32_t)g;
        }
      }
      if (seg == 0) seg = len ? len : 1;
      const uint8_t *src = s->grobuf + (size_t)i * GRO_BUF;
      bool trunc = (m->msg_flags & MSG_TRUNC) != 0;
      uint32_t off = 0;
      do {
        uint32_t sl = len - off < seg ? len - off : seg;
        if (filled == slots) {
          if (!deliver(s, filled)) return;
          filled = 0;
        }
        int32_t *meta = s->rxmeta + (size_t)filled * META_WORDS;
        if (sl > ss || (trunc && off + sl >= len)) {
          meta[0] = (int32_t)ss + 1;
        } else {
          memcpy(s->rx + (size_t)filled * ss, src + off, sl);
          meta[0] = (int32_t)sl;
        }
        put_addr(meta, &s->raddr[i]);
        filled++;
        total++;
        s->st_rx_dg++;
        if (seg < len) s->st_gro_dg++;
        off += sl;
      } while (off < len);
    }
    if ((unsigned)n < vlen) break; /* the socket had no more to give */
  }
  if (filled > 0) deliver(s, filled);
}

static napi_value udp_start(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6) {
    napi_throw_type_error(env, NULL, "start(h, rxArena, rxMeta, slots, slotSize, onBatch)");
    return NULL;
  }
  usock *s = get_sock(env, argv[0]);
  if (s == NULL) return NULL;
  if (s->closed || s->polling) {
    napi_throw_error(env, "EUDP", s->closed ? "socket is closed" : "socket already started");
    return NULL;
  }
  void *rx = NULL, *meta = NULL;
  size_t rxl = 0, metal = 0;
  if (napi_get_arraybuffer_info(env, argv[1], &rx, &rxl) != napi_ok ||
      napi_get_arraybuffer_info(env, argv[2], &meta, &metal) != napi_ok) {
    napi_throw_type_error(env, NULL, "arenas must be ArrayBuffers");
    return NULL;
  }
  uint32_t slots = 0, ss = 0;
  napi_get_value_uint32(env, argv[3], &slots);
  napi_get_value_uint32(env, argv[4], &ss);
  if (slots == 0 || ss < 64 || (size_t)slots * ss > rxl || (size_t)slots * META_WORDS * 4 > metal) {
    napi_throw_range_error(env, NULL, "arena too small for slots x slotSize");
    return NULL;
  }
  napi_valuetype t;
  napi_typeof(env, argv[5], &t);
  if (t != napi_function) {
    napi_throw_type_error(env, NULL, "onBatch must be a function");
    return NULL;
  }
  s->rx = rx;
  s->rxmeta = meta;
  s->slots = slots;
  s->slot_size = ss;
  napi_create_reference(env, argv[5], 1, &s->cb);
  napi_create_reference(env, argv[1], 1, &s->rx_ref);
  napi_create_reference(env, argv[2], 1, &s->meta_ref);
  napi_value name;
  napi_create_string_utf8(env, "larktun_udp", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &s->actx);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  if (uv_poll_init(loop, &s->poll, s->fd) != 0) {
    napi_throw_error(env, "EUDP", "uv_poll_init failed");
    return NULL;
  }
  s->poll_inited = true;
  s->poll.data = s;
  uv_poll_start(&s->poll, UV_READABLE, on_readable);
  s->polling = true;
  return NULL;
}

static bool same_dest(const int32_t *a, const int32_t *b) {
  return a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5] && a[6] == b[6];
}

static void fill_sockaddr(struct sockaddr_storage *ss, socklen_t *sl, const int32_t *m) {
  memset(ss, 0, sizeof *ss);
  if (m[2] == 6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)m[1]);
    memcpy(&a->sin6_addr, &m[3], 16);
    *sl = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)m[1]);
    memcpy(&a->sin_addr, &m[3], 4);
    *sl = sizeof *a;
  }
}

static napi_value udp_send(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) {
    napi_throw_type_error(env, NULL, "send(h, txArena, txMeta, count, slotSize)");
    return NULL;
  }
  usock *s = get_sock(env, argv[0]);
  if (s == NULL) return NULL;
  void *txv = NULL, *metav = NULL;
  size_t txl = 0, metal = 0;
  if (napi_get_arraybuffer_info(env, argv[1], &txv, &txl) != napi_ok ||
      napi_get_arraybuffer_info(env, argv[2], &metav, &metal) != napi_ok) {
    napi_throw_type_error(env, NULL, "arenas must be ArrayBuffers");
    return NULL;
  }
  uint32_t count = 0, ss = 0;
  napi_get_value_uint32(env, argv[3], &count);
  napi_get_value_uint32(env, argv[4], &ss);
  if ((size_t)count * ss > txl || (size_t)count * META_WORDS * 4 > metal) {
    napi_throw_range_error(env, NULL, "count exceeds the arena");
    return NULL;
  }
  uint8_t *tx = txv;
  int32_t *meta = metav;
  uint32_t failed = 0, i = 0;
  if (s->closed) count = 0, failed = 0;
  while (i < count) {
    /* Build up to BATCH messages starting at entry i. */
    unsigned nm = 0, iovn = 0;
    uint32_t j = i;
    while (j < count && nm < BATCH) {
      const int32_t *m = meta + (size_t)j * META_WORDS;
      uint32_t len = (uint32_t)m[0];
      if (len > ss) len = ss;
      uint32_t segs = 1;
      if (s->gso && len > 0 && len <= s->gso_limit) {
        uint32_t bytes = len;
        while (j + segs < count && segs < GSO_MAX_SEGS && bytes + len <= GSO_MAX_BYTES) {
          const int32_t *n = meta + (size_t)(j + segs) * META_WORDS;
          if ((uint32_t)n[0] != len || !same_dest(m, n)) break;
          segs++;
          bytes += len;
        }
      }
      struct msghdr *h = &s->tmsg[nm].msg_hdr;
      memset(h, 0, sizeof *h);
      socklen_t sl;
      fill_sockaddr(&s->taddr[nm], &sl, m);
      h->msg_name = &s->taddr[nm];
      h->msg_namelen = sl;
      h->msg_iov = &s->tiov[iovn];
      h->msg_iovlen = segs;
      for (uint32_t k = 0; k < segs; k++) {
        s->tiov[iovn + k].iov_base = tx + (size_t)(j + k) * ss;
        s->tiov[iovn + k].iov_len = len;
      }
      iovn += segs;
      if (segs > 1) {
        h->msg_control = s->tctl[nm];
        h->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
        struct cmsghdr *c = CMSG_FIRSTHDR(h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t g = (uint16_t)len;
        memcpy(CMSG_DATA(c), &g, sizeof g);
      }
      s->tsegs[nm] = segs;
      nm++;
      j += segs;
    }
    int r = sendmmsg(s->fd, s->tmsg, nm, MSG_DONTWAIT);
    s->st_tx_sys++;
    if (r < 0) {
      int e = errno;
      if (e == EINTR) continue;
      if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
        /* Socket buffer full: what is left of this flush is dropped (UDP). */
        failed += count - i;
        break;
      }
      if (s->tsegs[0] > 1 && (e == EIO || e == EINVAL || e == EMSGSIZE || e == EOPNOTSUPP)) {
        /* EINVAL/EMSGSIZE: this segment size does not fit the route's MTU; only smaller
         * runs use GSO from now on. EIO/EOPNOTSUPP: the route cannot segment at
         * all (no checksum offload): no GSO on this socket. Resent plainly. */
        uint32_t seg = (uint32_t)meta[(size_t)i * META_WORDS];
        if ((e == EINVAL || e == EMSGSIZE) && seg > 576) s->gso_limit = seg - 1;
        else s->gso = false;
        s->st_gso_fb++;
        continue;
      }
      failed += s->tsegs[0];
      i += s->tsegs[0];
      continue;
    }
    if (r == 0) { /* nothing taken: treat as a full buffer */
      failed += count - i;
      break;
    }
    for (int k = 0; k < r; k++) {
      i += s->tsegs[k];
      s->st_tx_dg += s->tsegs[k];
      if (s->tsegs[k] > 1) s->st_gso++;
    }
  }
  napi_value out;
  napi_create_uint32(env, failed, &out);
  return out;
}

static napi_value udp_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  usock *s = get_sock(env, argv[0]);
  if (s == NULL) return NULL;
  do_close(s);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  static const struct {
    const char *name;
    napi_callback fn;
  } fns[] = {{"open", udp_open}, {"info", udp_info}, {"start", udp_start}, {"send", udp_send}, {"stats", udp_stats}, {"close", udp_close}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
  napi_value v;
  napi_create_uint32(env, META_WORDS, &v);
  napi_set_named_property(env, exports, "META_WORDS", v);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
