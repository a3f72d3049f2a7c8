// Normalisation and resize (OpenCV INTER_LINEAR) against known values.
#include <cmath>
#include <limits>
#include <vector>

#include "check.hpp"

namespace {
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

std::vector<float> resized(const std::vector<float>& in, int64_t h, int64_t w, int64_t H,
                           int64_t W, bool normalize = false) {
    std::vector<float> out(static_cast<size_t>(H * W), -999.0f);
    if (normalize)
        CHECK_OK(onnxcam_resize_normalized(in.data(), 1, h, w, out.data(), H, W));
    else
        CHECK_OK(onnxcam_resize(in.data(), 1, h, w, out.data(), H, W));
    return out;
}

void expect_all_near(const std::vector<float>& got, const std::vector<float>& want, double tol) {
    CHECK_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) CHECK_NEAR(got[i], want[i], tol);
}
}  // namespace

TEST(normalize_minmax) {
    std::vector<float> m = {1, 2, 3, 5}, out(4);
    CHECK_OK(onnxcam_normalize(m.data(), 1, 2, 2, out.data()));
    expect_all_near(out, {0, 0.25f, 0.5f, 1}, 0);
}

TEST(normalize_per_image_and_in_place) {
    std::vector<float> m = {1, 3, -2, 2};  // two 1x2 maps
    CHECK_OK(onnxcam_normalize(m.data(), 2, 1, 2, m.data()));
    expect_all_near(m, {0, 1, 0, 1}, 0);
}

TEST(constant_map_becomes_zeros) {
    std::vector<float> m = {0.7f, 0.7f, 0.7f, 0.7f}, out(4, -1);
    CHECK_OK(onnxcam_normalize(m.data(), 1, 2, 2, out.data()));
    expect_all_near(out, {0, 0, 0, 0}, 0);
}

TEST(non_finite_values_count_as_zero) {
    std::vector<float> m = {kNaN, 1, 2, kInf}, out(4);
    CHECK_OK(onnxcam_normalize(m.data(), 1, 2, 2, out.data()));
    expect_all_near(out, {0, 0.5f, 1, 0}, 0);
    std::vector<float> all_nan = {kNaN, kNaN, -kInf};
    CHECK_OK(onnxcam_normalize(all_nan.data(), 1, 1, 3, out.data()));
    expect_all_near({out[0], out[1], out[2]}, {0, 0, 0}, 0);
}

TEST(normalize_huge_span_is_finite) {
    const float big = std::numeric_limits<float>::max();
    std::vector<float> m = {-big, 0, big}, out(3);
    CHECK_OK(onnxcam_normalize(m.data(), 1, 1, 3, out.data()));
    expect_all_near(out, {0, 0.5f, 1}, 1e-6);
}

// 2x2 -> 4x4 with half-pixel centres (what cv2.resize gives)
TEST(resize_upsample_2x2_to_4x4) {
    expect_all_near(resized({0, 1, 2, 3}, 2, 2, 4, 4),
                    {0, 0.25f, 0.75f, 1,           //
                     0.5f, 0.75f, 1.25f, 1.5f,     //
                     1.5f, 1.75f, 2.25f, 2.5f,     //
                     2, 2.25f, 2.75f, 3},
                    1e-7);
}

// cv2.resize(a, (7, 5), interpolation=cv2.INTER_LINEAR) on this float32 3x3 map
// (opencv-python 5.0, x86-64): reproduced bit for bit
TEST(resize_3x3_to_5x7_matches_opencv) {
    const std::vector<float> a = {0.086f, 0.237f, 0.801f, 0.582f, 0.094f,
                                  0.433f, 0.479f, 0.16f,  0.735f};
    const std::vector<float> want = {
        0.086f,      0.10757143f, 0.17228572f, 0.237f,  0.4787143f,  0.7204286f,  0.801f,
        0.28440002f, 0.26945716f, 0.22462857f, 0.1798f, 0.38294286f, 0.58608574f, 0.6538f,
        0.582f,      0.5122857f,  0.30314285f, 0.094f,  0.23928571f, 0.3845714f,  0.433f,
        0.5202f,     0.46497142f, 0.2992857f,  0.1336f, 0.33957145f, 0.5455429f,  0.6142f,
        0.479f,      0.4334286f,  0.29671428f, 0.16f,   0.4064286f,  0.6528572f,  0.735f};
    expect_all_near(resized(a, 3, 3, 5, 7), want, 0);
}

// downsizing: cv2.resize(b, (3, 2)) of a float32 4x5 map (opencv-python 5.0, bit for bit)
TEST(resize_4x5_to_2x3_matches_opencv) {
    const std::vector<float> b = {0.114f, 0.391f, 0.517f, 0.431f, 0.587f, 0.738f, 0.956f,
                                  0.284f, 0.649f, 0.696f, 0.293f, 0.001f, 0.973f, 0.298f,
                                  0.314f, 0.892f, 0.585f, 0.471f, 0.773f, 0.03f};
    expect_all_near(resized(b, 4, 5, 2, 3),
                    {0.5085f, 0.4005f, 0.6076667f, 0.49266666f, 0.722f, 0.29316664f}, 0);
}

TEST(resize_halving_is_block_mean) {
    const std::vector<float> m = {0, 2, 4, 6, 2, 4, 6, 8, 1, 1, 3, 3, 1, 1, 3, 3};
    expect_all_near(resized(m, 4, 4, 2, 2), {2, 6, 1, 3}, 1e-7);
}

TEST(resize_same_size_copies_and_1x1_is_constant) {
    const std::vector<float> m = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
    expect_all_near(resized(m, 2, 3, 2, 3), m, 0);
    expect_all_near(resized({0.25f}, 1, 1, 2, 3), {0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f}, 0);
    // resize_normalized of a constant is zeros
    expect_all_near(resized({0.25f}, 1, 1, 2, 2, true), {0, 0, 0, 0}, 0);
}

TEST(resize_normalized_spans_0_1) {
    // the second min-max makes the resized map span exactly [0, 1]
    std::vector<float> m(49);
    for (int i = 0; i < 49; ++i) m[i] = static_cast<float>((i * 37) % 11) / 10.0f;
    const std::vector<float> out = resized(m, 7, 7, 224, 224, true);
    float lo = 1, hi = 0;
    for (float v : out) lo = std::fmin(lo, v), hi = std::fmax(hi, v);
    CHECK_EQ(lo, 0.0f);
    CHECK_EQ(hi, 1.0f);
}

TEST(resize_non_finite_input_is_finite) {
    const std::vector<float> m = {kNaN, 1, kInf, 0};
    for (float v : resized(m, 2, 2, 5, 3)) CHECK(std::isfinite(v));
    for (float v : resized(m, 2, 2, 5, 3, true)) CHECK(std::isfinite(v));
}

TEST(resize_batch) {
    const std::vector<float> m = {0, 1, 2, 3, 3, 2, 1, 0};
    std::vector<float> out(32);
    CHECK_OK(onnxcam_resize(m.data(), 2, 2, 2, out.data(), 4, 4));
    CHECK_NEAR(out[5], 0.75, 1e-7);       // first map
    CHECK_NEAR(out[16 + 5], 2.25, 1e-7);  // second map = 3 - first
}

TEST(resize_bad_arguments) {
    std::vector<float> m(4), out(16);
    CHECK_STATUS(onnxcam_resize(nullptr, 1, 2, 2, out.data(), 4, 4), ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_resize(m.data(), 1, 2, 2, nullptr, 4, 4), ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_resize(m.data(), 1, 2, 2, out.data(), 0, 4), ONNXCAM_ERR_BAD_SHAPE);
    CHECK_STATUS(onnxcam_resize(m.data(), 1, -2, 2, out.data(), 4, 4), ONNXCAM_ERR_BAD_SHAPE);
    CHECK_STATUS(onnxcam_resize_normalized(m.data(), 0, 2, 2, out.data(), 4, 4),
                 ONNXCAM_ERR_BAD_SHAPE);
    CHECK_STATUS(onnxcam_normalize(m.data(), 1, 2, 0, out.data()), ONNXCAM_ERR_BAD_SHAPE);
    CHECK_STATUS(onnxcam_normalize(nullptr, 1, 2, 2, out.data()), ONNXCAM_ERR_NULL_POINTER);
}

int main() { return check::run_all(); }
