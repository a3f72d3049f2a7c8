// Internal declarations shared by the library's translation units (not installed).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "onnxcam.h"

namespace onnxcam::detail {

// ---- errors (error.cpp) -------------------------------------------------------------------
// Thrown inside the library, turned into a status code + last-error message at the C boundary.
class Failure : public std::runtime_error {
public:
    Failure(onnxcam_status code, const std::string& message)
        : std::runtime_error(message), code_(code) {}
    onnxcam_status code() const noexcept { return code_; }

private:
    onnxcam_status code_;
};

void set_last_error(const std::string& message) noexcept;
void clear_last_error() noexcept;
const char* last_error() noexcept;

// Runs body(); maps Failure / bad_alloc / other exceptions to a status and the thread's
// last-error message ("<function>: <what>"). Never throws.
template <class Body>
onnxcam_status guarded(const char* function, Body&& body) noexcept {
    clear_last_error();
    try {
        body();
        return ONNXCAM_OK;
    } catch (const Failure& f) {
        set_last_error(std::string(function) + ": " + f.what());
        return f.code();
    } catch (const std::bad_alloc&) {
        set_last_error(std::string(function) + ": out of memory");
        return ONNXCAM_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        set_last_error(std::string(function) + ": internal error: " + e.what());
        return ONNXCAM_ERR_INTERNAL;
    } catch (...) {
        set_last_error(std::string(function) + ": internal error");
        return ONNXCAM_ERR_INTERNAL;
    }
}

// ---- methods (methods.cpp) ------------------------------------------------------------------
const char* method_name(int32_t method) noexcept;
int32_t method_needs(int32_t method) noexcept;
int32_t method_from_name(const char* name) noexcept;

// Raw maps [B, H, W] of a method (inputs validated by the caller); non-finite results are 0.
void raw_maps(int32_t method, const float* A, const float* G, const float* w, int64_t B,
              int64_t C, int64_t H, int64_t W, bool nhwc, float* out);

// ---- post-processing (postprocess.cpp) ------------------------------------------------------
inline float finite_or_zero(float v) noexcept { return std::isfinite(v) ? v : 0.0f; }
void relu_inplace(float* m, std::size_t n) noexcept;
// Min-max of one map to [0, 1]; non-finite values count as 0, a constant map becomes zeros.
void minmax_inplace(float* m, std::size_t n) noexcept;
// OpenCV INTER_LINEAR resize of one map (non-finite inputs read as 0); out must not overlap in.
void resize_map(const float* in, int64_t h, int64_t w, float* out, int64_t H, int64_t W);

// ---- colour (colormap.cpp) ------------------------------------------------------------------
struct ColormapEntry {
    int id;
    const char* name;
    const unsigned char* rgb;  // 256 x 3
};
const unsigned char* colormap_rgb(int32_t id) noexcept;  // nullptr if unknown
int32_t colormap_from_name(const char* name) noexcept;
inline unsigned char colormap_index(float m) noexcept {
    // uint8(clip(m, 0, 1) * 255 + 0.5) in float32 like numpy; NaN counts as 0
    float c = m > 0.0f ? (m < 1.0f ? m : 1.0f) : 0.0f;
    return static_cast<unsigned char>(c * 255.0f + 0.5f);
}
void colorize(const float* map01, std::size_t n, const unsigned char* table, uint8_t* out_rgb);
void overlay(const uint8_t* rgb, std::size_t n, const float* map01, const unsigned char* table,
             double alpha, double threshold, uint8_t* out_rgb);

// ---- localization (localize.cpp) ------------------------------------------------------------
void threshold_mask(const float* map01, int64_t H, int64_t W, double fraction, uint8_t* mask);
// Writes min(found, max_boxes) boxes; returns the number found.
int64_t boxes(const float* map01, int64_t H, int64_t W, double fraction, bool largest,
              double min_area, onnxcam_box* out, int64_t max_boxes);

}  // namespace onnxcam::detail
