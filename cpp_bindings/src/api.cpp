// The C ABI (include/onnxcam.h): argument validation, defaults and error reporting around the
// core in methods.cpp, postprocess.cpp, colormap.cpp and localize.cpp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "internal.hpp"
#include "onnxcam.h"

using namespace onnxcam::detail;

namespace {

// Element counts are kept far below what int64 / size_t arithmetic can overflow.
constexpr int64_t kMaxElements =
    std::min<int64_t>(INT64_C(1) << 40, static_cast<int64_t>(PTRDIFF_MAX / 16));

using Dim = std::pair<const char*, int64_t>;

int64_t element_count(std::initializer_list<Dim> dims) {
    int64_t n = 1;
    for (const auto& [name, v] : dims) {
        if (v <= 0)
            throw Failure(ONNXCAM_ERR_BAD_SHAPE,
                          std::string(name) + " must be positive, got " + std::to_string(v));
        if (n > kMaxElements / v)
            throw Failure(ONNXCAM_ERR_BAD_SHAPE, "the buffer sizes overflow (" +
                                                     std::string(name) + " = " +
                                                     std::to_string(v) + ")");
        n *= v;
    }
    return n;
}

void require(const void* p, const char* name) {
    if (!p) throw Failure(ONNXCAM_ERR_NULL_POINTER, std::string(name) + " is NULL");
}

onnxcam_params resolve(const onnxcam_params* p) {
    if (!p) return onnxcam_default_params();
    if (p->struct_size != sizeof(onnxcam_params))
        throw Failure(ONNXCAM_ERR_INVALID_ARGUMENT,
                      "params->struct_size is " + std::to_string(p->struct_size) + ", expected " +
                          std::to_string(sizeof(onnxcam_params)) +
                          " (start from onnxcam_default_params())");
    return *p;
}

const unsigned char* require_colormap(int32_t id) {
    const unsigned char* t = colormap_rgb(id);
    if (!t) throw Failure(ONNXCAM_ERR_UNSUPPORTED, "unknown colormap id " + std::to_string(id));
    return t;
}

void require_finite(double v, const char* name) {
    if (!std::isfinite(v))
        throw Failure(ONNXCAM_ERR_INVALID_ARGUMENT, std::string(name) + " is not finite");
}

}  // namespace

extern "C" {

ONNXCAM_API const char* onnxcam_version(void) { return ONNXCAM_VERSION_STRING; }

ONNXCAM_API const char* onnxcam_last_error(void) { return last_error(); }

ONNXCAM_API const char* onnxcam_status_string(onnxcam_status status) {
    switch (status) {
        case ONNXCAM_OK: return "ok";
        case ONNXCAM_ERR_INVALID_ARGUMENT: return "invalid argument";
        case ONNXCAM_ERR_NULL_POINTER: return "null pointer";
        case ONNXCAM_ERR_BAD_SHAPE: return "bad shape";
        case ONNXCAM_ERR_UNSUPPORTED: return "unsupported";
        case ONNXCAM_ERR_OUT_OF_MEMORY: return "out of memory";
        case ONNXCAM_ERR_INTERNAL: return "internal error";
        default: return "unknown status";
    }
}

ONNXCAM_API onnxcam_params onnxcam_default_params(void) {
    onnxcam_params p{};
    p.struct_size = sizeof(onnxcam_params);
    p.method = ONNXCAM_METHOD_GRADCAM;
    p.layout = ONNXCAM_LAYOUT_NCHW;
    p.relu = 1;
    p.normalize = 1;
    p.colormap = ONNXCAM_COLORMAP_JET;
    p.alpha = 0.5;
    p.overlay_threshold = -1.0;
    p.box_fraction = 0.5;
    p.box_min_area = 0.01;
    p.box_largest = 1;
    p.reserved = 0;
    return p;
}

ONNXCAM_API const char* onnxcam_method_name(int32_t method) { return method_name(method); }

ONNXCAM_API int32_t onnxcam_method_from_name(const char* name) { return method_from_name(name); }

ONNXCAM_API int32_t onnxcam_method_needs(int32_t method) { return method_needs(method); }

ONNXCAM_API int32_t onnxcam_colormap_from_name(const char* name) {
    return colormap_from_name(name);
}

ONNXCAM_API onnxcam_status onnxcam_cam_map(const float* activations, const float* gradients,
                                           const float* cam_weights, int64_t batch,
                                           int64_t channels, int64_t height, int64_t width,
                                           const onnxcam_params* params, float* out_maps) {
    return guarded("onnxcam_cam_map", [&] {
        const onnxcam_params p = resolve(params);
        const int32_t needs = method_needs(p.method);
        if (!needs)
            throw Failure(ONNXCAM_ERR_UNSUPPORTED, "unknown method " + std::to_string(p.method));
        if (p.layout != ONNXCAM_LAYOUT_NCHW && p.layout != ONNXCAM_LAYOUT_NHWC)
            throw Failure(ONNXCAM_ERR_UNSUPPORTED, "unknown layout " + std::to_string(p.layout));
        element_count({{"batch", batch}, {"channels", channels}, {"height", height},
                       {"width", width}});
        require(activations, "activations");
        const std::string m = method_name(p.method);
        if (needs & ONNXCAM_NEEDS_GRADIENTS)
            require(gradients, ("gradients (" + m + " needs them)").c_str());
        if (needs & ONNXCAM_NEEDS_CAM_WEIGHTS)
            require(cam_weights, ("cam_weights (" + m + " needs them)").c_str());
        require(out_maps, "out_maps");
        raw_maps(p.method, activations, gradients, cam_weights, batch, channels, height, width,
                 p.layout == ONNXCAM_LAYOUT_NHWC, out_maps);
        const std::size_t per_map = static_cast<std::size_t>(height * width);
        for (int64_t b = 0; b < batch; ++b) {
            float* m_b = out_maps + b * height * width;
            if (p.relu) relu_inplace(m_b, per_map);
            if (p.normalize) minmax_inplace(m_b, per_map);
        }
    });
}

ONNXCAM_API onnxcam_status onnxcam_normalize(const float* maps, int64_t batch, int64_t height,
                                             int64_t width, float* out) {
    return guarded("onnxcam_normalize", [&] {
        const int64_t n = element_count({{"batch", batch}, {"height", height}, {"width", width}});
        require(maps, "maps");
        require(out, "out");
        if (out != maps) std::copy(maps, maps + n, out);
        const std::size_t per_map = static_cast<std::size_t>(height * width);
        for (int64_t b = 0; b < batch; ++b) minmax_inplace(out + b * height * width, per_map);
    });
}

static onnxcam_status resize_impl(const char* fn, const float* maps, int64_t batch,
                                  int64_t height, int64_t width, float* out, int64_t out_height,
                                  int64_t out_width, bool normalize) {
    return guarded(fn, [&] {
        element_count({{"batch", batch}, {"height", height}, {"width", width}});
        element_count({{"batch", batch}, {"out_height", out_height}, {"out_width", out_width}});
        require(maps, "maps");
        require(out, "out");
        for (int64_t b = 0; b < batch; ++b) {
            float* o = out + b * out_height * out_width;
            resize_map(maps + b * height * width, height, width, o, out_height, out_width);
            if (normalize) minmax_inplace(o, static_cast<std::size_t>(out_height * out_width));
        }
    });
}

ONNXCAM_API onnxcam_status onnxcam_resize(const float* maps, int64_t batch, int64_t height,
                                          int64_t width, float* out, int64_t out_height,
                                          int64_t out_width) {
    return resize_impl("onnxcam_resize", maps, batch, height, width, out, out_height, out_width,
                       false);
}

ONNXCAM_API onnxcam_status onnxcam_resize_normalized(const float* maps, int64_t batch,
                                                     int64_t height, int64_t width, float* out,
                                                     int64_t out_height, int64_t out_width) {
    return resize_impl("onnxcam_resize_normalized", maps, batch, height, width, out, out_height,
                       out_width, true);
}

ONNXCAM_API onnxcam_status onnxcam_colormap_table(int32_t colormap, uint8_t* out_rgb) {
    return guarded("onnxcam_colormap_table", [&] {
        const unsigned char* t = require_colormap(colormap);
        require(out_rgb, "out_rgb");
        std::copy(t, t + 768, out_rgb);
    });
}

ONNXCAM_API onnxcam_status onnxcam_colorize(const float* map01, int64_t height, int64_t width,
                                            int32_t colormap, uint8_t* out_rgb) {
    return guarded("onnxcam_colorize", [&] {
        const int64_t n = element_count({{"height", height}, {"width", width}, {"channels", 3}});
        const unsigned char* t = require_colormap(colormap);
        require(map01, "map01");
        require(out_rgb, "out_rgb");
        colorize(map01, static_cast<std::size_t>(n / 3), t, out_rgb);
    });
}

ONNXCAM_API onnxcam_status onnxcam_overlay(const uint8_t* rgb, int64_t height, int64_t width,
                                           const float* map01, const onnxcam_params* params,
                                           uint8_t* out_rgb) {
    return guarded("onnxcam_overlay", [&] {
        const onnxcam_params p = resolve(params);
        const int64_t n = element_count({{"height", height}, {"width", width}, {"channels", 3}});
        const unsigned char* t = require_colormap(p.colormap);
        if (!(p.alpha >= 0.0 && p.alpha <= 1.0))
            throw Failure(ONNXCAM_ERR_INVALID_ARGUMENT,
                          "alpha must be in [0, 1], got " + std::to_string(p.alpha));
        if (std::isnan(p.overlay_threshold))
            throw Failure(ONNXCAM_ERR_INVALID_ARGUMENT, "overlay_threshold is NaN");
        require(rgb, "rgb");
        require(map01, "map01");
        require(out_rgb, "out_rgb");
        overlay(rgb, static_cast<std::size_t>(n / 3), map01, t, p.alpha, p.overlay_threshold,
                out_rgb);
    });
}

ONNXCAM_API onnxcam_status onnxcam_threshold_mask(const float* map01, int64_t height,
                                                  int64_t width, double fraction,
                                                  uint8_t* out_mask) {
    return guarded("onnxcam_threshold_mask", [&] {
        element_count({{"height", height}, {"width", width}});
        require_finite(fraction, "fraction");
        require(map01, "map01");
        require(out_mask, "out_mask");
        threshold_mask(map01, height, width, fraction, out_mask);
    });
}

ONNXCAM_API onnxcam_status onnxcam_boxes(const float* map01, int64_t height, int64_t width,
                                         const onnxcam_params* params, onnxcam_box* out_boxes,
                                         int64_t max_boxes, int64_t* n_boxes) {
    if (n_boxes) *n_boxes = 0;
    return guarded("onnxcam_boxes", [&] {
        const onnxcam_params p = resolve(params);
        if (element_count({{"height", height}, {"width", width}}) > INT32_MAX)
            throw Failure(ONNXCAM_ERR_BAD_SHAPE, "the map has more than 2^31 - 1 pixels");
        if (max_boxes < 0)
            throw Failure(ONNXCAM_ERR_INVALID_ARGUMENT,
                          "max_boxes must be >= 0, got " + std::to_string(max_boxes));
        require_finite(p.box_fraction, "params->box_fraction");
        require_finite(p.box_min_area, "params->box_min_area");
        require(map01, "map01");
        require(n_boxes, "n_boxes");
        if (max_boxes > 0) require(out_boxes, "out_boxes");
        *n_boxes = boxes(map01, height, width, p.box_fraction, p.box_largest != 0,
                         p.box_min_area, out_boxes, max_boxes);
    });
}

}  // extern "C"
