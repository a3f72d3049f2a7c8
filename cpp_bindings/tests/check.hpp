// A minimal test harness (no dependency): TEST(name) { CHECK(...); } and run_all() in main.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "onnxcam.h"

namespace check {

struct Case {
    const char* name;
    std::function<void()> fn;
};

inline std::vector<Case>& cases() {
    static std::vector<Case> all;
    return all;
}

inline int& failures() {
    static int n = 0;
    return n;
}

struct Register {
    Register(const char* name, std::function<void()> fn) { cases().push_back({name, fn}); }
};

inline void fail(const char* file, int line, const std::string& what) {
    ++failures();
    std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
}

inline int run_all() {
    for (const Case& c : cases()) {
        const int before = failures();
        c.fn();
        std::printf("[%s] %s\n", failures() == before ? " ok " : "FAIL", c.name);
    }
    std::printf("%zu tests, %d failed checks\n", cases().size(), failures());
    return failures() == 0 ? 0 : 1;
}

}  // namespace check

#define CHECK_CAT2(a, b) a##b
#define CHECK_CAT(a, b) CHECK_CAT2(a, b)
#define TEST(name)                                                            \
    static void name();                                                       \
    static const check::Register CHECK_CAT(register_, name)(#name, &name);    \
    static void name()

#define CHECK(cond)                                                    \
    do {                                                               \
        if (!(cond)) check::fail(__FILE__, __LINE__, #cond);           \
    } while (0)

#define CHECK_EQ(a, b)                                                                    \
    do {                                                                                  \
        const auto va_ = (a);                                                             \
        const auto vb_ = (b);                                                             \
        if (!(va_ == vb_))                                                                \
            check::fail(__FILE__, __LINE__,                                               \
                        std::string(#a " == " #b " (") + std::to_string(va_) + " vs " +   \
                            std::to_string(vb_) + ")");                                   \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                             \
    do {                                                                                  \
        const double va_ = (a);                                                           \
        const double vb_ = (b);                                                           \
        if (!(std::fabs(va_ - vb_) <= (tol)))                                             \
            check::fail(__FILE__, __LINE__,                                               \
                        std::string("|" #a " - " #b "| <= " #tol " (") +                 \
                            std::to_string(va_) + " vs " + std::to_string(vb_) + ")");   \
    } while (0)

// a call's status, and a non-empty last error exactly when it failed
#define CHECK_STATUS(call, expected)                                                      \
    do {                                                                                  \
        const onnxcam_status s_ = (call);                                                 \
        if (s_ != (expected))                                                             \
            check::fail(__FILE__, __LINE__,                                               \
                        std::string(#call " returned ") + std::to_string(s_) +            \
                            ", expected " #expected " (" + onnxcam_last_error() + ")");   \
        else if ((s_ == ONNXCAM_OK) != (onnxcam_last_error()[0] == '\0'))                 \
            check::fail(__FILE__, __LINE__, std::string(#call ": last error '") +         \
                                                onnxcam_last_error() + "'");              \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, ONNXCAM_OK)
