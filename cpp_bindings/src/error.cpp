// The thread-local last-error message behind onnxcam_last_error().
#include <string>

#include "internal.hpp"

namespace onnxcam::detail {
namespace {
thread_local std::string t_last_error;
}

void set_last_error(const std::string& message) noexcept {
    try {
        t_last_error = message;
    } catch (...) {  // out of memory while reporting: keep a static message
        t_last_error.clear();
    }
}

void clear_last_error() noexcept { t_last_error.clear(); }

const char* last_error() noexcept { return t_last_error.c_str(); }

}  // namespace onnxcam::detail
