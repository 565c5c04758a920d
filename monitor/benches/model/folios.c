/*
 * How a file sits in the page cache: maps it, touches every page, and
 * counts the pages that are single 4 KB pages and those inside larger
 * folios (/proc/self/pagemap, /proc/kpageflags: root only). Used in
 * BENCHMARKS.md (issue #4, session 12) to see the page-cache state the
 * benches read their capture from.
 *
 *   cc -O2 -o /tmp/folios monitor/benches/model/folios.c
 *   /tmp/folios target/bench/flows-2000000-10000-256.pcap
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define KPF_COMPOUND_HEAD (1ULL << 15)
#define KPF_COMPOUND_TAIL (1ULL << 16)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE\n", argv[0]);
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0) {
        perror(argv[1]);
        return 1;
    }
    size_t pages = (st.st_size + 4095) / 4096;
    volatile const char *m = mmap(0, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    int flags = open("/proc/kpageflags", O_RDONLY);
    if (m == MAP_FAILED || pagemap < 0 || flags < 0) {
        perror("mmap or /proc (run as root)");
        return 1;
    }
    long single = 0, heads = 0, tails = 0, absent = 0;
    for (size_t i = 0; i < pages; i++) {
        (void)m[i * 4096];
        uint64_t entry, f;
        if (pread(pagemap, &entry, 8, ((uintptr_t)m / 4096 + i) * 8) != 8 || !(entry >> 63)) {
            absent++;
            continue;
        }
        if (pread(flags, &f, 8, (entry & ((1ULL << 55) - 1)) * 8) != 8) {
            absent++;
        } else if (f & KPF_COMPOUND_HEAD) {
            heads++;
        } else if (f & KPF_COMPOUND_TAIL) {
            tails++;
        } else {
            single++;
        }
    }
    printf("%zu pages: %ld single 4 KB pages, %ld in %ld larger folios (%.0f pages each on average), %ld unknown\n",
           pages, single, heads + tails, heads, heads ? (double)(heads + tails) / heads : 0.0, absent);
    return 0;
}
