#include <hdf5.h>

/* HDF5 constants defined as macros Swift cannot import. */
static inline unsigned shardkit_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline hid_t shardkit_h5p_default(void) { return H5P_DEFAULT; }
static inline hid_t shardkit_h5e_default(void) { return H5E_DEFAULT; }
static inline haddr_t shardkit_haddr_undef(void) { return HADDR_UNDEF; }
