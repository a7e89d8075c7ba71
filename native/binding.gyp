{
  "targets": [
    {
      "target_name": "larktun_tun",
      "sources": ["tun.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    },
    {
      "target_name": "larktun_udp",
      "sources": ["udp.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
