/* Quantisers of edgeprune's NNR core that need no entropy coder: NNC's qp -> step grid, and
 * reconstruction indices from float weights - round(w/step), or the 8-state dependent-quantisation
 * trellis that makes the same decisions as NNCodec (lambda = 0). The rate-driven RDOQ quantiser
 * needs the coder's context model and lives in cabac.c. */
#include <math.h>
#include <string.h>

#include "cabac.h"

float nnr_step_size(int32_t qp, uint32_t qp_density) {
    int32_t k = 1 << qp_density;
    int32_t mul = k + (qp & (k - 1));
    int32_t shift = qp >> qp_density; /* floor division (arithmetic shift) */
    return (float)ldexp((double)mul, shift - (int32_t)qp_density);
}

size_t nnr_trellis_scratch_size(size_t n) { return n * 8; }

/* Candidate reconstruction of one weight: slot k < 4 holds multiple qidx with qidx & 3 == k, slot 4 zero. */
typedef struct {
    double dist[5];
    int32_t level[5];
} candidates;

static inline void trellis_candidates(double value, double qscale, candidates *c) {
    int sign = value < 0 ? -1 : 1;
    double org = qscale * value * (double)sign;
    int32_t min_q = (int32_t)org - 1;
    if (min_q < 1) min_q = 1;
    c->level[4] = 0;
    c->dist[4] = org * org;
    for (int32_t qidx = min_q; qidx < min_q + 4; qidx++) {
        double diff = org - (double)qidx;
        c->dist[qidx & 3] = diff * diff;
        c->level[qidx & 3] = sign * ((qidx + 1) >> 1);
    }
}

/* Branches into each trellis state in NNCodec's order (the order decides ties): {previous state, candidate
 * slot}. Derived from DQ_NEXT: for prev = 0..7 (quantiser q = prev & 1), state DQ_NEXT[prev][0] gets
 * {prev, 3q} then {prev, 4 (zero)}, state DQ_NEXT[prev][1] gets {prev, 2 - q}. A constant table lets the
 * compiler unroll the 8 x 3 inner loop and keep the path costs in registers. */
static const int8_t TRELLIS_PREV[8][3] = {{0, 0, 4}, {2, 2, 6}, {0, 4, 4}, {2, 6, 6},
                                         {3, 7, 7}, {1, 5, 5}, {3, 3, 7}, {1, 1, 5}};
static const int8_t TRELLIS_SLOT[8][3] = {{0, 4, 2}, {0, 4, 2}, {2, 0, 4}, {2, 0, 4},
                                         {1, 3, 4}, {1, 3, 4}, {3, 4, 1}, {3, 4, 1}};

nnr_status nnr_quantize(const float *weights, size_t n, float step, uint8_t dq, int32_t *levels, uint8_t *scratch) {
    if (!(step > 0.0f)) return NNR_ERR_ARGUMENT;
    const float scale = 1.0f / step;
    for (size_t i = 0; i < n; i++) {
        float v = weights[i];
        if (!(v == v)) return NNR_ERR_LEVEL_RANGE; /* NaN */
        double r = (double)roundf(scale * v);
        if (r > (double)NNR_MAX_ABS_LEVEL - 2 || r < -(double)NNR_MAX_ABS_LEVEL + 2) return NNR_ERR_LEVEL_RANGE;
        if (!dq) levels[i] = (int32_t)r;
    }
    if (!dq) return NNR_OK;

    const double qscale = 1.0 / (double)step;
    double cost[8], next[8];
    for (int s = 0; s < 8; s++) cost[s] = 0.5 * 1.7976931348623157e308;
    cost[0] = 0.0;
    candidates c;
    for (size_t i = 0; i < n; i++) {
        trellis_candidates((double)weights[i], qscale, &c);
        uint8_t *decision = scratch + 8 * i;
        for (int s = 0; s < 8; s++) {
            double best = cost[TRELLIS_PREV[s][0]] + c.dist[TRELLIS_SLOT[s][0]];
            int choice = 0;
            for (int b = 1; b < 3; b++) {
                double v = cost[TRELLIS_PREV[s][b]] + c.dist[TRELLIS_SLOT[s][b]];
                if (v < best) {
                    best = v;
                    choice = b;
                }
            }
            next[s] = best;
            decision[s] = (uint8_t)choice;
        }
        memcpy(cost, next, sizeof(cost));
    }
    int state = 0;
    for (int s = 1; s < 8; s++)
        if (cost[s] < cost[state]) state = s;
    for (size_t k = n; k-- > 0;) {
        int b = scratch[8 * k + state];
        int prev = TRELLIS_PREV[state][b];
        trellis_candidates((double)weights[k], qscale, &c);
        int32_t q = c.level[TRELLIS_SLOT[state][b]];
        levels[k] = q == 0 ? 0 : 2 * q - (q < 0 ? -(prev & 1) : (prev & 1));
        state = prev;
    }
    return NNR_OK;
}
