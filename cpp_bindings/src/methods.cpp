// CAM methods (onnxcam/methods.py): raw maps [B, H, W] from activations A, gradients G and
// classifier weights w. Element-wise products are rounded to float32 as numpy does; sums over
// pixels and channels accumulate in double (numpy sums float32), so results agree to float32
// rounding.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <string>
#include <vector>

#include "internal.hpp"

namespace onnxcam::detail {
namespace {

struct MethodInfo {
    int32_t id;
    const char* name;
    int32_t needs;
};

constexpr int32_t kAG = ONNXCAM_NEEDS_ACTIVATIONS | ONNXCAM_NEEDS_GRADIENTS;

const MethodInfo kMethods[] = {
    {ONNXCAM_METHOD_CAM, "cam", ONNXCAM_NEEDS_ACTIVATIONS | ONNXCAM_NEEDS_CAM_WEIGHTS},
    {ONNXCAM_METHOD_GRADCAM, "gradcam", kAG},
    {ONNXCAM_METHOD_GRADCAM_PP, "gradcam++", kAG},
    {ONNXCAM_METHOD_XGRADCAM, "xgradcam", kAG},
    {ONNXCAM_METHOD_LAYERCAM, "layercam", kAG},
    {ONNXCAM_METHOD_HIRESCAM, "hirescam", kAG},
    {ONNXCAM_METHOD_GRADCAM_ELEMENTWISE, "gradcam-elementwise", kAG},
};

const MethodInfo* find_method(int32_t id) noexcept {
    for (const auto& m : kMethods)
        if (m.id == id) return &m;
    return nullptr;
}

// One sample's feature tensor: element (c, p) with p = i * W + j the pixel index.
struct Sample {
    const float* data;
    int64_t sc;  // channel stride
    int64_t sp;  // pixel stride
    float operator()(int64_t c, int64_t p) const noexcept { return data[c * sc + p * sp]; }
};

inline float relu(float v) noexcept { return std::max(v, 0.0f); }  // NaN stays NaN

// acc[p] = sum_c weights[c] * A(c, p)
void weighted_sum(const std::vector<float>& weights, const Sample& a, int64_t C, int64_t P,
                  bool nhwc, std::vector<double>& acc) {
    std::fill(acc.begin(), acc.end(), 0.0);
    if (nhwc) {
        for (int64_t p = 0; p < P; ++p) {
            const float* row = a.data + p * a.sp;
            double s = 0.0;
            for (int64_t c = 0; c < C; ++c) s += static_cast<double>(weights[c]) * row[c];
            acc[p] = s;
        }
    } else {
        for (int64_t c = 0; c < C; ++c) {
            const double wc = weights[c];
            const float* plane = a.data + c * a.sc;
            for (int64_t p = 0; p < P; ++p) acc[p] += wc * plane[p];
        }
    }
}

// Channel weights of the Grad-CAM family (float32, like the numpy weights fed to matmul).
void channel_weights(int32_t method, const Sample& a, const Sample& g, const float* w_row,
                     int64_t C, int64_t P, std::vector<float>& weights) {
    for (int64_t c = 0; c < C; ++c) {
        switch (method) {
            case ONNXCAM_METHOD_CAM:
                weights[c] = w_row[c];
                break;
            case ONNXCAM_METHOD_GRADCAM: {  // mean_ij G
                double s = 0.0;
                for (int64_t p = 0; p < P; ++p) s += g(c, p);
                weights[c] = static_cast<float>(s / static_cast<double>(P));
                break;
            }
            case ONNXCAM_METHOD_GRADCAM_PP: {
                // a = G^2 / (2 G^2 + sum_ab A * G^3 + 1e-6); sum_ij a * relu(G). Only G > 0
                // contributes: skipping G <= 0 also avoids inf * 0 where the denominator
                // vanishes for a negative G (the Python runtime's r = ReLU(G) form).
                double sum_a = 0.0;
                for (int64_t p = 0; p < P; ++p) sum_a += a(c, p);
                const float sa = static_cast<float>(sum_a);
                double s = 0.0;
                for (int64_t p = 0; p < P; ++p) {
                    const float gv = g(c, p);
                    if (!(gv > 0.0f)) continue;
                    const float g2 = gv * gv;
                    const float g3 = g2 * gv;
                    const float denom = (2.0f * g2 + sa * g3) + 1e-6f;
                    const float coef = g2 / denom;
                    s += static_cast<double>(coef * relu(gv));
                }
                weights[c] = static_cast<float>(s);
                break;
            }
            case ONNXCAM_METHOD_XGRADCAM: {  // sum G.A / (sum A + 1e-7)
                double sga = 0.0, sa = 0.0;
                for (int64_t p = 0; p < P; ++p) {
                    const float av = a(c, p);
                    sga += static_cast<double>(g(c, p) * av);
                    sa += av;
                }
                weights[c] = static_cast<float>(sga) / (static_cast<float>(sa) + 1e-7f);
                break;
            }
            default:
                throw Failure(ONNXCAM_ERR_INTERNAL, "channel_weights: not a channel method");
        }
    }
}

// Element-wise methods: acc[p] = sum_c f(G(c, p), A(c, p)).
template <class F>
void elementwise_sum(const Sample& a, const Sample& g, int64_t C, int64_t P,
                     std::vector<double>& acc, F f) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t c = 0; c < C; ++c)
        for (int64_t p = 0; p < P; ++p) acc[p] += static_cast<double>(f(g(c, p), a(c, p)));
}

}  // namespace

const char* method_name(int32_t method) noexcept {
    const MethodInfo* m = find_method(method);
    return m ? m->name : nullptr;
}

int32_t method_needs(int32_t method) noexcept {
    const MethodInfo* m = find_method(method);
    return m ? m->needs : 0;
}

int32_t method_from_name(const char* name) noexcept {
    if (!name) return -1;
    std::string key;
    for (const char* s = name; *s; ++s)
        key += static_cast<char>(std::tolower(static_cast<unsigned char>(*s)));
    if (key == "gradcampp" || key == "gradcam_pp" || key == "gradcamplusplus") key = "gradcam++";
    if (key == "gradcam_elementwise") key = "gradcam-elementwise";
    for (const auto& m : kMethods)
        if (key == m.name) return m.id;
    return -1;
}

void raw_maps(int32_t method, const float* A, const float* G, const float* w, int64_t B,
              int64_t C, int64_t H, int64_t W, bool nhwc, float* out) {
    const int64_t P = H * W;
    const int64_t per_sample = C * P;
    std::vector<double> acc(static_cast<std::size_t>(P));
    std::vector<float> weights(static_cast<std::size_t>(C));
    for (int64_t b = 0; b < B; ++b) {
        const Sample a{A + b * per_sample, nhwc ? 1 : P, nhwc ? C : 1};
        const Sample g{G ? G + b * per_sample : nullptr, nhwc ? 1 : P, nhwc ? C : 1};
        switch (method) {
            case ONNXCAM_METHOD_CAM:
            case ONNXCAM_METHOD_GRADCAM:
            case ONNXCAM_METHOD_GRADCAM_PP:
            case ONNXCAM_METHOD_XGRADCAM:
                channel_weights(method, a, g, w ? w + b * C : nullptr, C, P, weights);
                weighted_sum(weights, a, C, P, nhwc, acc);
                break;
            case ONNXCAM_METHOD_LAYERCAM:
                elementwise_sum(a, g, C, P, acc, [](float gv, float av) { return relu(gv) * av; });
                break;
            case ONNXCAM_METHOD_HIRESCAM:
                elementwise_sum(a, g, C, P, acc, [](float gv, float av) { return gv * av; });
                break;
            case ONNXCAM_METHOD_GRADCAM_ELEMENTWISE:
                elementwise_sum(a, g, C, P, acc, [](float gv, float av) { return relu(gv * av); });
                break;
            default:
                throw Failure(ONNXCAM_ERR_UNSUPPORTED, "unknown method " + std::to_string(method));
        }
        float* o = out + b * P;
        for (int64_t p = 0; p < P; ++p) o[p] = finite_or_zero(static_cast<float>(acc[p]));
    }
}

}  // namespace onnxcam::detail
