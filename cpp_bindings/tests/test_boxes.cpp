// Threshold masks and boxes on hand-built maps (localize.boxes_from_map semantics).
#include <cmath>
#include <limits>
#include <vector>

#include "check.hpp"

namespace {
struct Map {
    int64_t H, W;
    std::vector<float> v;
    Map(int64_t h, int64_t w) : H(h), W(w), v(static_cast<size_t>(h * w), 0.0f) {}
    void set(int64_t x, int64_t y, float value) { v[static_cast<size_t>(y * W + x)] = value; }
    void fill(int64_t x0, int64_t y0, int64_t x1, int64_t y1, float value) {
        for (int64_t y = y0; y < y1; ++y)
            for (int64_t x = x0; x < x1; ++x) set(x, y, value);
    }
};

std::vector<onnxcam_box> run(const Map& m, bool largest = true, double fraction = 0.5,
                             double min_area = 0.01) {
    onnxcam_params p = onnxcam_default_params();
    p.box_largest = largest;
    p.box_fraction = fraction;
    p.box_min_area = min_area;
    std::vector<onnxcam_box> out(16);
    int64_t n = -1;
    CHECK_OK(onnxcam_boxes(m.v.data(), m.H, m.W, &p, out.data(), 16, &n));
    out.resize(static_cast<size_t>(n < 0 ? 0 : n));
    return out;
}

void expect_box(const onnxcam_box& b, int x0, int y0, int x1, int y1, int64_t area,
                double score) {
    CHECK_EQ(b.x0, x0);
    CHECK_EQ(b.y0, y0);
    CHECK_EQ(b.x1, x1);
    CHECK_EQ(b.y1, y1);
    CHECK_EQ(b.area, area);
    CHECK_NEAR(b.score, score, 1e-6);
}
}  // namespace

TEST(empty_map_has_no_boxes) {
    Map m(5, 6);
    CHECK(run(m).empty());
    m.fill(0, 0, 6, 5, -1.0f);  // max <= 0
    CHECK(run(m).empty());
}

TEST(single_blob_box_is_exclusive) {
    Map m(8, 10);
    m.fill(2, 1, 5, 4, 1.0f);  // x 2..4, y 1..3
    m.set(3, 2, 0.5f);         // still >= 0.5 * max
    const auto b = run(m);
    CHECK_EQ(b.size(), 1u);
    if (b.size() == 1) expect_box(b[0], 2, 1, 5, 4, 9, (8 + 0.5) / 9);
}

TEST(fraction_threshold) {
    Map m(1, 6);
    m.v = {0.2f, 0.49f, 0.5f, 1.0f, 0.51f, 0.1f};
    const auto b = run(m, true, 0.5);  // pixels >= 0.5: x 2..4
    CHECK_EQ(b.size(), 1u);
    if (!b.empty()) expect_box(b[0], 2, 0, 5, 1, 3, (0.5 + 1.0 + 0.51) / 3);
    const auto all = run(m, true, 0.0);  // every pixel >= 0
    if (!all.empty()) expect_box(all[0], 0, 0, 6, 1, 6, (0.2 + 0.49 + 0.5 + 1 + 0.51 + 0.1) / 6);
}

TEST(diagonal_pixels_are_connected) {
    Map m(4, 4);
    m.set(0, 0, 1);
    m.set(1, 1, 1);
    m.set(2, 2, 1);
    m.set(3, 0, 1);  // alone
    const auto b = run(m, false, 0.5, 0.0);
    CHECK_EQ(b.size(), 2u);
    const auto l = run(m);
    if (!l.empty()) expect_box(l[0], 0, 0, 3, 3, 3, 1.0);
}

TEST(largest_versus_all_components) {
    Map m(10, 10);
    m.fill(0, 0, 3, 3, 0.6f);  // area 9, score 0.6
    m.fill(6, 6, 8, 8, 1.0f);  // area 4, score 1.0
    m.set(9, 0, 0.9f);         // area 1 = 1% of 100 pixels, score 0.9
    const auto largest = run(m);
    CHECK_EQ(largest.size(), 1u);
    if (!largest.empty()) expect_box(largest[0], 0, 0, 3, 3, 9, 0.6);
    const auto all = run(m, false, 0.5, 0.01);  // best score first
    CHECK_EQ(all.size(), 3u);
    if (all.size() == 3) {
        expect_box(all[0], 6, 6, 8, 8, 4, 1.0);
        expect_box(all[1], 9, 0, 10, 1, 1, 0.9);
        expect_box(all[2], 0, 0, 3, 3, 9, 0.6);
    }
    CHECK_EQ(run(m, false, 0.5, 0.02).size(), 2u);  // the single pixel is below 2 %
}

// Equal areas: cv2.connectedComponentsWithStats numbers components in 2x2-block raster order,
// so the pixel at (x=0, y=1) comes before (x=3, y=0) and wins the tie (checked with OpenCV 5.0).
TEST(ties_follow_opencv_label_order) {
    Map m(3, 6);
    m.set(0, 1, 1.0f);
    m.set(3, 0, 1.0f);
    const auto b = run(m);
    CHECK_EQ(b.size(), 1u);
    if (!b.empty()) expect_box(b[0], 0, 1, 1, 2, 1, 1.0);
    const auto all = run(m, false, 0.5, 0.0);  // equal scores keep label order
    CHECK_EQ(all.size(), 2u);
    if (all.size() == 2) {
        CHECK_EQ(all[0].x0, 0);
        CHECK_EQ(all[1].x0, 3);
    }
}

TEST(count_query_and_truncation) {
    Map m(5, 5);
    m.set(0, 0, 1);
    m.set(2, 2, 1);
    m.set(4, 4, 1);
    onnxcam_params p = onnxcam_default_params();
    p.box_largest = 0;
    p.box_min_area = 0;
    int64_t n = -1;
    CHECK_OK(onnxcam_boxes(m.v.data(), 5, 5, &p, nullptr, 0, &n));
    CHECK_EQ(n, 3);
    onnxcam_box one[1];
    CHECK_OK(onnxcam_boxes(m.v.data(), 5, 5, &p, one, 1, &n));
    CHECK_EQ(n, 3);  // found; one written
    CHECK_EQ(one[0].x0, 0);
}

TEST(non_finite_pixels_are_background) {
    Map m(3, 3);
    m.fill(0, 0, 3, 3, std::numeric_limits<float>::quiet_NaN());
    CHECK(run(m).empty());
    m.set(1, 1, 1.0f);
    m.set(2, 2, std::numeric_limits<float>::infinity());
    const auto b = run(m);
    CHECK_EQ(b.size(), 1u);
    if (!b.empty()) expect_box(b[0], 1, 1, 2, 2, 1, 1.0);
}

TEST(threshold_mask_function) {
    const std::vector<float> m = {0.1f, 0.5f, 1.0f, 0.0f};
    std::vector<uint8_t> mask(4);
    CHECK_OK(onnxcam_threshold_mask(m.data(), 2, 2, 0.5, mask.data()));
    CHECK(mask == (std::vector<uint8_t>{0, 1, 1, 0}));
    const std::vector<float> zeros(4, 0.0f);
    CHECK_OK(onnxcam_threshold_mask(zeros.data(), 2, 2, 0.0, mask.data()));
    CHECK(mask == (std::vector<uint8_t>{0, 0, 0, 0}));
    CHECK_STATUS(onnxcam_threshold_mask(m.data(), 2, 2, std::nan(""), mask.data()),
                 ONNXCAM_ERR_INVALID_ARGUMENT);
}

TEST(boxes_bad_arguments) {
    const std::vector<float> m(4, 1.0f);
    onnxcam_box b[2];
    int64_t n = 0;
    CHECK_STATUS(onnxcam_boxes(nullptr, 2, 2, nullptr, b, 2, &n), ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_boxes(m.data(), 2, 2, nullptr, nullptr, 2, &n),
                 ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_boxes(m.data(), 2, 2, nullptr, b, 2, nullptr),
                 ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_boxes(m.data(), 2, 2, nullptr, b, -1, &n),
                 ONNXCAM_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(onnxcam_boxes(m.data(), 0, 2, nullptr, b, 2, &n), ONNXCAM_ERR_BAD_SHAPE);
    CHECK_STATUS(onnxcam_boxes(m.data(), INT64_C(1) << 32, 1, nullptr, b, 2, &n),
                 ONNXCAM_ERR_BAD_SHAPE);
}

int main() { return check::run_all(); }
