/*
 * Analyzer ABI version 1 for WebAssembly guests written in C (or any
 * language that can read this): what a module must export, what the host
 * (tm-monitor) provides, and the layout of the packet records it delivers.
 * The Rust side is analyzers/abi/src/lib.rs; a test there keeps the numbers
 * below in step with it.
 *
 * Build a core module without WASI, marking each export with TM_EXPORT, e.g.
 *   clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -o my-analyzer.wasm my-analyzer.c
 * (analyzers/c/tcp-flags.c is a complete example).
 *
 * Exports (all required unless marked optional):
 *   int32_t tm_abi_version(void);                  returns TM_ABI_VERSION
 *   int32_t tm_alloc(int32_t len);                 a buffer of len bytes for the host, 0 if none
 *   int32_t tm_init(int32_t ptr, int32_t len);     MessagePack params -> TM_STATUS_*
 *   int32_t tm_on_packets(int32_t ptr, int32_t len, int32_t count);   a batch of records
 *   int32_t tm_tick(int64_t now_ns);               periodic timer, Unix ns
 *   int32_t tm_configure(int32_t ptr, int32_t len); new MessagePack params
 *   int64_t tm_collect(void);                      results (MessagePack) as TM_PACK(ptr, len)
 *   int64_t tm_last_error(void);                   UTF-8 reason of the last non-OK status
 *   int64_t tm_snapshot(void);                     optional: state for a restart, 0 for none
 *   int32_t tm_restore(int32_t ptr, int32_t len);  optional: state from tm_snapshot, after tm_init
 *   uint32_t tm_snap_len(void);                    optional: most captured bytes per packet it reads
 *                                                  (0: the parsed header alone), asked once after
 *                                                  tm_init; the host cuts records to it (cap_len)
 *   int32_t tm_published(void);                    optional: the last tm_collect's results went out
 *                                                  in a published window (periodic or final)
 *   int32_t tm_finish(void);                       optional: the deployment is being unloaded; the
 *                                                  final tm_collect follows
 *   memory "memory"                                the linear memory
 *
 * Buffers given to tm_init, tm_configure and tm_restore come from tm_alloc
 * and belong to the guest afterwards. The batch buffer is allocated once and
 * reused by the host for every tm_on_packets call.
 *
 * Every call runs under a deadline and a memory cap; a trap, an overrun or
 * a broken reply unloads the analyzer (its last collected results are kept).
 */
#ifndef TM_ABI_H
#define TM_ABI_H

#include <stdint.h>

#define TM_ABI_VERSION 1

#define TM_STATUS_OK 0
#define TM_STATUS_BAD_PARAMS 1
#define TM_STATUS_FAILED 2
/* tm_restore only: the saved state's version is one this module does not take. */
#define TM_STATUS_STATE_VERSION 3

/* Packs a guest pointer and a length into the int64 some exports return. */
#define TM_PACK(ptr, len) ((int64_t)(((uint64_t)(uint32_t)(ptr) << 32) | (uint32_t)(len)))

/* Marks a function as a module export: TM_EXPORT("tm_init") int32_t tm_init(...). */
#define TM_EXPORT(name) __attribute__((export_name(name)))

/* Host imports, module "tm". */
#define TM_IMPORT(name) __attribute__((import_module("tm"), import_name(name)))
TM_IMPORT("log") void tm_log(int32_t level, const char *ptr, int32_t len);   /* 0 error .. 4 trace */
TM_IMPORT("now") int64_t tm_now(void);                                       /* Unix ns */
TM_IMPORT("emit") int32_t tm_emit(const uint8_t *ptr, int32_t len);          /* alert, MessagePack; 0 if accepted */

/* Packet records: a header, then cap_len captured bytes, padded with zeros
 * to a multiple of TM_RECORD_ALIGN. All fields little-endian. */
#define TM_RECORD_HEADER_LEN 72
#define TM_RECORD_ALIGN 8
#define TM_NO_OFFSET 0xffff

#define TM_OFF_RECORD_LEN 0      /* u32: header + data + padding */
#define TM_OFF_LINK 4            /* u32 */
#define TM_OFF_TS_NS 8           /* u64: Unix ns */
#define TM_OFF_WIRE_LEN 16       /* u32 */
#define TM_OFF_CAP_LEN 20        /* u32 */
#define TM_OFF_L3_OFFSET 24      /* u16, TM_NO_OFFSET if none */
#define TM_OFF_L4_OFFSET 26      /* u16 */
#define TM_OFF_PAYLOAD_OFFSET 28 /* u16 */
#define TM_OFF_IP_VERSION 30     /* u8: 0, 4 or 6 */
#define TM_OFF_IP_PROTO 31       /* u8 */
#define TM_OFF_SRC_ADDR 32       /* 16 bytes; IPv4 in the first 4 */
#define TM_OFF_DST_ADDR 48       /* 16 bytes */
#define TM_OFF_SRC_PORT 64       /* u16 */
#define TM_OFF_DST_PORT 66       /* u16 */
#define TM_OFF_TCP_FLAGS 68      /* u8 */
#define TM_OFF_FLAGS 69          /* u8: TM_FLAG_* */
#define TM_OFF_VLAN 70           /* u16: outer VLAN id, 0 if none */

#define TM_FLAG_PARSE_ERROR 1
#define TM_FLAG_TRUNCATED 2
#define TM_FLAG_FRAGMENT 4
#define TM_FLAG_VLAN 8

typedef struct __attribute__((packed)) {
    uint32_t record_len;
    uint32_t link;
    uint64_t ts_ns;
    uint32_t wire_len;
    uint32_t cap_len;
    uint16_t l3_offset;
    uint16_t l4_offset;
    uint16_t payload_offset;
    uint8_t ip_version;
    uint8_t ip_proto;
    uint8_t src_addr[16];
    uint8_t dst_addr[16];
    uint16_t src_port;
    uint16_t dst_port;
    uint8_t tcp_flags;
    uint8_t flags;
    uint16_t vlan;
    /* uint8_t data[cap_len]; then padding */
} tm_packet_header;

#endif /* TM_ABI_H */
