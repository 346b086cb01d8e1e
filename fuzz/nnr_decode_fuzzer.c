/* libFuzzer target for the CABAC decoder (build: fuzz/build.sh; run: /tmp/nnr_decode_fuzzer -runs=N CORPUS).
 *
 * The first 6 bytes of the input choose the tensor parameters (dimensions up to 64 x 64, DQ, profile,
 * qp offset, unary length); the rest is the payload. The decoder must return a status, never crash,
 * read out of bounds or hang (ASan/UBSan and libFuzzer's timeout watch that). When it accepts a
 * payload, the levels it produced are re-encoded and decoded again and must come back identical: the
 * encoder and decoder agree on every stream the decoder accepts, not only on the encoder's own output.
 * Bits 1..3 of byte 5 choose a scan order (values above 4: raster); a block scan takes its entry points
 * (8 bytes each, any values) from the front of the payload. Block scans with the row-skip syntax are only
 * decoded: NNCodec's row skipping in a block scan moves DQ differently from any levels edgeprune writes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cabac.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 6) return 0;
    nnr_tensor_params p;
    memset(&p, 0, sizeof(p));
    p.rows = 1u + data[0] % 64u;
    p.width = 1u + data[1] % 64u;
    p.dq = data[2] & 1;
    p.profile = (data[2] >> 1) & 1;
    p.has_qp_offset = (data[2] >> 2) & 1;
    p.qp_density = (data[2] >> 3) & 7;
    p.num_gtx_flags = 1u + data[3] % NNR_MAX_GTX_FLAGS;
    p.row_skip = data[4] & 1;
    p.scan_order = (data[5] >> 1) & 7;
    if (p.scan_order > 4) p.scan_order = 0;
    const uint8_t *payload = data + 6;
    size_t len = size - 6;
    uint32_t count = nnr_block_rows(&p) - 1;
    uint64_t *eps = calloc(count + 1, sizeof(uint64_t));
    uint64_t *eps_again = calloc(count + 1, sizeof(uint64_t));
    if (len < 8 * (size_t)count) {
        free(eps);
        free(eps_again);
        return 0;
    }
    memcpy(eps, payload, 8 * (size_t)count);
    payload += 8 * (size_t)count;
    len -= 8 * (size_t)count;
    p.entry_points = eps;
    size_t n = (size_t)p.rows * p.width;
    int32_t *levels = malloc(n * sizeof(int32_t));
    int32_t *again = malloc(n * sizeof(int32_t));
    size_t consumed = 0;
    nnr_status st = nnr_decode_tensor(payload, len, &p, levels, &consumed);
    if (st == NNR_OK && !(p.scan_order && p.profile && p.rows > 1 && p.width > 1)) {
        nnr_tensor_params q = p;
        q.row_skip = !p.scan_order;
        q.entry_points = eps_again;
        q.estimator_search = data[5] & 1;
        size_t cap = nnr_encode_bound(levels, &q), out_len = 0;
        uint8_t *out = malloc(cap);
        if (nnr_encode_tensor(levels, &q, out, cap, &out_len) != NNR_OK) abort();
        nnr_tensor_params r = q;
        if (nnr_decode_tensor(out, out_len, &r, again, &consumed) != NNR_OK) abort();
        if (memcmp(levels, again, n * sizeof(int32_t)) != 0 || r.qp_offset != p.qp_offset) abort();
        free(out);
    }
    free(levels);
    free(again);
    free(eps);
    free(eps_again);
    return 0;
}
