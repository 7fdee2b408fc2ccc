/* GGUF files: a validating reader (mmap, versions 2 and 3) and a writer.
 *
 * The reader maps the file read-only and checks everything it reads before
 * trusting it: magic, version, counts, string lengths, value types, tensor
 * dimensions, shape-product overflow, tensor types, alignment, and that
 * every tensor's data lies inside the file.  A malformed file gives
 * EPMOE_EFORMAT (or EPMOE_ENOTSUP for an unknown tensor type) and a message
 * naming the file and the problem; it never crashes.
 *
 * Strings read from the file point into the mapping (not NUL-terminated);
 * they live as long as the gguf_file.  An open gguf_file is read-only and
 * may be shared between threads.
 *
 * Tensor data conversion to float32 lives in dtype_row_to_f32() (F32,
 * F16, BF16, Q8_0 in gguf_conv.c, the other block-quantised types in
 * quant.c); the reader itself never copies tensor data.  Files holding
 * types epmoe cannot compute with (the IQ formats, ...) still open when
 * the block size of the type is known; the model loader refuses them.
 */
#ifndef EPMOE_GGUF_H
#define EPMOE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

/* Metadata value types (numbering of the GGUF spec). */
enum gguf_type {
	GGUF_TYPE_UINT8 = 0,
	GGUF_TYPE_INT8 = 1,
	GGUF_TYPE_UINT16 = 2,
	GGUF_TYPE_INT16 = 3,
	GGUF_TYPE_UINT32 = 4,
	GGUF_TYPE_INT32 = 5,
	GGUF_TYPE_FLOAT32 = 6,
	GGUF_TYPE_BOOL = 7,
	GGUF_TYPE_STRING = 8,
	GGUF_TYPE_ARRAY = 9,
	GGUF_TYPE_UINT64 = 10,
	GGUF_TYPE_INT64 = 11,
	GGUF_TYPE_FLOAT64 = 12,
	GGUF_TYPE_COUNT
};

/* Tensor types (ggml numbering).  Only those epmoe computes with are
 * "supported"; the others are recognised so files open and messages can
 * name them. */
enum dtype {
	DTYPE_F32 = 0,
	DTYPE_F16 = 1,
	DTYPE_Q4_0 = 2,
	DTYPE_Q4_1 = 3,
	DTYPE_Q5_0 = 6,
	DTYPE_Q5_1 = 7,
	DTYPE_Q8_0 = 8,
	DTYPE_Q8_1 = 9,
	DTYPE_Q2_K = 10,
	DTYPE_Q3_K = 11,
	DTYPE_Q4_K = 12,
	DTYPE_Q5_K = 13,
	DTYPE_Q6_K = 14,
	DTYPE_Q8_K = 15,
	DTYPE_BF16 = 30,
	DTYPE_COUNT = 40
};

#define QK8_0 32 /* Q8_0 block: one f16 scale + 32 int8 */

/* A string inside the mapped file (or inside writer memory). */
struct gguf_str {
	uint64_t len;
	const char *ptr; /* not NUL-terminated */
};

struct gguf_kv {
	struct gguf_str key;
	enum gguf_type type;
	union {
		uint64_t u64; /* UINT8..UINT64 (zero-extended) and BOOL */
		int64_t i64;  /* INT8..INT64 (sign-extended) */
		double f64;   /* FLOAT32 and FLOAT64 */
		struct gguf_str str;
		struct {
			enum gguf_type type; /* element type, never ARRAY */
			uint64_t n;
			/* Numeric elements: pointer to the packed little-endian
			 * values in the mapping (possibly unaligned: read with
			 * the gguf_arr_* helpers).  STRING elements: strs[i]. */
			const void *data;
			struct gguf_str *strs; /* owned by the gguf_file */
		} arr;
	} v;
};

struct gguf_tensor {
	struct gguf_str name;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the innermost (row) length;
	                               unused dims are 1 */
	enum dtype type;
	uint64_t offset;     /* relative to the data section */
	uint64_t n_elements; /* product of ne[] (checked for overflow) */
	size_t size;         /* bytes of data */
	const void *data;    /* inside the mapping */
};

struct gguf_file {
	char *path;
	uint32_t version;
	uint64_t n_kv;
	struct gguf_kv *kv;
	uint64_t n_tensors;
	struct gguf_tensor *tensors;
	uint32_t alignment;
	uint64_t data_offset; /* start of the tensor data section */
	const uint8_t *base;  /* the mapping */
	size_t file_size;
};

/* Opens and validates path.  On success *out is the caller's; release with
 * gguf_close().  On failure, when err is not NULL, a one-line message
 * naming the file and the problem is written to err (err_len bytes). */
int gguf_open(struct gguf_file **out, const char *path, char *err,
        size_t err_len);
void gguf_close(struct gguf_file *g);

/* Lookups; NULL when absent.  Borrowed from g. */
const struct gguf_kv *gguf_find_kv(const struct gguf_file *g, const char *key);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *g,
        const char *name);

/* Typed getters: 0 on success, EPMOE_ENOENT when the key is absent,
 * EPMOE_EFORMAT when the type does not fit (integers convert between
 * widths when the value is in range; float getters accept any numeric). */
int gguf_get_u32(const struct gguf_file *g, const char *key, uint32_t *out);
int gguf_get_u64(const struct gguf_file *g, const char *key, uint64_t *out);
int gguf_get_i64(const struct gguf_file *g, const char *key, int64_t *out);
int gguf_get_f32(const struct gguf_file *g, const char *key, float *out);
int gguf_get_bool(const struct gguf_file *g, const char *key, bool *out);
/* *out points into g (not NUL-terminated). */
int gguf_get_str(const struct gguf_file *g, const char *key,
        struct gguf_str *out);
/* Copies a string value into buf (NUL-terminated); EPMOE_ERANGE if it does
 * not fit. */
int gguf_get_strcpy(const struct gguf_file *g, const char *key, char *buf,
        size_t buf_len);
/* The array value of key; EPMOE_EFORMAT if it is not an array of
 * elem_type (pass GGUF_TYPE_COUNT to accept any element type). */
int gguf_get_arr(const struct gguf_file *g, const char *key,
        enum gguf_type elem_type, const struct gguf_kv **out);

/* Element i of a numeric array kv (no bounds check beyond an assert). */
float gguf_arr_f32(const struct gguf_kv *kv, uint64_t i);
int64_t gguf_arr_i64(const struct gguf_kv *kv, uint64_t i);

/* Returns 1 if s equals the NUL-terminated c. */
int gguf_str_eq(struct gguf_str s, const char *c);

const char *gguf_type_name(enum gguf_type t);
/* Name of a tensor type ("f32", "q8_0", ...) or "type<N>" (static buffer
 * for unknown numbers: not thread-safe for those). */
const char *dtype_name(enum dtype t);
/* Parses the name of a supported type ("f32", "q4_k", ...; any case);
 * returns 0 or EPMOE_EINVAL. */
int dtype_parse(const char *s, enum dtype *out);

/* 1 if epmoe computes with this type (converts it to f32 and has its dot
 * products): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K. */
int dtype_supported(enum dtype t);
/* "f32, f16, ..." for messages. */
const char *dtype_supported_list(void);
/* Elements per block (1 for float types, 32 or 256 for block types; 1 for
 * unknown types). */
uint32_t dtype_block_elems(enum dtype t);
/* Bytes per block. 0 for unknown types (those a file cannot hold). */
size_t dtype_block_size(enum dtype t);
/* Bytes of a row of n elements (n a multiple of the block size). */
size_t dtype_row_size(enum dtype t, uint64_t n);

/* Converts n elements (n a multiple of the block size) starting at src to
 * float32.  EPMOE_ENOTSUP for types without a conversion. */
int dtype_row_to_f32(enum dtype t, const void *src, float *dst, size_t n);
/* The reverse, used by the writer, the quantiser and the trainer's
 * exporter: f32 -> t for every supported type. */
int dtype_row_from_f32(enum dtype t, const float *src, void *dst, size_t n);

/* The plain scalar loops behind the two functions above (which use
 * F16C/AVX2/AVX-512 when built for them).  Same results bit for bit; kept
 * public so tests can compare the two paths. */
int dtype_row_to_f32_ref(enum dtype t, const void *src, float *dst,
        size_t n);
int dtype_row_from_f32_ref(enum dtype t, const float *src, void *dst,
        size_t n);

/* Scalar half/bfloat conversions (round to nearest even). */
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

/* ---- writer ---- */

struct gguf_writer;

/* Fills dst (size bytes, the tensor's whole data, zeroed beforehand) with
 * the data of a tensor being written; called once per tensor, in order,
 * while writing.  Returns 0 or an error code (the write then fails and
 * names the tensor).  The writer reuses one buffer the size of the largest
 * such tensor, so peak memory is one tensor, not the model. */
typedef int (*gguf_fill_fn)(void *ctx, void *dst, size_t size);

int gguf_writer_new(struct gguf_writer **out, uint32_t version);
void gguf_writer_free(struct gguf_writer *w);

/* Metadata setters copy key and value.  Keys must be unique (EPMOE_EINVAL
 * on a repeat). */
int gguf_writer_set_u8(struct gguf_writer *w, const char *key, uint8_t v);
int gguf_writer_set_i8(struct gguf_writer *w, const char *key, int8_t v);
int gguf_writer_set_u16(struct gguf_writer *w, const char *key, uint16_t v);
int gguf_writer_set_i16(struct gguf_writer *w, const char *key, int16_t v);
int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_u64(struct gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_set_i64(struct gguf_writer *w, const char *key, int64_t v);
int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_set_f64(struct gguf_writer *w, const char *key, double v);
int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v);
/* Numeric array: n elements of elem_type packed little-endian at data. */
int gguf_writer_set_arr(struct gguf_writer *w, const char *key,
        enum gguf_type elem_type, const void *data, uint64_t n);
/* String array: n NUL-terminated strings. */
int gguf_writer_set_arr_str(struct gguf_writer *w, const char *key,
        const char *const *strs, uint64_t n);
/* Copies one key-value pair read by gguf_open (any type, strings by
 * length); EPMOE_EINVAL on a repeated key. */
int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_kv *kv);
/* Sets general.alignment (default 32). */
int gguf_writer_set_alignment(struct gguf_writer *w, uint32_t alignment);

/* Adds a tensor whose bytes are copied now. */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name,
        enum dtype type, uint32_t n_dims, const uint64_t *ne,
        const void *data, size_t size);
/* Adds a tensor whose bytes are produced by fill(ctx, dst, size) during
 * gguf_writer_write (so multi-GB models need not sit in memory). */
int gguf_writer_add_tensor_fn(struct gguf_writer *w, const char *name,
        enum dtype type, uint32_t n_dims, const uint64_t *ne,
        gguf_fill_fn fill, void *ctx);

/* Writes the file (to path.tmp, then renames; on failure path.tmp is
 * removed and path is untouched).  Not fsync'd.  err as for gguf_open.
 * Tensor names longer than 63 bytes are refused at add time (EINVAL), as
 * llama.cpp cannot load them. */
int gguf_writer_write(struct gguf_writer *w, const char *path, char *err,
        size_t err_len);

#endif
