#include "shardkit_support.h"
#include <pthread.h>
#include <string.h>

static uint32_t table[8][256];

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
    }
}

/* Slicing-by-8 on the already inverted register. */
static uint32_t software(uint32_t c, const unsigned char *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) { c = table[0][(c ^ *p++) & 0xFF] ^ (c >> 8); n--; }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = table[7][w & 0xFF] ^ table[6][(w >> 8) & 0xFF] ^ table[5][(w >> 16) & 0xFF] ^ table[4][(w >> 24) & 0xFF] ^
            table[3][(w >> 32) & 0xFF] ^ table[2][(w >> 40) & 0xFF] ^ table[1][(w >> 48) & 0xFF] ^ table[0][w >> 56];
        p += 8; n -= 8;
    }
    while (n--) c = table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c;
}

/* Shifting a CRC past `len` zero bytes is a linear map over GF(2): build it as a 32x32 bit matrix
   by repeated squaring, then as four byte tables. Used to join CRCs computed side by side. */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    while (vec) { if (vec & 1) sum ^= *mat; vec >>= 1; mat++; }
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) square[n] = gf2_times(mat, mat[n]);
}

/* Operator for `len` zero bytes; `len` a power of two. */
static void zeros_op(uint32_t *even, size_t len) {
    uint32_t odd[32];
    odd[0] = 0x82F63B78u;
    uint32_t row = 1;
    for (int n = 1; n < 32; n++) { odd[n] = row; row <<= 1; }
    gf2_square(even, odd); /* 2 bits */
    gf2_square(odd, even); /* 4 bits */
    do {
        gf2_square(even, odd);
        len >>= 1;
        if (len == 0) return;
        gf2_square(odd, even);
        len >>= 1;
    } while (len);
    for (int n = 0; n < 32; n++) even[n] = odd[n];
}

static void zeros_table(uint32_t zeros[4][256], size_t len) {
    uint32_t op[32];
    zeros_op(op, len);
    for (uint32_t n = 0; n < 256; n++) {
        zeros[0][n] = gf2_times(op, n);
        zeros[1][n] = gf2_times(op, n << 8);
        zeros[2][n] = gf2_times(op, n << 16);
        zeros[3][n] = gf2_times(op, n << 24);
    }
}

static inline uint32_t shift(uint32_t zeros[4][256], uint32_t crc) {
    return zeros[0][crc & 0xFF] ^ zeros[1][(crc >> 8) & 0xFF] ^ zeros[2][(crc >> 16) & 0xFF] ^ zeros[3][crc >> 24];
}

#define LONG_BLOCK 8192
#define SHORT_BLOCK 256
static uint32_t long_zeros[4][256], short_zeros[4][256];

#if defined(__x86_64__)
#include <nmmintrin.h>
/* Three independent CRC streams over consecutive blocks hide the instruction's latency; their
   results are joined with the zero-shift tables for the block size. */
__attribute__((target("sse4.2")))
static inline uint64_t three_streams(uint64_t c0, const unsigned char **pp, size_t *np, size_t block, uint32_t zeros[4][256]) {
    const unsigned char *p = *pp;
    size_t n = *np;
    while (n >= 3 * block) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + block;
        do {
            uint64_t a, b, d;
            memcpy(&a, p, 8); memcpy(&b, p + block, 8); memcpy(&d, p + 2 * block, 8);
            c0 = _mm_crc32_u64(c0, a); c1 = _mm_crc32_u64(c1, b); c2 = _mm_crc32_u64(c2, d);
            p += 8;
        } while (p < end);
        c0 = shift(zeros, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = shift(zeros, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * block;
        n -= 3 * block;
    }
    *pp = p;
    *np = n;
    return c0;
}

__attribute__((target("sse4.2")))
static uint32_t hardware(uint32_t c, const unsigned char *p, size_t n) {
    uint64_t c0 = c;
    while (n && ((uintptr_t)p & 7)) { c0 = _mm_crc32_u8((uint32_t)c0, *p++); n--; }
    c0 = three_streams(c0, &p, &n, LONG_BLOCK, long_zeros);
    c0 = three_streams(c0, &p, &n, SHORT_BLOCK, short_zeros);
    while (n >= 8) { uint64_t w; memcpy(&w, p, 8); c0 = _mm_crc32_u64(c0, w); p += 8; n -= 8; }
    while (n--) c0 = _mm_crc32_u8((uint32_t)c0, *p++);
    return (uint32_t)c0;
}
static int has_hardware(void) { return __builtin_cpu_supports("sse4.2"); }
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#include <arm_acle.h>
static uint32_t hardware(uint32_t c, const unsigned char *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) { c = __crc32cb(c, *p++); n--; }
    while (n >= 8) { uint64_t w; memcpy(&w, p, 8); c = __crc32cd(c, w); p += 8; n -= 8; }
    while (n--) c = __crc32cb(c, *p++);
    return c;
}
static int has_hardware(void) { return 1; }
#else
static uint32_t hardware(uint32_t c, const unsigned char *p, size_t n) { return software(c, p, n); }
static int has_hardware(void) { return 0; }
#endif

int shardkit_crc32c_is_hardware(void) { return has_hardware(); }


static int mode;
static pthread_once_t setup_once = PTHREAD_ONCE_INIT;

/* Tables and CPU detection, exactly once, before any thread reads them (pthread_once orders the
   writes here before every caller's reads). */
static void setup(void) {
    build_table();
    zeros_table(long_zeros, LONG_BLOCK);
    zeros_table(short_zeros, SHORT_BLOCK);
    mode = has_hardware();
}

uint32_t shardkit_crc32c(uint32_t crc, const void *data, size_t length) {
    pthread_once(&setup_once, setup);
    uint32_t c = ~crc;
    c = mode ? hardware(c, (const unsigned char *)data, length) : software(c, (const unsigned char *)data, length);
    return ~c;
}

uint32_t shardkit_crc32c_software(uint32_t crc, const void *data, size_t length) {
    pthread_once(&setup_once, setup);
    return ~software(~crc, (const unsigned char *)data, length);
}
