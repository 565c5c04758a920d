/*
 * tcp-flags: an analyzer written in C against tm_abi.h, to show that ABI v1
 * is language-neutral. Built by `cargo xtask guests` with
 * clang --target=wasm32 into target/wasm/tcp-flags.wasm.
 *
 * Counts packets and wire bytes, TCP packets, and TCP packets by flag: SYN
 * (without ACK), SYN/ACK, FIN, RST. Params: none (nil or an empty map);
 * anything else is refused with TM_STATUS_BAD_PARAMS.
 *
 * Results (MessagePack map): {"packets", "bytes", "tcp", "syn", "synack",
 * "fin", "rst"}, all unsigned integers.
 */
#include "../abi/tm_abi.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

enum { PACKETS, BYTES, TCP, SYN, SYNACK, FIN, RST, NCOUNTERS };
static const char *const NAMES[NCOUNTERS] = {"packets", "bytes", "tcp", "syn", "synack", "fin", "rst"};

static uint64_t counters[NCOUNTERS];
static int initialised;
static const char *error = "";
static uint8_t scratch[4096]; /* params buffers: written by the host, read at once */
static uint8_t out[NCOUNTERS * (1 + 8 + 9) + 1];

static uint32_t str_len(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Params must be absent: empty, nil (0xc0) or an empty map (0x80). */
static int32_t check_params(const uint8_t *p, int32_t len) {
    if (len == 0 || (len == 1 && (p[0] == 0xc0 || p[0] == 0x80))) return TM_STATUS_OK;
    error = "params: tcp-flags takes no parameters (give nil or an empty map)";
    return TM_STATUS_BAD_PARAMS;
}

TM_EXPORT("tm_abi_version") int32_t tm_abi_version(void) { return TM_ABI_VERSION; }

/* Small buffers come from a scratch area; the batch buffer from fresh pages. */
TM_EXPORT("tm_alloc") int32_t tm_alloc(int32_t len) {
    if (len < 0) return 0;
    if ((uint32_t)len <= sizeof scratch) return (int32_t)(uintptr_t)scratch;
    uint32_t pages = ((uint32_t)len + 65535) / 65536;
    int32_t old = __builtin_wasm_memory_grow(0, pages);
    if (old < 0) return 0;
    return old * 65536;
}

TM_EXPORT("tm_init") int32_t tm_init(int32_t ptr, int32_t len) {
    int32_t st = check_params((const uint8_t *)(uintptr_t)ptr, len);
    if (st == TM_STATUS_OK) initialised = 1;
    return st;
}

TM_EXPORT("tm_configure") int32_t tm_configure(int32_t ptr, int32_t len) {
    return check_params((const uint8_t *)(uintptr_t)ptr, len);
}

TM_EXPORT("tm_on_packets") int32_t tm_on_packets(int32_t ptr, int32_t len, int32_t count) {
    if (!initialised) {
        error = "packets before init";
        return TM_STATUS_FAILED;
    }
    const uint8_t *p = (const uint8_t *)(uintptr_t)ptr;
    const uint8_t *end = p + len;
    for (int32_t i = 0; i < count; i++) {
        if (end - p < TM_RECORD_HEADER_LEN) break;
        uint32_t rec = rd32(p + TM_OFF_RECORD_LEN);
        if (rec < TM_RECORD_HEADER_LEN || rec > (uint32_t)(end - p)) break;
        counters[PACKETS]++;
        counters[BYTES] += rd32(p + TM_OFF_WIRE_LEN);
        if (p[TM_OFF_IP_VERSION] != 0 && p[TM_OFF_IP_PROTO] == 6) {
            uint8_t f = p[TM_OFF_TCP_FLAGS];
            counters[TCP]++;
            if ((f & (TCP_SYN | TCP_ACK)) == TCP_SYN) counters[SYN]++;
            if ((f & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)) counters[SYNACK]++;
            if (f & TCP_FIN) counters[FIN]++;
            if (f & TCP_RST) counters[RST]++;
        }
        p += rec;
    }
    return TM_STATUS_OK;
}

TM_EXPORT("tm_tick") int32_t tm_tick(int64_t now_ns) {
    (void)now_ns;
    return TM_STATUS_OK;
}

/* {"packets": u64, ...}: a fixmap of fixstr keys and uint64 values. */
TM_EXPORT("tm_collect") int64_t tm_collect(void) {
    uint32_t n = 0;
    out[n++] = 0x80 | NCOUNTERS;
    for (int i = 0; i < NCOUNTERS; i++) {
        uint32_t k = str_len(NAMES[i]);
        out[n++] = 0xa0 | k;
        for (uint32_t j = 0; j < k; j++) out[n++] = (uint8_t)NAMES[i][j];
        out[n++] = 0xcf;
        for (int b = 7; b >= 0; b--) out[n++] = (uint8_t)(counters[i] >> (8 * b));
    }
    return TM_PACK((uintptr_t)out, n);
}

TM_EXPORT("tm_last_error") int64_t tm_last_error(void) { return TM_PACK((uintptr_t)error, str_len(error)); }

TM_EXPORT("tm_snapshot") int64_t tm_snapshot(void) { return 0; }

/* Everything it reads is in the record header: no captured bytes needed. */
TM_EXPORT("tm_snap_len") uint32_t tm_snap_len(void) { return 0; }

TM_EXPORT("tm_restore") int32_t tm_restore(int32_t ptr, int32_t len) {
    (void)ptr;
    (void)len;
    error = "tcp-flags keeps no state across restarts";
    return TM_STATUS_FAILED;
}
