#ifndef SHARDKIT_SUPPORT_H
#define SHARDKIT_SUPPORT_H
#include <stddef.h>
#include <stdint.h>

/// CRC-32C (Castagnoli, as iSCSI, ext4 and Python's `crc32c` package): continues `crc` over
/// `length` bytes. Start with 0. Uses the SSE4.2 / ARMv8 CRC32 instruction when the CPU has it,
/// a table otherwise.
uint32_t shardkit_crc32c(uint32_t crc, const void *data, size_t length);

/// The same value computed with the table (slicing-by-8) only, whatever the CPU: for tests that
/// compare the two ways.
uint32_t shardkit_crc32c_software(uint32_t crc, const void *data, size_t length);

/// 1 when the hardware instruction is used.
int shardkit_crc32c_is_hardware(void);

/// Starts writeback of `[offset, offset + length)` of `fd` without waiting for it (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the final fsync finds little left to do.
/// Returns 0, or -1 with errno set; a no-op returning 0 where the call does not exist.
int shardkit_start_writeback(int fd, long long offset, long long length);

#endif
