// onnxcam.hpp -- header-only C++17 convenience layer over the C ABI in onnxcam.h:
// std::vector results, onnxcam::Error exceptions from status codes, a Params builder.
//
//   onnxcam::Params p;                       // onnxcam_default_params()
//   p.method = ONNXCAM_METHOD_GRADCAM;
//   std::vector<float> feat = onnxcam::cam_map(A, G, nullptr, B, C, h, w, p);   // [B, h, w]
//   std::vector<float> big = onnxcam::resize_normalized(feat.data(), h, w, H, W);
//   std::vector<uint8_t> rgb_out = onnxcam::overlay(rgb, H, W, big.data(), p);
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnxcam.h"

namespace onnxcam {

// A failed call: status() is the onnxcam_status, what() the library's message.
class Error : public std::runtime_error {
public:
    Error(onnxcam_status status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    onnxcam_status status() const noexcept { return status_; }

private:
    onnxcam_status status_;
};

inline void check(onnxcam_status status) {
    if (status != ONNXCAM_OK) {
        const char* msg = onnxcam_last_error();
        throw Error(status, msg && *msg ? msg : onnxcam_status_string(status));
    }
}

// onnxcam_params initialised with the defaults.
struct Params : onnxcam_params {
    Params() : onnxcam_params(onnxcam_default_params()) {}
    explicit Params(int32_t method_id) : Params() { method = method_id; }
};

inline int32_t method_id(const std::string& name) {
    const int32_t id = onnxcam_method_from_name(name.c_str());
    if (id < 0) throw Error(ONNXCAM_ERR_UNSUPPORTED, "unknown method " + name);
    return id;
}

inline int32_t colormap_id(const std::string& name) {
    const int32_t id = onnxcam_colormap_from_name(name.c_str());
    if (id < 0) throw Error(ONNXCAM_ERR_UNSUPPORTED, "unknown colormap " + name);
    return id;
}

// Maps [batch, height, width] (see onnxcam_cam_map).
inline std::vector<float> cam_map(const float* activations, const float* gradients,
                                  const float* cam_weights, int64_t batch, int64_t channels,
                                  int64_t height, int64_t width, const onnxcam_params& params) {
    std::vector<float> out(static_cast<std::size_t>(batch > 0 && height > 0 && width > 0
                                                         ? batch * height * width
                                                         : 0));
    check(onnxcam_cam_map(activations, gradients, cam_weights, batch, channels, height, width,
                          &params, out.empty() ? nullptr : out.data()));
    return out;
}

inline std::vector<float> normalize(const float* maps, int64_t batch, int64_t height,
                                    int64_t width) {
    std::vector<float> out(static_cast<std::size_t>(
        batch > 0 && height > 0 && width > 0 ? batch * height * width : 0));
    check(onnxcam_normalize(maps, batch, height, width, out.empty() ? nullptr : out.data()));
    return out;
}

// One map [height, width] -> [out_height, out_width]; OpenCV INTER_LINEAR.
inline std::vector<float> resize(const float* map, int64_t height, int64_t width,
                                 int64_t out_height, int64_t out_width) {
    std::vector<float> out(
        static_cast<std::size_t>(out_height > 0 && out_width > 0 ? out_height * out_width : 0));
    check(onnxcam_resize(map, 1, height, width, out.empty() ? nullptr : out.data(), out_height,
                         out_width));
    return out;
}

// resize + min-max again (postprocess.resize_normalized).
inline std::vector<float> resize_normalized(const float* map, int64_t height, int64_t width,
                                            int64_t out_height, int64_t out_width) {
    std::vector<float> out(
        static_cast<std::size_t>(out_height > 0 && out_width > 0 ? out_height * out_width : 0));
    check(onnxcam_resize_normalized(map, 1, height, width, out.empty() ? nullptr : out.data(),
                                    out_height, out_width));
    return out;
}

// RGB heatmap [height, width, 3].
inline std::vector<uint8_t> colorize(const float* map01, int64_t height, int64_t width,
                                     int32_t colormap = ONNXCAM_COLORMAP_JET) {
    std::vector<uint8_t> out(
        static_cast<std::size_t>(height > 0 && width > 0 ? height * width * 3 : 0));
    check(onnxcam_colorize(map01, height, width, colormap, out.empty() ? nullptr : out.data()));
    return out;
}

// Overlay [height, width, 3] of map01 (same size as the image) on an RGB image.
inline std::vector<uint8_t> overlay(const uint8_t* rgb, int64_t height, int64_t width,
                                    const float* map01, const onnxcam_params& params) {
    std::vector<uint8_t> out(
        static_cast<std::size_t>(height > 0 && width > 0 ? height * width * 3 : 0));
    check(onnxcam_overlay(rgb, height, width, map01, &params,
                          out.empty() ? nullptr : out.data()));
    return out;
}

// Every box the parameters select (one at most with params.box_largest).
inline std::vector<onnxcam_box> boxes(const float* map01, int64_t height, int64_t width,
                                      const onnxcam_params& params) {
    int64_t found = 0;
    check(onnxcam_boxes(map01, height, width, &params, nullptr, 0, &found));
    std::vector<onnxcam_box> out(static_cast<std::size_t>(found));
    if (found > 0) {
        check(onnxcam_boxes(map01, height, width, &params, out.data(), found, &found));
        out.resize(static_cast<std::size_t>(found));
    }
    return out;
}

inline std::string version() { return onnxcam_version(); }

}  // namespace onnxcam
