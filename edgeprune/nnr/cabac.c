/* edgeprune's CABAC core for MPEG-NNR compressed data units (see cabac.h and
 * shared/design/nnr-cabac.md section 1 for the bit-level description this follows).
 *
 * Layout of the context store (one per tensor, all created fresh with configuration 0):
 *   sig   [24]  3 * dq_state + class(previous level)      class: 0 zero, 1 negative, 2 positive
 *   sign  [3]   class(previous level)
 *   gtx   [2N]  2k + (current level > 0 ? 0 : 1)
 *   rem   [32]  Exp-Golomb prefix position
 *   cfg   [1]   "configuration != 0" flags of the estimator signalling
 *   skip  [1]   row_skip_flag
 * The order differs from NNCodec's internal store; only the per-bin context choice is normative.
 */
#include "cabac.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nnr_derived_tables.h"
#include "nnr_tables.h"

#define CTX_SIG 0
#define CTX_SIGN 24
#define CTX_GTX 27
#define CTX_REM(n) (CTX_GTX + 2 * (n))
#define CTX_CFG(n) (CTX_REM(n) + 32)
#define CTX_SKIP(n) (CTX_CFG(n) + 1)
#define CTX_COUNT(n) (CTX_SKIP(n) + 1)
#define CTX_MAX CTX_COUNT(NNR_MAX_GTX_FLAGS)
#define SIGNALLED_REM_CONTEXTS 31 /* NNCodec 2.x signals configurations for prefix contexts 0..30 */
#define MAX_PREFIX 29             /* EG0 prefix bins; enough for |q| < 2^29 */

/* The 8-state DQ transition {{0, 2}, {7, 5}, {1, 3}, {6, 4}, {2, 0}, {5, 7}, {3, 1}, {4, 6}}[state][parity],
 * packed 4 bits per entry: a shift instead of a load on the decoder's critical path. */
#define DQ_NEXT(state, parity) ((int)((0x6413750246315720ULL >> ((((state) << 1) | ((parity) & 1)) << 2)) & 7))

/* A skipped (all-zero) row still moves the DQ state machine as if `width` zero levels were coded. The
 * zero transition is a permutation of the 8 states with cycles of length 1, 2 and 4, so `width` zeros act
 * like width mod 4 of them (a crafted width of 2^30 costs nothing). */
static inline int dq_after_zero_row(int state, uint32_t width) {
    for (uint32_t i = 0; i < (width & 3); i++) state = DQ_NEXT(state, 0);
    return state;
}

/* ---------------------------------------------------------------- scan order
 * Raster scan is one block of rows x width. Block scan (scan_order k > 0) cuts the tensor into squares of
 * 4 << k: block rows top to bottom, in each the blocks left to right, in each block its rows (NNCodec's
 * Scan). A "segment" is one row's part of one block; row skipping works per segment. */

typedef struct {
    uint32_t height, width, count; /* block height and width, number of block rows */
} block_layout;

static block_layout block_layout_of(const nnr_tensor_params *p) {
    block_layout b = {p->rows, p->width, 1};
    if (p->scan_order) {
        b.height = b.width = 4u << p->scan_order;
        b.count = (p->rows + b.height - 1) / b.height;
    }
    return b;
}

uint32_t nnr_block_rows(const nnr_tensor_params *p) { return block_layout_of(p).count; }

static inline uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

static inline int bit_length(uint32_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return 32 - __builtin_clz(x);
#else
    int n = 0;
    while (x) {
        n++;
        x >>= 1;
    }
    return n;
#endif
}

static inline int level_class(int32_t prev) { return prev == 0 ? 0 : (prev < 0 ? 1 : 2); }

/* ---------------------------------------------------------------- probability estimator */

typedef struct {
    int16_t s;                  /* log-domain state, sign = MPS (the standard's 16-bit state) */
    int8_t f;                   /* fast part (s = slow + 16 f) */
    uint8_t fast_row, slow_row; /* this configuration's rows of NNR_FAST_NEXT / NNR_SLOW_STEP (bin 0) */
    uint8_t col, mps;           /* LPS-table column and MPS of s, updated with it: off the decoding critical path */
} context;

static inline int fast_row_of(int cfg) { return 2 * NNR_ESTIMATOR_CONFIGS[cfg][0]; }
static inline int slow_row_of(int cfg) { return 2 * (NNR_ESTIMATOR_CONFIGS[cfg][1] - NNR_SLOW_SHIFT_BASE); }

/* The two-rate estimator after coding `bin`: the fast part moves by the step curve at its own rate,
 * the slow part (s - 16 f) at its rate; the reference stores 8-bit / 16-bit parts, hence the wrap-around
 * (in the fast table, and in the int16 of s). */
static inline void estimator_update(int32_t *s, int32_t *f, int fast_row, int slow_row, int bin) {
    int32_t slow = *s - 16 * *f;
    int32_t toward = bin ? slow : -slow;
    slow += NNR_SLOW_STEP[slow_row + bin][(16 + (toward >> 7)) & 31];
    *f = NNR_FAST_NEXT[fast_row + bin][*f + 128];
    *s = (int16_t)(slow + 16 * *f);
}

static inline void ctx_set(context *c, int32_t s, int32_t f) {
    int col = abs(s >> 7); /* arithmetic shift: asymmetric for negative states, as in the standard */
    col -= col >> 5;       /* |s| < 4096 keeps col <= 32; map a (never reached) 32 to 31 without a branch */
    c->s = (int16_t)s;
    c->f = (int8_t)f;
    c->col = (uint8_t)col;
    c->mps = s >= 0;
}

static void ctx_init(context *c, int cfg) {
    c->fast_row = (uint8_t)fast_row_of(cfg);
    c->slow_row = (uint8_t)slow_row_of(cfg);
    ctx_set(c, NNR_ESTIMATOR_CONFIGS[cfg][2], NNR_ESTIMATOR_CONFIGS[cfg][3]);
}

static inline void ctx_update(context *c, int bin) {
    int32_t s = c->s, f = c->f;
    estimator_update(&s, &f, c->fast_row, c->slow_row, bin);
    ctx_set(c, s, f);
}

static inline uint32_t ctx_rlps(const context *c, uint32_t range) { return NNR_LPS_TABLE[(range & 0xe0) + c->col]; }

static inline int ctx_mps(const context *c) { return c->mps; }

/* ---------------------------------------------------------------- encoder */

typedef struct {
    uint32_t low, range;
    int32_t bits_left;
    uint64_t shifts; /* renormalisation shifts so far = the decoder's bit offset (for entry points) */
    uint64_t bins;   /* regular + bypass bins coded: the unit the decoder's cost is measured in */
    uint32_t num_buffered;
    uint32_t buffered;
    uint8_t *out;
    size_t pos, cap;
} encoder;

static inline void enc_put(encoder *e, uint32_t byte) {
    if (e->pos < e->cap) e->out[e->pos] = (uint8_t)byte;
    e->pos++;
}

static void enc_write_out(encoder *e) {
    uint32_t lead = e->low >> (24 - e->bits_left);
    e->bits_left += 8;
    e->low &= 0xffffffffu >> e->bits_left;
    if (lead == 0xff) {
        e->num_buffered++;
    } else if (e->num_buffered > 0) {
        uint32_t carry = lead >> 8;
        enc_put(e, e->buffered + carry);
        e->buffered = lead & 0xff;
        while (e->num_buffered > 1) {
            enc_put(e, (0xff + carry) & 0xff);
            e->num_buffered--;
        }
    } else {
        e->num_buffered = 1;
        e->buffered = lead;
    }
}

static void enc_start(encoder *e, uint8_t *out, size_t cap) {
    e->low = 0;
    e->range = 510;
    e->bits_left = 23;
    e->shifts = 0;
    e->bins = 0;
    e->num_buffered = 0;
    e->buffered = 0;
    e->out = out;
    e->pos = 0;
    e->cap = cap;
}

static inline void enc_bin(encoder *e, context *c, int bin) {
    e->bins++;
    uint32_t rlps = ctx_rlps(c, e->range);
    e->range -= rlps;
    if (bin == ctx_mps(c)) {
        if (e->range < 256) {
            e->range <<= 1;
            e->low <<= 1;
            e->shifts++;
            if (--e->bits_left < 12) enc_write_out(e);
        }
    } else {
        int n = 9 - bit_length(rlps);
        e->low += e->range;
        e->range = rlps << n;
        e->low <<= n;
        e->bits_left -= n;
        e->shifts += (uint64_t)n;
        if (e->bits_left < 12) enc_write_out(e);
    }
    ctx_update(c, bin);
}

static inline void enc_bypass(encoder *e, uint32_t value, int nbins) {
    e->shifts += (uint64_t)nbins;
    e->bins += (uint64_t)nbins;
    for (int i = nbins - 1; i >= 0; i--) {
        e->low <<= 1;
        if ((value >> i) & 1) e->low += e->range;
        if (--e->bits_left < 12) enc_write_out(e);
    }
}

static void enc_finish(encoder *e) {
    /* terminating bin (value 1) */
    e->range -= 2;
    e->low += e->range;
    e->low <<= 7;
    e->range = 256;
    e->bits_left -= 7;
    if (e->bits_left < 12) enc_write_out(e);
    /* flush with carry, then the stop bit */
    if (e->low >> (32 - e->bits_left)) {
        enc_put(e, e->buffered + 1);
        while (e->num_buffered > 1) {
            enc_put(e, 0x00);
            e->num_buffered--;
        }
        e->low -= 1u << (32 - e->bits_left);
    } else {
        if (e->num_buffered > 0) enc_put(e, e->buffered);
        while (e->num_buffered > 1) {
            enc_put(e, 0xff);
            e->num_buffered--;
        }
    }
    e->low >>= 8;
    e->low = (e->low << 1) + 1;
    e->bits_left--;
    int valid = 24 - e->bits_left;
    e->low <<= (32 - valid);
    for (int i = 0; i < valid; i += 8) enc_put(e, (e->low >> (24 - i)) & 0xff);
}

/* ---------------------------------------------------------------- estimator-configuration search
 * NNCodec's "param_opt": every context runs all nine configurations in parallel over the tensor's
 * regular bins and keeps the cheapest (3 bits of signalling added for a non-default one). Only the
 * encoder does this; the decoder just reads the chosen indices. */

typedef struct {
    int32_t s[9];
    int32_t f[9];
    uint64_t bits[9];
} context_search;

/* At an entry point the coder's contexts restart; each candidate configuration restarts too, its cost kept. */
static void search_restart(context_search *cs) {
    for (int i = 0; i < 9; i++) {
        cs->s[i] = NNR_ESTIMATOR_CONFIGS[i][2];
        cs->f[i] = NNR_ESTIMATOR_CONFIGS[i][3];
    }
}

static void search_init(context_search *cs) {
    search_restart(cs);
    for (int i = 0; i < 9; i++) cs->bits[i] = 0;
}

static inline void search_bin(context_search *cs, int bin) {
    for (int i = 0; i < 9; i++) {
        int idx = 512 + (cs->s[i] >> 3);
        idx = idx < 0 ? 0 : (idx > 1023 ? 1023 : idx);
        cs->bits[i] += NNR_RATE_TABLE[idx][bin];
        estimator_update(&cs->s[i], &cs->f[i], fast_row_of(i), slow_row_of(i), bin);
    }
}

static int search_best(const context_search *cs) {
    int best = 0;
    uint64_t min_bits = cs->bits[0];
    for (int i = 1; i < 9; i++) {
        if (cs->bits[i] + 3 * 32768u < min_bits) {
            best = i;
            min_bits = cs->bits[i] + 3 * 32768u;
        }
    }
    return best;
}

/* The level binarisation, written once and instantiated for real coding and for the search pass. */
#define DEFINE_LEVEL_CODER(NAME, SINK_T, REGULAR)                                                     \
    static inline void NAME(SINK_T *sink, encoder *e, int32_t q, int state, int cls, uint32_t ngtx) {  \
        (void)e;                                                                                     \
        REGULAR(CTX_SIG + 3 * state + cls, q != 0);                                                  \
        if (q == 0) return;                                                                          \
        REGULAR(CTX_SIGN + cls, q < 0);                                                              \
        uint32_t rem = (uint32_t)(q < 0 ? -q : q) - 1;                                               \
        int neg = q > 0 ? 0 : 1;                                                                     \
        int flag = rem > 0;                                                                          \
        REGULAR(CTX_GTX + neg, flag);                                                                \
        uint32_t k = 1;                                                                              \
        while (flag && k < ngtx) {                                                                   \
            rem--;                                                                                   \
            flag = rem > 0;                                                                          \
            REGULAR(CTX_GTX + 2 * k + neg, flag);                                                    \
            k++;                                                                                     \
        }                                                                                            \
        if (!flag) return;                                                                           \
        rem--;                                                                                       \
        int rem_ctx = CTX_REM(ngtx);                                                                 \
        if (rem == 0) {                                                                              \
            REGULAR(rem_ctx, 0);                                                                     \
            return;                                                                                  \
        }                                                                                            \
        REGULAR(rem_ctx, 1);                                                                         \
        uint32_t base = 1;                                                                           \
        int log2 = 1;                                                                                \
        while (rem >= base + (1u << log2)) {                                                         \
            REGULAR(rem_ctx + log2, 1);                                                              \
            base += 1u << log2;                                                                      \
            log2++;                                                                                  \
        }                                                                                            \
        REGULAR(rem_ctx + log2, 0);                                                                  \
        BYPASS(rem - base, log2);                                                                    \
    }

#define REGULAR_ENC(ci, bin) enc_bin(e, &sink[(ci)], (bin))
#define BYPASS(v, n) enc_bypass(e, (v), (n))
DEFINE_LEVEL_CODER(encode_level, context, REGULAR_ENC)
#undef BYPASS
#define REGULAR_SEARCH(ci, bin) search_bin(&sink[(ci)], (bin))
#define BYPASS(v, n) ((void)0)
DEFINE_LEVEL_CODER(search_level, context_search, REGULAR_SEARCH)
#undef BYPASS

/* Rate estimation for RDOQ: the same binarisation, summing each bin's estimated cost (2^-15 bit units)
 * from the context's current state without updating it, or updating the states with a chosen level. */
typedef struct {
    context *ctx;
    uint64_t bits;
} rate_sink;

static inline uint32_t bin_cost(const context *c, int bin) {
    int idx = 512 + (c->s >> 3);
    idx = idx < 0 ? 0 : (idx > 1023 ? 1023 : idx);
    return NNR_RATE_TABLE[idx][bin];
}

#define REGULAR_RATE(ci, bin) (sink->bits += bin_cost(&sink->ctx[(ci)], (bin)))
#define BYPASS(v, n) (sink->bits += (uint64_t)(n) << 15)
DEFINE_LEVEL_CODER(rate_level, rate_sink, REGULAR_RATE)
#undef BYPASS
#define REGULAR_UPDATE(ci, bin) ctx_update(&sink[(ci)], (bin))
#define BYPASS(v, n) ((void)0)
DEFINE_LEVEL_CODER(update_level, context, REGULAR_UPDATE)
#undef BYPASS

/* coded index q from reconstruction index n in DQ state `state` (n must fit the state's quantiser) */
static inline int32_t dq_coded(int32_t n, int state) {
    if (n == 0) return 0;
    return (n + (n < 0 ? -(state & 1) : (state & 1))) >> 1;
}

static int row_is_zero(const int32_t *row, uint32_t width) {
    for (uint32_t i = 0; i < width; i++)
        if (row[i]) return 0;
    return 1;
}

static int uses_row_skip_syntax(const nnr_tensor_params *p) {
    return p->profile == 1 && p->width > 1 && p->rows > 1;
}

static nnr_status check_params(const nnr_tensor_params *p) {
    if (p->rows == 0 || p->width == 0) return NNR_ERR_ARGUMENT;
    if ((uint64_t)p->rows * p->width > (uint64_t)0x7fffffff) return NNR_ERR_ARGUMENT;
    if (p->num_gtx_flags < 1 || p->num_gtx_flags > NNR_MAX_GTX_FLAGS) return NNR_ERR_ARGUMENT;
    if (p->qp_density > 7 || p->dq > 1 || p->profile > 1 || p->scan_order > 4) return NNR_ERR_ARGUMENT;
    if (nnr_block_rows(p) > 1 && !p->entry_points) return NNR_ERR_ARGUMENT;
    return NNR_OK;
}

size_t nnr_encode_bound(const int32_t *levels, const nnr_tensor_params *p) {
    size_t n = (size_t)p->rows * p->width;
    /* sig + sign + gtx flags + EG0 prefix and suffix; regular bins at most 8 bits each */
    size_t bins = 64 + 13 + p->rows + nnr_block_rows(p) + 8 * (size_t)(24 + 3 + 2 * p->num_gtx_flags + 32);
    for (size_t i = 0; i < n; i++) {
        if (levels[i] == 0) {
            bins += 1;
        } else {
            uint32_t a = (uint32_t)(levels[i] < 0 ? -(int64_t)levels[i] : levels[i]);
            bins += 2 + (a < p->num_gtx_flags ? a : p->num_gtx_flags) + 2 * (size_t)bit_length(a) + 2;
        }
    }
    return bins + 16;
}

static uint8_t signal_configuration(encoder *e, context *ctx, context_search *search, int idx, int cfg_ctx,
                                    int searched) {
    int best = searched ? search_best(&search[idx]) : 0;
    enc_bin(e, &ctx[cfg_ctx], best != 0);
    if (best) enc_bypass(e, (uint32_t)(best - 1), 3);
    ctx_init(&ctx[idx], best);
    return (uint8_t)best;
}

/* Bits [bit, bit + n) of the finished payload (zeros past its end). */
static uint32_t payload_bits(const uint8_t *buf, size_t len, uint64_t bit, int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; i++, bit++) {
        uint32_t byte = (bit >> 3) < len ? buf[bit >> 3] : 0;
        v = (v << 1) | ((byte >> (7 - (bit & 7))) & 1);
    }
    return v;
}

/* At the start of a block row the encoder restarts its contexts and sets its range to 256. The decoder's
 * state there is its bit offset (= the encoder's shifts) and the top 8 bits of its value, which are
 * (codeword - low) at the range's scale: known only once the codeword is finished. Until then the entry
 * point holds (absolute offset << 12 | low mod 512 << 3 | DQ state); finish_entry_points packs it. */
static uint64_t enter_block_row(encoder *e, context *ctx, const uint8_t *cfg, int nctx, int state) {
    for (int i = 0; i < nctx; i++) ctx_init(&ctx[i], cfg[i]);
    e->range = 256;
    return (e->shifts << 12) | ((uint64_t)(e->low & 511u) << 3) | (uint64_t)state;
}

static void finish_entry_points(const encoder *e, uint64_t first, uint64_t *eps, uint32_t count) {
    const size_t written = e->pos < e->cap ? e->pos : e->cap;
    uint64_t previous = first >> 12;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t offset = eps[i] >> 12;
        uint32_t low = (uint32_t)(eps[i] >> 3) & 511u;
        uint32_t value = (payload_bits(e->out, written, offset, 9) - low) & 511u; /* < 256 by construction */
        eps[i] = ((offset - previous) << 11) | ((uint64_t)(value & 255u) << 3) | (eps[i] & 7u);
        previous = offset;
    }
}

/* The encoder's walk over the levels in scan order: with `search` the estimator-configuration search
 * (NNCodec binarises the reconstruction index n there, not q, and uses it as the neighbour; reproduced so
 * that the chosen configurations, hence the bytes, match), without it the coding itself. Every block row
 * after the first starts at an entry point (whose contexts or candidate states restart). */
static nnr_status walk_levels(const int32_t *levels, nnr_tensor_params *p, block_layout blocks, int row_skip,
                              encoder *e, context *ctx, const uint8_t *cfg, context_search *search) {
    const uint32_t ngtx = p->num_gtx_flags;
    int state = 0;
    int32_t prev = 0;
    for (uint32_t br = 0; br < blocks.count; br++) {
        const uint32_t r0 = br * blocks.height, r1 = min_u32(p->rows, r0 + blocks.height);
        for (uint32_t c0 = 0; c0 < p->width; c0 += blocks.width) {
            const uint32_t c1 = min_u32(p->width, c0 + blocks.width);
            for (uint32_t r = r0; r < r1; r++) {
                const int32_t *row = levels + (size_t)r * p->width;
                if (row_skip && row_is_zero(row, p->width)) {
                    if (p->dq) state = dq_after_zero_row(state, p->width);
                    continue;
                }
                for (uint32_t i = c0; i < c1; i++) {
                    const int32_t n = row[i];
                    if (p->dq && n != 0 && (n & 1) != (state & 1)) return NNR_ERR_LEVEL_RANGE; /* off the DQ grid */
                    const int32_t q = p->dq ? dq_coded(n, state) : n;
                    if (search) {
                        search_level(search, e, n, state, level_class(prev), ngtx);
                        prev = n;
                    } else {
                        encode_level(ctx, e, q, state, level_class(prev), ngtx);
                        prev = q;
                    }
                    if (p->dq) state = DQ_NEXT(state, q);
                }
            }
        }
        if (br + 1 < blocks.count) {
            if (search)
                for (int i = 0; i < (int)CTX_REM(ngtx) + 32; i++) search_restart(&search[i]);
            else
                p->entry_points[br] = enter_block_row(e, ctx, cfg, (int)CTX_COUNT(ngtx), state);
            prev = 0;
        }
    }
    return NNR_OK;
}

nnr_status nnr_encode_tensor(const int32_t *levels, nnr_tensor_params *p, uint8_t *out, size_t cap,
                             size_t *out_len) {
    nnr_status st = check_params(p);
    if (st != NNR_OK) return st;
    const uint32_t ngtx = p->num_gtx_flags;
    const size_t n = (size_t)p->rows * p->width;
    const block_layout blocks = block_layout_of(p);
    /* NNCodec's encoder and decoder advance DQ by a whole row per skipped block-row segment, which its
     * own trellis does not follow; edgeprune writes block scan without row skipping. */
    if (p->scan_order && p->row_skip && uses_row_skip_syntax(p)) return NNR_ERR_ARGUMENT;
    for (size_t i = 0; i < n; i++)
        if (levels[i] > NNR_MAX_ABS_LEVEL || levels[i] < -NNR_MAX_ABS_LEVEL) return NNR_ERR_LEVEL_RANGE;

    context ctx[CTX_MAX];
    context_search search[CTX_MAX];
    uint8_t cfg[CTX_MAX] = {0};
    const int nctx = (int)CTX_COUNT(ngtx);
    encoder e;
    enc_start(&e, out, cap);
    for (int i = 0; i < nctx; i++) ctx_init(&ctx[i], 0);

    if (p->has_qp_offset) {
        int nbits = 6 + p->qp_density;
        int32_t lo = -(1 << (nbits - 1)), hi = (1 << (nbits - 1)) - 1;
        if (p->qp_offset < lo || p->qp_offset > hi) return NNR_ERR_ARGUMENT;
        enc_bypass(&e, (uint32_t)p->qp_offset & ((1u << nbits) - 1), nbits);
    }
    const int skip_syntax = uses_row_skip_syntax(p);
    const int row_skip = skip_syntax && p->row_skip;
    if (skip_syntax) {
        enc_bypass(&e, (uint32_t)row_skip, 1);
        if (row_skip)
            for (uint32_t r = 0; r < p->rows; r++)
                enc_bin(&e, &ctx[CTX_SKIP(ngtx)], row_is_zero(levels + (size_t)r * p->width, p->width));
    }

    if (p->estimator_search) {
        for (int i = 0; i < (int)CTX_REM(ngtx) + 32; i++) search_init(&search[i]);
        st = walk_levels(levels, p, blocks, row_skip, &e, ctx, cfg, search);
        if (st != NNR_OK) return st;
    }
    /* signalled configurations: sig, sign, greater flags, remainder prefixes 0..30 */
    const int cfg_ctx = CTX_CFG(ngtx);
    for (int i = 0; i < (p->dq ? 24 : 3); i++) cfg[CTX_SIG + i] = signal_configuration(&e, ctx, search, CTX_SIG + i, cfg_ctx, p->estimator_search);
    for (int i = 0; i < 3; i++) cfg[CTX_SIGN + i] = signal_configuration(&e, ctx, search, CTX_SIGN + i, cfg_ctx, p->estimator_search);
    for (uint32_t i = 0; i < 2 * ngtx; i++) cfg[CTX_GTX + i] = signal_configuration(&e, ctx, search, CTX_GTX + (int)i, cfg_ctx, p->estimator_search);
    for (int i = 0; i < SIGNALLED_REM_CONTEXTS; i++)
        cfg[CTX_REM(ngtx) + i] = signal_configuration(&e, ctx, search, CTX_REM(ngtx) + i, cfg_ctx, p->estimator_search);

    const uint64_t first = blocks.count > 1 ? enter_block_row(&e, ctx, cfg, nctx, 0) : 0;
    st = walk_levels(levels, p, blocks, row_skip, &e, ctx, cfg, NULL);
    if (st != NNR_OK) return st;
    enc_finish(&e);
    *out_len = e.pos;
    p->bins = e.bins;
    if (e.pos > cap) return NNR_ERR_OUTPUT_FULL;
    finish_entry_points(&e, first, p->entry_points, blocks.count - 1);
    return NNR_OK;
}

/* ---------------------------------------------------------------- decoder */

typedef struct {
    uint32_t value, range;
    int32_t bits_needed;
    const uint8_t *buf;
    size_t len, pos;
} decoder;

/* Reads past the end yield zeros and are counted: the caller turns them into NNR_ERR_TRUNCATED. */
static inline uint32_t dec_byte(decoder *d) {
    uint32_t b = d->pos < d->len ? d->buf[d->pos] : 0;
    d->pos++;
    return b;
}

static void dec_start(decoder *d, const uint8_t *buf, size_t len) {
    d->buf = buf;
    d->len = len;
    d->pos = 0;
    d->range = 510;
    d->bits_needed = -8;
    d->value = dec_byte(d) << 8;
    d->value |= dec_byte(d);
}

static inline int dec_bin(decoder *d, context *c) {
    uint32_t rlps = ctx_rlps(c, d->range);
    uint32_t rmps = d->range - rlps;
    /* branch-free LPS decision (bins are close to random, a branch would mispredict often):
     * lps = all ones when value >= rmps * 128 */
    uint32_t lps = (uint32_t)-(int32_t)(d->value >= (rmps << 7));
    d->range = rmps ^ ((rmps ^ rlps) & lps);
    d->value -= (rmps << 7) & lps;
    int bin = ctx_mps(c) ^ (int)(lps & 1);
    int n = NNR_RENORM[d->range >> 1];
    d->range <<= n;
    d->value <<= n;
    d->bits_needed += n;
    if (d->bits_needed >= 0) {
        d->value += dec_byte(d) << d->bits_needed;
        d->bits_needed -= 8;
    }
    ctx_update(c, bin);
    return bin;
}

static inline uint32_t dec_bypass(decoder *d, int nbins) {
    uint32_t v = 0;
    for (int i = 0; i < nbins; i++) {
        d->value <<= 1;
        if (++d->bits_needed >= 0) {
            d->value += dec_byte(d);
            d->bits_needed = -8;
        }
        v <<= 1;
        uint32_t scaled = d->range << 7;
        if (d->value >= scaled) {
            d->value -= scaled;
            v |= 1;
        }
    }
    return v;
}

static int dec_terminate(decoder *d) {
    d->range -= 2;
    return d->value >= (d->range << 7);
}

/* Decode one coded index q; returns 0 on a corrupt prefix. */
static inline int decode_level(decoder *d, context *ctx, int state, int cls, uint32_t ngtx, uint32_t max_abs,
                               int32_t *out) {
    if (!dec_bin(d, &ctx[CTX_SIG + 3 * state + cls])) {
        *out = 0;
        return 1;
    }
    int negative = dec_bin(d, &ctx[CTX_SIGN + cls]);
    int neg = negative ? 1 : 0;
    uint32_t a = 1;
    uint32_t k = 0;
    int flag;
    do {
        flag = dec_bin(d, &ctx[CTX_GTX + 2 * k + neg]);
        a += (uint32_t)flag;
        k++;
    } while (flag && k < ngtx);
    if (flag) {
        int rem_ctx = CTX_REM(ngtx);
        uint32_t r = 0;
        if (dec_bin(d, &ctx[rem_ctx])) {
            uint32_t base = 1;
            int log2 = 1;
            while (dec_bin(d, &ctx[rem_ctx + log2])) {
                base += 1u << log2;
                if (++log2 > MAX_PREFIX) return 0;
            }
            r = base + dec_bypass(d, log2);
        }
        a += r;
        if (a > max_abs) return 0;
    }
    *out = negative ? -(int32_t)a : (int32_t)a;
    return 1;
}

/* The decoder's entry point here (NNCodec's BinDec::getEntryPoint after entryPointStart): bit offset and
 * the top 8 value bits. A value that does not fit 8 bits cannot come from an encoder (marked by 256). */
static void dec_entry_point(decoder *d, uint64_t *offset, uint32_t *value) {
    d->range = 256;
    *offset = 8 * (uint64_t)d->pos - 8 + (uint64_t)(int64_t)d->bits_needed;
    *value = d->value >> 7 < 256 ? d->value >> 7 : 256;
}

/* Continue decoding at a bit offset with these 8 value bits (BinDec::setEntryPoint); 0 if it lies
 * outside the payload. */
static int dec_seek(decoder *d, uint64_t offset, uint32_t value) {
    if (offset > 8 * (uint64_t)d->len) return 0;
    const uint64_t t = offset + 9;
    size_t pos = (size_t)(t >> 3);
    int32_t bits_needed = (int32_t)(t & 7) - 9;
    if (t & 7)
        pos++;
    else
        bits_needed += 8;
    if (pos > d->len) return 0;
    d->pos = pos;
    d->bits_needed = bits_needed;
    d->range = 256;
    d->value = (value << 7) + (((uint32_t)d->buf[pos - 1] << (8 + bits_needed)) & 127u);
    return 1;
}

nnr_status nnr_decode_tensor(const uint8_t *payload, size_t len, nnr_tensor_params *p, int32_t *levels,
                             size_t *consumed) {
    nnr_status st = check_params(p);
    if (st != NNR_OK) return st;
    if (len < 2) return NNR_ERR_TRUNCATED;
    const uint32_t ngtx = p->num_gtx_flags;
    const block_layout blocks = block_layout_of(p);
    const uint32_t first_br = p->first_block_row;
    const uint32_t end_br = p->end_block_row ? p->end_block_row : blocks.count;
    if (first_br >= end_br || end_br > blocks.count) return NNR_ERR_ARGUMENT;
    const uint32_t row_begin = first_br * blocks.height, row_end = min_u32(p->rows, end_br * blocks.height);
    *consumed = 0;
    context ctx[CTX_MAX];
    uint8_t cfg[CTX_MAX] = {0};
    const int nctx = (int)CTX_COUNT(ngtx);
    decoder d;
    dec_start(&d, payload, len);
    for (int i = 0; i < nctx; i++) ctx_init(&ctx[i], 0);

    if (p->has_qp_offset) {
        int nbits = 6 + p->qp_density;
        uint32_t raw = dec_bypass(&d, nbits);
        p->qp_offset = (raw & (1u << (nbits - 1))) ? (int32_t)raw - (1 << nbits) : (int32_t)raw;
    }
    const int skip_syntax = uses_row_skip_syntax(p);
    int row_skip = 0;
    if (skip_syntax) {
        row_skip = (int)dec_bypass(&d, 1);
        /* the skip flag of row r is parked in the row's last element until its last segment is reached;
         * only rows of this block-row range are written */
        if (row_skip)
            for (uint32_t r = 0; r < p->rows; r++) {
                int skip = dec_bin(&d, &ctx[CTX_SKIP(ngtx)]);
                if (r >= row_begin && r < row_end) levels[(size_t)r * p->width + p->width - 1] = skip;
            }
    }
    const int cfg_ctx = CTX_CFG(ngtx);
    const int nsig = p->dq ? 24 : 3;
    for (int i = 0; i < nsig + 3 + 2 * (int)ngtx + SIGNALLED_REM_CONTEXTS; i++) {
        int idx = i < nsig ? CTX_SIG + i
                  : i < nsig + 3 ? CTX_SIGN + (i - nsig)
                  : i < nsig + 3 + 2 * (int)ngtx ? CTX_GTX + (i - nsig - 3)
                  : (int)CTX_REM(ngtx) + (i - nsig - 3 - 2 * (int)ngtx);
        cfg[idx] = dec_bin(&d, &ctx[cfg_ctx]) ? (uint8_t)(1 + dec_bypass(&d, 3)) : 0;
        ctx_init(&ctx[idx], cfg[idx]);
    }
    if (d.pos > len + 2) return NNR_ERR_TRUNCATED;

    /* the encoder accepts |n| <= NNR_MAX_ABS_LEVEL; with DQ |n| <= 2|q|, so q gets half the range */
    const uint32_t max_abs = p->dq ? NNR_MAX_ABS_LEVEL / 2 : NNR_MAX_ABS_LEVEL;
    int state = 0;
    int32_t prev = 0;
    uint64_t offset = 0; /* absolute bit offset of the current block row's entry point */
    if (blocks.count > 1) {
        uint32_t value;
        dec_entry_point(&d, &offset, &value);
        if (value > 255) return NNR_ERR_CORRUPT;
        for (int i = 0; i < nctx; i++) ctx_init(&ctx[i], cfg[i]);
        for (uint32_t br = 0; br < first_br; br++) {
            offset += p->entry_points[br] >> 11; /* deltas below 2^53 each: cannot wrap before the check */
            if (offset > 8 * (uint64_t)len) return NNR_ERR_CORRUPT;
        }
        if (first_br > 0) {
            const uint64_t ep = p->entry_points[first_br - 1];
            if (!dec_seek(&d, offset, (uint32_t)(ep >> 3) & 255u)) return NNR_ERR_CORRUPT;
            state = (int)(ep & 7u);
        }
    }
    for (uint32_t br = first_br; br < end_br; br++) {
        const uint32_t r0 = br * blocks.height, r1 = min_u32(p->rows, r0 + blocks.height);
        for (uint32_t c0 = 0; c0 < p->width; c0 += blocks.width) {
            const uint32_t c1 = min_u32(p->width, c0 + blocks.width);
            for (uint32_t r = r0; r < r1; r++) {
                int32_t *row = levels + (size_t)r * p->width;
                if (row_skip && row[p->width - 1]) {
                    if (c1 == p->width) row[p->width - 1] = 0; /* the flag's segment comes last */
                    memset(row + c0, 0, sizeof(int32_t) * (c1 - c0 - (c1 == p->width)));
                    if (p->dq) state = dq_after_zero_row(state, p->width);
                    continue;
                }
                for (uint32_t i = c0; i < c1; i++) {
                    int32_t q;
                    if (!decode_level(&d, ctx, state, level_class(prev), ngtx, max_abs, &q))
                        return d.pos > len + 2 ? NNR_ERR_TRUNCATED : NNR_ERR_CORRUPT;
                    prev = q;
                    if (p->dq) {
                        row[i] = q == 0 ? 0 : 2 * q - (q < 0 ? -(state & 1) : (state & 1));
                        state = DQ_NEXT(state, q);
                    } else {
                        row[i] = q;
                    }
                }
                /* a stream that ran out long ago is truncated: stop instead of decoding zeros */
                if (d.pos > len + 2) return NNR_ERR_TRUNCATED;
            }
        }
        if (br + 1 < blocks.count) {
            /* the next block row must start exactly where its entry point says */
            const uint64_t ep = p->entry_points[br];
            uint64_t here;
            uint32_t value;
            dec_entry_point(&d, &here, &value);
            offset += ep >> 11;
            if (here != offset || value != ((ep >> 3) & 255u) || (uint64_t)state != (ep & 7u)) return NNR_ERR_CORRUPT;
            for (int i = 0; i < nctx; i++) ctx_init(&ctx[i], cfg[i]);
            prev = 0;
        }
    }
    if (end_br < blocks.count) return NNR_OK;
    int end = dec_terminate(&d);
    *consumed = d.pos;
    if (d.pos > len + 2) return NNR_ERR_TRUNCATED;
    if (!end) return NNR_ERR_CORRUPT;
    return NNR_OK;
}

/* ---------------------------------------------------------------- RDOQ
 * The trellis quantiser and the qp grid live in quantize.c; RDOQ stays here because it prices each
 * candidate level with this coder's own binarisation and context states (rate_level/update_level). */

nnr_status nnr_quantize_rdoq(const float *weights, size_t n, float step, double lambda_scale, uint32_t ngtx,
                             int32_t *levels) {
    if (!(step > 0.0f) || !(lambda_scale > 0.0) || ngtx < 1 || ngtx > NNR_MAX_GTX_FLAGS) return NNR_ERR_ARGUMENT;
    /* NNCodec's uniform RDOQ: cost = (|w|/step - k)^2 * 2^15 / lambda' + estimated CABAC bits (2^-15 units),
     * lambda' = lambda_scale * ln2 / 6; k in {0, round - 1, round}; contexts follow the chosen levels. */
    const double dist_scale = 32768.0 / (lambda_scale * log(2.0) / 6.0);
    const double qscale = 1.0 / (double)step;
    context ctx[CTX_MAX];
    for (int i = 0; i < (int)CTX_COUNT(ngtx); i++) ctx_init(&ctx[i], 0);
    encoder unused;
    int32_t prev = 0;
    for (size_t i = 0; i < n; i++) {
        float v = weights[i];
        if (!(v == v)) return NNR_ERR_LEVEL_RANGE;
        double r = (double)roundf((float)(1.0f / step) * v);
        if (r > (double)NNR_MAX_ABS_LEVEL - 2 || r < -(double)NNR_MAX_ABS_LEVEL + 2) return NNR_ERR_LEVEL_RANGE;
        int sign = v < 0 ? -1 : 1;
        double absw = (double)sign * (double)v * qscale;
        int32_t max_q = (int32_t)(absw + 0.5);
        int cls = level_class(prev);
        rate_sink sink = {ctx, 0};
        rate_level(&sink, &unused, 0, 0, cls, ngtx);
        double best_cost = dist_scale * absw * absw + (double)sink.bits;
        int32_t best = 0;
        for (int32_t k = max_q - 1 < 1 ? 1 : max_q - 1; k <= max_q; k++) {
            sink.bits = 0;
            rate_level(&sink, &unused, sign * k, 0, cls, ngtx);
            double d = absw - (double)k;
            double cost = dist_scale * d * d + (double)sink.bits;
            if (cost < best_cost) {
                best_cost = cost;
                best = k;
            }
        }
        levels[i] = sign * best;
        update_level(ctx, &unused, levels[i], 0, cls, ngtx);
        prev = levels[i];
    }
    return NNR_OK;
}
