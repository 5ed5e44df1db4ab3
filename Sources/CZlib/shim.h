#include <zlib.h>

/* zlib's init functions are macros Swift cannot import. */
static inline int shardkit_inflate_init(z_stream *stream, int windowBits) { return inflateInit2(stream, windowBits); }
