// Library information, parameters, last-error semantics and their thread safety.
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"

TEST(version_matches_header) {
    CHECK(std::strcmp(onnxcam_version(), ONNXCAM_VERSION_STRING) == 0);
}

TEST(status_strings) {
    CHECK(std::strcmp(onnxcam_status_string(ONNXCAM_OK), "ok") == 0);
    CHECK(std::strcmp(onnxcam_status_string(ONNXCAM_ERR_BAD_SHAPE), "bad shape") == 0);
    CHECK(std::strcmp(onnxcam_status_string(1234), "unknown status") == 0);
}

TEST(default_params) {
    const onnxcam_params p = onnxcam_default_params();
    CHECK_EQ(p.struct_size, sizeof(onnxcam_params));
    CHECK_EQ(p.method, ONNXCAM_METHOD_GRADCAM);
    CHECK_EQ(p.layout, ONNXCAM_LAYOUT_NCHW);
    CHECK_EQ(p.relu, 1);
    CHECK_EQ(p.normalize, 1);
    CHECK_EQ(p.colormap, ONNXCAM_COLORMAP_JET);
    CHECK_EQ(p.alpha, 0.5);
    CHECK(p.overlay_threshold < 0);
    CHECK_EQ(p.box_fraction, 0.5);
    CHECK_EQ(p.box_min_area, 0.01);
    CHECK_EQ(p.box_largest, 1);
}

TEST(last_error_describes_the_last_call) {
    const float m[4] = {0, 1, 2, 3};
    float out[4];
    CHECK_STATUS(onnxcam_normalize(m, 1, -5, 2, out), ONNXCAM_ERR_BAD_SHAPE);
    const std::string msg = onnxcam_last_error();
    CHECK(msg.find("onnxcam_normalize") != std::string::npos);
    CHECK(msg.find("height") != std::string::npos);
    CHECK(msg.find("-5") != std::string::npos);
    CHECK_OK(onnxcam_normalize(m, 1, 2, 2, out));  // a success clears it
    CHECK(onnxcam_last_error()[0] == '\0');
}

// Each thread fails with its own message and must read back exactly its own.
TEST(last_error_is_thread_local) {
    constexpr int kThreads = 8, kRounds = 2000;
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([t, &mismatches] {
            const float m[4] = {0, 1, 2, 3};
            float out[4];
            const int64_t bad = -(t + 1) * 1000;
            const std::string want = "height must be positive, got " + std::to_string(bad);
            for (int r = 0; r < kRounds; ++r) {
                if (onnxcam_normalize(m, 1, bad, 2, out) != ONNXCAM_ERR_BAD_SHAPE ||
                    std::string(onnxcam_last_error()).find(want) == std::string::npos)
                    ++mismatches;
                if (r % 3 == 0) {
                    if (onnxcam_normalize(m, 1, 2, 2, out) != ONNXCAM_OK ||
                        onnxcam_last_error()[0] != '\0')
                        ++mismatches;
                }
            }
        });
    for (auto& th : threads) th.join();
    CHECK_EQ(mismatches.load(), 0);
}

TEST(concurrent_maps_are_identical) {
    // reentrancy: the same computation on many threads gives the same bits
    const int64_t C = 16, H = 7, W = 7;
    std::vector<float> A(static_cast<size_t>(C * H * W)), G(A.size());
    for (size_t i = 0; i < A.size(); ++i) {
        A[i] = static_cast<float>((i * 7919) % 97) / 97.0f;
        G[i] = static_cast<float>((i * 104729) % 89) / 89.0f - 0.5f;
    }
    std::vector<float> ref(static_cast<size_t>(H * W));
    CHECK_OK(onnxcam_cam_map(A.data(), G.data(), nullptr, 1, C, H, W, nullptr, ref.data()));
    std::atomic<int> diffs{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            std::vector<float> out(ref.size());
            for (int r = 0; r < 200; ++r) {
                onnxcam_cam_map(A.data(), G.data(), nullptr, 1, C, H, W, nullptr, out.data());
                if (out != ref) ++diffs;
            }
        });
    for (auto& th : threads) th.join();
    CHECK_EQ(diffs.load(), 0);
}

int main() { return check::run_all(); }
