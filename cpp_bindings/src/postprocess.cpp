// Post-processing (onnxcam/postprocess.py): ReLU, per-image min-max, bilinear resize with
// OpenCV INTER_LINEAR semantics.
#include <algorithm>
#include <cmath>
#include <vector>

#include "internal.hpp"

namespace onnxcam::detail {

void relu_inplace(float* m, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) m[i] = m[i] > 0.0f ? m[i] : 0.0f;  // NaN -> 0 too
}

void minmax_inplace(float* m, std::size_t n) noexcept {
    if (n == 0) return;
    // pass 1: non-finite -> 0, min and max (8 independent lanes so the loop vectorises)
    constexpr std::size_t kLanes = 8;
    float lo_l[kLanes], hi_l[kLanes];
    const float first = finite_or_zero(m[0]);
    for (std::size_t k = 0; k < kLanes; ++k) lo_l[k] = hi_l[k] = first;
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (std::size_t k = 0; k < kLanes; ++k) {
            const float v = finite_or_zero(m[i + k]);
            m[i + k] = v;
            lo_l[k] = v < lo_l[k] ? v : lo_l[k];
            hi_l[k] = v > hi_l[k] ? v : hi_l[k];
        }
    for (; i < n; ++i) {
        const float v = finite_or_zero(m[i]);
        m[i] = v;
        lo_l[0] = v < lo_l[0] ? v : lo_l[0];
        hi_l[0] = v > hi_l[0] ? v : hi_l[0];
    }
    float lo = lo_l[0], hi = hi_l[0];
    for (std::size_t k = 1; k < kLanes; ++k) {
        lo = lo_l[k] < lo ? lo_l[k] : lo;
        hi = hi_l[k] > hi ? hi_l[k] : hi;
    }
    // pass 2: (m - lo) / span in float32, as numpy
    const float span = hi - lo;
    if (!(span > 0.0f)) {
        std::fill(m, m + n, 0.0f);
    } else if (std::isfinite(span)) {
        for (std::size_t j = 0; j < n; ++j) m[j] = (m[j] - lo) / span;
    } else {  // the span overflows float32 (numpy would give NaN): divide in double instead
        const double dlo = lo, dspan = static_cast<double>(hi) - dlo;
        for (std::size_t j = 0; j < n; ++j)
            m[j] = static_cast<float>((static_cast<double>(m[j]) - dlo) / dspan);
    }
}

namespace {

// cv2.resize(INTER_LINEAR) on float32 maps, reproduced bit for bit (checked against
// opencv-python 5.0 on x86-64). OpenCV takes one of two code paths:
//  - maps with at least 2 rows and 2 columns go through Intel IPP: coordinates in double,
//    src = (dst + 0.5) * (in / out) - 0.5, the fraction f rounded to float32, and each pass a
//    float32 fused multiply-add a0 + (a1 - a0) * f (horizontal pass first);
//  - maps with a single row or column use OpenCV's own kernel: f = (float)((dst + 0.5) /
//    (out / in) - 0.5) - floor, weights (1 - f, f), rows clamped without zeroing the weight.
// Both clamp the x index at the borders with f = 0, so edges replicate.
struct Tap {
    int64_t i0, i1;
    float w0, w1;
};

std::vector<Tap> taps_ipp(int64_t in, int64_t out) {
    std::vector<Tap> t(static_cast<std::size_t>(out));
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    for (int64_t d = 0; d < out; ++d) {
        const double fd = (static_cast<double>(d) + 0.5) * scale - 0.5;
        int64_t s = static_cast<int64_t>(std::floor(fd));
        double f = fd - static_cast<double>(s);
        if (s < 0) f = 0.0, s = 0;
        if (s >= in - 1) f = 0.0, s = in - 1;
        const float f32 = static_cast<float>(f);
        t[static_cast<std::size_t>(d)] = Tap{s, std::min(s + 1, in - 1), 1.0f - f32, f32};
    }
    return t;
}

std::vector<Tap> taps_opencv(int64_t in, int64_t out, bool zero_weight_at_border) {
    std::vector<Tap> t(static_cast<std::size_t>(out));
    const double scale = 1.0 / (static_cast<double>(out) / static_cast<double>(in));
    for (int64_t d = 0; d < out; ++d) {
        float f = static_cast<float>((static_cast<double>(d) + 0.5) * scale - 0.5);
        int64_t s = static_cast<int64_t>(std::floor(f));
        f -= static_cast<float>(s);
        Tap& tap = t[static_cast<std::size_t>(d)];
        if (zero_weight_at_border) {
            if (s < 0) f = 0.0f, s = 0;
            if (s >= in - 1) f = 0.0f, s = in - 1;
            tap.i0 = s;
            tap.i1 = std::min(s + 1, in - 1);
        } else {
            tap.i0 = std::clamp<int64_t>(s, 0, in - 1);
            tap.i1 = std::clamp<int64_t>(s + 1, 0, in - 1);
        }
        tap.w0 = 1.0f - f;
        tap.w1 = f;
    }
    return t;
}

// float32 fma(a1 - a0, f, a0): the product of two floats is exact in double, so one double
// add and a rounding to float reproduce it (up to a double-rounding tie, vanishingly rare).
inline float lerp(float a0, float a1, float f) noexcept {
    const float d = a1 - a0;
    return static_cast<float>(static_cast<double>(a0) +
                              static_cast<double>(d) * static_cast<double>(f));
}

inline float blend(float a0, float w0, float a1, float w1) noexcept { return a0 * w0 + a1 * w1; }

}  // namespace

void resize_map(const float* in, int64_t h, int64_t w, float* out, int64_t H, int64_t W) {
    if (h == H && w == W) {
        for (int64_t i = 0; i < h * w; ++i) out[i] = finite_or_zero(in[i]);
        return;
    }
    const bool ipp = h >= 2 && w >= 2;
    const std::vector<Tap> xt = ipp ? taps_ipp(w, W) : taps_opencv(w, W, true);
    const std::vector<Tap> yt = ipp ? taps_ipp(h, H) : taps_opencv(h, H, false);
    // horizontal pass over the rows the vertical pass reads, once each
    std::vector<char> needed(static_cast<std::size_t>(h), 0);
    for (const Tap& t : yt) needed[t.i0] = needed[t.i1] = 1;
    std::vector<float> src_row(static_cast<std::size_t>(w));
    std::vector<float> hor(static_cast<std::size_t>(h * W));
    for (int64_t r = 0; r < h; ++r) {
        if (!needed[r]) continue;
        for (int64_t x = 0; x < w; ++x) src_row[x] = finite_or_zero(in[r * w + x]);
        float* d = hor.data() + r * W;
        if (ipp)
            for (int64_t x = 0; x < W; ++x) d[x] = lerp(src_row[xt[x].i0], src_row[xt[x].i1], xt[x].w1);
        else
            for (int64_t x = 0; x < W; ++x)
                d[x] = blend(src_row[xt[x].i0], xt[x].w0, src_row[xt[x].i1], xt[x].w1);
    }
    for (int64_t y = 0; y < H; ++y) {
        const Tap& t = yt[y];
        const float* r0 = hor.data() + t.i0 * W;
        const float* r1 = hor.data() + t.i1 * W;
        float* d = out + y * W;
        if (ipp)
            for (int64_t x = 0; x < W; ++x) d[x] = lerp(r0[x], r1[x], t.w1);
        else
            for (int64_t x = 0; x < W; ++x) d[x] = blend(r0[x], t.w0, r1[x], t.w1);
    }
}

}  // namespace onnxcam::detail
