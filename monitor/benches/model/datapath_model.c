/*
 * A C model of the pinned monitor's data path with flow-stats, to tell
 * what the hardware costs from what our code costs (BENCHMARKS.md,
 * issue #4). One thread does what the link thread and the deployment
 * thread do in turn on one core:
 *
 *   read the classic pcap file in 128 KB chunks (or map it), write a
 *   72-byte ABI-like record per packet into batches of 256, queue QUEUE
 *   batches; then, batch by batch, copy it into one "guest" buffer, touch
 *   every packet's table slot (the prepare pass), and update the slot
 *   (key, packets, bytes, last time) — one 64-byte slot per flow, home
 *   slot only (no probing, so flows may share a slot: a model, not a map).
 *
 *   cc -O2 -o /tmp/datapath_model monitor/benches/model/datapath_model.c
 *   taskset -c 0 /tmp/datapath_model FILE MODE QUEUE TABLE_BITS [WINDOW_MB] [READ_ONLY] [IN_PLACE]
 *
 * MODE: 0 read(2) chunks, 1 whole-file mmap + MADV_SEQUENTIAL, 2 whole-file
 * mmap, 3 mmap windows of WINDOW_MB (MAP_POPULATE, unmapped in turn).
 * READ_ONLY 1: the update pass reads the slots instead of writing them.
 * IN_PLACE 1: the guest part reads each batch where it was written (no copy).
 * Prints the process CPU (user + system, including unmapping) and the
 * time of the guest part per packet. Only IPv4 over Ethernet is modelled.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256
#define RECORD 72
#define CHUNK (128 << 10)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static double cpu(int system_only) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  double s = r.ru_stime.tv_sec + r.ru_stime.tv_usec * 1e-6;
  return system_only ? s : s + r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6;
}

static uint32_t u32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s FILE MODE QUEUE TABLE_BITS [WINDOW_MB] [READ_ONLY] [IN_PLACE]\n",
            argv[0]);
    return 2;
  }
  const char *file = argv[1];
  int mode = atoi(argv[2]), queue = atoi(argv[3]), bits = atoi(argv[4]);
  size_t window = (size_t)(argc > 5 ? atol(argv[5]) : 4) << 20;
  int read_only = argc > 6 && atoi(argv[6]);
  int in_place = argc > 7 && atoi(argv[7]);
  if (mode < 0 || mode > 3 || queue < 1 || queue > 1024 || bits < 4 || bits > 28) {
    fprintf(stderr, "MODE 0-3, QUEUE 1-1024, TABLE_BITS 4-28\n");
    return 2;
  }
  char *table = aligned_alloc(4096, (size_t)64 << bits);
  memset(table, 0, (size_t)64 << bits);
  char **batches = malloc(queue * sizeof(char *));
  for (int i = 0; i < queue; i++) {
    batches[i] = aligned_alloc(64, BATCH * RECORD);
    memset(batches[i], 0, BATCH * RECORD);
  }
  char *guest_buf = aligned_alloc(64, BATCH * RECORD);
  int fd = open(file, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) { perror(file); return 1; }
  size_t size = st.st_size;
  char *buf = aligned_alloc(4096, CHUNK), *map = NULL, *win = NULL;
  size_t win_at = 0, win_len = 0;
  if (mode == 1 || mode == 2) {
    map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 1; }
    if (mode == 1) madvise(map, size, MADV_SEQUENTIAL);
  }
  double cpu0 = cpu(0), sys0 = cpu(1), guest_s = 0;
  long packets = 0;
  size_t off = 24, have = 0;
  int done = 0;
  volatile uint64_t sink = 0;
  int counts[1024];
  while (!done) {
    int nb;
    for (nb = 0; nb < queue && !done; nb++) {
      int n;
      for (n = 0; n < BATCH; n++) {
        const char *rec;
        if (mode == 0) {
          if (off + 16 > have || off + 16 + u32(buf + off + 8) > have) {
            size_t keep = have - off;
            memmove(buf, buf + off, keep);
            ssize_t got = read(fd, buf + keep, CHUNK - keep);
            if (got <= 0) { done = 1; break; }
            have = keep + got;
            off = 0;
          }
          rec = buf + off;
        } else if (mode == 3) {
          if (off + 16 > size) { done = 1; break; }
          if (!win || off + 16 > win_at + win_len ||
              off + 16 + u32(win + (off - win_at) + 8) > win_at + win_len) {
            if (win) munmap(win, win_len);
            win_at = off & ~(size_t)4095;
            win_len = win_at + window > size ? size - win_at : window;
            win = mmap(NULL, win_len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, win_at);
            if (win == MAP_FAILED) { perror("mmap"); return 1; }
          }
          rec = win + (off - win_at);
        } else {
          if (off + 16 > size) { done = 1; break; }
          rec = map + off;
        }
        off += 16 + u32(rec + 8);
        if (mode != 0 && off > size) { done = 1; break; }
        const char *p = rec + 16;
        char *r = batches[nb] + n * RECORD;
        uint64_t ts = u32(rec) * 1000000000ull + u32(rec + 4) * 1000ull;
        uint32_t len = RECORD, wire = u32(rec + 12), zero = 0;
        memcpy(r, &len, 4);
        memcpy(r + 8, &ts, 8);
        memcpy(r + 16, &wire, 4);
        memcpy(r + 20, &zero, 4);
        r[30] = 4;
        r[31] = p[23];
        memset(r + 32, 0, 32);
        memcpy(r + 32, p + 26, 4);
        memcpy(r + 48, p + 30, 4);
        memcpy(r + 64, p + 34, 4);
        r[68] = p[47];
        r[69] = 0;
        r[70] = r[71] = 0;
      }
      counts[nb] = n;
      packets += n;
      if (n == 0) break;
    }
    double g0 = now();
    for (int k = 0; k < nb; k++) {
      int n = counts[k];
      uint64_t acc = 0;
      const char *guest = batches[k];
      if (!in_place) {
        memcpy(guest_buf, batches[k], (size_t)n * RECORD);
        guest = guest_buf;
      }
      for (int i = 0; i < n; i++) {
        const char *r = guest + i * RECORD;
        uint64_t a = (uint64_t)u32(r + 32) << 32 | u32(r + 48), b = u32(r + 64);
        uint64_t h = ((a << 5 | a >> 59) ^ b) * 0x9e3779b97f4a7c15ull;
        acc += *(volatile uint64_t *)(table + (h >> (64 - bits)) * 64);
      }
      for (int i = 0; i < n; i++) {
        const char *r = guest + i * RECORD;
        uint64_t a = (uint64_t)u32(r + 32) << 32 | u32(r + 48), b = u32(r + 64);
        uint64_t h = ((a << 5 | a >> 59) ^ b) * 0x9e3779b97f4a7c15ull;
        uint64_t *s = (uint64_t *)(table + (h >> (64 - bits)) * 64), ts;
        if (read_only) {
          acc += s[0] + s[2];
        } else {
          memcpy(&ts, r + 8, 8);
          s[0] = a;
          s[1] = b;
          s[2]++;
          s[3] += u32(r + 16);
          s[4] = ts;
        }
      }
      sink += acc;
    }
    guest_s += now() - g0;
  }
  if (map) munmap(map, size);
  if (win) munmap(win, win_len);
  printf("mode %d queue %d bits %d: %ld packets, cpu %.1f ms (system %.1f), guest part %.1f ns/packet\n",
         mode, queue, bits, packets, (cpu(0) - cpu0) * 1e3, (cpu(1) - sys0) * 1e3,
         guest_s / packets * 1e9);
  return 0;
}
