/*
 * onnxcam.h -- C ABI of onnxcam's post-processing core (libonnxcam_post).
 *
 * Turns the tensors an onnxcam-exported ONNX model outputs (target-layer activations A,
 * gradients G = dScore/dA, optionally the classifier row w of a GAP->Linear head) into class
 * activation maps, heatmaps, overlays and boxes, reproducing the Python runtime
 * (onnxcam/methods.py, onnxcam/postprocess.py, onnxcam/localize.py). Plain C99 / C++17,
 * no dependency beyond the standard library.
 *
 * Conventions
 *   - Every buffer is owned by the caller. The library never returns memory the caller must
 *     free (it may allocate short-lived scratch memory internally).
 *   - Every function returns an onnxcam_status; ONNXCAM_OK is 0. On failure
 *     onnxcam_last_error() describes what went wrong (thread-local, so concurrent calls on
 *     different threads do not clobber each other's message).
 *   - Maps are float32, row-major [height, width]; a batch of maps is [batch, height, width].
 *     Images are 8-bit RGB, interleaved, row-major [height, width, 3].
 *   - Non-finite values (NaN, +-inf) in maps are treated as 0, as onnxcam.postprocess.normalize
 *     does: no function writes NaN into a map.
 *   - All functions are reentrant; the only per-thread state is the last-error string.
 */
#ifndef ONNXCAM_H
#define ONNXCAM_H

#include <stddef.h>
#include <stdint.h>

/* ONNXCAM_API: symbol visibility. Define ONNXCAM_STATIC when linking the static library. */
#if defined(ONNXCAM_STATIC)
#define ONNXCAM_API
#elif defined(_WIN32) || defined(__CYGWIN__)
#if defined(ONNXCAM_BUILDING_LIBRARY)
#define ONNXCAM_API __declspec(dllexport)
#else
#define ONNXCAM_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define ONNXCAM_API __attribute__((visibility("default")))
#else
#define ONNXCAM_API
#endif

#define ONNXCAM_VERSION_MAJOR 0
#define ONNXCAM_VERSION_MINOR 1
#define ONNXCAM_VERSION_PATCH 0
#define ONNXCAM_VERSION_STRING "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ------------------------------------------------------------------------ */
typedef int32_t onnxcam_status;
enum {
    ONNXCAM_OK = 0,
    ONNXCAM_ERR_INVALID_ARGUMENT = 1, /* a value out of range (alpha, fraction, params...) */
    ONNXCAM_ERR_NULL_POINTER = 2,     /* a required pointer is NULL */
    ONNXCAM_ERR_BAD_SHAPE = 3,        /* a dimension <= 0, or sizes that overflow */
    ONNXCAM_ERR_UNSUPPORTED = 4,      /* unknown method / layout / colormap */
    ONNXCAM_ERR_OUT_OF_MEMORY = 5,    /* scratch memory could not be allocated */
    ONNXCAM_ERR_INTERNAL = 6          /* a bug: please report */
};

/* ---- enumerations ------------------------------------------------------------------------ */
enum {                                /* CAM methods (onnxcam.methods) */
    ONNXCAM_METHOD_CAM = 0,           /* sum_c w[b,c] A_c                     needs A, w */
    ONNXCAM_METHOD_GRADCAM = 1,       /* a_c = mean_ij G_c; sum_c a_c A_c      needs A, G */
    ONNXCAM_METHOD_GRADCAM_PP = 2,    /* Grad-CAM++ closed form               needs A, G */
    ONNXCAM_METHOD_XGRADCAM = 3,      /* a_c = sum G.A / (sum A + 1e-7)        needs A, G */
    ONNXCAM_METHOD_LAYERCAM = 4,      /* sum_c relu(G_c) . A_c                 needs A, G */
    ONNXCAM_METHOD_HIRESCAM = 5,      /* sum_c G_c . A_c                       needs A, G */
    ONNXCAM_METHOD_GRADCAM_ELEMENTWISE = 6, /* sum_c relu(G_c . A_c)           needs A, G */
    ONNXCAM_METHOD_COUNT = 7
};

enum {                                /* what a method reads (onnxcam_method_needs) */
    ONNXCAM_NEEDS_ACTIVATIONS = 1,
    ONNXCAM_NEEDS_GRADIENTS = 2,
    ONNXCAM_NEEDS_CAM_WEIGHTS = 4
};

enum {                                /* layout of A and G */
    ONNXCAM_LAYOUT_NCHW = 0,          /* [batch, channels, height, width] */
    ONNXCAM_LAYOUT_NHWC = 1           /* [batch, height, width, channels] */
};

/* Colormap ids are OpenCV's COLORMAP_* values (all of OpenCV's maps are built in, see
 * onnxcam_colormap_from_name); JET is the default. */
enum {
    ONNXCAM_COLORMAP_JET = 2,
    ONNXCAM_COLORMAP_VIRIDIS = 16,
    ONNXCAM_COLORMAP_TURBO = 20
};

/* ---- parameters -------------------------------------------------------------------------- */
/* Plain data; always start from onnxcam_default_params() and change fields (struct_size lets
 * later versions grow the struct without breaking callers). A NULL params pointer means the
 * defaults. */
typedef struct onnxcam_params {
    uint32_t struct_size;     /* sizeof(onnxcam_params); set by onnxcam_default_params */
    int32_t method;           /* ONNXCAM_METHOD_*                      default GRADCAM */
    int32_t layout;           /* ONNXCAM_LAYOUT_* of A and G           default NCHW */
    int32_t relu;             /* rectify the raw map (non-zero = yes)  default 1 */
    int32_t normalize;        /* per-image min-max to [0, 1]           default 1 */
    int32_t colormap;         /* OpenCV colormap id                    default JET */
    double alpha;             /* overlay: heatmap weight in [0, 1]     default 0.5 */
    double overlay_threshold; /* overlay: pixels with map < threshold keep the image;
                                 negative = off                        default -1 */
    double box_fraction;      /* boxes: mask = map >= fraction * max   default 0.5 */
    double box_min_area;      /* boxes (all components): keep area >= min_area * H * W,
                                 in [0, 1]                             default 0.01 */
    int32_t box_largest;      /* boxes: only the largest component     default 1 */
    int32_t reserved;         /* zero */
} onnxcam_params;

/* A box (x0, y0) inclusive, (x1, y1) exclusive, in pixels; score = mean map value inside the
 * connected component (not the whole box); area = the component's pixel count. */
typedef struct onnxcam_box {
    int32_t x0, y0, x1, y1;
    int64_t area;
    double score;
} onnxcam_box;

/* ---- library information ----------------------------------------------------------------- */
ONNXCAM_API const char* onnxcam_version(void);              /* "MAJOR.MINOR.PATCH" */
ONNXCAM_API const char* onnxcam_last_error(void);           /* "" after a successful call */
ONNXCAM_API const char* onnxcam_status_string(onnxcam_status status);
ONNXCAM_API onnxcam_params onnxcam_default_params(void);
ONNXCAM_API const char* onnxcam_method_name(int32_t method); /* NULL if unknown */
/* "gradcam", "gradcam++", ... (case-insensitive; onnxcam's --method names) -> id, -1 if unknown */
ONNXCAM_API int32_t onnxcam_method_from_name(const char* name);
ONNXCAM_API int32_t onnxcam_method_needs(int32_t method);   /* ONNXCAM_NEEDS_* bits, 0 if unknown */
/* "jet", "turbo", "viridis", ... (case-insensitive, OpenCV's names) -> id, -1 if unknown */
ONNXCAM_API int32_t onnxcam_colormap_from_name(const char* name);

/* ---- maps -------------------------------------------------------------------------------- */
/* One CAM map per sample: out_maps [batch, height, width].
 *   activations, gradients: [batch, channels, height, width] (NCHW) or [batch, height, width,
 *   channels] (NHWC, params->layout); cam_weights: [batch, channels]. Pass NULL for what the
 *   method does not need (onnxcam_method_needs). With params->relu the map is rectified, with
 *   params->normalize min-max normalised per image (the Python runtime's CamMap.feature);
 *   with both off it is the method's raw map (onnxcam.methods), non-finite values written as 0. */
ONNXCAM_API onnxcam_status onnxcam_cam_map(const float* activations, const float* gradients,
                                           const float* cam_weights, int64_t batch,
                                           int64_t channels, int64_t height, int64_t width,
                                           const onnxcam_params* params, float* out_maps);

/* Per-image min-max to [0, 1] (postprocess.normalize): non-finite values count as 0, a
 * constant map becomes all zeros. out may equal maps (in place). */
ONNXCAM_API onnxcam_status onnxcam_normalize(const float* maps, int64_t batch, int64_t height,
                                             int64_t width, float* out);

/* Bilinear resize of each map [height, width] -> [out_height, out_width] with OpenCV
 * INTER_LINEAR semantics (half-pixel centres, edge replication), like postprocess.resize;
 * the results match cv2.resize on float32 maps bit for bit (opencv-python on x86-64).
 * out must not overlap maps. */
ONNXCAM_API onnxcam_status onnxcam_resize(const float* maps, int64_t batch, int64_t height,
                                          int64_t width, float* out, int64_t out_height,
                                          int64_t out_width);

/* onnxcam_resize followed by per-image min-max (postprocess.resize_normalized): how the
 * Python runtime makes CamMap.original / CamMap.input from a normalised feature map. */
ONNXCAM_API onnxcam_status onnxcam_resize_normalized(const float* maps, int64_t batch,
                                                     int64_t height, int64_t width, float* out,
                                                     int64_t out_height, int64_t out_width);

/* ---- colour ------------------------------------------------------------------------------ */
/* The colormap's 256 RGB entries (out_rgb: 768 bytes). */
ONNXCAM_API onnxcam_status onnxcam_colormap_table(int32_t colormap, uint8_t* out_rgb);

/* A [0, 1] map [height, width] -> RGB heatmap [height, width, 3] (postprocess.colorize):
 * index = uint8(clip(m, 0, 1) * 255 + 0.5). */
ONNXCAM_API onnxcam_status onnxcam_colorize(const float* map01, int64_t height, int64_t width,
                                            int32_t colormap, uint8_t* out_rgb);

/* Blend the colorized map over an RGB image (postprocess.overlay); map01 has the image's size
 * (resize it first with onnxcam_resize). Uses params->alpha, ->colormap, ->overlay_threshold.
 * out = uint8(clip((1 - alpha) * image + alpha * heat + 0.5, 0, 255)). out_rgb may equal rgb. */
ONNXCAM_API onnxcam_status onnxcam_overlay(const uint8_t* rgb, int64_t height, int64_t width,
                                           const float* map01, const onnxcam_params* params,
                                           uint8_t* out_rgb);

/* ---- localization ------------------------------------------------------------------------ */
/* mask = map >= fraction * max(map) (1/0 per pixel; all 0 if max <= 0), as
 * localize.mask_from_map(mode="fraction"). */
ONNXCAM_API onnxcam_status onnxcam_threshold_mask(const float* map01, int64_t height,
                                                  int64_t width, double fraction,
                                                  uint8_t* out_mask);

/* Boxes around the 8-connected components of the threshold mask (localize.boxes_from_map),
 * using params->box_fraction, ->box_largest, ->box_min_area. With box_largest: the component
 * with the most pixels (at most one box); else every component with area >= min_area * H * W,
 * best score first. Writes min(found, max_boxes) boxes and sets *n_boxes to the number found
 * (out_boxes may be NULL when max_boxes is 0, to ask for the count). At most 2^31 - 1 pixels. */
ONNXCAM_API onnxcam_status onnxcam_boxes(const float* map01, int64_t height, int64_t width,
                                         const onnxcam_params* params, onnxcam_box* out_boxes,
                                         int64_t max_boxes, int64_t* n_boxes);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ONNXCAM_H */
