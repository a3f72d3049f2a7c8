/* The public header compiles as C99 and the shared library links and runs from C. */
#include <stdio.h>
#include <string.h>

#include "onnxcam.h"

static int failures = 0;
#define EXPECT(cond)                                                   \
    do {                                                               \
        if (!(cond)) {                                                 \
            fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                \
        }                                                              \
    } while (0)

int main(void) {
    const float A[4] = {1, 2, 3, 4}; /* [1, 1, 2, 2] */
    const float G[4] = {1, 1, 1, 1};
    float maps[4], big[16];
    uint8_t rgb[48], out[48];
    onnxcam_box boxes[4];
    int64_t n = -1;
    onnxcam_params p = onnxcam_default_params();
    int i;

    EXPECT(strcmp(onnxcam_version(), ONNXCAM_VERSION_STRING) == 0);
    EXPECT(p.struct_size == sizeof(onnxcam_params));
    EXPECT(onnxcam_cam_map(A, G, NULL, 1, 1, 2, 2, &p, maps) == ONNXCAM_OK);
    EXPECT(maps[0] == 0.0f && maps[3] == 1.0f);
    EXPECT(onnxcam_resize_normalized(maps, 1, 2, 2, big, 4, 4) == ONNXCAM_OK);
    EXPECT(big[0] == 0.0f && big[15] == 1.0f);
    memset(rgb, 100, sizeof rgb);
    EXPECT(onnxcam_overlay(rgb, 4, 4, big, &p, out) == ONNXCAM_OK);
    EXPECT(onnxcam_boxes(big, 4, 4, &p, boxes, 4, &n) == ONNXCAM_OK);
    EXPECT(n == 1);
    EXPECT(onnxcam_cam_map(NULL, G, NULL, 1, 1, 2, 2, &p, maps) == ONNXCAM_ERR_NULL_POINTER);
    EXPECT(strstr(onnxcam_last_error(), "activations") != NULL);
    for (i = 0; i < ONNXCAM_METHOD_COUNT; ++i) EXPECT(onnxcam_method_name(i) != NULL);
    if (failures == 0) printf("C ABI ok\n");
    return failures == 0 ? 0 : 1;
}
