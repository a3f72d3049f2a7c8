// The header-only C++ layer (onnxcam.hpp), linked against the static library.
#include "onnxcam.hpp"

#include <vector>

#include "check.hpp"

TEST(pipeline_with_vectors) {
    const std::vector<float> A = {1, 2, 3, 4};  // [1, 1, 2, 2]
    const std::vector<float> G = {1, 1, 1, 1};
    onnxcam::Params p(onnxcam::method_id("layercam"));
    const std::vector<float> feat = onnxcam::cam_map(A.data(), G.data(), nullptr, 1, 1, 2, 2, p);
    CHECK_EQ(feat.size(), 4u);
    CHECK_EQ(feat[3], 1.0f);
    const std::vector<float> big = onnxcam::resize_normalized(feat.data(), 2, 2, 6, 8);
    CHECK_EQ(big.size(), 48u);
    const std::vector<uint8_t> img(6 * 8 * 3, 50);
    const std::vector<uint8_t> ov = onnxcam::overlay(img.data(), 6, 8, big.data(), p);
    CHECK_EQ(ov.size(), img.size());
    const std::vector<uint8_t> heat = onnxcam::colorize(big.data(), 6, 8);
    CHECK_EQ(heat[0], 0);  // jet[0] = (0, 0, 128)
    CHECK_EQ(heat[2], 128);
    p.box_largest = 0;
    p.box_min_area = 0;
    const std::vector<onnxcam_box> b = onnxcam::boxes(big.data(), 6, 8, p);
    CHECK_EQ(b.size(), 1u);
    CHECK(!onnxcam::version().empty());
}

TEST(errors_become_exceptions) {
    bool thrown = false;
    try {
        onnxcam::resize(nullptr, 2, 2, 4, 4);
    } catch (const onnxcam::Error& e) {
        thrown = true;
        CHECK_EQ(e.status(), ONNXCAM_ERR_NULL_POINTER);
        CHECK(std::string(e.what()).find("maps is NULL") != std::string::npos);
    }
    CHECK(thrown);
    thrown = false;
    try {
        onnxcam::method_id("nope");
    } catch (const onnxcam::Error& e) {
        thrown = e.status() == ONNXCAM_ERR_UNSUPPORTED;
    }
    CHECK(thrown);
    thrown = false;
    try {
        const float m[1] = {0};
        onnxcam::resize(m, 1, 1, 0, 4);
    } catch (const onnxcam::Error& e) {
        thrown = e.status() == ONNXCAM_ERR_BAD_SHAPE;
    }
    CHECK(thrown);
}

int main() { return check::run_all(); }
