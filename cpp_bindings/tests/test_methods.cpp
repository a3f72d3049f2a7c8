// CAM methods against hand-computed values, layouts, flags, bad inputs.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "check.hpp"

namespace {

// [1, 3, 1, 2] NCHW: channels c0 = [1, 2], c1 = [1, 4], c2 = [-1, 3]
const std::vector<float> kA = {1, 2, 1, 4, -1, 3};
const std::vector<float> kG = {1, 3, -1, 0.5f, -2, 1};
const std::vector<float> kW = {3, -1, 1};

std::vector<float> raw(int32_t method, const std::vector<float>& A, const std::vector<float>& G,
                       const float* w, int64_t B, int64_t C, int64_t H, int64_t W,
                       int32_t layout = ONNXCAM_LAYOUT_NCHW) {
    onnxcam_params p = onnxcam_default_params();
    p.method = method;
    p.layout = layout;
    p.relu = 0;
    p.normalize = 0;
    std::vector<float> out(static_cast<size_t>(B * H * W), -999.0f);
    CHECK_OK(onnxcam_cam_map(A.data(), G.data(), w, B, C, H, W, &p, out.data()));
    return out;
}

void expect_raw(int32_t method, float v0, float v1) {
    const std::vector<float> m = raw(method, kA, kG, kW.data(), 1, 3, 1, 2);
    CHECK_NEAR(m[0], v0, 1e-5);
    CHECK_NEAR(m[1], v1, 1e-5);
}

std::vector<float> random_buffer(size_t n, unsigned seed, float lo = -1, float hi = 1) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(gen);
    return v;
}

// NCHW [B, C, H, W] -> NHWC [B, H, W, C]
std::vector<float> to_nhwc(const std::vector<float>& x, int64_t B, int64_t C, int64_t H,
                           int64_t W) {
    std::vector<float> y(x.size());
    for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < H; ++i)
                for (int64_t j = 0; j < W; ++j)
                    y[((b * H + i) * W + j) * C + c] = x[((b * C + c) * H + i) * W + j];
    return y;
}

}  // namespace

// cam: 3*[1,2] - [1,4] + [-1,3] = [1, 5]
TEST(cam_hand_values) { expect_raw(ONNXCAM_METHOD_CAM, 1.0f, 5.0f); }

// alpha = mean G = [2, -0.25, -0.5]; 2*[1,2] - 0.25*[1,4] - 0.5*[-1,3] = [2.25, 1.5]
TEST(gradcam_hand_values) { expect_raw(ONNXCAM_METHOD_GRADCAM, 2.25f, 1.5f); }

// sum A = [3, 5, 2]; a = G^2 / (2G^2 + sumA G^3 + 1e-6):
// c0: [1/5, 9/99] -> alpha0 = 0.2*1 + 9/99*3 = 0.472727
// c1: [1/-3, 0.25/1.125] -> alpha1 = 0.222222*0.5 = 0.111111 (relu(G) = [0, 0.5])
// c2: [4/-8, 1/4] -> alpha2 = 0.25
// map = 0.472727*[1,2] + 0.111111*[1,4] + 0.25*[-1,3] = [0.333838, 2.139899]
TEST(gradcam_pp_hand_values) { expect_raw(ONNXCAM_METHOD_GRADCAM_PP, 0.333838f, 2.139899f); }

// alpha = sum(G.A) / sum(A): [7/3, 1/5, 5/2]; map = [7/3 + 0.2 - 2.5, 14/3 + 0.8 + 7.5]
TEST(xgradcam_hand_values) { expect_raw(ONNXCAM_METHOD_XGRADCAM, 0.033333f, 12.966667f); }

// relu(G).A: c0 [1, 6], c1 [0, 2], c2 [0, 3]
TEST(layercam_hand_values) { expect_raw(ONNXCAM_METHOD_LAYERCAM, 1.0f, 11.0f); }

// G.A: c0 [1, 6], c1 [-1, 2], c2 [2, 3]
TEST(hirescam_hand_values) { expect_raw(ONNXCAM_METHOD_HIRESCAM, 2.0f, 11.0f); }

// relu(G.A): c0 [1, 6], c1 [0, 2], c2 [2, 3]
TEST(gradcam_elementwise_hand_values) {
    expect_raw(ONNXCAM_METHOD_GRADCAM_ELEMENTWISE, 3.0f, 11.0f);
}

TEST(gradcam_pp_zero_gradient_is_zero_weight) {
    // G == 0 everywhere: a = 0, alpha = 0, map = 0
    const std::vector<float> A = {1, 2, 3, 4};
    const std::vector<float> G = {0, 0, 0, 0};
    const std::vector<float> m = raw(ONNXCAM_METHOD_GRADCAM_PP, A, G, nullptr, 1, 1, 2, 2);
    for (float v : m) CHECK_EQ(v, 0.0f);
}

TEST(relu_and_normalize_flags) {
    onnxcam_params p = onnxcam_default_params();
    p.method = ONNXCAM_METHOD_HIRESCAM;  // raw = [2, 11]
    std::vector<float> out(2);
    CHECK_OK(onnxcam_cam_map(kA.data(), kG.data(), nullptr, 1, 3, 1, 2, &p, out.data()));
    CHECK_EQ(out[0], 0.0f);
    CHECK_EQ(out[1], 1.0f);
    // cam with w = [-1, 0, 0]: raw = -c0 = [-1, -2]
    const std::vector<float> w = {-1, 0, 0};
    p.method = ONNXCAM_METHOD_CAM;
    p.normalize = 0;
    CHECK_OK(onnxcam_cam_map(kA.data(), nullptr, w.data(), 1, 3, 1, 2, &p, out.data()));
    CHECK_EQ(out[0], 0.0f);  // relu
    CHECK_EQ(out[1], 0.0f);
    p.relu = 0;
    p.normalize = 1;  // min-max of [-1, -2] -> [1, 0]
    CHECK_OK(onnxcam_cam_map(kA.data(), nullptr, w.data(), 1, 3, 1, 2, &p, out.data()));
    CHECK_EQ(out[0], 1.0f);
    CHECK_EQ(out[1], 0.0f);
    p.relu = 1;  // relu -> [0, 0]: constant -> zeros, never NaN
    CHECK_OK(onnxcam_cam_map(kA.data(), nullptr, w.data(), 1, 3, 1, 2, &p, out.data()));
    CHECK_EQ(out[0], 0.0f);
    CHECK_EQ(out[1], 0.0f);
}

TEST(nhwc_equals_nchw) {
    const int64_t B = 2, C = 5, H = 3, W = 4;
    const size_t n = static_cast<size_t>(B * C * H * W);
    const std::vector<float> A = random_buffer(n, 1, 0, 2);
    const std::vector<float> G = random_buffer(n, 2);
    const std::vector<float> w = random_buffer(static_cast<size_t>(B * C), 3);
    const std::vector<float> An = to_nhwc(A, B, C, H, W), Gn = to_nhwc(G, B, C, H, W);
    for (int32_t m = 0; m < ONNXCAM_METHOD_COUNT; ++m) {
        const std::vector<float> a = raw(m, A, G, w.data(), B, C, H, W);
        const std::vector<float> b = raw(m, An, Gn, w.data(), B, C, H, W, ONNXCAM_LAYOUT_NHWC);
        for (size_t i = 0; i < a.size(); ++i) CHECK_NEAR(a[i], b[i], 1e-6 * (1 + std::fabs(a[i])));
    }
}

TEST(batch_items_are_independent) {
    const int64_t C = 4, H = 2, W = 3;
    const size_t per = static_cast<size_t>(C * H * W);
    const std::vector<float> A = random_buffer(2 * per, 4, 0, 1);
    const std::vector<float> G = random_buffer(2 * per, 5);
    const std::vector<float> w = random_buffer(2 * static_cast<size_t>(C), 6);
    for (int32_t m = 0; m < ONNXCAM_METHOD_COUNT; ++m) {
        const std::vector<float> both = raw(m, A, G, w.data(), 2, C, H, W);
        const std::vector<float> A1(A.begin() + per, A.end()), G1(G.begin() + per, G.end());
        const std::vector<float> second = raw(m, A1, G1, w.data() + C, 1, C, H, W);
        for (size_t i = 0; i < second.size(); ++i) CHECK_EQ(both[H * W + i], second[i]);
    }
}

TEST(nan_and_inf_inputs_give_finite_maps) {
    const int64_t C = 3, H = 3, W = 3;
    const size_t n = static_cast<size_t>(C * H * W);
    for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
        std::vector<float> A = random_buffer(n, 7, 0, 1), G = random_buffer(n, 8);
        std::vector<float> w = random_buffer(static_cast<size_t>(C), 9);
        A[4] = bad;
        G[13] = bad;
        w[1] = bad;
        for (int32_t m = 0; m < ONNXCAM_METHOD_COUNT; ++m)
            for (int flags = 0; flags < 4; ++flags) {
                onnxcam_params p = onnxcam_default_params();
                p.method = m;
                p.relu = flags & 1;
                p.normalize = flags >> 1;
                std::vector<float> out(static_cast<size_t>(H * W));
                CHECK_OK(onnxcam_cam_map(A.data(), G.data(), w.data(), 1, C, H, W, &p,
                                         out.data()));
                for (float v : out) CHECK(std::isfinite(v));
                if (p.normalize)
                    for (float v : out) CHECK(v >= 0.0f && v <= 1.0f);
            }
    }
}

TEST(missing_inputs_are_null_pointer_errors) {
    onnxcam_params p = onnxcam_default_params();
    std::vector<float> out(2);
    p.method = ONNXCAM_METHOD_GRADCAM;
    CHECK_STATUS(onnxcam_cam_map(kA.data(), nullptr, nullptr, 1, 3, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_cam_map(nullptr, kG.data(), nullptr, 1, 3, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_cam_map(kA.data(), kG.data(), nullptr, 1, 3, 1, 2, &p, nullptr),
                 ONNXCAM_ERR_NULL_POINTER);
    p.method = ONNXCAM_METHOD_CAM;  // needs weights, not gradients
    CHECK_STATUS(onnxcam_cam_map(kA.data(), kG.data(), nullptr, 1, 3, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_NULL_POINTER);
    CHECK_OK(onnxcam_cam_map(kA.data(), nullptr, kW.data(), 1, 3, 1, 2, &p, out.data()));
    // NULL params = defaults (gradcam, relu, normalize)
    CHECK_OK(onnxcam_cam_map(kA.data(), kG.data(), nullptr, 1, 3, 1, 2, nullptr, out.data()));
    CHECK_EQ(out[0], 1.0f);  // gradcam raw [2.25, 1.5]
    CHECK_EQ(out[1], 0.0f);
}

TEST(bad_shapes_and_arguments) {
    onnxcam_params p = onnxcam_default_params();
    std::vector<float> out(2);
    const float* a = kA.data();
    const float* g = kG.data();
    CHECK_STATUS(onnxcam_cam_map(a, g, nullptr, 0, 3, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_BAD_SHAPE);
    CHECK_STATUS(onnxcam_cam_map(a, g, nullptr, 1, -3, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_BAD_SHAPE);
    CHECK_STATUS(onnxcam_cam_map(a, g, nullptr, 1, 3, 0, 2, &p, out.data()),
                 ONNXCAM_ERR_BAD_SHAPE);
    const int64_t huge = INT64_C(1) << 40;
    CHECK_STATUS(onnxcam_cam_map(a, g, nullptr, huge, huge, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_BAD_SHAPE);
    p.method = 99;
    CHECK_STATUS(onnxcam_cam_map(a, g, nullptr, 1, 3, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_UNSUPPORTED);
    p = onnxcam_default_params();
    p.layout = 7;
    CHECK_STATUS(onnxcam_cam_map(a, g, nullptr, 1, 3, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_UNSUPPORTED);
    p = onnxcam_default_params();
    p.struct_size = 12;  // not initialised with onnxcam_default_params
    CHECK_STATUS(onnxcam_cam_map(a, g, nullptr, 1, 3, 1, 2, &p, out.data()),
                 ONNXCAM_ERR_INVALID_ARGUMENT);
}

TEST(method_names) {
    for (int32_t m = 0; m < ONNXCAM_METHOD_COUNT; ++m) {
        const char* name = onnxcam_method_name(m);
        CHECK(name != nullptr);
        if (name) CHECK_EQ(onnxcam_method_from_name(name), m);
    }
    CHECK_EQ(onnxcam_method_from_name("GradCAM++"), ONNXCAM_METHOD_GRADCAM_PP);
    CHECK_EQ(onnxcam_method_from_name("gradcampp"), ONNXCAM_METHOD_GRADCAM_PP);
    CHECK_EQ(onnxcam_method_from_name("eigencam"), -1);
    CHECK_EQ(onnxcam_method_from_name(nullptr), -1);
    CHECK(onnxcam_method_name(-1) == nullptr);
    CHECK_EQ(onnxcam_method_needs(ONNXCAM_METHOD_CAM),
             ONNXCAM_NEEDS_ACTIVATIONS | ONNXCAM_NEEDS_CAM_WEIGHTS);
    CHECK_EQ(onnxcam_method_needs(ONNXCAM_METHOD_LAYERCAM),
             ONNXCAM_NEEDS_ACTIVATIONS | ONNXCAM_NEEDS_GRADIENTS);
    CHECK_EQ(onnxcam_method_needs(42), 0);
}

int main() { return check::run_all(); }
