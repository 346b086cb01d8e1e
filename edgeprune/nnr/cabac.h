/* edgeprune's CABAC core for MPEG-NNR (ISO/IEC 15938-17) compressed data units.
 *
 * One call codes the arithmetic-coded payload of one NDU holding one tensor: the optional qp offset,
 * the row-skip flags, the estimator-configuration signalling, the levels and the terminating bin.
 * The tensor is viewed as `rows` x `width` (width = product of all but the first dimension).
 * With a block scan (scan_order 1..4) it is coded in square blocks of 4 << scan_order, block row by
 * block row; every block row after the first starts at an *entry point* (the CABAC range reset to 256,
 * fresh contexts, the DQ state carried over) so that block rows can be decoded on several threads.
 * Levels are always passed as *reconstruction indices* n (w = step * n); with dependent
 * quantisation the coder converts to and from the coded index q itself.
 *
 * Nothing here allocates while coding: the caller provides every buffer, sized with
 * nnr_encode_bound() / nnr_trellis_scratch_size(). The decoder never reads outside its input
 * and never loops more than a fixed number of bins per level, whatever the input bytes are.
 */
#ifndef EDGEPRUNE_NNR_CABAC_H
#define EDGEPRUNE_NNR_CABAC_H

#include <stddef.h>
#include <stdint.h>

#define NNR_MAX_GTX_FLAGS 32    /* cabac_unary_length_minus1 + 1 is at most this (u(8) allows 256) */
#define NNR_MAX_ABS_LEVEL (1 << 28) /* largest |n| accepted: keeps 2q, q and the EG0 prefix in range */

typedef enum {
    NNR_OK = 0,
    NNR_ERR_ARGUMENT = 1,   /* inconsistent parameters (caller bug or absurd header values) */
    NNR_ERR_LEVEL_RANGE = 2, /* a level is too large to code, or not representable with DQ */
    NNR_ERR_OUTPUT_FULL = 3, /* encoder output buffer too small (nnr_encode_bound was not used) */
    NNR_ERR_TRUNCATED = 4,  /* decoder ran past the end of the payload */
    NNR_ERR_CORRUPT = 5,    /* decoded values are impossible (prefix too long, level overflow, no end) */
} nnr_status;

typedef struct {
    uint32_t rows;          /* first dimension (1 for 1-D tensors) */
    uint32_t width;         /* product of the other dimensions */
    uint8_t dq;             /* dependent quantisation (8-state) */
    uint8_t profile;        /* general_profile_idc: 1 enables the row-skip syntax for 2-D tensors */
    uint8_t row_skip;       /* encoder: row_skip_enabled_flag (profile 1 only) */
    uint8_t estimator_search; /* encoder: choose each context's estimator configuration (NNCodec's param_opt) */
    uint32_t num_gtx_flags; /* cabac_unary_length_minus1 + 1 */
    uint8_t has_qp_offset;  /* payload type FLOAT: the qp offset is the first thing in the payload */
    uint8_t qp_density;     /* its width is 6 + qp_density bypass bins */
    int32_t qp_offset;      /* encoder input / decoder output */
    uint8_t scan_order;     /* 0 raster; 1..4 block scan (ignored for rows == 1: one block row) */
    uint64_t *entry_points; /* nnr_block_rows() - 1 entry points in NNCodec's packed form
                             * (bit-offset delta << 11 | top 8 value bits << 3 | DQ state): written by
                             * the encoder, read by the decoder; NULL when there is one block row */
    uint32_t first_block_row, end_block_row; /* decoder: decode block rows [first, end) only (0, 0: all) */
    uint64_t bins;          /* encoder output: regular + bypass bins coded (for cycles per bin) */
} nnr_tensor_params;

/* Number of block rows (entry points + 1) of a tensor with these dimensions and scan order. */
uint32_t nnr_block_rows(const nnr_tensor_params *p);

/* Upper bound of the payload size in bytes for these levels (every regular bin costs at most 8 bits). */
size_t nnr_encode_bound(const int32_t *levels, const nnr_tensor_params *p);

/* Encode; writes at most `cap` bytes to `out` and the payload size to *out_len. */
nnr_status nnr_encode_tensor(const int32_t *levels, nnr_tensor_params *p, uint8_t *out, size_t cap,
                             size_t *out_len);

/* Decode `len` payload bytes into levels[rows*width]; fills p->qp_offset; *consumed = bytes used.
 * With entry points and a block-row range, only the rows of that range are written (several threads
 * may decode disjoint ranges of one payload into one array); each range checks that its last block row
 * ends exactly where the next entry point says, and the range holding the last block row checks the
 * end of the payload and sets *consumed (0 for the other ranges). */
nnr_status nnr_decode_tensor(const uint8_t *payload, size_t len, nnr_tensor_params *p, int32_t *levels,
                             size_t *consumed);

/* qp -> step as NNCodec computes it (float32 of (k + qp mod k) * 2^(qp div k - d), k = 2^d). */
float nnr_step_size(int32_t qp, uint32_t qp_density);

/* Bytes of scratch memory nnr_quantize() needs for n weights with DQ (0 without). */
size_t nnr_trellis_scratch_size(size_t n);

/* Quantise weights[n] to reconstruction indices: round(w/step) without DQ, the 8-state distortion
 * trellis with DQ (NNCodec's lambda = 0 decisions, bit-exact). */
nnr_status nnr_quantize(const float *weights, size_t n, float step, uint8_t dq, int32_t *levels,
                        uint8_t *scratch);

/* Uniform quantisation with rate-distortion optimisation (NNCodec's lambda > 0 path, no DQ): each weight
 * picks 0, round(|w|/step) - 1 or round(|w|/step) by distortion + estimated CABAC rate. Off by default,
 * as NNCodec's lambda_scale is. */
nnr_status nnr_quantize_rdoq(const float *weights, size_t n, float step, double lambda_scale, uint32_t ngtx,
                             int32_t *levels);

#endif
