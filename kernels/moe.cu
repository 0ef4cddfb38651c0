// MoE routing: each token's router logits → its chosen experts and weights, with the host
// reference's exact rules (src/ops/routing.rs: softmax or sigmoid scores; greedy,
// group-limited greedy or noaux_tc top-k; ties to the lower index). One block per token: the
// block computes the scores, one thread the choice. docs/kernels.md, "MoE routing".
// mla: no-spills
#include "common.cuh"

#define MAX_GROUPS 64

// Index of the largest value of `v[0..n)` not yet `taken` (bit i of taken[i / 32]), ties to the
// lower index; -1 when every index is taken.
__device__ int best_untaken(const float* v, int n, const uint32_t* taken) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (taken[i >> 5] & (1u << (i & 31))) continue;
        if (best < 0 || v[i] > v[best]) best = i;
    }
    return best;
}

template <typename T>
__device__ void moe_route(const T* logits, const float* bias, uint32_t* ids, float* weights, int experts,
                          int top_k, int sigmoid, int method, int n_group, int topk_group, int normalize,
                          float scale) {
    float* shared = reinterpret_cast<float*>(dynamic_shared_bytes());  // [2][experts], sized by the host
    float* score = shared;            // [experts]
    float* choice = shared + experts;  // [experts]
    const T* row = logits + (size_t)blockIdx.x * experts;
    if (sigmoid) {
        for (int i = threadIdx.x; i < experts; i += blockDim.x) score[i] = 1.0f / (1.0f + expf(-to_f32(row[i])));
    } else {
        float m = -INFINITY;
        for (int i = threadIdx.x; i < experts; i += blockDim.x) m = fmaxf(m, to_f32(row[i]));
        m = block_max(m);
        float s = 0.0f;
        for (int i = threadIdx.x; i < experts; i += blockDim.x) s += expf(to_f32(row[i]) - m);
        s = block_sum(s);
        for (int i = threadIdx.x; i < experts; i += blockDim.x) score[i] = expf(to_f32(row[i]) - m) / s;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;

    for (int i = 0; i < experts; i++) choice[i] = score[i] + (method == 2 && bias ? bias[i] : 0.0f);
    if (method != 0) {
        const int group_size = experts / max(n_group, 1);
        float group_score[MAX_GROUPS];
        for (int g = 0; g < n_group; g++) {
            const float* v = choice + g * group_size;
            if (method == 1) {
                float m = -INFINITY;
                for (int i = 0; i < group_size; i++) m = fmaxf(m, v[i]);
                group_score[g] = m;
            } else {
                // The sum of the group's two best (one if the group has one expert).
                int a = 0;
                for (int i = 1; i < group_size; i++) if (v[i] > v[a]) a = i;
                int b = -1;
                for (int i = 0; i < group_size; i++) if (i != a && (b < 0 || v[i] > v[b])) b = i;
                group_score[g] = v[a] + (b >= 0 ? v[b] : 0.0f);
            }
        }
        uint32_t kept[(MAX_GROUPS + 31) / 32] = {0};
        for (int j = 0; j < topk_group && j < n_group; j++) {
            const int g = best_untaken(group_score, n_group, kept);
            kept[g >> 5] |= 1u << (g & 31);
        }
        const float dropped = method == 1 ? 0.0f : -INFINITY;
        for (int i = 0; i < experts; i++) {
            const int g = i / group_size;
            if (!(kept[g >> 5] & (1u << (g & 31)))) choice[i] = dropped;
        }
    }
    // The chosen set is marked in the bits of `taken`, 32 experts per word.
    uint32_t taken[32] = {0};
    float sum = 0.0f;
    uint32_t* out_ids = ids + (size_t)blockIdx.x * top_k;
    float* out_w = weights + (size_t)blockIdx.x * top_k;
    for (int j = 0; j < top_k; j++) {
        const int e = best_untaken(choice, experts, taken);
        taken[e >> 5] |= 1u << (e & 31);
        out_ids[j] = e;
        out_w[j] = score[e];
        sum += score[e];
    }
    const float norm = normalize ? 1.0f / (sum + 1e-20f) : 1.0f;
    for (int j = 0; j < top_k; j++) out_w[j] = out_w[j] * norm * scale;
}

#define ENTRY_POINTS(NAME, T)                                                                         \
    extern "C" __global__ void moe_route_##NAME(const T* logits, const float* bias, uint32_t* ids,     \
                                                float* weights, int experts, int top_k, int sigmoid,   \
                                                int method, int n_group, int topk_group,               \
                                                int normalize, float scale) {                          \
        moe_route(logits, bias, ids, weights, experts, top_k, sigmoid, method, n_group, topk_group,    \
                  normalize, scale);                                                                   \
    }

MLA_FOR_EACH_DTYPE(ENTRY_POINTS)
