// Colormap tables (spot checks against cv2.applyColorMap), colorize and overlay.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "check.hpp"

namespace {
struct Rgb {
    int r, g, b;
};

Rgb entry(int32_t colormap, int index) {
    uint8_t t[768];
    CHECK_OK(onnxcam_colormap_table(colormap, t));
    return {t[3 * index], t[3 * index + 1], t[3 * index + 2]};
}

void expect_rgb(Rgb got, int r, int g, int b) {
    CHECK_EQ(got.r, r);
    CHECK_EQ(got.g, g);
    CHECK_EQ(got.b, b);
}
}  // namespace

// cv2.applyColorMap(np.arange(256, dtype=np.uint8), cv2.COLORMAP_JET)[..., ::-1] (OpenCV 5.0)
TEST(jet_table_spot_checks) {
    expect_rgb(entry(ONNXCAM_COLORMAP_JET, 0), 0, 0, 128);
    expect_rgb(entry(ONNXCAM_COLORMAP_JET, 1), 0, 0, 132);
    expect_rgb(entry(ONNXCAM_COLORMAP_JET, 64), 0, 128, 255);
    expect_rgb(entry(ONNXCAM_COLORMAP_JET, 127), 126, 255, 130);
    expect_rgb(entry(ONNXCAM_COLORMAP_JET, 128), 130, 255, 126);
    expect_rgb(entry(ONNXCAM_COLORMAP_JET, 192), 255, 124, 0);
    expect_rgb(entry(ONNXCAM_COLORMAP_JET, 254), 132, 0, 0);
    expect_rgb(entry(ONNXCAM_COLORMAP_JET, 255), 128, 0, 0);
}

TEST(other_tables) {
    expect_rgb(entry(ONNXCAM_COLORMAP_VIRIDIS, 0), 68, 1, 84);
    expect_rgb(entry(ONNXCAM_COLORMAP_VIRIDIS, 255), 253, 231, 37);
    uint8_t t[768];
    CHECK_STATUS(onnxcam_colormap_table(99, t), ONNXCAM_ERR_UNSUPPORTED);
    CHECK_STATUS(onnxcam_colormap_table(ONNXCAM_COLORMAP_JET, nullptr),
                 ONNXCAM_ERR_NULL_POINTER);
}

TEST(colormap_names) {
    CHECK_EQ(onnxcam_colormap_from_name("jet"), ONNXCAM_COLORMAP_JET);
    CHECK_EQ(onnxcam_colormap_from_name("JET"), ONNXCAM_COLORMAP_JET);
    CHECK_EQ(onnxcam_colormap_from_name("COLORMAP_JET"), ONNXCAM_COLORMAP_JET);
    CHECK_EQ(onnxcam_colormap_from_name("turbo"), ONNXCAM_COLORMAP_TURBO);
    CHECK_EQ(onnxcam_colormap_from_name("twilight_shifted"), 19);
    CHECK_EQ(onnxcam_colormap_from_name("nope"), -1);
    CHECK_EQ(onnxcam_colormap_from_name(nullptr), -1);
}

// index = uint8(clip(m, 0, 1) * 255 + 0.5)
TEST(colorize_quantisation) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> m = {0.0f, 1.0f, 0.5f, 0.998f, -3.0f, 7.0f, nan, 0.25f};
    const int idx[] = {0, 255, 128, 254, 0, 255, 0, 64};  // 0.25*255+0.5 = 64.25
    std::vector<uint8_t> out(m.size() * 3);
    CHECK_OK(onnxcam_colorize(m.data(), 2, 4, ONNXCAM_COLORMAP_JET, out.data()));
    for (size_t i = 0; i < m.size(); ++i) {
        const Rgb e = entry(ONNXCAM_COLORMAP_JET, idx[i]);
        expect_rgb({out[3 * i], out[3 * i + 1], out[3 * i + 2]}, e.r, e.g, e.b);
    }
}

TEST(overlay_blend_and_rounding) {
    // image (10, 20, 30), map 1 -> jet[255] = (128, 0, 0):
    // 0.5*10 + 0.5*128 + 0.5 = 69.5 -> 69; 0.5*20 + 0.5 = 10.5 -> 10; 15.5 -> 15
    const std::vector<uint8_t> img = {10, 20, 30, 200, 100, 0};
    const std::vector<float> m = {1.0f, 0.0f};  // second: jet[0] = (0, 0, 128)
    std::vector<uint8_t> out(6);
    onnxcam_params p = onnxcam_default_params();
    CHECK_OK(onnxcam_overlay(img.data(), 1, 2, m.data(), &p, out.data()));
    CHECK_EQ(out[0], 69);
    CHECK_EQ(out[1], 10);
    CHECK_EQ(out[2], 15);
    CHECK_EQ(out[3], 100);  // 0.5*200 + 0 + 0.5 = 100.5
    CHECK_EQ(out[4], 50);
    CHECK_EQ(out[5], 64);  // 0 + 64 + 0.5
    p.alpha = 1.0;         // the heatmap alone
    CHECK_OK(onnxcam_overlay(img.data(), 1, 2, m.data(), &p, out.data()));
    CHECK_EQ(out[0], 128);
    CHECK_EQ(out[5], 128);
    p.alpha = 0.0;  // the image alone
    CHECK_OK(onnxcam_overlay(img.data(), 1, 2, m.data(), &p, out.data()));
    CHECK(out == img);
}

TEST(overlay_threshold_keeps_image_below) {
    const std::vector<uint8_t> img = {10, 20, 30, 200, 100, 0};
    const std::vector<float> m = {0.6f, 0.2f};
    std::vector<uint8_t> out(6);
    onnxcam_params p = onnxcam_default_params();
    p.overlay_threshold = 0.5;
    CHECK_OK(onnxcam_overlay(img.data(), 1, 2, m.data(), &p, out.data()));
    CHECK(std::memcmp(out.data() + 3, img.data() + 3, 3) == 0);  // 0.2 < 0.5: unchanged
    CHECK(std::memcmp(out.data(), img.data(), 3) != 0);          // 0.6 >= 0.5: blended
}

// large images take a lookup-table path: it must agree with the per-pixel one (row by row)
TEST(overlay_large_image_equals_per_pixel) {
    const int64_t H = 300, W = 500;  // 150k pixels
    std::vector<uint8_t> img(static_cast<size_t>(H * W * 3));
    std::vector<float> m(static_cast<size_t>(H * W));
    for (size_t i = 0; i < img.size(); ++i) img[i] = static_cast<uint8_t>((i * 2654435761u) >> 24);
    for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>((i * 40503u) % 1001) / 1000.0f;
    m[7] = std::numeric_limits<float>::quiet_NaN();
    for (double alpha : {0.5, 0.3, 1.0}) {
        for (double thr : {-1.0, 0.4}) {
            onnxcam_params p = onnxcam_default_params();
            p.alpha = alpha;
            p.overlay_threshold = thr;
            p.colormap = alpha == 0.3 ? ONNXCAM_COLORMAP_TURBO : ONNXCAM_COLORMAP_JET;
            std::vector<uint8_t> whole(img.size()), rows(img.size());
            CHECK_OK(onnxcam_overlay(img.data(), H, W, m.data(), &p, whole.data()));
            for (int64_t y = 0; y < H; ++y)
                CHECK_OK(onnxcam_overlay(img.data() + y * W * 3, 1, W, m.data() + y * W, &p,
                                         rows.data() + y * W * 3));
            CHECK(whole == rows);
        }
    }
}

TEST(overlay_in_place) {
    std::vector<uint8_t> img = {10, 20, 30};
    const std::vector<float> m = {1.0f};
    CHECK_OK(onnxcam_overlay(img.data(), 1, 1, m.data(), nullptr, img.data()));
    CHECK_EQ(img[0], 69);
}

TEST(overlay_bad_arguments) {
    const std::vector<uint8_t> img(12);
    const std::vector<float> m(4);
    std::vector<uint8_t> out(12);
    onnxcam_params p = onnxcam_default_params();
    p.alpha = 1.5;
    CHECK_STATUS(onnxcam_overlay(img.data(), 2, 2, m.data(), &p, out.data()),
                 ONNXCAM_ERR_INVALID_ARGUMENT);
    p.alpha = std::nan("");
    CHECK_STATUS(onnxcam_overlay(img.data(), 2, 2, m.data(), &p, out.data()),
                 ONNXCAM_ERR_INVALID_ARGUMENT);
    p = onnxcam_default_params();
    p.colormap = -4;
    CHECK_STATUS(onnxcam_overlay(img.data(), 2, 2, m.data(), &p, out.data()),
                 ONNXCAM_ERR_UNSUPPORTED);
    CHECK_STATUS(onnxcam_overlay(nullptr, 2, 2, m.data(), nullptr, out.data()),
                 ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_overlay(img.data(), 2, 2, nullptr, nullptr, out.data()),
                 ONNXCAM_ERR_NULL_POINTER);
    CHECK_STATUS(onnxcam_overlay(img.data(), 0, 2, m.data(), nullptr, out.data()),
                 ONNXCAM_ERR_BAD_SHAPE);
    CHECK_STATUS(onnxcam_colorize(m.data(), 2, 2, ONNXCAM_COLORMAP_JET, nullptr),
                 ONNXCAM_ERR_NULL_POINTER);
}

int main() { return check::run_all(); }
